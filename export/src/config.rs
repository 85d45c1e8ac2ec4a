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

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::manifest::PreprocessSpec;

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

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to one JSON object with errors naming the file and key.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl Fields<'_> {
    fn invalid(&self, key: &str, v: &Value, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: format!("{}{key}", self.prefix),
            found: v.to_string(),
            expected: expected.into(),
        }
    }
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize_or(&self, key: &str, default: Option<usize>) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => default.ok_or_else(|| ConfigError::Missing {
                path: self.path.to_path_buf(),
                key: format!("{}{key}", self.prefix),
            }),
            Some(v) => v
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.invalid(key, v, "a positive integer")),
        }
    }
    fn i64_req(&self, key: &str) -> Result<i64, ConfigError> {
        match self.get(key) {
            None => Err(ConfigError::Missing {
                path: self.path.to_path_buf(),
                key: format!("{}{key}", self.prefix),
            }),
            Some(v) => v.as_i64().ok_or_else(|| self.invalid(key, v, "an integer")),
        }
    }
    fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| self.invalid(key, v, "a positive number")),
        }
    }
    fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.invalid(key, v, "a string")),
        }
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.invalid(key, v, "true or false")),
        }
    }
    fn u32_opt(&self, key: &str) -> Option<u32> {
        self.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    }
    /// A field that must equal `expected` (or be absent when `absent_ok`).
    fn require_str(&self, key: &str, allowed: &[&str], absent_ok: bool) -> Result<(), ConfigError> {
        match self.get(key) {
            None if absent_ok => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            other => Err(ConfigError::Invalid {
                path: self.path.to_path_buf(),
                key: format!("{}{key}", self.prefix),
                found: other.map_or("absent".into(), Value::to_string),
                expected: format!("one of {allowed:?}"),
            }),
        }
    }
}

/// Parses a LLaVA-1.5 `config.json`.
pub fn parse_llava(path: &Path) -> Result<LlavaConfig, ConfigError> {
    let map = read_json(path)?;
    let f = Fields {
        path,
        map: &map,
        prefix: "",
    };
    // llava-hf's layout also says `llava` but nests the decoder in `text_config`.
    if is_llava_hf(&map) {
        return Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "text_config".into(),
            found: "present (llava-hf layout)".into(),
            expected: "the original LLaVA layout (liuhaotian/llava-v1.5-*); llava-hf configs go through parse_llava_hf".into(),
        });
    }
    f.require_str("model_type", &["llava", "llava_llama"], false)?;
    if f.bool_or("mm_use_im_start_end", false)? {
        return Err(f.invalid("mm_use_im_start_end", &Value::Bool(true), "false"));
    }
    f.require_str("mm_patch_merge_type", &["flat"], true)?;

    let llama = llama_fields(&f)?;
    let projector = match f.str_or("mm_projector_type", "linear")?.as_str() {
        "mlp2x_gelu" => ProjectorKind::Mlp2xGelu,
        "linear" => ProjectorKind::Linear,
        other => {
            return Err(ConfigError::UnsupportedProjector {
                path: path.to_path_buf(),
                kind: other.to_string(),
            })
        }
    };
    let select_feature_keeps_cls = match f.str_or("mm_vision_select_feature", "patch")?.as_str() {
        "patch" => false,
        "cls_patch" => true,
        other => {
            return Err(f.invalid(
                "mm_vision_select_feature",
                &Value::from(other),
                "`patch` or `cls_patch`",
            ))
        }
    };
    Ok(LlavaConfig {
        llama,
        projector,
        mm_hidden_size: f.usize_or("mm_hidden_size", None)?,
        select_layer: f.i64_req("mm_vision_select_layer")?,
        select_feature_keeps_cls,
    })
}

/// The Llama decoder fields of one config object (the top level of an original LLaVA
/// config, or llava-hf's `text_config`), with transformers' `LlamaConfig` defaults for
/// absent fields, and the features the graphs do not build refused by name.
fn llama_fields(f: &Fields) -> Result<LlamaConfig, ConfigError> {
    f.require_str("hidden_act", &["silu"], true)?;
    if let Some(v) = f.get("rope_scaling") {
        return Err(f.invalid("rope_scaling", v, "null (no RoPE scaling)"));
    }
    if f.bool_or("attention_bias", false)? {
        return Err(f.invalid("attention_bias", &Value::Bool(true), "false"));
    }
    if f.bool_or("tie_word_embeddings", false)? {
        return Err(f.invalid("tie_word_embeddings", &Value::Bool(true), "false"));
    }
    // Defaults: transformers LlamaConfig (unchanged from 4.37 on).
    let hidden_size = f.usize_or("hidden_size", Some(4096))?;
    let num_heads = f.usize_or("num_attention_heads", Some(32))?;
    let num_kv_heads = f.usize_or("num_key_value_heads", Some(num_heads))?;
    if hidden_size % num_heads != 0 {
        return Err(f.invalid(
            "num_attention_heads",
            &Value::from(num_heads),
            &format!("a divisor of hidden_size {hidden_size}"),
        ));
    }
    if num_heads % num_kv_heads != 0 {
        return Err(f.invalid(
            "num_key_value_heads",
            &Value::from(num_kv_heads),
            &format!("a divisor of num_attention_heads {num_heads}"),
        ));
    }
    let head_dim = hidden_size / num_heads;
    if head_dim % 2 != 0 {
        return Err(f.invalid(
            "num_attention_heads",
            &Value::from(num_heads),
            "a head size that is even (RoPE rotates halves)",
        ));
    }
    Ok(LlamaConfig {
        hidden_size,
        num_layers: f.usize_or("num_hidden_layers", Some(32))?,
        num_heads,
        num_kv_heads,
        head_dim,
        intermediate_size: f.usize_or("intermediate_size", Some(11008))?,
        vocab_size: f.usize_or("vocab_size", Some(32000))?,
        max_position_embeddings: f.usize_or("max_position_embeddings", Some(2048))?,
        rope_theta: rope_theta(f)?,
        rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
        bos_token_id: f.u32_opt("bos_token_id"),
        eos_token_id: f.u32_opt("eos_token_id"),
    })
}

/// `rope_theta`, or transformers 5's `rope_parameters: {rope_type: default, rope_theta}`;
/// 10000 when neither is there.
fn rope_theta(f: &Fields) -> Result<f64, ConfigError> {
    let params = match f.get("rope_parameters") {
        None => return f.f64_or("rope_theta", 10000.0),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(f.invalid("rope_parameters", v, "an object")),
    };
    let prefix = format!("{}rope_parameters.", f.prefix);
    let p = Fields {
        path: f.path,
        map: params,
        prefix: &prefix,
    };
    p.require_str("rope_type", &["default"], true)?;
    p.f64_or("rope_theta", f.f64_or("rope_theta", 10000.0)?)
}

/// Parses a llava-hf `config.json` (`LlavaForConditionalGeneration`) into the decoder and
/// vision tower configs, with transformers' defaults for what a sparse Hub config omits.
pub fn parse_llava_hf(path: &Path) -> Result<(LlavaConfig, ClipVisionConfig), ConfigError> {
    let map = read_json(path)?;
    let top = Fields {
        path,
        map: &map,
        prefix: "",
    };
    top.require_str("model_type", &["llava"], false)?;
    top.require_str("projector_hidden_act", &["gelu"], true)?;
    top.require_str("vision_feature_select_strategy", &["default", "full"], true)?;
    if !top.bool_or("multimodal_projector_bias", true)? {
        return Err(top.invalid("multimodal_projector_bias", &Value::Bool(false), "true"));
    }
    if top.bool_or("tie_word_embeddings", false)? {
        return Err(top.invalid("tie_word_embeddings", &Value::Bool(true), "false"));
    }
    let select_layer = match top.get("vision_feature_layer") {
        None => -2,
        Some(v) => v.as_i64().ok_or_else(|| {
            top.invalid(
                "vision_feature_layer",
                v,
                "one integer (a list of layers is not LLaVA-1.5)",
            )
        })?,
    };
    let keeps_cls = top.str_or("vision_feature_select_strategy", "default")? == "full";
    let sub = |key: &str| -> Result<Option<&Map<String, Value>>, ConfigError> {
        match top.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(top.invalid(key, v, "an object")),
        }
    };
    let empty = Map::new();
    let text = Fields {
        path,
        map: sub("text_config")?.unwrap_or(&empty),
        prefix: "text_config.",
    };
    text.require_str("model_type", &["llama"], true)?;
    let llama = llama_fields(&text)?;
    let clip = match sub("vision_config")? {
        Some(m) => {
            let f = Fields {
                path,
                map: m,
                prefix: "vision_config.",
            };
            f.require_str("model_type", &["clip_vision_model"], true)?;
            clip_fields(&f)?
        }
        // LlavaConfig's own default tower: CLIP ViT-L/14 at 336 px.
        None => ClipVisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_layers: 24,
            num_heads: 16,
            image_size: 336,
            patch_size: 14,
            num_channels: 3,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        },
    };
    let llava = LlavaConfig {
        llama,
        projector: ProjectorKind::Mlp2xGelu,
        mm_hidden_size: clip.hidden_size,
        select_layer,
        select_feature_keeps_cls: keeps_cls,
    };
    Ok((llava, clip))
}

/// Whether a LLaVA `config.json` is llava-hf's (decoder nested in `text_config`).
pub fn is_llava_hf(map: &Map<String, Value>) -> bool {
    map.contains_key("text_config") || map.contains_key("vision_config")
}

/// Parses a CLIP `config.json` (full CLIP or vision-only).
pub fn parse_clip(path: &Path) -> Result<ClipVisionConfig, ConfigError> {
    let map = read_json(path)?;
    let top = Fields {
        path,
        map: &map,
        prefix: "",
    };
    let model_type = top.str_or("model_type", "clip_vision_model")?;
    let vision_map;
    let f = match model_type.as_str() {
        "clip" => {
            vision_map = match top.get("vision_config") {
                Some(Value::Object(m)) => m.clone(),
                // A full CLIP config with every vision field at its default.
                None => Map::new(),
                Some(v) => return Err(top.invalid("vision_config", v, "an object")),
            };
            Fields {
                path,
                map: &vision_map,
                prefix: "vision_config.",
            }
        }
        "clip_vision_model" => top,
        other => {
            return Err(top.invalid(
                "model_type",
                &Value::from(other),
                "`clip` or `clip_vision_model`",
            ))
        }
    };
    clip_fields(&f)
}

/// The vision fields of one CLIP vision config object, with transformers'
/// `CLIPVisionConfig` defaults for absent fields.
fn clip_fields(f: &Fields) -> Result<ClipVisionConfig, ConfigError> {
    // Defaults: transformers 4.37 CLIPVisionConfig.
    let cfg = ClipVisionConfig {
        hidden_size: f.usize_or("hidden_size", Some(768))?,
        intermediate_size: f.usize_or("intermediate_size", Some(3072))?,
        num_layers: f.usize_or("num_hidden_layers", Some(12))?,
        num_heads: f.usize_or("num_attention_heads", Some(12))?,
        image_size: f.usize_or("image_size", Some(224))?,
        patch_size: f.usize_or("patch_size", Some(32))?,
        num_channels: f.usize_or("num_channels", Some(3))?,
        hidden_act: f.str_or("hidden_act", "quick_gelu")?,
        layer_norm_eps: f.f64_or("layer_norm_eps", 1e-5)?,
    };
    f.require_str("hidden_act", &["quick_gelu", "gelu"], true)?;
    if cfg.hidden_size % cfg.num_heads != 0 {
        return Err(f.invalid(
            "num_attention_heads",
            &Value::from(cfg.num_heads),
            &format!("a divisor of hidden_size {}", cfg.hidden_size),
        ));
    }
    if cfg.image_size % cfg.patch_size != 0 {
        return Err(f.invalid(
            "patch_size",
            &Value::from(cfg.patch_size),
            &format!("a divisor of image_size {}", cfg.image_size),
        ));
    }
    Ok(cfg)
}

/// Reads `preprocessor_config.json` (CLIPImageProcessor); absent file -> the CLIP-336 one.
pub fn parse_preprocessor(path: &Path) -> Result<PreprocessSpec, ConfigError> {
    if !path.exists() {
        return Ok(PreprocessSpec::default());
    }
    let map = read_json(path)?;
    let f = Fields {
        path,
        map: &map,
        prefix: "",
    };
    let d = PreprocessSpec::default();
    let edge = |key: &str, sub: &str, default: usize| -> Result<usize, ConfigError> {
        match f.get(key) {
            None => Ok(default),
            Some(Value::Object(m)) => Fields {
                path,
                map: m,
                prefix: &format!("{key}."),
            }
            .usize_or(sub, None),
            Some(_) => f.usize_or(key, None),
        }
    };
    let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ConfigError> {
        match f.get(key) {
            None => Ok(default),
            Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => Ok([
                a[0].as_f64().unwrap_or_default() as f32,
                a[1].as_f64().unwrap_or_default() as f32,
                a[2].as_f64().unwrap_or_default() as f32,
            ]),
            Some(v) => Err(f.invalid(key, v, "an array of 3 numbers")),
        }
    };
    Ok(PreprocessSpec {
        shortest_edge: edge("size", "shortest_edge", d.shortest_edge)?,
        crop_size: edge("crop_size", "height", d.crop_size)?,
        rescale_factor: f.f64_or("rescale_factor", d.rescale_factor)?,
        image_mean: triple("image_mean", d.image_mean)?,
        image_std: triple("image_std", d.image_std)?,
        resample: f.usize_or("resample", Some(d.resample as usize))? as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn clip_defaults_are_hf_defaults() {
        // Values from transformers 4.37 CLIPVisionConfig.__init__ defaults.
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "c.json", r#"{"model_type": "clip"}"#);
        let c = parse_clip(&p).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.intermediate_size,
                c.num_layers,
                c.num_heads
            ),
            (768, 3072, 12, 12)
        );
        assert_eq!((c.image_size, c.patch_size, c.num_channels), (224, 32, 3));
        assert_eq!(c.hidden_act, "quick_gelu");
        assert_eq!(c.layer_norm_eps, 1e-5);
        let p = write(
            dir.path(),
            "v.json",
            r#"{"model_type": "clip_vision_model", "hidden_size": 32, "num_attention_heads": 4}"#,
        );
        let c = parse_clip(&p).unwrap();
        assert_eq!((c.hidden_size, c.num_heads, c.head_dim()), (32, 4, 8));
    }

    #[test]
    fn unsupported_projector_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "config.json",
            r#"{"model_type": "llava", "mm_projector_type": "mlp3x_relu", "mm_hidden_size": 8, "mm_vision_select_layer": -2}"#,
        );
        let err = parse_llava(&p).unwrap_err();
        assert!(
            matches!(err, ConfigError::UnsupportedProjector { ref kind, .. } if kind == "mlp3x_relu")
        );
        assert!(err.to_string().contains("mlp3x_relu"));
    }

    #[test]
    fn llava_model_type_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "config.json", r#"{"model_type": "llama"}"#);
        let err = parse_llava(&p).unwrap_err().to_string();
        assert!(err.contains("model_type") && err.contains("llama"), "{err}");
    }

    /// The shape of llava-hf/llava-1.5-7b-hf's config.json: `text_config` names only what
    /// differs from `LlamaConfig`'s defaults, which fill in the 7B decoder.
    #[test]
    fn llava_hf_sparse_config_takes_transformers_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"architectures": ["LlavaForConditionalGeneration"], "image_token_index": 32000,
            "model_type": "llava", "pad_token_id": 32001, "projector_hidden_act": "gelu",
            "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "max_position_embeddings": 4096,
                "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
            "tie_word_embeddings": false,
            "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
            "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064}"#;
        let p = write(dir.path(), "config.json", text);
        let (llava, clip) = parse_llava_hf(&p).unwrap();
        let l = &llava.llama;
        assert_eq!(
            (
                l.hidden_size,
                l.num_layers,
                l.num_heads,
                l.num_kv_heads,
                l.intermediate_size
            ),
            (4096, 32, 32, 32, 11008)
        );
        assert_eq!((l.vocab_size, l.max_position_embeddings), (32064, 4096));
        assert_eq!((l.rms_norm_eps, l.rope_theta), (1e-5, 10000.0));
        assert_eq!(
            (clip.hidden_size, clip.num_layers, clip.num_heads),
            (1024, 24, 16)
        );
        assert_eq!(
            (clip.hidden_act.as_str(), clip.layer_norm_eps),
            ("quick_gelu", 1e-5)
        );
        assert_eq!(llava.projector, ProjectorKind::Mlp2xGelu);
        assert_eq!((llava.mm_hidden_size, llava.select_layer), (1024, -2));
        assert!(!llava.select_feature_keeps_cls);
        // No vision_config at all: LlavaConfig's own CLIP-L/14-336 tower.
        let p = write(
            dir.path(),
            "bare.json",
            r#"{"model_type": "llava", "text_config": {}}"#,
        );
        let (llava, clip) = parse_llava_hf(&p).unwrap();
        assert_eq!(
            (clip.hidden_size, clip.image_size, clip.patch_size),
            (1024, 336, 14)
        );
        assert_eq!(
            (llava.llama.rms_norm_eps, llava.llama.vocab_size),
            (1e-6, 32000)
        );
    }

    #[test]
    fn llava_hf_features_the_graphs_lack_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (body, key) in [
            (
                r#""vision_feature_layer": [-2, -5]"#,
                "vision_feature_layer",
            ),
            (r#""projector_hidden_act": "silu""#, "projector_hidden_act"),
            (
                r#""text_config": {"model_type": "mistral"}"#,
                "text_config.model_type",
            ),
            (
                r#""text_config": {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}"#,
                "text_config.rope_parameters.rope_type",
            ),
        ] {
            let p = write(
                dir.path(),
                "c.json",
                &format!(r#"{{"model_type": "llava", {body}}}"#),
            );
            let err = parse_llava_hf(&p).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        // transformers 5 writes rope_theta inside rope_parameters.
        let p = write(
            dir.path(),
            "c.json",
            r#"{"model_type": "llava", "text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}}"#,
        );
        assert_eq!(parse_llava_hf(&p).unwrap().0.llama.rope_theta, 500000.0);
    }

    #[test]
    fn missing_preprocessor_is_default() {
        let dir = tempfile::tempdir().unwrap();
        let spec = parse_preprocessor(&dir.path().join("nope.json")).unwrap();
        assert_eq!(spec, PreprocessSpec::default());
    }
}
