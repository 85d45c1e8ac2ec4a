//! A reader for the state-dict subset of Python's pickle format, as `torch.save` writes it.
//!
//! Input: the bytes of `data.pkl` from a PyTorch zip checkpoint (protocol 2, as every
//! `torch.save` since 1.6 writes; the protocol 3-4 opcodes that pickle adds are read too).
//! Output: every tensor of the top-level dict with its name, storage key, element type,
//! storage offset, shape and stride. No tensor data is read here: the storages live in
//! separate zip entries (`{archive}/data/{key}`) that `checkpoint.rs` reads lazily.
//!
//! Only what a state dict needs is executed: dicts (`EMPTY_DICT`, `collections.OrderedDict`),
//! tuples, lists, ints, floats, strings, `BINPERSID` storages (`('storage', torch.XStorage,
//! key, location, numel)`), and the calls `torch._utils._rebuild_tensor_v2` and
//! `torch._utils._rebuild_parameter`. Any other callable is refused with an error naming it:
//! nothing here ever imports or runs code.

mod torch;
mod vm;

/// Element type of a storage. Weights are F32, F16 or BF16; the others occur as buffers
/// (CLIP's int64 `position_ids`) that are listed but never read as weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// The element types the exporter reads weights from.
    pub fn is_weight_type(self) -> bool {
        matches!(
            self,
            StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            StorageDtype::F32 => "float32",
            StorageDtype::F16 => "float16",
            StorageDtype::BF16 => "bfloat16",
            StorageDtype::F64 => "float64",
            StorageDtype::I64 => "int64",
            StorageDtype::I32 => "int32",
            StorageDtype::I16 => "int16",
            StorageDtype::I8 => "int8",
            StorageDtype::U8 => "uint8",
            StorageDtype::Bool => "bool",
        }
    }
}

/// One tensor of the state dict: where its elements are, not the elements themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Name of the storage entry: `{archive}/data/{storage_key}`.
    pub storage_key: String,
    pub dtype: StorageDtype,
    /// Offset into the storage, in elements.
    pub storage_offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

impl TensorRef {
    /// True when the elements are laid out row-major without gaps (the only layout read).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1u64;
        for (dim, stride) in self.shape.iter().zip(&self.stride).rev() {
            if *dim != 1 && *stride != expected {
                return false;
            }
            expected = expected.saturating_mul(*dim);
        }
        true
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error("pickle ends before STOP (at byte {0})")]
    Truncated(usize),
    #[error("unsupported pickle opcode 0x{op:02x} at byte {pos}")]
    Opcode { op: u8, pos: usize },
    #[error("pickle calls {0}, which a state dict never needs; refusing to read it")]
    Global(String),
    #[error("malformed pickle at byte {pos}: {what}")]
    Malformed { pos: usize, what: String },
    #[error(
        "unsupported storage type {0} (expected FloatStorage, HalfStorage or BFloat16Storage)"
    )]
    Storage(String),
    #[error("the pickle's top level is not a dict of tensors: {0}")]
    NotStateDict(String),
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage { key: String, dtype: StorageDtype },
    Tensor(TensorRef),
    Mark,
}

impl Value {
    fn describe(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
            Value::Mark => "mark",
        }
    }
}

/// Parses `data.pkl` and returns the state dict's tensors in file order.
pub fn read_state_dict(data: &[u8]) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let top = vm::run(data)?;
    let items = match top {
        Value::Dict(items) => items,
        other => return Err(PickleError::NotStateDict(other.describe().into())),
    };
    let mut out = Vec::with_capacity(items.len());
    for (k, v) in items {
        match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => out.push((name, t)),
            (Value::Str(name), other) => {
                return Err(PickleError::NotStateDict(format!(
                    "entry `{name}` is a {}",
                    other.describe()
                )))
            }
            (other, _) => {
                return Err(PickleError::NotStateDict(format!(
                    "a key is a {}",
                    other.describe()
                )))
            }
        }
    }
    Ok(out)
}

fn malformed(pos: usize, what: &str) -> PickleError {
    PickleError::Malformed {
        pos,
        what: what.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first record of `pytorch_model-00002-of-00002.bin/data.pkl` in the dev golden
    /// bundle, byte for byte as `python -m pickletools` lists it (torch 2.1.2 `torch.save`).
    fn one_tensor_pickle(storage: &str) -> Vec<u8> {
        let mut p = vec![0x80, 2, b'}', b'q', 0, b'('];
        p.push(b'X');
        let name = b"model.layers.1.mlp.up_proj.weight";
        p.extend((name.len() as u32).to_le_bytes());
        p.extend(name);
        p.extend(b"q\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X");
        p.extend(7u32.to_le_bytes());
        p.extend(b"storageq\x03c");
        p.extend(format!("torch\n{storage}\n").as_bytes());
        p.extend(b"q\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06M\x00\x20tq\x07Q");
        // storage_offset 0, size (128, 64), stride (64, 1), False, OrderedDict()
        p.extend(b"K\x00K\x80K\x40\x86q\x08K\x40K\x01\x86q\x09\x89");
        p.extend(b"ccollections\nOrderedDict\nq\x0a)Rq\x0btq\x0cRq\x0d");
        p.extend(b"u."); // SETITEMS, STOP
        p
    }

    #[test]
    fn reads_a_torch_save_record() {
        let tensors = read_state_dict(&one_tensor_pickle("HalfStorage")).unwrap();
        assert_eq!(tensors.len(), 1);
        let (name, t) = &tensors[0];
        assert_eq!(name, "model.layers.1.mlp.up_proj.weight");
        assert_eq!(t.storage_key, "0");
        assert_eq!(t.dtype, StorageDtype::F16);
        assert_eq!(t.storage_offset, 0);
        assert_eq!(t.shape, vec![128, 64]);
        assert_eq!(t.stride, vec![64, 1]);
        assert!(t.is_contiguous());
    }

    /// Fixtures written by Python's own pickle (export/tests/fixtures/make_pickles.py, which
    /// says how): an OrderedDict state dict with `_metadata`, a shared storage, a strided
    /// view, an `nn.Parameter`, a bf16 and an int64 storage; protocols 2 and 4.
    #[test]
    fn reads_python_pickled_state_dicts() {
        for bytes in [
            &include_bytes!("../../tests/fixtures/state_dict_p2.pkl")[..],
            &include_bytes!("../../tests/fixtures/state_dict_p4.pkl")[..],
        ] {
            let t = read_state_dict(bytes).unwrap();
            let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["w", "w_view", "b", "pos"]);
            let w = &t[0].1;
            assert_eq!((w.storage_key.as_str(), w.dtype), ("0", StorageDtype::F16));
            assert_eq!(
                (w.shape.clone(), w.stride.clone()),
                (vec![4, 3], vec![3, 1])
            );
            assert!(w.is_contiguous());
            let view = &t[1].1;
            assert_eq!((view.storage_key.as_str(), view.storage_offset), ("0", 12));
            assert!(!view.is_contiguous());
            let b = &t[2].1;
            assert_eq!((b.dtype, b.shape.clone()), (StorageDtype::BF16, vec![5]));
            let pos = &t[3].1;
            assert_eq!(
                (pos.dtype, pos.shape.clone()),
                (StorageDtype::I64, vec![1, 300])
            );
        }
    }

    #[test]
    fn storage_types() {
        let t = read_state_dict(&one_tensor_pickle("BFloat16Storage")).unwrap();
        assert_eq!(t[0].1.dtype, StorageDtype::BF16);
        let t = read_state_dict(&one_tensor_pickle("FloatStorage")).unwrap();
        assert_eq!(t[0].1.dtype, StorageDtype::F32);
        // CLIP checkpoints hold an int64 `position_ids` buffer: listed, not refused.
        let t = read_state_dict(&one_tensor_pickle("LongStorage")).unwrap();
        assert_eq!(t[0].1.dtype, StorageDtype::I64);
        assert_eq!(
            read_state_dict(&one_tensor_pickle("ComplexFloatStorage")),
            Err(PickleError::Storage("torch.ComplexFloatStorage".into()))
        );
    }

    #[test]
    fn refuses_arbitrary_callables() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.";
        assert_eq!(
            read_state_dict(p),
            Err(PickleError::Global("os.system".into()))
        );
    }

    #[test]
    fn truncated_input_is_an_error() {
        let p = one_tensor_pickle("HalfStorage");
        for cut in [1, 10, 60, p.len() - 1] {
            assert!(read_state_dict(&p[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn transposed_stride_is_not_contiguous() {
        let t = TensorRef {
            storage_key: "0".into(),
            dtype: StorageDtype::F32,
            storage_offset: 0,
            shape: vec![2, 3],
            stride: vec![1, 2],
        };
        assert!(!t.is_contiguous());
    }

    #[test]
    fn non_tensor_entry_is_refused() {
        // {"a": -1} (LONG1 0xff): a dict entry that is not a tensor is refused by name.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00a\x8a\x01\xffs.";
        assert_eq!(
            read_state_dict(p),
            Err(PickleError::NotStateDict("entry `a` is a int".into()))
        );
    }
}
