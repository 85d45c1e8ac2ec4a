//! What TensorRT's ONNX parser will take, checked on a graph file before a TensorRT
//! machine sees it.
//!
//! The rules are those of TensorRT 10's parser as onnx-tensorrt documents them
//! (`docs/operators.md`, TensorRT 10.0): opsets 9 to 20, operators of the standard domain
//! from its support list, and the inputs it needs as build-time constants (`axes` of
//! `Slice`, `Squeeze`, `Unsqueeze`, `Pad` and the reductions, `axis` of `CumSum`, `K` of
//! `TopK`). A node outside them is not an error for ONNX Runtime: its TensorRT provider
//! hands such nodes to CUDA or the CPU, so the graph still runs, in pieces.
//!
//! Contract: [`check`] reads a serialized `ModelProto` (weights may be external; only the
//! graph structure is read) and returns one [`Finding`] per rule broken, empty when the
//! whole graph can become one TensorRT engine.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::onnx::field;
use crate::wire::{Reader, Value, WireError};

/// The opsets of the standard domain TensorRT 10's parser supports.
pub const OPSETS: std::ops::RangeInclusive<i64> = 9..=20;

/// Standard-domain operators TensorRT 10's parser supports (onnx-tensorrt
/// `docs/operators.md`, rows marked Y).
const SUPPORTED: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DeformConv",
    "DepthToSpace",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GridSample",
    "GroupNormalization",
    "GRU",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "If",
    "ImageScaler",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "Loop",
    "LRN",
    "LSTM",
    "LpNormalization",
    "LpPool",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "NonMaxSuppression",
    "NonZero",
    "Not",
    "OneHot",
    "Or",
    "Pad",
    "ParametricSoftplus",
    "Pow",
    "PRelu",
    "QuantizeLinear",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "ReverseSequence",
    "RNN",
    "RoiAlign",
    "Round",
    "ScaledTanh",
    "Scan",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// Inputs the parser needs as build-time constants: (operator, input index, its name).
const CONSTANT_INPUTS: &[(&str, usize, &str)] = &[
    ("Slice", 3, "axes"),
    ("Squeeze", 1, "axes"),
    ("Unsqueeze", 1, "axes"),
    ("Pad", 3, "axes"),
    ("CumSum", 1, "axis"),
    ("TopK", 1, "K"),
    ("ReduceL1", 1, "axes"),
    ("ReduceL2", 1, "axes"),
    ("ReduceLogSum", 1, "axes"),
    ("ReduceLogSumExp", 1, "axes"),
    ("ReduceMax", 1, "axes"),
    ("ReduceMean", 1, "axes"),
    ("ReduceMin", 1, "axes"),
    ("ReduceProd", 1, "axes"),
    ("ReduceSum", 1, "axes"),
    ("ReduceSumSquare", 1, "axes"),
];

/// One rule broken: the node (name or, unnamed, its first output) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub node: String,
    pub op: String,
    pub reason: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.node, self.op, self.reason)
    }
}

/// A graph file [`check_file`] could not read or parse.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Wire { path: PathBuf, source: WireError },
}

/// [`check`] on the graph file at `path`.
pub fn check_file(path: &Path) -> Result<Vec<Finding>, CheckError> {
    let bytes = crate::files::read_regular(path).map_err(|source| CheckError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check(&bytes).map_err(|source| CheckError::Wire {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Default)]
struct Node {
    name: String,
    op: String,
    domain: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// Checks a serialized ONNX model; see the module contract.
pub fn check(model: &[u8]) -> Result<Vec<Finding>, WireError> {
    let mut graph: Option<(&[u8], usize)> = None;
    let mut opset = None;
    let mut r = Reader::new(model, 0);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (field::model::GRAPH, Value::Bytes(b, off)) => graph = Some((b, off)),
            (field::model::OPSET_IMPORT, Value::Bytes(b, off)) => {
                let (mut domain, mut version) = (String::new(), 0i64);
                let mut o = Reader::new(b, off);
                while let Some((f, v)) = o.next_field()? {
                    match (f, v) {
                        (field::opset_id::DOMAIN, Value::Bytes(s, _)) => {
                            domain = String::from_utf8_lossy(s).into()
                        }
                        (field::opset_id::VERSION, Value::Varint(x)) => version = x as i64,
                        _ => {}
                    }
                }
                if domain.is_empty() || domain == "ai.onnx" {
                    opset = Some(version);
                }
            }
            _ => {}
        }
    }
    let Some((graph, graph_offset)) = graph else {
        return Err(WireError {
            offset: 0,
            reason: "no graph in the model".into(),
        });
    };

    let mut nodes = Vec::new();
    // Initializers and Constant outputs: what the parser sees at build time.
    let mut constants = HashSet::new();
    let mut g = Reader::new(graph, graph_offset);
    while let Some((field, value)) = g.next_field()? {
        match (field, value) {
            (field::graph::NODE, Value::Bytes(b, off)) => nodes.push(read_node(b, off)?),
            (field::graph::INITIALIZER, Value::Bytes(b, off)) => {
                constants.extend(crate::graph_io::initializer_name(b, off)?);
            }
            _ => {}
        }
    }
    for node in nodes
        .iter()
        .filter(|n| n.op == "Constant" && is_standard(n))
    {
        constants.extend(node.outputs.iter().cloned());
    }

    let mut findings = Vec::new();
    match opset {
        Some(v) if OPSETS.contains(&v) => {}
        other => findings.push(Finding {
            node: "(model)".into(),
            op: "opset_import".into(),
            reason: match other {
                Some(v) => format!("opset {v}; TensorRT 10 parses opsets 9 to 20"),
                None => "no standard-domain opset".into(),
            },
        }),
    }
    for node in &nodes {
        let label = if node.name.is_empty() {
            node.outputs.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let mut broken = |reason: String| {
            findings.push(Finding {
                node: label.clone(),
                op: node.op.clone(),
                reason,
            })
        };
        if !is_standard(node) {
            broken(format!(
                "operator of domain `{}`: TensorRT needs a plugin for it",
                node.domain
            ));
            continue;
        }
        if !SUPPORTED.contains(&node.op.as_str()) {
            broken("not an operator TensorRT's ONNX parser supports".into());
            continue;
        }
        for &(op, index, what) in CONSTANT_INPUTS {
            let input = node.inputs.get(index).filter(|name| !name.is_empty());
            if node.op == op && input.is_some_and(|name| !constants.contains(name)) {
                broken(format!("`{what}` must be an initializer or a Constant"));
            }
        }
        if node.op == "LayerNormalization" && node.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            broken("only the first output `Y` is supported".into());
        }
    }
    Ok(findings)
}

fn is_standard(node: &Node) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

/// The NodeProto fields the checks need.
fn read_node(buf: &[u8], offset: usize) -> Result<Node, WireError> {
    let mut node = Node::default();
    let mut r = Reader::new(buf, offset);
    while let Some((field, value)) = r.next_field()? {
        let Value::Bytes(b, _) = value else { continue };
        let text = || String::from_utf8_lossy(b).into_owned();
        match field {
            field::node::INPUT => node.inputs.push(text()),
            field::node::OUTPUT => node.outputs.push(text()),
            field::node::NAME => node.name = text(),
            field::node::OP_TYPE => node.op = text(),
            field::node::DOMAIN => node.domain = text(),
            _ => {}
        }
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{Dim, ElemType, GraphBuilder};

    /// Builds a graph with `build` and checks its file.
    fn findings(build: impl FnOnce(&mut GraphBuilder, &str)) -> Vec<Finding> {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GraphBuilder::new("t", dir.path(), "t.onnx").unwrap();
        let x = g.input(
            "x",
            ElemType::F32,
            vec![Dim::Named("b".into()), Dim::Fixed(4)],
        );
        build(&mut g, &x);
        g.output("y", ElemType::F32, vec![]);
        g.finish(&dir.path().join("t.onnx")).unwrap();
        check_file(&dir.path().join("t.onnx")).unwrap()
    }

    #[test]
    fn standard_operators_with_constant_axes_pass() {
        let found = findings(|g, x| {
            let axes = g.const_i64(&[1]);
            let u = g.node("Unsqueeze", &[x, &axes], vec![]);
            let (starts, ends) = (g.const_i64(&[0]), g.const_i64(&[2]));
            let s = g.node("Slice", &[&u, &starts, &ends, &axes], vec![]);
            g.node_named("Squeeze", &[&s, &axes], vec![], Some("y"));
        });
        assert_eq!(found, vec![]);
    }

    #[test]
    fn axes_computed_at_run_time_are_named() {
        let found = findings(|g, x| {
            let shape = g.node("Shape", &[x], vec![]);
            g.node_named("Unsqueeze", &[x, &shape], vec![], Some("y"));
        });
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].op, "Unsqueeze");
        assert!(
            found[0].reason.contains("`axes` must be an initializer"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn contrib_and_unsupported_operators_are_named() {
        let found = findings(|g, x| {
            let n = g.contrib_node("SimplifiedLayerNormalization", &[x, x], vec![], &[None]);
            let u = g.node("Unique", &[&n[0]], vec![]);
            g.node_named("Identity", &[&u], vec![], Some("y"));
        });
        let ops: Vec<&str> = found.iter().map(|f| f.op.as_str()).collect();
        assert_eq!(ops, ["SimplifiedLayerNormalization", "Unique"], "{found:?}");
        assert!(found[0].reason.contains("com.microsoft"), "{}", found[0]);
    }

    #[test]
    fn a_file_that_is_not_a_model_is_an_error() {
        assert!(check(b"").is_err());
        assert!(check(&[0x0a, 0xff]).is_err());
    }
}
