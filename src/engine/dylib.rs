//! Native GPU libraries opened at run time (the CUDA runtime, NVML, TensorRT) through
//! `libloading`, for the probes and device copies of [`super::cuda`] and [`super::trt`].
//!
//! Contract: opening a library or a symbol never panics: a missing library, symbol or
//! device is an `Err` naming it. A library stays loaded for the life of the process
//! (unloading the CUDA runtime after use can crash at exit).

use std::ffi::{c_char, c_int, CStr};
use std::mem::ManuallyDrop;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot load {lib}: {reason}")]
    Load { lib: String, reason: String },
    #[error("{lib} has no `{symbol}`: {reason}")]
    Symbol {
        lib: String,
        symbol: &'static str,
        reason: String,
    },
    #[error("{function} failed with code {code}: {message}")]
    Call {
        function: &'static str,
        code: i32,
        message: String,
    },
    #[error("{function} returned {value}, not a TensorRT version")]
    Version { function: &'static str, value: i32 },
}

/// A shared library opened for probing or for device copies, and never closed.
pub struct Lib {
    lib: ManuallyDrop<libloading::Library>,
    name: String,
}

impl Lib {
    /// `path` with a `/` is opened as is, a bare file name through the system loader.
    pub fn open(path: &Path) -> Result<Lib, ProbeError> {
        let name = path.display().to_string();
        // SAFETY: loading runs the library's initialisers; the CUDA, NVML and TensorRT
        // libraries are made to be loaded this way (ONNX Runtime's providers dlopen them).
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| ProbeError::Load {
            lib: name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Lib {
            lib: ManuallyDrop::new(lib),
            name,
        })
    }

    /// The function `symbol`; `T` must be its exact C signature.
    pub fn get<T: Copy>(&self, symbol: &'static str) -> Result<T, ProbeError> {
        // SAFETY: each caller names T as the documented C prototype of `symbol`; the
        // library is never unloaded, so the pointer stays valid.
        unsafe { self.lib.get::<T>(symbol) }
            .map(|s| *s)
            .map_err(|e| ProbeError::Symbol {
                lib: self.name.clone(),
                symbol,
                reason: e.to_string(),
            })
    }
}

pub fn c_text(buffer: &[u8]) -> String {
    CStr::from_bytes_until_nul(buffer)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| String::from_utf8_lossy(buffer).into_owned())
}

/// # Safety
/// `text` is null or a NUL-terminated string that outlives the call.
unsafe fn c_message(text: *const c_char) -> String {
    if text.is_null() {
        String::new()
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }
}

/// A library's `const char* xxxErrorString(int)`, which returns a static string.
pub type ErrorString = unsafe extern "C" fn(c_int) -> *const c_char;

/// `Ok` for status 0, else the call's code with the library's own message for it.
pub fn status(
    function: &'static str,
    code: c_int,
    error_string: ErrorString,
) -> Result<(), ProbeError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: `error_string` is an `ErrorString`: it returns a static string (or null).
    let message = unsafe { c_message(error_string(code)) };
    Err(ProbeError::Call {
        function,
        code,
        message,
    })
}

/// Stand-ins for the GPU libraries, compiled for the probe tests of `cuda` and `trt`.
#[cfg(test)]
pub mod stub {
    use std::path::{Path, PathBuf};

    /// Stand-ins for libnvinfer, libcudart and NVML with the C prototypes of their headers:
    /// device 1 is an "NVIDIA H100 80GB HBM3" (sm 9.0) at PCI 0000:1C:00.0, any other
    /// device is cudaErrorInvalidDevice (101), TensorRT reports 10.9.0. Its one stream's
    /// `cudaMemcpyAsync` copies host memory and counts as pending until
    /// `cudaStreamSynchronize`; `stub_device_syncs` counts `cudaDeviceSynchronize` calls.
    const STUB_C: &str = r#"
    #include <stdio.h>
    #include <string.h>
    int getInferLibVersion(void) { return 100900; }
    int cudaDeviceGetAttribute(int *value, int attr, int device) {
    if (device != 1) return 101;
    if (attr == 75) { *value = 9; return 0; }
    if (attr == 76) { *value = 0; return 0; }
    return 1;
    }
    int cudaDeviceGetPCIBusId(char *bus, int len, int device) {
    snprintf(bus, (size_t)len, "0000:%02X:00.0", 0x1B + device);
    return 0;
    }
    const char *cudaGetErrorString(int code) { return code == 101 ? "invalid device ordinal" : "error"; }
    static int live = 0;
    int nvmlInit_v2(void) { live++; return 0; }
    int nvmlShutdown(void) { live--; return 0; }
    int nvmlDeviceGetHandleByPciBusId_v2(const char *bus, void **device) {
    if (strcmp(bus, "0000:1C:00.0") != 0) return 6;
    *device = (void *)&live;
    return 0;
    }
    int nvmlDeviceGetName(void *device, char *name, unsigned int length) {
    if (device != (void *)&live || live != 1) return 2;
    snprintf(name, length, "NVIDIA H100 80GB HBM3");
    return 0;
    }
    const char *nvmlErrorString(int code) { return code == 6 ? "Not Found" : "error"; }
    int cudaSetDevice(int device) { return device == 1 ? 0 : 101; }
    static int stream_tag, pending_copies, device_syncs;
    int cudaStreamCreateWithFlags(void **stream, unsigned int flags) {
    if (flags != 1) return 1;
    *stream = &stream_tag;
    return 0;
    }
    int cudaMemcpyAsync(void *dst, const void *src, size_t n, int kind, void *stream) {
    if (stream != &stream_tag || kind != 3) return 1;
    memcpy(dst, src, n);
    pending_copies++;
    return 0;
    }
    int cudaStreamSynchronize(void *stream) {
    if (stream != &stream_tag) return 1;
    pending_copies = 0;
    return 0;
    }
    int cudaStreamDestroy(void *stream) { return stream == &stream_tag ? 0 : 1; }
    int cudaDeviceSynchronize(void) { device_syncs++; return 0; }
    int stub_pending_copies(void) { return pending_copies; }
    int stub_device_syncs(void) { return device_syncs; }
    "#;

    /// Compiles [`STUB_C`] with the system C compiler (the build already needs one for
    /// mozjpeg-sys) into a shared library in `dir`.
    pub fn stub_library(dir: &Path) -> PathBuf {
        let source = dir.join("stub.c");
        let lib = dir.join("libstub.so");
        std::fs::write(&source, STUB_C).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let mut words = cc.split_whitespace();
        let program = words.next().unwrap_or("cc");
        let status = std::process::Command::new(program)
            .args(words)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("this test needs a C compiler (`{cc}`): {e}"));
        assert!(status.success(), "{cc} failed on the stub library");
        lib
    }
}
