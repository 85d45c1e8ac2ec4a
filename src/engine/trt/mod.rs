//! TensorRT execution provider settings: optimisation profiles from the manifest and the
//! run's limits, an engine cache folder keyed by model, GPU and TensorRT version, and the
//! GPU / TensorRT identity that key needs, probed at run time.
//!
//! Contract:
//! - [`profile`] gives, for one graph, the min/opt/max shapes of every graph input in the
//!   TensorRT provider's `trt_profile_{min,opt,max}_shapes` format
//!   (`name:d0xd1x..,name2:..`), every dimension taken from the manifest or [`Limits`].
//!   An input it does not know (a decoder flavour with extra inputs) is an error naming it.
//!   At each of the three points the decoder's shapes are consistent (`attention_mask`
//!   length = past + new tokens), because TensorRT checks the graph's shape constraints at
//!   min, opt and max, not only at run time.
//! - [`cache_dir`] names a folder `{model_sha256[..12]}-{gpu-slug}-sm{major}{minor}-trt{version}`
//!   under the base folder: another model, GPU or TensorRT version gets another folder, so
//!   an engine is never reused where it was not built. Inside, each graph's engine files
//!   start with [`engine_prefix`] (graph name + a hash of its profile), so runs with other
//!   limits (batch size, answer length) keep their own engines instead of rebuilding one.
//! - The probes ([`tensorrt_version`], [`super::cuda::gpu_identity`]) open `libnvinfer.so.10`
//!   (from the folder [`libs::lib_dir`] finds),
//!   `libcudart.so.13` and `libnvidia-ml.so.1` with `libloading` and never panic: a missing
//!   library, symbol or device is an `Err` naming it, and [`CachePlan::probe`] then runs
//!   TensorRT without an engine cache (recording why) instead of failing; a CPU run never
//!   gets here with an error. The libraries stay loaded for the life of the process
//!   (unloading the CUDA runtime after use can crash at exit).
//!
//! Not tested against TensorRT here (no GPU on the development machine): the profile
//! strings, the folder naming and the probe plumbing (against a stub library) are.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::ep::ArbitrarilyConfigurableExecutionProvider;

use vlguard_export::manifest::{Flavour, GraphKind, Manifest, RowInputs};

use super::cuda::{gpu_identity, GpuIdentity};
use super::dylib::{Lib, ProbeError};
use crate::formats::TrtBuild;
use crate::prompt::PromptShape;

/// Bound on one prompt's text tokens (template + question, image placeholder included):
/// VLGuard's longest question is 162 characters and the `llava_v1` template with it comes
/// to about 110 Llama tokens, so 256 leaves more than 2x room while keeping the decoder's
/// maximum shapes (and TensorRT's activation memory for them) small. A longer prompt falls
/// outside the profile: expect TensorRT to fail that batch (not checked on TensorRT here).
pub const MAX_TEXT_TOKENS: usize = 256;

/// Text tokens of a typical prompt, for the decoder's `opt` point (~40 template + question).
const TYPICAL_TEXT_TOKENS: usize = 64;

/// What one run may feed the graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Rows per graph call (`--batch-size`).
    pub max_batch: usize,
    /// Text tokens of one prompt, the image placeholder included.
    pub max_text_tokens: usize,
    /// Longest answer (`--max-new-tokens`).
    pub max_new_tokens: usize,
}

impl Limits {
    /// A run's limits with the [`MAX_TEXT_TOKENS`] prompt bound.
    pub fn new(max_batch: usize, max_new_tokens: usize) -> Limits {
        Limits {
            max_batch,
            max_text_tokens: MAX_TEXT_TOKENS,
            max_new_tokens,
        }
    }
}

/// One optimisation profile in the TensorRT provider's string format.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Profile {
    pub min: String,
    pub opt: String,
    pub max: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("graph {graph}: input `{input}` has no TensorRT optimisation profile (this flavour of the graph is not supported on TensorRT)")]
    UnknownInput { graph: &'static str, input: String },
    #[error("TensorRT limits: {0} must be at least 1")]
    Limits(&'static str),
}

/// Shape of one input at the min, opt and max points.
type Points = [Vec<usize>; 3];

/// The min/opt/max shapes of every input of `graph`, in manifest order.
///
/// Batch: 1 / `max_batch` / `max_batch`. Decoder, with P the longest prompt (image tokens +
/// text tokens - the placeholder) and T = min(P + max_new_tokens, max_position_embeddings):
/// - min: 1 new token, no past (prefill's zero-length cache: TensorRT >= 8 takes a 0 in a
///   profile; 7.0 did not, NVIDIA/TensorRT#337; 0-length past in `minShapes` builds in
///   NVIDIA/TensorRT#2928);
/// - opt: 1 new token after a typical prompt and half an answer (decode steps dominate);
/// - max: P new tokens, T past, mask P + T: prefill (P new, 0 past) and the last steps
///   (1 new, T - 1 past) both fall inside, and the point itself satisfies
///   mask = past + new as the graph requires.
pub fn profile(
    manifest: &Manifest,
    graph: GraphKind,
    limits: &Limits,
) -> Result<Profile, ProfileError> {
    for (value, name) in [
        (limits.max_batch, "max_batch"),
        (limits.max_text_tokens, "max_text_tokens"),
        (limits.max_new_tokens, "max_new_tokens"),
    ] {
        if value == 0 {
            return Err(ProfileError::Limits(name));
        }
    }
    let b = limits.max_batch;
    // Inputs whose only dynamic dimension is the batch.
    let batched = |make: &dyn Fn(usize) -> Vec<usize>| -> Points { [make(1), make(b), make(b)] };
    let v = &manifest.vision;
    let d = &manifest.decoder;
    let max_pos = d.max_position_embeddings;
    let longest = PromptShape {
        ids: limits.max_text_tokens,
        image_tokens: v.num_tokens,
    };
    let prompt_max = longest.positions().min(max_pos);
    let past_max = longest.with_answer(limits.max_new_tokens).min(max_pos);
    let past_opt = (v.num_tokens + TYPICAL_TEXT_TOKENS + limits.max_new_tokens / 2).min(past_max);
    // Decoder points: (rows, new tokens, past) at min, opt, max.
    let seq = [(1, 1, 0), (b, 1, past_opt), (b, prompt_max, past_max)];
    let dec = |f: &dyn Fn(usize, usize, usize) -> Vec<usize>| -> Points {
        seq.map(|(n, s, p)| f(n, s, p))
    };

    let g = &manifest.graphs;
    let inputs = g.inputs(graph);
    let mut points: Vec<(&str, Points)> = Vec::with_capacity(inputs.len());
    for name in inputs {
        let shape = match graph {
            GraphKind::Vision if name == g.vision.pixel_values => {
                // Channels: what preprocessing produces (one mean per channel).
                let ch = manifest.preprocess.image_mean.len();
                let s = v.image_size;
                Some(batched(&|n| vec![n, ch, s, s]))
            }
            GraphKind::Projector if name == g.projector.image_features => {
                let (t, h) = (v.num_tokens, manifest.projector.input_size);
                Some(batched(&|n| vec![n, t, h]))
            }
            GraphKind::Embed if name == g.embed.input_ids => {
                // Prefill embeds one prompt's text, steps embed one token per row.
                Some([vec![1, 1], vec![b, 1], vec![b, limits.max_text_tokens]])
            }
            GraphKind::Decoder => decoder_input(manifest, name).map(|kind| match kind {
                DecoderInput::Embeds => dec(&|n, s, _| vec![n, s, d.hidden_size]),
                DecoderInput::Mask => dec(&|n, s, p| vec![n, p + s]),
                DecoderInput::Positions => dec(&|n, s, _| vec![n, s]),
                DecoderInput::Past => dec(&|n, _, p| vec![n, d.num_kv_heads, p, d.head_dim]),
            }),
            _ => None,
        };
        let shape = shape.ok_or_else(|| ProfileError::UnknownInput {
            graph: graph.name(),
            input: name.to_string(),
        })?;
        points.push((name, shape));
    }
    let render = |i: usize| -> String {
        points
            .iter()
            .map(|(name, p)| {
                let dims: Vec<String> = p[i].iter().map(usize::to_string).collect();
                format!("{name}:{}", dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    Ok(Profile {
        min: render(0),
        opt: render(1),
        max: render(2),
    })
}

enum DecoderInput {
    Embeds,
    Mask,
    Positions,
    Past,
}

/// The role of decoder input `name`; `None` for the fused flavour's row inputs, which
/// TensorRT cannot run.
fn decoder_input(manifest: &Manifest, name: &str) -> Option<DecoderInput> {
    let d = &manifest.graphs.decoder;
    let plain = match &d.rows {
        RowInputs::Plain(rows) => Some(rows),
        RowInputs::Fused(_) => None,
    };
    if name == d.inputs_embeds {
        Some(DecoderInput::Embeds)
    } else if plain.is_some_and(|rows| name == rows.attention_mask) {
        Some(DecoderInput::Mask)
    } else if plain.is_some_and(|rows| name == rows.position_ids) {
        Some(DecoderInput::Positions)
    } else {
        d.past()
            .any(|past| past == name)
            .then_some(DecoderInput::Past)
    }
}

/// File-name prefix of one graph's engine files: the graph name and 8 hex digits of its
/// profile, so that other limits never overwrite (or wrongly reuse) this engine.
pub fn engine_prefix(graph: GraphKind, profile: &Profile) -> String {
    let text = format!("{}\n{}\n{}", profile.min, profile.opt, profile.max);
    let hash = crate::util::sha256_hex(text.as_bytes());
    format!("{}-{}", graph.name(), &hash[..8])
}

/// Lowercase ASCII letters and digits, runs of anything else as one `-`, at most 40 bytes.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(40);
    let out = out.trim_end_matches('-').to_string();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

/// The engine cache folder for this model, GPU and TensorRT version under `base`:
/// `{model_sha256[..12]}-{gpu-name-slug}-sm{major}{minor}-trt{version}`.
pub fn cache_dir(base: &Path, model_sha256: &str, gpu: &GpuIdentity, trt_version: &str) -> PathBuf {
    let model: String = slug(model_sha256).chars().take(12).collect();
    let version: String = trt_version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    base.join(format!(
        "{model}-{}-sm{}{}-trt{version}",
        slug(&gpu.name),
        gpu.compute_major,
        gpu.compute_minor
    ))
}

/// Whether `dir` holds an engine of the graph with this prefix (ONNX Runtime names them
/// `{prefix}_{graph hash}_{node id}[_fp16]_sm{cc}.engine`).
pub fn engine_present(dir: &Path, prefix: &str) -> bool {
    let start = format!("{prefix}_");
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&start) && name.ends_with(".engine")
        })
    })
}

/// Where this process's TensorRT engines go, decided once per engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePlan {
    /// The keyed folder (created); `None`: no engine cache, see `off`.
    pub dir: Option<PathBuf>,
    /// Why there is no engine cache.
    pub off: Option<String>,
}

impl CachePlan {
    /// Probes TensorRT and the GPU, then [`CachePlan::new`].
    pub fn probe(
        base: Option<&Path>,
        model_sha256: &str,
        ort_lib: &Path,
        lib_dir: Option<&Path>,
        device_id: i32,
    ) -> CachePlan {
        if base.is_none() {
            return CachePlan::new(None, model_sha256, Err(None), Err(None));
        }
        let trt = tensorrt_version(lib_dir).map_err(Some);
        // Without TensorRT the provider cannot start: no need to wake the GPU.
        let gpu = match trt {
            Ok(_) => gpu_identity(ort_lib, device_id).map_err(Some),
            Err(_) => Err(None),
        };
        CachePlan::new(base, model_sha256, gpu, trt)
    }

    /// The folder for these probe results, created; any failure turns the cache off with
    /// its reason (`Err(None)`: not probed).
    pub fn new(
        base: Option<&Path>,
        model_sha256: &str,
        gpu: Result<GpuIdentity, Option<ProbeError>>,
        trt_version: Result<String, Option<ProbeError>>,
    ) -> CachePlan {
        let off = |reason: String| CachePlan {
            dir: None,
            off: Some(reason),
        };
        let Some(base) = base else {
            return off("no engine cache folder given".into());
        };
        let reason = |e: Option<ProbeError>, what: &str| match e {
            Some(e) => format!("{what} unknown ({e})"),
            None => format!("{what} not probed"),
        };
        let trt_version = match trt_version {
            Ok(v) => v,
            Err(e) => return off(reason(e, "TensorRT version")),
        };
        let gpu = match gpu {
            Ok(g) => g,
            Err(e) => return off(reason(e, "GPU")),
        };
        let dir = cache_dir(base, model_sha256, &gpu, &trt_version);
        match std::fs::create_dir_all(&dir) {
            Ok(()) => CachePlan {
                // ONNX Runtime resolves a relative engine path against the model's folder
                // in some versions: hand it an absolute one.
                dir: Some(std::path::absolute(&dir).unwrap_or(dir)),
                off: None,
            },
            Err(e) => off(format!("cannot create {}: {e}", dir.display())),
        }
    }
}

/// Times one session creation: made before it, finished when the provider is TensorRT
/// (into the run manifest's record of it).
pub struct BuildTimer {
    cache_dir: Option<PathBuf>,
    prefix: Option<String>,
    cache_hit: bool,
    cache_off: Option<String>,
    started: Instant,
}

impl BuildTimer {
    pub fn start(plan: &CachePlan, manifest: &Manifest, kind: GraphKind, limits: &Limits) -> Self {
        let prefix = profile(manifest, kind, limits)
            .ok()
            .map(|p| engine_prefix(kind, &p));
        let cache_hit = match (&plan.dir, &prefix) {
            (Some(dir), Some(prefix)) => engine_present(dir, prefix),
            _ => false,
        };
        BuildTimer {
            cache_dir: plan.dir.clone(),
            prefix,
            cache_hit,
            cache_off: plan.off.clone(),
            started: Instant::now(),
        }
    }

    pub fn finish(self) -> TrtBuild {
        TrtBuild {
            cache_dir: self.cache_dir,
            engine_prefix: self.prefix,
            cache_hit: self.cache_hit,
            build_s: self.started.elapsed().as_secs_f64(),
            cache_off: self.cache_off,
        }
    }
}

/// Why TensorRT does not take fp32 models: its builder turns TF32 on for fp32 layers and
/// ONNX Runtime's TensorRT provider has no option to turn it off (it only adds the
/// FP16/BF16/INT8 flags), while TF32 matmuls flip greedy near-ties (25/30 golden answers
/// on CUDA with TF32, 30/30 without).
pub const FP32_REFUSED: &str = "TensorRT runs fp32 graphs with TF32 matmuls (its builder's \
    default, which ONNX Runtime's TensorRT provider cannot turn off), and TF32 changes greedy \
    answers: use --ep cuda for an fp32 model (TF32 off), or export with --dtype fp16 for TensorRT";

/// Why TensorRT is not used for a graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "the fused decoder uses ONNX Runtime contrib operators that TensorRT cannot run: \
         use --ep cuda for it, or export with --decoder plain for TensorRT"
    )]
    FusedDecoder,
    #[error("{FP32_REFUSED}")]
    Fp32,
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

/// The TensorRT provider for graph `kind`, stored at `path`, for fp16 models only
/// ([`FP32_REFUSED`]): fp16 on with ONNX Runtime's layer-norm fp32 fallback, this graph's
/// profile, initializers handed over in memory (`trt_load_user_initializer`: a 7B decoder
/// over 2 GB otherwise meets protobuf's size limit), and the engine and timing caches in
/// `cache_dir` when given.
pub fn execution_provider(
    manifest: &Manifest,
    kind: GraphKind,
    path: &Path,
    device_id: i32,
    limits: &Limits,
    cache_dir: Option<&Path>,
) -> Result<ort::ep::ExecutionProviderDispatch, Refused> {
    if kind == GraphKind::Decoder && manifest.decoder.flavour == Flavour::Fused {
        return Err(Refused::FusedDecoder);
    }
    if manifest.dtype != vlguard_export::manifest::Dtype::Fp16 {
        return Err(Refused::Fp32);
    }
    warn_unparsable(path);
    let profile = profile(manifest, kind, limits)?;
    let mut trt = ort::ep::TensorRT::default()
        .with_device_id(device_id)
        .with_fp16(true)
        .with_layer_norm_fp32_fallback(true)
        .with_arbitrary_config("trt_load_user_initializer", "true")
        .with_profile_min_shapes(&profile.min)
        .with_profile_opt_shapes(&profile.opt)
        .with_profile_max_shapes(&profile.max);
    if let Some(dir) = cache_dir {
        trt = trt
            .with_engine_cache(true)
            .with_engine_cache_path(dir.display())
            .with_engine_cache_prefix(engine_prefix(kind, &profile))
            .with_timing_cache(true)
            .with_timing_cache_path(dir.display());
    }
    Ok(trt.build().error_on_failure())
}

/// Says on stderr which nodes of the graph at `path` TensorRT's ONNX parser will not take
/// ([`vlguard_export::tensorrt`]): ONNX Runtime runs them outside the TensorRT engine, so
/// the graph still runs, slower. Exported plain graphs have none (tested).
fn warn_unparsable(path: &Path) {
    // An unreadable graph fails at session creation, with its own message.
    let Ok(found) = vlguard_export::tensorrt::check_file(path) else {
        return;
    };
    if let Some(first) = found.first() {
        eprintln!(
            "warning: {}: {} node(s) TensorRT's ONNX parser will not take, first {first}; \
             ONNX Runtime runs them outside the TensorRT engine",
            path.display(),
            found.len()
        );
    }
}

/// `getInferLibVersion()`'s integer as `major.minor.patch`: TensorRT 10 encodes
/// (MAJOR * 100 + MINOR) * 100 + PATCH, TensorRT 8 MAJOR * 1000 + MINOR * 100 + PATCH
/// (NvInferRuntimeBase.h of each).
pub fn decode_trt_version(value: i32) -> Option<String> {
    match value {
        v if v >= 100_000 => Some(format!("{}.{}.{}", v / 10_000, v / 100 % 100, v % 100)),
        v if v >= 1_000 => Some(format!("{}.{}.{}", v / 1_000, v / 100 % 10, v % 100)),
        _ => None,
    }
}

/// The TensorRT version of `libnvinfer.so.10` in `lib_dir`, or as the system loader finds
/// it (the library the provider will load too).
pub fn tensorrt_version(lib_dir: Option<&Path>) -> Result<String, ProbeError> {
    tensorrt_version_from(&libs::nvinfer_path(lib_dir))
}

pub fn tensorrt_version_from(lib: &Path) -> Result<String, ProbeError> {
    tensorrt_version_of(&Lib::open(lib)?)
}

/// The version an opened `libnvinfer` reports.
pub fn tensorrt_version_of(lib: &Lib) -> Result<String, ProbeError> {
    let get_version = lib.get::<unsafe extern "C" fn() -> i32>("getInferLibVersion")?;
    // SAFETY: `int32_t getInferLibVersion() noexcept`, no arguments, no state.
    let value = unsafe { get_version() };
    decode_trt_version(value).ok_or(ProbeError::Version {
        function: "getInferLibVersion",
        value,
    })
}

pub mod libs;

#[cfg(test)]
mod tests;
