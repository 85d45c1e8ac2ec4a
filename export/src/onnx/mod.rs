//! A small ONNX writer: the protobuf subset a graph of standard ops needs, and a graph
//! builder that streams weights to ONNX external data.
//!
//! Encoding: hand-written protobuf (varints, length-delimited fields) for ModelProto,
//! GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto and the type/shape
//! messages, following onnx.proto (proto2: repeated scalars are written unpacked, which
//! every protobuf parser accepts). Field numbers come from [`field`], which the graph
//! checker in `tensorrt` reads with too. Opset 17 of the default domain, IR version 8; version 1
//! of ONNX Runtime's `com.microsoft` domain is imported only by graphs that use it.
//!
//! Weights: every weight initializer goes to external data, `<graph>.onnx.data` next to the
//! graph, each tensor at a 4096-byte aligned offset (`location`/`offset`/`length` entries),
//! written as soon as it is added, so the builder never holds more than one tensor; only
//! small constants (shapes, scalars, axes: under 1 KiB) are stored inside the `.onnx`.
//! External data for every weight (rather than only past 2 GB) keeps one code path for the
//! tiny demo model and the 13B one, and lets ONNX Runtime memory-map weights.
//!
//! Files: [`field`] (field numbers), `proto` (the encoding), `builder` ([`GraphBuilder`]).

mod builder;
pub mod field;
mod proto;

pub use builder::{GraphBuilder, OnnxError};
pub use proto::{Attr, Dim, Node, Tensor, TensorData, ValueInfo};

pub const OPSET: i64 = 17;
/// ONNX Runtime's contrib operator domain (GroupQueryAttention, SkipSimplifiedLayerNormalization).
pub const CONTRIB_DOMAIN: &str = "com.microsoft";
pub const IR_VERSION: i64 = 8;
/// Offsets of external tensors are multiples of this (page size: lets ORT map them).
const ALIGN: u64 = 4096;

/// ONNX `TensorProto.DataType` values used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    F32 = 1,
    I32 = 6,
    I64 = 7,
    Bool = 9,
    F16 = 10,
}

impl ElemType {
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::I32 => 4,
            ElemType::I64 => 8,
            ElemType::Bool => 1,
            ElemType::F16 => 2,
        }
    }
}
