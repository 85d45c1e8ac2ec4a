//! The model directory's `manifest.json`: the contract between the exporter and the runtime.
//!
//! Everything the runtime needs to know about a model lives here: dimensions, graph files
//! and their tensor names, the tokenizer and its special ids, the preprocessing constants
//! and where the weights came from. The runtime never hard-codes a dimension or a tensor
//! name; it reads them from this struct and checks each ONNX session against them.
//! Graph tensors are named by role ([`graphs`]); version 1 manifests, which listed them
//! by position, are converted on load ([`v1`]).

mod graphs;
mod v1;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use graphs::{
    DecoderGraph, EmbedGraph, FusedRows, Graphs, LayerCache, PlainRows, ProjectorGraph, RowInputs,
    VisionGraph,
};

/// Bumped whenever a field changes meaning; the runtime reads this version and version 1
/// (converted on load), and refuses others. Version 2: graph tensors named by role.
pub const FORMAT_VERSION: u32 = 2;
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    Fp16,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Fp16 => "fp16",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" | "float32" => Ok(Dtype::Fp32),
            "fp16" | "float16" => Ok(Dtype::Fp16),
            other => Err(format!("unknown dtype `{other}` (expected fp32 or fp16)")),
        }
    }
}

/// How the decoder graph is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// Standard ONNX ops only (any provider, TensorRT included): the cache grows by a
    /// Concat per step, padding is on the left with an attention mask.
    #[default]
    Plain,
    /// ONNX Runtime contrib ops (GroupQueryAttention with rotary, SimplifiedLayerNormalization,
    /// SkipSimplifiedLayerNormalization) for the CPU and CUDA providers: a preallocated
    /// cache updated in place (past and present bound to one buffer), prompts padded on
    /// the right, per-row lengths in `seqlens_k`.
    Fused,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Plain => "plain",
            Flavour::Fused => "fused",
        }
    }
}

impl std::str::FromStr for Flavour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plain" => Ok(Flavour::Plain),
            "fused" => Ok(Flavour::Fused),
            other => Err(format!(
                "unknown decoder flavour `{other}` (expected plain or fused)"
            )),
        }
    }
}

/// `G` is the `graphs` block's layout: [`Graphs`] (by role, the current format) unless a
/// version 1 file is being read (`v1::Graphs`, the ordered lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest<G = Graphs> {
    pub format_version: u32,
    pub exporter_version: String,
    /// Storage and compute dtype of the graphs' weights and activations (and of
    /// `image_features`, `image_embeds`, `inputs_embeds` and the KV cache). Whatever it is,
    /// `pixel_values` is fp32 (cast inside the vision graph) and `logits` is fp32; with fp16,
    /// LayerNorm, RMSNorm, softmax, GELU and RoPE angles are computed in fp32.
    pub dtype: Dtype,
    pub vision: VisionSpec,
    pub projector: ProjectorSpec,
    pub decoder: DecoderSpec,
    pub preprocess: PreprocessSpec,
    pub tokenizer: TokenizerSpec,
    pub graphs: G,
    /// sha256 of every file the export wrote beside the manifest (graphs, external data,
    /// tokenizer), by file name; a run checks them at load. Empty in manifests written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    pub source: SourceSpec,
}

/// CLIP vision tower as the reference uses it (layers after `select_layer` not emitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionSpec {
    pub image_size: usize,
    pub patch_size: usize,
    /// Patch tokens per image after the CLS token is dropped: (336/14)^2 = 576.
    pub num_tokens: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    /// Layers in the checkpoint.
    pub num_layers: usize,
    /// `mm_vision_select_layer` as in the config (-2 for LLaVA-1.5).
    pub select_layer: i64,
    /// Encoder layers actually run by the graph.
    pub layers_emitted: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectorSpec {
    /// `mm_projector_type`; only `mlp2x_gelu` and `linear` exist in LLaVA-1.5 checkpoints.
    pub kind: String,
    pub input_size: usize,
    pub output_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderSpec {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Graph flavour; manifests written before flavours existed are `plain`.
    #[serde(default)]
    pub flavour: Flavour,
}

/// `CLIPImageProcessor` constants, from the tower's `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    /// Resize so the short side equals this.
    pub shortest_edge: usize,
    /// Center crop to this square.
    pub crop_size: usize,
    pub rescale_factor: f64,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// PIL resample filter id (3 = BICUBIC).
    pub resample: u32,
}

impl Default for PreprocessSpec {
    /// Hugging Face's `openai/clip-vit-large-patch14-336` preprocessor config.
    // The constants exactly as published (they round to the same f32 either way).
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        PreprocessSpec {
            shortest_edge: 336,
            crop_size: 336,
            rescale_factor: 1.0 / 255.0,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
            resample: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// File in the model directory, `tokenizer.json` (tokenizers crate format).
    pub file: String,
    pub bos_id: u32,
    pub eos_id: u32,
    pub unk_id: u32,
    /// The placeholder id `tokenizer_image_token` puts in the image slot (-200).
    pub image_token_id: i64,
    /// Conversation template name; only `llava_v1` today.
    pub template: String,
}

/// The four graphs of a model directory: how every part of the runtime names a graph
/// (in messages, the run manifest's provider map, TensorRT engine names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphKind {
    Vision,
    Projector,
    Embed,
    Decoder,
}

impl GraphKind {
    pub const ALL: [GraphKind; 4] = [
        GraphKind::Vision,
        GraphKind::Projector,
        GraphKind::Embed,
        GraphKind::Decoder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Vision => "vision",
            GraphKind::Projector => "projector",
            GraphKind::Embed => "embed",
            GraphKind::Decoder => "decoder",
        }
    }
}

impl std::fmt::Display for GraphKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSpec {
    /// The checkpoint folder as given on the command line.
    pub checkpoint: String,
    pub vision_tower: String,
    /// sha256 of every file read, keyed `checkpoint/NAME` or `vision_tower/NAME`.
    pub files: BTreeMap<String, String>,
}

/// The tensor names the exporter's graph builders give (and [`Graphs::exported`] records);
/// the runtime reads names from the manifest, never from here.
pub mod names {
    pub const PIXEL_VALUES: &str = "pixel_values";
    /// The vision graph's output and the projector's input.
    pub const IMAGE_FEATURES: &str = "image_features";
    pub const PROJECTOR_OUT: &str = "image_embeds";
    pub const INPUT_IDS: &str = "input_ids";
    pub const INPUTS_EMBEDS: &str = "inputs_embeds";
    pub const ATTENTION_MASK: &str = "attention_mask";
    pub const POSITION_IDS: &str = "position_ids";
    /// Fused decoder: per row, the tokens in the cache after this call, minus one (int32).
    pub const SEQLENS_K: &str = "seqlens_k";
    /// Fused decoder: the largest `seqlens_k + 1` of the batch (int32 scalar).
    pub const TOTAL_SEQUENCE_LENGTH: &str = "total_sequence_length";
    pub const LOGITS: &str = "logits";

    pub fn past_key(layer: usize) -> String {
        format!("past_key_values.{layer}.key")
    }
    pub fn past_value(layer: usize) -> String {
        format!("past_key_values.{layer}.value")
    }
    pub fn present_key(layer: usize) -> String {
        format!("present.{layer}.key")
    }
    pub fn present_value(layer: usize) -> String {
        format!("present.{layer}.value")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid model manifest: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}, this build reads versions 1 and {expected}: re-export the model with `vlguard-ort export`")]
    Version {
        path: String,
        found: u32,
        expected: u32,
    },
    #[error("{path} is a version 1 manifest whose tensor lists cannot be read by role ({reason}): re-export the model with `vlguard-ort export`")]
    OldLayout { path: String, reason: String },
}

impl Manifest {
    /// Reads `DIR/manifest.json` by its format version (a version 1 file converted to
    /// the current layout).
    pub fn load(dir: &Path) -> Result<(Manifest, Vec<u8>), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = crate::files::read_regular(&path).map_err(|source| ManifestError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let parse = |source| ManifestError::Parse {
            path: path.display().to_string(),
            source,
        };
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(&bytes).map_err(parse)?;
        let manifest = match version.format_version {
            FORMAT_VERSION => serde_json::from_slice::<Manifest>(&bytes).map_err(parse)?,
            1 => serde_json::from_slice::<Manifest<v1::Graphs>>(&bytes)
                .map_err(parse)?
                .into_roles()
                .map_err(|reason| ManifestError::OldLayout {
                    path: path.display().to_string(),
                    reason,
                })?,
            found => {
                return Err(ManifestError::Version {
                    path: path.display().to_string(),
                    found,
                    expected: FORMAT_VERSION,
                })
            }
        };
        Ok((manifest, bytes))
    }
}
