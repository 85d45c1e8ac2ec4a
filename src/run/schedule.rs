//! What the generator's [`Feed`] is in a run: prompts built from the encoded images and
//! the tokenized questions, every outcome journaled the moment its row ends, and the
//! refill policy chosen for the model.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::dataset::Sample;
use crate::generate::{self, Decoder, Feed, Generation, Prompt, Queued, Refill, Schedule};
use crate::prompt::PromptTokenizer;
use crate::results::{Journal, JournalEntry};

use super::args::Batching;
use super::pipeline::Images;
use super::Error;

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
                let ids = tokenizer.input_ids(&s.question).map_err(|e| e.to_string());
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

    fn ids(&self, sample: &Sample) -> Result<Vec<i64>, String> {
        self.ids
            .get(&sample.image)
            .cloned()
            .unwrap_or_else(|| Err("the question was not tokenized".into()))
    }
}

/// The batching the run uses: `auto` is continuous when the decoder can refill slots
/// while others decode and the batch has more than one slot. Continuous slots hold the
/// longest pending prompt plus the answer.
pub fn choose(
    batching: Batching,
    decoder: &dyn Decoder,
    slots: usize,
    longest_prompt: usize,
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
                capacity: longest_prompt + max_new_tokens,
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

/// The run's [`Feed`]: encoded images + questions in, journal entries out.
pub struct Answering<'a, 'scope> {
    pub images: &'a mut Images<'scope>,
    pub questions: &'a Questions,
    pub tokenizer: &'a PromptTokenizer,
    pub recorder: &'a mut Recorder,
    pub image_tokens: usize,
    pub queue: VecDeque<Queued<Sample>>,
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
        for (sample, embeds) in encoded.samples {
            let prompt = embeds.and_then(|image_embeds| {
                let ids = self
                    .questions
                    .ids(&sample)
                    .map_err(|e| format!("tokenizing the question of {}: {e}", sample.image))?;
                Ok(Prompt {
                    ids,
                    image_embeds,
                    image_tokens: self.image_tokens,
                })
            });
            match prompt {
                Ok(prompt) => self.queue.push_back(Queued {
                    key: sample,
                    prompt,
                }),
                Err(error) => self.recorder.error(&sample.image, error)?,
            }
        }
        Ok(true)
    }
}

impl Feed for Answering<'_, '_> {
    type Key = Sample;
    type Error = Error;

    fn next(&mut self, n: usize) -> Result<Option<Vec<Queued<Sample>>>, Error> {
        while self.queue.len() < n && self.pull()? {}
        if self.queue.is_empty() {
            return Ok(None);
        }
        let k = n.min(self.queue.len());
        Ok(Some(self.queue.drain(..k).collect()))
    }

    fn finish(&mut self, sample: Sample, outcome: Result<Generation, String>) -> Result<(), Error> {
        match outcome {
            Ok(generation) => {
                let t = Instant::now();
                let entry = journal_entry(&sample, self.tokenizer, generation);
                self.timings.detokenize_s += t.elapsed().as_secs_f64();
                self.recorder.answer(entry)
            }
            Err(error) => self.recorder.error(&sample.image, error),
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

impl From<generate::Error> for Error {
    fn from(e: generate::Error) -> Self {
        Error::Generate(e)
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
