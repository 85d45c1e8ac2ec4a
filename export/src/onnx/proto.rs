//! The protobuf encoding of the ONNX messages the writer emits: varints and
//! length-delimited fields, then NodeProto, AttributeProto, TensorProto and ValueInfoProto
//! (proto2: repeated scalars unpacked). Field numbers from [`field`](super::field).

use super::{field, ElemType};
use crate::wire;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

pub(super) fn field_varint(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, wire::VARINT);
    varint(out, v as u64);
}

pub(super) fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, wire::LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(super) fn field_f32(out: &mut Vec<u8>, field: u32, v: f32) {
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
    pub(super) fn encode(&self) -> Vec<u8> {
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

pub(super) fn encode_attr(name: &str, attr: &Attr) -> Vec<u8> {
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
    /// Operator domain: "" (ONNX) or [`CONTRIB_DOMAIN`](super::CONTRIB_DOMAIN).
    pub domain: &'static str,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    pub(super) fn encode(&self) -> Vec<u8> {
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
    pub(super) fn encode(&self) -> Vec<u8> {
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
}
