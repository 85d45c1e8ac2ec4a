//! `vlguard-ort doctor`: what this binary would run on, without loading a model. The first
//! thing to run on a new machine and what a bug report should contain.
//!
//! Prints the binary's version; every place the ONNX Runtime search looked, in order, with
//! what it found there ([`crate::engine::ort_lib`]); the library it loads, its version and
//! the execution providers it offers; then, for `--ep cuda` / `tensorrt`, each library the
//! CUDA and TensorRT providers need: the provider libraries beside ONNX Runtime, the CUDA
//! 13 runtime, cuBLAS, cuDNN 9 and TensorRT 10 where a run looks for them (the GPU site
//! beside the library, the `VLGUARD_*_LIB_DIR` / `--trt-lib-dir` overrides, then the
//! system loader), with their versions from their own C APIs, and the driver's CUDA
//! version. Exit code 0 when ONNX Runtime is found (a machine without a GPU is fine), 1
//! when it is not.

use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::engine::cuda::cuda_lib_dirs;
use crate::engine::dylib::{Lib, ProbeError};
use crate::engine::ort_lib::{self, version, Search, SearchEnv, FIX};
use crate::engine::trt;

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// ONNX Runtime library to check instead of searching (as `run --ort-lib`).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Folder holding TensorRT 10's libraries (as `run --trt-lib-dir`).
    #[arg(long, env = "VLGUARD_TRT_LIB_DIR", value_name = "DIR")]
    pub trt_lib_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error(transparent)]
    Library(#[from] ort_lib::LibraryError),
}

/// `vlguard-ort doctor`.
pub fn command(args: &DoctorArgs) -> Result<ExitCode, DoctorError> {
    println!(
        "vlguard-ort {} (ort {}, needs ONNX Runtime {})",
        env!("CARGO_PKG_VERSION"),
        ORT_CRATE_VERSION,
        version::required()
    );
    let search = Search::run(&SearchEnv::current(args.ort_lib.as_deref()));
    println!("ONNX Runtime search, in order (the first fit wins):");
    for looked in &search.looked {
        println!("  - {looked}");
    }
    let Some((looked, file, found_version)) = search.chosen() else {
        println!("ONNX Runtime: not found. To fix: {FIX}");
        return Ok(ExitCode::from(1));
    };
    println!(
        "ONNX Runtime {found_version}: {} ({})",
        file.display(),
        looked.place.source.label()
    );
    let file = file.to_path_buf();
    ort_lib::init(Some(&file))?;
    match available_providers() {
        Ok(list) => println!("execution providers: {}", list.join(", ")),
        Err(e) => println!("execution providers: cannot list them: {e}"),
    }
    gpu_report(&file, args.trt_lib_dir.as_deref());
    Ok(ExitCode::SUCCESS)
}

/// The `ort` crate this binary was built with (Cargo.toml pins it exactly).
const ORT_CRATE_VERSION: &str = "2.0.0-rc.15";

/// `OrtApi::GetAvailableProviders`: the execution providers the loaded library was built
/// with (a GPU build lists CUDA and TensorRT even where their libraries are missing).
fn available_providers() -> Result<Vec<String>, String> {
    let api = ort::api();
    let mut list: *mut *mut c_char = std::ptr::null_mut();
    let mut count: c_int = 0;
    // SAFETY: `OrtStatus* GetAvailableProviders(char*** out_ptr, int* provider_length)`
    // (onnxruntime_c_api.h) writes an array it owns and its length.
    let status = unsafe { (api.GetAvailableProviders)(&mut list, &mut count) };
    if !status.0.is_null() {
        // SAFETY: a non-null status holds a NUL-terminated message until released.
        let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: releases the status just read.
        unsafe { (api.ReleaseStatus)(status.0) };
        return Err(message);
    }
    let names = (0..usize::try_from(count).unwrap_or(0))
        // SAFETY: `list` holds `count` NUL-terminated strings.
        .map(|i| {
            unsafe { CStr::from_ptr(*list.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: `ReleaseAvailableProviders` frees what `GetAvailableProviders` gave.
    let status = unsafe { (api.ReleaseAvailableProviders)(list, count) };
    if !status.0.is_null() {
        // SAFETY: as above.
        unsafe { (api.ReleaseStatus)(status.0) };
    }
    Ok(names)
}

/// Reads an opened library's version through its C API.
type ReadVersion = fn(&Lib) -> Result<String, ProbeError>;

/// A library a GPU run needs, and how to read its version.
struct Needed {
    name: &'static str,
    dir: Option<PathBuf>,
    version: Option<ReadVersion>,
}

/// The provider libraries, the CUDA / cuDNN runtime and TensorRT, each found or missing.
fn gpu_report(ort_lib: &Path, trt_lib_dir: Option<&Path>) {
    let beside = ort_lib.parent().map(Path::to_path_buf);
    let (cuda, cudnn) = cuda_lib_dirs(ort_lib);
    let trt_dir = trt::libs::lib_dir(trt_lib_dir, ort_lib);
    let needed = [
        need("libonnxruntime_providers_cuda.so", &beside, None),
        need("libonnxruntime_providers_tensorrt.so", &beside, None),
        need("libcudart.so.13", &cuda, Some(cudart_version)),
        need("libcublas.so.13", &cuda, Some(cublas_version)),
        need("libcublasLt.so.13", &cuda, None),
        need("libnvrtc.so.13", &cuda, None),
        need("libcurand.so.10", &cuda, None),
        need("libcufft.so.12", &cuda, None),
        need("libcudnn.so.9", &cudnn, Some(cudnn_version)),
        need(
            trt::libs::NVINFER_LIB,
            &trt_dir,
            Some(trt::tensorrt_version_of),
        ),
        need("libcuda.so.1", &None, Some(driver_version)),
    ];
    println!("GPU libraries (for --ep cuda / tensorrt):");
    let mut missing = Vec::new();
    for item in &needed {
        let (line, found) = probe(item);
        println!("  - {}: {line}", item.name);
        if !found {
            missing.push(item.name);
        }
    }
    if !missing.is_empty() {
        println!(
            "missing: {}. A CPU machine needs none of them; on a GPU machine: `vlguard-ort setup --gpu` \
             (`--tensorrt` for TensorRT; libcuda.so.1 comes with the NVIDIA driver)",
            missing.join(", ")
        );
    }
}

fn need(name: &'static str, dir: &Option<PathBuf>, version: Option<ReadVersion>) -> Needed {
    Needed {
        name,
        dir: dir.clone(),
        version,
    }
}

/// One line about `item` and whether it was found: in its folder, else through the system
/// loader (by name, as the providers load it).
fn probe(item: &Needed) -> (String, bool) {
    let in_dir = item
        .dir
        .as_ref()
        .map(|d| d.join(item.name))
        .filter(|p| p.is_file());
    let (path, place) = match &in_dir {
        Some(p) => (p.clone(), p.display().to_string()),
        None => (PathBuf::from(item.name), "system library path".to_string()),
    };
    let opened = Lib::open(&path);
    let lib = match (opened, &in_dir) {
        (Ok(lib), _) => lib,
        (Err(_), None) => return (missing_line(item), false),
        (Err(e), Some(_)) => return (format!("{place}: found but cannot be loaded: {e}"), false),
    };
    let version = item.version.map(|read| match read(&lib) {
        Ok(v) => format!(" (version {v})"),
        Err(e) => format!(" (version unknown: {e})"),
    });
    (format!("{place}{}", version.unwrap_or_default()), true)
}

fn missing_line(item: &Needed) -> String {
    match &item.dir {
        Some(dir) => format!(
            "missing (not in {}, not on the system library path)",
            dir.display()
        ),
        None => "missing (not on the system library path)".into(),
    }
}

/// `major.minor` of a CUDA version number (`13000` -> `13.0`).
fn cuda_number(value: c_int) -> String {
    format!("{}.{}", value / 1000, (value % 1000) / 10)
}

/// `int` out-parameter call of the CUDA runtime or driver: `cudaRuntimeGetVersion`,
/// `cuDriverGetVersion`.
fn int_out(lib: &Lib, symbol: &'static str) -> Result<c_int, ProbeError> {
    let get = lib.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(symbol)?;
    let mut value: c_int = 0;
    // SAFETY: `cudaError_t cudaRuntimeGetVersion(int*)` / `CUresult cuDriverGetVersion(int*)`
    // write one int through a valid pointer.
    let code = unsafe { get(&mut value) };
    if code != 0 {
        return Err(ProbeError::Call {
            function: symbol,
            code,
            message: String::new(),
        });
    }
    Ok(value)
}

fn cudart_version(lib: &Lib) -> Result<String, ProbeError> {
    int_out(lib, "cudaRuntimeGetVersion").map(|v| format!("CUDA {}", cuda_number(v)))
}

fn driver_version(lib: &Lib) -> Result<String, ProbeError> {
    int_out(lib, "cuDriverGetVersion").map(|v| format!("driver supports CUDA {}", cuda_number(v)))
}

fn cublas_version(lib: &Lib) -> Result<String, ProbeError> {
    let get = lib.get::<unsafe extern "C" fn(c_int, *mut c_int) -> c_int>("cublasGetProperty")?;
    let mut parts = Vec::new();
    // libraryPropertyType (library_types.h): MAJOR_VERSION 0, MINOR_VERSION 1, PATCH_LEVEL 2.
    for property in 0..3 {
        let mut value: c_int = 0;
        // SAFETY: `cublasStatus_t cublasGetProperty(libraryPropertyType, int*)` writes one int.
        let code = unsafe { get(property, &mut value) };
        if code != 0 {
            return Err(ProbeError::Call {
                function: "cublasGetProperty",
                code,
                message: String::new(),
            });
        }
        parts.push(value.to_string());
    }
    Ok(parts.join("."))
}

fn cudnn_version(lib: &Lib) -> Result<String, ProbeError> {
    let get = lib.get::<unsafe extern "C" fn() -> usize>("cudnnGetVersion")?;
    // SAFETY: `size_t cudnnGetVersion(void)`, no state.
    let v = unsafe { get() };
    // cuDNN 9 encodes MAJOR * 10000 + MINOR * 100 + PATCH (cudnn_version.h).
    Ok(format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_versions_read_as_nvidia_writes_them() {
        // cuda_runtime_api.h: "1000 * major + 10 * minor".
        assert_eq!(cuda_number(13000), "13.0");
        assert_eq!(cuda_number(12080), "12.8");
    }
}
