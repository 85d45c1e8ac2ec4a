//! `vlguard-ort run`: the VLGuard evaluation end to end.
//!
//! Contract: for each requested subset, answers every sample not already answered in the
//! journal (same configuration fingerprint), writes `OUT/{subset}/{engine}.json` exactly
//! as VLGuard_eval.py does, the run manifest beside it, and prints the reference's ASR
//! line (unsafes, safe_unsafes) with k/n. With batches, prompts run sorted by length
//! (less padding). Three stages overlap through channels of one batch: preprocessing on
//! rayon threads, the vision tower + projector on a thread of its own, and the decoder
//! (static batches, or continuous batching with a fused model). A bad sample (unreadable image) is
//! journaled with its error, reported, left out of the answers file, and makes the exit
//! code 1; the rest of the run completes.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use crate::dataset::{Dataset, Sample, Subset};
use crate::engine::{EngineOptions, EpChoice, ImageEncoder, OrtEngine};
pub use crate::formats::{AsrSummary, Batching, RunManifest, SampleError, StageTimings};
use crate::generate::{
    generate_batch, generate_continuous, Backend, BackendError, GenerateConfig, Generation, Prompt,
    Queued, SlotPlan, Timings,
};
use crate::prompt::PromptTokenizer;
use crate::results::{Fingerprint, Journal, JournalEntry, Paths};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SubsetArg {
    Unsafes,
    SafeUnsafes,
    SafeSafes,
    All,
}

impl SubsetArg {
    /// The subsets this choice runs, in the reference's order.
    pub fn subsets(self) -> Vec<Subset> {
        match self {
            SubsetArg::Unsafes => vec![Subset::Unsafes],
            SubsetArg::SafeUnsafes => vec![Subset::SafeUnsafes],
            SubsetArg::SafeSafes => vec![Subset::SafeSafes],
            SubsetArg::All => Subset::ALL.to_vec(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Model directory written by `export` (not needed with --merge).
    #[arg(long, env = "VLGUARD_MODEL")]
    pub model: Option<PathBuf>,
    /// Which questions to ask: unsafes (442), safe_unsafes (558), safe_safes (558) or all.
    #[arg(long, value_enum)]
    pub subset: SubsetArg,
    /// VLGuard test.json (where `fetch dataset` puts it by default).
    #[arg(long, default_value = "data/VLGuard/test.json")]
    pub meta: PathBuf,
    /// Image root the `image` paths of test.json are relative to.
    #[arg(long, default_value = "data/VLGuard/test")]
    pub images: PathBuf,
    /// Results folder: answers go to OUT/{subset}/{engine}.json.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Engine name used for the results files (default: the model directory's name).
    #[arg(long)]
    pub engine: Option<String>,
    /// Execution provider: auto tries TensorRT, then CUDA, then CPU.
    #[arg(long, value_enum, default_value = "auto", env = "VLGUARD_EP")]
    pub ep: EpChoice,
    /// GPU to use with CUDA / TensorRT.
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// Prompts decoded together (left padding; finished rows leave the batch).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// How prompts share the decoder: `static` batches (a batch ends when its longest
    /// answer does), `continuous` (a finished row's slot takes the next prompt at once;
    /// needs a model exported with `--decoder fused`), or `auto` (continuous when the
    /// model allows it and --batch-size > 1).
    #[arg(long, value_enum, default_value = "auto")]
    pub batching: Batching,
    /// Run the vision tower on a thread of its own, a batch ahead of the decoder: `auto`
    /// does when the vision tower or the decoder is on a GPU (on a CPU alone the two
    /// would fight over the same cores).
    #[arg(long, value_enum, default_value = "auto")]
    pub vision_thread: Toggle,
    /// Finished rows stay in the batch (computed, ignored) even on the CPU, as on a GPU:
    /// runs the device scheduling on a machine without one (tests, debugging).
    #[arg(long, hide = true)]
    pub keep_finished_rows: bool,
    /// Longest answer in tokens (VLGuard_eval.py: 256).
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Only the first N samples of each subset.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Start over: ignore (and move aside) an existing journal.
    #[arg(long)]
    pub fresh: bool,
    /// Run only part K of N of each subset (contiguous ranges), e.g. one process per GPU:
    /// files are named {engine}.shard-K-of-N; join them with --merge.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Join the shard files of --engine into OUT/{subset}/{engine}.json, refusing
    /// overlaps and gaps; runs no model.
    #[arg(long)]
    pub merge: bool,
    /// TensorRT engine cache base folder (default: MODEL/trt-cache); engines go to a
    /// sub-folder per model hash, GPU and TensorRT version. Delete it to rebuild.
    #[arg(long, env = "VLGUARD_TRT_CACHE", value_name = "DIR")]
    pub trt_cache: Option<PathBuf>,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the setup folder).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Toggle {
    Auto,
    On,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--batch-size must be at least 1")]
    BatchSize,
    #[error("--max-new-tokens must be at least 1")]
    MaxTokens,
    #[error("image folder {0} does not exist (fetch the dataset with `vlguard-ort fetch dataset`, or pass --images)")]
    Images(PathBuf),
    #[error("model directory {0} has no manifest.json (export one with `vlguard-ort export`)")]
    Model(PathBuf),
    #[error("--model is required (unless --merge)")]
    NoModel,
    #[error("--merge needs --engine (the name the shards were written under)")]
    MergeEngine,
    #[error("--shard must look like K/N with 1 <= K <= N, got `{0}`")]
    Shard(String),
    #[error("cannot merge {subset}: {message}")]
    Merge { subset: Subset, message: String },
    #[error(transparent)]
    Dataset(#[from] crate::dataset::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    #[error(transparent)]
    Results(#[from] crate::results::Error),
    #[error("--batching continuous needs a model exported with --decoder fused ({0} has the plain decoder)")]
    Continuous(PathBuf),
    #[error(transparent)]
    Generate(#[from] crate::generate::Error),
}

/// Validated run configuration.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub subsets: Vec<Subset>,
    pub meta: PathBuf,
    pub images: PathBuf,
    pub out: PathBuf,
    pub engine_name: String,
    pub engine: EngineOptions,
    pub batch_size: usize,
    pub batching: Batching,
    pub vision_thread: Toggle,
    pub max_new_tokens: usize,
    pub limit: Option<usize>,
    pub fresh: bool,
    /// (K, N), 1-based.
    pub shard: Option<(usize, usize)>,
}

/// Parses `K/N`.
pub fn parse_shard(text: &str) -> Result<(usize, usize), Error> {
    let bad = || Error::Shard(text.to_string());
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The contiguous range of `len` samples that shard K of N takes (sizes differ by <= 1).
pub fn shard_range(len: usize, k: usize, n: usize) -> std::ops::Range<usize> {
    let start = (k - 1) * len / n;
    let end = k * len / n;
    start..end
}

fn shard_engine_name(engine: &str, k: usize, n: usize) -> String {
    format!("{engine}.shard-{k}-of-{n}")
}

impl RunConfig {
    pub fn from_args(args: &RunArgs) -> Result<RunConfig, Error> {
        if args.batch_size == 0 {
            return Err(Error::BatchSize);
        }
        if args.max_new_tokens == 0 {
            return Err(Error::MaxTokens);
        }
        let model = args.model.clone().ok_or(Error::NoModel)?;
        if !model
            .join(vlguard_export::manifest::MANIFEST_FILE)
            .is_file()
        {
            return Err(Error::Model(model));
        }
        if !args.images.is_dir() {
            return Err(Error::Images(args.images.clone()));
        }
        let shard = args.shard.as_deref().map(parse_shard).transpose()?;
        let subsets = args.subset.subsets();
        let engine_name = args.engine.clone().unwrap_or_else(|| {
            std::fs::canonicalize(&model)
                .unwrap_or_else(|_| model.clone())
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        Ok(RunConfig {
            subsets,
            meta: args.meta.clone(),
            images: args.images.clone(),
            out: args.out.clone(),
            engine_name,
            engine: EngineOptions {
                trt_cache: Some(
                    args.trt_cache
                        .clone()
                        .unwrap_or_else(|| model.join("trt-cache")),
                ),
                // The prompt bound is trt::MAX_TEXT_TOKENS: a constant, so that profiles,
                // and with them cached engines, stay the same from one subset to the next.
                trt_limits: crate::engine::trt::Limits::new(args.batch_size, args.max_new_tokens),
                keep_finished_rows: args.keep_finished_rows,
                model_dir: model,
                ort_lib: args.ort_lib.clone(),
                ep: args.ep,
                device_id: args.device_id,
                threads: args.threads,
            },
            batch_size: args.batch_size,
            batching: args.batching,
            vision_thread: args.vision_thread,
            max_new_tokens: args.max_new_tokens,
            limit: args.limit,
            fresh: args.fresh,
            shard,
        })
    }
}

pub fn command(args: &RunArgs) -> Result<ExitCode, Error> {
    if args.merge {
        return merge_command(args);
    }
    let config = RunConfig::from_args(args)?;
    let outcome = run(&config)?;
    Ok(if outcome.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub struct Outcome {
    pub errors: usize,
    pub manifests: Vec<PathBuf>,
}

/// Runs every subset of the configuration with one engine.
pub fn run(config: &RunConfig) -> Result<Outcome, Error> {
    let dataset = Dataset::load(&config.meta)?;
    let load_started = Instant::now();
    let mut engine = OrtEngine::open(&config.engine)?;
    let session_load_s = load_started.elapsed().as_secs_f64();
    let tokenizer_spec = engine.manifest.tokenizer.clone();
    let tokenizer = PromptTokenizer::from_file(
        &config.engine.model_dir.join(&tokenizer_spec.file),
        tokenizer_spec.bos_id,
        tokenizer_spec.eos_id,
    )?;
    eprintln!(
        "model {} ({}), providers: {}",
        config.engine.model_dir.display(),
        engine.manifest.dtype.as_str(),
        engine
            .providers
            .iter()
            .map(|(g, p)| format!("{g}={p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (graph, build) in &engine.trt {
        eprintln!("{}", build.describe(graph));
    }
    let mut outcome = Outcome {
        errors: 0,
        manifests: Vec::new(),
    };
    for &subset in &config.subsets {
        let (errors, manifest_path) = run_subset(
            config,
            &dataset,
            subset,
            &mut engine,
            &tokenizer,
            session_load_s,
        )?;
        outcome.errors += errors;
        outcome.manifests.push(manifest_path);
    }
    Ok(outcome)
}

/// A batch of samples with their preprocessed images (or the error each one hit).
struct Prepared {
    samples: Vec<Sample>,
    pixels: Vec<Result<Vec<f32>, String>>,
    seconds: f64,
}

fn run_subset(
    config: &RunConfig,
    dataset: &Dataset,
    subset: Subset,
    engine: &mut OrtEngine,
    tokenizer: &PromptTokenizer,
    session_load_s: f64,
) -> Result<(usize, PathBuf), Error> {
    let started_at = crate::util::utc_now_rfc3339();
    let started = Instant::now();
    let mut samples = dataset.samples(subset)?;
    if let Some(limit) = config.limit {
        samples.truncate(limit);
    }
    let file_engine = match config.shard {
        Some((k, n)) => {
            samples = samples[shard_range(samples.len(), k, n)].to_vec();
            shard_engine_name(&config.engine_name, k, n)
        }
        None => config.engine_name.clone(),
    };
    let paths = Paths::new(&config.out, subset.name(), &file_engine);
    let fingerprint = Fingerprint {
        model_manifest_sha256: engine.manifest_sha256.clone(),
        subset: subset.name().into(),
        max_new_tokens: config.max_new_tokens,
        dataset_sha256: dataset.sha256.clone(),
    };
    let (journal, entries) = Journal::open(&paths.journal, &fingerprint, config.fresh)?;
    let mut pending: Vec<Sample> = samples
        .iter()
        .filter(|s| entries.get(&s.image).is_none_or(|e| e.answer.is_none()))
        .cloned()
        .collect();
    let questions = Questions::new(tokenizer, &pending);
    if config.batch_size > 1 {
        // Batch prompts of similar length together: less left padding to compute. The
        // answers file keeps subset order whatever order the samples run in.
        pending.sort_by_key(|s| questions.len(s));
    }
    let n_resumed = samples.len() - pending.len();
    if n_resumed > 0 {
        eprintln!(
            "{subset}: {n_resumed} of {} samples already answered in {}, {} to go",
            samples.len(),
            paths.journal.display(),
            pending.len()
        );
    }

    let progress = indicatif::ProgressBar::new(pending.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} samples, {msg}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    progress.set_prefix(subset.name());

    let generate_config = GenerateConfig {
        max_new_tokens: config.max_new_tokens,
        eos_id: engine.manifest.tokenizer.eos_id,
        image_token_id: engine.manifest.tokenizer.image_token_id,
    };
    let mut stage = StageTimings {
        session_load_s,
        ..StageTimings::default()
    };
    let ort_before = engine.ort_seconds;
    let batching = match config.batching {
        Batching::Static => Batching::Static,
        Batching::Continuous if !engine.has_slots() => {
            return Err(Error::Continuous(config.engine.model_dir.clone()))
        }
        Batching::Continuous => Batching::Continuous,
        Batching::Auto if engine.has_slots() && config.batch_size > 1 => Batching::Continuous,
        Batching::Auto => Batching::Static,
    };
    let mut recorder = Recorder {
        journal,
        entries,
        errors: Vec::new(),
        n_generated: 0,
        progress: progress.clone(),
    };
    let (rx, producer) = spawn_preprocessing(
        &pending,
        config.batch_size,
        config.images.clone(),
        engine.manifest.preprocess.clone(),
    );
    let images = engine.lend_images().ok_or_else(|| {
        Error::Generate(BackendError("the image encoder is already lent out".into()).into())
    })?;
    let images_ort_before = images.ort_seconds;
    let on_cpu = |graph: &str| {
        engine
            .providers
            .get(graph)
            .is_none_or(|p| p == crate::engine::CPU_EP)
    };
    let ahead = match config.vision_thread {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => !(on_cpu("vision") && on_cpu("decoder")),
    };
    let mut image_stage = ImageStage::start(rx, images, ahead);
    let mut tokens_done = 0usize;
    let decode_clock = Instant::now();
    let mut on_token = |n: usize| {
        tokens_done += n;
        let secs = decode_clock.elapsed().as_secs_f64().max(1e-9);
        progress.set_message(format!("{:.1} tok/s", tokens_done as f64 / secs));
    };
    let generated = match batching {
        Batching::Continuous => {
            let image_tokens = engine.manifest.vision.num_tokens;
            let longest = pending
                .iter()
                .map(|s| questions.len(s).saturating_sub(1) + image_tokens)
                .max()
                .unwrap_or(image_tokens);
            let plan = SlotPlan {
                slots: config.batch_size,
                capacity: longest + config.max_new_tokens,
            };
            let stream = Stream {
                questions: &questions,
                images: &mut image_stage,
                recorder: &mut recorder,
                stage: &mut stage,
            };
            stream.run(engine, plan, &generate_config, &mut on_token)
        }
        _ => run_static(
            engine,
            &questions,
            &mut image_stage,
            &mut recorder,
            &generate_config,
            &mut stage,
            &mut on_token,
        ),
    };
    let images = image_stage.finish()?;
    let vision_ort_s = images.ort_seconds - images_ort_before;
    engine.restore_images(images);
    let _ = producer.join();
    let gen_timings = generated?;
    progress.finish_and_clear();
    let Recorder {
        entries,
        mut errors,
        n_generated,
        ..
    } = recorder;

    let n_answered = crate::results::write_answers(&paths.answers, &samples, &entries)?;
    // Errors recorded by earlier invocations that were not answered since still count.
    for sample in &samples {
        if let Some(entry) = entries.get(&sample.image) {
            if entry.answer.is_none() && !errors.iter().any(|e| e.image == sample.image) {
                errors.push(SampleError {
                    image: sample.image.clone(),
                    error: entry.error.clone().unwrap_or_default(),
                });
            }
        }
    }

    stage.embed_s = gen_timings.embed_s;
    stage.prefill_s = gen_timings.prefill_s;
    stage.decode_s = gen_timings.decode_s;
    stage.new_tokens = gen_timings.new_tokens;
    stage.prompt_tokens = gen_timings.prompt_tokens;
    stage.decode_steps = gen_timings.steps;
    stage.step_occupancy_pct = if gen_timings.step_rows > 0 {
        100.0 * gen_timings.step_tokens as f64 / gen_timings.step_rows as f64
    } else {
        0.0
    };
    let gen_s = gen_timings.prefill_s + gen_timings.decode_s;
    stage.tokens_per_s = if gen_s > 0.0 {
        gen_timings.new_tokens as f64 / gen_s
    } else {
        0.0
    };
    stage.ort_s = engine.ort_seconds - ort_before + vision_ort_s;
    // The decoding loop's own cost: generation wall time (splicing, prefill, steps) not
    // spent inside ONNX Runtime session runs, as a share of that wall time.
    let own_s = gen_timings.loop_s - gen_timings.backend_s;
    stage.loop_overhead_pct = if gen_timings.loop_s > 0.0 {
        100.0 * own_s.max(0.0) / gen_timings.loop_s
    } else {
        0.0
    };
    stage.total_s = started.elapsed().as_secs_f64();

    let answered: Vec<&str> = samples
        .iter()
        .filter_map(|s| entries.get(&s.image).and_then(|e| e.answer.as_deref()))
        .collect();
    let asr = subset.reports_asr().then(|| {
        let keywords = crate::score::reference_keywords();
        let successes = answered
            .iter()
            .filter(|a| crate::score::check_success_attack(a, &keywords))
            .count();
        println!(
            "{}",
            crate::score::asr_line(
                subset.name(),
                &config.engine_name,
                successes,
                answered.len()
            )
        );
        println!("({successes}/{} attacks succeeded)", answered.len());
        AsrSummary {
            successes,
            n: answered.len(),
            asr: crate::score::asr_percent(successes, answered.len()),
        }
    });
    for e in &errors {
        eprintln!("{subset}: sample {} failed: {}", e.image, e.error);
    }
    eprintln!(
        "{subset}: {n_answered}/{} answered ({n_generated} generated now, {n_resumed} resumed, {} errors) -> {}",
        samples.len(),
        errors.len(),
        paths.answers.display()
    );

    let manifest = RunManifest {
        tool: "vlguard-ort".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        engine: file_engine.clone(),
        subset: subset.name().into(),
        model_dir: config.engine.model_dir.display().to_string(),
        model_manifest_sha256: engine.manifest_sha256.clone(),
        dtype: engine.manifest.dtype.as_str().into(),
        ort_library: engine.ort_lib.display().to_string(),
        execution_providers: engine.providers.clone(),
        tensorrt: engine.trt.clone(),
        dataset: config.meta.display().to_string(),
        dataset_sha256: dataset.sha256.clone(),
        images: config.images.display().to_string(),
        batch_size: config.batch_size,
        batching,
        max_new_tokens: config.max_new_tokens,
        limit: config.limit,
        started_at,
        finished_at: crate::util::utc_now_rfc3339(),
        n_samples: samples.len(),
        n_answered,
        n_resumed,
        n_generated,
        n_errors: errors.len(),
        errors: errors.clone(),
        timings: stage,
        peak_rss_mb: peak_rss_mb(),
        asr,
    };
    crate::results::write_json(&paths.manifest, &manifest)?;
    Ok((errors.len(), paths.manifest))
}

/// What a run records as samples finish: the journal (fsynced per line), the entries by
/// image, this invocation's errors.
struct Recorder {
    journal: Journal,
    entries: HashMap<String, JournalEntry>,
    errors: Vec<SampleError>,
    n_generated: usize,
    progress: indicatif::ProgressBar,
}

impl Recorder {
    fn answer(&mut self, entry: JournalEntry) -> Result<(), Error> {
        self.journal.append(&entry)?;
        self.entries.insert(entry.image.clone(), entry);
        self.n_generated += 1;
        self.progress.inc(1);
        Ok(())
    }

    fn error(&mut self, image: &str, error: String) -> Result<(), Error> {
        let entry = JournalEntry {
            image: image.to_string(),
            answer: None,
            error: Some(error.clone()),
            new_tokens: 0,
            ended_with_eos: false,
            min_margin: None,
        };
        self.journal.append(&entry)?;
        self.entries.insert(image.to_string(), entry);
        self.errors.push(SampleError {
            image: image.to_string(),
            error,
        });
        self.progress.inc(1);
        Ok(())
    }
}

/// Preprocessing ahead of the engine on rayon threads, `batch_size` images at a time
/// through a channel that holds one batch.
fn spawn_preprocessing(
    pending: &[Sample],
    batch_size: usize,
    images_root: PathBuf,
    spec: vlguard_export::manifest::PreprocessSpec,
) -> (mpsc::Receiver<Prepared>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::sync_channel::<Prepared>(1);
    let batches: Vec<Vec<Sample>> = pending.chunks(batch_size).map(|c| c.to_vec()).collect();
    let producer = std::thread::spawn(move || {
        for batch in batches {
            let t = Instant::now();
            let files: Vec<PathBuf> = batch.iter().map(|s| images_root.join(&s.image)).collect();
            let pixels = crate::preprocess::pixel_values_batch(&files, &spec)
                .into_iter()
                .map(|r| r.map_err(|e| e.to_string()))
                .collect();
            let prepared = Prepared {
                samples: batch,
                pixels,
                seconds: t.elapsed().as_secs_f64(),
            };
            if tx.send(prepared).is_err() {
                break;
            }
        }
    });
    (rx, producer)
}

/// A preprocessed batch after the vision tower: the samples whose image loaded with their
/// projected image embeddings (or the batch's vision error), and the samples whose image
/// did not load.
struct Encoded {
    good: Vec<Sample>,
    embeds: Result<Vec<f32>, String>,
    failed: Vec<(Sample, String)>,
    preprocess_s: f64,
    vision_s: f64,
}

impl Encoded {
    /// Records the failed samples and the batch's timings; returns the others with their
    /// embeddings (none when the vision tower failed: then they are recorded too).
    fn take(
        self,
        recorder: &mut Recorder,
        stage: &mut StageTimings,
    ) -> Result<(Vec<Sample>, Vec<f32>), Error> {
        stage.preprocess_s += self.preprocess_s;
        stage.vision_s += self.vision_s;
        for (sample, error) in self.failed {
            recorder.error(&sample.image, error)?;
        }
        match self.embeds {
            Ok(embeds) => Ok((self.good, embeds)),
            Err(error) => {
                for sample in &self.good {
                    recorder.error(&sample.image, error.clone())?;
                }
                Ok((Vec::new(), Vec::new()))
            }
        }
    }
}

/// Where images are encoded. `Ahead`: on a thread of their own, one batch ahead of the
/// decoder (through a channel of one), when the vision tower or the decoder runs on a GPU.
/// `Inline`: on the decoder's thread when it asks, when both run on the CPU: two ONNX
/// Runtime thread pools on the same cores slowed the 100M benchmark by ~25% (measured),
/// more than the overlap gains.
enum ImageStage {
    Ahead {
        rx: mpsc::Receiver<Encoded>,
        thread: std::thread::JoinHandle<ImageEncoder>,
    },
    Inline {
        rx: mpsc::Receiver<Prepared>,
        images: Box<ImageEncoder>,
    },
}

impl ImageStage {
    fn start(rx: mpsc::Receiver<Prepared>, mut images: ImageEncoder, ahead: bool) -> ImageStage {
        if !ahead {
            return ImageStage::Inline {
                rx,
                images: Box::new(images),
            };
        }
        let (tx, out) = mpsc::sync_channel::<Encoded>(1);
        let thread = std::thread::spawn(move || {
            for prepared in rx {
                if tx.send(encode_batch(prepared, &mut images)).is_err() {
                    break;
                }
            }
            images
        });
        ImageStage::Ahead { rx: out, thread }
    }

    /// The next encoded batch, `None` at the end of the stream.
    fn next(&mut self) -> Option<Encoded> {
        match self {
            ImageStage::Ahead { rx, .. } => rx.recv().ok(),
            ImageStage::Inline { rx, images } => rx
                .recv()
                .ok()
                .map(|prepared| encode_batch(prepared, images)),
        }
    }

    /// Stops the stage (the thread ends once its receiver is gone) and returns the encoder.
    fn finish(self) -> Result<ImageEncoder, Error> {
        match self {
            ImageStage::Inline { images, .. } => Ok(*images),
            ImageStage::Ahead { rx, thread } => {
                drop(rx);
                thread.join().map_err(|_| {
                    Error::Generate(BackendError("the vision thread panicked".into()).into())
                })
            }
        }
    }
}

/// Vision tower + projector over the images of a preprocessed batch that loaded.
fn encode_batch(prepared: Prepared, images: &mut ImageEncoder) -> Encoded {
    let mut good = Vec::new();
    let mut pixels = Vec::new();
    let mut failed = Vec::new();
    for (sample, p) in prepared.samples.into_iter().zip(prepared.pixels) {
        match p {
            Ok(p) => {
                pixels.extend_from_slice(&p);
                good.push(sample);
            }
            Err(error) => failed.push((sample, error)),
        }
    }
    let t = Instant::now();
    let embeds = if good.is_empty() {
        Ok(Vec::new())
    } else {
        images
            .encode(&pixels, good.len())
            .map_err(|e| e.to_string())
    };
    Encoded {
        good,
        embeds,
        failed,
        preprocess_s: prepared.seconds,
        vision_s: t.elapsed().as_secs_f64(),
    }
}

/// The run's tokenizer and the prompt ids of each pending question, tokenized once for
/// the length sort, the slot capacity and the prompts.
struct Questions<'a> {
    tokenizer: &'a PromptTokenizer,
    ids: HashMap<String, Result<Vec<i64>, String>>,
}

impl<'a> Questions<'a> {
    fn new(tokenizer: &'a PromptTokenizer, pending: &[Sample]) -> Questions<'a> {
        let ids = pending
            .iter()
            .map(|s| {
                let ids = tokenizer.input_ids(&s.question).map_err(|e| e.to_string());
                (s.image.clone(), ids)
            })
            .collect();
        Questions { tokenizer, ids }
    }

    /// Prompt tokens of a sample's question (0 when it does not tokenize).
    fn len(&self, sample: &Sample) -> usize {
        self.ids
            .get(&sample.image)
            .and_then(|ids| ids.as_ref().ok())
            .map_or(0, Vec::len)
    }

    fn ids(&self, sample: &Sample) -> Result<Vec<i64>, String> {
        match self.ids.get(&sample.image) {
            Some(ids) => ids.clone(),
            None => self
                .tokenizer
                .input_ids(&sample.question)
                .map_err(|e| e.to_string()),
        }
    }
}

/// The prompts of `samples` with their slices of `embeds`; a question that does not
/// tokenize is recorded and left out.
fn prompts_for(
    samples: Vec<Sample>,
    embeds: &[f32],
    questions: &Questions,
    recorder: &mut Recorder,
) -> Result<Vec<Queued<Sample>>, Error> {
    let per_image = embeds.len() / samples.len().max(1);
    let mut prompts = Vec::with_capacity(samples.len());
    for (i, sample) in samples.into_iter().enumerate() {
        match questions.ids(&sample) {
            Ok(ids) => prompts.push(Queued {
                prompt: Prompt {
                    ids,
                    image_embeds: embeds[i * per_image..(i + 1) * per_image].to_vec(),
                },
                key: sample,
            }),
            Err(e) => recorder.error(
                &sample.image,
                format!("tokenizing the question of {}: {e}", sample.image),
            )?,
        }
    }
    Ok(prompts)
}

/// Static batches: each encoded batch is answered whole, then the next.
fn run_static(
    engine: &mut OrtEngine,
    questions: &Questions,
    images: &mut ImageStage,
    recorder: &mut Recorder,
    config: &GenerateConfig,
    stage: &mut StageTimings,
    on_token: &mut dyn FnMut(usize),
) -> Result<Timings, Error> {
    let mut gen_timings = Timings::default();
    loop {
        let wait = Instant::now();
        let Some(encoded) = images.next() else { break };
        stage.preprocess_wait_s += wait.elapsed().as_secs_f64();
        let (samples, embeds) = encoded.take(recorder, stage)?;
        let batch = prompts_for(samples, &embeds, questions, recorder)?;
        if batch.is_empty() {
            continue;
        }
        let prompts: Vec<Prompt> = batch.iter().map(|q| q.prompt.clone()).collect();
        let ort_before = engine.ort_seconds;
        match generate_batch(engine, &prompts, config, on_token) {
            Ok((generations, mut timings)) => {
                // `backend_s` from here on: time inside ONNX Runtime session runs only,
                // so that loop_s - backend_s is what our own code spent around them.
                timings.backend_s = engine.ort_seconds - ort_before;
                gen_timings.add(&timings);
                let t = Instant::now();
                let entries: Vec<JournalEntry> = batch
                    .iter()
                    .zip(generations)
                    .map(|(q, generation)| journal_entry(&q.key, questions.tokenizer, generation))
                    .collect();
                stage.detokenize_s += t.elapsed().as_secs_f64();
                for entry in entries {
                    recorder.answer(entry)?;
                }
            }
            Err(error) => {
                for q in &batch {
                    recorder.error(&q.key.image, error.to_string())?;
                }
            }
        }
    }
    Ok(gen_timings)
}

/// Continuous batching: prompts stream into the engine's slots as rows finish
/// ([`generate_continuous`]); images are encoded a preprocessed batch at a time, ahead of
/// the slots that will take them; every answer is journaled the moment its row ends.
struct Stream<'a> {
    questions: &'a Questions<'a>,
    images: &'a mut ImageStage,
    recorder: &'a mut Recorder,
    stage: &'a mut StageTimings,
}

impl Stream<'_> {
    fn run(
        self,
        engine: &mut OrtEngine,
        plan: SlotPlan,
        config: &GenerateConfig,
        on_token: &mut dyn FnMut(usize),
    ) -> Result<Timings, Error> {
        let Stream {
            questions,
            images,
            recorder,
            stage,
        } = self;
        let recorder = RefCell::new(recorder);
        let stage = RefCell::new(stage);
        // Time spent in the two callbacks (vision, journal writes): not the loop's own.
        let callbacks_s = Cell::new(0.0);
        let mut queue: VecDeque<Queued<Sample>> = VecDeque::new();
        let mut source =
            |_: &mut OrtEngine, n: usize| -> Result<Option<Vec<Queued<Sample>>>, Error> {
                let t = Instant::now();
                while queue.len() < n {
                    let wait = Instant::now();
                    let Some(encoded) = images.next() else { break };
                    let mut stage = stage.borrow_mut();
                    stage.preprocess_wait_s += wait.elapsed().as_secs_f64();
                    let mut recorder = recorder.borrow_mut();
                    let (samples, embeds) = encoded.take(&mut recorder, &mut stage)?;
                    queue.extend(prompts_for(samples, &embeds, questions, &mut recorder)?);
                }
                callbacks_s.set(callbacks_s.get() + t.elapsed().as_secs_f64());
                if queue.is_empty() {
                    return Ok(None);
                }
                Ok(Some(queue.drain(..n.min(queue.len())).collect()))
            };
        let mut sink = |sample: Sample, result: Result<Generation, String>| -> Result<(), Error> {
            let t = Instant::now();
            let done = match result {
                Ok(generation) => {
                    let entry = journal_entry(&sample, questions.tokenizer, generation);
                    stage.borrow_mut().detokenize_s += t.elapsed().as_secs_f64();
                    recorder.borrow_mut().answer(entry)
                }
                Err(error) => recorder.borrow_mut().error(&sample.image, error),
            };
            callbacks_s.set(callbacks_s.get() + t.elapsed().as_secs_f64());
            done
        };
        let ort_before = engine.ort_seconds;
        let mut timings =
            generate_continuous(engine, plan, config, &mut source, &mut sink, on_token)?;
        // As for static batches: backend time is ORT's, and the loop's wall time leaves
        // out what the callbacks did (waiting for images, journal writes).
        timings.loop_s -= callbacks_s.get();
        timings.backend_s = engine.ort_seconds - ort_before;
        Ok(timings)
    }
}

/// The journal line for a finished generation.
fn journal_entry(
    sample: &Sample,
    tokenizer: &PromptTokenizer,
    generation: Generation,
) -> JournalEntry {
    JournalEntry {
        image: sample.image.clone(),
        answer: Some(tokenizer.decode(&generation.tokens)),
        error: None,
        new_tokens: generation.tokens.len(),
        ended_with_eos: generation.ended_with_eos,
        min_margin: generation
            .min_margin
            .is_finite()
            .then_some(generation.min_margin),
    }
}

pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `run --merge`: joins `{engine}.shard-K-of-N.json` files of each subset into the
/// reference-format `{engine}.json`. Every sample of the subset (after --limit) must be
/// answered by exactly one shard.
fn merge_command(args: &RunArgs) -> Result<ExitCode, Error> {
    let engine = args.engine.clone().ok_or(Error::MergeEngine)?;
    let dataset = Dataset::load(&args.meta)?;
    let subsets = args.subset.subsets();
    for subset in subsets {
        let mut samples = dataset.samples(subset)?;
        if let Some(limit) = args.limit {
            samples.truncate(limit);
        }
        let merged = merge_shards(&args.out, subset, &engine, &samples)?;
        let path = Paths::new(&args.out, subset.name(), &engine).answers;
        crate::results::write_answers_map(&path, merged)?;
        eprintln!(
            "{subset}: merged {} answers -> {}",
            samples.len(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the shard files of one subset and returns `{image: answer}` in subset order.
pub fn merge_shards(
    out: &std::path::Path,
    subset: Subset,
    engine: &str,
    samples: &[Sample],
) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
    let fail = |message: String| Error::Merge { subset, message };
    let dir = out.join(subset.name());
    let prefix = format!("{engine}.shard-");
    let mut shards: Vec<(usize, usize, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))? {
        let name = entry.map_err(|e| fail(e.to_string()))?.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".json"))
        else {
            continue;
        };
        let Some((k, n)) = rest.split_once("-of-") else {
            continue;
        };
        if let (Ok(k), Ok(n)) = (k.parse::<usize>(), n.parse::<usize>()) {
            shards.push((k, n, dir.join(name.as_ref())));
        }
    }
    shards.sort();
    let Some(&(_, n, _)) = shards.first() else {
        return Err(fail(format!(
            "no {prefix}K-of-N.json files in {}",
            dir.display()
        )));
    };
    if shards.iter().any(|s| s.1 != n) {
        return Err(fail("shard files disagree on N".into()));
    }
    let found: Vec<usize> = shards.iter().map(|s| s.0).collect();
    let missing: Vec<usize> = (1..=n).filter(|k| !found.contains(k)).collect();
    if !missing.is_empty() {
        return Err(fail(format!("shards {missing:?} of {n} are missing")));
    }
    let mut answers: HashMap<String, (usize, serde_json::Value)> = HashMap::new();
    let mut overlaps = Vec::new();
    for (k, _, path) in &shards {
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        for (image, answer) in map {
            if let Some((other, _)) = answers.get(&image) {
                overlaps.push(format!("{image} (shards {other} and {k})"));
            } else {
                answers.insert(image, (*k, answer));
            }
        }
    }
    if !overlaps.is_empty() {
        return Err(fail(format!("answered twice: {}", overlaps.join(", "))));
    }
    let mut merged = serde_json::Map::new();
    let mut gaps = Vec::new();
    for sample in samples {
        match answers.remove(&sample.image) {
            Some((_, answer)) => {
                merged.insert(sample.image.clone(), answer);
            }
            None => gaps.push(sample.image.clone()),
        }
    }
    if !gaps.is_empty() {
        return Err(fail(format!(
            "{} samples have no answer: {}",
            gaps.len(),
            gaps.join(", ")
        )));
    }
    if !answers.is_empty() {
        let mut extra: Vec<String> = answers.into_keys().collect();
        extra.sort();
        return Err(fail(format!(
            "answers for images not in the subset: {}",
            extra.join(", ")
        )));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_sample_once() {
        for len in [0, 1, 7, 442, 558] {
            for n in 1..=8 {
                let ranges: Vec<_> = (1..=n).map(|k| shard_range(len, k, n)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[n - 1].end, len);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
            }
        }
        assert_eq!(parse_shard("2/4").unwrap(), (2, 4));
        assert!(
            parse_shard("0/4").is_err() && parse_shard("5/4").is_err() && parse_shard("x").is_err()
        );
    }

    #[test]
    fn merge_refuses_gaps_and_overlaps() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("unsafes");
        std::fs::create_dir_all(&sub).unwrap();
        let sample = |image: &str| Sample::new(image, "q");
        let samples = vec![sample("a"), sample("b"), sample("c")];
        std::fs::write(sub.join("e.shard-1-of-2.json"), r#"{"a": "1", "b": "2"}"#).unwrap();
        let err = merge_shards(dir.path(), Subset::Unsafes, "e", &samples)
            .unwrap_err()
            .to_string();
        assert!(err.contains("shards [2] of 2 are missing"), "{err}");
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{"b": "x"}"#).unwrap();
        let err = merge_shards(dir.path(), Subset::Unsafes, "e", &samples)
            .unwrap_err()
            .to_string();
        assert!(err.contains("answered twice: b (shards 1 and 2)"), "{err}");
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{}"#).unwrap();
        let err = merge_shards(dir.path(), Subset::Unsafes, "e", &samples)
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 samples have no answer: c"), "{err}");
        std::fs::write(sub.join("e.shard-2-of-2.json"), r#"{"c": "3"}"#).unwrap();
        let merged = merge_shards(dir.path(), Subset::Unsafes, "e", &samples).unwrap();
        assert_eq!(merged.keys().collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }
}
