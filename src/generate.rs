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
    }
}

/// Index of the largest value, the first one on ties; NaN never wins (the reference's
/// `torch.argmax` over finite logits). Returns the margin to the runner-up too.
pub fn argmax_first(values: &[f32]) -> (usize, f32) {
    let mut best = usize::MAX;
    let mut best_v = f32::NEG_INFINITY;
    let mut second_v = f32::NEG_INFINITY;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best == usize::MAX || v.total_cmp(&best_v).is_gt() {
            second_v = best_v;
            best_v = v;
            best = i;
        } else if v.total_cmp(&second_v).is_gt() {
            second_v = v;
        }
    }
    (if best == usize::MAX { 0 } else { best }, best_v - second_v)
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
    let hidden = backend.hidden_size();
    let batch = prompts.len();
    if batch == 0 {
        return Ok((Vec::new(), timings));
    }

    // Splice: text embeddings before the slot, the image's N positions, text after.
    let t = Instant::now();
    let mut sequences: Vec<Vec<f32>> = Vec::with_capacity(batch);
    for (index, prompt) in prompts.iter().enumerate() {
        let slots: Vec<usize> = (0..prompt.ids.len())
            .filter(|&i| prompt.ids[i] == config.image_token_id)
            .collect();
        if slots.len() != 1 {
            return Err(Error::ImageSlots {
                index,
                found: slots.len(),
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
        let slot = slots[0];
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
    timings.embed_s += t.elapsed().as_secs_f64();

    // Left padding to the longest row.
    let lengths: Vec<usize> = sequences.iter().map(|s| s.len() / hidden).collect();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    timings.prompt_tokens = lengths.iter().sum();
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
    let vocab = logits.len() / batch;
    if vocab == 0 || logits.len() != batch * vocab {
        return Err(Error::Logits {
            found: logits.len(),
            batch,
        });
    }

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
            if step == 0 {
                // min_new_tokens=1: the reference sets the EOS logit to -inf at step 1.
                if let Some(v) = row_logits.get_mut(config.eos_id as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            let (token, margin) = argmax_first(row_logits);
            let generation = &mut out[index];
            generation.tokens.push(token as u32);
            generation.min_margin = generation.min_margin.min(margin);
            timings.new_tokens += 1;
            if token as u32 == config.eos_id {
                generation.ended_with_eos = true;
                done[index] = true;
            } else if step + 1 >= config.max_new_tokens {
                done[index] = true;
            }
            if !done[index] || !drops {
                keep.push(row);
                next_ids.push(token as i64);
            }
        }
        on_token(working);
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
    }
    timings.loop_s = started.elapsed().as_secs_f64();
    Ok((out, timings))
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
}
