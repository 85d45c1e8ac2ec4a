//! Graph builders: CLIP vision tower, projector, token embedding and Llama decoder, as
//! ONNX graphs of standard opset-17 ops (the `fused` decoder adds ONNX Runtime contrib ops).
//! Every dimension comes from the parsed configs, every graph input/output name from
//! `manifest::names`.
//!
//! Numerics follow the reference (transformers 4.37 `CLIPVisionModel`, LLaVA's projector,
//! `LlamaForCausalLM`):
//! - vision: Conv patch embedding (no bias), CLS + learned positions, `pre_layrnorm`, the
//!   first `layers_emitted` pre-LN encoder layers (q scaled by head_dim^-0.5 after its
//!   bias), quick_gelu (or exact gelu) MLP; no post_layernorm; CLS dropped for `patch`.
//! - projector: Linear -> GELU (erf) -> Linear, or one Linear.
//! - decoder: see `graphs/decoder.rs` (plain and fused flavours).
//! - fp16: weights and activations fp16; LayerNorm, RMSNorm, softmax, GELU and RoPE angles
//!   computed in fp32 between Casts; `pixel_values` input and `logits` output are fp32.
//!
//! Linear weights are stored transposed ([in, out]) so that `MatMul(x, W)` needs no
//! Transpose node at run time.

use std::path::Path;

use crate::checkpoint::{self, TensorSource};
use crate::config::{ClipVisionConfig, LlavaConfig, ProjectorKind};
use crate::error::ExportError;
use crate::manifest::{names, Dtype};
use crate::onnx::{Attr, ElemType, GraphBuilder};

mod decoder;
mod probes;
pub use decoder::{build_decoder, build_fused_decoder};
pub use probes::{probe_name, Probes, PROBE_FINAL_NORM, PROBE_POINTS};

/// Where weights come from.
pub enum Weights<'a> {
    /// A checkpoint, or a layer over one (an adapter merged in).
    Checkpoint(&'a dyn TensorSource),
    /// Seeded random values (`--random-weights`), any shape.
    Random,
}

/// One graph under construction with its weight source and compute dtype.
struct Ctx<'a> {
    g: GraphBuilder,
    w: &'a Weights<'a>,
    /// Activation and weight element type.
    dt: ElemType,
}

fn elem(dtype: Dtype) -> ElemType {
    match dtype {
        Dtype::Fp32 => ElemType::F32,
        Dtype::Fp16 => ElemType::F16,
    }
}

impl<'a> Ctx<'a> {
    /// A graph named `name` written to `dir/file`, with weights from `w` as `dtype`.
    fn new(
        name: &str,
        dir: &Path,
        file: &str,
        w: &'a Weights<'a>,
        dtype: Dtype,
    ) -> Result<Ctx<'a>, ExportError> {
        Ok(Ctx {
            g: GraphBuilder::new(name, dir, file)?,
            w,
            dt: elem(dtype),
        })
    }
    /// Streams checkpoint tensor `key` (checked to be `shape`) into the graph, transposed
    /// when `transpose` (2-D only), as the graph dtype.
    fn weight(
        &mut self,
        key: &str,
        shape: &[usize],
        transpose: bool,
    ) -> Result<String, ExportError> {
        self.weight_as(key, shape, transpose, self.dt)
    }

    /// [`Ctx::weight`] stored as `dt` whatever the graph dtype.
    fn weight_as(
        &mut self,
        key: &str,
        shape: &[usize],
        transpose: bool,
        dt: ElemType,
    ) -> Result<String, ExportError> {
        let out_shape: Vec<usize> = if transpose {
            vec![shape[1], shape[0]]
        } else {
            shape.to_vec()
        };
        let name = if transpose {
            format!("{key}.T")
        } else {
            key.to_string()
        };
        match self.w {
            Weights::Checkpoint(ckpt) => {
                let (dtype, raw) = ckpt.tensor(key, shape)?;
                Ok(self.g.weight(&name, dt, &out_shape, |w| {
                    checkpoint::convert_into(&raw, dtype, shape, transpose, dt, w)
                })?)
            }
            Weights::Random => {
                let numel = shape.iter().product();
                Ok(self.g.weight(&name, dt, &out_shape, |w| {
                    checkpoint::random_into(key, numel, dt, w)
                })?)
            }
        }
    }

    fn op(&mut self, op: &str, inputs: &[&str]) -> String {
        self.g.node(op, inputs, vec![])
    }

    fn op_a(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.g.node(op, inputs, attrs)
    }

    /// `x @ W^T + b` for a PyTorch Linear `prefix.{weight,bias}` of [out, in].
    fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
    ) -> Result<String, ExportError> {
        let w = self.weight(&format!("{prefix}.weight"), &[d_out, d_in], true)?;
        let y = self.op("MatMul", &[x, &w]);
        if bias {
            let b = self.weight(&format!("{prefix}.bias"), &[d_out], false)?;
            Ok(self.op("Add", &[&y, &b]))
        } else {
            Ok(y)
        }
    }

    fn cast_f32(&mut self, x: &str) -> String {
        if self.dt == ElemType::F32 {
            x.to_string()
        } else {
            self.op_a("Cast", &[x], vec![("to", Attr::Int(ElemType::F32 as i64))])
        }
    }

    fn cast_dt(&mut self, x: &str) -> String {
        if self.dt == ElemType::F32 {
            x.to_string()
        } else {
            self.op_a("Cast", &[x], vec![("to", Attr::Int(self.dt as i64))])
        }
    }

    /// LayerNorm over the last axis, computed in fp32.
    fn layer_norm(
        &mut self,
        x: &str,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<String, ExportError> {
        let w = self.weight(&format!("{prefix}.weight"), &[dim], false)?;
        let b = self.weight(&format!("{prefix}.bias"), &[dim], false)?;
        let x32 = self.cast_f32(x);
        let w32 = self.cast_f32(&w);
        let b32 = self.cast_f32(&b);
        let y = self.op_a(
            "LayerNormalization",
            &[&x32, &w32, &b32],
            vec![
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
            ],
        );
        Ok(self.cast_dt(&y))
    }

    /// Softmax over the last axis in fp32; input and output in the graph dtype unless
    /// `already_f32`.
    fn softmax_f32(&mut self, x32: &str) -> String {
        let p = self.op_a("Softmax", &[x32], vec![("axis", Attr::Int(-1))]);
        self.cast_dt(&p)
    }

    /// [B, T, heads*hd] -> [B, heads, T, hd] (or [B, heads, hd, T] when `for_keys_t`).
    fn split_heads(&mut self, x: &str, heads: usize, hd: usize, perm: &[i64]) -> String {
        let shape = self.g.const_i64(&[0, 0, heads as i64, hd as i64]);
        let r = self.op("Reshape", &[x, &shape]);
        self.op_a(
            "Transpose",
            &[&r],
            vec![("perm", Attr::Ints(perm.to_vec()))],
        )
    }

    /// [B, heads, T, hd] -> [B, T, heads*hd].
    fn merge_heads(&mut self, x: &str, hidden: usize) -> String {
        let t = self.op_a(
            "Transpose",
            &[x],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let shape = self.g.const_i64(&[0, 0, hidden as i64]);
        self.op("Reshape", &[&t, &shape])
    }

    fn identity_to(&mut self, x: &str, name: &str) {
        self.g.node_named("Identity", &[x], vec![], Some(name));
    }
}

/// Encoder layers run: hidden_states has layers + 1 entries (0 = embeddings after
/// pre_layrnorm), `select_layer` indexes it like Python (-2 -> layers - 1).
pub fn layers_emitted(select_layer: i64, num_layers: usize) -> Option<usize> {
    let n = num_layers as i64 + 1;
    let idx = if select_layer < 0 {
        n + select_layer
    } else {
        select_layer
    };
    (0..n).contains(&idx).then_some(idx as usize)
}

pub struct BuiltGraph {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub weight_bytes: u64,
}

/// `pixel_values [B,C,S,S] f32 -> image_features [B,N,Hc]`.
pub fn build_vision(
    dir: &Path,
    file: &str,
    clip: &ClipVisionConfig,
    llava: &LlavaConfig,
    emitted: usize,
    dtype: Dtype,
    w: &Weights,
) -> Result<BuiltGraph, ExportError> {
    let mut c = Ctx::new("vision", dir, file, w, dtype)?;
    let hc = clip.hidden_size;
    let (s, ch) = (clip.image_size, clip.num_channels);
    let px = c.g.input(
        names::PIXEL_VALUES,
        ElemType::F32,
        vec!["batch".into(), ch.into(), s.into(), s.into()],
    );
    let h = clip_embeddings(&mut c, clip, &px)?;
    let mut h = c.layer_norm(&h, "vision_model.pre_layrnorm", hc, clip.layer_norm_eps)?;
    let scale =
        c.g.const_float(c.dt, &[], &[(clip.head_dim() as f32).powf(-0.5)]);
    for l in 0..emitted {
        h = clip_layer(&mut c, clip, &h, l, &scale)?;
    }
    let n_out = if llava.select_feature_keeps_cls {
        clip.num_positions()
    } else {
        clip.num_positions() - 1
    };
    if llava.select_feature_keeps_cls {
        c.identity_to(&h, names::IMAGE_FEATURES);
    } else {
        let starts = c.g.const_i64(&[1]);
        let ends = c.g.const_i64(&[i64::MAX]);
        let axes = c.g.const_i64(&[1]);
        c.g.node_named(
            "Slice",
            &[&h, &starts, &ends, &axes],
            vec![],
            Some(names::IMAGE_FEATURES),
        );
    }
    let dt = c.dt;
    c.g.output(
        names::IMAGE_FEATURES,
        dt,
        vec!["batch".into(), n_out.into(), hc.into()],
    );
    finish(c, dir, file)
}

/// CLIP's embeddings of `pixel_values`: patches (a strided Conv, `[B, N, Hc]`), the CLS
/// token in front, position embeddings added.
fn clip_embeddings(c: &mut Ctx, clip: &ClipVisionConfig, px: &str) -> Result<String, ExportError> {
    let hc = clip.hidden_size;
    let (p, ch) = (clip.patch_size, clip.num_channels);
    let pre = "vision_model";
    let x = c.cast_dt(px);
    // Patch embedding: [B, C, S, S] -> [B, Hc, S/p, S/p] -> [B, N, Hc]  (336/14 = 24, 24*24 = 576)
    let conv_w = c.weight(
        &format!("{pre}.embeddings.patch_embedding.weight"),
        &[hc, ch, p, p],
        false,
    )?;
    let patches = c.op_a(
        "Conv",
        &[&x, &conv_w],
        vec![
            ("kernel_shape", Attr::Ints(vec![p as i64, p as i64])),
            ("strides", Attr::Ints(vec![p as i64, p as i64])),
        ],
    );
    let flat_shape = c.g.const_i64(&[0, hc as i64, -1]);
    let flat = c.op("Reshape", &[&patches, &flat_shape]);
    let tokens = c.op_a(
        "Transpose",
        &[&flat],
        vec![("perm", Attr::Ints(vec![0, 2, 1]))],
    );
    // CLS token broadcast to [B, 1, Hc]
    let cls = c.weight(&format!("{pre}.embeddings.class_embedding"), &[hc], false)?;
    let cls_shape = c.g.const_i64(&[1, 1, hc as i64]);
    let cls = c.op("Reshape", &[&cls, &cls_shape]);
    let batch = c.op_a(
        "Shape",
        &[px],
        vec![("start", Attr::Int(0)), ("end", Attr::Int(1))],
    );
    let rest = c.g.const_i64(&[1, hc as i64]);
    let target = c.op_a("Concat", &[&batch, &rest], vec![("axis", Attr::Int(0))]);
    let cls = c.op("Expand", &[&cls, &target]);
    let h = c.op_a("Concat", &[&cls, &tokens], vec![("axis", Attr::Int(1))]);
    let pos = c.weight(
        &format!("{pre}.embeddings.position_embedding.weight"),
        &[clip.num_positions(), hc],
        false,
    )?;
    Ok(c.op("Add", &[&h, &pos]))
}

/// CLIP encoder layer `l` on `h`: pre-norm attention (scores scaled by `scale`, softmax in
/// fp32) and MLP (quick_gelu or exact GELU), each with its residual add.
fn clip_layer(
    c: &mut Ctx,
    clip: &ClipVisionConfig,
    h: &str,
    l: usize,
    scale: &str,
) -> Result<String, ExportError> {
    let (hc, heads, hd) = (clip.hidden_size, clip.num_heads, clip.head_dim());
    let lp = format!("vision_model.encoder.layers.{l}");
    let eps = clip.layer_norm_eps;
    let x = c.layer_norm(h, &format!("{lp}.layer_norm1"), hc, eps)?;
    let q = c.linear(&x, &format!("{lp}.self_attn.q_proj"), hc, hc, true)?;
    let q = c.op("Mul", &[&q, scale]);
    let k = c.linear(&x, &format!("{lp}.self_attn.k_proj"), hc, hc, true)?;
    let v = c.linear(&x, &format!("{lp}.self_attn.v_proj"), hc, hc, true)?;
    let q = c.split_heads(&q, heads, hd, &[0, 2, 1, 3]);
    let kt = c.split_heads(&k, heads, hd, &[0, 2, 3, 1]);
    let v = c.split_heads(&v, heads, hd, &[0, 2, 1, 3]);
    let scores = c.op("MatMul", &[&q, &kt]); // [B, heads, N+1, N+1]
    let scores = c.cast_f32(&scores);
    let probs = c.softmax_f32(&scores);
    let o = c.op("MatMul", &[&probs, &v]);
    let o = c.merge_heads(&o, hc);
    let o = c.linear(&o, &format!("{lp}.self_attn.out_proj"), hc, hc, true)?;
    let h = c.op("Add", &[h, &o]);
    let x = c.layer_norm(&h, &format!("{lp}.layer_norm2"), hc, eps)?;
    let mlp = clip.intermediate_size;
    let x = c.linear(&x, &format!("{lp}.mlp.fc1"), hc, mlp, true)?;
    let x = match clip.hidden_act.as_str() {
        "quick_gelu" => {
            // x * sigmoid(1.702 x)
            let k = c.g.const_float(c.dt, &[], &[1.702]);
            let kx = c.op("Mul", &[&x, &k]);
            let sg = c.op("Sigmoid", &[&kx]);
            c.op("Mul", &[&x, &sg])
        }
        _ => gelu_erf(c, &x),
    };
    let x = c.linear(&x, &format!("{lp}.mlp.fc2"), mlp, hc, true)?;
    Ok(c.op("Add", &[&h, &x]))
}

/// Exact GELU `0.5 x (1 + erf(x / sqrt 2))`, in fp32.
fn gelu_erf(c: &mut Ctx, x: &str) -> String {
    let x32 = c.cast_f32(x);
    let inv_sqrt2 =
        c.g.const_float(ElemType::F32, &[], &[std::f32::consts::FRAC_1_SQRT_2]);
    let half = c.g.const_float(ElemType::F32, &[], &[0.5]);
    let one = c.g.const_float(ElemType::F32, &[], &[1.0]);
    let xs = c.op("Mul", &[&x32, &inv_sqrt2]);
    let e = c.op("Erf", &[&xs]);
    let e1 = c.op("Add", &[&e, &one]);
    let xh = c.op("Mul", &[&x32, &half]);
    let y = c.op("Mul", &[&xh, &e1]);
    c.cast_dt(&y)
}

/// `image_features [B,N,Hc] -> image_embeds [B,N,H]`.
pub fn build_projector(
    dir: &Path,
    file: &str,
    llava: &LlavaConfig,
    dtype: Dtype,
    w: &Weights,
) -> Result<BuiltGraph, ExportError> {
    let mut c = Ctx::new("projector", dir, file, w, dtype)?;
    let (hc, h) = (llava.mm_hidden_size, llava.llama.hidden_size);
    let dt = c.dt;
    let x = c.g.input(
        names::IMAGE_FEATURES,
        dt,
        vec!["batch".into(), "tokens".into(), hc.into()],
    );
    let y = match llava.projector {
        ProjectorKind::Mlp2xGelu => {
            let y = c.linear(&x, "model.mm_projector.0", hc, h, true)?;
            let y = gelu_erf(&mut c, &y);
            c.linear(&y, "model.mm_projector.2", h, h, true)?
        }
        ProjectorKind::Linear => c.linear(&x, "model.mm_projector", hc, h, true)?,
    };
    c.identity_to(&y, names::PROJECTOR_OUT);
    c.g.output(
        names::PROJECTOR_OUT,
        dt,
        vec!["batch".into(), "tokens".into(), h.into()],
    );
    finish(c, dir, file)
}

/// `input_ids [B,T] i64 -> inputs_embeds [B,T,H]`.
pub fn build_embed(
    dir: &Path,
    file: &str,
    llava: &LlavaConfig,
    dtype: Dtype,
    w: &Weights,
) -> Result<BuiltGraph, ExportError> {
    let mut c = Ctx::new("embed", dir, file, w, dtype)?;
    let (v, h) = (llava.llama.vocab_size, llava.llama.hidden_size);
    let ids = c.g.input(
        names::INPUT_IDS,
        ElemType::I64,
        vec!["batch".into(), "seq".into()],
    );
    let table = c.weight("model.embed_tokens.weight", &[v, h], false)?;
    c.g.node_named(
        "Gather",
        &[&table, &ids],
        vec![("axis", Attr::Int(0))],
        Some(names::INPUTS_EMBEDS),
    );
    let dt = c.dt;
    c.g.output(
        names::INPUTS_EMBEDS,
        dt,
        vec!["batch".into(), "seq".into(), h.into()],
    );
    finish(c, dir, file)
}

fn finish(c: Ctx, dir: &Path, file: &str) -> Result<BuiltGraph, ExportError> {
    let inputs = c.g.input_names();
    let outputs = c.g.output_names();
    let weight_bytes = c.g.finish(&dir.join(file))?;
    Ok(BuiltGraph {
        inputs,
        outputs,
        weight_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_layer_indexing() {
        // hidden_states has L + 1 entries; -2 -> L - 1 layers run (LLaVA-1.5: 24 -> 23).
        assert_eq!(layers_emitted(-2, 24), Some(23));
        assert_eq!(layers_emitted(-1, 3), Some(3));
        assert_eq!(layers_emitted(0, 3), Some(0));
        assert_eq!(layers_emitted(3, 3), Some(3));
        assert_eq!(layers_emitted(4, 3), None);
        assert_eq!(layers_emitted(-5, 3), None);
    }
}
