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
//! one named file ([`Checkpoint::open_file`]: an adapter's weights, for instance).
//! Keys the graphs do not need (`*.rotary_emb.inv_freq`, `model.vision_tower.*`, CLIP's
//! text tower) are never read.
//!
//! Layouts other than the one the graph builders name (llava-hf, adapters) become it
//! through [`Checkpoint::rename`] and [`Checkpoint::overlay`]. The graph builders read
//! through [`TensorSource`], which a checkpoint implements as stored; a layer that changes
//! tensors as they are read (an adapter's merge) implements it over a checkpoint, which
//! knows nothing of it.
//!
//! Files: `index` (shard indexes), `safetensors`, `torch_zip` (headers of each
//! format), `convert` (stored bytes to graph weights).

mod convert;
mod index;
mod safetensors;
mod torch_zip;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::pickle::{self, StorageDtype};
pub(crate) use convert::elem_to_f32;
pub use convert::{convert_into, random_into};
pub use index::read_index;

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

/// The weights a checkpoint folder may hold, in order of preference: safetensors, then
/// PyTorch `.bin`; of each format a shard index, else one file. `prepare` fetches by it.
pub const WEIGHTS_FILES: [(&str, &str); 2] = [
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
];

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
        let candidates = WEIGHTS_FILES.iter().flat_map(|&(index, single)| {
            let is_safetensors = single.ends_with(".safetensors");
            [
                (index, true, is_safetensors),
                (single, false, is_safetensors),
            ]
        });
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

    /// Reads one tensor's raw little-endian bytes, as stored.
    pub fn read(&self, info: &TensorInfo) -> Result<Vec<u8>, CheckpointError> {
        read_raw(info)
    }
}

/// Named weight tensors for the graph builders: a [`Checkpoint`] as stored, or a layer over
/// one that changes some tensors as they are read (the checkpoint does not know of it).
pub trait TensorSource {
    /// Tensor `key`, checked against the shape the config implies: its stored element
    /// type and its little-endian bytes in that type.
    fn tensor(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<(StorageDtype, Vec<u8>), CheckpointError>;

    /// Every file the tensors come from (index included), for the manifest's hashes.
    fn files(&self) -> &[PathBuf];
}

impl TensorSource for Checkpoint {
    fn tensor(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<(StorageDtype, Vec<u8>), CheckpointError> {
        let info = self.info(key, shape)?;
        Ok((info.dtype, self.read(info)?))
    }

    fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// The stored bytes of one tensor (any tensor of any opened file).
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
        safetensors::read_header(path)
    } else {
        torch_zip::read_headers(path)
    }
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
}
