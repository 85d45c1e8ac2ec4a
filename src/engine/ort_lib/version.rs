//! Which ONNX Runtime a library file is, before `ort` uses it: this binary speaks ONNX
//! Runtime C API 31 (`ort`'s `api-31` feature), i.e. ONNX Runtime 1.31.x, the version its
//! outputs were checked against. Read from the file name when it carries one (the wheel's
//! `libonnxruntime.so.1.31.1`, a symlink to it), else from the library itself through
//! `OrtGetApiBase()->GetVersionString()` (a plain `libonnxruntime.so`).

use std::ffi::{c_char, CStr};
use std::path::Path;

use crate::engine::dylib::Lib;

/// The ONNX Runtime versions this binary accepts, for messages: `1.31.x`.
pub fn required() -> String {
    format!("1.{}.x", ort::MINOR_VERSION)
}

/// Whether `version` (`1.31.1`) is one this binary accepts.
pub fn compatible(version: &str) -> bool {
    let mut parts = version.split('.');
    parts.next() == Some("1")
        && parts.next().and_then(|m| m.parse().ok()) == Some(ort::MINOR_VERSION)
}

/// `1.31.1` from `libonnxruntime.so.1.31.1` (or `libonnxruntime.1.31.1.dylib`).
pub fn from_name(name: &str) -> Option<String> {
    let version = name
        .strip_prefix("libonnxruntime.so.")
        .or_else(|| name.strip_prefix("libonnxruntime.")?.strip_suffix(".dylib"))?;
    let numeric = version
        .split('.')
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (numeric && version.contains('.')).then(|| version.to_string())
}

/// The version of the library at `file`: its name, the name it links to, else the library's
/// own answer (which loads it).
pub fn of_file(file: &Path) -> Result<String, String> {
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).and_then(from_name);
    if let Some(v) = name(file) {
        return Ok(v);
    }
    if let Some(v) = std::fs::canonicalize(file).ok().as_deref().and_then(name) {
        return Ok(v);
    }
    from_library(file)
}

/// `OrtGetApiBase()->GetVersionString()` of the library at `file`.
pub fn from_library(file: &Path) -> Result<String, String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    let lib = Lib::open(file).map_err(|e| e.to_string())?;
    let get_base = lib
        .get::<GetApiBase>("OrtGetApiBase")
        .map_err(|e| format!("not an ONNX Runtime library: {e}"))?;
    // SAFETY: `const OrtApiBase* OrtGetApiBase(void)` (onnxruntime_c_api.h) returns a
    // pointer to a static struct; it is checked for null before use.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err("OrtGetApiBase returned null".into());
    }
    // SAFETY: `base` points at the library's static OrtApiBase; `GetVersionString` returns
    // a static NUL-terminated string; the library is never unloaded ([`Lib`]).
    let text: *const c_char = unsafe { ((*base).GetVersionString)() };
    if text.is_null() {
        return Err("GetVersionString returned null".into());
    }
    // SAFETY: as above.
    Ok(unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_names() {
        assert_eq!(
            from_name("libonnxruntime.so.1.31.1").as_deref(),
            Some("1.31.1")
        );
        assert_eq!(
            from_name("libonnxruntime.1.20.0.dylib").as_deref(),
            Some("1.20.0")
        );
        assert_eq!(from_name("libonnxruntime.so"), None);
        assert_eq!(from_name("libonnxruntime.so.1"), None);
        assert_eq!(from_name("libonnxruntime.so.1.x.1"), None);
        assert_eq!(from_name("libonnxruntime_providers_cuda.so"), None);
    }

    #[test]
    fn only_1_31_is_accepted() {
        assert_eq!(required(), "1.31.x");
        assert!(compatible("1.31.1") && compatible("1.31.0"));
        assert!(!compatible("1.30.0") && !compatible("1.32.0") && !compatible("2.31.0"));
    }

    #[test]
    fn a_file_that_is_not_onnx_runtime_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let stub = crate::engine::dylib::stub::stub_library(tmp.path());
        let err = of_file(&stub).unwrap_err();
        assert!(
            err.contains("not an ONNX Runtime library") && err.contains("OrtGetApiBase"),
            "{err}"
        );
    }
}
