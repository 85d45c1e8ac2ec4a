//! LLaVA configs, both layouts: the original (`mm_*` fields beside the Llama ones) and
//! llava-hf (`text_config` / `vision_config`, sparse, transformers' defaults applied), and
//! where each layout's vision tower is.

use std::path::Path;

use serde_json::{Map, Value};

use super::clip::clip_fields;
use super::fields::Fields;
use super::{read_json, ClipVisionConfig, ConfigError, LlamaConfig, LlavaConfig, ProjectorKind};

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

/// Where a LLaVA config's vision tower is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VisionTower {
    /// llava-hf: inside the checkpoint.
    Inside,
    /// The original layout: a separate CLIP checkpoint, under the name `mm_vision_tower`
    /// gives (a Hub repo id or a folder); `None` when the config names none.
    Separate(Option<String>),
}

/// The vision tower of a LLaVA `config.json` object (see [`read_json`]).
pub fn vision_tower(map: &Map<String, Value>) -> VisionTower {
    if is_llava_hf(map) {
        return VisionTower::Inside;
    }
    let named = map.get("mm_vision_tower").and_then(Value::as_str);
    VisionTower::Separate(named.map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_file as write;

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
}
