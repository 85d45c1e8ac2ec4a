//! CLIP vision configs (a full CLIP or a vision-only config, `CLIPVisionConfig` defaults
//! for absent fields) and the tower's `preprocessor_config.json`.

use std::path::Path;

use serde_json::{Map, Value};

use super::fields::Fields;
use super::{read_json, ClipVisionConfig, ConfigError};
use crate::manifest::PreprocessSpec;

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
pub(super) fn clip_fields(f: &Fields) -> Result<ClipVisionConfig, ConfigError> {
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
    use crate::config::test_file as write;

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
    fn missing_preprocessor_is_default() {
        let dir = tempfile::tempdir().unwrap();
        let spec = parse_preprocessor(&dir.path().join("nope.json")).unwrap();
        assert_eq!(spec, PreprocessSpec::default());
    }
}
