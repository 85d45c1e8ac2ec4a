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
//!
//! Before anything is opened, [`check_layout`] holds the manifest to the folder: every
//! file it names (graphs, tokenizer, `files`) is a plain name inside the folder; `files`
//! lists every graph, its `.data` weights where there are some, and the tokenizer (an empty
//! or partial map would skip the check); and each listed file is a regular file, so a
//! symlink to `/dev/zero` or a FIFO is an error naming it, never an endless read.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vlguard_export::files::{is_plain_name, regular_file};
use vlguard_export::manifest::{GraphKind, Manifest, MANIFEST_FILE};

const MEMORY_FILE: &str = ".vlguard-verified.json";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source} (the manifest lists it: re-export the model)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{manifest}: {what} `{name}` is refused: it must be a file name inside the model folder"
    )]
    Name {
        manifest: PathBuf,
        what: &'static str,
        name: String,
    },
    #[error("{manifest} records no sha256 for {name} (`files`), so it cannot be checked: re-export the model")]
    Unlisted { manifest: PathBuf, name: String },
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

/// Holds the manifest's file names to the folder `dir` (see the module contract); reads
/// nothing but metadata.
pub fn check_layout(dir: &Path, manifest: &Manifest) -> Result<(), VerifyError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let refuse = |what: &'static str, name: &str| VerifyError::Name {
        manifest: manifest_path.clone(),
        what,
        name: name.to_string(),
    };
    let mut needed = vec![("the tokenizer file", manifest.tokenizer.file.as_str())];
    for kind in GraphKind::ALL {
        needed.push(("a graph file", manifest.graphs.file(kind)));
    }
    for (what, name) in &needed {
        if !is_plain_name(name) {
            return Err(refuse(what, name));
        }
    }
    if let Some(name) = manifest.files.keys().find(|n| !is_plain_name(n)) {
        return Err(refuse("a `files` entry", name));
    }
    let data: Vec<String> = GraphKind::ALL
        .iter()
        .map(|&kind| format!("{}.data", manifest.graphs.file(kind)))
        .filter(|name| dir.join(name).symlink_metadata().is_ok())
        .collect();
    let names = needed
        .iter()
        .map(|(_, n)| *n)
        .chain(data.iter().map(String::as_str));
    for name in names {
        if !manifest.files.contains_key(name) {
            return Err(VerifyError::Unlisted {
                manifest: manifest_path.clone(),
                name: name.to_string(),
            });
        }
    }
    for name in manifest.files.keys() {
        let path = dir.join(name);
        regular_file(&path).map_err(|source| VerifyError::Io { path, source })?;
    }
    Ok(())
}

/// Checks the manifest's files ([`check_layout`]), then each one's sha256.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<(), VerifyError> {
    check_layout(dir, manifest)?;
    hash_files(dir, &manifest.files)
}

/// Checks every file of `files` (name -> sha256) in `dir` against its hash.
fn hash_files(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), VerifyError> {
    let memory_path = dir.join(MEMORY_FILE);
    let memory: BTreeMap<String, Seen> = vlguard_export::files::read_regular(&memory_path)
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
        let meta = regular_file(&path).map_err(io)?;
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
        hash_files(dir.path(), &files).unwrap();
        let memory = std::fs::read_to_string(dir.path().join(MEMORY_FILE)).unwrap();
        assert!(memory.contains("decoder.onnx"), "{memory}");
        hash_files(dir.path(), &files).unwrap();
    }

    #[test]
    fn a_file_overwritten_with_the_same_size_is_caught_even_after_it_was_remembered() {
        let (dir, files) = folder();
        hash_files(dir.path(), &files).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(dir.path().join("decoder.onnx"), b"weights-b").unwrap();
        let err = hash_files(dir.path(), &files).unwrap_err().to_string();
        assert!(
            err.contains("decoder.onnx") && err.contains("re-export"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let (dir, files) = folder();
        std::fs::remove_file(dir.path().join("decoder.onnx")).unwrap();
        let err = hash_files(dir.path(), &files).unwrap_err().to_string();
        assert!(err.contains("decoder.onnx"), "{err}");
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    /// A folder holding every file the demo manifest names, each listed with its hash.
    fn model() -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = crate::engine::test_manifests::demo();
        let mut names = vec![manifest.tokenizer.file.clone()];
        for kind in GraphKind::ALL {
            let file = manifest.graphs.file(kind);
            names.extend([file.to_string(), format!("{file}.data")]);
        }
        for name in names {
            std::fs::write(dir.path().join(&name), name.as_bytes()).unwrap();
            let sha256 = crate::util::sha256_hex(name.as_bytes());
            manifest.files.insert(name, sha256);
        }
        (dir, manifest)
    }

    fn refusal(dir: &Path, manifest: &Manifest) -> String {
        verify(dir, manifest).unwrap_err().to_string()
    }

    #[test]
    fn a_complete_folder_passes() {
        let (dir, manifest) = model();
        verify(dir.path(), &manifest).unwrap();
    }

    #[test]
    fn a_listed_file_that_is_a_device_fifo_or_folder_is_named_unread() {
        for (target, what) in [("/dev/zero", "a character device"), ("/", "a directory")] {
            let (dir, manifest) = model();
            let data = dir.path().join("decoder.onnx.data");
            std::fs::remove_file(&data).unwrap();
            std::os::unix::fs::symlink(target, &data).unwrap();
            let err = refusal(dir.path(), &manifest);
            assert!(
                err.contains("decoder.onnx.data") && err.contains(what),
                "{err}"
            );
        }
        let (dir, manifest) = model();
        let graph = dir.path().join("vision.onnx");
        std::fs::remove_file(&graph).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&graph).status();
        assert!(made.unwrap().success());
        let err = refusal(dir.path(), &manifest);
        assert!(
            err.contains("vision.onnx") && err.contains("a FIFO"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_or_partial_files_map_is_refused() {
        let (dir, mut manifest) = model();
        manifest.files.remove("projector.onnx.data");
        let err = refusal(dir.path(), &manifest);
        assert!(err.contains("no sha256 for projector.onnx.data"), "{err}");
        manifest.files.clear();
        let err = refusal(dir.path(), &manifest);
        assert!(
            err.contains("no sha256 for") && err.contains("re-export"),
            "{err}"
        );
    }

    #[test]
    fn names_outside_the_folder_are_refused() {
        let (dir, mut manifest) = model();
        manifest.tokenizer.file = "../../etc/passwd".into();
        let err = refusal(dir.path(), &manifest);
        assert!(
            err.contains("the tokenizer file `../../etc/passwd` is refused"),
            "{err}"
        );
        let (dir, mut manifest) = model();
        manifest.graphs.decoder.file = "/dev/zero".into();
        let err = refusal(dir.path(), &manifest);
        assert!(err.contains("a graph file `/dev/zero` is refused"), "{err}");
        let (dir, mut manifest) = model();
        manifest.files.insert("../x".into(), "0".repeat(64));
        let err = refusal(dir.path(), &manifest);
        assert!(err.contains("a `files` entry `../x` is refused"), "{err}");
    }
}
