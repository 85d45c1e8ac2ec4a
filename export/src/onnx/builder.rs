//! The graph builder: nodes, inputs, outputs and initializers added in order, weights
//! streamed to the external data file as they are added (4096-byte aligned, size checked
//! against the shape), and the ModelProto written at the end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::proto::{field_bytes, field_varint};
use super::{field, Attr, Dim, ElemType, Node, Tensor, TensorData, ValueInfo};
use super::{ALIGN, CONTRIB_DOMAIN, IR_VERSION, OPSET};

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
