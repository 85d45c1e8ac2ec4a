//! safetensors headers: each tensor's dtype, shape and byte range, checked against the
//! file's length (the data block itself is read later, one tensor at a time).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{format_err, io_err, CheckpointError, TensorInfo};
use crate::pickle::StorageDtype;

/// safetensors: u64 LE header length, JSON header, then the data block.
pub(super) fn read_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, CheckpointError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes).map_err(io_err(path))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(format_err(
            path,
            format!("bad safetensors header length {header_len}"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io_err(path))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format_err(path, format!("safetensors header: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format_err(path, "safetensors header is not an object"))?;
    let data_start = 8 + header_len;
    let mut out = BTreeMap::new();
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| format_err(path, format!("tensor `{name}`: {what}"));
        let dtype = match entry.get("dtype").and_then(|d| d.as_str()) {
            Some("F32") => StorageDtype::F32,
            Some("F16") => StorageDtype::F16,
            Some("BF16") => StorageDtype::BF16,
            Some("F64") => StorageDtype::F64,
            Some("I64") => StorageDtype::I64,
            Some("I32") => StorageDtype::I32,
            Some("I16") => StorageDtype::I16,
            Some("I8") => StorageDtype::I8,
            Some("U8") => StorageDtype::U8,
            Some("BOOL") => StorageDtype::Bool,
            Some(other) => return Err(bad(&format!("unsupported dtype {other}"))),
            None => return Err(bad("no dtype")),
        };
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| d.as_u64().ok_or_else(|| bad("shape holds a non-integer")))
            .collect::<Result<_, _>>()?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("no data_offsets"))?;
        let begin = offsets[0].as_u64().ok_or_else(|| bad("bad data_offsets"))?;
        let end = offsets[1].as_u64().ok_or_else(|| bad("bad data_offsets"))?;
        let info = TensorInfo {
            file: path.to_path_buf(),
            offset: data_start.saturating_add(begin),
            dtype,
            shape,
            problem: None,
        };
        // Saturating: offsets near 2^64 fail the file-length check instead of wrapping.
        if end < begin
            || end - begin != info.byte_len()
            || data_start.saturating_add(end) > file_len
        {
            return Err(bad("data_offsets disagree with shape or file length"));
        }
        out.insert(name.clone(), info);
    }
    Ok(out)
}
