//! The engine's one error type: what failed while a model directory was opened (library,
//! manifest, files, sessions, providers) or while its graphs ran (which graph, which
//! tensor, which CUDA call), with ONNX Runtime's own error kept as the `source()`.
//!
//! Contract: every variant's text is the message the run journals and prints for it
//! (those texts are pinned: they read as they did when they were plain strings), and a
//! caller tells failures apart by variant, not by text: [`Error::is_out_of_memory`] for
//! an allocation that did not fit (retry smaller), the shape variants for a caller or
//! graph that broke the contract (stop), the rest for a broken device or session.

use std::path::PathBuf;

use vlguard_export::manifest::GraphKind;

use super::{cuda, dylib, ort_lib, trt, validate, verify, Provider};

/// Why a graph's session could not be made, or its device memory set up.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("file not found (re-export the model)")]
    MissingFile,
    /// ONNX Runtime refused: the session builder, a provider's registration, the graph
    /// file, or device memory (out of memory among others).
    #[error(transparent)]
    Ort(#[from] ort::Error),
    /// The ONNX Runtime library a GPU provider needs.
    #[error(transparent)]
    Library(#[from] ort_lib::LibraryError),
    /// The CUDA / cuDNN libraries could not be preloaded (the text names the library and
    /// the setup command).
    #[error(transparent)]
    CudaLibraries(#[from] cuda::PreloadError),
    /// TensorRT's libraries could not be loaded from their folder.
    #[error(transparent)]
    TensorRtLibraries(#[from] trt::libs::LibsError),
    /// A graph TensorRT is not used for (the fused decoder, an fp32 model, an input with
    /// no optimisation profile).
    #[error(transparent)]
    TensorRt(#[from] trt::Refused),
    /// The decoder cache's allocator on the device.
    #[error("cannot allocate the cache on the device: {0}")]
    DeviceCache(#[source] ort::Error),
    /// The graph file, read without a session (`inspect`).
    #[error(transparent)]
    GraphFile(#[from] vlguard_export::graph_io::GraphIoError),
    /// No provider of the list was tried (an empty list).
    #[error("no execution provider to try")]
    NoProvider,
}

/// cudaErrorMemoryAllocation (driver_types.h).
pub const CUDA_ERROR_MEMORY_ALLOCATION: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Library(#[from] ort_lib::LibraryError),
    #[error(transparent)]
    Manifest(#[from] vlguard_export::manifest::ManifestError),
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error("graph {graph} ({path}): {source}")]
    Session {
        graph: GraphKind,
        path: PathBuf,
        /// Boxed: the engine's error stays small on the happy path of every graph call.
        source: Box<SessionError>,
    },
    #[error("{path} cannot be right: {}", list(.problems))]
    Fields {
        path: PathBuf,
        problems: Vec<validate::Problem>,
    },
    #[error("graph {graph} does not match manifest.json: {message}")]
    Contract { graph: GraphKind, message: String },
    #[error(
        "execution provider {provider} was requested but could not be used for graph {graph}: {source}"
    )]
    Provider {
        provider: Provider,
        graph: GraphKind,
        source: Box<SessionError>,
    },
    /// A GPU library, symbol or probe call (the CUDA runtime for device copies).
    #[error(transparent)]
    Probe(#[from] dylib::ProbeError),

    // What a graph call can fail with.
    /// A session run of `graph` failed (out of memory among others: see
    /// [`Error::is_out_of_memory`]).
    #[error("{graph} graph: {source}")]
    Run {
        graph: GraphKind,
        source: ort::Error,
    },
    /// The graph's IO binding (inputs bound where they live, outputs where they go).
    #[error("decoder IO binding: {source}")]
    Binding {
        graph: GraphKind,
        source: ort::Error,
    },
    #[error("{graph} graph returned no `{tensor}`")]
    MissingOutput { graph: GraphKind, tensor: String },
    /// An integer input (ids, mask, positions, lengths) could not be made.
    #[error("{tensor}: {source}")]
    IntInput {
        tensor: &'static str,
        source: ort::Error,
    },
    /// A float input (embeddings, pixels, an empty cache) could not be made.
    #[error("cannot build a tensor: {source}")]
    FloatInput { source: ort::Error },
    /// An output or cache tensor of another element type than the graph's floats.
    #[error("{tensor} is neither float32 nor float16")]
    ElementType { tensor: &'static str },
    /// The preallocated decoder cache (`shape` per buffer) could not be allocated.
    #[error("cannot allocate the decoder cache {shape:?}: {source}")]
    CacheAlloc {
        shape: Vec<usize>,
        source: ort::Error,
    },
    /// A cache buffer could not be read or written on the host.
    #[error("cannot copy cache rows: {source}")]
    CacheAccess { source: ort::Error },
    /// The kept rows of a cache could not be made into a new tensor.
    #[error("cannot rebuild the cache: {source}")]
    CacheRebuild { source: ort::Error },
    /// A CUDA runtime call returned `code` (device copies of cache rows).
    #[error("{call} failed with CUDA error {code}")]
    Cuda { call: &'static str, code: i32 },

    // Shapes that do not match (expected versus got): a caller or a graph broke the
    // contract.
    #[error("fused cache: cannot copy rows from a cache of capacity {from} into one of {into}")]
    CacheCapacity { from: usize, into: usize },
    #[error("decoder: cache holds {cache} rows, call has {call}")]
    CacheRows { cache: usize, call: usize },
    #[error(
        "fused decoder: {positions} positions do not fit the cache's {capacity} (prompt + max new tokens)"
    )]
    CacheFull { positions: usize, capacity: usize },
    #[error(
        "image embeddings have {found} values, expected {tokens} tokens x hidden size {hidden}"
    )]
    ImageEmbeds {
        found: usize,
        tokens: usize,
        hidden: usize,
    },

    // What a decoder in its state or build cannot do.
    #[error(transparent)]
    ImageSlot(#[from] crate::prompt::ImageSlotError),
    #[error("decoder: slot {slot} holds no row")]
    NoRow { slot: usize },
    #[error(
        "the plain decoder takes prompts only into an empty batch (continuous batching needs a \
         model exported with --decoder fused)"
    )]
    JoinLiveBatch,
    #[error("fused decoder: no cache (open it first)")]
    NotOpen,
    #[error("fused decoder: no CUDA runtime to copy prompts into busy slots")]
    NoRefillCopy,
    #[error("cache rows on a device but no CUDA runtime to copy them")]
    NoDeviceCopy,
}

impl Error {
    /// Whether an allocation did not fit (host or device memory): a smaller batch or
    /// cache may succeed. ONNX Runtime has no error code for it (its arena, the CUDA
    /// allocator and cuBLAS/cuDNN all fail with a generic code), so its message decides
    /// ([`is_out_of_memory_message`]); a CUDA call of ours says so by its code.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Cuda { code, .. } => *code == CUDA_ERROR_MEMORY_ALLOCATION,
            _ => self
                .ort_error()
                .is_some_and(|e| is_out_of_memory_message(e.message())),
        }
    }

    /// The ONNX Runtime error behind this one, if any.
    pub fn ort_error(&self) -> Option<&ort::Error> {
        match self {
            Error::Run { source, .. }
            | Error::Binding { source, .. }
            | Error::IntInput { source, .. }
            | Error::FloatInput { source }
            | Error::CacheAlloc { source, .. }
            | Error::CacheAccess { source }
            | Error::CacheRebuild { source } => Some(source),
            Error::Session { source, .. } | Error::Provider { source, .. } => match &**source {
                SessionError::Ort(e) | SessionError::DeviceCache(e) => Some(e),
                _ => None,
            },
            _ => None,
        }
    }

    /// The graph a failure concerns, where one does.
    pub fn graph(&self) -> Option<GraphKind> {
        match self {
            Error::Session { graph, .. }
            | Error::Contract { graph, .. }
            | Error::Provider { graph, .. }
            | Error::Run { graph, .. }
            | Error::Binding { graph, .. }
            | Error::MissingOutput { graph, .. } => Some(*graph),
            _ => None,
        }
    }
}

/// Whether an ONNX Runtime message reports an allocation failure: the BFC arena's
/// "Failed to allocate memory for requested buffer of size N", CUDA's "out of memory"
/// (`CUDA failure 2: out of memory`), cuBLAS/cuDNN's `*_STATUS_ALLOC_FAILED`, the host's
/// `std::bad_alloc`.
pub fn is_out_of_memory_message(message: &str) -> bool {
    const MARKERS: [&str; 4] = [
        "failed to allocate memory",
        "out of memory",
        "status_alloc_failed",
        "bad_alloc",
    ];
    let message = message.to_ascii_lowercase();
    MARKERS.iter().any(|marker| message.contains(marker))
}

fn list(problems: &[validate::Problem]) -> String {
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    all.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_runtime_allocation_failures_read_as_out_of_memory() {
        for message in [
            "Non-zero status code returned while running MatMul node. Name:'/m' Status Message: \
             /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:376 void* \
             onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*, \
             bool, onnxruntime::WaitNotificationFn) Failed to allocate memory for requested \
             buffer of size 2830172160",
            "CUDA failure 2: out of memory ; GPU=0 ; hostname=h ; expr=cudaMalloc((void**)&p, size);",
            "CUBLAS failure 3: CUBLAS_STATUS_ALLOC_FAILED ; GPU=0",
            "std::bad_alloc",
        ] {
            assert!(is_out_of_memory_message(message), "{message}");
        }
        for message in [
            "Got invalid dimensions for input: inputs_embeds for the following indices",
            "CUDA failure 700: an illegal memory access was encountered",
        ] {
            assert!(!is_out_of_memory_message(message), "{message}");
        }
    }

    #[test]
    fn session_failures_name_the_graph_and_file_and_read_as_before() {
        let missing = Error::Session {
            graph: GraphKind::Decoder,
            path: PathBuf::from("m/decoder.onnx"),
            source: Box::new(SessionError::MissingFile),
        };
        assert_eq!(
            missing.to_string(),
            "graph decoder (m/decoder.onnx): file not found (re-export the model)"
        );
        assert_eq!(missing.graph(), Some(GraphKind::Decoder));
        assert!(!missing.is_out_of_memory());
        let trt = Error::Provider {
            provider: Provider::TensorRt,
            graph: GraphKind::Vision,
            source: Box::new(SessionError::TensorRt(trt::Refused::Fp32)),
        };
        assert_eq!(
            trt.to_string(),
            format!(
                "execution provider TensorrtExecutionProvider was requested but could not be \
                 used for graph vision: {}",
                trt::FP32_REFUSED
            )
        );
        assert!(matches!(
            trt,
            Error::Provider { ref source, .. } if matches!(**source, SessionError::TensorRt(_))
        ));
    }

    #[test]
    fn a_cuda_call_is_out_of_memory_by_its_code() {
        let oom = Error::Cuda {
            call: "cudaMemcpyAsync",
            code: CUDA_ERROR_MEMORY_ALLOCATION,
        };
        assert!(oom.is_out_of_memory());
        assert_eq!(oom.to_string(), "cudaMemcpyAsync failed with CUDA error 2");
        let lost = Error::Cuda {
            call: "cudaStreamSynchronize",
            code: 700,
        };
        assert!(!lost.is_out_of_memory());
        let full = Error::CacheFull {
            positions: 700,
            capacity: 600,
        };
        assert!(!full.is_out_of_memory());
        assert_eq!(full.graph(), None);
    }
}
