//! One wheel into a setup folder: downloaded with the fetch module's resumable, sha256-checked
//! downloader into `DIR/wheels` (an interrupted download resumes on the next run), unpacked
//! with its safe unzip, and only the shared libraries moved into place: ONNX Runtime's
//! `onnxruntime/capi/libonnxruntime*.so*` into `DIR/lib`, a GPU wheel's libraries into
//! `DIR/gpu-site` under the paths pip gives them (`nvidia/cu13/lib/...`,
//! `tensorrt_libs/...`). The wheel and its unpacked copy are deleted afterwards.

use std::path::{Path, PathBuf};

use super::record::Package;
use super::SetupError;
use crate::fetch::{fetch_known, unpack, Client, Done, Expected, FileMeta, State};

/// The wheel chosen for a package ([`super::index::choose`]): where it is, what it weighs
/// and its sha256.
#[derive(Debug, Clone)]
pub struct Choice {
    pub version: String,
    pub filename: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// Which files of a wheel are kept, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// `onnxruntime/capi/libonnxruntime*.so*` into `DIR/lib`.
    Runtime,
    /// Every `*.so*` under this top folder of the wheel, into `DIR/gpu-site` at the same
    /// relative path.
    Site(&'static str),
}

pub const LIB_DIR: &str = "lib";
pub const SITE_DIR: &str = "gpu-site";
const WHEELS_DIR: &str = "wheels";

/// Downloads, unpacks and extracts the wheel `choice` into `dir`; returns its record.
pub fn install(
    client: &Client,
    dir: &Path,
    choice: &Choice,
    extract: Extract,
) -> Result<Package, SetupError> {
    let wheels = dir.join(WHEELS_DIR);
    let dest = wheels.join(&choice.filename);
    let meta = FileMeta {
        size: choice.size,
        etag: choice.sha256.clone(),
        expected: Expected::Sha256(choice.sha256.clone()),
        location: choice.url.clone(),
        commit: None,
    };
    let mut state = State::load(&wheels);
    let done = fetch_known(client, &meta, &dest, &choice.filename, &mut state)?;
    let how = match done {
        Done::Present => "already downloaded".to_string(),
        Done::Downloaded(n) if n == choice.size => "downloaded".to_string(),
        Done::Downloaded(n) => format!("resumed: {n} bytes downloaded"),
    };
    eprintln!(
        "setup: {} ({} bytes, {how}, sha256 checked)",
        choice.filename, choice.size
    );
    let staging = wheels.join(format!("{}.unpacked", choice.filename));
    unpack(&dest, &staging, &client.policy.unzip)?;
    let files = match extract {
        Extract::Runtime => take_runtime(&staging, dir),
        Extract::Site(top) => take_site(&staging, top, dir),
    };
    let _ = std::fs::remove_dir_all(&staging);
    let files = files?;
    if files.is_empty() {
        return Err(SetupError::WheelContents {
            wheel: dest,
            what: match extract {
                Extract::Runtime => "no onnxruntime/capi/libonnxruntime*.so*".into(),
                Extract::Site(top) => format!("no shared library under {top}/"),
            },
        });
    }
    std::fs::remove_file(&dest).map_err(io(&dest))?;
    state.files.remove(&choice.filename);
    state.save(&wheels)?;
    Ok(Package {
        version: choice.version.clone(),
        wheel: choice.filename.clone(),
        sha256: choice.sha256.clone(),
        files,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError {
    let path = path.to_path_buf();
    move |source| SetupError::Io { path, source }
}

fn is_shared_library(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

/// Moves the runtime's libraries into `dir/lib`, after removing any earlier version's.
fn take_runtime(unpacked: &Path, dir: &Path) -> Result<Vec<String>, SetupError> {
    let capi = unpacked.join("onnxruntime").join("capi");
    let names = |folder: &Path| -> Vec<String> {
        std::fs::read_dir(folder)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("libonnxruntime") && is_shared_library(n))
            .collect()
    };
    let wanted = names(&capi);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let lib = dir.join(LIB_DIR);
    std::fs::create_dir_all(&lib).map_err(io(&lib))?;
    for old in names(&lib) {
        let path = lib.join(old);
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    let mut files = Vec::new();
    for name in wanted {
        let to = lib.join(&name);
        std::fs::rename(capi.join(&name), &to).map_err(io(&to))?;
        files.push(format!("{LIB_DIR}/{name}"));
    }
    files.sort();
    Ok(files)
}

/// Moves every shared library under `unpacked/top` to `dir/gpu-site/top/...`.
fn take_site(unpacked: &Path, top: &str, dir: &Path) -> Result<Vec<String>, SetupError> {
    let mut found = Vec::new();
    walk(&unpacked.join(top), &mut found);
    let mut files = Vec::new();
    for path in found {
        let Ok(rel) = path.strip_prefix(unpacked) else {
            continue;
        };
        let to: PathBuf = dir.join(SITE_DIR).join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::rename(&path, &to).map_err(io(&to))?;
        files.push(format!("{SITE_DIR}/{}", rel.to_string_lossy()));
    }
    files.sort();
    Ok(files)
}

/// Every shared library file under `folder`, recursively.
fn walk(folder: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if entry.file_name().to_str().is_some_and(is_shared_library) {
            out.push(path);
        }
    }
}
