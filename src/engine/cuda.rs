//! The CUDA side of a GPU run, apart from ONNX Runtime: where the CUDA 13 / cuDNN 9
//! runtime libraries are (and preloading them, so the CUDA provider needs no
//! LD_LIBRARY_PATH), the GPU's identity for the TensorRT engine cache key, the memory
//! descriptions IO binding uses, and device-to-device row copies for the fused decoder's
//! slot cache (through the same `libcudart.so.13` the provider loads).
//!
//! Contract: nothing here panics on a machine without a GPU: a missing library, symbol or
//! device is an `Err` naming it ([`super::dylib`]).

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::dylib::{c_text, status, ErrorString, Lib, ProbeError};
use super::ort_lib::places::runtime_site;
use super::Error;

pub const NVML_LIB: &str = "libnvidia-ml.so.1";

/// A GPU as the engine cache key sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuIdentity {
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    pub compute_major: i32,
    pub compute_minor: i32,
}

/// Where the CUDA 13 and cuDNN 9 runtime libraries are: `VLGUARD_CUDA_LIB_DIR` /
/// `VLGUARD_CUDNN_LIB_DIR`, else `nvidia/{cu13,cudnn}/lib` in the GPU site beside the
/// library in use ([`runtime_site`]: `DIR/gpu-site`, filled by `vlguard-ort setup --gpu`,
/// or the site-packages of a pip-installed onnxruntime-gpu). `None` leaves the search to
/// the system loader (LD_LIBRARY_PATH, ldconfig).
pub fn cuda_lib_dirs(ort_lib: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let site = runtime_site(ort_lib).map(|site| site.join("nvidia"));
    let pick = |var: &str, sub: &str| -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(dir));
        }
        site.as_ref().map(|s| s.join(sub)).filter(|d| d.is_dir())
    };
    (
        pick("VLGUARD_CUDA_LIB_DIR", "cu13/lib"),
        pick("VLGUARD_CUDNN_LIB_DIR", "cudnn/lib"),
    )
}

/// The CUDA runtime library ONNX Runtime's CUDA provider loads.
pub const CUDART_LIB: &str = "libcudart.so.13";

/// `libcudart.so.13` from [`cuda_lib_dirs`] when it is there, else the bare name for the
/// system loader.
pub fn cudart_path(ort_lib: &Path) -> PathBuf {
    cuda_lib_dirs(ort_lib)
        .0
        .map(|dir| dir.join(CUDART_LIB))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(CUDART_LIB))
}

static CUDART: OnceLock<Result<Lib, ProbeError>> = OnceLock::new();

/// The CUDA runtime at [`cudart_path`], opened once per process: the GPU probe and the
/// device copies share this one handle (the library ONNX Runtime's CUDA provider loads).
/// The first call's `ort_lib` decides the path; a process uses one ONNX Runtime library.
pub fn cudart(ort_lib: &Path) -> Result<&'static Lib, ProbeError> {
    CUDART
        .get_or_init(|| Lib::open(&cudart_path(ort_lib)))
        .as_ref()
        .map_err(Clone::clone)
}

/// The CUDA / cuDNN libraries could not be preloaded (ONNX Runtime's error, shared by
/// every session of the process: the preload runs once).
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{source} (run `vlguard-ort setup --gpu`, or set VLGUARD_CUDA_LIB_DIR / VLGUARD_CUDNN_LIB_DIR)"
)]
pub struct PreloadError {
    source: std::sync::Arc<ort::Error>,
}

static CUDA_PRELOADED: OnceLock<Result<(), PreloadError>> = OnceLock::new();

/// Preloads the CUDA and cuDNN libraries once, so the CUDA provider finds them without
/// LD_LIBRARY_PATH. An error names the missing library and the setup command.
pub fn preload(ort_lib: &Path) -> Result<(), PreloadError> {
    CUDA_PRELOADED
        .get_or_init(|| {
            let (cuda, cudnn) = cuda_lib_dirs(ort_lib);
            if cuda.is_none() && cudnn.is_none() {
                return Ok(());
            }
            ort::ep::cuda::preload_dylibs(cuda.as_deref(), cudnn.as_deref()).map_err(|e| {
                PreloadError {
                    source: std::sync::Arc::new(e),
                }
            })
        })
        .clone()
}

/// cudaDeviceAttr values (driver_types.h): compute capability major / minor.
const CUDA_DEV_ATTR_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
const CUDA_DEV_ATTR_COMPUTE_CAPABILITY_MINOR: c_int = 76;
/// NVML_DEVICE_NAME_V2_BUFFER_SIZE (nvml.h).
const NVML_NAME_BUFFER: usize = 96;

/// Name and compute capability of CUDA device `device_id` (the ordinal ONNX Runtime's
/// `device_id` means): compute capability from the CUDA runtime
/// (`cudaDeviceGetAttribute`), the name from NVML by the device's PCI bus id (the CUDA
/// runtime's own name lives in `cudaDeviceProp`, a struct whose layout changes between
/// CUDA versions). The runtime is the one [`cuda_lib_dirs`] finds beside
/// ONNX Runtime, else the system loader's ([`cudart`]).
pub fn gpu_identity(ort_lib: &Path, device_id: i32) -> Result<GpuIdentity, ProbeError> {
    gpu_identity_from(cudart(ort_lib)?, Path::new(NVML_LIB), device_id)
}

/// [`gpu_identity`] through the CUDA runtime `rt` and the NVML library at `nvml`.
pub fn gpu_identity_from(rt: &Lib, nvml: &Path, device_id: i32) -> Result<GpuIdentity, ProbeError> {
    type GetAttribute = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    type GetPciBusId = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    type NoArgs = unsafe extern "C" fn() -> c_int;
    type HandleByBusId = unsafe extern "C" fn(*const c_char, *mut *mut c_void) -> c_int;
    type GetName = unsafe extern "C" fn(*mut c_void, *mut c_char, c_uint) -> c_int;

    let get_attribute = rt.get::<GetAttribute>("cudaDeviceGetAttribute")?;
    let get_bus_id = rt.get::<GetPciBusId>("cudaDeviceGetPCIBusId")?;
    // `const char* cudaGetErrorString(cudaError_t)`: a static string.
    let cuda_error = rt.get::<ErrorString>("cudaGetErrorString")?;
    let cuda_call = |function, code| status(function, code, cuda_error);
    let mut major: c_int = 0;
    let mut minor: c_int = 0;
    // SAFETY: `cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int
    // device)` writes one int through a valid pointer.
    cuda_call("cudaDeviceGetAttribute", unsafe {
        get_attribute(
            &mut major,
            CUDA_DEV_ATTR_COMPUTE_CAPABILITY_MAJOR,
            device_id,
        )
    })?;
    // SAFETY: as above.
    cuda_call("cudaDeviceGetAttribute", unsafe {
        get_attribute(
            &mut minor,
            CUDA_DEV_ATTR_COMPUTE_CAPABILITY_MINOR,
            device_id,
        )
    })?;
    let mut bus_id = [0u8; 32];
    // SAFETY: `cudaError_t cudaDeviceGetPCIBusId(char* pciBusId, int len, int device)`
    // writes at most `len` bytes, NUL included.
    cuda_call("cudaDeviceGetPCIBusId", unsafe {
        get_bus_id(bus_id.as_mut_ptr().cast(), bus_id.len() as c_int, device_id)
    })?;

    let ml = Lib::open(nvml)?;
    let init = ml.get::<NoArgs>("nvmlInit_v2")?;
    let shutdown = ml.get::<NoArgs>("nvmlShutdown")?;
    let by_bus_id = ml.get::<HandleByBusId>("nvmlDeviceGetHandleByPciBusId_v2")?;
    let get_name = ml.get::<GetName>("nvmlDeviceGetName")?;
    // `const char* nvmlErrorString(nvmlReturn_t)`: a static string.
    let nvml_error = ml.get::<ErrorString>("nvmlErrorString")?;
    let nvml_call = |function, code| status(function, code, nvml_error);
    // SAFETY: `nvmlReturn_t nvmlInit_v2(void)`.
    nvml_call("nvmlInit_v2", unsafe { init() })?;
    let mut name = [0u8; NVML_NAME_BUFFER];
    let named = (|| {
        let mut device: *mut c_void = std::ptr::null_mut();
        // SAFETY: `nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char*, nvmlDevice_t*)`
        // reads the NUL-terminated bus id and writes one handle.
        nvml_call("nvmlDeviceGetHandleByPciBusId_v2", unsafe {
            by_bus_id(bus_id.as_ptr().cast(), &mut device)
        })?;
        // SAFETY: `nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t, char* name, unsigned int
        // length)` writes at most `length` bytes, NUL included.
        nvml_call("nvmlDeviceGetName", unsafe {
            get_name(device, name.as_mut_ptr().cast(), NVML_NAME_BUFFER as c_uint)
        })
    })();
    // SAFETY: `nvmlReturn_t nvmlShutdown(void)`, balancing the successful init.
    unsafe { shutdown() };
    named?;
    Ok(GpuIdentity {
        name: c_text(&name),
        compute_major: major,
        compute_minor: minor,
    })
}

/// Memory descriptions for IO binding: outputs kept in device memory, or sent to the host.
pub struct DeviceMemory {
    pub device: ort::memory::MemoryInfo<'static>,
    pub host: ort::memory::MemoryInfo<'static>,
}

impl DeviceMemory {
    pub fn host() -> ort::Result<ort::memory::MemoryInfo<'static>> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
    }

    pub fn cuda(device_id: i32) -> ort::Result<DeviceMemory> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let device = MemoryInfo::new(
            AllocationDevice::CUDA,
            device_id,
            AllocatorType::Device,
            MemoryType::Default,
        )?;
        Ok(DeviceMemory {
            device,
            host: DeviceMemory::host()?,
        })
    }
}

/// Row copies between two caches, as the fused decoder refills a busy slot: on a GPU
/// through the CUDA runtime ONNX Runtime's CUDA provider loads (`libcudart.so.13`), with
/// host memory standing in on a CPU run that replays the GPU's scheduling
/// (`--keep-finished-rows`), so that run takes this same path.
///
/// On the GPU the copies are queued with `cudaMemcpyAsync` on a non-blocking stream of
/// this struct's own and [`DeviceCopy::finish`] waits for that stream alone
/// (`cudaStreamSynchronize`), as ONNX Runtime's own GPU data transfer does on its stream:
/// `cudaDeviceSynchronize` would also wait for the vision tower's session running on its
/// own thread, stalling every refill for a whole vision batch. Ordering needs nothing
/// more: the prompt's session run has synchronised its stream when it returns (its logits
/// are on the host), and `finish` returns before the next run starts.
pub struct DeviceCopy {
    backend: Backend,
}

enum Backend {
    Cuda(CudaCopy),
    Host,
}

/// A `cudaStream_t`.
struct Stream(*mut c_void);

// SAFETY: a CUDA stream handle is not tied to the host thread that created it (the
// runtime API takes it from any thread); it is only used through `&DeviceCopy` calls that
// the decoder makes one at a time.
unsafe impl Send for Stream {}

struct CudaCopy {
    set_device: unsafe extern "C" fn(c_int) -> c_int,
    memcpy_async:
        unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int, *mut c_void) -> c_int,
    stream_synchronize: unsafe extern "C" fn(*mut c_void) -> c_int,
    stream_destroy: unsafe extern "C" fn(*mut c_void) -> c_int,
    stream: Stream,
    device_id: c_int,
}

/// cudaMemcpyKind::cudaMemcpyDeviceToDevice (driver_types.h).
const CUDA_MEMCPY_DEVICE_TO_DEVICE: c_int = 3;
/// cudaStreamNonBlocking (driver_types.h): no implicit synchronisation with the legacy
/// default stream.
const CUDA_STREAM_NON_BLOCKING: c_uint = 1;

type CreateStream = unsafe extern "C" fn(*mut *mut c_void, c_uint) -> c_int;

impl DeviceCopy {
    /// Copies on CUDA device `device_id` through the CUDA runtime `lib` ([`cudart`]), on a
    /// stream created here. The function pointers stay valid: a [`Lib`] is never unloaded.
    pub fn load(lib: &Lib, device_id: i32) -> Result<DeviceCopy, Error> {
        // The symbols with their C prototypes from cuda_runtime_api.h.
        let symbols = || -> Result<_, ProbeError> {
            Ok((
                lib.get::<unsafe extern "C" fn(c_int) -> c_int>("cudaSetDevice")?,
                lib.get::<CreateStream>("cudaStreamCreateWithFlags")?,
                lib.get("cudaMemcpyAsync")?,
                lib.get("cudaStreamSynchronize")?,
                lib.get("cudaStreamDestroy")?,
            ))
        };
        let (set_device, create, memcpy_async, stream_synchronize, stream_destroy) = symbols()?;
        let mut stream: *mut c_void = std::ptr::null_mut();
        // SAFETY: `cudaError_t cudaSetDevice(int)`, then `cudaError_t
        // cudaStreamCreateWithFlags(cudaStream_t*, unsigned int)` writing one handle.
        unsafe {
            Self::check("cudaSetDevice", set_device(device_id))?;
            Self::check(
                "cudaStreamCreateWithFlags",
                create(&mut stream, CUDA_STREAM_NON_BLOCKING),
            )?;
        }
        Ok(DeviceCopy {
            backend: Backend::Cuda(CudaCopy {
                set_device,
                memcpy_async,
                stream_synchronize,
                stream_destroy,
                stream: Stream(stream),
                device_id,
            }),
        })
    }

    /// Copies between host addresses: a CPU run taking the GPU's refill path.
    pub fn host() -> DeviceCopy {
        DeviceCopy {
            backend: Backend::Host,
        }
    }

    fn check(call: &'static str, code: c_int) -> Result<(), Error> {
        match code {
            0 => Ok(()),
            code => Err(Error::Cuda { call, code }),
        }
    }

    /// Queues a copy of `bytes` bytes from `src` to `dst` (device addresses; host
    /// addresses for [`DeviceCopy::host`]); complete once [`DeviceCopy::finish`] returns.
    ///
    /// # Safety
    /// `dst` and `src` are addresses of `bytes` valid bytes each, not overlapping, in the
    /// memory this copier works on, and stay valid until `finish` returns.
    pub unsafe fn copy(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
    ) -> Result<(), Error> {
        match &self.backend {
            // SAFETY: per this function's contract.
            Backend::Host => unsafe {
                std::ptr::copy_nonoverlapping(src.cast::<u8>(), dst.cast::<u8>(), bytes);
                Ok(())
            },
            // SAFETY: per this function's contract; the stream is this struct's own.
            Backend::Cuda(cuda) => unsafe {
                Self::check("cudaSetDevice", (cuda.set_device)(cuda.device_id))?;
                Self::check(
                    "cudaMemcpyAsync",
                    (cuda.memcpy_async)(
                        dst,
                        src,
                        bytes,
                        CUDA_MEMCPY_DEVICE_TO_DEVICE,
                        cuda.stream.0,
                    ),
                )
            },
        }
    }

    /// Waits for the queued copies (this copier's stream only).
    pub fn finish(&self) -> Result<(), Error> {
        match &self.backend {
            Backend::Host => Ok(()),
            // SAFETY: `cudaError_t cudaStreamSynchronize(cudaStream_t)` on our own stream.
            Backend::Cuda(cuda) => Self::check("cudaStreamSynchronize", unsafe {
                (cuda.stream_synchronize)(cuda.stream.0)
            }),
        }
    }
}

impl Drop for CudaCopy {
    fn drop(&mut self) {
        // SAFETY: `cudaError_t cudaStreamDestroy(cudaStream_t)` on the stream created in
        // `load`; pending copies complete first (the runtime's documented behaviour).
        unsafe { (self.stream_destroy)(self.stream.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> GpuIdentity {
        GpuIdentity {
            name: "NVIDIA H100 80GB HBM3".into(),
            compute_major: 9,
            compute_minor: 0,
        }
    }

    #[test]
    fn probes_fail_soft_without_the_libraries() {
        // A library that loads but is not the CUDA runtime: the symbol is named.
        let libc = Lib::open(Path::new("libc.so.6")).unwrap();
        let err = gpu_identity_from(&libc, Path::new(NVML_LIB), 0).unwrap_err();
        assert!(
            matches!(&err, ProbeError::Symbol { symbol, .. } if *symbol == "cudaDeviceGetAttribute"),
            "{err}"
        );
    }

    #[test]
    fn gpu_identity_reads_name_and_compute_capability_through_the_c_api() {
        let tmp = tempfile::tempdir().unwrap();
        let stub = crate::engine::dylib::stub::stub_library(tmp.path());
        let rt = Lib::open(&stub).unwrap();
        assert_eq!(gpu_identity_from(&rt, &stub, 1).unwrap(), h100());
        let err = gpu_identity_from(&rt, &stub, 0).unwrap_err();
        assert_eq!(
            err,
            ProbeError::Call {
                function: "cudaDeviceGetAttribute",
                code: 101,
                message: "invalid device ordinal".into()
            }
        );
    }

    #[test]
    fn device_copy_queues_on_its_own_stream_and_never_waits_for_the_whole_device() {
        let tmp = tempfile::tempdir().unwrap();
        let stub = crate::engine::dylib::stub::stub_library(tmp.path());
        // The stub's cudaMemcpyAsync copies host memory, on its stream only.
        let lib = Lib::open(&stub).unwrap();
        let copier = DeviceCopy::load(&lib, 1).unwrap();
        let src: Vec<u8> = (0..64).collect();
        let mut dst = vec![0u8; 64];
        // SAFETY: two live buffers of 32 bytes from offset 16 and 0.
        unsafe {
            copier
                .copy(dst.as_mut_ptr().cast(), src[16..].as_ptr().cast(), 32)
                .unwrap()
        };
        let counter = |name| {
            let f = lib.get::<unsafe extern "C" fn() -> c_int>(name).unwrap();
            // SAFETY: the stub's `int name(void)` counters.
            unsafe { f() }
        };
        assert_eq!(
            counter("stub_pending_copies"),
            1,
            "queued, not yet waited for"
        );
        copier.finish().unwrap();
        assert_eq!(
            counter("stub_pending_copies"),
            0,
            "finish waited for the stream"
        );
        assert_eq!(counter("stub_device_syncs"), 0, "no cudaDeviceSynchronize");
        assert_eq!(&dst[..32], &src[16..48]);
        assert_eq!(dst[32..], [0u8; 32]);
        // Another device: cudaSetDevice's error, before any stream exists.
        let err = DeviceCopy::load(&lib, 0)
            .err()
            .expect("device 0 is invalid");
        assert!(
            matches!(
                err,
                Error::Cuda {
                    call: "cudaSetDevice",
                    code: 101
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "cudaSetDevice failed with CUDA error 101");
        assert!(!err.is_out_of_memory());
    }

    #[test]
    fn host_copy_moves_the_bytes() {
        let copier = DeviceCopy::host();
        let src = [1.5f32, 2.5, 3.5];
        let mut dst = [0f32; 3];
        // SAFETY: 8 bytes of two live arrays.
        unsafe { copier.copy(dst.as_mut_ptr().cast(), src[1..].as_ptr().cast(), 8) }.unwrap();
        copier.finish().unwrap();
        assert_eq!(dst, [2.5, 3.5, 0.0]);
    }

    #[test]
    fn device_copy_without_a_cuda_runtime_says_what_is_missing() {
        let missing = Lib::open(Path::new("/nonexistent/libcudart.so.13"));
        let err = missing.err().expect("no such library").to_string();
        assert!(err.contains("/nonexistent/libcudart.so.13"), "{err}");
        // A library without the CUDA symbols.
        let libc = Lib::open(Path::new("libc.so.6")).unwrap();
        let err = DeviceCopy::load(&libc, 0)
            .err()
            .expect("libc has no cudaSetDevice");
        assert!(
            matches!(
                &err,
                Error::Probe(ProbeError::Symbol {
                    symbol: "cudaSetDevice",
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("cudaSetDevice"), "{err}");
    }

    #[test]
    fn the_cuda_runtime_is_opened_once_per_process() {
        // Whatever the first call found (a CUDA runtime or its absence), every later
        // call gets that same handle, whatever library path it names.
        let first = cudart(Path::new("/nonexistent/a/libonnxruntime.so"));
        let second = cudart(Path::new("/nonexistent/b/libonnxruntime.so"));
        match (first, second) {
            (Ok(a), Ok(b)) => assert!(std::ptr::eq(a, b)),
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("two answers: {:?} / {:?}", a.is_ok(), b.is_ok()),
        }
    }
}
