//! Decoder probes: extra fp32 outputs of the hidden states inside each layer, for
//! measuring where two graphs drift apart (`examples/layer_drift.rs`). An export never
//! has them; a probed graph computes every other value as the unprobed one.

use super::Ctx;
use crate::onnx::{Attr, Dim, ElemType};

/// Extra decoder outputs for measurement (`examples/layer_drift.rs`); an export never has
/// them. With [`Probes::On`] the graph also outputs, after its contract's outputs, fp32
/// copies of the hidden states at each point of [`PROBE_POINTS`] per layer L
/// (`probe.L.POINT [batch, seq, dim]`, see [`probe_name`]) and of the final norm of the
/// last position (`probe.final_norm [batch, hidden]`). Probes change no other value: the
/// tap is a Cast of a tensor that the graph computes anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probes {
    #[default]
    Off,
    On,
}

/// The probe points of one layer, in graph order: the input norm (what q/k/v see), the
/// attention output (before o_proj), the residual after attention, the post-attention
/// norm, the MLP output, the residual after the MLP (the layer's output).
pub const PROBE_POINTS: [&str; 6] = [
    "attn_norm",
    "attn",
    "attn_resid",
    "mlp_norm",
    "mlp",
    "mlp_resid",
];

/// The graph output of probe `point` of layer `layer`.
pub fn probe_name(layer: usize, point: &str) -> String {
    format!("probe.{layer}.{point}")
}

/// The graph output of the final norm probe.
pub const PROBE_FINAL_NORM: &str = "probe.final_norm";

/// Probe outputs collected while a decoder is built, declared after its contract's outputs.
pub(super) struct Taps {
    on: bool,
    outputs: Vec<(String, Vec<Dim>)>,
}

impl Taps {
    pub(super) fn new(probes: Probes) -> Taps {
        Taps {
            on: probes == Probes::On,
            outputs: Vec::new(),
        }
    }

    /// Taps `x` (`[batch, seq, dim]`) as probe `point` of layer `layer`.
    pub(super) fn layer(&mut self, c: &mut Ctx, layer: usize, point: &str, x: &str, dim: usize) {
        let dims = vec!["batch".into(), "seq".into(), dim.into()];
        self.tap(c, probe_name(layer, point), x, dims);
    }

    pub(super) fn tap(&mut self, c: &mut Ctx, name: String, x: &str, dims: Vec<Dim>) {
        if self.on {
            let to = ("to", Attr::Int(ElemType::F32 as i64));
            c.g.node_named("Cast", &[x], vec![to], Some(&name));
            self.outputs.push((name, dims));
        }
    }

    pub(super) fn declare(self, c: &mut Ctx) {
        for (name, dims) in self.outputs {
            c.g.output(&name, ElemType::F32, dims);
        }
    }
}
