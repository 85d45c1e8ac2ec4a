//! The run manifest written beside each subset's answers (`{engine}.run.json`): the
//! configuration, the providers, per-stage seconds computed in one place from what the
//! generator, the decoder and the image stages measured, and the reference's ASR.

use crate::dataset::Subset;
use crate::formats::{AsrSummary, StageTimings};
use crate::generate::Timings;

use super::schedule::FeedTimings;

impl StageTimings {
    /// The stage split of one subset: the generator's own timings (its ONNX Runtime
    /// seconds are the decoder's count), the feed's, and the vision tower's ONNX Runtime
    /// seconds.
    pub fn from_run(
        session_load_s: f64,
        generated: &Timings,
        feed: &FeedTimings,
        vision_ort_s: f64,
        total_s: f64,
    ) -> StageTimings {
        let per = |a: usize, b: usize| if b > 0 { a as f64 / b as f64 } else { 0.0 };
        let gen_s = generated.prefill_s + generated.decode_s;
        StageTimings {
            session_load_s,
            preprocess_wait_s: feed.image_wait_s,
            preprocess_s: feed.preprocess_s,
            vision_s: feed.vision_s,
            embed_s: generated.splice_s,
            prefill_s: generated.prefill_s,
            decode_s: generated.decode_s,
            detokenize_s: feed.detokenize_s,
            total_s,
            new_tokens: generated.new_tokens,
            prompt_tokens: generated.prompt_tokens,
            tokens_per_s: if gen_s > 0.0 {
                generated.new_tokens as f64 / gen_s
            } else {
                0.0
            },
            ort_s: generated.ort_s + vision_ort_s,
            // The decoding loop's own cost: generation wall time (splicing, prefill,
            // steps) not spent inside ONNX Runtime session runs, as a share of it.
            loop_overhead_pct: if generated.loop_s > 0.0 {
                100.0 * (generated.loop_s - generated.ort_s).max(0.0) / generated.loop_s
            } else {
                0.0
            },
            decode_steps: generated.steps,
            step_occupancy_pct: 100.0 * per(generated.step_tokens, generated.step_rows),
        }
    }
}

impl AsrSummary {
    /// The reference's ASR over the answered samples of a subset that reports one.
    pub fn of(subset: Subset, answers: &[&str]) -> Option<AsrSummary> {
        if !subset.reports_asr() {
            return None;
        }
        let keywords = crate::score::reference_keywords();
        let successes = answers
            .iter()
            .filter(|a| crate::score::check_success_attack(a, &keywords))
            .count();
        Some(AsrSummary {
            successes,
            n: answers.len(),
            asr: (!answers.is_empty()).then(|| crate::score::asr_percent(successes, answers.len())),
        })
    }
}

/// [`AsrSummary::of`], printed as the reference prints it (with k/n after it).
pub fn asr(subset: Subset, engine: &str, answers: &[&str]) -> Option<AsrSummary> {
    let summary = AsrSummary::of(subset, answers)?;
    let (successes, n) = (summary.successes, summary.n);
    println!(
        "{}",
        crate::score::asr_line(subset.name(), engine, successes, n)
    );
    println!("({successes}/{n} attacks succeeded)");
    Some(summary)
}

pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
