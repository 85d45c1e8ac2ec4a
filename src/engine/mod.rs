//! ONNX Runtime sessions for one model directory: library loading, execution-provider
//! choice with fallback, graph I/O checked against the manifest, and the decoder's KV
//! cache.
//!
//! Contract: [`OrtEngine::open`] loads the four graphs named by `manifest.json`, fails
//! with an error naming the tensor when a session's inputs/outputs differ from the
//! manifest, and records which execution provider each graph actually got (an explicitly
//! requested provider that cannot register is an error, never a silent CPU fallback;
//! `auto` tries TensorRT, then CUDA, then CPU and records the outcome). It implements
//! [`crate::generate::Backend`]: host `f32` in and out whatever the graph dtype (fp16
//! graphs are converted at the boundary), the cache kept as ORT values between calls.

mod fused;
pub mod ort_lib;
pub mod trt;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use vlguard_export::manifest::{Flavour, GraphSpec, Manifest};

use crate::generate::{Backend, BackendError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EpChoice {
    /// TensorRT, then CUDA, then CPU: the first that registers.
    Auto,
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model_dir: PathBuf,
    pub ort_lib: Option<PathBuf>,
    pub ep: EpChoice,
    pub device_id: i32,
    /// Intra-op threads; `None` lets ONNX Runtime use every core.
    pub threads: Option<usize>,
    /// TensorRT engine cache base folder: engines go to a sub-folder keyed by model hash,
    /// GPU and TensorRT version ([`trt::cache_dir`]). `None`: no engine cache.
    pub trt_cache: Option<PathBuf>,
    /// Shapes the run feeds the graphs: TensorRT's optimisation profiles.
    pub trt_limits: trt::Limits,
    /// Keep finished rows in the batch even on the CPU, as a GPU does (tests the device
    /// scheduling on a machine without one).
    pub keep_finished_rows: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Library(#[from] ort_lib::LibraryError),
    #[error(transparent)]
    Manifest(#[from] vlguard_export::manifest::ManifestError),
    #[error("graph {graph} ({path}): {message}")]
    Session {
        graph: String,
        path: PathBuf,
        message: String,
    },
    #[error("graph {graph} does not match manifest.json: {message}")]
    Contract { graph: String, message: String },
    #[error(
        "execution provider {ep} was requested but could not be used for graph {graph}: {message}"
    )]
    Provider {
        ep: &'static str,
        graph: String,
        message: String,
    },
}

pub const CPU_EP: &str = "CPUExecutionProvider";
const CUDA_EP: &str = "CUDAExecutionProvider";
const TRT_EP: &str = "TensorrtExecutionProvider";

/// One loaded graph and the element type its float inputs expect.
struct Graph {
    session: Session,
    float_type: TensorElementType,
}

pub struct OrtEngine {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub ort_lib: PathBuf,
    /// Graph name -> execution provider it runs on.
    pub providers: BTreeMap<String, String>,
    /// Vision tower + projector; lent to a run's vision thread with [`OrtEngine::lend_images`].
    images: Option<ImageEncoder>,
    embed: Graph,
    decoder: Graph,
    /// `present.*` of the last decoder call, in manifest order (key, value per layer).
    cache: Vec<DynValue>,
    cache_batch: usize,
    /// Seconds inside `Session::run`, for the loop-overhead figure.
    pub ort_seconds: f64,
    /// Set when the decoder runs on a GPU: the cache then stays in device memory
    /// between steps (IO binding) and only the logits come back to the host.
    device: Option<DeviceMemory>,
    /// The fused flavour's preallocated cache (`None` for the plain flavour or after
    /// `reset`), and the steps the current batch may still take after its prompt.
    fixed: Option<fused::FixedCache>,
    reserve: usize,
    /// Where the fused flavour allocates its cache: the decoder's device.
    cache_allocator: ort::memory::Allocator,
    /// Row copies between device caches (continuous batching on a GPU).
    device_copy: Option<fused::DeviceCopy>,
    keep_finished_rows: bool,
    /// Graph name -> its TensorRT session creation (engine built or reused, seconds);
    /// only graphs that run on TensorRT.
    pub trt: BTreeMap<String, trt::TrtBuild>,
}

/// Memory descriptions for IO binding: `present.*` into device memory, logits to host.
struct DeviceMemory {
    device: ort::memory::MemoryInfo<'static>,
    host: ort::memory::MemoryInfo<'static>,
}

impl DeviceMemory {
    fn host() -> Result<ort::memory::MemoryInfo<'static>, String> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        MemoryInfo::new(
            AllocationDevice::CPU,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| e.to_string())
    }

    fn cuda(device_id: i32) -> Result<DeviceMemory, String> {
        use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
        let device = MemoryInfo::new(
            AllocationDevice::CUDA,
            device_id,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(|e| e.to_string())?;
        Ok(DeviceMemory {
            device,
            host: DeviceMemory::host()?,
        })
    }
}

/// The vision tower and the projector of a model: pixels in, projected image embeddings
/// out. Sessions are `Send`, so a run can encode the next images on another thread while
/// the decoder works.
pub struct ImageEncoder {
    vision: Graph,
    projector: Graph,
    graphs: (GraphSpec, GraphSpec),
    image_size: usize,
    /// Seconds inside `Session::run`.
    pub ort_seconds: f64,
}

impl ImageEncoder {
    /// `pixel_values [B,3,S,S]` -> projected image embeddings `[B,N,H]` as host f32.
    pub fn encode(&mut self, pixel_values: &[f32], batch: usize) -> Result<Vec<f32>, BackendError> {
        let s = self.image_size;
        let (vision_spec, projector_spec) = &self.graphs;
        let pixels = float_tensor(pixel_values, vec![batch, 3, s, s], self.vision.float_type)?;
        let t = Instant::now();
        let mut out = self
            .vision
            .session
            .run(vec![(
                vision_spec.inputs[0].as_str(),
                SessionInputValue::from(pixels),
            )])
            .map_err(|e| BackendError(format!("vision graph: {e}")))?;
        let features = take(&mut out, &vision_spec.outputs[0], "vision")?;
        drop(out);
        let mut out = self
            .projector
            .session
            .run(vec![(
                projector_spec.inputs[0].as_str(),
                SessionInputValue::from(features),
            )])
            .map_err(|e| BackendError(format!("projector graph: {e}")))?;
        let embeds = take(&mut out, &projector_spec.outputs[0], "projector")?;
        self.ort_seconds += t.elapsed().as_secs_f64();
        to_f32(&embeds, "projector output")
    }
}

impl OrtEngine {
    pub fn open(options: &EngineOptions) -> Result<OrtEngine, Error> {
        let (manifest, bytes) = Manifest::load(&options.model_dir)?;
        let manifest_sha256 = crate::util::sha256_hex(&bytes);
        let (lib, env) = ort_lib::environment(options.ort_lib.as_deref())?;
        // TensorRT may run: sessions get the engine folder keyed by model, GPU and
        // TensorRT version instead of the base folder (none when probing fails).
        let trt_plan = matches!(options.ep, EpChoice::Auto | EpChoice::Tensorrt).then(|| {
            trt::CachePlan::probe(
                options.trt_cache.as_deref(),
                &manifest_sha256,
                lib,
                options.device_id,
            )
        });
        let options = &EngineOptions {
            trt_cache: trt_plan.as_ref().and_then(|plan| plan.dir.clone()),
            ..options.clone()
        };
        let mut providers = BTreeMap::new();
        let mut trt_builds = BTreeMap::new();
        let mut load = |name: &str, spec: &GraphSpec| -> Result<Graph, Error> {
            let path = options.model_dir.join(&spec.file);
            let timer = trt_plan
                .as_ref()
                .map(|plan| trt::BuildTimer::start(plan, &manifest, name, &options.trt_limits));
            let (session, provider) = build_session(env, &path, name, options, &manifest)?;
            if let (Some(timer), TRT_EP) = (timer, provider) {
                trt_builds.insert(name.to_string(), timer.finish());
            }
            check_contract(name, &session, spec)?;
            providers.insert(name.to_string(), provider.to_string());
            let float_type = session
                .inputs()
                .iter()
                .find_map(|input| match input.dtype() {
                    ValueType::Tensor { ty, .. }
                        if matches!(
                            ty,
                            TensorElementType::Float32 | TensorElementType::Float16
                        ) =>
                    {
                        Some(*ty)
                    }
                    _ => None,
                })
                .unwrap_or(TensorElementType::Float32);
            Ok(Graph {
                session,
                float_type,
            })
        };
        let vision = load("vision", &manifest.graphs.vision)?;
        let projector = load("projector", &manifest.graphs.projector)?;
        let embed = load("embed", &manifest.graphs.embed)?;
        let decoder = load("decoder", &manifest.graphs.decoder)?;
        let on_device = providers.get("decoder").is_some_and(|p| p != CPU_EP);
        if on_device
            && manifest.decoder.flavour == Flavour::Fused
            && manifest.dtype == vlguard_export::manifest::Dtype::Fp32
        {
            // ONNX Runtime 1.31's CUDA GroupQueryAttention has fp16/bf16 kernels only.
            eprintln!(
                "warning: the fused fp32 decoder's attention has no CUDA kernel: ONNX Runtime \
                 runs it on the CPU and copies the cache across every step; export with \
                 --dtype fp16 (or --decoder plain) for the GPU"
            );
        }
        let device = if on_device {
            Some(
                DeviceMemory::cuda(options.device_id).map_err(|message| Error::Session {
                    graph: "decoder".into(),
                    path: options.model_dir.join(&manifest.graphs.decoder.file),
                    message,
                })?,
            )
        } else {
            None
        };
        let cache_allocator = match &device {
            Some(_) if manifest.decoder.flavour == Flavour::Fused => {
                let info = DeviceMemory::cuda(options.device_id)
                    .map(|m| m.device)
                    .and_then(|info| {
                        ort::memory::Allocator::new(&decoder.session, info)
                            .map_err(|e| e.to_string())
                    });
                info.map_err(|message| Error::Session {
                    graph: "decoder".into(),
                    path: options.model_dir.join(&manifest.graphs.decoder.file),
                    message: format!("cannot allocate the cache on the device: {message}"),
                })?
            }
            _ => ort::memory::Allocator::default(),
        };
        let device_copy = match &device {
            Some(_) if manifest.decoder.flavour == Flavour::Fused => {
                match fused::DeviceCopy::load(&ort_lib::cudart_path(lib), options.device_id) {
                    Ok(copy) => Some(copy),
                    Err(reason) => {
                        eprintln!("warning: continuous batching is off on the GPU: {reason}");
                        None
                    }
                }
            }
            _ => None,
        };
        let images = ImageEncoder {
            vision,
            projector,
            graphs: (
                manifest.graphs.vision.clone(),
                manifest.graphs.projector.clone(),
            ),
            image_size: manifest.vision.image_size,
            ort_seconds: 0.0,
        };
        Ok(OrtEngine {
            device,
            device_copy,
            keep_finished_rows: options.keep_finished_rows,
            fixed: None,
            reserve: 0,
            cache_allocator,
            trt: trt_builds,
            manifest_sha256,
            manifest,
            ort_lib: lib.to_path_buf(),
            providers,
            images: Some(images),
            embed,
            decoder,
            cache: Vec::new(),
            cache_batch: 0,
            ort_seconds: 0.0,
        })
    }

    /// Hands the vision tower and projector to another thread (they run beside the
    /// decoder); [`OrtEngine::restore_images`] takes them back.
    pub fn lend_images(&mut self) -> Option<ImageEncoder> {
        self.images.take()
    }

    pub fn restore_images(&mut self, images: ImageEncoder) {
        self.images = Some(images);
    }

    /// One call of the fused decoder through the `decode` contract: a prompt call (empty
    /// cache: rows re-laid out from left to right padding, the cache allocated for the
    /// prompt plus `reserve` steps) or a one-token step.
    fn decode_fused(
        &mut self,
        embeds: &[f32],
        attention_mask: &[i64],
        batch: usize,
        new_len: usize,
    ) -> Result<Vec<f32>, BackendError> {
        let hidden = self.manifest.decoder.hidden_size;
        let (packed, lengths) = fused::right_pad(embeds, attention_mask, batch, new_len, hidden);
        if self.fixed.is_none() {
            self.fixed = Some(fused::FixedCache::alloc(
                &self.cache_allocator,
                &self.manifest.decoder,
                self.decoder.float_type,
                batch,
                new_len + self.reserve,
            )?);
        } else if new_len != 1 {
            return Err(BackendError(format!(
                "fused decoder: a call of {new_len} new positions on a filled cache"
            )));
        }
        self.run_fused(None, &packed, &lengths, new_len)
    }

    /// Runs the fused decoder on `cache` (or the engine's own cache when `None`).
    fn run_fused(
        &mut self,
        cache: Option<&mut fused::FixedCache>,
        embeds: &[f32],
        lengths: &[usize],
        new_len: usize,
    ) -> Result<Vec<f32>, BackendError> {
        let cache = match cache {
            Some(c) => c,
            None => self
                .fixed
                .as_mut()
                .ok_or_else(|| BackendError("fused decoder: no cache (call reset first)".into()))?,
        };
        let (logits, seconds) = fused::run(
            &mut self.decoder.session,
            &self.manifest.graphs.decoder,
            self.decoder.float_type,
            self.manifest.decoder.hidden_size,
            cache,
            embeds,
            lengths,
            new_len,
        )?;
        self.ort_seconds += seconds;
        Ok(logits)
    }

    fn empty_cache(&self, batch: usize) -> Result<Vec<DynValue>, BackendError> {
        let d = &self.manifest.decoder;
        (0..2 * d.num_layers)
            .map(|_| {
                float_tensor(
                    &[],
                    vec![batch, d.num_kv_heads, 0, d.head_dim],
                    self.decoder.float_type,
                )
            })
            .collect()
    }
}

impl Backend for OrtEngine {
    fn hidden_size(&self) -> usize {
        self.manifest.decoder.hidden_size
    }

    fn embed(&mut self, ids: &[i64], batch: usize) -> Result<Vec<f32>, BackendError> {
        let t_len = ids.len() / batch.max(1);
        let input = Tensor::from_array((vec![batch, t_len], ids.to_vec()))
            .map_err(|e| BackendError(format!("embed input: {e}")))?;
        let t = Instant::now();
        let mut out = self
            .embed
            .session
            .run(vec![(
                self.manifest.graphs.embed.inputs[0].as_str(),
                SessionInputValue::from(input),
            )])
            .map_err(|e| BackendError(format!("embed graph: {e}")))?;
        let value = take(&mut out, &self.manifest.graphs.embed.outputs[0], "embed")?;
        self.ort_seconds += t.elapsed().as_secs_f64();
        to_f32(&value, "embed output")
    }

    fn decode(
        &mut self,
        embeds: &[f32],
        attention_mask: &[i64],
        position_ids: &[i64],
        batch: usize,
        new_len: usize,
    ) -> Result<Vec<f32>, BackendError> {
        if self.manifest.decoder.flavour == Flavour::Fused {
            return self.decode_fused(embeds, attention_mask, batch, new_len);
        }
        let hidden = self.manifest.decoder.hidden_size;
        if self.cache.is_empty() {
            self.cache = self.empty_cache(batch)?;
            self.cache_batch = batch;
        }
        if self.cache_batch != batch {
            return Err(BackendError(format!(
                "decoder: cache holds {} rows, call has {batch}",
                self.cache_batch
            )));
        }
        let total = attention_mask.len() / batch.max(1);
        let names = &self.manifest.graphs.decoder;
        let embeds = float_tensor(
            embeds,
            vec![batch, new_len, hidden],
            self.decoder.float_type,
        )?;
        let mask = Tensor::from_array((vec![batch, total], attention_mask.to_vec()))
            .map_err(|e| BackendError(format!("attention_mask: {e}")))?;
        let positions = Tensor::from_array((vec![batch, new_len], position_ids.to_vec()))
            .map_err(|e| BackendError(format!("position_ids: {e}")))?;
        let mut inputs: Vec<(&str, SessionInputValue)> = Vec::with_capacity(names.inputs.len());
        inputs.push((names.inputs[0].as_str(), embeds.into()));
        inputs.push((names.inputs[1].as_str(), mask.into()));
        inputs.push((names.inputs[2].as_str(), positions.into()));
        for (name, value) in names.inputs[3..].iter().zip(&self.cache) {
            inputs.push((name.as_str(), value.into()));
        }
        let t = Instant::now();
        // Device-resident cache: inputs bound as they are (the past already lives on the
        // device), present.* allocated there, only the logits copied to the host.
        let binding = match &self.device {
            None => None,
            Some(memory) => {
                let session = &self.decoder.session;
                let bind = || -> ort::Result<ort::session::IoBinding> {
                    let mut binding = session.create_binding()?;
                    for (name, value) in &inputs {
                        match value {
                            SessionInputValue::Owned(v) => binding.bind_input(*name, v)?,
                            SessionInputValue::View(v) => binding.bind_input(*name, &**v)?,
                            SessionInputValue::ViewMut(v) => binding.bind_input(*name, &**v)?,
                        }
                    }
                    binding.bind_output_to_device(names.outputs[0].as_str(), &memory.host)?;
                    for name in &names.outputs[1..] {
                        binding.bind_output_to_device(name.as_str(), &memory.device)?;
                    }
                    Ok(binding)
                };
                Some(bind().map_err(|e| BackendError(format!("decoder IO binding: {e}")))?)
            }
        };
        let mut out = match &binding {
            None => self.decoder.session.run(inputs),
            Some(binding) => self.decoder.session.run_binding(binding),
        }
        .map_err(|e| BackendError(format!("decoder graph: {e}")))?;
        self.ort_seconds += t.elapsed().as_secs_f64();
        let logits = take(&mut out, &names.outputs[0], "decoder")?;
        let mut cache = Vec::with_capacity(names.outputs.len() - 1);
        for name in &names.outputs[1..] {
            cache.push(take(&mut out, name, "decoder")?);
        }
        drop(out);
        self.cache = cache;
        to_f32(&logits, "logits")
    }

    fn reset(&mut self, max_new_tokens: usize) {
        self.cache.clear();
        self.cache_batch = 0;
        self.fixed = None;
        self.reserve = max_new_tokens;
    }

    fn drops_rows(&self) -> bool {
        self.device.is_none() && !self.keep_finished_rows
    }

    fn has_slots(&self) -> bool {
        self.manifest.decoder.flavour == Flavour::Fused
            && (self.device.is_none() || self.device_copy.is_some())
    }

    fn open_slots(&mut self, slots: usize, capacity: usize) -> Result<(), BackendError> {
        if !self.has_slots() {
            return Err(BackendError(
                "continuous batching needs a model exported with --decoder fused".into(),
            ));
        }
        self.reset(0);
        self.fixed = Some(fused::FixedCache::alloc(
            &self.cache_allocator,
            &self.manifest.decoder,
            self.decoder.float_type,
            slots,
            capacity,
        )?);
        Ok(())
    }

    /// The prompts run on a cache of their own, then their rows are copied into the
    /// slots (one contiguous copy per layer buffer and row, on the cache's device);
    /// prompts for all the slots run on the slot cache itself.
    fn prefill_slots(
        &mut self,
        slots: &[usize],
        embeds: &[f32],
        attention_mask: &[i64],
        new_len: usize,
    ) -> Result<Vec<f32>, BackendError> {
        let (capacity, rows) = match &self.fixed {
            Some(fixed) => (fixed.capacity, fixed.rows),
            None => return Err(BackendError("prefill_slots before open_slots".into())),
        };
        let hidden = self.manifest.decoder.hidden_size;
        let k = slots.len();
        let (packed, lengths) = fused::right_pad(embeds, attention_mask, k, new_len, hidden);
        if slots.iter().copied().eq(0..rows) {
            // Every slot at once (the first fill, or all rows ended together): straight
            // into the cache.
            return self.run_fused(None, &packed, &lengths, new_len);
        }
        let mut joining = fused::FixedCache::alloc(
            &self.cache_allocator,
            &self.manifest.decoder,
            self.decoder.float_type,
            k,
            capacity,
        )?;
        let logits = self.run_fused(Some(&mut joining), &packed, &lengths, new_len)?;
        let pairs: Vec<(usize, usize)> = slots.iter().copied().enumerate().collect();
        if let Some(fixed) = self.fixed.as_mut() {
            fixed.copy_rows_from(&joining, &pairs, self.device_copy.as_ref())?;
        }
        Ok(logits)
    }

    fn step_slots(&mut self, embeds: &[f32], lengths: &[usize]) -> Result<Vec<f32>, BackendError> {
        self.run_fused(None, embeds, lengths, 1)
    }

    fn keep_rows(&mut self, rows: &[usize]) -> Result<(), BackendError> {
        if let Some(fixed) = &self.fixed {
            self.fixed = Some(fixed.compact(&self.cache_allocator, rows)?);
            return Ok(());
        }
        let mut kept = Vec::with_capacity(self.cache.len());
        for value in &self.cache {
            kept.push(select_rows(value, rows)?);
        }
        self.cache = kept;
        self.cache_batch = rows.len();
        Ok(())
    }
}

/// Creates a session for one graph on the requested provider(s).
fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    graph: &str,
    options: &EngineOptions,
    manifest: &Manifest,
) -> Result<(Session, &'static str), Error> {
    let order: &[&'static str] = match options.ep {
        EpChoice::Auto => &[TRT_EP, CUDA_EP, CPU_EP],
        EpChoice::Cpu => &[CPU_EP],
        EpChoice::Cuda => &[CUDA_EP],
        EpChoice::Tensorrt => &[TRT_EP],
    };
    if !path.is_file() {
        return Err(Error::Session {
            graph: graph.into(),
            path: path.to_path_buf(),
            message: "file not found (re-export the model)".into(),
        });
    }
    let mut last_error = String::new();
    for &ep in order {
        match try_session(env, path, ep, options, manifest) {
            Ok(session) => return Ok((session, ep)),
            Err(message) if options.ep == EpChoice::Auto && ep != CPU_EP => {
                last_error = message;
                continue;
            }
            Err(message) if ep == CPU_EP => {
                return Err(Error::Session {
                    graph: graph.into(),
                    path: path.to_path_buf(),
                    message,
                })
            }
            Err(message) => {
                return Err(Error::Provider {
                    ep,
                    graph: graph.into(),
                    message,
                })
            }
        }
    }
    Err(Error::Session {
        graph: graph.into(),
        path: path.to_path_buf(),
        message: last_error,
    })
}

fn try_session(
    env: &ort::environment::Environment,
    path: &Path,
    ep: &'static str,
    options: &EngineOptions,
    manifest: &Manifest,
) -> Result<Session, String> {
    let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
    if let Some(threads) = options.threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(|e| e.to_string())?;
    }
    if ep != CPU_EP {
        let lib = ort_lib::locate(options.ort_lib.as_deref()).map_err(|e| e.to_string())?;
        ort_lib::preload_cuda(&lib)?;
    }
    let dispatch = match ep {
        CUDA_EP => Some(
            ort::ep::CUDA::default()
                .with_device_id(options.device_id)
                // fp32 graphs must stay fp32 (TF32 matmuls flip greedy near-ties).
                .with_tf32(false)
                .build()
                .error_on_failure(),
        ),
        // fp16 per the manifest, this graph's optimisation profile, engine and timing
        // caches in `trt_cache` (the keyed folder `OrtEngine::open` resolved).
        TRT_EP => Some(trt::execution_provider(
            manifest,
            path,
            options.device_id,
            &options.trt_limits,
            options.trt_cache.as_deref(),
        )?),
        _ => None,
    };
    if let Some(dispatch) = dispatch {
        builder = builder
            .with_execution_providers([dispatch])
            .map_err(|e| e.to_string())?;
    }
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

/// Every manifest tensor must exist in the session and the other way round.
fn check_contract(graph: &str, session: &Session, spec: &GraphSpec) -> Result<(), Error> {
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    for (kind, want, have) in [
        ("input", &spec.inputs, &inputs),
        ("output", &spec.outputs, &outputs),
    ] {
        for name in want {
            if !have.contains(&name.as_str()) {
                return Err(Error::Contract {
                    graph: graph.into(),
                    message: format!("{kind} `{name}` is in the manifest but not in the graph (graph has {have:?})"),
                });
            }
        }
        for name in have.iter() {
            if !want.iter().any(|w| w == name) {
                return Err(Error::Contract {
                    graph: graph.into(),
                    message: format!(
                        "the graph has {kind} `{name}` that the manifest does not list"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn take(
    out: &mut ort::session::SessionOutputs<'_>,
    name: &str,
    graph: &str,
) -> Result<DynValue, BackendError> {
    out.remove(name)
        .ok_or_else(|| BackendError(format!("{graph} graph returned no `{name}`")))
}

/// A float tensor of the graph's float type from host f32 values.
fn float_tensor(
    values: &[f32],
    shape: Vec<usize>,
    ty: TensorElementType,
) -> Result<DynValue, BackendError> {
    let result = match ty {
        TensorElementType::Float16 => Tensor::from_array((shape, {
            // half's slice conversion uses the CPU's F16C instructions when present.
            let mut halves = vec![f16::ZERO; values.len()];
            halves.convert_from_f32_slice(values);
            halves
        }))
        .map(|t| t.into_dyn()),
        _ => Tensor::from_array((shape, values.to_vec())).map(|t| t.into_dyn()),
    };
    result.map_err(|e| BackendError(format!("cannot build a tensor: {e}")))
}

fn to_f32(value: &DynValue, what: &str) -> Result<Vec<f32>, BackendError> {
    if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
        return Ok(data.to_vec());
    }
    if let Ok((_, data)) = value.try_extract_tensor::<f16>() {
        return Ok(data.to_f32_vec());
    }
    Err(BackendError(format!(
        "{what} is neither float32 nor float16"
    )))
}

/// Copies the given batch rows of a `[B, ...]` float tensor.
fn select_rows(value: &DynValue, rows: &[usize]) -> Result<DynValue, BackendError> {
    fn gather<T: Copy>(shape: &[i64], data: &[T], rows: &[usize]) -> (Vec<usize>, Vec<T>) {
        let batch = shape[0].max(1) as usize;
        let per_row = data.len() / batch;
        let mut out = Vec::with_capacity(per_row * rows.len());
        for &r in rows {
            out.extend_from_slice(&data[r * per_row..(r + 1) * per_row]);
        }
        let mut new_shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        new_shape[0] = rows.len();
        (new_shape, out)
    }
    let built = if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        let (shape, data) = gather(shape, data, rows);
        Tensor::from_array((shape, data)).map(|t| t.into_dyn())
    } else if let Ok((shape, data)) = value.try_extract_tensor::<f16>() {
        let (shape, data) = gather(shape, data, rows);
        Tensor::from_array((shape, data)).map(|t| t.into_dyn())
    } else {
        return Err(BackendError(
            "cache tensor is neither float32 nor float16".into(),
        ));
    };
    built.map_err(|e| BackendError(format!("cannot rebuild the cache: {e}")))
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model directory written by `export`.
    pub model: PathBuf,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the setup folder).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

/// `vlguard-ort inspect DIR`: the manifest, then every graph's inputs and outputs as ONNX
/// Runtime reads them (names, element types, shapes with -1 for dynamic axes).
pub fn inspect_command(args: &InspectArgs) -> Result<ExitCode, Error> {
    let (manifest, bytes) = Manifest::load(&args.model)?;
    println!("{}", String::from_utf8_lossy(&bytes).trim_end());
    let (lib, env) = ort_lib::environment(args.ort_lib.as_deref())?;
    println!("\nONNX Runtime: {}", lib.display());
    let options = EngineOptions {
        model_dir: args.model.clone(),
        ort_lib: args.ort_lib.clone(),
        ep: EpChoice::Cpu,
        device_id: 0,
        threads: Some(1),
        trt_cache: None,
        trt_limits: trt::Limits::new(1, 1),
        keep_finished_rows: false,
    };
    for (name, spec) in [
        ("vision", &manifest.graphs.vision),
        ("projector", &manifest.graphs.projector),
        ("embed", &manifest.graphs.embed),
        ("decoder", &manifest.graphs.decoder),
    ] {
        let path = args.model.join(&spec.file);
        let (session, _) = build_session(env, &path, name, &options, &manifest)?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("\n{name}: {} ({size} bytes)", spec.file);
        for input in session.inputs() {
            println!("  in   {:<28} {}", input.name(), input.dtype());
        }
        for output in session.outputs() {
            println!("  out  {:<28} {}", output.name(), output.dtype());
        }
        check_contract(name, &session, spec)?;
        match vlguard_export::tensorrt::check_file(&path) {
            Ok(found) if found.is_empty() => println!("  TensorRT 10 ONNX parser: takes it whole"),
            Ok(found) => {
                println!(
                    "  TensorRT 10 ONNX parser: {} node(s) it will not take",
                    found.len()
                );
                for finding in &found {
                    println!("    {finding}");
                }
            }
            Err(e) => println!("  TensorRT 10 ONNX parser check: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
