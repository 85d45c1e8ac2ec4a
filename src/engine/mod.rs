//! ONNX Runtime sessions for one model directory: library loading, execution-provider
//! choice, graph I/O checked against the manifest, and the two parts a run drives: the
//! image encoder (vision tower + projector) and the decoder (behind
//! [`crate::generate::Decoder`], one implementation per graph flavour).
//!
//! Contract: [`Engine::open`] loads the four graphs named by `manifest.json`, fails with an
//! error naming the graph and tensor when a session's inputs/outputs differ from the
//! manifest, and records which execution provider each graph actually got (an explicitly
//! requested provider that cannot register is an error, never a silent CPU fallback;
//! `auto` tries TensorRT, then CUDA, then CPU and records the outcome). Every call takes
//! and returns host `f32` whatever the graph dtype (fp16 graphs are converted at the
//! boundary); on a GPU the decoder's cache stays in device memory between calls.

pub mod cuda;
pub mod decoders;
pub(crate) mod dylib;
mod error;
pub mod images;
pub mod ort_lib;
pub mod session;
#[cfg(test)]
mod test_manifests;
pub mod trt;
pub mod validate;
pub mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;

use vlguard_export::manifest::{Dtype, GraphKind, Manifest, RowInputs};

use crate::formats::TrtBuild;
use crate::generate::Decoder;
use decoders::{fused::FusedDecoder, plain::PlainDecoder, Embedder};
pub use error::{is_out_of_memory_message, Error, SessionError, CUDA_ERROR_MEMORY_ALLOCATION};
pub use images::ImageEncoder;
use session::{Graph, Loader};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EpChoice {
    /// TensorRT, then CUDA, then CPU: the first that registers.
    Auto,
    Cpu,
    Cuda,
    Tensorrt,
}

/// The execution provider a graph runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    Cuda,
    TensorRt,
}

impl Provider {
    /// ONNX Runtime's name for it, as the run manifest records it.
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::TensorRt => "TensorrtExecutionProvider",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.ort_name())
    }
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_dir: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub ep: EpChoice,
    pub device_id: i32,
    /// Intra-op threads; `None` lets ONNX Runtime use every core.
    pub threads: Option<usize>,
    /// TensorRT engine cache base folder (`--trt-cache`): engines go to a sub-folder of it
    /// keyed by model hash, GPU and TensorRT version ([`trt::cache_dir`]). `None`: no
    /// engine cache.
    pub trt_cache: Option<PathBuf>,
    /// Shapes the run feeds the graphs: TensorRT's optimisation profiles.
    pub trt_limits: trt::Limits,
    /// The folder holding TensorRT 10's libraries (`--trt-lib-dir`); `None`: the setup
    /// folder, then the system loader ([`trt::libs::lib_dir`]).
    pub trt_lib_dir: Option<PathBuf>,
    /// Keep finished rows in the batch even on the CPU, as a GPU does, and refill busy
    /// slots through the device-copy seam on host memory (replays the device scheduling
    /// and its code path on a machine without one).
    pub keep_finished_rows: bool,
}

/// `Err` naming every problem, `Ok` when there is none.
pub fn check_fields(dir: &std::path::Path, problems: Vec<validate::Problem>) -> Result<(), Error> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Fields {
        path: dir.join(vlguard_export::manifest::MANIFEST_FILE),
        problems,
    })
}

/// A model directory's sessions, ready to run.
pub struct Engine {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub ort_lib: PathBuf,
    /// The execution provider each graph runs on.
    pub providers: BTreeMap<GraphKind, Provider>,
    /// The graphs on TensorRT: engine built or reused, seconds.
    pub tensorrt: BTreeMap<GraphKind, TrtBuild>,
    pub images: ImageEncoder,
    pub decoder: Box<dyn Decoder<Error = Error>>,
}

impl Engine {
    pub fn open(options: &EngineOptions) -> Result<Engine, Error> {
        let (manifest, bytes) = Manifest::load(&options.model_dir)?;
        check_fields(&options.model_dir, validate::bounds(&manifest))?;
        verify::verify(&options.model_dir, &manifest)?;
        let manifest_sha256 = crate::util::sha256_hex(&bytes);
        let (lib, env) = ort_lib::environment(options.ort_lib.as_deref())?;
        // TensorRT may run: sessions get the engine folder keyed by model, GPU and
        // TensorRT version instead of the base folder (none when probing fails).
        let trt_lib_dir = trt::libs::lib_dir(options.trt_lib_dir.as_deref(), lib);
        let trt_plan = matches!(options.ep, EpChoice::Auto | EpChoice::Tensorrt).then(|| {
            trt::CachePlan::probe(
                options.trt_cache.as_deref(),
                &manifest_sha256,
                lib,
                trt_lib_dir.as_deref(),
                options.device_id,
            )
        });
        let loader = Loader {
            env,
            options,
            manifest: &manifest,
            trt_dir: trt_plan.as_ref().and_then(|plan| plan.dir.clone()),
            trt_lib_dir,
        };
        let mut providers = BTreeMap::new();
        let mut tensorrt = BTreeMap::new();
        let mut graphs = Vec::with_capacity(GraphKind::ALL.len());
        let mut declared = BTreeMap::new();
        for kind in GraphKind::ALL {
            let timer = trt_plan
                .as_ref()
                .map(|plan| trt::BuildTimer::start(plan, &manifest, kind, &options.trt_limits));
            let (graph, provider) = Graph::load(&loader, kind)?;
            if let (Some(timer), Provider::TensorRt) = (timer, provider) {
                tensorrt.insert(kind, timer.finish());
            }
            providers.insert(kind, provider);
            declared.insert(kind, validate::declared(&graph.session));
            graphs.push(graph);
        }
        let problems = validate::against_graphs(&manifest, &declared);
        check_fields(&options.model_dir, problems)?;
        let [vision, projector, embed, decoder] =
            <[Graph; 4]>::try_from(graphs).unwrap_or_else(|_| unreachable!("four graphs"));
        let images = ImageEncoder::new(vision, projector, &manifest);
        let embedder = Embedder::new(embed, &manifest);
        let decoder = open_decoder(decoder, embedder, &manifest, options, lib, &providers)?;
        Ok(Engine {
            manifest_sha256,
            ort_lib: lib.to_path_buf(),
            providers,
            tensorrt,
            images,
            decoder,
            manifest,
        })
    }

    /// Whether the vision tower and the decoder both run on the CPU (then two ONNX
    /// Runtime thread pools would fight over the same cores).
    pub fn all_on_cpu(&self) -> bool {
        [GraphKind::Vision, GraphKind::Decoder]
            .iter()
            .all(|kind| self.providers.get(kind).is_none_or(|&p| p == Provider::Cpu))
    }

    /// `{graph: provider}` as the run manifest records it.
    pub fn provider_names(&self) -> BTreeMap<String, String> {
        self.providers
            .iter()
            .map(|(kind, p)| (kind.name().to_string(), p.ort_name().to_string()))
            .collect()
    }
}

/// The decoder of the manifest's flavour on the decoder graph's device.
fn open_decoder(
    graph: Graph,
    embedder: Embedder,
    manifest: &Manifest,
    options: &EngineOptions,
    ort_lib: &std::path::Path,
    providers: &BTreeMap<GraphKind, Provider>,
) -> Result<Box<dyn Decoder<Error = Error>>, Error> {
    let on_device = providers
        .get(&GraphKind::Decoder)
        .is_some_and(|&p| p != Provider::Cpu);
    let riders = on_device || options.keep_finished_rows;
    let device_error = |source: SessionError| Error::Session {
        graph: GraphKind::Decoder,
        path: options.model_dir.join(&manifest.graphs.decoder.file),
        source: Box::new(source),
    };
    let device = match on_device {
        true => {
            Some(cuda::DeviceMemory::cuda(options.device_id).map_err(|e| device_error(e.into()))?)
        }
        false => None,
    };
    // Validation checked that the graph's row inputs are of `decoder.flavour`.
    let row_inputs = match &manifest.graphs.decoder.rows {
        RowInputs::Plain(rows) => {
            let decoder = PlainDecoder::new(graph, embedder, manifest, rows, device, riders);
            return Ok(Box::new(decoder));
        }
        RowInputs::Fused(rows) => rows,
    };
    if on_device && manifest.dtype == Dtype::Fp32 {
        // ONNX Runtime 1.31's CUDA GroupQueryAttention has fp16/bf16 kernels only.
        eprintln!(
            "warning: the fused fp32 decoder's attention has no CUDA kernel: ONNX Runtime \
             runs it on the CPU and copies the cache across every step; export with \
             --dtype fp16 (or --decoder plain) for the GPU"
        );
    }
    let (allocator, device_copy) = match device {
        // Replaying a GPU's scheduling: refills take the device-copy path, on host memory.
        None if options.keep_finished_rows => (
            ort::memory::Allocator::default(),
            Some(cuda::DeviceCopy::host()),
        ),
        None => (ort::memory::Allocator::default(), None),
        Some(memory) => {
            let allocator = ort::memory::Allocator::new(&graph.session, memory.device)
                .map_err(|e| device_error(SessionError::DeviceCache(e)))?;
            let copy = cuda::cudart(ort_lib)
                .map_err(Error::from)
                .and_then(|cudart| cuda::DeviceCopy::load(cudart, options.device_id))
                .map_err(|reason| {
                    eprintln!("warning: continuous batching is off on the GPU: {reason}")
                })
                .ok();
            (allocator, copy)
        }
    };
    let decoder = FusedDecoder::new(
        graph,
        embedder,
        manifest,
        row_inputs,
        allocator,
        device_copy,
        on_device,
        riders,
    );
    Ok(Box::new(decoder))
}
