//! Finding and loading the ONNX Runtime shared library.
//!
//! Order: `--ort-lib` (or `VLGUARD_ORT_LIB`), then `ORT_DYLIB_PATH`, then the folder that
//! `scripts/setup.sh` fills (`.ort/lib` at the project root, found by walking up from the
//! executable and from the working directory). The PyPI wheel ships only the versioned
//! name (`libonnxruntime.so.1.31.1`), so a folder is searched for any
//! `libonnxruntime.so*`. A missing library is an error naming the setup command, never
//! a panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Folder, relative to the project root, where `scripts/setup.sh` keeps the library.
pub const SETUP_DIR: &str = ".ort/lib";

#[derive(Debug, Clone, thiserror::Error)]
pub enum LibraryError {
    #[error("ONNX Runtime library not found (looked at {looked}); run `scripts/setup.sh` (or `scripts/setup.sh --gpu`) or pass --ort-lib PATH")]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

/// The environment lives for the whole process: `ort` keeps only a weak reference to it.
static LOADED: OnceLock<Result<(PathBuf, ort::environment::Environment), LibraryError>> =
    OnceLock::new();

/// Loads ONNX Runtime once per process and returns the path it came from. Later calls
/// return the first result whatever they pass (the library cannot be swapped in-process).
pub fn init(explicit: Option<&Path>) -> Result<PathBuf, LibraryError> {
    environment(explicit).map(|(path, _)| path.to_path_buf())
}

/// Like [`init`], and also gives the process-wide environment sessions are built from.
pub fn environment(
    explicit: Option<&Path>,
) -> Result<(&'static Path, &'static ort::environment::Environment), LibraryError> {
    LOADED
        .get_or_init(|| {
            let path = locate(explicit)?;
            let builder = ort::init_from(&path).map_err(|e| LibraryError::Load {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let env = builder
                .with_name("vlguard-ort")
                .with_telemetry(false)
                .build()
                .map_err(|e| LibraryError::Load {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            Ok((path, env))
        })
        .as_ref()
        .map(|(path, env)| (path.as_path(), env))
        .map_err(Clone::clone)
}

/// Resolves the library path without loading it.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, LibraryError> {
    let mut looked = Vec::new();
    if let Some(path) = explicit {
        return resolve_candidate(path).ok_or_else(|| LibraryError::NotFound {
            looked: format!("--ort-lib {}", path.display()),
        });
    }
    if let Some(env) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(env);
        return resolve_candidate(&path).ok_or_else(|| LibraryError::NotFound {
            looked: format!("ORT_DYLIB_PATH={}", path.display()),
        });
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    for root in roots {
        let dir = root.join(SETUP_DIR);
        if let Some(found) = resolve_candidate(&dir) {
            return Ok(found);
        }
        if !looked.contains(&dir) {
            looked.push(dir);
        }
    }
    Err(LibraryError::NotFound {
        looked: looked
            .iter()
            .take(4)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A file is taken as is; a folder is searched for `libonnxruntime.so*` (longest name
/// first, so `libonnxruntime.so.1.31.1` wins over a dangling `libonnxruntime.so`).
fn resolve_candidate(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    if !path.is_dir() {
        return None;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with("libonnxruntime.so")
                        || n == "onnxruntime.dll"
                        || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
                })
        })
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}
