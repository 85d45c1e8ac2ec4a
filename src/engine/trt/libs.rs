//! Where TensorRT 10's libraries are, and loading them before the TensorRT provider is
//! made, so that a TensorRT run needs no LD_LIBRARY_PATH.
//!
//! Order: `--trt-lib-dir DIR` (or `VLGUARD_TRT_LIB_DIR`), then the folder
//! `vlguard-ort setup --gpu --tensorrt` fills (`tensorrt_libs` in the GPU site beside the
//! ONNX Runtime library in use, [`runtime_site`]: where pip's `tensorrt-cu13-libs` puts
//! them), then the system
//! loader (NVIDIA's containers ship TensorRT under the system library path). Loading
//! `libnvinfer.so.10` (and its plugin and ONNX-parser libraries when the folder has them)
//! by full path makes the provider's own dependency on those names resolve to them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::super::dylib::{Lib, ProbeError};
use super::super::ort_lib::places::runtime_site;

pub const NVINFER_LIB: &str = "libnvinfer.so.10";
/// Loaded after `libnvinfer.so.10` when present: the provider links them too.
const COMPANIONS: [&str; 2] = ["libnvinfer_plugin.so.10", "libnvonnxparser.so.10"];

/// The folder holding `libnvinfer.so.10`, or `None` for the system loader's search.
pub fn lib_dir(explicit: Option<&Path>, ort_lib: &Path) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    let setup = runtime_site(ort_lib)?.join("tensorrt_libs");
    setup.join(NVINFER_LIB).is_file().then_some(setup)
}

/// `libnvinfer.so.10` in `dir`, or the bare name for the system loader.
pub fn nvinfer_path(dir: Option<&Path>) -> PathBuf {
    match dir {
        Some(dir) => dir.join(NVINFER_LIB),
        None => PathBuf::from(NVINFER_LIB),
    }
}

/// TensorRT's libraries could not be loaded from their folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibsError {
    /// `libnvinfer.so.10` is not in `dir` (or does not load).
    #[error(
        "{source}; TensorRT 10 is not in {}: run `vlguard-ort setup --gpu --tensorrt`, or point \
         --trt-lib-dir (VLGUARD_TRT_LIB_DIR) at the folder holding {NVINFER_LIB}",
        dir.display()
    )]
    NoTensorRt { dir: PathBuf, source: ProbeError },
    /// One of its companion libraries (present in the folder) does not load.
    #[error(transparent)]
    Companion(ProbeError),
}

static PRELOADED: OnceLock<Result<(), LibsError>> = OnceLock::new();

/// Loads TensorRT's libraries from `dir` once per process (nothing to do for the system
/// loader). An error names the missing file and the ways to provide it.
pub fn preload(dir: Option<&Path>) -> Result<(), LibsError> {
    let Some(dir) = dir else {
        return Ok(());
    };
    PRELOADED.get_or_init(|| load_from(dir)).clone()
}

/// Loads `libnvinfer.so.10` and its companions from `dir`.
fn load_from(dir: &Path) -> Result<(), LibsError> {
    let nvinfer = dir.join(NVINFER_LIB);
    Lib::open(&nvinfer).map_err(|source| LibsError::NoTensorRt {
        dir: dir.to_path_buf(),
        source,
    })?;
    for name in COMPANIONS {
        let path = dir.join(name);
        if path.is_file() {
            Lib::open(&path).map_err(LibsError::Companion)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_comes_from_the_flag_then_the_setup_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let ort_lib = tmp.path().join(".ort/lib/libonnxruntime.so.1.31.1");
        let explicit = tmp.path().join("trt");
        assert_eq!(lib_dir(Some(&explicit), &ort_lib), Some(explicit.clone()));
        // No setup folder yet: the system loader.
        assert_eq!(lib_dir(None, &ort_lib), None);
        assert_eq!(nvinfer_path(None), PathBuf::from(NVINFER_LIB));
        let setup = tmp.path().join(".ort/gpu-site/tensorrt_libs");
        std::fs::create_dir_all(&setup).unwrap();
        std::fs::write(setup.join(NVINFER_LIB), b"").unwrap();
        assert_eq!(lib_dir(None, &ort_lib), Some(setup.clone()));
        assert_eq!(nvinfer_path(Some(&setup)), setup.join(NVINFER_LIB));
    }

    #[test]
    fn a_stub_tensorrt_in_the_folder_is_loaded_and_probed() {
        let tmp = tempfile::tempdir().unwrap();
        let stub = crate::engine::dylib::stub::stub_library(tmp.path());
        let dir = tmp.path().join("tensorrt_libs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&stub, dir.join(NVINFER_LIB)).unwrap();
        assert_eq!(
            super::super::tensorrt_version_from(&nvinfer_path(Some(&dir))).unwrap(),
            "10.9.0"
        );
        preload(Some(&dir)).unwrap();
    }

    #[test]
    fn a_folder_without_tensorrt_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let err = load_from(tmp.path()).unwrap_err();
        assert!(
            matches!(&err, LibsError::NoTensorRt { dir, source: ProbeError::Load { .. } } if dir == tmp.path()),
            "{err:?}"
        );
        let err = err.to_string();
        let missing = tmp.path().join(NVINFER_LIB);
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(
            err.contains("vlguard-ort setup --gpu --tensorrt") && err.contains("--trt-lib-dir"),
            "{err}"
        );
    }
}
