//! What `run` writes beside each answers file: the run manifest (`{engine}.run.json`,
//! pretty JSON) and the journal's lines (`{engine}.journal.jsonl`: a [`JournalHeader`],
//! then one [`JournalEntry`] per finished or failed sample). The journal's logic (sync,
//! resume, torn lines) is in `results`; the manifest's figures come from `run`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vlguard_export::manifest::GraphKind;

/// How prompts share the decoder (`run --batching`); the manifest records the mode that
/// ran (`static` or `continuous`); `auto` there means the manifest did not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    #[default]
    Auto,
    Static,
    Continuous,
}

/// The run manifest written beside the answers. A manifest missing fields (hand-made, or
/// from an older version) reads them as their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunManifest {
    pub tool: String,
    pub tool_version: String,
    pub engine: String,
    pub subset: String,
    pub model_dir: String,
    pub model_manifest_sha256: String,
    pub dtype: String,
    /// The decoder graph's flavour (`plain` or `fused`); empty in older manifests.
    pub decoder: String,
    pub ort_library: String,
    pub execution_providers: BTreeMap<String, String>,
    /// Graphs on TensorRT: engine cache folder, whether the engine was reused, seconds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tensorrt: BTreeMap<String, TrtBuild>,
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
    /// A merged result's shards (`merge`), each as its own manifest recorded it; empty
    /// for a run that was not split.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRun>,
}

/// One graph's TensorRT session creation, as the run manifest records it (made by the
/// engine's `trt::BuildTimer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrtBuild {
    /// Engine cache folder; `None` when there was none (see `cache_off`).
    pub cache_dir: Option<PathBuf>,
    /// File-name prefix of this graph's engine in that folder.
    pub engine_prefix: Option<String>,
    /// An engine for this graph and profile was in the folder before the session was made.
    pub cache_hit: bool,
    /// Seconds to create the session: the engine build on a miss (the provider builds at
    /// session creation when every dynamic input has a profile), loading it on a hit.
    pub build_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_off: Option<String>,
}

impl TrtBuild {
    /// The stderr line a run prints for this graph.
    pub fn describe(&self, graph: GraphKind) -> String {
        match (&self.cache_dir, self.cache_hit) {
            (Some(dir), true) => format!(
                "tensorrt: {graph}: engine reused from {} ({:.1} s)",
                dir.display(),
                self.build_s
            ),
            (Some(dir), false) => format!(
                "tensorrt: {graph}: engine built in {:.1} s, cached in {}",
                self.build_s,
                dir.display()
            ),
            (None, _) => format!(
                "tensorrt: {graph}: engine built in {:.1} s, not cached ({})",
                self.build_s,
                self.cache_off.as_deref().unwrap_or("no cache folder")
            ),
        }
    }
}

/// One shard of a merged result: where and when it ran, on which providers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardRun {
    /// `K/N`.
    pub shard: String,
    pub model_dir: String,
    pub ort_library: String,
    pub execution_providers: BTreeMap<String, String>,
    pub started_at: String,
    pub finished_at: String,
    pub n_samples: usize,
    pub total_s: f64,
}

impl RunManifest {
    /// The format's name in read errors.
    pub const WHAT: &'static str = "a run manifest";

    pub fn read(path: &std::path::Path) -> Result<RunManifest, super::ReadError> {
        super::read(path, Self::WHAT)
    }
}

/// A sample with no answer and why (run manifest, score report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleError {
    pub image: String,
    pub error: String,
}

/// The reference's ASR over the answers of the run's subset. `asr` is `null` when there
/// is no answer to take a share of (`n` is 0: an empty subset, or every sample failed),
/// where the reference prints `nan`; every reader takes that as "no rate".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AsrSummary {
    pub successes: usize,
    pub n: usize,
    pub asr: Option<f64>,
}

/// Seconds per stage of this invocation (resumed samples cost nothing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageTimings {
    pub session_load_s: f64,
    /// Wall time the decoder waited for images: preprocessing (rayon threads) and the
    /// vision tower (inline, or a batch ahead on its own thread) before it.
    pub preprocess_wait_s: f64,
    /// Total preprocessing work on the rayon threads.
    pub preprocess_s: f64,
    /// Vision tower + projector time (on its own thread when it runs ahead).
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

/// What must match for two runs' answers to be mixed in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub model_manifest_sha256: String,
    pub subset: String,
    pub max_new_tokens: usize,
    pub dataset_sha256: String,
}

/// The journal's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalHeader {
    /// Format version: 1.
    pub journal: u32,
    pub fingerprint: Fingerprint,
    pub created_at: String,
}

/// One finished (`answer`) or failed (`error`) sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub new_tokens: usize,
    #[serde(default)]
    pub ended_with_eos: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_margin: Option<f32>,
    /// sha256 of the image file the answer was made from: a resumed run answers again
    /// when the file changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_manifest_reads_with_defaults() {
        let m: RunManifest = serde_json::from_str(
            r#"{"engine": "e", "n_errors": 2, "batching": "continuous",
                "timings": {"decode_s": 1.5}}"#,
        )
        .unwrap();
        assert_eq!((m.engine.as_str(), m.n_errors), ("e", 2));
        assert_eq!(m.batching, Batching::Continuous);
        assert_eq!(m.timings.decode_s, 1.5);
        assert_eq!((m.dtype.as_str(), m.n_samples, m.asr), ("", 0, None));
    }
}
