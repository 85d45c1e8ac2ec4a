//! Parsing the checkpoint configs into the dimensions the graph builders need.
//!
//! - LLaVA `config.json` (`model_type` `llava` or `llava_llama`, the original LLaVA layout):
//!   Llama dimensions with Hugging Face `LlamaConfig` defaults for absent fields, and the
//!   `mm_*` fields. `mm_projector_type` must be `mlp2x_gelu` or `linear` (LLaVA's own
//!   default when absent is `linear`); anything else is an error naming it.
//! - llava-hf `config.json` (`LlavaForConditionalGeneration`: `model_type: llava` with
//!   `text_config` / `vision_config`): Hub configs are sparse, so absent fields take the
//!   defaults transformers applies: `LlamaConfig`'s for `text_config`, `CLIPVisionConfig`'s
//!   for `vision_config`, and CLIP-L/14-336 for a missing `vision_config` (as `LlavaConfig`
//!   builds it); `vision_feature_layer` -2, `vision_feature_select_strategy` `default`,
//!   `projector_hidden_act` `gelu`, projector biases on.
//! - CLIP `config.json`: a full CLIP (`model_type: clip`, the tower in `vision_config`) or a
//!   vision-only config; absent fields take Hugging Face `CLIPVisionConfig` defaults
//!   (hidden 768, intermediate 3072, 12 layers, 12 heads, image 224, patch 32, 3 channels,
//!   quick_gelu, layer_norm_eps 1e-5).
//! - `preprocessor_config.json` of the tower when present, else `PreprocessSpec::default()`.
//!
//! Every error names the file and the key.
//!
//! Files: this one (the dimension structs, the error, JSON reading), `llava` (both LLaVA
//! layouts' configs and the Llama fields), `clip` (the tower and its preprocessor), and
//! `fields` (typed access to a JSON object, errors naming file and key).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

mod clip;
mod fields;
mod llava;

pub use clip::{parse_clip, parse_preprocessor};
pub use llava::{is_llava_hf, parse_llava, parse_llava_hf, vision_tower, VisionTower};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: `{key}` is {found}, expected {expected}")]
    Invalid {
        path: PathBuf,
        key: String,
        found: String,
        expected: String,
    },
    #[error("{path}: missing `{key}`")]
    Missing { path: PathBuf, key: String },
    #[error("{path}: unsupported mm_projector_type `{kind}` (supported: mlp2x_gelu, linear)")]
    UnsupportedProjector { path: PathBuf, kind: String },
}

/// Projector kinds found in LLaVA-1.5 checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorKind {
    /// Linear -> GELU (erf) -> Linear, keys `model.mm_projector.{0,2}.*`.
    Mlp2xGelu,
    /// One Linear, keys `model.mm_projector.*`.
    Linear,
}

impl ProjectorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectorKind::Mlp2xGelu => "mlp2x_gelu",
            ProjectorKind::Linear => "linear",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
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
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub llama: LlamaConfig,
    pub projector: ProjectorKind,
    pub mm_hidden_size: usize,
    pub select_layer: i64,
    /// `patch` (drop CLS, LLaVA-1.5) or `cls_patch` (keep it).
    pub select_feature_keeps_cls: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_act: String,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// Patches per side: 336 / 14 = 24.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Positions incl. CLS: 24 * 24 + 1 = 577.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

pub fn read_json(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    match value {
        Value::Object(m) => Ok(m),
        other => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "(top level)".into(),
            found: kind_of(&other).into(),
            expected: "an object".into(),
        }),
    }
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `text` written to `dir/name`: a config file for the readers' unit tests.
#[cfg(test)]
fn test_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
