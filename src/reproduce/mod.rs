//! `vlguard-ort reproduce [MODELS]`: a whole table of models in one resumable command.
//!
//! Input: MODELS ([`plan`]: `table2` or a TOML file), the dataset, and the flags of the
//! stages (run's, the judge's, the Hub's). For every model, in list order (one model per
//! `--devices` entry at a time, [`devices`]): weights (`prepare` or `export`), `run` of the
//! asked subsets, `score`, `judge` when a judge model is configured ([`stages`]); then one
//! leaderboard and `OUT/reproduce.json` ([`summary`]).
//!
//! Guarantees:
//! - Resumable everywhere: the status ([`status`]) is read from disk, and every stage
//!   skips what is done or resumes what is partial, so after a kill (SIGKILL included)
//!   the same command continues: no download, export or answered sample is redone.
//! - A status table (model x stage) is printed at start; `--dry-run` prints it and exits.
//! - A failing model (not on the Hub, a corrupt checkpoint, out of memory) is reported
//!   and skipped; the others go on. The final table names each failure; the exit code
//!   is 0 when every model is done, 1 when some model failed or has sample errors, 2
//!   when the command cannot start (bad flags, bad model list, no dataset).

pub mod devices;
pub mod plan;
pub mod stages;
pub mod status;
pub mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use serde::Serialize;

use crate::dataset::{Dataset, Subset};
use crate::engine::EpChoice;
use crate::export::{Dtype, Flavour};
use crate::run::{Batching, RunArgs, SubsetArg, Toggle};

use plan::Model;
use status::State;

#[derive(Debug, Clone, clap::Args)]
pub struct ReproduceArgs {
    /// The models: `table2` (the paper's released models, see `prepare --list`) or a TOML
    /// file of [[model]] entries (docs/reproduce.md).
    #[arg(default_value = "table2")]
    pub models: String,
    /// Results folder: answers, run manifests, judge outputs, leaderboard.{md,html,json}
    /// and reproduce.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Where model folders are written (MODELS_DIR/NAME).
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    /// Where Hub checkpoints are downloaded (CHECKPOINTS/owner/name).
    #[arg(long, default_value = "checkpoints")]
    pub checkpoints: PathBuf,
    /// Print the status table (model x stage) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// GPUs to use, one model per GPU at a time (e.g. 0,1,2,3).
    #[arg(long, default_value = "0", value_parser = devices::parse_devices)]
    pub devices: devices::Devices,
    /// Keep every model folder (the default).
    #[arg(long, conflicts_with = "delete_models_after")]
    pub keep_models: bool,
    /// Delete a model's folder (and its own download) once all its stages are done.
    #[arg(long)]
    pub delete_models_after: bool,
    /// Weight dtype of the exports of entries that give none: fp16 or fp32.
    #[arg(long, default_value = "fp16")]
    pub dtype: String,
    /// Decoder graph of entries that give none: plain or fused.
    #[arg(long, default_value = "plain")]
    pub decoder: String,
    /// Which subsets to run: unsafes, safe_unsafes, safe_safes or all.
    #[arg(long, value_enum, default_value = "all")]
    pub subset: SubsetArg,
    /// VLGuard test.json.
    #[arg(long, default_value = "data/VLGuard/test.json")]
    pub meta: PathBuf,
    /// Image root the `image` paths of test.json are relative to.
    #[arg(long, default_value = "data/VLGuard/test")]
    pub images: PathBuf,
    /// Only the first N samples of each subset.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Longest answer in tokens (VLGuard_eval.py: 256).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Prompts decoded together (run's --batch-size).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// run's --batching: static, continuous or auto.
    #[arg(long, value_enum, default_value = "auto")]
    pub batching: Batching,
    /// Execution provider: auto tries TensorRT, then CUDA, then CPU.
    #[arg(long, value_enum, default_value = "auto", env = "VLGUARD_EP")]
    pub ep: EpChoice,
    /// run's --vision-thread: the vision tower on a thread of its own (auto: with a GPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub vision_thread: Toggle,
    /// Folder holding TensorRT 10's libraries (run's --trt-lib-dir); each model's engine
    /// cache is MODEL/trt-cache.
    #[arg(long, env = "VLGUARD_TRT_LIB_DIR", value_name = "DIR")]
    pub trt_lib_dir: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per model (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the folders
    /// `vlguard-ort doctor` lists, in order).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Hub address; set it to use a mirror.
    #[arg(long, env = "HF_ENDPOINT", default_value = crate::fetch::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Tries per Hub request and per file before a model is given up.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Judge model: set it (or VLGUARD_JUDGE_MODEL) to run the helpfulness judge on the
    /// safe_safes answers of every model.
    #[arg(long, env = "VLGUARD_JUDGE_MODEL")]
    pub judge_model: Option<String>,
    /// The judge's API base URL (requests go to BASE/chat/completions).
    #[arg(long, env = "OPENAI_BASE_URL", default_value = crate::judge::DEFAULT_BASE_URL)]
    pub judge_base_url: String,
    /// Name of the environment variable holding the judge's API key.
    #[arg(long, default_value = crate::judge::DEFAULT_API_KEY_ENV)]
    pub judge_api_key_env: String,
    /// The judge's reference answers.
    #[arg(long, default_value = crate::judge::DEFAULT_REFERENCE)]
    pub judge_reference: PathBuf,
    /// Also judge harm (judge --task harm) of the unsafes and safe_unsafes answers with
    /// the judge model, beside the string match.
    #[arg(long, requires = "judge_model")]
    pub judge_harm: bool,
    /// Judge every item in both seat orders too (judge --swap).
    #[arg(long)]
    pub judge_swap: bool,
    /// Judge requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub judge_concurrency: usize,
    /// No progress bars while downloading.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("--dtype: {0}")]
    Dtype(String),
    #[error("--decoder: {0}")]
    Flavour(String),
    #[error("--batch-size and --max-new-tokens must be at least 1")]
    Zero,
    #[error("image folder {0} does not exist (fetch the dataset with `vlguard-ort fetch dataset`, or pass --images)")]
    Images(PathBuf),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::Error),
    #[error("judge: {0}")]
    Judge(#[from] crate::judge::Error),
    #[error("judge flags: {0}")]
    JudgeFlags(String),
    #[error(transparent)]
    Summary(#[from] summary::SummaryError),
    #[error(transparent)]
    Lock(#[from] crate::results::Error),
}

/// The flags that shape the table's numbers, as recorded in reproduce.json.
#[derive(Debug, Clone, Serialize)]
pub struct Flags {
    pub models: String,
    pub subsets: Vec<Subset>,
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub batching: Batching,
    pub ep: EpChoice,
    pub devices: Vec<i32>,
    pub dtype: Dtype,
    pub decoder: Flavour,
    pub judge_model: Option<String>,
    pub judge_base_url: Option<String>,
    pub judge_swap: bool,
    pub judge_harm: bool,
    pub keep_models: bool,
}

/// Validated settings every stage reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub out: PathBuf,
    pub models_dir: PathBuf,
    pub checkpoints: PathBuf,
    /// The asked subsets with this run's sample count of each (after --limit).
    pub subsets: Vec<(Subset, usize)>,
    pub meta: PathBuf,
    pub images: PathBuf,
    pub dataset_sha256: String,
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
    pub keep_models: bool,
    pub endpoint: String,
    pub attempts: u32,
    pub quiet: bool,
    /// The judge's flags (predictions, out and engine set per model); None: no judge.
    pub judge: Option<crate::judge::JudgeArgs>,
    /// Whether the harm judge runs too (with `judge`'s model and endpoint).
    pub judge_harm: bool,
    pub flags: Flags,
    args: ReproduceArgs,
}

impl Settings {
    pub fn from_args(args: &ReproduceArgs) -> Result<(Settings, Vec<Model>), Error> {
        let dtype: Dtype = args.dtype.parse().map_err(Error::Dtype)?;
        let flavour: Flavour = args.decoder.parse().map_err(Error::Flavour)?;
        if args.batch_size == 0 || args.max_new_tokens == 0 {
            return Err(Error::Zero);
        }
        let models = plan::load(&args.models, plan::Defaults { dtype, flavour })?;
        if !args.images.is_dir() {
            return Err(Error::Images(args.images.clone()));
        }
        let dataset = Dataset::load(&args.meta)?;
        let mut subsets = Vec::new();
        for subset in args.subset.subsets() {
            let n = dataset.samples(subset)?.len();
            subsets.push((subset, args.limit.map_or(n, |l| l.min(n))));
        }
        let judge = match &args.judge_model {
            Some(model) => {
                let judge = judge_args(args, model)?;
                // Checked now (the key, the URL), not after hours of runs.
                crate::judge::JudgeConfig::from_args(&judge, |name| std::env::var(name).ok())?;
                Some(judge)
            }
            None => None,
        };
        let flags = Flags {
            models: args.models.clone(),
            subsets: subsets.iter().map(|(s, _)| *s).collect(),
            limit: args.limit,
            max_new_tokens: args.max_new_tokens,
            batch_size: args.batch_size,
            batching: args.batching,
            ep: args.ep,
            devices: args.devices.0.clone(),
            dtype,
            decoder: flavour,
            judge_model: args.judge_model.clone(),
            judge_base_url: args
                .judge_model
                .as_ref()
                .map(|_| args.judge_base_url.clone()),
            judge_swap: args.judge_swap,
            judge_harm: args.judge_harm,
            keep_models: !args.delete_models_after,
        };
        let settings = Settings {
            out: args.out.clone(),
            models_dir: args.models_dir.clone(),
            checkpoints: args.checkpoints.clone(),
            subsets,
            meta: args.meta.clone(),
            images: args.images.clone(),
            dataset_sha256: dataset.sha256.clone(),
            limit: args.limit,
            max_new_tokens: args.max_new_tokens,
            keep_models: !args.delete_models_after,
            endpoint: args.endpoint.clone(),
            attempts: args.attempts,
            quiet: args.quiet,
            judge,
            judge_harm: args.judge_harm,
            flags,
            args: args.clone(),
        };
        Ok((settings, models))
    }

    /// `run`'s flags for one model on one device.
    pub fn run_args(&self, model: &Model, device: i32) -> RunArgs {
        let a = &self.args;
        RunArgs {
            model: status::model_dir(self, model),
            subset: SubsetArg::All,
            meta: a.meta.clone(),
            images: a.images.clone(),
            out: a.out.clone(),
            engine: Some(model.name.clone()),
            ep: a.ep,
            device_id: device,
            batch_size: a.batch_size,
            batching: a.batching,
            vision_thread: a.vision_thread,
            keep_finished_rows: false,
            max_image_bytes: crate::preprocess::DEFAULT_MAX_IMAGE_BYTES,
            max_new_tokens: a.max_new_tokens,
            limit: a.limit,
            fresh: false,
            shard: None,
            trt_cache: None,
            trt_lib_dir: a.trt_lib_dir.clone(),
            threads: a.threads,
            ort_lib: a.ort_lib.clone(),
        }
    }
}

/// The judge's flags from reproduce's (predictions, out and engine set per model), parsed
/// as `judge` parses its command line so that every other flag keeps `judge`'s default.
fn judge_args(args: &ReproduceArgs, model: &str) -> Result<crate::judge::JudgeArgs, Error> {
    #[derive(clap::Parser)]
    struct JudgeLine {
        #[command(flatten)]
        args: crate::judge::JudgeArgs,
    }
    let mut line: Vec<std::ffi::OsString> = vec!["judge".into()];
    line.push(args.out.join("safe_safes/judge-check.json").into());
    for (flag, value) in [
        ("--model", std::ffi::OsString::from(model)),
        ("--reference", args.judge_reference.clone().into()),
        ("--images", args.images.clone().into()),
        ("--base-url", (&args.judge_base_url).into()),
        ("--api-key-env", (&args.judge_api_key_env).into()),
        ("--concurrency", args.judge_concurrency.to_string().into()),
    ] {
        line.extend([flag.into(), value]);
    }
    if args.judge_swap {
        line.push("--swap".into());
    }
    use clap::Parser as _;
    JudgeLine::try_parse_from(line)
        .map(|l| l.args)
        .map_err(|e| Error::JudgeFlags(e.to_string()))
}

/// What became of one model in this invocation.
struct Outcome {
    device: i32,
    /// The stage that failed and why.
    result: Result<stages::Done, (stages::Stage, String)>,
}

pub fn command(args: &ReproduceArgs) -> Result<ExitCode, Error> {
    let started_at = crate::util::utc_now_rfc3339();
    let (settings, models) = Settings::from_args(args)?;
    let subsets: Vec<Subset> = settings.subsets.iter().map(|(s, _)| *s).collect();
    let statuses: Vec<_> = models
        .iter()
        .map(|m| status::status(&settings, m))
        .collect();
    let table = status::render(&models, &statuses, &subsets);
    if args.dry_run {
        print!("{table}");
        return Ok(ExitCode::SUCCESS);
    }
    // One reproduce per results folder: a second one would race it on the same files.
    let _lock = crate::results::Lock::acquire(&settings.out.join("reproduce/reproduce.lock"))?;
    eprint!(
        "reproduce: {} model(s), status at start:\n{table}",
        models.len()
    );
    let weights_lock = Mutex::new(());
    let outcomes = devices::each_on_devices(models.len(), &args.devices.0, |i, device| {
        let place = format!("[{}/{}]", i + 1, models.len());
        // A panic (a bug) in one model's stages is that model's failure, not the table's.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stages::process(&settings, &models[i], &place, device, &weights_lock)
        }));
        let result = match result {
            Ok(result) => result.map_err(|e| (e.stage(), crate::util::error_chain(&e))),
            Err(panic) => Err((
                stages::Stage::Weights,
                format!("panicked: {}", panic_text(panic.as_ref())),
            )),
        };
        if let Err((_, why)) = &result {
            eprintln!("reproduce: {} FAILED: {why}", models[i].name);
        }
        Outcome { device, result }
    });
    finish(&settings, &models, &outcomes, started_at)
}

/// The stages left, for a model that did not fail but is not done (sample errors the
/// run recorded, judge requests that failed): a rerun tries them again.
fn not_done(st: &status::ModelStatus) -> String {
    let mut left: Vec<String> = st
        .runs
        .iter()
        .filter(|(_, s)| !s.is_done())
        .map(|(subset, s)| format!("run {subset} {}", s.text()))
        .collect();
    if !st.score.is_done() {
        left.push(format!("score {}", st.score.text()));
    }
    if !matches!(st.judge, State::Done | State::Off(_)) {
        left.push(format!("judge {}", st.judge.text()));
    }
    if !matches!(st.harm, State::Done | State::Off(_)) {
        left.push(format!("harm {}", st.harm.text()));
    }
    format!("not done: {}; rerun to try again", left.join(", "))
}

/// The table cell of the stage that failed: a run failure shows on the first subset
/// not done.
fn failed_cell(st: &mut status::ModelStatus, stage: stages::Stage) -> &mut State {
    use stages::Stage;
    match stage {
        Stage::Weights | Stage::Delete => &mut st.model,
        Stage::Score => &mut st.score,
        Stage::Judge => &mut st.judge,
        Stage::Harm => &mut st.harm,
        Stage::Run => match st.runs.iter().position(|(_, s)| !s.is_done()) {
            Some(i) => &mut st.runs[i].1,
            None => &mut st.model,
        },
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// The leaderboard, reproduce.json, the final table and the exit code.
fn finish(
    settings: &Settings,
    models: &[Model],
    outcomes: &[Outcome],
    started_at: String,
) -> Result<ExitCode, Error> {
    let subsets: Vec<Subset> = settings.subsets.iter().map(|(s, _)| *s).collect();
    let comparisons = summary::write_leaderboard(settings, models)?;
    let mut statuses = Vec::new();
    let mut records = Vec::new();
    let mut all_ok = true;
    for (model, outcome) in models.iter().zip(outcomes) {
        let mut st = status::status(settings, model);
        let (word, error) = match &outcome.result {
            Err((stage, why)) => {
                *failed_cell(&mut st, *stage) = State::Failed(why.clone());
                ("failed", Some(why.clone()))
            }
            Ok(_) if st.all_done() => ("done", None),
            Ok(_) => ("incomplete", Some(not_done(&st))),
        };
        all_ok &= word == "done";
        let done = outcome.result.as_ref().ok();
        let fate = summary::Fate {
            status: word,
            error,
            device: outcome.device,
            exported_now: done.is_some_and(|d| d.exported_now),
            deleted: done.is_some_and(|d| d.deleted),
        };
        records.push(summary::model_record(settings, model, fate));
        statuses.push(st);
    }
    let leaderboard = match &comparisons {
        Some(_) => ["leaderboard.md", "leaderboard.html", "leaderboard.json"]
            .iter()
            .map(|f| settings.out.join(f).display().to_string())
            .collect(),
        None => Vec::new(),
    };
    let record = summary::Summary {
        tool: "vlguard-ort",
        tool_version: env!("CARGO_PKG_VERSION"),
        started_at,
        finished_at: crate::util::utc_now_rfc3339(),
        command: std::env::args().collect(),
        flags: settings.flags.clone(),
        onnxruntime: summary::ort_record(settings.args.ort_lib.as_deref()),
        dataset: summary::DatasetRecord {
            meta: settings.meta.display().to_string(),
            sha256: settings.dataset_sha256.clone(),
            images: settings.images.display().to_string(),
        },
        models: records,
        leaderboard,
        paper_comparison: comparisons.unwrap_or_default(),
    };
    write_summary(&settings.out.join("reproduce.json"), &record)?;
    print!("{}", status::render(models, &statuses, &subsets));
    Ok(crate::util::exit_code(all_ok))
}

fn write_summary(path: &Path, record: &summary::Summary) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(record).map_err(summary::SummaryError::from)?;
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| crate::util::write_atomic(path, (text + "\n").as_bytes()))
        .map_err(|source| summary::SummaryError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(())
}
