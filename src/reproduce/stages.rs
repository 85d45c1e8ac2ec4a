//! The stages of one model, each calling the library function of its command: weights
//! (`prepare` for a Hub source, `export` for local folders), `run`, `score`, `judge`, and
//! the optional deletion of the model folder.
//!
//! Guarantees: a stage the status shows done is skipped, so a rerun after a kill redoes
//! nothing finished: the model folder is kept when its manifest is there and its files
//! verify against it (a folder that fails is exported again), downloads resume (`fetch`),
//! exports are atomic (staged, then renamed; a stale staging folder of a killed export is
//! removed first), `run` resumes from its journals, `judge` from its journal. A Hub model
//! is pinned to the commit its revision named when first prepared, recorded in
//! `OUT/reproduce/sources/NAME.json` (that commit is the table's record of it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::dataset::Subset;
use crate::export::manifest::Manifest;
use crate::fetch::{self, Hub, Policy, Token};
use crate::results::Paths;
use crate::run::RunConfig;
use crate::score::{KeywordList, ScoreConfig};

use super::plan::{Model, Source};
use super::status::{self, ModelStatus, State};
use super::Settings;

/// Why a stage of one model failed; the model is reported and skipped.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("weights: {0}")]
    Prepare(#[from] crate::prepare::Error),
    #[error("weights: the Hub: {0}")]
    Hub(#[from] fetch::Error),
    #[error("weights: {0}")]
    Export(#[from] crate::export::ExportError),
    #[error("weights: {dir} was exported as {found}, the entry asks for {wanted}: give the entry another name, or delete that folder and the model's results")]
    Mismatch {
        dir: PathBuf,
        found: String,
        wanted: String,
    },
    #[error("run: {0}")]
    Run(#[from] crate::run::Error),
    #[error("score: {0}")]
    Score(#[from] crate::score::Error),
    #[error("judge: {0}")]
    Judge(#[from] crate::judge::Error),
    #[error("harm judge: {0}")]
    Harm(crate::judge::Error),
    #[error("{stage}: {what} {path}: {source}")]
    Io {
        stage: Stage,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(
    stage: Stage,
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StageError + 'a {
    move |source| StageError::Io {
        stage,
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The stages, for the cell a failure is shown in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Weights,
    Run,
    Score,
    Judge,
    Harm,
    Delete,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Weights => "weights",
            Stage::Run => "run",
            Stage::Score => "score",
            Stage::Judge => "judge",
            Stage::Harm => "harm",
            Stage::Delete => "delete",
        })
    }
}

impl StageError {
    pub fn stage(&self) -> Stage {
        match self {
            StageError::Prepare(_)
            | StageError::Hub(_)
            | StageError::Export(_)
            | StageError::Mismatch { .. } => Stage::Weights,
            StageError::Run(_) => Stage::Run,
            StageError::Score(_) => Stage::Score,
            StageError::Judge(_) => Stage::Judge,
            StageError::Harm(_) => Stage::Harm,
            StageError::Io { stage, .. } => *stage,
        }
    }
}

/// `OUT/reproduce/sources/NAME.json`: where a model's weights came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// `hub` or `local`.
    pub kind: String,
    /// The Hub repo, or the local checkpoint folder.
    pub from: String,
    /// The revision asked for (Hub), or null.
    pub revision: Option<String>,
    /// The commit that revision named when the model was prepared (Hub), or null.
    pub commit: Option<String>,
    pub vision_tower: Option<String>,
    pub base: Option<String>,
}

impl SourceRecord {
    pub fn path(settings: &Settings, model: &Model) -> PathBuf {
        settings
            .out
            .join("reproduce/sources")
            .join(format!("{}.json", model.name))
    }

    pub fn read(settings: &Settings, model: &Model) -> Option<SourceRecord> {
        crate::formats::read(&Self::path(settings, model), "source record").ok()
    }
}

/// What one model's stages did in this invocation.
#[derive(Debug, Default)]
pub struct Done {
    pub exported_now: bool,
    pub sample_errors: usize,
    pub deleted: bool,
}

/// Every stage of `model` that is not done, in order; stops at the first failure.
pub fn process(
    settings: &Settings,
    model: &Model,
    place: &str,
    device: i32,
    weights_lock: &Mutex<()>,
) -> Result<Done, StageError> {
    let mut done = Done::default();
    let status = status::status(settings, model);
    let say = |what: &str| eprintln!("reproduce {place} {} (device {device}): {what}", model.name);
    if !status.runs_done() {
        {
            // One download / export at a time: they are disk, network and memory bound,
            // and the free-space check must see the space the previous export took.
            let _one = weights_lock.lock().unwrap_or_else(|e| e.into_inner());
            say("weights");
            done.exported_now = weights(settings, model)?;
        }
        say("run");
        done.sample_errors = run(settings, model, device, &status)?;
    }
    if !status::status(settings, model).score.is_done() {
        say("score");
        score(settings, model)?;
    }
    if matches!(
        status::status(settings, model).judge,
        State::Pending | State::Partial { .. }
    ) {
        say("judge");
        judge(settings, model)?;
    }
    if matches!(
        status::status(settings, model).harm,
        State::Pending | State::Partial { .. }
    ) {
        say("harm judge");
        harm(settings, model)?;
    }
    if !settings.keep_models && status::status(settings, model).all_done() {
        done.deleted = delete_model(settings, model)?;
    }
    Ok(done)
}

/// The model folder there and verified (kept), or made; true when exported now.
fn weights(settings: &Settings, model: &Model) -> Result<bool, StageError> {
    let dir = status::model_dir(settings, model);
    let force = match Manifest::load(&dir) {
        Ok((manifest, _)) => match check_kept(&dir, &manifest, model)? {
            Ok(()) => {
                if SourceRecord::read(settings, model).is_none() {
                    record_source(settings, model, None)?;
                }
                return Ok(false);
            }
            Err(why) => {
                eprintln!("reproduce: {}: {why}: exporting it again", model.name);
                true
            }
        },
        // No readable manifest: whatever is in the folder is replaced.
        Err(_) => dir.exists(),
    };
    remove_stale_staging(&dir);
    match &model.source {
        Source::Local {
            checkpoint,
            vision_tower,
            base,
        } => {
            let opts = crate::export::ExportOptions {
                checkpoint: checkpoint.clone(),
                vision_tower: vision_tower.clone(),
                base: base.clone(),
                out: dir,
                dtype: model.dtype,
                force,
                random_weights: false,
                flavour: model.flavour,
            };
            let report = crate::export::export(&opts)?;
            eprint!("{}", crate::export_cmd::summary(&report));
            record_source(settings, model, None)?;
        }
        Source::Hub {
            prepare,
            repo,
            revision,
            base,
        } => {
            // Pinned: the commit the revision names now, or the one recorded earlier (a
            // rerun after a kill fetches the same files it started on).
            let commit = match SourceRecord::read(settings, model).and_then(|r| r.commit) {
                Some(commit) => commit,
                None => {
                    hub(settings)?
                        .list(fetch::RepoKind::Model, repo, revision)?
                        .commit
                }
            };
            record_source(settings, model, Some(&commit))?;
            let args = crate::prepare::PrepareArgs {
                name: Some(prepare.clone()),
                list: false,
                dtype: model.dtype.as_str().into(),
                decoder: model.flavour.as_str().into(),
                out: Some(dir),
                checkpoints: settings.checkpoints.clone(),
                base: base.clone(),
                revision: commit,
                force,
                endpoint: settings.endpoint.clone(),
                attempts: settings.attempts,
                quiet: settings.quiet,
            };
            crate::prepare::command(&args)?;
        }
    }
    Ok(true)
}

/// A kept model folder must be what the entry asks for (its answers are journaled under
/// this export's hash) and verify against its manifest (`Ok(Err)`: export it again).
fn check_kept(
    dir: &Path,
    manifest: &Manifest,
    model: &Model,
) -> Result<Result<(), crate::engine::verify::VerifyError>, StageError> {
    let found = (manifest.dtype, manifest.decoder.flavour);
    if found != (model.dtype, model.flavour) {
        let show = |(d, f): (crate::export::Dtype, crate::export::Flavour)| {
            format!("{} with the {} decoder", d.as_str(), f.as_str())
        };
        return Err(StageError::Mismatch {
            dir: dir.to_path_buf(),
            found: show(found),
            wanted: show((model.dtype, model.flavour)),
        });
    }
    Ok(crate::engine::verify::verify(dir, manifest))
}

fn hub(settings: &Settings) -> Result<Hub, fetch::Error> {
    let policy = Policy {
        attempts: settings.attempts.max(1),
        progress: !settings.quiet,
        ..Policy::default()
    };
    let token = std::env::var("HF_TOKEN").ok().and_then(Token::new);
    Hub::new(&settings.endpoint, token, policy)
}

fn record_source(
    settings: &Settings,
    model: &Model,
    commit: Option<&str>,
) -> Result<(), StageError> {
    let shown = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let record = match &model.source {
        Source::Hub {
            repo,
            revision,
            base,
            ..
        } => SourceRecord {
            kind: "hub".into(),
            from: repo.clone(),
            revision: Some(revision.clone()),
            commit: commit.map(str::to_string),
            vision_tower: None,
            base: base.clone(),
        },
        Source::Local {
            checkpoint,
            vision_tower,
            base,
        } => SourceRecord {
            kind: "local".into(),
            from: checkpoint.display().to_string(),
            revision: None,
            commit: None,
            vision_tower: shown(vision_tower),
            base: shown(base),
        },
    };
    let path = SourceRecord::path(settings, model);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(Stage::Weights, "cannot create", parent))?;
    }
    crate::formats::write_pretty_json(&path, &record).map_err(io(
        Stage::Weights,
        "cannot write",
        &path,
    ))
}

/// Removes `.NAME.partial-PID` folders (an export's staging) of processes that are gone:
/// a killed export leaves one, as big as the model.
fn remove_stale_staging(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    }) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix) else {
            continue;
        };
        let pid = pid.split('.').next().unwrap_or_default();
        let alive = pid.parse::<u32>().is_ok_and(|pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            eprintln!(
                "reproduce: removed {} (a killed export's)",
                entry.path().display()
            );
        }
    }
}

/// `run` of the subsets not done, resuming from their journals; the sample error count.
fn run(
    settings: &Settings,
    model: &Model,
    device: i32,
    status: &ModelStatus,
) -> Result<usize, StageError> {
    let pending: Vec<Subset> = status
        .runs
        .iter()
        .filter(|(_, s)| !s.is_done())
        .map(|(subset, _)| *subset)
        .collect();
    let mut config = RunConfig::from_args(&settings.run_args(model, device))?;
    config.subsets = pending;
    Ok(crate::run::run(&config)?.errors)
}

/// Each asked subset's answers scored (over this run's samples) into the score file.
fn score(settings: &Settings, model: &Model) -> Result<(), StageError> {
    for &(subset, _) in &settings.subsets {
        let answers = Paths::new(&settings.out, subset.name(), &model.name).answers;
        let mut meta = crate::score::load_subset_meta(&settings.meta, subset)?;
        if let Some(limit) = settings.limit {
            meta.truncate(limit);
        }
        let predictions = crate::score::read_predictions(&answers)?;
        let config = ScoreConfig {
            subset,
            keywords: KeywordList::reference(),
            engine: model.name.clone(),
            predictions_path: answers,
            meta_path: settings.meta.clone(),
        };
        let report = crate::score::score(&predictions, &meta, &config)?;
        let path = status::score_path(settings, model, subset);
        let text = crate::util::to_python_json(&report, 2).map_err(crate::score::Error::from)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(Stage::Score, "cannot create", parent))?;
        }
        crate::util::write_atomic(&path, format!("{text}\n").as_bytes()).map_err(io(
            Stage::Score,
            "cannot write",
            &path,
        ))?;
    }
    Ok(())
}

/// The helpfulness judge of the safe_safes answers, resuming from its journal.
fn judge(settings: &Settings, model: &Model) -> Result<(), StageError> {
    let Some(template) = &settings.judge else {
        return Ok(());
    };
    let mut args = template.clone();
    args.predictions = Paths::new(&settings.out, Subset::SafeSafes.name(), &model.name).answers;
    args.out = Some(status::judge_out(settings, model));
    args.engine = Some(model.name.clone());
    let config = crate::judge::JudgeConfig::from_args(&args, |name| std::env::var(name).ok())?;
    crate::judge::run(&config, &mut std::io::stdout().lock())?;
    Ok(())
}

/// The harm judge of each unsafes / safe_unsafes answers file, into the files the
/// leaderboard reads (`OUT/judge/{subset}/NAME.*`), resuming from its journal.
fn harm(settings: &Settings, model: &Model) -> Result<(), StageError> {
    let Some(template) = &settings.judge else {
        return Ok(());
    };
    for subset in status::harm_subsets(settings) {
        let mut args = template.clone();
        args.task = crate::judge::TaskArg::Harm;
        args.swap = false;
        args.predictions = Paths::new(&settings.out, subset.name(), &model.name).answers;
        args.subset = Some(subset);
        args.meta = Some(settings.meta.clone());
        args.engine = Some(model.name.clone());
        args.out = None;
        let config = crate::judge::JudgeConfig::from_args(&args, |name| std::env::var(name).ok())
            .map_err(StageError::Harm)?;
        crate::judge::harm::run(&config, &mut std::io::stdout().lock())
            .map_err(StageError::Harm)?;
    }
    Ok(())
}

/// The model folder (and, for a Hub model, its own downloaded repo; a shared base or
/// tower stays) removed once every stage is done.
fn delete_model(settings: &Settings, model: &Model) -> Result<bool, StageError> {
    let mut folders = vec![status::model_dir(settings, model)];
    if let Source::Hub { repo, .. } = &model.source {
        folders.push(settings.checkpoints.join(repo));
    }
    let mut deleted = false;
    for folder in folders.into_iter().filter(|f| f.exists()) {
        std::fs::remove_dir_all(&folder).map_err(io(Stage::Delete, "cannot delete", &folder))?;
        eprintln!("reproduce: {}: deleted {}", model.name, folder.display());
        deleted = true;
    }
    Ok(deleted)
}
