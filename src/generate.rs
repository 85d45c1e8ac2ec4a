//! Batched greedy decoding with a KV cache, behind a small engine seam.
//!
//! Contract: `generate_batch` takes prompts (token ids with exactly one image slot, and
//! that image's projected embeddings) and returns, per prompt, the new tokens exactly as
//! the reference's `model.generate(do_sample=False, min_new_tokens=1, max_new_tokens=M)`
//! would: argmax with the FIRST index on ties (NaN never wins), EOS forbidden at the
//! first step only, stop after EOS or M tokens (EOS kept in `tokens`, not decoded).
//! Rows are left-padded (attention mask 0, position ids counting real tokens only, as
//! HF computes `cumsum(mask) - 1`), and a finished row is dropped from the batch (and
//! from the cache) at once, so it costs no more work.
//!
//! The [`Backend`] trait is the seam: the ONNX Runtime engine implements it, and the
//! tests below use a scripted double, so stop rules and batching are tested without
//! graphs.

use std::time::Instant;

/// What the decoding loop needs from a model.
pub trait Backend {
    fn hidden_size(&self) -> usize;
    /// `input_ids [B,T]` -> `[B,T,H]`.
    fn embed(&mut self, ids: &[i64], batch: usize) -> Result<Vec<f32>, BackendError>;
    /// Runs the decoder over `new_len` new positions per row on top of the cache it
    /// holds (empty after `reset`) and returns the last position's logits `[B,V]`.
    /// `attention_mask` covers past + new positions: `[B, P + new_len]`.
    fn decode(
        &mut self,
        embeds: &[f32],
        attention_mask: &[i64],
        position_ids: &[i64],
        batch: usize,
        new_len: usize,
    ) -> Result<Vec<f32>, BackendError>;
    /// Empties the cache before a new batch that takes at most `max_new_tokens` steps (a
    /// preallocated cache sizes itself from it).
    fn reset(&mut self, max_new_tokens: usize);
    /// Keeps only these batch rows (ascending) of the cache.
    fn keep_rows(&mut self, rows: &[usize]) -> Result<(), BackendError>;
    /// Whether dropping finished rows is cheap. A device-resident cache says no: its
    /// finished rows ride along (their outputs ignored) until the batch ends, since a
    /// decode step is bound by reading the weights, not by the batch size.
    fn drops_rows(&self) -> bool {
        true
    }

    // Continuous batching (see [`generate_continuous`]): a cache of fixed slots that rows
    // join and leave between steps. Backends without slots keep the defaults.

    /// Whether the slot calls below work.
    fn has_slots(&self) -> bool {
        false
    }
    /// Replaces the cache with `slots` free slots of `capacity` positions each.
    fn open_slots(&mut self, _slots: usize, _capacity: usize) -> Result<(), BackendError> {
        Err(BackendError("this backend has no slot cache".into()))
    }
    /// Runs prompts (left-padded exactly like `decode`'s prompt call) into these free
    /// slots, leaving the other slots untouched; returns their last logits `[k, V]`.
    fn prefill_slots(
        &mut self,
        _slots: &[usize],
        _embeds: &[f32],
        _attention_mask: &[i64],
        _new_len: usize,
    ) -> Result<Vec<f32>, BackendError> {
        Err(BackendError("this backend has no slot cache".into()))
    }
    /// One new position for every slot: `embeds [slots, 1, H]`, `lengths[s]` = tokens in
    /// slot s after this step (a free slot gets 1 and its output is ignored). Returns
    /// `[slots, V]`.
    fn step_slots(
        &mut self,
        _embeds: &[f32],
        _lengths: &[usize],
    ) -> Result<Vec<f32>, BackendError> {
        Err(BackendError("this backend has no slot cache".into()))
    }
}

/// An engine failure, with the graph or tensor it concerns in the message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "prompt {index} has {found} image slots (id {image_token_id}); exactly one is expected"
    )]
    ImageSlots {
        index: usize,
        found: usize,
        image_token_id: i64,
    },
    #[error("prompt {index}: image embeddings have {found} values, expected a multiple of hidden size {hidden}")]
    ImageShape {
        index: usize,
        found: usize,
        hidden: usize,
    },
    #[error("the decoder returned {found} logits for {batch} rows")]
    Logits { found: usize, batch: usize },
}

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub eos_id: u32,
    pub image_token_id: i64,
}

/// One prompt: ids with one image slot, and the image's `[N,H]` projected embeddings.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<i64>,
    pub image_embeds: Vec<f32>,
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

/// Seconds spent per part of a batch; `backend_s` is the time inside backend calls.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timings {
    pub embed_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub backend_s: f64,
    pub loop_s: f64,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    /// Decoder step calls (one new position per row), the rows they computed (finished
    /// rows riding along and free slots included), and the tokens those rows produced:
    /// `step_tokens / step_rows` is how busy the batch was.
    pub steps: usize,
    pub step_rows: usize,
    pub step_tokens: usize,
}

impl Timings {
    pub fn add(&mut self, other: &Timings) {
        self.embed_s += other.embed_s;
        self.prefill_s += other.prefill_s;
        self.decode_s += other.decode_s;
        self.backend_s += other.backend_s;
        self.loop_s += other.loop_s;
        self.new_tokens += other.new_tokens;
        self.prompt_tokens += other.prompt_tokens;
        self.steps += other.steps;
        self.step_rows += other.step_rows;
        self.step_tokens += other.step_tokens;
    }
}

/// Index of the largest value, the first one on ties (`-0.0` ties `+0.0`, as `>` says);
/// NaN never wins (the reference's `torch.argmax` over finite logits). Returns the margin
/// to the runner-up too (0 on a tie; NaN when no value is a number).
///
/// Three passes over the row, each a plain max or compare the compiler vectorises: the
/// maximum, its first index, the maximum of everything else. At 64 rows x 32,000 logits
/// this is 8x faster than one branchy pass (`cargo bench --bench argmax`), which matters
/// on a GPU, where the host does this between every two decoder steps.
pub fn argmax_first(values: &[f32]) -> (usize, f32) {
    let best_v = max_skipping_nan(values);
    let Some(best) = first_index_of(values, best_v) else {
        return (0, f32::NAN);
    };
    let second_v = max_skipping_nan(&values[..best]).max(max_skipping_nan(&values[best + 1..]));
    (best, best_v - second_v)
}

const LANES: usize = 16;

/// The largest value that is not NaN (-inf for none): independent lanes, so it vectorises.
fn max_skipping_nan(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            // `v > lane` is false for NaN, so NaN never enters a lane.
            *lane = if v > *lane { v } else { *lane };
        }
    }
    lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// First index holding `target`: a chunk is tested whole (vectorised) before it is searched.
fn first_index_of(values: &[f32], target: f32) -> Option<usize> {
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.len() * LANES;
    for (k, chunk) in chunks.enumerate() {
        if chunk.iter().fold(false, |any, &v| any | (v == target)) {
            return chunk
                .iter()
                .position(|&v| v == target)
                .map(|i| k * LANES + i);
        }
    }
    values[tail..]
        .iter()
        .position(|&v| v == target)
        .map(|i| tail + i)
}

/// The vocabulary size of logits for `rows` rows; an error when they do not split evenly.
fn vocab_of(logits: &[f32], rows: usize) -> Result<usize, Error> {
    let vocab = logits.len() / rows.max(1);
    if vocab == 0 || logits.len() != rows * vocab {
        return Err(Error::Logits {
            found: logits.len(),
            batch: rows,
        });
    }
    Ok(vocab)
}

/// The greedy choice for one row at `step` (0 = the token after the prompt): EOS banned
/// at step 0 (`min_new_tokens=1`: the reference sets its logit to -inf), argmax with the
/// first index on ties, appended to `generation`. Returns the token and whether the row
/// is finished (EOS, or `max_new_tokens` reached).
fn choose(
    row_logits: &mut [f32],
    step: usize,
    config: &GenerateConfig,
    generation: &mut Generation,
) -> (u32, bool) {
    if step == 0 {
        if let Some(v) = row_logits.get_mut(config.eos_id as usize) {
            *v = f32::NEG_INFINITY;
        }
    }
    let (token, margin) = argmax_first(row_logits);
    let token = token as u32;
    generation.tokens.push(token);
    generation.min_margin = generation.min_margin.min(margin);
    if token == config.eos_id {
        generation.ended_with_eos = true;
        return (token, true);
    }
    (token, step + 1 >= config.max_new_tokens)
}

/// Greedy generation for a batch of prompts; see the module contract.
pub fn generate_batch(
    backend: &mut dyn Backend,
    prompts: &[Prompt],
    config: &GenerateConfig,
    on_token: &mut dyn FnMut(usize),
) -> Result<(Vec<Generation>, Timings), Error> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let batch = prompts.len();
    if batch == 0 {
        return Ok((Vec::new(), timings));
    }

    let t = Instant::now();
    let padded = splice_and_pad(backend, prompts, config)?;
    timings.embed_s += t.elapsed().as_secs_f64();
    let Padded {
        embeds,
        mask,
        positions,
        lengths,
        max_len,
    } = padded;
    timings.prompt_tokens = lengths.iter().sum();

    backend.reset(config.max_new_tokens);
    let t = Instant::now();
    let mut logits = backend.decode(&embeds, &mask, &positions, batch, max_len)?;
    timings.prefill_s += t.elapsed().as_secs_f64();
    timings.backend_s += timings.prefill_s;

    // Live rows: (prompt index, its mask row, its next position).
    let mut live: Vec<usize> = (0..batch).collect();
    let mut masks: Vec<Vec<i64>> = (0..batch)
        .map(|row| mask[row * max_len..(row + 1) * max_len].to_vec())
        .collect();
    let mut next_pos: Vec<i64> = lengths.iter().map(|&l| l as i64).collect();
    let mut out: Vec<Generation> = (0..batch)
        .map(|_| Generation {
            tokens: Vec::new(),
            ended_with_eos: false,
            min_margin: f32::INFINITY,
        })
        .collect();
    let drops = backend.drops_rows();
    let mut done = vec![false; batch];
    let vocab = vocab_of(&logits, batch)?;

    for step in 0..config.max_new_tokens {
        if logits.len() != live.len() * vocab {
            return Err(Error::Logits {
                found: logits.len(),
                batch: live.len(),
            });
        }
        let mut next_ids = Vec::with_capacity(live.len());
        let mut keep = Vec::with_capacity(live.len());
        let mut working = 0;
        for (row, &index) in live.iter().enumerate() {
            if done[index] {
                // A finished row kept in a device batch: feed it anything, ignore it.
                keep.push(row);
                next_ids.push(config.eos_id as i64);
                continue;
            }
            working += 1;
            let row_logits = &mut logits[row * vocab..(row + 1) * vocab];
            let (token, finished) = choose(row_logits, step, config, &mut out[index]);
            done[index] = finished;
            timings.new_tokens += 1;
            if !done[index] || !drops {
                keep.push(row);
                next_ids.push(token as i64);
            }
        }
        on_token(working);
        if step > 0 {
            timings.step_tokens += working;
        }
        if live.iter().all(|&index| done[index]) {
            break;
        }
        if keep.len() != live.len() {
            let t = Instant::now();
            backend.keep_rows(&keep)?;
            timings.backend_s += t.elapsed().as_secs_f64();
            live = keep.iter().map(|&row| live[row]).collect();
        }
        let rows = live.len();
        let t = Instant::now();
        let step_embeds = backend.embed(&next_ids, rows)?;
        let mut step_mask = Vec::new();
        let mut step_pos = Vec::with_capacity(rows);
        for &index in &live {
            masks[index].push(1);
            step_mask.extend_from_slice(&masks[index]);
            step_pos.push(next_pos[index]);
            next_pos[index] += 1;
        }
        logits = backend.decode(&step_embeds, &step_mask, &step_pos, rows, 1)?;
        let spent = t.elapsed().as_secs_f64();
        timings.decode_s += spent;
        timings.backend_s += spent;
        timings.steps += 1;
        timings.step_rows += rows;
    }
    timings.loop_s = started.elapsed().as_secs_f64();
    Ok((out, timings))
}

/// Hands out up to `n` prompts for free slots, `None` when the stream is over.
pub type Source<'a, B, K, E> = dyn FnMut(&mut B, usize) -> Result<Option<Vec<Queued<K>>>, E> + 'a;
/// Takes each prompt's outcome, by key.
pub type Sink<'a, K, E> = dyn FnMut(K, Result<Generation, String>) -> Result<(), E> + 'a;

/// A prompt waiting for a slot, with the caller's key for it.
pub struct Queued<K> {
    pub key: K,
    pub prompt: Prompt,
}

/// The slot cache of a continuous run: `slots` rows of `capacity` positions (the longest
/// prompt plus `max_new_tokens`).
#[derive(Debug, Clone, Copy)]
pub struct SlotPlan {
    pub slots: usize,
    pub capacity: usize,
}

/// A row in a slot: its key, what it generated so far, the tokens in its cache.
struct SlotRow<K> {
    key: K,
    generation: Generation,
    length: usize,
    step: usize,
}

impl<K> SlotRow<K> {
    fn last_token(&self) -> i64 {
        self.generation.tokens.last().map_or(0, |&t| t as i64)
    }
}

/// Continuous batching: greedy generation over a stream of prompts with a slot cache.
///
/// Contract: every prompt `source` hands out ends in exactly one `sink` call with its
/// key: `Ok` with the same tokens `generate_batch` gives it alone (rows never see each
/// other: per-row lengths, no shared padding in steps), or `Err` with the reason (a bad
/// prompt, a prompt too long for `plan.capacity`, or a backend failure while it was in
/// flight; after a backend failure the slots are reopened and the stream goes on).
/// `source(backend, n)` returns up to `n` prompts for the free slots, `None` once the
/// stream is over; it gets the backend so it can run the vision tower for them. A row
/// that finishes frees its slot at once and the next prompt takes it, so the batch
/// stays full until the stream runs dry; then, on a backend whose rows are cheap to drop,
/// the cache is compacted to the live rows.
pub fn generate_continuous<B: Backend + ?Sized, K, E: From<Error>>(
    backend: &mut B,
    plan: SlotPlan,
    config: &GenerateConfig,
    source: &mut Source<'_, B, K, E>,
    sink: &mut Sink<'_, K, E>,
    on_token: &mut dyn FnMut(usize),
) -> Result<Timings, E> {
    let started = Instant::now();
    let mut timings = Timings::default();
    backend
        .open_slots(plan.slots, plan.capacity)
        .map_err(Error::from)?;
    let mut rows: Vec<Option<SlotRow<K>>> = (0..plan.slots).map(|_| None).collect();
    let mut exhausted = false;
    loop {
        // Refill the free slots from the stream.
        let free: Vec<usize> = (0..rows.len()).filter(|&s| rows[s].is_none()).collect();
        if !exhausted && !free.is_empty() {
            match source(backend, free.len())? {
                None => exhausted = true,
                Some(queued) => {
                    let before = timings.new_tokens;
                    let joined =
                        join_slots(backend, &free, queued, plan, config, &mut timings, sink)?;
                    for (slot, row) in joined {
                        rows[slot] = Some(row);
                    }
                    on_token(timings.new_tokens - before);
                }
            }
        }
        // Rows that finished on their first token never took a slot; drop the others'.
        let live: Vec<usize> = (0..rows.len()).filter(|&s| rows[s].is_some()).collect();
        if live.is_empty() {
            if exhausted {
                break;
            }
            continue;
        }
        if exhausted && backend.drops_rows() && live.len() < rows.len() {
            let t = Instant::now();
            backend.keep_rows(&live).map_err(Error::from)?;
            timings.backend_s += t.elapsed().as_secs_f64();
            rows = live.iter().map(|&s| rows[s].take()).collect();
        }

        // One step for every slot (free slots compute a throwaway position 0).
        let t = Instant::now();
        let ids: Vec<i64> = rows
            .iter()
            .map(|r| r.as_ref().map_or(config.eos_id as i64, SlotRow::last_token))
            .collect();
        let lengths: Vec<usize> = rows
            .iter()
            .map(|r| r.as_ref().map_or(1, |r| r.length + 1))
            .collect();
        let stepped = backend
            .embed(&ids, rows.len())
            .and_then(|embeds| backend.step_slots(&embeds, &lengths));
        let spent = t.elapsed().as_secs_f64();
        timings.decode_s += spent;
        timings.backend_s += spent;
        timings.steps += 1;
        timings.step_rows += rows.len();
        let mut logits = match stepped {
            Ok(logits) => logits,
            Err(error) => {
                for row in rows.iter_mut().filter_map(Option::take) {
                    sink(row.key, Err(error.to_string()))?;
                }
                backend
                    .open_slots(plan.slots, plan.capacity)
                    .map_err(Error::from)?;
                rows = (0..plan.slots).map(|_| None).collect();
                continue;
            }
        };
        let vocab = vocab_of(&logits, rows.len())?;
        let mut working = 0;
        for (slot, entry) in rows.iter_mut().enumerate() {
            let Some(row) = entry.as_mut() else { continue };
            working += 1;
            row.length += 1;
            row.step += 1;
            let row_logits = &mut logits[slot * vocab..(slot + 1) * vocab];
            let (_, finished) = choose(row_logits, row.step, config, &mut row.generation);
            timings.new_tokens += 1;
            if finished {
                if let Some(row) = entry.take() {
                    sink(row.key, Ok(row.generation))?;
                }
            }
        }
        timings.step_tokens += working;
        on_token(working);
    }
    timings.loop_s = started.elapsed().as_secs_f64();
    Ok(timings)
}

/// Prefills `queued` into the first free slots; returns the rows that go on (slot, row).
/// Bad or too long prompts, rows done after one token, and a failed prefill end in `sink`.
fn join_slots<B: Backend + ?Sized, K, E: From<Error>>(
    backend: &mut B,
    free: &[usize],
    queued: Vec<Queued<K>>,
    plan: SlotPlan,
    config: &GenerateConfig,
    timings: &mut Timings,
    sink: &mut Sink<'_, K, E>,
) -> Result<Vec<(usize, SlotRow<K>)>, E> {
    let t = Instant::now();
    let mut keys = Vec::new();
    let mut prompts = Vec::new();
    let mut padded = None;
    let hidden = backend.hidden_size();
    for q in queued.into_iter().take(free.len()) {
        // Each prompt checked alone first, so that one bad prompt fails alone.
        match check_prompt(0, &q.prompt, config, hidden) {
            Err(error) => sink(q.key, Err(error.to_string()))?,
            Ok(positions) if positions + config.max_new_tokens > plan.capacity => sink(
                q.key,
                Err(format!(
                    "the prompt has {positions} positions: with {} new tokens it exceeds the cache capacity {}",
                    config.max_new_tokens, plan.capacity
                )),
            )?,
            Ok(_) => {
                keys.push(q.key);
                prompts.push(q.prompt);
            }
        }
    }
    if !prompts.is_empty() {
        padded = Some(splice_and_pad(backend, &prompts, config));
    }
    timings.embed_s += t.elapsed().as_secs_f64();
    let Some(padded) = padded else {
        return Ok(Vec::new());
    };
    let slots = &free[..keys.len()];
    let t = Instant::now();
    let prefilled = padded
        .map_err(|e| BackendError(e.to_string()))
        .and_then(|p| {
            timings.prompt_tokens += p.lengths.iter().sum::<usize>();
            let logits = backend.prefill_slots(slots, &p.embeds, &p.mask, p.max_len)?;
            Ok((logits, p.lengths))
        });
    let spent = t.elapsed().as_secs_f64();
    timings.prefill_s += spent;
    timings.backend_s += spent;
    let (mut logits, lengths) = match prefilled {
        Ok(done) => done,
        Err(error) => {
            for key in keys {
                sink(key, Err(error.to_string()))?;
            }
            return Ok(Vec::new());
        }
    };
    let vocab = vocab_of(&logits, keys.len())?;
    let mut joined = Vec::new();
    for (j, key) in keys.into_iter().enumerate() {
        let mut generation = Generation {
            tokens: Vec::new(),
            ended_with_eos: false,
            min_margin: f32::INFINITY,
        };
        let (_, finished) = choose(
            &mut logits[j * vocab..(j + 1) * vocab],
            0,
            config,
            &mut generation,
        );
        timings.new_tokens += 1;
        if finished {
            sink(key, Ok(generation))?;
        } else {
            joined.push((
                slots[j],
                SlotRow {
                    key,
                    generation,
                    length: lengths[j],
                    step: 0,
                },
            ));
        }
    }
    Ok(joined)
}

/// A batch of prompts spliced (text embeddings, the image's N positions in the image
/// slot) and left-padded to the longest row, with HF's mask and positions.
struct Padded {
    embeds: Vec<f32>,
    mask: Vec<i64>,
    positions: Vec<i64>,
    lengths: Vec<usize>,
    max_len: usize,
}

/// Checks that a prompt has one image slot and whole image rows; returns its positions
/// once spliced.
fn check_prompt(
    index: usize,
    prompt: &Prompt,
    config: &GenerateConfig,
    hidden: usize,
) -> Result<usize, Error> {
    let found = prompt
        .ids
        .iter()
        .filter(|&&id| id == config.image_token_id)
        .count();
    if found != 1 {
        return Err(Error::ImageSlots {
            index,
            found,
            image_token_id: config.image_token_id,
        });
    }
    if prompt.image_embeds.is_empty() || prompt.image_embeds.len() % hidden != 0 {
        return Err(Error::ImageShape {
            index,
            found: prompt.image_embeds.len(),
            hidden,
        });
    }
    Ok(prompt.ids.len() - 1 + prompt.image_embeds.len() / hidden)
}

fn splice_and_pad<B: Backend + ?Sized>(
    backend: &mut B,
    prompts: &[Prompt],
    config: &GenerateConfig,
) -> Result<Padded, Error> {
    let hidden = backend.hidden_size();
    let batch = prompts.len();
    let mut sequences: Vec<Vec<f32>> = Vec::with_capacity(batch);
    for (index, prompt) in prompts.iter().enumerate() {
        check_prompt(index, prompt, config, hidden)?;
        let slot = prompt
            .ids
            .iter()
            .position(|&id| id == config.image_token_id)
            .unwrap_or(0);
        let text: Vec<i64> = prompt
            .ids
            .iter()
            .copied()
            .filter(|&id| id != config.image_token_id)
            .collect();
        let text_embeds = backend.embed(&text, 1)?;
        let mut seq = Vec::with_capacity(text_embeds.len() + prompt.image_embeds.len());
        seq.extend_from_slice(&text_embeds[..slot * hidden]);
        seq.extend_from_slice(&prompt.image_embeds);
        seq.extend_from_slice(&text_embeds[slot * hidden..]);
        sequences.push(seq);
    }
    let lengths: Vec<usize> = sequences.iter().map(|s| s.len() / hidden).collect();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    let mut embeds = vec![0f32; batch * max_len * hidden];
    let mut mask = vec![0i64; batch * max_len];
    let mut positions = vec![1i64; batch * max_len];
    for (row, seq) in sequences.iter().enumerate() {
        let pad = max_len - lengths[row];
        let start = (row * max_len + pad) * hidden;
        embeds[start..start + seq.len()].copy_from_slice(seq);
        for p in 0..lengths[row] {
            mask[row * max_len + pad + p] = 1;
            positions[row * max_len + pad + p] = p as i64;
        }
    }
    Ok(Padded {
        embeds,
        mask,
        positions,
        lengths,
        max_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted model: the next token of each row is a function of (row id, step),
    /// carried through the "embedding" so the double can tell rows apart after drops.
    struct Scripted {
        hidden: usize,
        vocab: usize,
        script: Vec<Vec<u32>>,
        cache_rows: Vec<usize>,
        steps: Vec<usize>,
        calls: Vec<(usize, usize, Vec<i64>, Vec<i64>)>,
    }

    impl Backend for Scripted {
        fn hidden_size(&self) -> usize {
            self.hidden
        }
        fn embed(&mut self, ids: &[i64], _batch: usize) -> Result<Vec<f32>, BackendError> {
            Ok(ids
                .iter()
                .flat_map(|&id| vec![id as f32; self.hidden])
                .collect())
        }
        fn decode(
            &mut self,
            embeds: &[f32],
            mask: &[i64],
            pos: &[i64],
            batch: usize,
            new_len: usize,
        ) -> Result<Vec<f32>, BackendError> {
            self.calls
                .push((batch, new_len, mask.to_vec(), pos.to_vec()));
            if new_len > 1 {
                // Prefill: the row id is the first value of the image embedding, which
                // the test sets to 1000 + row.
                self.cache_rows = (0..batch)
                    .map(|r| {
                        let row =
                            &embeds[r * new_len * self.hidden..(r + 1) * new_len * self.hidden];
                        row.iter()
                            .find(|&&v| v >= 1000.0)
                            .map(|&v| v as usize - 1000)
                            .unwrap()
                    })
                    .collect();
                self.steps = vec![0; batch];
            }
            let mut logits = vec![0f32; batch * self.vocab];
            for r in 0..batch {
                let id = self.cache_rows[r];
                let step = self.steps[r];
                let token = self.script[id].get(step).copied().unwrap_or(7);
                logits[r * self.vocab + token as usize] = 1.0;
                // An EOS logit above everything at step 0 must be ignored.
                if step == 0 {
                    logits[r * self.vocab + 2] = 5.0;
                }
                self.steps[r] += 1;
            }
            Ok(logits)
        }
        fn reset(&mut self, _max_new_tokens: usize) {
            self.cache_rows.clear();
        }
        fn keep_rows(&mut self, rows: &[usize]) -> Result<(), BackendError> {
            self.cache_rows = rows.iter().map(|&r| self.cache_rows[r]).collect();
            self.steps = rows.iter().map(|&r| self.steps[r]).collect();
            Ok(())
        }
    }

    fn prompt(row: usize, text_len: usize) -> Prompt {
        let mut ids: Vec<i64> = (0..text_len as i64).map(|i| 10 + i).collect();
        ids.insert(1, -200);
        Prompt {
            ids,
            image_embeds: vec![1000.0 + row as f32; 2 * 2],
        }
    }

    fn config(max: usize) -> GenerateConfig {
        GenerateConfig {
            max_new_tokens: max,
            eos_id: 2,
            image_token_id: -200,
        }
    }

    #[test]
    fn argmax_takes_the_first_index_on_ties_and_skips_nan() {
        assert_eq!(argmax_first(&[1.0, 3.0, 3.0, 2.0]).0, 1);
        assert_eq!(argmax_first(&[f32::NAN, 0.5, 0.5]).0, 1);
        assert_eq!(argmax_first(&[1.0, 3.0, 2.5]).1, 0.5);
        assert_eq!(argmax_first(&[-0.0, 0.0]), (0, 0.0));
        assert!(argmax_first(&[f32::NAN; 20]).1.is_nan());
        assert_eq!(argmax_first(&[f32::NEG_INFINITY, 1.0]), (1, f32::INFINITY));
    }

    /// The vectorised passes against the obvious loop, over rows of every length around
    /// the lane width, with ties, NaN and -inf sprinkled in.
    #[test]
    fn argmax_agrees_with_a_plain_scan() {
        fn plain(values: &[f32]) -> (usize, f32) {
            let mut best: Option<usize> = None;
            for (i, &v) in values.iter().enumerate() {
                if !v.is_nan() && best.is_none_or(|b| v > values[b]) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { return (0, f32::NAN) };
            let second = values
                .iter()
                .enumerate()
                .filter(|&(i, v)| i != b && !v.is_nan())
                .fold(f32::NEG_INFINITY, |m, (_, &v)| m.max(v));
            (b, values[b] - second)
        }
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for len in (1..70).chain([31_999, 32_000]) {
            for _ in 0..20 {
                let row: Vec<f32> = (0..len)
                    .map(|_| match next() % 50 {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        k => (k % 7) as f32 - 3.0, // few distinct values: many ties
                    })
                    .collect();
                let (want, got) = (plain(&row), argmax_first(&row));
                assert_eq!(want.0, got.0, "{row:?}");
                assert!(
                    want.1 == got.1 || (want.1.is_nan() && got.1.is_nan()),
                    "{row:?}"
                );
            }
        }
    }

    #[test]
    fn stops_at_eos_or_the_limit_and_bans_eos_first() {
        let mut backend = Scripted {
            hidden: 2,
            vocab: 10,
            script: vec![vec![5, 6, 2, 9], vec![4, 4, 4, 4, 4, 4], vec![2, 3, 2]],
            cache_rows: vec![],
            steps: vec![],
            calls: vec![],
        };
        let prompts = vec![prompt(0, 3), prompt(1, 5), prompt(2, 4)];
        let mut counted = 0;
        let (gens, timings) =
            generate_batch(&mut backend, &prompts, &config(4), &mut |n| counted += n).unwrap();
        // Row 0 stops on EOS (kept in tokens); row 1 runs to the limit; row 2's scripted
        // EOS at step 0 is banned (the double then emits its step-0 token 2 → banned → 0).
        assert_eq!(gens[0].tokens, vec![5, 6, 2]);
        assert!(gens[0].ended_with_eos);
        assert_eq!(gens[1].tokens, vec![4, 4, 4, 4]);
        assert!(!gens[1].ended_with_eos);
        assert_eq!(gens[2].tokens[0], 0, "EOS must be banned at the first step");
        assert_eq!(gens[2].tokens[1..], [3, 2]);
        assert_eq!(counted, timings.new_tokens);
        assert_eq!(timings.new_tokens, 3 + 4 + 3);
    }

    #[test]
    fn left_padding_masks_and_positions_follow_hf() {
        let mut backend = Scripted {
            hidden: 2,
            vocab: 10,
            script: vec![vec![5, 5], vec![5, 5]],
            cache_rows: vec![],
            steps: vec![],
            calls: vec![],
        };
        // Lengths: 2 text + 2 image = 4, and 4 text + 2 image = 6.
        let prompts = vec![prompt(0, 2), prompt(1, 4)];
        generate_batch(&mut backend, &prompts, &config(2), &mut |_| {}).unwrap();
        let (batch, len, mask, pos) = &backend.calls[0];
        assert_eq!((*batch, *len), (2, 6));
        assert_eq!(mask, &vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(pos, &vec![1, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]);
        let (batch, len, mask, pos) = &backend.calls[1];
        assert_eq!((*batch, *len), (2, 1));
        assert_eq!(mask.len(), 2 * 7);
        assert_eq!(pos, &vec![4, 6]);
    }

    #[test]
    fn finished_rows_leave_the_batch() {
        let mut backend = Scripted {
            hidden: 2,
            vocab: 10,
            script: vec![vec![5, 2], vec![4, 4, 4, 4]],
            cache_rows: vec![],
            steps: vec![],
            calls: vec![],
        };
        let prompts = vec![prompt(0, 2), prompt(1, 2)];
        let (gens, _) = generate_batch(&mut backend, &prompts, &config(4), &mut |_| {}).unwrap();
        assert_eq!(gens[1].tokens, vec![4, 4, 4, 4]);
        let batches: Vec<usize> = backend.calls.iter().map(|c| c.0).collect();
        assert_eq!(batches, vec![2, 2, 1, 1]);
    }

    /// The same double, but keeping finished rows in the batch like a device cache.
    struct Keeping(Scripted);

    impl Backend for Keeping {
        fn hidden_size(&self) -> usize {
            self.0.hidden_size()
        }
        fn embed(&mut self, ids: &[i64], batch: usize) -> Result<Vec<f32>, BackendError> {
            self.0.embed(ids, batch)
        }
        fn decode(
            &mut self,
            e: &[f32],
            m: &[i64],
            p: &[i64],
            b: usize,
            n: usize,
        ) -> Result<Vec<f32>, BackendError> {
            self.0.decode(e, m, p, b, n)
        }
        fn reset(&mut self, max_new_tokens: usize) {
            self.0.reset(max_new_tokens)
        }
        fn keep_rows(&mut self, _rows: &[usize]) -> Result<(), BackendError> {
            panic!("a backend that does not drop rows must not be asked to")
        }
        fn drops_rows(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_backend_that_keeps_rows_gives_the_same_tokens() {
        let script = vec![vec![5, 2], vec![4, 4, 4, 4], vec![3, 3, 2]];
        let make = || Scripted {
            hidden: 2,
            vocab: 10,
            script: script.clone(),
            cache_rows: vec![],
            steps: vec![],
            calls: vec![],
        };
        let prompts = vec![prompt(0, 2), prompt(1, 2), prompt(2, 3)];
        let (dropping, _) = generate_batch(&mut make(), &prompts, &config(4), &mut |_| {}).unwrap();
        let mut keeping = Keeping(make());
        let (kept, timings) =
            generate_batch(&mut keeping, &prompts, &config(4), &mut |_| {}).unwrap();
        assert_eq!(dropping, kept);
        assert_eq!(timings.new_tokens, 2 + 4 + 3);
        assert!(
            keeping.0.calls.iter().all(|c| c.0 == 3),
            "all rows stay in the batch"
        );
    }

    #[test]
    fn a_prompt_without_one_image_slot_is_an_error() {
        let mut backend = Scripted {
            hidden: 2,
            vocab: 10,
            script: vec![vec![]],
            cache_rows: vec![],
            steps: vec![],
            calls: vec![],
        };
        let bad = Prompt {
            ids: vec![1, 2, 3],
            image_embeds: vec![0.0; 4],
        };
        let err = generate_batch(&mut backend, &[bad], &config(2), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("0 image slots"), "{err}");
    }

    /// A slot-cache double for continuous batching: each slot holds (row id, step); the
    /// next token of a row comes from its script like `Scripted`'s.
    struct Slotted {
        vocab: usize,
        script: Vec<Vec<u32>>,
        slots: Vec<Option<(usize, usize)>>,
        drops: bool,
        /// Slots each prefill went to, and the batch of each step.
        prefills: Vec<Vec<usize>>,
        steps: Vec<usize>,
        /// The step call (0-based) that fails, if any.
        fail_step: Option<usize>,
    }

    impl Slotted {
        fn new(script: Vec<Vec<u32>>, drops: bool) -> Slotted {
            Slotted {
                vocab: 10,
                script,
                slots: Vec::new(),
                drops,
                prefills: Vec::new(),
                steps: Vec::new(),
                fail_step: None,
            }
        }
        fn logits_for(&mut self, slot: usize) -> Vec<f32> {
            let mut logits = vec![0f32; self.vocab];
            if let Some((id, step)) = self.slots[slot].as_mut() {
                let token = self.script[*id].get(*step).copied().unwrap_or(7);
                logits[token as usize] = 1.0;
                if *step == 0 {
                    logits[2] = 5.0; // must be ignored: EOS is banned at step 0
                }
                *step += 1;
            }
            logits
        }
    }

    impl Backend for Slotted {
        fn hidden_size(&self) -> usize {
            2
        }
        fn embed(&mut self, ids: &[i64], _batch: usize) -> Result<Vec<f32>, BackendError> {
            Ok(ids.iter().flat_map(|&id| vec![id as f32; 2]).collect())
        }
        fn decode(
            &mut self,
            _: &[f32],
            _: &[i64],
            _: &[i64],
            _: usize,
            _: usize,
        ) -> Result<Vec<f32>, BackendError> {
            panic!("continuous batching must use the slot calls")
        }
        fn reset(&mut self, _max_new_tokens: usize) {}
        fn keep_rows(&mut self, rows: &[usize]) -> Result<(), BackendError> {
            self.slots = rows.iter().map(|&r| self.slots[r]).collect();
            Ok(())
        }
        fn drops_rows(&self) -> bool {
            self.drops
        }
        fn has_slots(&self) -> bool {
            true
        }
        fn open_slots(&mut self, slots: usize, _capacity: usize) -> Result<(), BackendError> {
            self.slots = vec![None; slots];
            Ok(())
        }
        fn prefill_slots(
            &mut self,
            slots: &[usize],
            embeds: &[f32],
            _mask: &[i64],
            new_len: usize,
        ) -> Result<Vec<f32>, BackendError> {
            self.prefills.push(slots.to_vec());
            let mut logits = Vec::new();
            for (r, &slot) in slots.iter().enumerate() {
                let row = &embeds[r * new_len * 2..(r + 1) * new_len * 2];
                let id = row
                    .iter()
                    .find(|&&v| v >= 1000.0)
                    .map(|&v| v as usize - 1000)
                    .unwrap();
                self.slots[slot] = Some((id, 0));
                logits.extend(self.logits_for(slot));
            }
            Ok(logits)
        }
        fn step_slots(
            &mut self,
            _embeds: &[f32],
            lengths: &[usize],
        ) -> Result<Vec<f32>, BackendError> {
            if self.fail_step == Some(self.steps.len()) {
                self.steps.push(lengths.len());
                return Err(BackendError("device lost".into()));
            }
            self.steps.push(lengths.len());
            Ok((0..lengths.len())
                .flat_map(|s| self.logits_for(s))
                .collect())
        }
    }

    /// Runs `prompts` (keyed by index) through `generate_continuous` on `backend`.
    fn stream(
        backend: &mut Slotted,
        prompts: Vec<Prompt>,
        slots: usize,
        capacity: usize,
        max: usize,
    ) -> Vec<Result<Generation, String>> {
        let n = prompts.len();
        let mut queue: std::collections::VecDeque<Queued<usize>> = prompts
            .into_iter()
            .enumerate()
            .map(|(key, prompt)| Queued { key, prompt })
            .collect();
        let mut results: Vec<Option<Result<Generation, String>>> = vec![None; n];
        let mut source = |_: &mut Slotted, k: usize| -> Result<Option<Vec<Queued<usize>>>, Error> {
            Ok((!queue.is_empty()).then(|| queue.drain(..k.min(queue.len())).collect()))
        };
        let mut sink = |key: usize, result: Result<Generation, String>| -> Result<(), Error> {
            assert!(results[key].is_none(), "prompt {key} ended twice");
            results[key] = Some(result);
            Ok(())
        };
        let plan = SlotPlan { slots, capacity };
        generate_continuous(
            backend,
            plan,
            &config(max),
            &mut source,
            &mut sink,
            &mut |_| {},
        )
        .unwrap();
        results
            .into_iter()
            .map(|r| r.expect("every prompt ends in the sink"))
            .collect()
    }

    fn script5() -> Vec<Vec<u32>> {
        vec![
            vec![5, 2],
            vec![4, 4, 4, 4, 4],
            vec![3, 2],
            vec![2, 6, 6, 2],
            vec![8, 8, 8],
        ]
    }

    #[test]
    fn continuous_gives_each_prompt_its_tokens_alone() {
        let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2 + r % 3)).collect();
        let mut slotted = Slotted::new(script5(), false);
        let streamed = stream(&mut slotted, prompts.clone(), 2, 64, 5);
        for (r, got) in streamed.into_iter().enumerate() {
            let mut alone = Scripted {
                hidden: 2,
                vocab: 10,
                script: script5(),
                cache_rows: vec![],
                steps: vec![],
                calls: vec![],
            };
            let (expected, _) =
                generate_batch(&mut alone, &prompts[r..r + 1], &config(5), &mut |_| {}).unwrap();
            assert_eq!(got.unwrap(), expected[0], "prompt {r}");
        }
    }

    #[test]
    fn a_finished_row_frees_its_slot_for_the_next_prompt() {
        let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2)).collect();
        let mut slotted = Slotted::new(script5(), false);
        stream(&mut slotted, prompts, 2, 64, 5);
        // Rows 0 and 1 start; row 0 ends after 2 tokens (one step), so prompt 2 joins in
        // slot 0 while row 1 goes on in slot 1; and so on.
        assert_eq!(slotted.prefills[0], vec![0, 1]);
        assert_eq!(slotted.prefills[1], vec![0]);
        assert!(slotted.prefills.iter().flatten().count() == 5);
        // A device-style backend never shrinks the batch.
        assert!(slotted.steps.iter().all(|&b| b == 2), "{:?}", slotted.steps);
    }

    #[test]
    fn a_host_backend_compacts_once_the_stream_runs_dry() {
        let prompts: Vec<Prompt> = (0..3).map(|r| prompt(r, 2)).collect();
        let mut slotted = Slotted::new(script5(), true);
        let results = stream(&mut slotted, prompts, 2, 64, 5);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(slotted.steps.last(), Some(&1), "{:?}", slotted.steps);
    }

    #[test]
    fn bad_or_too_long_prompts_fail_alone() {
        let mut prompts: Vec<Prompt> = (0..3).map(|r| prompt(r, 2)).collect();
        prompts[1].ids.retain(|&id| id != -200); // no image slot
        prompts.push(prompt(3, 40)); // 40 text + 2 image positions: over the capacity
        let mut slotted = Slotted::new(script5(), false);
        let results = stream(&mut slotted, prompts, 2, 20, 5);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(results[1].as_ref().unwrap_err().contains("0 image slots"));
        let too_long = results[3].as_ref().unwrap_err();
        assert!(
            too_long.contains("42 positions") && too_long.contains("capacity 20"),
            "{too_long}"
        );
    }

    #[test]
    fn a_backend_failure_fails_the_rows_in_flight_and_the_stream_goes_on() {
        let prompts: Vec<Prompt> = (0..5).map(|r| prompt(r, 2)).collect();
        let mut slotted = Slotted::new(script5(), false);
        slotted.fail_step = Some(0);
        let results = stream(&mut slotted, prompts, 2, 64, 5);
        // The first step fails with rows 0 and 1 in flight; 2, 3, 4 come after.
        for r in [0, 1] {
            assert_eq!(results[r].as_ref().unwrap_err(), "device lost");
        }
        for r in [2, 3, 4] {
            assert!(results[r].is_ok(), "prompt {r}: {:?}", results[r]);
        }
    }
}
