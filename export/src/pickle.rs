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

use std::collections::HashMap;

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

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated(self.pos))?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.pos))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let pos = self.pos;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| PickleError::Malformed {
            pos,
            what: "string is not UTF-8".into(),
        })
    }
}

/// Parses `data.pkl` and returns the state dict's tensors in file order.
pub fn read_state_dict(data: &[u8]) -> Result<Vec<(String, TensorRef)>, PickleError> {
    let top = run(data)?;
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

/// The opcodes this reader executes, named as Python's `pickletools` names them (the
/// byte values are `pickle.py`'s constants).
mod opcode {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BINFLOAT: u8 = b'G';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

fn run(data: &[u8]) -> Result<Value, PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    loop {
        let pos = r.pos;
        let op = r.u8()?;
        match op {
            opcode::PROTO => {
                r.u8()?; // the protocol number
            }
            opcode::FRAME => {
                r.u64()?; // protocol 4: a length hint only
            }
            opcode::STOP => {
                return stack
                    .pop()
                    .ok_or_else(|| malformed(pos, "STOP on empty stack"));
            }
            opcode::MARK => stack.push(Value::Mark),
            opcode::EMPTY_DICT => stack.push(Value::Dict(Vec::new())),
            opcode::EMPTY_LIST => stack.push(Value::List(Vec::new())),
            opcode::EMPTY_TUPLE => stack.push(Value::Tuple(Vec::new())),
            opcode::NONE => stack.push(Value::None),
            opcode::NEWTRUE => stack.push(Value::Bool),
            opcode::NEWFALSE => stack.push(Value::Bool),
            opcode::BININT1 => stack.push(Value::Int(r.u8()? as i64)),
            opcode::BININT2 => stack.push(Value::Int(r.u16()? as i64)),
            opcode::BININT => stack.push(Value::Int(r.u32()? as i32 as i64)),
            opcode::LONG1 => {
                // little-endian two's complement of n bytes
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(malformed(pos, "integer wider than 64 bits"));
                }
                let mut v: i64 = 0;
                for (i, byte) in b.iter().enumerate() {
                    v |= (*byte as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            opcode::BINFLOAT => {
                r.take(8)?; // never needed by a state dict's tensors
                stack.push(Value::Float);
            }
            opcode::BINUNICODE => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            opcode::SHORT_BINUNICODE => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            opcode::BINUNICODE8 => {
                let n = r.u64()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            opcode::SHORT_BINSTRING => {
                // a Python 2 `str`
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            opcode::BINSTRING => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            opcode::SHORT_BINBYTES => {
                let n = r.u8()? as usize;
                r.take(n)?;
                stack.push(Value::Bytes);
            }
            opcode::BINBYTES => {
                let n = r.u32()? as usize;
                r.take(n)?;
                stack.push(Value::Bytes);
            }
            opcode::BINBYTES8 => {
                let n = r.u64()? as usize;
                r.take(n)?;
                stack.push(Value::Bytes);
            }
            opcode::GLOBAL => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(format!("{module}.{name}")));
            }
            opcode::STACK_GLOBAL => {
                let name = pop(&mut stack, pos)?;
                let module = pop(&mut stack, pos)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err(malformed(pos, "STACK_GLOBAL needs two strings")),
                }
            }
            opcode::BINPUT => {
                let idx = r.u8()? as u64;
                memo.insert(idx, top(&stack, pos)?.clone());
            }
            opcode::LONG_BINPUT => {
                let idx = r.u32()? as u64;
                memo.insert(idx, top(&stack, pos)?.clone());
            }
            opcode::MEMOIZE => {
                let idx = memo.len() as u64;
                memo.insert(idx, top(&stack, pos)?.clone());
            }
            opcode::BINGET => {
                let idx = r.u8()? as u64;
                stack.push(get_memo(&memo, idx, pos)?);
            }
            opcode::LONG_BINGET => {
                let idx = r.u32()? as u64;
                stack.push(get_memo(&memo, idx, pos)?);
            }
            opcode::POP => {
                pop(&mut stack, pos)?;
            }
            opcode::POP_MARK => {
                pop_mark(&mut stack, pos)?;
            }
            opcode::DUP => {
                let v = top(&stack, pos)?.clone();
                stack.push(v);
            }
            opcode::TUPLE => {
                let items = pop_mark(&mut stack, pos)?;
                stack.push(Value::Tuple(items));
            }
            opcode::TUPLE1 => {
                let a = pop(&mut stack, pos)?;
                stack.push(Value::Tuple(vec![a]));
            }
            opcode::TUPLE2 => {
                let b = pop(&mut stack, pos)?;
                let a = pop(&mut stack, pos)?;
                stack.push(Value::Tuple(vec![a, b]));
            }
            opcode::TUPLE3 => {
                let c = pop(&mut stack, pos)?;
                let b = pop(&mut stack, pos)?;
                let a = pop(&mut stack, pos)?;
                stack.push(Value::Tuple(vec![a, b, c]));
            }
            opcode::LIST => {
                let items = pop_mark(&mut stack, pos)?;
                stack.push(Value::List(items));
            }
            opcode::DICT => {
                let items = pop_mark(&mut stack, pos)?;
                stack.push(Value::Dict(pairs(items, pos)?));
            }
            opcode::APPEND => {
                let v = pop(&mut stack, pos)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(malformed(pos, "APPEND to a non-list")),
                }
            }
            opcode::APPENDS => {
                let items = pop_mark(&mut stack, pos)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(malformed(pos, "APPENDS to a non-list")),
                }
            }
            opcode::SETITEM => {
                let v = pop(&mut stack, pos)?;
                let k = pop(&mut stack, pos)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(malformed(pos, "SETITEM on a non-dict")),
                }
            }
            opcode::SETITEMS => {
                let items = pop_mark(&mut stack, pos)?;
                let items = pairs(items, pos)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(items),
                    _ => return Err(malformed(pos, "SETITEMS on a non-dict")),
                }
            }
            opcode::BUILD => {
                // An OrderedDict's `_metadata` attribute; the object stays as it is.
                pop(&mut stack, pos)?;
                top(&stack, pos)?;
            }
            opcode::BINPERSID => {
                let pid = pop(&mut stack, pos)?;
                stack.push(persistent_load(pid, pos)?);
            }
            opcode::REDUCE => {
                let args = pop(&mut stack, pos)?;
                let func = pop(&mut stack, pos)?;
                stack.push(reduce(func, args, pos)?);
            }
            opcode::NEWOBJ => {
                // cls.__new__(cls, *args); only OrderedDict is expected
                let args = pop(&mut stack, pos)?;
                let cls = pop(&mut stack, pos)?;
                stack.push(reduce(cls, args, pos)?);
            }
            op => return Err(PickleError::Opcode { op, pos }),
        }
    }
}

fn pop(stack: &mut Vec<Value>, pos: usize) -> Result<Value, PickleError> {
    match stack.pop() {
        Some(Value::Mark) | None => Err(malformed(pos, "stack underflow")),
        Some(v) => Ok(v),
    }
}

fn top(stack: &[Value], pos: usize) -> Result<&Value, PickleError> {
    stack.last().ok_or_else(|| malformed(pos, "empty stack"))
}

fn pop_mark(stack: &mut Vec<Value>, pos: usize) -> Result<Vec<Value>, PickleError> {
    let mark = stack
        .iter()
        .rposition(|v| matches!(v, Value::Mark))
        .ok_or_else(|| malformed(pos, "no MARK on the stack"))?;
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

fn get_memo(memo: &HashMap<u64, Value>, idx: u64, pos: usize) -> Result<Value, PickleError> {
    memo.get(&idx)
        .cloned()
        .ok_or_else(|| malformed(pos, &format!("memo {idx} never stored")))
}

fn pairs(items: Vec<Value>, pos: usize) -> Result<Vec<(Value, Value)>, PickleError> {
    if items.len() % 2 != 0 {
        return Err(malformed(pos, "odd number of dict items"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// `('storage', torch.HalfStorage, '0', 'cpu', numel)` -> a storage reference.
fn persistent_load(pid: Value, pos: usize) -> Result<Value, PickleError> {
    let items = match pid {
        Value::Tuple(items) => items,
        other => {
            return Err(malformed(
                pos,
                &format!("persistent id is a {}", other.describe()),
            ))
        }
    };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(ty), Value::Str(key), _location, _numel]
            if kind == "storage" =>
        {
            let dtype = match ty.as_str() {
                "torch.FloatStorage" => StorageDtype::F32,
                "torch.HalfStorage" => StorageDtype::F16,
                "torch.BFloat16Storage" => StorageDtype::BF16,
                "torch.DoubleStorage" => StorageDtype::F64,
                "torch.LongStorage" => StorageDtype::I64,
                "torch.IntStorage" => StorageDtype::I32,
                "torch.ShortStorage" => StorageDtype::I16,
                "torch.CharStorage" => StorageDtype::I8,
                "torch.ByteStorage" => StorageDtype::U8,
                "torch.BoolStorage" => StorageDtype::Bool,
                other => return Err(PickleError::Storage(other.to_string())),
            };
            Ok(Value::Storage {
                key: key.clone(),
                dtype,
            })
        }
        _ => Err(malformed(pos, "persistent id is not a storage tuple")),
    }
}

fn ints(v: &Value, pos: usize, what: &str) -> Result<Vec<u64>, PickleError> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) if *n >= 0 => Ok(*n as u64),
                _ => Err(malformed(pos, &format!("{what} holds a non-integer"))),
            })
            .collect(),
        _ => Err(malformed(pos, &format!("{what} is not a tuple"))),
    }
}

fn reduce(func: Value, args: Value, pos: usize) -> Result<Value, PickleError> {
    let name = match func {
        Value::Global(name) => name,
        other => {
            return Err(malformed(
                pos,
                &format!("REDUCE calls a {}", other.describe()),
            ))
        }
    };
    let args = match args {
        Value::Tuple(a) => a,
        other => {
            return Err(malformed(
                pos,
                &format!("REDUCE arguments are a {}", other.describe()),
            ))
        }
    };
    match name.as_str() {
        "collections.OrderedDict" => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            if args.len() < 4 {
                return Err(malformed(pos, "_rebuild_tensor_v2 needs 4+ arguments"));
            }
            let (key, dtype) = match &args[0] {
                Value::Storage { key, dtype } => (key.clone(), *dtype),
                other => {
                    return Err(malformed(
                        pos,
                        &format!("_rebuild_tensor_v2 storage is a {}", other.describe()),
                    ))
                }
            };
            let storage_offset = match args[1] {
                Value::Int(n) if n >= 0 => n as u64,
                _ => return Err(malformed(pos, "bad storage offset")),
            };
            let shape = ints(&args[2], pos, "size")?;
            let stride = ints(&args[3], pos, "stride")?;
            if shape.len() != stride.len() {
                return Err(malformed(pos, "size and stride differ in rank"));
            }
            Ok(Value::Tensor(TensorRef {
                storage_key: key,
                dtype,
                storage_offset,
                shape,
                stride,
            }))
        }
        "torch._utils._rebuild_parameter" => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(malformed(pos, "_rebuild_parameter without a tensor")),
        },
        other => Err(PickleError::Global(other.to_string())),
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
            &include_bytes!("../tests/fixtures/state_dict_p2.pkl")[..],
            &include_bytes!("../tests/fixtures/state_dict_p4.pkl")[..],
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
