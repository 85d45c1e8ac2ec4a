//! The greedy choice of one row's next token, as the reference's
//! `model.generate(do_sample=False, min_new_tokens=1, max_new_tokens=M)` makes it: argmax
//! with the FIRST index on ties (NaN never wins), EOS forbidden at the first step only,
//! stop after EOS (kept in the tokens, never decoded) or after M tokens.

use super::{GenerateConfig, Generation};

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

/// The next token of a row whose logits are `row_logits`, appended to `generation`:
/// EOS banned when it is the row's first token (`min_new_tokens=1`: the reference sets
/// its logit to -inf), argmax with the first index on ties. Returns whether the row is
/// finished (EOS, or `max_new_tokens` reached).
pub(super) fn choose(
    row_logits: &mut [f32],
    config: &GenerateConfig,
    generation: &mut Generation,
) -> bool {
    if generation.tokens.is_empty() {
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
        return true;
    }
    generation.tokens.len() >= config.max_new_tokens
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let Some(b) = best else {
                return (0, f32::NAN);
            };
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
}
