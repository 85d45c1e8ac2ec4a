//! What the generator's [`Feed`] is in a run: prompts built from the encoded images and
//! the tokenized questions, every outcome journaled the moment its row ends, and the
//! refill policy chosen for the model. A failed sample's error stays typed
//! ([`SampleFailure`]: the engine's error, with ONNX Runtime's as its source, inside)
//! until [`Recorder`] writes its text to the journal.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::dataset::Sample;
use crate::engine;
use crate::generate::{self, Batch, Decoder, Feed, Generation, Prompt, Queued, Refill, Schedule};
use crate::prompt::{PromptShape, PromptTokenizer};
use crate::results::{Journal, JournalEntry};

use super::args::Batching;
use super::pipeline::{ImageError, Images};
use super::Error;

/// Why a sample of a run has no answer.
#[derive(Debug, thiserror::Error)]
pub enum SampleFailure {
    /// Its question cannot make a prompt: it does not tokenize, or the prompt and the
    /// answer budget are over the model's context (the validation's message).
    #[error("{0}")]
    Question(String),
    /// Its image could not be read or encoded.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The generator refused its prompt, or the decoder failed while it was in flight.
    #[error(transparent)]
    Generate(#[from] generate::Failure<engine::Error>),
}

/// The prompt ids of each pending question, tokenized once (for the length sort, the
/// slot capacity and the prompts).
pub struct Questions {
    ids: HashMap<String, Result<Vec<i64>, String>>,
}

impl Questions {
    pub fn new(tokenizer: &PromptTokenizer, pending: &[Sample]) -> Questions {
        let ids = pending
            .iter()
            .map(|s| {
                let ids = tokenizer
                    .input_ids(&s.question)
                    .map_err(|e| format!("tokenizing the question of {}: {e}", s.image));
                (s.image.clone(), ids)
            })
            .collect();
        Questions { ids }
    }

    /// Prompt ids of a sample's question (0 ids when it does not tokenize).
    pub fn len(&self, sample: &Sample) -> usize {
        match self.ids.get(&sample.image) {
            Some(Ok(ids)) => ids.len(),
            _ => 0,
        }
    }

    /// The samples whose prompt can run: a question that does not tokenize, or whose
    /// positions (text + image) plus the answer budget exceed the model's context, is
    /// recorded as the sample's error here, before any image is read or graph run.
    pub fn admit(
        &self,
        pending: Vec<Sample>,
        limits: &PromptLimits,
        recorder: &mut Recorder,
    ) -> Result<Vec<Sample>, Error> {
        let mut admitted = Vec::with_capacity(pending.len());
        for sample in pending {
            match self.ids(&sample).and_then(|ids| limits.check(ids.len())) {
                Ok(()) => admitted.push(sample),
                Err(reason) => recorder.error(&sample.image, &SampleFailure::Question(reason))?,
            }
        }
        Ok(admitted)
    }

    fn ids(&self, sample: &Sample) -> Result<Vec<i64>, String> {
        self.ids
            .get(&sample.image)
            .cloned()
            .unwrap_or_else(|| Err("the question was not tokenized".into()))
    }
}

/// What bounds a prompt: the model's context (`max_position_embeddings`) must hold its
/// text, its image and the whole answer budget.
pub struct PromptLimits {
    pub image_tokens: usize,
    pub max_new_tokens: usize,
    pub context: usize,
}

impl PromptLimits {
    /// `Err` naming the numbers when a prompt of `ids` ids (one of them the image slot)
    /// cannot run.
    fn check(&self, ids: usize) -> Result<(), String> {
        let shape = PromptShape {
            ids,
            image_tokens: self.image_tokens,
        };
        if !shape.fits(self.max_new_tokens, self.context) {
            return Err(format!(
                "the prompt takes {} positions ({} text tokens + {} image \
                 features); with --max-new-tokens {} that is {} positions, over the model's \
                 context of {} (max_position_embeddings)",
                shape.positions(),
                shape.text_tokens(),
                self.image_tokens,
                self.max_new_tokens,
                shape.with_answer(self.max_new_tokens),
                self.context
            ));
        }
        Ok(())
    }
}

/// The batching the run uses: `auto` is continuous when the decoder can refill slots
/// while others decode and the batch has more than one slot. Continuous slots hold the
/// longest pending prompt plus the answer.
pub fn choose(
    batching: Batching,
    decoder: &dyn Decoder<Error = engine::Error>,
    slots: usize,
    longest_prompt: PromptShape,
    max_new_tokens: usize,
) -> Option<(Batching, Schedule)> {
    let continuous = match batching {
        Batching::Static => false,
        Batching::Continuous if !decoder.joins_live_batch() => return None,
        Batching::Continuous => true,
        Batching::Auto => decoder.joins_live_batch() && slots > 1,
    };
    let (batching, refill) = match continuous {
        true => (
            Batching::Continuous,
            Refill::Continuous {
                capacity: longest_prompt.with_answer(max_new_tokens),
            },
        ),
        false => (Batching::Static, Refill::Static),
    };
    Some((batching, Schedule { slots, refill }))
}

/// What a run records as samples finish: the journal (fsynced per line), the entries by
/// image, this invocation's errors.
pub struct Recorder {
    pub journal: Journal,
    pub entries: HashMap<String, JournalEntry>,
    /// (image, error) of this invocation's failed samples.
    pub errors: Vec<(String, String)>,
    pub n_generated: usize,
    pub progress: indicatif::ProgressBar,
}

impl Recorder {
    fn answer(&mut self, entry: JournalEntry) -> Result<(), Error> {
        self.journal.append(&entry)?;
        self.entries.insert(entry.image.clone(), entry);
        self.n_generated += 1;
        self.progress.inc(1);
        Ok(())
    }

    /// Journals `failure` as the sample's error: its text is made here.
    fn error(&mut self, image: &str, failure: &SampleFailure) -> Result<(), Error> {
        let error = failure.to_string();
        let entry = JournalEntry {
            image: image.to_string(),
            answer: None,
            error: Some(error.clone()),
            new_tokens: 0,
            ended_with_eos: false,
            min_margin: None,
            image_sha256: None,
        };
        self.journal.append(&entry)?;
        self.entries.insert(image.to_string(), entry);
        self.errors.push((image.to_string(), error));
        self.progress.inc(1);
        Ok(())
    }
}

/// Seconds the feed's own stages took, for the run manifest.
#[derive(Debug, Default, Clone, Copy)]
pub struct FeedTimings {
    /// Wall time spent waiting for encoded images.
    pub image_wait_s: f64,
    pub preprocess_s: f64,
    pub vision_s: f64,
    pub detokenize_s: f64,
}

/// A sample on its way through the generator, with the sha256 of its image file.
pub struct Asked {
    pub sample: Sample,
    pub image_sha256: String,
}

/// The run's [`Feed`]: encoded images + questions in, journal entries out.
pub struct Answering<'a, 'scope> {
    pub images: &'a mut Images<'scope>,
    pub questions: &'a Questions,
    pub tokenizer: &'a PromptTokenizer,
    pub recorder: &'a mut Recorder,
    pub image_tokens: usize,
    pub queue: VecDeque<Queued<Asked>>,
    pub timings: FeedTimings,
    pub tokens_done: usize,
    pub started: Instant,
}

impl Answering<'_, '_> {
    /// Pulls the next encoded batch: failed samples are recorded, the others queued.
    fn pull(&mut self) -> Result<bool, Error> {
        let wait = Instant::now();
        let Some(encoded) = self.images.next() else {
            return Ok(false);
        };
        self.timings.image_wait_s += wait.elapsed().as_secs_f64();
        self.timings.preprocess_s += encoded.preprocess_s;
        self.timings.vision_s += encoded.vision_s;
        for (sample, image) in encoded.samples {
            let prompt = image.map_err(SampleFailure::from).and_then(|image| {
                let prompt = Prompt {
                    ids: self
                        .questions
                        .ids(&sample)
                        .map_err(SampleFailure::Question)?,
                    image_embeds: image.embeds,
                    image_tokens: self.image_tokens,
                };
                Ok((prompt, image.sha256))
            });
            match prompt {
                Ok((prompt, image_sha256)) => self.queue.push_back(Queued {
                    key: Asked {
                        sample,
                        image_sha256,
                    },
                    prompt,
                }),
                Err(failure) => self.recorder.error(&sample.image, &failure)?,
            }
        }
        Ok(true)
    }
}

impl Feed for Answering<'_, '_> {
    type Key = Asked;
    type DecoderError = engine::Error;
    type Error = Error;

    fn next(&mut self, n: usize) -> Result<Option<Batch<Asked>>, Error> {
        while self.queue.len() < n && self.pull()? {}
        if self.queue.is_empty() {
            return Ok(None);
        }
        let k = n.min(self.queue.len());
        Ok(Some(self.queue.drain(..k).collect()))
    }

    fn finish(
        &mut self,
        asked: Asked,
        outcome: generate::Outcome<engine::Error>,
    ) -> Result<(), Error> {
        match outcome {
            Ok(generation) => {
                let t = Instant::now();
                let entry = journal_entry(asked, self.tokenizer, generation);
                self.timings.detokenize_s += t.elapsed().as_secs_f64();
                self.recorder.answer(entry)
            }
            Err(failure) => self
                .recorder
                .error(&asked.sample.image, &SampleFailure::from(failure)),
        }
    }

    fn tokens(&mut self, n: usize) {
        self.tokens_done += n;
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.recorder
            .progress
            .set_message(format!("{:.1} tok/s", self.tokens_done as f64 / secs));
    }
}

impl From<generate::Error<engine::Error>> for Error {
    fn from(e: generate::Error<engine::Error>) -> Self {
        Error::Generate(e)
    }
}

/// The journal line for a finished generation.
fn journal_entry(
    asked: Asked,
    tokenizer: &PromptTokenizer,
    generation: Generation,
) -> JournalEntry {
    JournalEntry {
        image: asked.sample.image,
        image_sha256: Some(asked.image_sha256),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::results::{read_entries, Fingerprint, Lock, Paths};

    /// A recorder on a fresh journal in `dir`.
    fn recorder(dir: &std::path::Path) -> (Recorder, Paths) {
        let paths = Paths::new(dir, "unsafes", "demo");
        std::fs::create_dir_all(paths.journal.parent().unwrap()).unwrap();
        let lock = Lock::acquire(&paths.lock).unwrap();
        let fingerprint = Fingerprint {
            model_manifest_sha256: "m".into(),
            subset: "unsafes".into(),
            max_new_tokens: 4,
            dataset_sha256: "d".into(),
        };
        let (journal, entries) = Journal::open(&paths, lock, &fingerprint, false).unwrap();
        let recorder = Recorder {
            journal,
            entries,
            errors: Vec::new(),
            n_generated: 0,
            progress: indicatif::ProgressBar::hidden(),
        };
        (recorder, paths)
    }

    #[test]
    fn a_typed_failure_is_journaled_with_the_text_it_always_had() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut recorder, paths) = recorder(tmp.path());
        let decoder = engine::Error::CacheFull {
            positions: 70,
            capacity: 64,
        };
        let failures = [
            (
                "a.png",
                SampleFailure::from(generate::Failure::Decoder(Arc::new(decoder))),
                "fused decoder: 70 positions do not fit the cache's 64 (prompt + max new tokens)",
            ),
            (
                "b.png",
                SampleFailure::from(generate::Failure::Prompt(
                    generate::PromptError::ImageSlots(crate::prompt::ImageSlotError {
                        found: 2,
                        id: -200,
                    }),
                )),
                "the prompt has 2 image slots (id -200); exactly one is expected",
            ),
            (
                "c.png",
                SampleFailure::Image(ImageError::Vision(Arc::new(engine::Error::Cuda {
                    call: "cudaMemcpyAsync",
                    code: 2,
                }))),
                "cudaMemcpyAsync failed with CUDA error 2",
            ),
        ];
        for (image, failure, _) in &failures {
            recorder.error(image, failure).unwrap();
        }
        let journaled = read_entries(&paths.journal).unwrap();
        for (image, _, text) in &failures {
            assert_eq!(journaled[*image].error.as_deref(), Some(*text), "{image}");
            assert!(recorder
                .errors
                .contains(&(image.to_string(), text.to_string())));
        }
    }
}
