//! The Llama decoder graphs, in two flavours (`manifest::Flavour`): `plain` (standard ONNX
//! ops, the cache grows by `Concat`) and `fused` (ONNX Runtime contrib ops, the cache is
//! updated in place). Each builder's doc states its inputs and outputs.
//!
//! Numerics follow transformers 4.37 `LlamaForCausalLM`: RMSNorm in fp32 (x times
//! 1/sqrt(mean(x^2) plus eps), cast back, times weight), RoPE rotate-half with cos/sin of
//! position * inv_freq, scores (q k^T) / sqrt(head_dim), softmax in fp32, GQA by repeating
//! kv heads, SiLU MLP, final norm and untied lm_head on the LAST position only; `logits`
//! are fp32 whatever the graph dtype.

use std::path::Path;

use super::probes::{Probes, Taps, PROBE_FINAL_NORM};
use super::{finish, BuiltGraph, Ctx, Weights};
use crate::config::{LlamaConfig, LlavaConfig};
use crate::error::ExportError;
use crate::manifest::{names, Dtype};
use crate::onnx::{Attr, ElemType};

impl Ctx<'_> {
    /// Llama RMSNorm: `weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype)`.
    fn rms_norm(
        &mut self,
        x: &str,
        key: &str,
        dim: usize,
        eps: f64,
    ) -> Result<String, ExportError> {
        let w = self.weight(key, &[dim], false)?;
        let x32 = self.cast_f32(x);
        let sq = self.op("Mul", &[&x32, &x32]);
        let var = self.op_a(
            "ReduceMean",
            &[&sq],
            vec![("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
        );
        let eps = self.g.const_float(ElemType::F32, &[], &[eps as f32]);
        let var = self.op("Add", &[&var, &eps]);
        let rms = self.op("Sqrt", &[&var]);
        let inv = self.op("Reciprocal", &[&rms]);
        let y = self.op("Mul", &[&x32, &inv]);
        let y = self.cast_dt(&y);
        Ok(self.op("Mul", &[&w, &y]))
    }

    /// RMSNorm of the fp32 residual stream `x32` as ONNX Runtime's
    /// SimplifiedLayerNormalization, all in fp32 (weight included).
    fn simplified_norm(
        &mut self,
        x32: &str,
        key: &str,
        dim: usize,
        eps: f64,
    ) -> Result<String, ExportError> {
        let w = self.weight_as(key, &[dim], false, ElemType::F32)?;
        Ok(self.op_a(
            "SimplifiedLayerNormalization",
            &[x32, &w],
            vec![
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
                ("stash_type", Attr::Int(1)),
            ],
        ))
    }

    /// The residual add and the next RMSNorm as SkipSimplifiedLayerNormalization, all in
    /// fp32 (weight included): `sum = x32 + skip32`, returns `(RMSNorm(sum), sum)`.
    fn skip_norm(
        &mut self,
        x32: &str,
        skip32: &str,
        key: &str,
        dim: usize,
        eps: f64,
    ) -> Result<(String, String), ExportError> {
        let w = self.weight_as(key, &[dim], false, ElemType::F32)?;
        let out = self.g.contrib_node(
            "SkipSimplifiedLayerNormalization",
            &[x32, skip32, &w],
            vec![("epsilon", Attr::Float(eps as f32))],
            &[None, Some(""), Some(""), None],
        );
        Ok((out[0].clone(), out[3].clone()))
    }

    /// The decoder's `past_key_values.L.{key,value} [batch, kv, seq_dim, hd]` inputs.
    fn past_inputs(&mut self, cfg: &LlamaConfig, seq_dim: &str) -> Vec<(String, String)> {
        let dims = || {
            vec![
                "batch".into(),
                cfg.num_kv_heads.into(),
                seq_dim.into(),
                cfg.head_dim.into(),
            ]
        };
        (0..cfg.num_layers)
            .map(|l| {
                let k = self.g.input(&names::past_key(l), self.dt, dims());
                let v = self.g.input(&names::past_value(l), self.dt, dims());
                (k, v)
            })
            .collect()
    }

    /// Llama's MLP of layer prefix `lp`: `down(silu(gate(h)) * up(h))`.
    fn swiglu_mlp(&mut self, h: &str, lp: &str, cfg: &LlamaConfig) -> Result<String, ExportError> {
        let (hsz, inter) = (cfg.hidden_size, cfg.intermediate_size);
        let gate = self.linear(h, &format!("{lp}.mlp.gate_proj"), hsz, inter, false)?;
        let up = self.linear(h, &format!("{lp}.mlp.up_proj"), hsz, inter, false)?;
        let sg = self.op("Sigmoid", &[&gate]);
        let act = self.op("Mul", &[&gate, &sg]);
        let a = self.op("Mul", &[&act, &up]);
        self.linear(&a, &format!("{lp}.mlp.down_proj"), inter, hsz, false)
    }

    /// The decoder's outputs: `lm_head` of the normed last position as fp32 `logits
    /// [batch, V]`, then `present.L.{key,value} [batch, kv, seq_dim, hd]` (made by the
    /// layers under those names).
    fn logits_and_presents(
        &mut self,
        last: &str,
        cfg: &LlamaConfig,
        seq_dim: &str,
    ) -> Result<(), ExportError> {
        let logits = self.linear(last, "lm_head", cfg.hidden_size, cfg.vocab_size, false)?;
        let logits = self.cast_f32(&logits);
        self.identity_to(&logits, names::LOGITS);
        self.g.output(
            names::LOGITS,
            ElemType::F32,
            vec!["batch".into(), cfg.vocab_size.into()],
        );
        let dims = || {
            vec![
                "batch".into(),
                cfg.num_kv_heads.into(),
                seq_dim.into(),
                cfg.head_dim.into(),
            ]
        };
        for l in 0..cfg.num_layers {
            self.g.output(&names::present_key(l), self.dt, dims());
            self.g.output(&names::present_value(l), self.dt, dims());
        }
        Ok(())
    }
}

/// The Llama decoder with KV cache, `plain` flavour: standard ONNX ops only.
///
/// Contract (see `manifest::Flavour::Plain`):
/// - inputs: `inputs_embeds [B,T,H]`, `attention_mask [B,P+T]` int64 (past and new
///   positions; rows left-padded), `position_ids [B,T]` int64, and per layer
///   `past_key_values.L.{key,value} [B,kv,P,hd]` (P = 0 on the first call).
/// - outputs: `logits [B,V]` fp32 of the LAST position, `present.L.{key,value}
///   [B,kv,P+T,hd]` (the past with the new positions appended).
/// - numerics: the module's; query t (absolute position P + t) sees key j when j <= P + t
///   and attention_mask[j] = 1 (others get f32::MIN, HF's finfo.min, never -inf, so a
///   fully padded row is uniform, not NaN); cos/sin of position_ids * inv_freq computed in
///   the graph in fp32, then cast to the graph dtype as transformers does.
pub fn build_decoder(
    dir: &Path,
    file: &str,
    llava: &LlavaConfig,
    dtype: Dtype,
    w: &Weights,
    probes: Probes,
) -> Result<BuiltGraph, ExportError> {
    let mut c = Ctx::new("decoder", dir, file, w, dtype)?;
    let mut taps = Taps::new(probes);
    let cfg = &llava.llama;
    let (hsz, nh, eps) = (cfg.hidden_size, cfg.num_heads, cfg.rms_norm_eps);
    let dt = c.dt;
    let x_in = c.g.input(
        names::INPUTS_EMBEDS,
        dt,
        vec!["batch".into(), "seq".into(), hsz.into()],
    );
    let mask = c.g.input(
        names::ATTENTION_MASK,
        ElemType::I64,
        vec!["batch".into(), "total".into()],
    );
    let pos = c.g.input(
        names::POSITION_IDS,
        ElemType::I64,
        vec!["batch".into(), "seq".into()],
    );
    let past = c.past_inputs(cfg, "past");
    let rope = plain_rope_tables(&mut c, &pos, cfg);
    let consts = plain_attention_consts(&mut c, &x_in, &mask, cfg);

    let mut x = x_in.clone();
    for (l, past_kv) in past.iter().enumerate() {
        let lp = format!("model.layers.{l}");
        let h = c.rms_norm(&x, &format!("{lp}.input_layernorm.weight"), hsz, eps)?;
        taps.layer(&mut c, l, "attn_norm", &h, hsz);
        let o = plain_attention(&mut c, l, &h, past_kv, &rope, &consts, cfg)?;
        taps.layer(&mut c, l, "attn", &o, nh * cfg.head_dim);
        let o = c.linear(
            &o,
            &format!("{lp}.self_attn.o_proj"),
            nh * cfg.head_dim,
            hsz,
            false,
        )?;
        x = c.op("Add", &[&x, &o]);
        taps.layer(&mut c, l, "attn_resid", &x, hsz);
        let h = c.rms_norm(
            &x,
            &format!("{lp}.post_attention_layernorm.weight"),
            hsz,
            eps,
        )?;
        taps.layer(&mut c, l, "mlp_norm", &h, hsz);
        let d = c.swiglu_mlp(&h, &lp, cfg)?;
        taps.layer(&mut c, l, "mlp", &d, hsz);
        x = c.op("Add", &[&x, &d]);
        taps.layer(&mut c, l, "mlp_resid", &x, hsz);
    }
    // Last position only: [B, T, H] -> [B, H]; the norm is per position, so take it first.
    let last_idx = c.g.scalar_i64(-1);
    let last = c.op_a("Gather", &[&x, &last_idx], vec![("axis", Attr::Int(1))]);
    let last = c.rms_norm(&last, "model.norm.weight", hsz, eps)?;
    let final_dims = vec!["batch".into(), hsz.into()];
    taps.tap(&mut c, PROBE_FINAL_NORM.into(), &last, final_dims);
    c.logits_and_presents(&last, cfg, "total")?;
    taps.declare(&mut c);
    finish(c, dir, file)
}

/// RoPE's cos and sin `[B, 1, T, hd]` for `position_ids [B, T]`: angles `position *
/// inv_freq` and their cos/sin in fp32, then cast to the graph dtype.
fn plain_rope_tables(c: &mut Ctx, pos: &str, cfg: &LlamaConfig) -> (String, String) {
    let inv_freq = rope_inv_freq(cfg);
    let inv_freq =
        c.g.const_float(ElemType::F32, &[inv_freq.len() as i64], &inv_freq);
    let posf = c.op_a(
        "Cast",
        &[pos],
        vec![("to", Attr::Int(ElemType::F32 as i64))],
    );
    let ax2 = c.g.const_i64(&[2]);
    let posf = c.op("Unsqueeze", &[&posf, &ax2]); // [B, T, 1]
    let freqs = c.op("Mul", &[&posf, &inv_freq]); // [B, T, hd/2]
    let emb = c.op_a("Concat", &[&freqs, &freqs], vec![("axis", Attr::Int(-1))]); // [B, T, hd]
    let ax1 = c.g.const_i64(&[1]);
    let mut out = Vec::new();
    for op in ["Cos", "Sin"] {
        let t = c.op(op, &[&emb]);
        let t = c.cast_dt(&t);
        out.push(c.op("Unsqueeze", &[&t, &ax1])); // [B, 1, T, hd]
    }
    (out[0].clone(), out[1].clone())
}

/// What every layer's attention shares: the mask and the score constants.
struct AttnConsts {
    /// `[B, 1, T, S]` booleans: key j is visible to query t iff j <= P + t (P = S - T past
    /// positions) and attention_mask[j] = 1.
    allowed: String,
    /// f32::MIN for masked scores, sqrt(head_dim) to divide scores by.
    neg: String,
    sqrt_hd: String,
    /// When kv heads are shared (heads > kv heads): the axis, repeat counts and shape that
    /// turn `[B, kv, S, hd]` into `[B, heads, S, hd]`. Made only for such models: an unused
    /// initializer makes ONNX Runtime warn at every load.
    repeat_kv: Option<(String, String, String)>,
}

fn plain_attention_consts(c: &mut Ctx, x_in: &str, mask: &str, cfg: &LlamaConfig) -> AttnConsts {
    let t_len = c.op_a(
        "Shape",
        &[x_in],
        vec![("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let s_len = c.op_a(
        "Shape",
        &[mask],
        vec![("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let p_len = c.op("Sub", &[&s_len, &t_len]);
    let ax0 = c.g.const_i64(&[0]);
    let ax1 = c.g.const_i64(&[1]);
    let t_s = c.op("Squeeze", &[&t_len, &ax0]);
    let s_s = c.op("Squeeze", &[&s_len, &ax0]);
    let zero = c.g.scalar_i64(0);
    let one = c.g.scalar_i64(1);
    let kpos = c.op("Range", &[&zero, &s_s, &one]); // [S]
    let qpos = c.op("Range", &[&zero, &t_s, &one]); // [T]
    let qpos = c.op("Add", &[&qpos, &p_len]);
    let kpos = c.op("Unsqueeze", &[&kpos, &ax0]); // [1, S]
    let qpos = c.op("Unsqueeze", &[&qpos, &ax1]); // [T, 1]
    let causal = c.op("LessOrEqual", &[&kpos, &qpos]); // [T, S]
    let keep = c.op_a(
        "Cast",
        &[mask],
        vec![("to", Attr::Int(ElemType::Bool as i64))],
    );
    let ax12 = c.g.const_i64(&[1, 2]);
    let keep = c.op("Unsqueeze", &[&keep, &ax12]); // [B, 1, 1, S]
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let n_rep = nh / nkv;
    AttnConsts {
        allowed: c.op("And", &[&causal, &keep]), // [B, 1, T, S]
        neg: c.g.const_float(ElemType::F32, &[], &[f32::MIN]),
        sqrt_hd: c
            .g
            .const_float(ElemType::F32, &[], &[(hd as f64).sqrt() as f32]),
        repeat_kv: (n_rep > 1).then(|| {
            (
                c.g.const_i64(&[2]),
                c.g.const_i64(&[1, 1, n_rep as i64, 1, 1]),
                c.g.const_i64(&[0, nh as i64, -1, hd as i64]),
            )
        }),
    }
}

/// Self-attention of layer `l` on the normed hidden state `h`, up to (not including)
/// o_proj: `[B, T, heads*hd]`. Appends the new keys (after RoPE) and values to the layer's
/// past as `present.l.{key,value}`.
fn plain_attention(
    c: &mut Ctx,
    l: usize,
    h: &str,
    (past_k, past_v): &(String, String),
    (cos, sin): &(String, String),
    consts: &AttnConsts,
    cfg: &LlamaConfig,
) -> Result<String, ExportError> {
    let (hsz, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
    );
    let lp = format!("model.layers.{l}.self_attn");
    let q = c.linear(h, &format!("{lp}.q_proj"), hsz, nh * hd, false)?;
    let k = c.linear(h, &format!("{lp}.k_proj"), hsz, nkv * hd, false)?;
    let v = c.linear(h, &format!("{lp}.v_proj"), hsz, nkv * hd, false)?;
    let q = c.split_heads(&q, nh, hd, &[0, 2, 1, 3]);
    let k = c.split_heads(&k, nkv, hd, &[0, 2, 1, 3]);
    let v = c.split_heads(&v, nkv, hd, &[0, 2, 1, 3]);
    let q = rope(c, &q, cos, sin);
    let k = rope(c, &k, cos, sin);
    let concat = |c: &mut Ctx, past: &str, new: &str, name: String| {
        c.g.node_named(
            "Concat",
            &[past, new],
            vec![("axis", Attr::Int(2))],
            Some(&name),
        )
    };
    let mut k_all = concat(c, past_k, &k, names::present_key(l));
    let mut v_all = concat(c, past_v, &v, names::present_value(l));
    if let Some((ax2, rep, rep_shape)) = &consts.repeat_kv {
        // [B, kv, S, hd] -> [B, kv, 1, S, hd] -> [B, kv, rep, S, hd] -> [B, heads, S, hd]
        for t in [&mut k_all, &mut v_all] {
            let u = c.op("Unsqueeze", &[t, ax2]);
            let e = c.op("Expand", &[&u, rep]);
            *t = c.op("Reshape", &[&e, rep_shape]);
        }
    }
    let kt = c.op_a(
        "Transpose",
        &[&k_all],
        vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
    );
    let scores = c.op("MatMul", &[&q, &kt]); // [B, heads, T, S]
    let scores = c.cast_f32(&scores);
    let scores = c.op("Div", &[&scores, &consts.sqrt_hd]);
    let scores = c.op("Where", &[&consts.allowed, &scores, &consts.neg]);
    let probs = c.softmax_f32(&scores);
    let o = c.op("MatMul", &[&probs, &v_all]);
    Ok(c.merge_heads(&o, nh * hd))
}

/// The Llama decoder in the `fused` flavour: ONNX Runtime contrib ops and a cache updated
/// in place.
///
/// Contract (see `manifest::Flavour::Fused`):
/// - inputs: `inputs_embeds [B,S,H]`, `seqlens_k [B]` int32 (per row, tokens in the cache
///   after this call minus one), `total_sequence_length` int32 scalar (the largest
///   `seqlens_k + 1`), and per layer `past_key_values.L.{key,value} [B,kv,C,hd]`: buffers of
///   a fixed capacity C that the caller binds to `present.L.{key,value}` as well, so
///   GroupQueryAttention writes the new positions in place.
/// - a prompt call has S = the longest prompt, rows padded on the RIGHT (row b's tokens
///   at 0..seqlens_k[b]); a step call has S = 1 and appends at position seqlens_k[b].
///   Positions for RoPE come from `seqlens_k` (GroupQueryAttention's own rule: the real
///   tokens of a row are 0, 1, ...: the reference's left-padded `cumsum(mask) - 1`).
/// - output `logits [B,V]` fp32 at each row's last real position, `min(seqlens_k[b], S-1)`
///   (seqlens_k[b] in a prompt call, 0 in a step call).
/// - numerics: RMSNorm as SimplifiedLayerNormalization, residual adds fused into
///   SkipSimplifiedLayerNormalization, RoPE from cos/sin tables computed at export exactly
///   as transformers 4.37 fills its cache (f32 `t * inv_freq`, then cos/sin), scores scaled
///   by 1/sqrt(head_dim) and softmax in fp32 inside GroupQueryAttention.
/// - fp16: the residual stream between the layers and the norms on it are fp32 (norm
///   weights stored fp32); only the norms' outputs go back to fp16, for the MatMuls. With
///   the residual in fp16 (one rounding per sub-layer, as the fp16 reference does) the
///   fused decoder drifted from the fp32 reference about 1.5x as far as the plain one at
///   every layer (`examples/layer_drift.rs`, README "fp16"): ONNX Runtime's CPU provider
///   runs the plain graph's fp16 Adds and norms in fp32 and drops the round trips to fp16
///   between them, while the contrib ops' fp16 kernels round each output.
pub fn build_fused_decoder(
    dir: &Path,
    file: &str,
    llava: &LlavaConfig,
    dtype: Dtype,
    w: &Weights,
    probes: Probes,
) -> Result<BuiltGraph, ExportError> {
    let mut c = Ctx::new("decoder", dir, file, w, dtype)?;
    let mut taps = Taps::new(probes);
    let cfg = &llava.llama;
    let (hsz, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
    );
    let eps = cfg.rms_norm_eps;
    let dt = c.dt;
    let x_in = c.g.input(
        names::INPUTS_EMBEDS,
        dt,
        vec!["batch".into(), "seq".into(), hsz.into()],
    );
    let seqlens =
        c.g.input(names::SEQLENS_K, ElemType::I32, vec!["batch".into()]);
    let total =
        c.g.input(names::TOTAL_SEQUENCE_LENGTH, ElemType::I32, vec![]);
    let past = c.past_inputs(cfg, "capacity");
    let (cos, sin) = fused_rope_tables(&mut c, cfg)?;

    // The residual stream `x` and the norms on it are fp32 (see the doc above). Probes tap
    // the fp32 values: a second reader of a Cast to fp16 keeps ONNX Runtime from dropping
    // the round trip that the MatMul after it would otherwise skip on the CPU.
    let mut x = c.cast_f32(&x_in);
    let mut h32 = c.simplified_norm(&x, "model.layers.0.input_layernorm.weight", hsz, eps)?;
    for (l, (past_k, past_v)) in past.iter().enumerate() {
        let lp = format!("model.layers.{l}");
        taps.layer(&mut c, l, "attn_norm", &h32, hsz);
        let h = c.cast_dt(&h32);
        let q = c.linear(&h, &format!("{lp}.self_attn.q_proj"), hsz, nh * hd, false)?;
        let k = c.linear(&h, &format!("{lp}.self_attn.k_proj"), hsz, nkv * hd, false)?;
        let v = c.linear(&h, &format!("{lp}.self_attn.v_proj"), hsz, nkv * hd, false)?;
        let attn = c.g.contrib_node(
            "GroupQueryAttention",
            &[&q, &k, &v, past_k, past_v, &seqlens, &total, &cos, &sin],
            vec![
                ("num_heads", Attr::Int(nh as i64)),
                ("kv_num_heads", Attr::Int(nkv as i64)),
                ("do_rotary", Attr::Int(1)),
                ("rotary_interleaved", Attr::Int(0)),
            ],
            &[
                None,
                Some(&names::present_key(l)),
                Some(&names::present_value(l)),
            ],
        );
        taps.layer(&mut c, l, "attn", &attn[0], nh * hd);
        let o_proj = format!("{lp}.self_attn.o_proj");
        let o = c.linear(&attn[0], &o_proj, nh * hd, hsz, false)?;
        let o = c.cast_f32(&o);
        let norm = format!("{lp}.post_attention_layernorm.weight");
        (h32, x) = c.skip_norm(&x, &o, &norm, hsz, eps)?;
        taps.layer(&mut c, l, "attn_resid", &x, hsz);
        taps.layer(&mut c, l, "mlp_norm", &h32, hsz);
        let h = c.cast_dt(&h32);
        let d = c.swiglu_mlp(&h, &lp, cfg)?;
        let d = c.cast_f32(&d);
        taps.layer(&mut c, l, "mlp", &d, hsz);
        if l + 1 < cfg.num_layers {
            let next = format!("model.layers.{}.input_layernorm.weight", l + 1);
            (h32, x) = c.skip_norm(&x, &d, &next, hsz, eps)?;
        } else {
            x = c.op("Add", &[&x, &d]);
        }
        taps.layer(&mut c, l, "mlp_resid", &x, hsz);
    }

    let last = fused_last_positions(&mut c, &x, &x_in, &seqlens);
    let last = c.simplified_norm(&last, "model.norm.weight", hsz, eps)?;
    let final_dims = vec!["batch".into(), hsz.into()];
    taps.tap(&mut c, PROBE_FINAL_NORM.into(), &last, final_dims);
    let last = c.cast_dt(&last);
    c.logits_and_presents(&last, cfg, "capacity")?;
    taps.declare(&mut c);
    finish(c, dir, file)
}

/// GroupQueryAttention's cos/sin tables `[max_positions, hd/2]`, as LlamaRotaryEmbedding
/// fills its cache: f32 products `t * inv_freq`, cos/sin rounded to f32, then to the graph
/// dtype.
fn fused_rope_tables(c: &mut Ctx, cfg: &LlamaConfig) -> Result<(String, String), ExportError> {
    let dt = c.dt;
    let inv_freq = rope_inv_freq(cfg);
    let positions = cfg.max_position_embeddings;
    let freqs: Vec<f32> = (0..positions)
        .flat_map(|p| inv_freq.iter().map(move |&f| p as f32 * f))
        .collect();
    let mut tables = Vec::new();
    for (name, f) in [
        ("rope.cos", f64::cos as fn(f64) -> f64),
        ("rope.sin", f64::sin as fn(f64) -> f64),
    ] {
        let values: Vec<f32> = freqs.iter().map(|&a| f(a as f64) as f32).collect();
        let table = c.g.weight(name, dt, &[positions, inv_freq.len()], |out| {
            for v in &values {
                match dt {
                    ElemType::F16 => out.write_all(&half::f16::from_f32(*v).to_le_bytes())?,
                    _ => out.write_all(&v.to_le_bytes())?,
                }
            }
            Ok(())
        })?;
        tables.push(table);
    }
    Ok((tables[0].clone(), tables[1].clone()))
}

/// Each row's last real position of `x [B,S,H]`, `min(seqlens_k, S - 1)`: `[B,H]`.
fn fused_last_positions(c: &mut Ctx, x: &str, x_in: &str, seqlens: &str) -> String {
    let s_len = c.op_a(
        "Shape",
        &[x_in],
        vec![("start", Attr::Int(1)), ("end", Attr::Int(2))],
    );
    let one = c.g.const_i64(&[1]);
    let s_last = c.op("Sub", &[&s_len, &one]);
    let lens = c.op_a(
        "Cast",
        &[seqlens],
        vec![("to", Attr::Int(ElemType::I64 as i64))],
    );
    let idx = c.op("Min", &[&lens, &s_last]);
    let idx = c.op("Unsqueeze", &[&idx, &one]); // [B, 1]
    c.op_a("GatherND", &[x, &idx], vec![("batch_dims", Attr::Int(1))])
}

/// RoPE's `inv_freq[i] = 1 / theta^(2i / hd)`, computed in f32 like transformers 4.37.
fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let hd = cfg.head_dim;
    (0..hd / 2)
        .map(|i| 1.0f32 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
        .collect()
}

/// `x * cos + rotate_half(x) * sin`, rotate_half(x) = cat(-x2, x1).
fn rope(c: &mut Ctx, x: &str, cos: &str, sin: &str) -> String {
    let halves =
        c.g.node_multi("Split", &[x], vec![("axis", Attr::Int(-1))], 2);
    let neg = c.op("Neg", &[&halves[1]]);
    let rot = c.op_a("Concat", &[&neg, &halves[0]], vec![("axis", Attr::Int(-1))]);
    let a = c.op("Mul", &[x, cos]);
    let b = c.op("Mul", &[&rot, sin]);
    c.op("Add", &[&a, &b])
}
