//! LoRA adapters merged into their base's weights while the export streams them.
//!
//! Input: a PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors` or
//! `adapter_model.bin`, and for LLaVA's own `finetune_lora.sh` output `non_lora_trainables.bin`
//! with the trained projector), and the base checkpoint already opened under the graph
//! builders' names (see `layout`).
//!
//! Output: [`Merged`], a [`TensorSource`] layered over the base checkpoint (which knows
//! nothing of it), reading
//! - every full tensor the adapter ships (`non_lora_trainables.bin`, PEFT's saved
//!   `modules_to_save` and biases) in place of the base's, under the same names;
//! - every weight a `lora_A` / `lora_B` pair targets with its [`LoraDelta`] merged in as
//!   the graph builder reads it, one tensor at a time: memory stays near one base tensor
//!   plus its two factors;
//! - every other tensor as the base stores it.
//!
//! Arithmetic: what PEFT's `merge_and_unload` computes on a float32 model, saved in the
//! base's dtype: `delta = (B @ A) * scale` in f32, `W' = round(f32(W) + delta)` to the dtype
//! the base stores `W` in (fp16, bf16 or f32, round to nearest even). Each element of
//! `B @ A` is a sequence of fused multiply-adds over the rank in order, starting from zero:
//! bit for bit what PyTorch's CPU matmul (MKL) gives (checked against PEFT by
//! `tests/export_layouts.rs` on the fixtures). `scale` = `lora_alpha / r`, or
//! `lora_alpha / sqrt(r)` with `use_rslora`, computed in f64 and used as f32 like PyTorch's
//! scalar multiply; `alpha_pattern` / `rank_pattern` entries apply to the modules they
//! name. Refused with an error naming the file and what: DoRA, `fan_in_fan_out`, LoRA on
//! embeddings, layer replication, a target the base does not hold, factor shapes that do
//! not fit the weight.
//!
//! Files: this one (the adapter folder, its config and the pairing of factors with
//! weights), `merge` (the arithmetic).

mod merge;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, CheckpointError, TensorInfo, TensorSource};
use crate::pickle::StorageDtype;
pub use merge::merge_into;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// LLaVA's `finetune_lora.sh` saves the trained projector here.
pub const NON_LORA_TRAINABLES: &str = "non_lora_trainables.bin";
/// Prefix PEFT puts before the wrapped model's parameter names.
const PEFT_PREFIX: &str = "base_model.model.";

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error(
        "{dir}: no adapter weights (looked for adapter_model.safetensors and adapter_model.bin)"
    )]
    NoWeights { dir: PathBuf },
    #[error("{file}: `{key}`: {reason}")]
    Tensor {
        file: PathBuf,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The fields of PEFT's `adapter_config.json` that decide the merge.
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub layer_replication: Option<serde_json::Value>,
    /// The base the adapter was trained on (a Hub repo id or a path).
    pub base_model_name_or_path: Option<String>,
}

/// An adapter folder, its config read and checked.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    /// `adapter_model.safetensors` or `adapter_model.bin`.
    pub weights: PathBuf,
    /// `non_lora_trainables.bin` when there.
    pub non_lora: Option<PathBuf>,
}

/// A LoRA update of one weight `W [out, in]`: `A [r, in]`, `B [out, r]`, `scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraDelta {
    pub a: TensorInfo,
    pub b: TensorInfo,
    pub scale: f32,
}

impl AdapterConfig {
    /// Reads `adapter_config.json` at `path`, refusing what does not merge here (another
    /// PEFT type, DoRA, `fan_in_fan_out`, layer replication, `r` = 0) with the reason.
    pub fn read(path: &Path) -> Result<AdapterConfig, LoraError> {
        let bad = |reason: String| LoraError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let config: AdapterConfig =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not a LoRA config: {e}")))?;
        match config.peft_type.as_deref() {
            None | Some("LORA") => {}
            Some(other) => return Err(bad(format!("peft_type {other}: only LORA merges"))),
        }
        let refuse = [
            (config.use_dora, "use_dora (DoRA) is not supported"),
            (
                config.fan_in_fan_out,
                "fan_in_fan_out is not supported (no Llama layer needs it)",
            ),
            (
                config
                    .layer_replication
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
                "layer_replication is not supported",
            ),
        ];
        if let Some((_, what)) = refuse.iter().find(|(on, _)| *on) {
            return Err(bad(what.to_string()));
        }
        if config.r == 0 {
            return Err(bad("r is 0".into()));
        }
        Ok(config)
    }
}

impl Adapter {
    /// The adapter in `dir`, or `None` when `dir` has no `adapter_config.json`.
    pub fn find(dir: &Path) -> Result<Option<Adapter>, LoraError> {
        let path = dir.join(ADAPTER_CONFIG);
        if !path.is_file() {
            return Ok(None);
        }
        let config = AdapterConfig::read(&path)?;
        let weights = ["adapter_model.safetensors", "adapter_model.bin"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| LoraError::NoWeights {
                dir: dir.to_path_buf(),
            })?;
        let non_lora = Some(dir.join(NON_LORA_TRAINABLES)).filter(|p| p.is_file());
        Ok(Some(Adapter {
            dir: dir.to_path_buf(),
            config,
            weights,
            non_lora,
        }))
    }

    /// `base` with this adapter's full tensors put over its own and its LoRA updates
    /// merged as they are read. `name` maps a parameter name of the model the adapter wraps
    /// to the graph builders' name (the base's layout), `None` for a tensor the graphs
    /// never read.
    pub fn apply(
        &self,
        mut base: Checkpoint,
        name: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Merged, LoraError> {
        if let Some(path) = &self.non_lora {
            let trained = Checkpoint::open_file(path)?.rename(|k| name(&llava_non_lora_key(k)))?;
            base.overlay(trained);
        }
        let file = Checkpoint::open_file(&self.weights)?;
        let mut pairs: BTreeMap<String, [Option<TensorInfo>; 2]> = BTreeMap::new();
        let mut full = Vec::new();
        let keys: Vec<String> = file.keys().map(str::to_string).collect();
        for key in &keys {
            let info = file.get(key).expect("listed key").clone();
            let tensor_err = |reason: &str| LoraError::Tensor {
                file: self.weights.clone(),
                key: key.clone(),
                reason: reason.to_string(),
            };
            let param = key.strip_prefix(PEFT_PREFIX).unwrap_or(key);
            let param = param.replace(".default.weight", ".weight");
            if let Some((module, which)) = split_lora(&param) {
                pairs.entry(module.to_string()).or_default()[which] = Some(info);
            } else if param.contains("lora_") {
                return Err(tensor_err(
                    "not a lora_A / lora_B weight (LoRA on embeddings and DoRA do not merge here)",
                ));
            } else {
                full.push((param, info));
            }
        }
        for (param, info) in full {
            if let Some(target) = name(&param) {
                base.insert(target, info);
            }
        }
        base.files.push(self.weights.clone());
        let mut deltas = BTreeMap::new();
        for (module, [a, b]) in pairs {
            let (target, delta) = self.pair(&base, name, &module, a, b)?;
            deltas.insert(target, delta);
        }
        Ok(Merged { base, deltas })
    }

    /// The update one `lora_A` / `lora_B` pair makes, and the name of the base weight it
    /// updates (checked to be there, of a shape the factors fit).
    fn pair(
        &self,
        base: &Checkpoint,
        name: &dyn Fn(&str) -> Option<String>,
        module: &str,
        a: Option<TensorInfo>,
        b: Option<TensorInfo>,
    ) -> Result<(String, LoraDelta), LoraError> {
        let err = |reason: String| LoraError::Tensor {
            file: self.weights.clone(),
            key: format!("{module}.lora_A/B"),
            reason,
        };
        let (Some(a), Some(b)) = (a, b) else {
            return Err(err("lora_A and lora_B must come in pairs".into()));
        };
        let param = format!("{module}.weight");
        let target = name(&param).ok_or_else(|| {
            err(format!(
                "targets `{param}`, which the exported graphs do not use"
            ))
        })?;
        let w = base.get(&target).ok_or_else(|| {
            err(format!(
                "targets `{param}` (`{target}`), which the base checkpoint does not hold"
            ))
        })?;
        let fits = w.shape.len() == 2
            && a.shape.len() == 2
            && b.shape.len() == 2
            && a.shape[1] == w.shape[1]
            && b.shape[0] == w.shape[0]
            && a.shape[0] == b.shape[1];
        if !fits {
            return Err(err(format!(
                "A {:?} and B {:?} do not fit the weight {:?}",
                a.shape, b.shape, w.shape
            )));
        }
        if !(w.dtype.is_weight_type() && a.dtype.is_weight_type() && b.dtype.is_weight_type()) {
            return Err(err(
                "factors and weight must be float32, float16 or bfloat16".into(),
            ));
        }
        let rank = a.shape[0] as usize;
        let scale = self.scale(module, rank).map_err(err)?;
        Ok((target, LoraDelta { a, b, scale }))
    }

    /// PEFT's `scaling`: `alpha / r` (rsLoRA: `alpha / sqrt(r)`), per-module patterns first.
    fn scale(&self, module: &str, rank: usize) -> Result<f32, String> {
        let c = &self.config;
        let number = |v: &serde_json::Value, what: &str| {
            v.as_f64()
                .ok_or_else(|| format!("{what} entry {v} is not a number"))
        };
        let r = match pattern_value(&c.rank_pattern, module)? {
            Some(v) => number(v, "rank_pattern")? as usize,
            None => c.r,
        };
        if r != rank {
            return Err(format!(
                "adapter_config.json says r = {r}, the factors have rank {rank}"
            ));
        }
        let alpha = match pattern_value(&c.alpha_pattern, module)? {
            Some(v) => number(v, "alpha_pattern")?,
            None => c.lora_alpha,
        };
        let scale = if c.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        };
        Ok(scale as f32)
    }
}

/// A base checkpoint with an adapter's updates merged into the weights they target as the
/// graph builders read them; every other tensor reads as the base stores it.
#[derive(Debug, Clone)]
pub struct Merged {
    base: Checkpoint,
    /// By the graph builders' name of the weight each updates.
    deltas: BTreeMap<String, LoraDelta>,
}

impl TensorSource for Merged {
    fn tensor(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<(StorageDtype, Vec<u8>), CheckpointError> {
        let info = self.base.info(key, shape)?;
        let mut raw = self.base.read(info)?;
        if let Some(delta) = self.deltas.get(key) {
            merge_into(&mut raw, info, delta)?;
        }
        Ok((info.dtype, raw))
    }

    fn files(&self) -> &[PathBuf] {
        self.base.files()
    }
}

/// `(module, 0)` for `{module}.lora_A.weight`, `(module, 1)` for `lora_B`.
fn split_lora(param: &str) -> Option<(&str, usize)> {
    if let Some(m) = param.strip_suffix(".lora_A.weight") {
        Some((m, 0))
    } else {
        param.strip_suffix(".lora_B.weight").map(|m| (m, 1))
    }
}

/// The value of the pattern naming `module` (PEFT matches a key against the module path's
/// end: `q_proj` or `layers.0.self_attn.q_proj`). Patterns are taken literally; one holding
/// regex syntax is refused rather than matched wrongly.
fn pattern_value<'a>(
    patterns: &'a BTreeMap<String, serde_json::Value>,
    module: &str,
) -> Result<Option<&'a serde_json::Value>, String> {
    for (key, value) in patterns {
        if key.chars().any(|c| "*+?()[]{}|^$\\".contains(c)) {
            return Err(format!(
                "pattern `{key}` is a regular expression; only literal module names are supported"
            ));
        }
        if module == key || module.ends_with(&format!(".{key}")) {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// LLaVA's builder on `non_lora_trainables.bin`: drop `base_model.`, then `model.` when the
/// keys start with `model.model.` (`base_model.model.model.mm_projector.0.weight` ->
/// `model.mm_projector.0.weight`).
fn llava_non_lora_key(key: &str) -> String {
    let k = key.strip_prefix("base_model.").unwrap_or(key);
    match k.strip_prefix("model.") {
        Some(rest) if rest.starts_with("model.") => rest.to_string(),
        _ => k.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_lora_keys_as_llava_loads_them() {
        assert_eq!(
            llava_non_lora_key("base_model.model.model.mm_projector.0.weight"),
            "model.mm_projector.0.weight"
        );
        assert_eq!(
            llava_non_lora_key("model.mm_projector.2.bias"),
            "model.mm_projector.2.bias"
        );
    }

    #[test]
    fn patterns_match_the_module_path_end() {
        let p: BTreeMap<String, serde_json::Value> =
            [("q_proj".to_string(), serde_json::json!(16))].into();
        let m = "model.layers.0.self_attn.q_proj";
        assert_eq!(pattern_value(&p, m).unwrap(), Some(&serde_json::json!(16)));
        assert_eq!(
            pattern_value(&p, "model.layers.0.self_attn.xq_proj").unwrap(),
            None
        );
        let re: BTreeMap<String, serde_json::Value> =
            [("layers.*.q_proj".to_string(), serde_json::json!(16))].into();
        assert!(pattern_value(&re, m).is_err());
    }
}
