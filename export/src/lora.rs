//! LoRA adapters merged into their base's weights while the export streams them.
//!
//! Input: a PEFT LoRA adapter folder (`adapter_config.json`, `adapter_model.safetensors` or
//! `adapter_model.bin`, and for LLaVA's own `finetune_lora.sh` output `non_lora_trainables.bin`
//! with the trained projector), and the base checkpoint already opened under the graph
//! builders' names (see `layout`).
//!
//! Output: the base checkpoint with
//! - every full tensor the adapter ships (`non_lora_trainables.bin`, PEFT's saved
//!   `modules_to_save` and biases) put over the base's, under the same names;
//! - on every weight a `lora_A` / `lora_B` pair targets, a [`LoraDelta`] that
//!   `Checkpoint::read` merges when the graph builder reads that weight, one tensor at a
//!   time: memory stays near one base tensor plus its two factors.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::{self, Checkpoint, CheckpointError, TensorInfo};
use crate::pickle::StorageDtype;

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

impl Adapter {
    /// The adapter in `dir`, or `None` when `dir` has no `adapter_config.json`.
    pub fn find(dir: &Path) -> Result<Option<Adapter>, LoraError> {
        let path = dir.join(ADAPTER_CONFIG);
        if !path.is_file() {
            return Ok(None);
        }
        let bad = |reason: String| LoraError::Config {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
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

    /// Puts this adapter's full tensors over `base` and attaches its LoRA updates.
    /// `name` maps a parameter name of the model the adapter wraps to the graph builders'
    /// name (the base's layout), `None` for a tensor the graphs never read.
    pub fn apply(
        &self,
        base: &mut Checkpoint,
        name: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), LoraError> {
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
        for (module, [a, b]) in pairs {
            self.attach(base, name, &module, a, b)?;
        }
        Ok(())
    }

    fn attach(
        &self,
        base: &mut Checkpoint,
        name: &dyn Fn(&str) -> Option<String>,
        module: &str,
        a: Option<TensorInfo>,
        b: Option<TensorInfo>,
    ) -> Result<(), LoraError> {
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
        base.set_lora(&target, LoraDelta { a, b, scale })?;
        Ok(())
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

/// Merges `delta` into `raw`, the bytes of weight `w` as stored (see the module contract).
pub fn merge_into(
    raw: &mut [u8],
    w: &TensorInfo,
    delta: &LoraDelta,
) -> Result<(), CheckpointError> {
    let (out, inp) = (w.shape[0] as usize, w.shape[1] as usize);
    let a = to_f32(&checkpoint::read_raw(&delta.a)?, delta.a.dtype);
    let b = to_f32(&checkpoint::read_raw(&delta.b)?, delta.b.dtype);
    let rank = b.len() / out.max(1);
    let es = w.dtype.size();
    let mut acc = vec![0f32; ROWS * inp];
    for (i0, rows) in raw.chunks_mut(ROWS * inp * es).enumerate() {
        let n = rows.len() / (inp * es);
        let first = i0 * ROWS;
        ba_rows(
            &mut acc[..n * inp],
            &b[first * rank..(first + n) * rank],
            &a,
            inp,
        );
        for (bytes, d) in rows.chunks_exact_mut(es).zip(&acc) {
            let merged = checkpoint::elem_to_f32(w.dtype, bytes) + d * delta.scale;
            store(w.dtype, merged, bytes);
        }
    }
    Ok(())
}

fn to_f32(raw: &[u8], dtype: StorageDtype) -> Vec<f32> {
    raw.chunks_exact(dtype.size())
        .map(|b| checkpoint::elem_to_f32(dtype, b))
        .collect()
}

/// Writes `v` rounded to nearest even into one element of `dtype` (a weight type).
fn store(dtype: StorageDtype, v: f32, dst: &mut [u8]) {
    match dtype {
        StorageDtype::F16 => dst.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        StorageDtype::BF16 => dst.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        _ => dst.copy_from_slice(&v.to_le_bytes()),
    }
}

/// Rows of `B @ A` computed together: each column of `A` is loaded once for all of them.
const ROWS: usize = 4;
/// Columns per tile: `ROWS` x `COLS` accumulators stay in registers across the rank.
const COLS: usize = 16;

/// `acc[r, j] = sum_k b_rows[r, k] * a[k, j]` for up to [`ROWS`] rows, each element one
/// fused multiply-add per k in order from zero (the order fixes the rounding; tiling only
/// changes which elements are computed side by side).
fn ba_rows(acc: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above), the one feature the function enables.
        unsafe { ba_rows_fma(acc, b_rows, a, inp) };
        return;
    }
    ba_rows_portable(acc, b_rows, a, inp);
}

/// [`ba_rows_portable`] compiled with the FMA instructions, so `mul_add` is one vectorised
/// instruction instead of a libm call per element (a 7B adapter of rank 128 is ~10^12 of them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn ba_rows_fma(acc: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize) {
    ba_rows_portable(acc, b_rows, a, inp);
}

#[inline(always)]
fn ba_rows_portable(acc: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize) {
    let rows = acc.len() / inp;
    let mut j0 = 0;
    while j0 < inp {
        let width = COLS.min(inp - j0);
        let tile = if rows == ROWS && width == COLS {
            full_tile(b_rows, a, inp, j0)
        } else {
            edge_tile(b_rows, a, inp, j0, rows, width)
        };
        for (r, t) in tile.iter().enumerate().take(rows) {
            acc[r * inp + j0..r * inp + j0 + width].copy_from_slice(&t[..width]);
        }
        j0 += width;
    }
}

/// A whole tile: constant bounds, so the accumulators live in registers.
#[inline(always)]
fn full_tile(b_rows: &[f32], a: &[f32], inp: usize, j0: usize) -> [[f32; COLS]; ROWS] {
    let rank = b_rows.len() / ROWS;
    let mut tile = [[0f32; COLS]; ROWS];
    for k in 0..rank {
        let a_k: &[f32; COLS] = a[k * inp + j0..k * inp + j0 + COLS]
            .try_into()
            .expect("a full tile is COLS wide");
        for (r, t) in tile.iter_mut().enumerate() {
            let bk = b_rows[r * rank + k];
            for j in 0..COLS {
                t[j] = bk.mul_add(a_k[j], t[j]);
            }
        }
    }
    tile
}

/// A tile at the right or bottom edge: fewer rows or columns, same order of sums.
fn edge_tile(
    b_rows: &[f32],
    a: &[f32],
    inp: usize,
    j0: usize,
    rows: usize,
    width: usize,
) -> [[f32; COLS]; ROWS] {
    let rank = b_rows.len() / rows;
    let mut tile = [[0f32; COLS]; ROWS];
    for k in 0..rank {
        let a_k = &a[k * inp + j0..k * inp + j0 + width];
        for (r, t) in tile.iter_mut().enumerate().take(rows) {
            let bk = b_rows[r * rank + k];
            for (s, &x) in t.iter_mut().zip(a_k) {
                *s = bk.mul_add(x, *s);
            }
        }
    }
    tile
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

    /// Sequential fused multiply-adds: after -1 * 1, the step (1 + 2^-23) * (1 - 2^-23) - 1
    /// keeps -2^-46 where a separate multiply would round the product to 1 and give 0.
    #[test]
    fn products_are_fused() {
        let e = f32::EPSILON;
        let mut acc = vec![0.0f32; 1];
        ba_rows(&mut acc, &[-1.0, 1.0 + e], &[1.0, 1.0 - e], 1);
        assert_eq!(acc[0], -(e * e));
    }

    /// The tiled kernel equals one sequential fused sum per element, for shapes with
    /// partial row and column tiles.
    #[test]
    fn tiles_sum_in_rank_order() {
        for rows in [3, ROWS] {
            tiles_match(rows);
        }
    }

    fn tiles_match(rows: usize) {
        let (rank, inp) = (5, 37);
        let val = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 317.0;
        let a: Vec<f32> = (0..rank * inp).map(val).collect();
        let b: Vec<f32> = (0..rows * rank).map(|i| val(i + 13)).collect();
        let mut acc = vec![0f32; rows * inp];
        ba_rows(&mut acc, &b, &a, inp);
        for r in 0..rows {
            for j in 0..inp {
                let mut s = 0f32;
                for k in 0..rank {
                    s = b[r * rank + k].mul_add(a[k * inp + j], s);
                }
                assert_eq!(acc[r * inp + j].to_bits(), s.to_bits(), "({r}, {j})");
            }
        }
    }
}
