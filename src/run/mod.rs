//! `vlguard-ort run`: the VLGuard evaluation end to end.
//!
//! Contract: for each requested subset, answers every sample not already answered in the
//! journal (same configuration fingerprint), writes `OUT/{subset}/{engine}.json` exactly
//! as VLGuard_eval.py does, the run manifest beside it, and prints the reference's ASR
//! line (unsafes, safe_unsafes) with k/n. With more than one slot, prompts run sorted by
//! length (less padding). Three stages overlap a batch apart ([`pipeline`]):
//! preprocessing on rayon threads, the vision tower + projector (on a thread of its own
//! when a GPU is involved, inline on a CPU), and the decoder under the generator's
//! static or continuous refill policy ([`schedule`]). A bad sample (unreadable image, a
//! question that does not tokenize) is journaled with its error, reported, left out of
//! the answers file, and makes the exit code 1; the rest of the run completes.
//!
//! Layout: [`args`] (flags and the validated config), [`pipeline`] (image stages),
//! [`schedule`] (the generator's feed, journal recording, refill policy), [`manifest`]
//! (the run manifest and its timings).

mod args;
mod manifest;
mod pipeline;
mod schedule;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

pub use crate::formats::{AsrSummary, RunManifest, SampleError, StageTimings};
pub use args::{parse_engine_name, Batching, RunArgs, RunConfig, Shard, SubsetArg, Toggle};

use crate::dataset::{Dataset, Sample, Subset};
use crate::engine::Engine;
use crate::generate::{self, GenerateConfig, Schedule, Timings};
use crate::prompt::{PromptShape, PromptTokenizer};
use crate::results::{Fingerprint, Journal, JournalEntry, Lock, Paths};
use pipeline::{ImageSource, Images};
use schedule::{Answering, FeedTimings, Questions, Recorder};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--batch-size must be at least 1")]
    BatchSize,
    #[error("--max-new-tokens must be at least 1")]
    MaxTokens,
    #[error("image folder {0} does not exist (fetch the dataset with `vlguard-ort fetch dataset`, or pass --images)")]
    Images(PathBuf),
    #[error(
        "--images {0} is not a folder (it names the folder test.json's image paths are under)"
    )]
    ImagesNotDir(PathBuf),
    #[error("model directory {0} has no manifest.json (export one with `vlguard-ort export`)")]
    Model(PathBuf),
    #[error("--batching continuous needs a model exported with --decoder fused ({0} has the plain decoder, or no CUDA runtime to refill slots on the GPU)")]
    Continuous(PathBuf),
    #[error("{0}")]
    Shard(String),
    #[error("{0} (pass --engine NAME)")]
    EngineName(String),
    #[error("an image stage thread panicked")]
    ImageStage,
    #[error(transparent)]
    Dataset(#[from] crate::dataset::Error),
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error(transparent)]
    Prompt(#[from] crate::prompt::PromptError),
    #[error(transparent)]
    Results(#[from] crate::results::Error),
    #[error(transparent)]
    Generate(generate::Error<crate::engine::Error>),
}

pub fn command(args: &RunArgs) -> Result<ExitCode, Error> {
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

/// What every subset of a run shares.
struct Context<'a> {
    config: &'a RunConfig,
    dataset: &'a Dataset,
    tokenizer: &'a PromptTokenizer,
    session_load_s: f64,
}

/// Runs every subset of the configuration with one engine.
pub fn run(config: &RunConfig) -> Result<Outcome, Error> {
    let dataset = Dataset::load(&config.meta)?;
    // One writer per results file: taken before anything slow, so that a second run on
    // the same files exits at once.
    let mut locks = Vec::with_capacity(config.subsets.len());
    for subset in &config.subsets {
        let paths = Paths::new(&config.out, subset.name(), &config.file_engine());
        locks.push(Lock::acquire(&paths.lock)?);
    }
    let load_started = Instant::now();
    let mut engine = Engine::open(&config.engine)?;
    let session_load_s = load_started.elapsed().as_secs_f64();
    let tokenizer =
        PromptTokenizer::for_model(&config.engine.model_dir, &engine.manifest.tokenizer)?;
    let providers: Vec<String> = engine
        .providers
        .iter()
        .map(|(graph, provider)| format!("{graph}={provider}"))
        .collect();
    eprintln!(
        "model {} ({}), providers: {}",
        config.engine.model_dir.display(),
        engine.manifest.dtype.as_str(),
        providers.join(", ")
    );
    for (graph, build) in &engine.tensorrt {
        eprintln!("{}", build.describe(*graph));
    }
    let cx = Context {
        config,
        dataset: &dataset,
        tokenizer: &tokenizer,
        session_load_s,
    };
    let mut outcome = Outcome {
        errors: 0,
        manifests: Vec::new(),
    };
    for (&subset, lock) in config.subsets.iter().zip(locks) {
        let (errors, manifest_path) = run_subset(&cx, &mut engine, subset, lock)?;
        outcome.errors += errors;
        outcome.manifests.push(manifest_path);
    }
    Ok(outcome)
}

/// One subset: resume from the journal, answer what is pending, write the answers file
/// and the run manifest. Returns the subset's error count and the manifest's path.
fn run_subset(
    cx: &Context,
    engine: &mut Engine,
    subset: Subset,
    lock: Lock,
) -> Result<(usize, PathBuf), Error> {
    let started_at = crate::util::utc_now_rfc3339();
    let started = Instant::now();
    let samples = cx.samples(subset)?;
    let file_engine = cx.config.file_engine();
    let paths = Paths::new(&cx.config.out, subset.name(), &file_engine);
    let fingerprint = Fingerprint {
        model_manifest_sha256: engine.manifest_sha256.clone(),
        subset: subset.name().into(),
        max_new_tokens: cx.config.max_new_tokens,
        dataset_sha256: cx.dataset.sha256.clone(),
    };
    let (journal, entries) = Journal::open(&paths, lock, &fingerprint, cx.config.fresh)?;
    for (file, backup) in journal.kept() {
        let why = if cx.config.fresh {
            "--fresh"
        } else {
            "an answers file with no journal beside it (not written by this tool, or its journal is gone)"
        };
        eprintln!(
            "{subset}: {why}: kept {} as {}",
            file.display(),
            backup.display()
        );
    }
    if let Some(bytes) = journal.torn() {
        eprintln!(
            "{subset}: left out a torn last line of {} ({bytes} bytes: a write cut short, its sample runs again)",
            paths.journal.display()
        );
    }
    let (pending, questions) = cx.pending(&samples, &entries);
    let n_resumed = samples.len() - pending.len();
    if n_resumed > 0 {
        eprintln!(
            "{subset}: {n_resumed} of {} samples already answered in {}, {} to go",
            samples.len(),
            paths.journal.display(),
            pending.len()
        );
    }
    let mut recorder = Recorder {
        journal,
        entries,
        errors: Vec::new(),
        n_generated: 0,
        progress: progress_bar(subset, pending.len()),
    };
    let image_tokens = engine.manifest.vision.num_tokens;
    let limits = schedule::PromptLimits {
        image_tokens,
        max_new_tokens: cx.config.max_new_tokens,
        context: engine.manifest.decoder.max_position_embeddings,
    };
    let pending = questions.admit(pending, &limits, &mut recorder)?;
    let longest = PromptShape {
        ids: pending.iter().map(|s| questions.len(s)).max().unwrap_or(1),
        image_tokens,
    };
    let (batching, schedule) = schedule::choose(
        cx.config.batching,
        engine.decoder.as_ref(),
        cx.config.batch_size,
        longest,
        cx.config.max_new_tokens,
    )
    .ok_or_else(|| Error::Continuous(cx.config.engine.model_dir.clone()))?;
    let vision_ort_before = engine.images.ort_seconds();
    let (generated, feed) = cx.answer(engine, &pending, &questions, schedule, &mut recorder)?;
    let vision_ort_s = engine.images.ort_seconds() - vision_ort_before;
    recorder.progress.finish_and_clear();

    let done = Done {
        subset,
        file_engine,
        samples,
        n_resumed,
        batching,
        started_at,
        timings: StageTimings::from_run(
            cx.session_load_s,
            &generated,
            &feed,
            vision_ort_s,
            started.elapsed().as_secs_f64(),
        ),
    };
    cx.conclude(engine, done, &recorder, &paths)
}

/// A subset whose pending samples have all ended.
struct Done {
    subset: Subset,
    file_engine: String,
    samples: Vec<Sample>,
    n_resumed: usize,
    batching: Batching,
    started_at: String,
    timings: StageTimings,
}

impl Context<'_> {
    /// The subset's samples this run covers (after --limit and --shard).
    fn samples(&self, subset: Subset) -> Result<Vec<Sample>, Error> {
        let mut samples = self.dataset.samples(subset)?;
        if let Some(limit) = self.config.limit {
            samples.truncate(limit);
        }
        Ok(match self.config.shard {
            Some(shard) => samples[shard.range(samples.len())].to_vec(),
            None => samples,
        })
    }

    /// The samples still to answer, tokenized; sorted by prompt length when batches are
    /// formed (the answers file keeps subset order). A sample answered in the journal is
    /// answered again when its image file changed since (its sha256 differs).
    fn pending(
        &self,
        samples: &[Sample],
        entries: &HashMap<String, JournalEntry>,
    ) -> (Vec<Sample>, Questions) {
        let mut changed = 0;
        let mut pending: Vec<Sample> = samples
            .iter()
            .filter(|s| match entries.get(&s.image) {
                Some(e) if e.answer.is_some() => {
                    let again = !self.same_image(s, e);
                    changed += usize::from(again);
                    again
                }
                _ => true,
            })
            .cloned()
            .collect();
        if changed > 0 {
            eprintln!(
                "{changed} answered images changed since they were answered: answering them again"
            );
        }
        let questions = Questions::new(self.tokenizer, &pending);
        if self.config.batch_size > 1 {
            pending.sort_by_key(|s| questions.len(s));
        }
        (pending, questions)
    }

    /// Whether the image a journal entry was answered from is the file there now
    /// (entries without a recorded hash, from older journals, are taken as they are).
    fn same_image(&self, sample: &Sample, entry: &JournalEntry) -> bool {
        let Some(recorded) = &entry.image_sha256 else {
            return true;
        };
        let bytes = crate::preprocess::image_under(&self.config.images, &sample.image)
            .and_then(|path| crate::preprocess::read_image(&path, self.config.max_image_bytes));
        bytes.is_ok_and(|bytes| crate::util::sha256_hex(&bytes) == *recorded)
    }

    /// Writes the answers file and the run manifest, prints the reference's ASR line and
    /// the subset's summary. Returns the subset's error count and the manifest's path.
    fn conclude(
        &self,
        engine: &Engine,
        done: Done,
        recorder: &Recorder,
        paths: &Paths,
    ) -> Result<(usize, PathBuf), Error> {
        let (subset, samples, n_resumed) = (done.subset, &done.samples, done.n_resumed);
        let n_answered = crate::results::write_answers(&paths.answers, samples, &recorder.entries)?;
        let errors = all_errors(samples, recorder);
        let answers: Vec<&str> = samples
            .iter()
            .filter_map(|s| recorder.entries.get(&s.image)?.answer.as_deref())
            .collect();
        let asr = manifest::asr(subset, &self.config.engine_name, &answers);
        for e in &errors {
            let escape = crate::util::escape_controls;
            eprintln!(
                "{subset}: sample {} failed: {}",
                escape(&e.image),
                escape(&e.error)
            );
        }
        eprintln!(
            "{subset}: {n_answered}/{} answered ({} generated now, {n_resumed} resumed, {} errors) -> {}",
            samples.len(),
            recorder.n_generated,
            errors.len(),
            paths.answers.display()
        );
        let config = self.config;
        let manifest = RunManifest {
            tool: "vlguard-ort".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            engine: done.file_engine,
            subset: subset.name().into(),
            model_dir: config.engine.model_dir.display().to_string(),
            model_manifest_sha256: engine.manifest_sha256.clone(),
            dtype: engine.manifest.dtype.as_str().into(),
            decoder: engine.manifest.decoder.flavour.as_str().into(),
            ort_library: engine.ort_lib.display().to_string(),
            execution_providers: engine.provider_names(),
            tensorrt: engine
                .tensorrt
                .iter()
                .map(|(graph, build)| (graph.name().to_string(), build.clone()))
                .collect(),
            dataset: config.meta.display().to_string(),
            dataset_sha256: self.dataset.sha256.clone(),
            images: config.images.display().to_string(),
            batch_size: config.batch_size,
            batching: done.batching,
            max_new_tokens: config.max_new_tokens,
            limit: config.limit,
            started_at: done.started_at,
            finished_at: crate::util::utc_now_rfc3339(),
            n_samples: samples.len(),
            n_answered,
            n_resumed,
            n_generated: recorder.n_generated,
            n_errors: errors.len(),
            errors,
            timings: done.timings,
            peak_rss_mb: manifest::peak_rss_mb(),
            asr,
            shards: Vec::new(),
        };
        crate::results::write_json(&paths.manifest, &manifest)?;
        Ok((manifest.n_errors, paths.manifest.clone()))
    }

    /// Runs the image stages and the generator over `pending`, recording every outcome.
    fn answer(
        &self,
        engine: &mut Engine,
        pending: &[Sample],
        questions: &Questions,
        schedule: Schedule,
        recorder: &mut Recorder,
    ) -> Result<(Timings, FeedTimings), Error> {
        let ahead = match self.config.vision_thread {
            args::Toggle::On => true,
            args::Toggle::Off => false,
            args::Toggle::Auto => !engine.all_on_cpu(),
        };
        let generate_config = GenerateConfig {
            max_new_tokens: self.config.max_new_tokens,
            eos_id: engine.manifest.tokenizer.eos_id,
            image_token_id: engine.manifest.tokenizer.image_token_id,
        };
        let image_tokens = engine.manifest.vision.num_tokens;
        let spec = engine.manifest.preprocess.clone();
        let source = ImageSource {
            root: &self.config.images,
            spec: &spec,
            max_bytes: self.config.max_image_bytes,
        };
        let Engine {
            images, decoder, ..
        } = engine;
        std::thread::scope(|scope| {
            let mut images = Images::start(
                scope,
                pending,
                self.config.batch_size,
                &source,
                images,
                ahead,
            );
            let mut feed = Answering {
                images: &mut images,
                questions,
                tokenizer: self.tokenizer,
                recorder,
                image_tokens,
                queue: Default::default(),
                timings: FeedTimings::default(),
                tokens_done: 0,
                started: Instant::now(),
            };
            let generated =
                generate::generate(decoder.as_mut(), schedule, &generate_config, &mut feed);
            let feed_timings = feed.timings;
            let stages_ok = images.finish();
            let generated = generated?;
            if !stages_ok {
                return Err(Error::ImageStage);
            }
            Ok((generated, feed_timings))
        })
    }
}

fn progress_bar(subset: Subset, len: usize) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(len as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} samples, {msg}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    progress.set_prefix(subset.name());
    progress
}

/// This invocation's errors, then those recorded by earlier invocations that were not
/// answered since (they still count).
fn all_errors(samples: &[Sample], recorder: &Recorder) -> Vec<SampleError> {
    let mut errors: Vec<SampleError> = recorder
        .errors
        .iter()
        .map(|(image, error)| SampleError {
            image: image.clone(),
            error: error.clone(),
        })
        .collect();
    for sample in samples {
        let Some(entry) = recorder.entries.get(&sample.image) else {
            continue;
        };
        if entry.answer.is_none() && !errors.iter().any(|e| e.image == sample.image) {
            errors.push(SampleError {
                image: sample.image.clone(),
                error: entry.error.clone().unwrap_or_default(),
            });
        }
    }
    errors
}
