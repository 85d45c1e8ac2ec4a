//! The export's output side: a temporary sibling of `out` that everything is written into
//! and that replaces `out` in one rename at the end (or is removed on any error), and the
//! sha256 of the files it holds.
//!
//! Guarantee: an export that fails at any point leaves no half-written model directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{io_err, ExportError};
use crate::manifest::MANIFEST_FILE;

/// A temporary sibling of the output folder, removed on drop unless committed.
pub(super) struct Staging {
    pub(super) path: PathBuf,
    committed: bool,
}

impl Staging {
    pub(super) fn create(out: &Path) -> Result<Staging, ExportError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let path = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        }
        std::fs::create_dir(&path).map_err(io_err(&path))?;
        Ok(Staging {
            path,
            committed: false,
        })
    }

    /// Moves the staged folder to `out`, replacing whatever `check_out` allowed there.
    pub(super) fn commit(mut self, out: &Path) -> Result<(), ExportError> {
        if out.exists() {
            let old = self.path.with_extension("old");
            std::fs::rename(out, &old).map_err(io_err(out))?;
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
        } else {
            std::fs::rename(&self.path, out).map_err(io_err(out))?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// sha256 of every file in the model folder (graphs, their external data, the
/// tokenizer), keyed by file name: a run checks them at load, so weights overwritten in
/// place are caught instead of mixed into a resumed run.
pub(super) fn hash_outputs(dir: &Path) -> Result<BTreeMap<String, String>, ExportError> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE && entry.path().is_file() {
            files.insert(name, sha256_file(&entry.path())?);
        }
    }
    Ok(files)
}

/// Lowercase hex sha256 of a file, streamed ([`crate::files::sha256_file`], its error
/// naming the file).
pub(super) fn sha256_file(path: &Path) -> Result<String, ExportError> {
    crate::files::sha256_file(path).map_err(io_err(path))
}
