//! A graph's declared inputs and outputs, read from the `.onnx` file itself: names, element
//! types and shapes, without its weights. Opening a session to ask ONNX Runtime the same
//! loads every initializer (a 13B decoder: 26 GB, more once the CPU provider widens fp16),
//! which `inspect` must not need.

use std::path::Path;

use crate::onnx::field::{graph, model, shape, tensor, tensor_type, type_proto, value_info};
pub use crate::onnx::Dim;
use crate::wire::{Reader, Value, WireError};

/// One declared input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Io {
    pub name: String,
    /// ONNX's TensorProto.DataType (1 float, 7 int64, 10 float16, ...); 0 when absent.
    pub elem_type: i64,
    /// Each axis: its size, its symbolic name (`batch`), or undeclared.
    pub dims: Vec<Dim>,
}

impl Io {
    /// The shape with -1 for every axis that is not a fixed size (as ONNX Runtime reports
    /// it).
    pub fn shape(&self) -> Vec<i64> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => *v,
                _ => -1,
            })
            .collect()
    }

    /// `Tensor<f16>(batch, seq, 5120)`, the way ONNX Runtime prints a tensor type.
    pub fn type_text(&self) -> String {
        let dims: Vec<String> = self
            .dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => v.to_string(),
                Dim::Named(s) => s.clone(),
                Dim::Unknown => "?".into(),
            })
            .collect();
        format!("Tensor<{}>({})", elem_name(self.elem_type), dims.join(", "))
    }
}

/// The short name of an ONNX element type.
pub fn elem_name(elem_type: i64) -> String {
    match elem_type {
        1 => "f32".into(),
        2 => "u8".into(),
        3 => "i8".into(),
        6 => "i32".into(),
        7 => "i64".into(),
        9 => "bool".into(),
        10 => "f16".into(),
        11 => "f64".into(),
        16 => "bf16".into(),
        other => format!("type{other}"),
    }
}

/// A graph's inputs (initializers excluded) and outputs, in declaration order.
#[derive(Debug, Clone, Default)]
pub struct GraphIo {
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphIoError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Wire {
        path: std::path::PathBuf,
        source: WireError,
    },
    #[error("{path}: no graph in the model")]
    NoGraph { path: std::path::PathBuf },
}

/// Reads the declared inputs and outputs of the model at `path` (its weights stay on disk:
/// the exporter writes them as external data).
pub fn read_file(path: &Path) -> Result<GraphIo, GraphIoError> {
    let bytes = crate::files::read_regular(path).map_err(|source| GraphIoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let wire = |source| GraphIoError::Wire {
        path: path.to_path_buf(),
        source,
    };
    let mut r = Reader::new(&bytes, 0);
    while let Some((field, value)) = r.next_field().map_err(wire)? {
        if let (model::GRAPH, Value::Bytes(g, offset)) = (field, value) {
            return read_graph(g, offset).map_err(wire);
        }
    }
    Err(GraphIoError::NoGraph {
        path: path.to_path_buf(),
    })
}

fn read_graph(g: &[u8], base: usize) -> Result<GraphIo, WireError> {
    let mut io = GraphIo::default();
    let mut initializers = Vec::new();
    let mut r = Reader::new(g, base);
    while let Some((field, value)) = r.next_field()? {
        let Value::Bytes(b, offset) = value else {
            continue;
        };
        match field {
            graph::INPUT => io.inputs.push(read_value_info(b, offset)?),
            graph::OUTPUT => io.outputs.push(read_value_info(b, offset)?),
            graph::INITIALIZER => initializers.extend(initializer_name(b, offset)?),
            _ => {}
        }
    }
    // Older IRs list initializers among the inputs too; they are not the graph's inputs.
    io.inputs.retain(|i| !initializers.contains(&i.name));
    Ok(io)
}

/// The name of an initializer (a TensorProto at `base`), if it has one.
pub fn initializer_name(t: &[u8], base: usize) -> Result<Option<String>, WireError> {
    let mut r = Reader::new(t, base);
    while let Some((field, value)) = r.next_field()? {
        if let (tensor::NAME, Value::Bytes(b, _)) = (field, value) {
            return Ok(Some(String::from_utf8_lossy(b).into_owned()));
        }
    }
    Ok(None)
}

fn read_value_info(v: &[u8], base: usize) -> Result<Io, WireError> {
    let mut io = Io {
        name: String::new(),
        elem_type: 0,
        dims: Vec::new(),
    };
    let mut r = Reader::new(v, base);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (value_info::NAME, Value::Bytes(b, _)) => {
                io.name = String::from_utf8_lossy(b).into_owned()
            }
            (value_info::TYPE, Value::Bytes(t, offset)) => {
                for (b, offset) in sub_messages(t, offset, type_proto::TENSOR_TYPE)? {
                    read_tensor_type(b, offset, &mut io)?;
                }
            }
            _ => {}
        }
    }
    Ok(io)
}

fn read_tensor_type(t: &[u8], base: usize, io: &mut Io) -> Result<(), WireError> {
    let mut r = Reader::new(t, base);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (tensor_type::ELEM_TYPE, Value::Varint(v)) => io.elem_type = v as i64,
            (tensor_type::SHAPE, Value::Bytes(s, offset)) => {
                for (d, offset) in sub_messages(s, offset, shape::DIM)? {
                    io.dims.push(read_dim(d, offset)?);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn read_dim(d: &[u8], base: usize) -> Result<Dim, WireError> {
    let mut dim = Dim::Unknown;
    let mut r = Reader::new(d, base);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (shape::DIM_VALUE, Value::Varint(v)) => dim = Dim::Fixed(v as i64),
            (shape::DIM_PARAM, Value::Bytes(b, _)) => {
                dim = Dim::Named(String::from_utf8_lossy(b).into_owned())
            }
            _ => {}
        }
    }
    Ok(dim)
}

/// Every length-delimited field `wanted` of a message, with its offset.
fn sub_messages(msg: &[u8], base: usize, wanted: u32) -> Result<Vec<(&[u8], usize)>, WireError> {
    let mut out = Vec::new();
    let mut r = Reader::new(msg, base);
    while let Some((field, value)) = r.next_field()? {
        if let (true, Value::Bytes(b, offset)) = (field == wanted, value) {
            out.push((b, offset));
        }
    }
    Ok(out)
}
