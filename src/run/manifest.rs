//! The run manifest written beside each subset's answers (`{engine}.run.json`): the
//! configuration, the providers, per-stage seconds computed in one place from what the
//! generator, the decoder and the image stages measured, and the reference's ASR.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dataset::Subset;
use crate::generate::Timings;

use super::args::Batching;
use super::schedule::FeedTimings;

/// The run manifest written beside the answers.
#[derive(Debug, Serialize)]
pub struct RunManifest {
    pub tool: String,
    pub tool_version: String,
    pub engine: String,
    pub subset: String,
    pub model_dir: String,
    pub model_manifest_sha256: String,
    pub dtype: String,
    pub ort_library: String,
    pub execution_providers: BTreeMap<String, String>,
    /// Graphs on TensorRT: engine cache folder, whether the engine was reused, seconds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tensorrt: BTreeMap<String, crate::engine::trt::TrtBuild>,
    pub dataset: String,
    pub dataset_sha256: String,
    pub images: String,
    pub batch_size: usize,
    /// `static` or `continuous`, as run.
    pub batching: Batching,
    pub max_new_tokens: usize,
    pub limit: Option<usize>,
    pub started_at: String,
    pub finished_at: String,
    pub n_samples: usize,
    pub n_answered: usize,
    pub n_resumed: usize,
    pub n_generated: usize,
    pub n_errors: usize,
    pub errors: Vec<SampleError>,
    pub timings: StageTimings,
    pub peak_rss_mb: Option<f64>,
    pub asr: Option<AsrSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleError {
    pub image: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AsrSummary {
    pub successes: usize,
    pub n: usize,
    pub asr: f64,
}

/// Seconds per stage of this invocation (resumed samples cost nothing).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimings {
    pub session_load_s: f64,
    /// Wall time the decoder waited for images: preprocessing (rayon threads) runs a
    /// batch ahead of it, and so does the vision tower on its own thread; an inline vision
    /// tower's time is in this wait.
    pub preprocess_wait_s: f64,
    /// Total preprocessing work on the rayon threads.
    pub preprocess_s: f64,
    /// Vision tower + projector seconds (on the vision thread, or inline: `--vision-thread`).
    pub vision_s: f64,
    pub embed_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub detokenize_s: f64,
    pub total_s: f64,
    pub new_tokens: usize,
    pub prompt_tokens: usize,
    /// New tokens per second of prefill + decode.
    pub tokens_per_s: f64,
    /// Seconds inside ONNX Runtime session runs.
    pub ort_s: f64,
    /// Generation wall time outside ONNX Runtime session runs (splicing, argmax, masks,
    /// tensor building, cache row selection), as a percentage of generation wall time.
    pub loop_overhead_pct: f64,
    /// Decoder step calls, and the share of the rows they computed that were still
    /// generating (finished rows riding along and free slots are the rest).
    pub decode_steps: usize,
    pub step_occupancy_pct: f64,
}

impl StageTimings {
    /// The stage split of one subset: the generator's own timings (its ONNX Runtime
    /// seconds are the decoder's count), the feed's, and the vision tower's ONNX Runtime
    /// seconds.
    pub fn new(
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

/// The reference's ASR over the answered samples of a subset that reports one, printed
/// as the reference prints it (with k/n after it).
pub fn asr(subset: Subset, engine: &str, answers: &[&str]) -> Option<AsrSummary> {
    if !subset.reports_asr() {
        return None;
    }
    let keywords = crate::score::reference_keywords();
    let successes = answers
        .iter()
        .filter(|a| crate::score::check_success_attack(a, &keywords))
        .count();
    println!(
        "{}",
        crate::score::asr_line(subset.name(), engine, successes, answers.len())
    );
    println!("({successes}/{} attacks succeeded)", answers.len());
    Some(AsrSummary {
        successes,
        n: answers.len(),
        asr: crate::score::asr_percent(successes, answers.len()),
    })
}

pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
