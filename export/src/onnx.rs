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

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::wire;

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

// ---------------------------------------------------------------- field numbers

/// The onnx.proto field numbers this writer uses and `tensorrt`'s reader reads: one
/// declaration for both (onnx/onnx.proto, IR version 8). Messages are modules, fields
/// are constants; enum values a field takes sit beside it.
pub mod field {
    /// ModelProto.
    pub mod model {
        pub const IR_VERSION: u32 = 1;
        pub const PRODUCER_NAME: u32 = 2;
        pub const PRODUCER_VERSION: u32 = 3;
        pub const GRAPH: u32 = 7;
        pub const OPSET_IMPORT: u32 = 8;
    }
    /// OperatorSetIdProto.
    pub mod opset_id {
        pub const DOMAIN: u32 = 1;
        pub const VERSION: u32 = 2;
    }
    /// GraphProto.
    pub mod graph {
        pub const NODE: u32 = 1;
        pub const NAME: u32 = 2;
        pub const INITIALIZER: u32 = 5;
        pub const INPUT: u32 = 11;
        pub const OUTPUT: u32 = 12;
    }
    /// NodeProto.
    pub mod node {
        pub const INPUT: u32 = 1;
        pub const OUTPUT: u32 = 2;
        pub const NAME: u32 = 3;
        pub const OP_TYPE: u32 = 4;
        pub const ATTRIBUTE: u32 = 5;
        pub const DOMAIN: u32 = 7;
    }
    /// AttributeProto, and the AttributeType values of its `type`.
    pub mod attribute {
        pub const NAME: u32 = 1;
        pub const F: u32 = 2;
        pub const I: u32 = 3;
        pub const T: u32 = 5;
        pub const INTS: u32 = 8;
        pub const TYPE: u32 = 20;
        pub const TYPE_FLOAT: i64 = 1;
        pub const TYPE_INT: i64 = 2;
        pub const TYPE_TENSOR: i64 = 4;
        pub const TYPE_INTS: i64 = 7;
    }
    /// TensorProto, and the DataLocation value of its `data_location`.
    pub mod tensor {
        pub const DIMS: u32 = 1;
        pub const DATA_TYPE: u32 = 2;
        pub const NAME: u32 = 8;
        pub const RAW_DATA: u32 = 9;
        pub const EXTERNAL_DATA: u32 = 13;
        pub const DATA_LOCATION: u32 = 14;
        pub const LOCATION_EXTERNAL: i64 = 1;
    }
    /// StringStringEntryProto (TensorProto.external_data).
    pub mod string_entry {
        pub const KEY: u32 = 1;
        pub const VALUE: u32 = 2;
    }
    /// ValueInfoProto.
    pub mod value_info {
        pub const NAME: u32 = 1;
        pub const TYPE: u32 = 2;
    }
    /// TypeProto.
    pub mod type_proto {
        pub const TENSOR_TYPE: u32 = 1;
    }
    /// TypeProto.Tensor.
    pub mod tensor_type {
        pub const ELEM_TYPE: u32 = 1;
        pub const SHAPE: u32 = 2;
    }
    /// TensorShapeProto and its Dimension.
    pub mod shape {
        pub const DIM: u32 = 1;
        pub const DIM_VALUE: u32 = 1;
        pub const DIM_PARAM: u32 = 2;
    }
}

// ---------------------------------------------------------------- protobuf primitives

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn field_varint(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, wire::VARINT);
    varint(out, v as u64);
}

fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, wire::LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_f32(out: &mut Vec<u8>, field: u32, v: f32) {
    key(out, field, wire::FIXED32);
    out.extend_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------- messages

#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Tensor(Tensor),
}

/// An initializer or a `value` attribute: inline bytes or a place in the external file.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<i64>,
    pub data: TensorData,
}

#[derive(Debug, Clone)]
pub enum TensorData {
    Raw(Vec<u8>),
    External {
        location: String,
        offset: u64,
        length: u64,
    },
}

impl Tensor {
    fn encode(&self) -> Vec<u8> {
        use field::{string_entry, tensor};
        let mut out = Vec::new();
        for d in &self.dims {
            field_varint(&mut out, tensor::DIMS, *d);
        }
        field_varint(&mut out, tensor::DATA_TYPE, self.elem as i64);
        field_bytes(&mut out, tensor::NAME, self.name.as_bytes());
        match &self.data {
            TensorData::Raw(bytes) => field_bytes(&mut out, tensor::RAW_DATA, bytes),
            TensorData::External {
                location,
                offset,
                length,
            } => {
                for (k, v) in [
                    ("location", location.clone()),
                    ("offset", offset.to_string()),
                    ("length", length.to_string()),
                ] {
                    let mut entry = Vec::new();
                    field_bytes(&mut entry, string_entry::KEY, k.as_bytes());
                    field_bytes(&mut entry, string_entry::VALUE, v.as_bytes());
                    field_bytes(&mut out, tensor::EXTERNAL_DATA, &entry);
                }
                field_varint(&mut out, tensor::DATA_LOCATION, tensor::LOCATION_EXTERNAL);
            }
        }
        out
    }
}

fn encode_attr(name: &str, attr: &Attr) -> Vec<u8> {
    use field::attribute as a;
    let mut out = Vec::new();
    field_bytes(&mut out, a::NAME, name.as_bytes());
    match attr {
        Attr::Float(f) => {
            field_f32(&mut out, a::F, *f);
            field_varint(&mut out, a::TYPE, a::TYPE_FLOAT);
        }
        Attr::Int(i) => {
            field_varint(&mut out, a::I, *i);
            field_varint(&mut out, a::TYPE, a::TYPE_INT);
        }
        Attr::Tensor(t) => {
            field_bytes(&mut out, a::T, &t.encode());
            field_varint(&mut out, a::TYPE, a::TYPE_TENSOR);
        }
        Attr::Ints(v) => {
            for i in v {
                field_varint(&mut out, a::INTS, *i);
            }
            field_varint(&mut out, a::TYPE, a::TYPE_INTS);
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: String,
    /// Operator domain: "" (ONNX) or [`CONTRIB_DOMAIN`].
    pub domain: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    fn encode(&self) -> Vec<u8> {
        use field::node;
        let mut out = Vec::new();
        for i in &self.inputs {
            field_bytes(&mut out, node::INPUT, i.as_bytes());
        }
        for o in &self.outputs {
            field_bytes(&mut out, node::OUTPUT, o.as_bytes());
        }
        field_bytes(&mut out, node::NAME, self.name.as_bytes());
        field_bytes(&mut out, node::OP_TYPE, self.op.as_bytes());
        for (name, attr) in &self.attrs {
            field_bytes(&mut out, node::ATTRIBUTE, &encode_attr(name, attr));
        }
        if !self.domain.is_empty() {
            field_bytes(&mut out, node::DOMAIN, self.domain.as_bytes());
        }
        out
    }
}

/// One dimension of a graph input/output: fixed, named (dynamic), or undeclared (an
/// empty Dimension message: met when reading graphs, never written by the exporter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Named(String),
    Unknown,
}

impl From<usize> for Dim {
    fn from(v: usize) -> Dim {
        Dim::Fixed(v as i64)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Dim {
        Dim::Named(v.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct ValueInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    fn encode(&self) -> Vec<u8> {
        use field::{shape, tensor_type, type_proto, value_info};
        let mut dims = Vec::new();
        for d in &self.dims {
            let mut dim = Vec::new();
            match d {
                Dim::Fixed(v) => field_varint(&mut dim, shape::DIM_VALUE, *v),
                Dim::Named(s) => field_bytes(&mut dim, shape::DIM_PARAM, s.as_bytes()),
                Dim::Unknown => {}
            }
            field_bytes(&mut dims, shape::DIM, &dim);
        }
        let mut tensor = Vec::new();
        field_varint(&mut tensor, tensor_type::ELEM_TYPE, self.elem as i64);
        field_bytes(&mut tensor, tensor_type::SHAPE, &dims);
        let mut type_bytes = Vec::new();
        field_bytes(&mut type_bytes, type_proto::TENSOR_TYPE, &tensor);
        let mut out = Vec::new();
        field_bytes(&mut out, value_info::NAME, self.name.as_bytes());
        field_bytes(&mut out, value_info::TYPE, &type_bytes);
        out
    }
}

// ---------------------------------------------------------------- builder

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("weight {name}: {got} bytes written, {expected} expected for its shape")]
    WeightSize {
        name: String,
        got: u64,
        expected: u64,
    },
}

/// Builds one graph: nodes in topological order (the order they are added), inputs,
/// outputs, and initializers whose bytes go straight to the external data file.
pub struct GraphBuilder {
    name: String,
    nodes: Vec<Node>,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    initializers: Vec<Tensor>,
    counter: usize,
    data_path: PathBuf,
    data_location: String,
    data: BufWriter<File>,
    data_len: u64,
}

impl GraphBuilder {
    /// `dir/{file_stem}.onnx.data` is created now and filled as weights are added.
    pub fn new(name: &str, dir: &Path, onnx_file: &str) -> Result<GraphBuilder, OnnxError> {
        let data_location = format!("{onnx_file}.data");
        let data_path = dir.join(&data_location);
        let file = File::create(&data_path).map_err(|source| OnnxError::Io {
            path: data_path.clone(),
            source,
        })?;
        Ok(GraphBuilder {
            name: name.to_string(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            counter: 0,
            data_path,
            data_location,
            data: BufWriter::with_capacity(1 << 20, file),
            data_len: 0,
        })
    }

    pub fn input(&mut self, name: &str, elem: ElemType, dims: Vec<Dim>) -> String {
        self.inputs.push(ValueInfo {
            name: name.to_string(),
            elem,
            dims,
        });
        name.to_string()
    }

    pub fn output(&mut self, name: &str, elem: ElemType, dims: Vec<Dim>) {
        self.outputs.push(ValueInfo {
            name: name.to_string(),
            elem,
            dims,
        });
    }

    /// A fresh tensor name `{hint}_{n}`.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node with one output named `out` (or a fresh name when `out` is None).
    pub fn node_named(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        out: Option<&str>,
    ) -> String {
        let output = match out {
            Some(o) => o.to_string(),
            None => self.fresh(&op.to_lowercase()),
        };
        self.push_node("", op, inputs, attrs, vec![output.clone()]);
        output
    }

    /// Adds a node with one fresh output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_named(op, inputs, attrs, None)
    }

    /// Adds a node with `n` fresh outputs.
    pub fn node_multi(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        n: usize,
    ) -> Vec<String> {
        let outputs: Vec<String> = (0..n).map(|_| self.fresh(&op.to_lowercase())).collect();
        self.push_node("", op, inputs, attrs, outputs.clone());
        outputs
    }

    /// Adds an ONNX Runtime contrib operator (domain [`CONTRIB_DOMAIN`]); each output is
    /// named as given or fresh when `None`. An input may be "" (optional, absent).
    pub fn contrib_node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        outputs: &[Option<&str>],
    ) -> Vec<String> {
        let outputs: Vec<String> = outputs
            .iter()
            .map(|o| match o {
                Some(name) => name.to_string(),
                None => self.fresh(&op.to_lowercase()),
            })
            .collect();
        self.push_node(CONTRIB_DOMAIN, op, inputs, attrs, outputs.clone());
        outputs
    }

    fn push_node(
        &mut self,
        domain: &'static str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        outputs: Vec<String>,
    ) {
        let name = format!("{op}_{}", self.nodes.len());
        self.nodes.push(Node {
            op: op.to_string(),
            domain,
            name,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs,
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        });
    }

    /// A small constant stored inside the graph (int64 vector).
    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const");
        self.initializers.push(Tensor {
            name: name.clone(),
            elem: ElemType::I64,
            dims: vec![values.len() as i64],
            data: TensorData::Raw(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        });
        name
    }

    /// A scalar int64 constant.
    pub fn scalar_i64(&mut self, v: i64) -> String {
        let name = self.fresh("const");
        self.initializers.push(Tensor {
            name: name.clone(),
            elem: ElemType::I64,
            dims: vec![],
            data: TensorData::Raw(v.to_le_bytes().to_vec()),
        });
        name
    }

    /// A small float constant of the given element type and shape, stored inside the graph.
    pub fn const_float(&mut self, elem: ElemType, dims: &[i64], values: &[f32]) -> String {
        let name = self.fresh("const");
        let raw = match elem {
            ElemType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        self.initializers.push(Tensor {
            name: name.clone(),
            elem,
            dims: dims.to_vec(),
            data: TensorData::Raw(raw),
        });
        name
    }

    /// Adds a weight initializer whose bytes `fill` writes to the external data file.
    /// `fill` must write exactly `numel * elem.size()` little-endian bytes.
    pub fn weight<F>(
        &mut self,
        name: &str,
        elem: ElemType,
        dims: &[usize],
        fill: F,
    ) -> Result<String, OnnxError>
    where
        F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
    {
        let pad = (ALIGN - self.data_len % ALIGN) % ALIGN;
        self.data
            .write_all(&vec![0u8; pad as usize])
            .map_err(|source| OnnxError::Io {
                path: self.data_path.clone(),
                source,
            })?;
        let offset = self.data_len + pad;
        let mut counter = CountingWriter {
            inner: &mut self.data,
            count: 0,
        };
        fill(&mut counter).map_err(|source| OnnxError::Io {
            path: self.data_path.clone(),
            source,
        })?;
        let length = counter.count;
        let expected = dims.iter().product::<usize>() as u64 * elem.size() as u64;
        if length != expected {
            return Err(OnnxError::WeightSize {
                name: name.to_string(),
                got: length,
                expected,
            });
        }
        self.data_len = offset + length;
        self.initializers.push(Tensor {
            name: name.to_string(),
            elem,
            dims: dims.iter().map(|d| *d as i64).collect(),
            data: TensorData::External {
                location: self.data_location.clone(),
                offset,
                length,
            },
        });
        Ok(name.to_string())
    }

    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|v| v.name.clone()).collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|v| v.name.clone()).collect()
    }

    /// Writes `dir/{onnx_file}` and flushes the external data. Returns the bytes of
    /// weights written.
    pub fn finish(self, onnx_path: &Path) -> Result<u64, OnnxError> {
        let GraphBuilder {
            name,
            nodes,
            inputs,
            outputs,
            initializers,
            data_path,
            data,
            data_len,
            ..
        } = self;
        let file = data.into_inner().map_err(|e| OnnxError::Io {
            path: data_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(|source| OnnxError::Io {
            path: data_path.clone(),
            source,
        })?;
        use field::{graph as g, model as m, opset_id};
        let mut graph = Vec::new();
        for n in &nodes {
            field_bytes(&mut graph, g::NODE, &n.encode());
        }
        field_bytes(&mut graph, g::NAME, name.as_bytes());
        for t in &initializers {
            field_bytes(&mut graph, g::INITIALIZER, &t.encode());
        }
        for i in &inputs {
            field_bytes(&mut graph, g::INPUT, &i.encode());
        }
        for o in &outputs {
            field_bytes(&mut graph, g::OUTPUT, &o.encode());
        }
        let mut model = Vec::new();
        field_varint(&mut model, m::IR_VERSION, IR_VERSION);
        field_bytes(&mut model, m::PRODUCER_NAME, b"vlguard-export");
        field_bytes(
            &mut model,
            m::PRODUCER_VERSION,
            env!("CARGO_PKG_VERSION").as_bytes(),
        );
        field_bytes(&mut model, m::GRAPH, &graph);
        let mut opset = Vec::new();
        field_bytes(&mut opset, opset_id::DOMAIN, b"");
        field_varint(&mut opset, opset_id::VERSION, OPSET);
        field_bytes(&mut model, m::OPSET_IMPORT, &opset);
        if nodes.iter().any(|n| n.domain == CONTRIB_DOMAIN) {
            let mut contrib = Vec::new();
            field_bytes(&mut contrib, opset_id::DOMAIN, CONTRIB_DOMAIN.as_bytes());
            field_varint(&mut contrib, opset_id::VERSION, 1);
            field_bytes(&mut model, m::OPSET_IMPORT, &contrib);
        }
        let io = |source| OnnxError::Io {
            path: onnx_path.to_path_buf(),
            source,
        };
        let mut f = File::create(onnx_path).map_err(io)?;
        f.write_all(&model).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(data_len)
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes worked out by hand from the protobuf encoding spec
    // (https://protobuf.dev/programming-guides/encoding/): key = field << 3 | wire type.
    #[test]
    fn varints() {
        let mut v = Vec::new();
        varint(&mut v, 1);
        varint(&mut v, 300);
        varint(&mut v, u64::MAX);
        assert_eq!(
            v,
            [1, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        // A negative int64 is written as its 10-byte two's complement varint.
        let mut n = Vec::new();
        field_varint(&mut n, 3, -1);
        assert_eq!(n.len(), 11);
        assert_eq!(n[0], 0x18);
    }

    #[test]
    fn attribute_ints() {
        let bytes = encode_attr("perm", &Attr::Ints(vec![0, 2, 1]));
        // name (field 1, "perm"), ints (field 8, varint) x3, type (field 20) = INTS (7)
        assert_eq!(
            bytes,
            [0x0a, 4, b'p', b'e', b'r', b'm', 0x40, 0, 0x40, 2, 0x40, 1, 0xa0, 0x01, 7]
        );
    }

    #[test]
    fn attribute_float() {
        let bytes = encode_attr("epsilon", &Attr::Float(1.0));
        let mut expected = vec![0x0a, 7];
        expected.extend(b"epsilon");
        expected.extend([0x15, 0, 0, 0x80, 0x3f, 0xa0, 0x01, 1]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn external_tensor() {
        let t = Tensor {
            name: "w".into(),
            elem: ElemType::F16,
            dims: vec![2, 3],
            data: TensorData::External {
                location: "g.onnx.data".into(),
                offset: 4096,
                length: 12,
            },
        };
        let b = t.encode();
        // dims 2, 3; data_type 10; name "w"
        assert_eq!(&b[..8], &[0x08, 2, 0x08, 3, 0x10, 10, 0x42, 1]);
        assert_eq!(b[8], b'w');
        // ends with data_location = EXTERNAL (field 14, varint 1)
        assert_eq!(&b[b.len() - 2..], &[0x70, 1]);
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("location") && text.contains("g.onnx.data"));
        assert!(text.contains("offset") && text.contains("4096"));
        assert!(text.contains("length") && text.contains("12"));
    }

    #[test]
    fn value_info_dims() {
        let v = ValueInfo {
            name: "x".into(),
            elem: ElemType::F32,
            dims: vec![Dim::Named("B".into()), Dim::Fixed(3)],
        };
        let b = v.encode();
        // name; type (15 bytes) { tensor_type (13) { elem_type 1, shape (9) {
        //   dim (3) {param "B"}, dim (2) {value 3} } } }
        let expected = [
            0x0a, 1, b'x', 0x12, 15, 0x0a, 13, 0x08, 1, 0x12, 9, 0x0a, 3, 0x12, 1, b'B', 0x0a, 2,
            0x08, 3,
        ];
        assert_eq!(b, expected);
    }

    #[test]
    fn weights_are_aligned_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = GraphBuilder::new("g", dir.path(), "g.onnx").unwrap();
        g.weight("a", ElemType::F32, &[3], |w| w.write_all(&[0u8; 12]))
            .unwrap();
        g.weight("b", ElemType::F16, &[2], |w| w.write_all(&[1u8; 4]))
            .unwrap();
        let err = g
            .weight("c", ElemType::F32, &[2], |w| w.write_all(&[0u8; 4]))
            .unwrap_err();
        assert!(err.to_string().contains("weight c"), "{err}");
        match &g.initializers[1].data {
            TensorData::External { offset, length, .. } => {
                assert_eq!((*offset, *length), (4096, 4));
            }
            other => panic!("{other:?}"),
        }
    }
}
