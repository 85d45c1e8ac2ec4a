//! Greedy decoding of a stream of prompts over a slot-level decoder: ONE scheduler, two
//! refill policies.
//!
//! Contract: every prompt the [`Feed`] hands out ends in exactly one [`Feed::finish`] call
//! with its key: `Ok` with the tokens the reference's
//! `model.generate(do_sample=False, min_new_tokens=1, max_new_tokens=M)` gives it alone
//! (the greedy rule is [`greedy::choose`]), or `Err` with the reason, typed ([`Failure`]):
//! a prompt without exactly one image slot or too long for the slot cache
//! ([`PromptError`]), or the decoder's own error while it was in flight (after one, the
//! stream goes on). The decoder's error type is its own ([`Decoder::Error`]: the engine's
//! names the graph and tensor and keeps ONNX Runtime's error as its source); the scheduler
//! carries it to the feed unchanged, where it is journaled.
//!
//! The [`Decoder`] trait is the seam: it knows slots and tokens, the scheduler never sees
//! masks, padding, positions or cache layouts (each decoder owns its own: `engine::decoders`).
//! Slots are stable indices `0..slots`; a decoder may compact finished rows away or keep
//! them riding along, as suits its memory (cheap on the host, not worth it on a GPU where a
//! step costs the same for any number of rows). The refill policy ([`Refill`]):
//! - `Static`: a batch of prompts (the feed hands them out grouped by length) fills the
//!   slots; new prompts come only when every row of the batch has finished.
//! - `Continuous`: a finished row's slot takes the next prompt at once while the other
//!   rows keep decoding; needs a decoder that [`Decoder::joins_live_batch`].
//!
//! A scripted test double below implements the same trait, so stop rules, refills and
//! failures are tested without graphs.

pub mod greedy;

use std::sync::Arc;
use std::time::Instant;

use crate::prompt::{image_slot, ImageSlotError, PromptShape};

pub use greedy::argmax_first;

/// What the scheduler needs from a model: a cache of slots that prompts are prefilled into
/// and that steps one token per live slot.
pub trait Decoder {
    /// What a call fails with (the engine's: [`crate::engine::Error`]).
    type Error: std::error::Error + 'static;
    /// Replaces the cache with `slots` free slots of `capacity` positions each (prompt plus
    /// answer; a decoder whose cache grows may ignore it).
    fn open(&mut self, slots: usize, capacity: usize) -> Result<(), Self::Error>;
    /// Runs `prompts` into these free slots and returns their last logits `[k, V]`, in
    /// the order given. Slots that are decoding are left untouched.
    fn prefill(&mut self, slots: &[usize], prompts: &[&Prompt]) -> Result<Vec<f32>, Self::Error>;
    /// One new token for each of `slots` (the live ones; `tokens[i]` goes to `slots[i]`);
    /// returns their logits `[k, V]` in that order.
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, Self::Error>;
    /// Only `live` slots will be stepped again until the next `open` or `prefill`: the
    /// decoder may drop the others' rows.
    fn retain(&mut self, live: &[usize]) -> Result<(), Self::Error>;
    /// Whether `prefill` can fill slots while other slots are decoding.
    fn joins_live_batch(&self) -> bool;
    /// Running totals since the decoder was made.
    fn counters(&self) -> Counters;
}

/// A decoder's running totals, for the run's timings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// Seconds inside ONNX Runtime session runs.
    pub ort_s: f64,
    /// Seconds building prompt embeddings (text embeddings with the image spliced in).
    pub splice_s: f64,
    /// Rows computed by `step` calls: live rows, and rows riding along or free slots when
    /// the decoder keeps them.
    pub step_rows: usize,
}

/// What ends a stream: the decoder `E` failing outside any prompt (its cache could not be
/// opened or compacted), or breaking its contract.
#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    #[error(transparent)]
    Decoder(E),
    #[error("the decoder returned {found} logits for {rows} rows")]
    Logits { found: usize, rows: usize },
}

/// Why one prompt ended without a generation.
#[derive(Debug, thiserror::Error)]
pub enum Failure<E> {
    /// It could not run; nothing was run for it.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The decoder failed while it was in flight: every prompt in flight then ends with
    /// this same error.
    #[error(transparent)]
    Decoder(Arc<E>),
}

/// A prompt the scheduler refuses before any decoder call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    ImageSlots(#[from] ImageSlotError),
    #[error(
        "the prompt has {positions} positions: with {max_new_tokens} new tokens it exceeds the cache capacity {capacity}"
    )]
    OverCapacity {
        positions: usize,
        max_new_tokens: usize,
        capacity: usize,
    },
}

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub eos_id: u32,
    /// The id in the image slot of a prompt (the model manifest's).
    pub image_token_id: i64,
}

/// One prompt: ids with one image slot, and the image's projected embeddings
/// (`image_tokens` rows of the decoder's hidden size) that take the slot's place.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<i64>,
    pub image_embeds: Vec<f32>,
    pub image_tokens: usize,
}

impl Prompt {
    /// The prompt's size in positions once the image is spliced in.
    pub fn shape(&self) -> PromptShape {
        PromptShape {
            ids: self.ids.len(),
            image_tokens: self.image_tokens,
        }
    }

    /// Positions once the image is spliced in (one slot becomes `image_tokens`).
    pub fn positions(&self) -> usize {
        self.shape().positions()
    }
}

/// Prompts handed out together.
pub type Batch<K> = Vec<Queued<K>>;

/// A prompt waiting for a slot, with the caller's key for it.
pub struct Queued<K> {
    pub key: K,
    pub prompt: Prompt,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// New tokens, EOS included when the row stopped on it.
    pub tokens: Vec<u32>,
    pub ended_with_eos: bool,
    /// Smallest gap between the best and second-best logit over the row's steps: where a
    /// rounding difference could flip a token.
    pub min_margin: f32,
}

impl Generation {
    fn new() -> Generation {
        Generation {
            tokens: Vec::new(),
            ended_with_eos: false,
            min_margin: f32::INFINITY,
        }
    }
}

/// Where prompts come from and answers go.
pub trait Feed {
    type Key;
    /// The decoder's error ([`Decoder::Error`]), which a failed prompt's outcome carries.
    type DecoderError: std::error::Error + 'static;
    type Error: From<Error<Self::DecoderError>>;
    /// Up to `n` prompts (fewer only when the stream ends), `None` once it has ended.
    fn next(&mut self, n: usize) -> Result<Option<Batch<Self::Key>>, Self::Error>;
    /// A prompt's outcome, by key.
    fn finish(
        &mut self,
        key: Self::Key,
        outcome: Outcome<Self::DecoderError>,
    ) -> Result<(), Self::Error>;
    /// `n` new tokens were chosen (progress display).
    fn tokens(&mut self, _n: usize) {}
}

/// A prompt's outcome: its generation, or why it has none.
pub type Outcome<E> = Result<Generation, Failure<E>>;

/// When free slots take new prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refill {
    /// When the whole batch has finished; the cache is sized for each batch.
    Static,
    /// At once; one cache of `capacity` positions per slot for the whole stream.
    Continuous { capacity: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub slots: usize,
    pub refill: Refill,
}

/// Seconds and counts of one stream. The feed's own time (waiting for images, journal
/// writes) is not in `loop_s`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Building prompt embeddings.
    pub splice_s: f64,
    /// Prompt calls, splicing excluded.
    pub prefill_s: f64,
    /// Step calls.
    pub decode_s: f64,
    /// Inside ONNX Runtime session runs (the decoder's own count).
    pub ort_s: f64,
    /// The scheduler's wall time, feed calls excluded.
    pub loop_s: f64,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    /// Step calls, the rows they computed (riders and free slots included) and the tokens
    /// those rows produced: `step_tokens / step_rows` is how busy the batch was.
    pub steps: usize,
    pub step_rows: usize,
    pub step_tokens: usize,
}

/// Greedy generation for every prompt of `feed`; see the module contract. Errors are the
/// feed's own, or a decoder that breaks its contract (logits of the wrong size, a cache
/// that cannot be opened).
pub fn generate<F: Feed>(
    decoder: &mut dyn Decoder<Error = F::DecoderError>,
    schedule: Schedule,
    config: &GenerateConfig,
    feed: &mut F,
) -> Result<Timings, F::Error> {
    let started = Instant::now();
    let before = decoder.counters();
    let mut s = Scheduler {
        decoder,
        feed,
        config,
        schedule,
        rows: (0..schedule.slots).map(|_| None).collect(),
        exhausted: false,
        dropped: false,
        timings: Timings::default(),
        feed_s: 0.0,
    };
    if let Refill::Continuous { capacity } = schedule.refill {
        s.decoder
            .open(schedule.slots, capacity)
            .map_err(Error::Decoder)?;
    }
    loop {
        s.refill()?;
        let live = s.live();
        if live.is_empty() {
            if s.exhausted {
                break;
            }
            continue;
        }
        s.release(&live)?;
        s.step(&live)?;
    }
    let after = s.decoder.counters();
    let mut timings = s.timings;
    timings.ort_s = after.ort_s - before.ort_s;
    timings.splice_s = after.splice_s - before.splice_s;
    timings.prefill_s -= timings.splice_s;
    timings.step_rows = after.step_rows - before.step_rows;
    timings.loop_s = started.elapsed().as_secs_f64() - s.feed_s;
    Ok(timings)
}

/// A prompt in a slot: its key and what it generated so far.
struct Row<K> {
    key: K,
    generation: Generation,
}

struct Scheduler<'a, F: Feed> {
    decoder: &'a mut dyn Decoder<Error = F::DecoderError>,
    feed: &'a mut F,
    config: &'a GenerateConfig,
    schedule: Schedule,
    /// By slot.
    rows: Vec<Option<Row<F::Key>>>,
    exhausted: bool,
    /// Rows finished since the decoder was last told which slots live.
    dropped: bool,
    timings: Timings,
    feed_s: f64,
}

impl<F: Feed> Scheduler<'_, F> {
    fn live(&self) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&s| self.rows[s].is_some())
            .collect()
    }

    /// Takes prompts for the free slots when the policy says so, and prefills them.
    fn refill(&mut self) -> Result<(), F::Error> {
        if self.exhausted {
            return Ok(());
        }
        let free: Vec<usize> = (0..self.rows.len())
            .filter(|&s| self.rows[s].is_none())
            .collect();
        let now = match self.schedule.refill {
            Refill::Static => free.len() == self.rows.len(),
            Refill::Continuous { .. } => !free.is_empty(),
        };
        if !now {
            return Ok(());
        }
        let t = Instant::now();
        let next = self.feed.next(free.len());
        self.feed_s += t.elapsed().as_secs_f64();
        match next? {
            None => self.exhausted = true,
            Some(queued) => self.join(&free, queued)?,
        }
        Ok(())
    }

    /// Prefills the prompts that can run into the first free slots; the others, rows done
    /// after one token and a failed prefill end at once.
    fn join(&mut self, free: &[usize], queued: Vec<Queued<F::Key>>) -> Result<(), F::Error> {
        let mut keys = Vec::new();
        let mut prompts = Vec::new();
        for q in queued.into_iter().take(free.len()) {
            // Each prompt checked alone first, so that one bad prompt fails alone.
            match self.admit(&q.prompt) {
                Ok(()) => {
                    keys.push(q.key);
                    prompts.push(q.prompt);
                }
                Err(reason) => self.finish(q.key, Err(reason.into()))?,
            }
        }
        if prompts.is_empty() {
            return Ok(());
        }
        let slots = &free[..prompts.len()];
        let t = Instant::now();
        let prefilled = self.open_for(&prompts).and_then(|()| {
            let refs: Vec<&Prompt> = prompts.iter().collect();
            self.decoder.prefill(slots, &refs)
        });
        self.timings.prefill_s += t.elapsed().as_secs_f64();
        let mut logits = match prefilled {
            Ok(logits) => logits,
            Err(error) => {
                let error = Arc::new(error);
                for key in keys {
                    self.finish(key, Err(Failure::Decoder(Arc::clone(&error))))?;
                }
                return Ok(());
            }
        };
        self.timings.prompt_tokens += prompts.iter().map(Prompt::positions).sum::<usize>();
        let vocab = vocab_of::<F::DecoderError>(&logits, keys.len())?;
        for ((key, &slot), row_logits) in keys.into_iter().zip(slots).zip(logits.chunks_mut(vocab))
        {
            let mut generation = Generation::new();
            self.timings.new_tokens += 1;
            self.tokens(1);
            if greedy::choose(row_logits, self.config, &mut generation) {
                self.finish(key, Ok(generation))?;
            } else {
                self.rows[slot] = Some(Row { key, generation });
            }
        }
        Ok(())
    }

    /// `Err` with the reason when a prompt cannot run: no single image slot, or (one
    /// cache for the stream) more positions than a slot holds.
    fn admit(&self, prompt: &Prompt) -> Result<(), PromptError> {
        image_slot(&prompt.ids, self.config.image_token_id)?;
        if let Refill::Continuous { capacity } = self.schedule.refill {
            if !prompt.shape().fits(self.config.max_new_tokens, capacity) {
                return Err(PromptError::OverCapacity {
                    positions: prompt.positions(),
                    max_new_tokens: self.config.max_new_tokens,
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// A static batch gets a cache of its own, sized for its longest prompt.
    fn open_for(&mut self, prompts: &[Prompt]) -> Result<(), F::DecoderError> {
        if self.schedule.refill != Refill::Static {
            return Ok(());
        }
        let max_new_tokens = self.config.max_new_tokens;
        let capacity = prompts
            .iter()
            .map(|p| p.shape().with_answer(max_new_tokens))
            .max()
            .unwrap_or(max_new_tokens);
        self.dropped = false;
        self.decoder.open(prompts.len(), capacity)
    }

    /// Tells the decoder which slots still live once no new prompt will take the free
    /// ones before the next step (a static batch, or the end of the stream).
    fn release(&mut self, live: &[usize]) -> Result<(), F::Error> {
        let refills = matches!(self.schedule.refill, Refill::Continuous { .. }) && !self.exhausted;
        if self.dropped && !refills {
            self.decoder.retain(live).map_err(Error::Decoder)?;
            self.dropped = false;
        }
        Ok(())
    }

    /// One token for every live row; finished rows end in the feed.
    fn step(&mut self, live: &[usize]) -> Result<(), F::Error> {
        let tokens: Vec<u32> = live
            .iter()
            .map(|&s| self.rows[s].as_ref().map_or(0, Row::last_token))
            .collect();
        let t = Instant::now();
        let stepped = self.decoder.step(live, &tokens);
        self.timings.decode_s += t.elapsed().as_secs_f64();
        self.timings.steps += 1;
        let mut logits = match stepped {
            Ok(logits) => logits,
            Err(error) => return self.fail_in_flight(live, error),
        };
        let vocab = vocab_of::<F::DecoderError>(&logits, live.len())?;
        for (&slot, row_logits) in live.iter().zip(logits.chunks_mut(vocab)) {
            let Some(row) = self.rows[slot].as_mut() else {
                continue;
            };
            if greedy::choose(row_logits, self.config, &mut row.generation) {
                if let Some(row) = self.rows[slot].take() {
                    self.dropped = true;
                    self.finish(row.key, Ok(row.generation))?;
                }
            }
        }
        self.timings.new_tokens += live.len();
        self.timings.step_tokens += live.len();
        self.tokens(live.len());
        Ok(())
    }

    /// A failed step: every row in flight ends with the error; a stream cache is
    /// reopened so the stream goes on.
    fn fail_in_flight(&mut self, live: &[usize], error: F::DecoderError) -> Result<(), F::Error> {
        let error = Arc::new(error);
        for &slot in live {
            if let Some(row) = self.rows[slot].take() {
                self.finish(row.key, Err(Failure::Decoder(Arc::clone(&error))))?;
            }
        }
        self.dropped = false;
        if let Refill::Continuous { capacity } = self.schedule.refill {
            self.decoder
                .open(self.schedule.slots, capacity)
                .map_err(Error::Decoder)?;
        }
        Ok(())
    }

    fn finish(&mut self, key: F::Key, outcome: Outcome<F::DecoderError>) -> Result<(), F::Error> {
        let t = Instant::now();
        let done = self.feed.finish(key, outcome);
        self.feed_s += t.elapsed().as_secs_f64();
        done
    }

    fn tokens(&mut self, n: usize) {
        self.feed.tokens(n);
    }
}

impl<K> Row<K> {
    fn last_token(&self) -> u32 {
        self.generation.tokens.last().copied().unwrap_or(0)
    }
}

/// The vocabulary size of logits for `rows` rows; an error when they do not split evenly.
fn vocab_of<E>(logits: &[f32], rows: usize) -> Result<usize, Error<E>> {
    let vocab = logits.len() / rows.max(1);
    if vocab == 0 || logits.len() != rows * vocab {
        return Err(Error::Logits {
            found: logits.len(),
            rows,
        });
    }
    Ok(vocab)
}

#[cfg(test)]
mod tests;
