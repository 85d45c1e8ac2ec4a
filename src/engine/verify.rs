//! The model folder's files against the sha256 the export recorded in the manifest
//! (`manifest.files`), checked at load: a graph or weights file overwritten in place
//! (other weights of the same size) is an error, not answers silently mixed into a
//! resumed run.
//!
//! Cheap on every load but the first: what was verified is remembered in
//! `MODEL/.vlguard-verified.json` (size, modification time, inode and hash per file), and a
//! file whose metadata is unchanged since is not read again. Anything that rewrites a file
//! changes its modification time, so it is hashed again. Where the folder is read-only the
//! memory cannot be kept and every load hashes.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const MEMORY_FILE: &str = ".vlguard-verified.json";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source} (the manifest lists it: re-export the model)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not the file the export wrote (sha256 {found}, the manifest records {expected}): it was changed since; re-export the model or restore the file")]
    Changed {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

/// A file as last verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    sha256: String,
}

impl Seen {
    fn matches(&self, meta: &std::fs::Metadata) -> bool {
        self.size == meta.len() && self.mtime_ns == mtime_ns(meta) && self.inode == meta.ino()
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Checks every file of `files` (name -> sha256) in `dir`.
pub fn verify(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), VerifyError> {
    let memory_path = dir.join(MEMORY_FILE);
    let memory: BTreeMap<String, Seen> = std::fs::read(&memory_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut seen = BTreeMap::new();
    for (name, expected) in files {
        let path = dir.join(name);
        let io = |source| VerifyError::Io {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(io)?;
        let remembered = memory
            .get(name)
            .filter(|s| s.matches(&meta) && s.sha256 == *expected);
        let sha256 = match remembered {
            Some(s) => s.sha256.clone(),
            None => crate::util::sha256_file(&path).map_err(io)?,
        };
        if sha256 != *expected {
            return Err(VerifyError::Changed {
                path,
                expected: expected.clone(),
                found: sha256,
            });
        }
        let entry = Seen {
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            inode: meta.ino(),
            sha256,
        };
        seen.insert(name.clone(), entry);
    }
    if seen != memory {
        // Best effort: a read-only model folder just hashes again next time.
        if let Ok(bytes) = serde_json::to_vec_pretty(&seen) {
            let _ = crate::util::write_atomic(&memory_path, &bytes);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, BTreeMap<String, String>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("decoder.onnx"), b"weights-a").unwrap();
        let files = [(
            "decoder.onnx".to_string(),
            crate::util::sha256_hex(b"weights-a"),
        )]
        .into_iter()
        .collect();
        (dir, files)
    }

    #[test]
    fn unchanged_files_pass_and_are_remembered() {
        let (dir, files) = folder();
        verify(dir.path(), &files).unwrap();
        let memory = std::fs::read_to_string(dir.path().join(MEMORY_FILE)).unwrap();
        assert!(memory.contains("decoder.onnx"), "{memory}");
        verify(dir.path(), &files).unwrap();
    }

    #[test]
    fn a_file_overwritten_with_the_same_size_is_caught_even_after_it_was_remembered() {
        let (dir, files) = folder();
        verify(dir.path(), &files).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("decoder.onnx"), b"weights-b").unwrap();
        let err = verify(dir.path(), &files).unwrap_err().to_string();
        assert!(
            err.contains("decoder.onnx") && err.contains("re-export"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let (dir, files) = folder();
        std::fs::remove_file(dir.path().join("decoder.onnx")).unwrap();
        let err = verify(dir.path(), &files).unwrap_err().to_string();
        assert!(err.contains("decoder.onnx"), "{err}");
    }
}
