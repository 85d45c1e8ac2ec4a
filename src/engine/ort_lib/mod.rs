//! Finding and loading the ONNX Runtime shared library, wherever the binary is installed.
//!
//! The places and their order are in [`places`] (`--ort-lib` / `VLGUARD_ORT_LIB`, then
//! `ORT_DYLIB_PATH`, then the checkout's `.ort/lib`, the per-user folder, beside the binary,
//! system-wide, a pip wheel). A folder is searched for `libonnxruntime.so*` (the PyPI wheel
//! ships only the versioned name, `libonnxruntime.so.1.31.1`). A library of another version
//! than [`version::required`] is named with its path and skipped, never loaded by `ort`.
//! When nothing fits, the error lists every place looked at and the command that fixes it;
//! never a panic.

pub mod places;
pub mod version;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use places::{Place, SearchEnv, Source};

/// The one command that puts the library where the search finds it.
pub const FIX: &str = "run `vlguard-ort setup` (`vlguard-ort setup --gpu` for CUDA and TensorRT), or pass --ort-lib PATH";

/// What one place held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No file there, or a folder without `libonnxruntime.so*`.
    Missing,
    /// A library this binary accepts.
    Found { file: PathBuf, version: String },
    /// A library of another version: skipped.
    WrongVersion { file: PathBuf, version: String },
    /// A file whose version could not be read (not ONNX Runtime, unreadable).
    Unusable { file: PathBuf, reason: String },
}

/// One place and what it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    pub place: Place,
    pub finding: Finding,
}

impl fmt::Display for Looked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (label, path) = (self.place.source.label(), self.place.path.display());
        match &self.finding {
            Finding::Missing => write!(f, "{label}: {path}: no library"),
            Finding::Found { file, version } => {
                write!(f, "{label}: {}: ONNX Runtime {version}", file.display())
            }
            Finding::WrongVersion { file, version } => write!(
                f,
                "{label}: {}: ONNX Runtime {version}, this binary needs {}: skipped",
                file.display(),
                version::required()
            ),
            Finding::Unusable { file, reason } => {
                write!(f, "{label}: {}: {reason}: skipped", file.display())
            }
        }
    }
}

/// The search, in order, up to and including the library chosen (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub looked: Vec<Looked>,
}

impl Search {
    /// Looks in each place of `env` in order and stops at the first library that fits.
    pub fn run(env: &SearchEnv) -> Search {
        let mut looked = Vec::new();
        for place in places::places(env) {
            let finding = inspect(&place.path);
            let found = matches!(finding, Finding::Found { .. });
            looked.push(Looked { place, finding });
            if found {
                break;
            }
        }
        Search { looked }
    }

    /// The library chosen and its version.
    pub fn chosen(&self) -> Option<(&Looked, &Path, &str)> {
        self.looked.iter().find_map(|l| match &l.finding {
            Finding::Found { file, version } => Some((l, file.as_path(), version.as_str())),
            _ => None,
        })
    }

    /// Libraries passed over on the way (wrong version, unusable).
    pub fn skipped(&self) -> impl Iterator<Item = &Looked> {
        self.looked.iter().filter(|l| {
            matches!(
                l.finding,
                Finding::WrongVersion { .. } | Finding::Unusable { .. }
            )
        })
    }
}

/// What `path` (a file, or a folder to search) holds.
fn inspect(path: &Path) -> Finding {
    let Some(file) = candidate(path) else {
        return Finding::Missing;
    };
    match version::of_file(&file) {
        Ok(version) if version::compatible(&version) => Finding::Found { file, version },
        Ok(version) => Finding::WrongVersion { file, version },
        Err(reason) => Finding::Unusable { file, reason },
    }
}

/// A file is taken as is; a folder is searched for `libonnxruntime.so*` (longest name
/// first, so `libonnxruntime.so.1.31.1` wins over a dangling `libonnxruntime.so`).
fn candidate(path: &Path) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum LibraryError {
    #[error("ONNX Runtime {} not found; looked at:\n{}\nTo fix: {FIX}", version::required(), lines(&.search.looked))]
    NotFound { search: Search },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
}

fn lines(looked: &[Looked]) -> String {
    let all: Vec<String> = looked.iter().map(|l| format!("  - {l}")).collect();
    all.join("\n")
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
            let load_err = |e: &dyn std::fmt::Display| LibraryError::Load {
                path: path.clone(),
                reason: e.to_string(),
            };
            let builder = ort::init_from(&path).map_err(|e| load_err(&e))?;
            let env = builder
                .with_name("vlguard-ort")
                .with_telemetry(false)
                .build()
                .map_err(|e| load_err(&e))?;
            Ok((path, env))
        })
        .as_ref()
        .map(|(path, env)| (path.as_path(), env))
        .map_err(Clone::clone)
}

/// Resolves the library path without loading it into `ort`; a library of the wrong version
/// passed over on the way is named on stderr.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, LibraryError> {
    let search = Search::run(&SearchEnv::current(explicit));
    for skipped in search.skipped() {
        eprintln!("note: ONNX Runtime: {skipped}");
    }
    match search.chosen() {
        Some((_, file, _)) => Ok(file.to_path_buf()),
        None => Err(LibraryError::NotFound { search }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib(dir: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        path
    }

    #[test]
    fn a_wrong_version_is_named_and_passed_over() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let old = lib(&t.join("work/.ort/lib"), "libonnxruntime.so.1.20.0");
        let good = lib(
            &t.join("home/.local/share/vlguard-ort/lib"),
            "libonnxruntime.so.1.31.1",
        );
        let env = SearchEnv {
            cwd: Some(t.join("work")),
            home: Some(t.join("home")),
            ..SearchEnv::default()
        };
        let search = Search::run(&env);
        let (looked, file, version) = search.chosen().expect("the per-user library");
        assert_eq!(
            (looked.place.source, file, version),
            (Source::User, good.as_path(), "1.31.1")
        );
        let skipped: Vec<String> = search.skipped().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [format!(
                "checkout (.ort/lib): {}: ONNX Runtime 1.20.0, this binary needs 1.31.x: skipped",
                old.display()
            )]
        );
        // The search stops at the first fit.
        assert_eq!(
            search.looked.last().map(|l| l.place.source),
            Some(Source::User)
        );
    }

    #[test]
    fn nothing_found_lists_every_place_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let env = SearchEnv {
            cwd: Some(t.join("work")),
            home: Some(t.join("home")),
            exe: Some(t.join("bin/vlguard-ort")),
            explicit: None,
            ..SearchEnv::default()
        };
        let search = Search::run(&env);
        assert!(search.chosen().is_none());
        let text = LibraryError::NotFound {
            search: search.clone(),
        }
        .to_string();
        assert!(
            text.starts_with("ONNX Runtime 1.31.x not found; looked at:\n"),
            "{text}"
        );
        for looked in &search.looked {
            assert!(
                text.contains(&format!("{}: no library", looked.place.path.display())),
                "{text}"
            );
        }
        assert!(text.contains(&format!(
            "per-user folder: {}",
            t.join("home/.local/share/vlguard-ort/lib").display()
        )));
        assert!(text.contains(&format!(
            "beside the binary: {}",
            t.join("lib/vlguard-ort/lib").display()
        )));
        assert!(text.ends_with(&format!("To fix: {FIX}")), "{text}");
    }

    #[test]
    fn an_explicit_wrong_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let old = lib(tmp.path(), "libonnxruntime.so.1.32.0");
        let env = SearchEnv {
            explicit: Some(old.clone()),
            home: Some(tmp.path().into()),
            ..SearchEnv::default()
        };
        let search = Search::run(&env);
        assert_eq!(search.looked.len(), 1);
        assert_eq!(
            search.looked[0].finding,
            Finding::WrongVersion {
                file: old,
                version: "1.32.0".into()
            }
        );
    }

    #[test]
    fn the_library_itself_is_asked_when_the_name_has_no_version() {
        // The checkout's library under a version-less name: its own GetVersionString.
        let Ok(real) = locate(None) else {
            return; // no ONNX Runtime on this machine: the search tests above still ran
        };
        let tmp = tempfile::tempdir().unwrap();
        let plain = tmp.path().join("libonnxruntime.so");
        std::fs::copy(&real, &plain).unwrap();
        assert_eq!(version::of_file(&plain).as_deref(), Ok("1.31.1"));
    }
}
