//! PyTorch `.bin` checkpoints (a zip with `data.pkl` and one entry per storage): each
//! tensor's storage entry, offset, dtype and shape, read through the pickle reader.
//! Storage entries must be stored uncompressed (as `torch.save` writes them).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{format_err, io_err, CheckpointError, TensorInfo};
use crate::pickle;

/// PyTorch zip: `{prefix}/data.pkl` names the tensors, `{prefix}/data/{key}` hold storages.
pub(super) fn read_headers(path: &Path) -> Result<BTreeMap<String, TensorInfo>, CheckpointError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format_err(path, format!("not a PyTorch zip checkpoint: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(|n| n.to_string())
        .ok_or_else(|| format_err(path, "no data.pkl in the zip (a pre-1.6 torch.save?)"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut bo) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut s = String::new();
        bo.read_to_string(&mut s).map_err(io_err(path))?;
        if s.trim() != "little" {
            return Err(format_err(path, format!("byte order `{s}` is not little")));
        }
    }
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .map_err(|e| format_err(path, e.to_string()))?
        .read_to_end(&mut pkl)
        .map_err(io_err(path))?;
    let refs = pickle::read_state_dict(&pkl).map_err(|source| CheckpointError::Pickle {
        file: path.to_path_buf(),
        source,
    })?;
    let mut out = BTreeMap::new();
    let mut storages: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (name, t) in refs {
        let problem =
            (!t.is_contiguous()).then(|| format!("not contiguous (stride {:?})", t.stride));
        let (start, size) = match storages.get(&t.storage_key) {
            Some(s) => *s,
            None => {
                let entry_name = format!("{prefix}data/{}", t.storage_key);
                let entry = zip
                    .by_name(&entry_name)
                    .map_err(|e| format_err(path, format!("{entry_name}: {e}")))?;
                if entry.compression() != zip::CompressionMethod::Stored {
                    return Err(format_err(
                        path,
                        format!("{entry_name} is compressed; PyTorch stores tensors uncompressed"),
                    ));
                }
                let start = entry
                    .data_start()
                    .ok_or_else(|| format_err(path, format!("{entry_name}: no data offset")))?;
                let s = (start, entry.size());
                storages.insert(t.storage_key.clone(), s);
                s
            }
        };
        // Saturating: a forged offset or shape fails the storage-size check, never wraps.
        let begin = t.storage_offset.saturating_mul(t.dtype.size() as u64);
        let info = TensorInfo {
            file: path.to_path_buf(),
            offset: start.saturating_add(begin),
            dtype: t.dtype,
            shape: t.shape.clone(),
            problem,
        };
        if begin.saturating_add(info.byte_len()) > size {
            return Err(format_err(
                path,
                format!("tensor `{name}` runs past the end of its storage"),
            ));
        }
        out.insert(name, info);
    }
    Ok(out)
}
