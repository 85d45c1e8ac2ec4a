//! The pickle virtual machine: the opcodes a state dict uses, executed over a stack and a
//! memo; callables and persistent ids are handed to [`super::torch`].

use std::collections::HashMap;

use super::torch::{persistent_load, reduce};
use super::{malformed, PickleError, Value};

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

pub(super) fn run(data: &[u8]) -> Result<Value, PickleError> {
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
