//! Checkpoint readers: safetensors and PyTorch `.bin` (zip + pickle), single files or
//! shards listed by an index, and seeded random weights for benchmarks.
//!
//! Opening a checkpoint reads only headers (safetensors JSON header, each `.bin`'s
//! `data.pkl` and zip directory) and records, per tensor, its file, absolute byte offset,
//! element type and shape. Tensor bytes are read one tensor at a time, when the graph
//! builder asks for it, and written out at once: the checkpoint is never held in memory.
//! PyTorch zips store tensor entries uncompressed; a compressed entry is an error.
//!
//! Which files: `model.safetensors.index.json`, `model.safetensors`,
//! `pytorch_model.bin.index.json`, `pytorch_model.bin`, in that order of preference; or
//! one named file ([`Checkpoint::open_file`]: a LoRA adapter, `non_lora_trainables.bin`).
//! Keys the graphs do not need (`*.rotary_emb.inv_freq`, `model.vision_tower.*`, CLIP's
//! text tower) are never read.
//!
//! Layouts other than the one the graph builders name (llava-hf, adapters) become it
//! through [`Checkpoint::rename`] and [`Checkpoint::overlay`]; a tensor may carry a LoRA
//! update (`TensorInfo::lora`) that [`Checkpoint::read`] merges as it reads (see `lora`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::lora::LoraDelta;
use crate::onnx::ElemType;
use crate::pickle::{self, StorageDtype};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: no weights found (looked for model.safetensors[.index.json] and pytorch_model.bin[.index.json])")]
    NoWeights { dir: PathBuf },
    #[error("{index} lists shard {shard}, which does not exist")]
    MissingShard { index: PathBuf, shard: String },
    #[error("{index} is not a valid shard index: {reason}")]
    BadIndex { index: PathBuf, reason: String },
    #[error("{source_desc}: tensor `{key}` not found")]
    MissingKey { key: String, source_desc: String },
    #[error("tensor `{key}` in {file} has shape {found:?}, expected {expected:?}")]
    Shape {
        key: String,
        file: PathBuf,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{file}: {reason}")]
    Format { file: PathBuf, reason: String },
    #[error("{first} and {second} both name tensor `{name}` ({dir}): the checkpoint mixes two key styles")]
    Ambiguous {
        dir: PathBuf,
        name: String,
        first: String,
        second: String,
    },
    #[error("{file}: {source}")]
    Pickle {
        file: PathBuf,
        source: pickle::PickleError,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn format_err(file: &Path, reason: impl Into<String>) -> CheckpointError {
    CheckpointError::Format {
        file: file.to_path_buf(),
        reason: reason.into(),
    }
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub file: PathBuf,
    /// Absolute byte offset of the first element in `file`.
    pub offset: u64,
    pub dtype: StorageDtype,
    pub shape: Vec<u64>,
    /// Why this tensor cannot be read as a weight (e.g. a strided view), reported only
    /// when the graphs ask for it: a checkpoint's unused tensors never fail an export.
    pub problem: Option<String>,
    /// A LoRA update merged into this tensor when it is read.
    pub lora: Option<Arc<LoraDelta>>,
}

impl TensorInfo {
    /// Saturating: a forged shape gives `u64::MAX`, which no file holds, never an overflow.
    pub fn numel(&self) -> u64 {
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }
    pub fn byte_len(&self) -> u64 {
        self.numel().saturating_mul(self.dtype.size() as u64)
    }
}

/// The tensors of one checkpoint folder.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    dir: PathBuf,
    /// The index or single weights file, for error messages.
    described_by: PathBuf,
    tensors: BTreeMap<String, TensorInfo>,
    /// Every weights file opened (index included), for the manifest's hashes.
    pub files: Vec<PathBuf>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let candidates = [
            ("model.safetensors.index.json", true, true),
            ("model.safetensors", false, true),
            ("pytorch_model.bin.index.json", true, false),
            ("pytorch_model.bin", false, false),
        ];
        for (name, is_index, is_safetensors) in candidates {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            let shards = if is_index {
                read_index(&path)?
            } else {
                vec![name.to_string()]
            };
            let mut tensors = BTreeMap::new();
            let mut files = if is_index { vec![path.clone()] } else { vec![] };
            for shard in shards {
                let shard_path = dir.join(&shard);
                if !shard_path.is_file() {
                    return Err(CheckpointError::MissingShard {
                        index: path.clone(),
                        shard,
                    });
                }
                tensors.extend(read_headers(&shard_path, is_safetensors)?);
                files.push(shard_path);
            }
            return Ok(Checkpoint {
                dir: dir.to_path_buf(),
                described_by: path,
                tensors,
                files,
            });
        }
        Err(CheckpointError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// One weights file (`*.safetensors`, else a PyTorch zip), e.g. an adapter's.
    pub fn open_file(path: &Path) -> Result<Checkpoint, CheckpointError> {
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        Ok(Checkpoint {
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            described_by: path.to_path_buf(),
            tensors: read_headers(path, is_safetensors)?,
            files: vec![path.to_path_buf()],
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The same tensors under the names `map` gives (dropped where it gives none). Two keys
    /// mapped to one name are an error naming both: it would be a guess which one is meant.
    pub fn rename(
        self,
        map: impl Fn(&str) -> Option<String>,
    ) -> Result<Checkpoint, CheckpointError> {
        let mut tensors: BTreeMap<String, TensorInfo> = BTreeMap::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for (key, info) in self.tensors {
            let Some(name) = map(&key) else { continue };
            if let Some(first) = origin.get(&name) {
                return Err(CheckpointError::Ambiguous {
                    dir: self.dir,
                    name,
                    first: first.clone(),
                    second: key,
                });
            }
            origin.insert(name.clone(), key);
            tensors.insert(name, info);
        }
        Ok(Checkpoint { tensors, ..self })
    }

    /// Adds `other`'s tensors, replacing those of the same name (an adapter's trained
    /// projector over the base's).
    pub fn overlay(&mut self, other: Checkpoint) {
        self.tensors.extend(other.tensors);
        self.files.extend(other.files);
    }

    /// Adds (or replaces) one tensor under `name`.
    pub fn insert(&mut self, name: String, info: TensorInfo) {
        self.tensors.insert(name, info);
    }

    /// The tensor `key` as stored, unchecked (`None` when absent).
    pub fn get(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }

    /// Attaches a LoRA update to tensor `key` (which must exist).
    pub fn set_lora(&mut self, key: &str, delta: LoraDelta) -> Result<(), CheckpointError> {
        let described_by = self.described_by.display().to_string();
        let info = self
            .tensors
            .get_mut(key)
            .ok_or_else(|| CheckpointError::MissingKey {
                key: key.to_string(),
                source_desc: described_by,
            })?;
        info.lora = Some(Arc::new(delta));
        Ok(())
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The tensor `key`, checked against the shape the config implies.
    pub fn info(&self, key: &str, expected: &[usize]) -> Result<&TensorInfo, CheckpointError> {
        let info = self
            .tensors
            .get(key)
            .ok_or_else(|| CheckpointError::MissingKey {
                key: key.to_string(),
                source_desc: self.described_by.display().to_string(),
            })?;
        let expected: Vec<u64> = expected.iter().map(|d| *d as u64).collect();
        if let Some(problem) = &info.problem {
            return Err(format_err(&info.file, format!("tensor `{key}`: {problem}")));
        }
        if !info.dtype.is_weight_type() {
            return Err(format_err(
                &info.file,
                format!(
                    "tensor `{key}` is {}, expected float32, float16 or bfloat16",
                    info.dtype.name()
                ),
            ));
        }
        if info.shape != expected {
            return Err(CheckpointError::Shape {
                key: key.to_string(),
                file: info.file.clone(),
                found: info.shape.clone(),
                expected,
            });
        }
        Ok(info)
    }

    /// Reads one tensor's raw little-endian bytes, its LoRA update merged in when it has one
    /// (the result keeps the stored dtype: see `lora`).
    pub fn read(&self, info: &TensorInfo) -> Result<Vec<u8>, CheckpointError> {
        let mut raw = read_raw(info)?;
        if let Some(delta) = &info.lora {
            crate::lora::merge_into(&mut raw, info, delta)?;
        }
        Ok(raw)
    }
}

/// The stored bytes of one tensor, nothing merged.
pub fn read_raw(info: &TensorInfo) -> Result<Vec<u8>, CheckpointError> {
    let mut f = File::open(&info.file).map_err(io_err(&info.file))?;
    f.seek(SeekFrom::Start(info.offset))
        .map_err(io_err(&info.file))?;
    let len = usize::try_from(info.byte_len())
        .map_err(|_| format_err(&info.file, "tensor larger than memory"))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf).map_err(io_err(&info.file))?;
    Ok(buf)
}

fn read_headers(
    path: &Path,
    is_safetensors: bool,
) -> Result<BTreeMap<String, TensorInfo>, CheckpointError> {
    if is_safetensors {
        read_safetensors_header(path)
    } else {
        read_torch_zip(path)
    }
}

fn read_index(path: &Path) -> Result<Vec<String>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |reason: String| CheckpointError::BadIndex {
        index: path.to_path_buf(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards = BTreeSet::new();
    for (key, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("`{key}` maps to a non-string")))?;
        if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
            return Err(bad(format!(
                "shard name `{shard}` is not a plain file name"
            )));
        }
        shards.insert(shard.to_string());
    }
    Ok(shards.into_iter().collect())
}

/// safetensors: u64 LE header length, JSON header, then the data block.
fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>, CheckpointError> {
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
            lora: None,
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

/// PyTorch zip: `{prefix}/data.pkl` names the tensors, `{prefix}/data/{key}` hold storages.
fn read_torch_zip(path: &Path) -> Result<BTreeMap<String, TensorInfo>, CheckpointError> {
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
            lora: None,
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

// ---------------------------------------------------------------- conversion

pub(crate) fn elem_to_f32(dtype: StorageDtype, b: &[u8]) -> f32 {
    let b8 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        a
    };
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        StorageDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        StorageDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        StorageDtype::F64 => f64::from_le_bytes(b8(b)) as f32,
        StorageDtype::I64 => i64::from_le_bytes(b8(b)) as f32,
        StorageDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        StorageDtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
        StorageDtype::I8 => b[0] as i8 as f32,
        StorageDtype::U8 | StorageDtype::Bool => b[0] as f32,
    }
}

/// Converts one element of `dtype` (`src`) to `target` (`dst`, exactly its size).
/// fp16 -> fp16 and f32 -> f32 copy bits; other pairs go through f32 (round to nearest even).
fn convert_elem(dtype: StorageDtype, target: ElemType, src: &[u8], dst: &mut [u8]) {
    match (dtype, target) {
        (StorageDtype::F16, ElemType::F16) | (StorageDtype::F32, ElemType::F32) => {
            dst.copy_from_slice(src)
        }
        (_, ElemType::F16) => {
            dst.copy_from_slice(&half::f16::from_f32(elem_to_f32(dtype, src)).to_le_bytes())
        }
        _ => dst.copy_from_slice(&elem_to_f32(dtype, src).to_le_bytes()),
    }
}

/// Writes `raw` (elements of `dtype`, row-major `shape`) as `target`, transposing a 2-D
/// tensor when asked. Transposition goes by blocks of 64 output rows (contiguous reads of
/// each input row, about `64 * rows` elements buffered), so memory stays near the size of
/// the input tensor.
pub fn convert_into(
    raw: &[u8],
    dtype: StorageDtype,
    shape: &[usize],
    transpose: bool,
    target: ElemType,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let (es, ts) = (dtype.size(), target.size());
    if !transpose {
        let mut chunk = vec![0u8; 16384 * ts];
        for block in raw.chunks(16384 * es) {
            let n = block.len() / es;
            for k in 0..n {
                convert_elem(
                    dtype,
                    target,
                    &block[k * es..][..es],
                    &mut chunk[k * ts..][..ts],
                );
            }
            w.write_all(&chunk[..n * ts])?;
        }
        return Ok(());
    }
    let (rows, cols) = (shape[0], shape[1]);
    const BLOCK: usize = 64;
    let mut block = vec![0u8; BLOCK.min(cols) * rows * ts];
    for c0 in (0..cols).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(cols);
        for r in 0..rows {
            let row = &raw[(r * cols + c0) * es..(r * cols + c1) * es];
            for (k, src) in row.chunks_exact(es).enumerate() {
                // output element (c0 + k, r) of the [cols, rows] result
                convert_elem(dtype, target, src, &mut block[(k * rows + r) * ts..][..ts]);
            }
        }
        w.write_all(&block[..(c1 - c0) * rows * ts])?;
    }
    Ok(())
}

/// Deterministic weights for `--random-weights`: a per-tensor SplitMix64 stream seeded by
/// the tensor name, uniform in [-a, a] with a = 0.02 * sqrt(3) (std 0.02, Llama's
/// initializer_range); norm weights are 1. Generated and written in chunks.
pub fn random_into(
    key: &str,
    numel: usize,
    target: ElemType,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let is_norm_weight = key.ends_with("norm.weight")
        || key.contains("layer_norm")
        || key.contains("layrnorm")
        || key.contains("layernorm");
    let is_norm_bias = is_norm_weight && key.ends_with(".bias");
    let mut state: u64 = key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let amplitude = 0.02f32 * 3f32.sqrt();
    let mut chunk: Vec<u8> = Vec::with_capacity(1 << 16);
    for _ in 0..numel {
        let v = if is_norm_bias {
            0.0
        } else if is_norm_weight {
            1.0
        } else {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (unit * 2.0 - 1.0) * amplitude
        };
        match target {
            ElemType::F16 => chunk.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            _ => chunk.extend_from_slice(&v.to_le_bytes()),
        }
        if chunk.len() >= (1 << 16) - 8 {
            w.write_all(&chunk)?;
            chunk.clear();
        }
    }
    w.write_all(&chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(name: &str) -> PathBuf {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/demo-src")
            .join(name);
        assert!(p.is_dir(), "{} missing", p.display());
        p
    }

    /// The demo LLaVA shards: every key of `pytorch_model.bin.index.json` is found in the
    /// shard it names, with the shape the bundle README gives (hidden 64, MLP 128, vocab
    /// 1200), as fp16 (`torch_dtype: float16`).
    #[test]
    fn reads_the_demo_torch_shards() {
        let dir = demo("llava-v1.5-tiny");
        let ck = Checkpoint::open(&dir).unwrap();
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("pytorch_model.bin.index.json")).unwrap(),
        )
        .unwrap();
        let map = index["weight_map"].as_object().unwrap();
        assert_eq!(ck.keys().count(), map.len());
        for (key, shard) in map {
            let info = &ck.tensors[key];
            assert_eq!(
                info.file.file_name().unwrap().to_str(),
                shard.as_str(),
                "{key}"
            );
            assert_eq!(info.dtype, StorageDtype::F16);
        }
        let info = ck
            .info("model.layers.1.mlp.up_proj.weight", &[128, 64])
            .unwrap();
        assert_eq!(ck.read(info).unwrap().len(), 128 * 64 * 2);
        assert!(matches!(
            ck.info("model.embed_tokens.weight", &[1200, 32]),
            Err(CheckpointError::Shape { .. })
        ));
        // The index's total_size is the sum of tensor bytes.
        let total: u64 = ck.tensors.values().map(TensorInfo::byte_len).sum();
        assert_eq!(index["metadata"]["total_size"].as_u64(), Some(total));
    }

    #[test]
    fn reads_the_demo_safetensors() {
        let ck = Checkpoint::open(&demo("clip-vit-tiny-patch14-336")).unwrap();
        let info = ck
            .info(
                "vision_model.embeddings.position_embedding.weight",
                &[577, 32],
            )
            .unwrap();
        assert_eq!(info.dtype, StorageDtype::F32);
        assert!(ck.keys().any(|k| k.starts_with("text_model.")));
    }

    /// A hand-written safetensors file with an int64 buffer (as CLIP's `position_ids`):
    /// the checkpoint opens, the float tensor reads, the buffer is refused by name.
    #[test]
    fn integer_buffers_are_listed_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"pos":{"dtype":"I64","shape":[1,3],"data_offsets":[8,32]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(1.5f32.to_le_bytes());
        bytes.extend((-2f32).to_le_bytes());
        for v in [0i64, 1, 2] {
            bytes.extend(v.to_le_bytes());
        }
        std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        let a = ck.info("a", &[2]).unwrap();
        let raw = ck.read(a).unwrap();
        assert_eq!(raw[..4], 1.5f32.to_le_bytes());
        assert_eq!(raw[4..], (-2f32).to_le_bytes());
        let err = ck.info("pos", &[1, 3]).unwrap_err().to_string();
        assert!(err.contains("`pos`") && err.contains("int64"), "{err}");
        let err = ck.info("b", &[2]).unwrap_err().to_string();
        assert!(err.contains("`b` not found"), "{err}");
    }

    #[test]
    fn transpose_and_convert() {
        // [[1, 2, 3], [4, 5, 6]] as f32 -> transposed f16 [[1, 4], [2, 5], [3, 6]]
        let raw: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        convert_into(
            &raw,
            StorageDtype::F32,
            &[2, 3],
            true,
            ElemType::F16,
            &mut out,
        )
        .unwrap();
        let vals: Vec<f32> = out
            .chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(vals, [1., 4., 2., 5., 3., 6.]);
    }

    /// A transposed 130 x 70 tensor (more than one 64-column block, a partial last block)
    /// equals the naive element-by-element transpose.
    #[test]
    fn blocked_transpose_matches_naive() {
        let (rows, cols) = (130usize, 70usize);
        let vals: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        convert_into(
            &raw,
            StorageDtype::F32,
            &[rows, cols],
            true,
            ElemType::F32,
            &mut out,
        )
        .unwrap();
        let got: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for c in 0..cols {
            for r in 0..rows {
                assert_eq!(got[c * rows + r], vals[r * cols + c]);
            }
        }
    }

    #[test]
    fn bf16_to_f32() {
        // bf16 0x3fc0 = 1.5 (sign 0, exponent 127, mantissa .1b)
        let mut out = Vec::new();
        convert_into(
            &[0xc0, 0x3f],
            StorageDtype::BF16,
            &[1],
            false,
            ElemType::F32,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, 1.5f32.to_le_bytes());
    }

    #[test]
    fn random_is_seeded_and_bounded() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        random_into(
            "model.layers.0.mlp.up_proj.weight",
            1000,
            ElemType::F32,
            &mut a,
        )
        .unwrap();
        random_into(
            "model.layers.0.mlp.up_proj.weight",
            1000,
            ElemType::F32,
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b);
        let vals: Vec<f32> = a
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(vals.iter().all(|v| v.abs() <= 0.0347));
        let mean = vals.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.003, "{mean}");
        let mut n = Vec::new();
        random_into("model.norm.weight", 4, ElemType::F32, &mut n).unwrap();
        assert_eq!(
            n,
            [1f32; 4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
    }
}
