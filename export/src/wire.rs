//! A minimal protobuf wire-format reader: varints, fixed32/64 and length-delimited
//! fields, which is all `sentencepiece_model.proto` and the parts of `onnx.proto` read
//! here use, and the wire-type numbers the ONNX writer uses too. Field numbers and
//! meanings are the caller's business (`onnx::field`, `tokenizer`'s field modules).

/// Malformed input, with the byte offset in the whole message.
#[derive(Debug, thiserror::Error)]
#[error("malformed protobuf at byte {offset}: {reason}")]
pub struct WireError {
    pub offset: usize,
    pub reason: String,
}

pub const VARINT: u8 = 0;
pub const FIXED64: u8 = 1;
pub const LEN: u8 = 2;
pub const FIXED32: u8 = 5;

/// Reads one message's fields in order.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole model, for error messages.
    base: usize,
}

/// A field's value; `Bytes` carries its offset in the whole message.
pub enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8], usize),
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Self { buf, pos: 0, base }
    }

    fn err(&self, reason: &str) -> WireError {
        WireError {
            offset: self.base + self.pos,
            reason: reason.to_string(),
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("truncated varint"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("field runs past the end of its message"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Value<'a>)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        // Field numbers are at most 2^29 - 1 (protobuf's limit).
        let field = u32::try_from(key >> 3).map_err(|_| self.err("field number out of range"))?;
        let value = match (key & 7) as u8 {
            VARINT => Value::Varint(self.varint()?),
            FIXED64 => {
                self.take(8)?;
                Value::Fixed64
            }
            LEN => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| self.err("length does not fit in memory"))?;
                let offset = self.base + self.pos;
                Value::Bytes(self.take(n)?, offset)
            }
            FIXED32 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            _ => return Err(self.err("unsupported wire type (groups are not used here)")),
        };
        Ok(Some((field, value)))
    }
}
