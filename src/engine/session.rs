//! One ONNX Runtime session per graph: created on the requested execution provider (an
//! explicitly requested provider that cannot register is an error, never a silent CPU
//! fallback), checked against the manifest's tensor names, and the host tensor helpers
//! every graph call uses (f32 in and out whatever the graph's float type: fp16 graphs are
//! converted at the boundary).

use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use vlguard_export::manifest::{GraphKind, Graphs, Manifest};

use super::{ort_lib, trt, EngineOptions, EpChoice, Error, Provider, SessionError};

/// One loaded graph and the element type its float inputs expect.
pub struct Graph {
    pub kind: GraphKind,
    pub session: Session,
    pub float_type: TensorElementType,
}

impl Graph {
    /// Creates the session for `kind` and checks its inputs and outputs against the
    /// manifest.
    pub fn load(loader: &Loader, kind: GraphKind) -> Result<(Graph, Provider), Error> {
        let (session, provider) = loader.session(kind)?;
        check_contract(kind, &session, &loader.manifest.graphs)?;
        let float_type = session
            .inputs()
            .iter()
            .find_map(|input| match input.dtype() {
                ValueType::Tensor { ty, .. }
                    if matches!(ty, TensorElementType::Float32 | TensorElementType::Float16) =>
                {
                    Some(*ty)
                }
                _ => None,
            })
            .unwrap_or(TensorElementType::Float32);
        let graph = Graph {
            kind,
            session,
            float_type,
        };
        Ok((graph, provider))
    }

    /// A float tensor of this graph's float type from host f32 values.
    pub fn float_tensor(&self, values: &[f32], shape: Vec<usize>) -> Result<DynValue, Error> {
        float_tensor(values, shape, self.float_type)
    }

    /// Turns a session failure into an error naming the graph.
    pub fn failed(&self) -> impl Fn(ort::Error) -> Error {
        let graph = self.kind;
        move |source| Error::Run { graph, source }
    }
}

/// What every session of a model is made with.
pub struct Loader<'a> {
    pub env: &'a ort::environment::Environment,
    pub options: &'a EngineOptions,
    pub manifest: &'a Manifest,
    /// TensorRT's engine cache: the folder keyed by model, GPU and TensorRT version
    /// ([`trt::CachePlan`]); `None` runs TensorRT uncached.
    pub trt_dir: Option<PathBuf>,
    /// Where TensorRT's libraries are loaded from (`None`: the system loader).
    pub trt_lib_dir: Option<PathBuf>,
}

impl Loader<'_> {
    /// Creates a session for graph `kind` on the requested provider(s): the first that
    /// registers with `auto`, exactly the one named otherwise.
    pub fn session(&self, kind: GraphKind) -> Result<(Session, Provider), Error> {
        let path = self.options.model_dir.join(self.manifest.graphs.file(kind));
        let order: &[Provider] = match self.options.ep {
            EpChoice::Auto => &[Provider::TensorRt, Provider::Cuda, Provider::Cpu],
            EpChoice::Cpu => &[Provider::Cpu],
            EpChoice::Cuda => &[Provider::Cuda],
            EpChoice::Tensorrt => &[Provider::TensorRt],
        };
        let session_error = |source: SessionError| Error::Session {
            graph: kind,
            path: path.clone(),
            source: Box::new(source),
        };
        if !path.is_file() {
            return Err(session_error(SessionError::MissingFile));
        }
        let mut last_error = SessionError::NoProvider;
        for &provider in order {
            match self.try_session(kind, &path, provider) {
                Ok(session) => return Ok((session, provider)),
                Err(source) if self.options.ep == EpChoice::Auto && provider != Provider::Cpu => {
                    last_error = source;
                }
                Err(source) if provider == Provider::Cpu => return Err(session_error(source)),
                Err(source) => {
                    return Err(Error::Provider {
                        provider,
                        graph: kind,
                        source: Box::new(source),
                    })
                }
            }
        }
        Err(session_error(last_error))
    }

    fn try_session(
        &self,
        kind: GraphKind,
        path: &Path,
        provider: Provider,
    ) -> Result<Session, SessionError> {
        let options = self.options;
        let refused = |e: ort::Error<_>| SessionError::Ort(e.into());
        let mut builder = Session::builder(self.env)?;
        if let Some(threads) = options.threads {
            builder = builder.with_intra_threads(threads).map_err(refused)?;
        }
        if provider != Provider::Cpu {
            let lib = ort_lib::init(options.ort_lib.as_deref())?;
            super::cuda::preload(&lib)?;
        }
        let mut dispatch = Vec::new();
        for &registered in registered_with(provider) {
            dispatch.push(match registered {
                Provider::Cuda => ort::ep::CUDA::default()
                    .with_device_id(options.device_id)
                    // fp32 graphs must stay fp32 (TF32 matmuls flip greedy near-ties).
                    .with_tf32(false)
                    .build()
                    .error_on_failure(),
                // fp16 models only, this graph's optimisation profile, engine and timing
                // caches in the keyed folder.
                Provider::TensorRt => {
                    trt::libs::preload(self.trt_lib_dir.as_deref())?;
                    trt::execution_provider(
                        self.manifest,
                        kind,
                        path,
                        options.device_id,
                        &options.trt_limits,
                        self.trt_dir.as_deref(),
                    )?
                }
                Provider::Cpu => continue,
            });
        }
        if !dispatch.is_empty() {
            builder = builder
                .with_execution_providers(dispatch)
                .map_err(refused)?;
        }
        Ok(builder.commit_from_file(path)?)
    }
}

/// The providers registered on a session for `provider`, in priority order: TensorRT
/// comes with CUDA behind it, so a node TensorRT rejects runs on the GPU (its cache in
/// device memory) rather than on the CPU; ONNX Runtime's CPU provider is always last.
pub fn registered_with(provider: Provider) -> &'static [Provider] {
    match provider {
        Provider::TensorRt => &[Provider::TensorRt, Provider::Cuda],
        Provider::Cuda => &[Provider::Cuda],
        Provider::Cpu => &[],
    }
}

/// Every manifest tensor must exist in the session and the other way round.
pub fn check_contract(kind: GraphKind, session: &Session, graphs: &Graphs) -> Result<(), Error> {
    let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    check_names(kind, &inputs, &outputs, graphs)
}

/// [`check_contract`] on the input and output names a graph declares.
pub fn check_names(
    kind: GraphKind,
    inputs: &[&str],
    outputs: &[&str],
    graphs: &Graphs,
) -> Result<(), Error> {
    for (what, want, have) in [
        ("input", graphs.inputs(kind), inputs),
        ("output", graphs.outputs(kind), outputs),
    ] {
        let contract = |message: String| Error::Contract {
            graph: kind,
            message,
        };
        if let Some(name) = want.iter().find(|name| !have.contains(name)) {
            return Err(contract(format!(
                "{what} `{name}` is in the manifest but not in the graph (graph has {have:?})"
            )));
        }
        if let Some(name) = have.iter().find(|name| !want.iter().any(|w| w == *name)) {
            return Err(contract(format!(
                "the graph has {what} `{name}` that the manifest does not list"
            )));
        }
    }
    Ok(())
}

/// Output `name` of a finished run of graph `kind`.
pub fn take(
    out: &mut ort::session::SessionOutputs<'_>,
    name: &str,
    kind: GraphKind,
) -> Result<DynValue, Error> {
    out.remove(name).ok_or_else(|| Error::MissingOutput {
        graph: kind,
        tensor: name.to_string(),
    })
}

/// A float tensor of type `ty` from host f32 values.
pub fn float_tensor(
    values: &[f32],
    shape: Vec<usize>,
    ty: TensorElementType,
) -> Result<DynValue, Error> {
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
    result.map_err(|source| Error::FloatInput { source })
}

/// An integer tensor (ids, masks, positions, lengths).
pub fn int_tensor<T>(
    values: Vec<T>,
    shape: Vec<usize>,
    what: &'static str,
) -> Result<DynValue, Error>
where
    T: ort::value::PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    Tensor::from_array((shape, values))
        .map(|t| t.into_dyn())
        .map_err(|source| Error::IntInput {
            tensor: what,
            source,
        })
}

/// Host f32 values of a float32 or float16 tensor.
pub fn to_f32(value: &DynValue, what: &'static str) -> Result<Vec<f32>, Error> {
    if let Ok((_, data)) = value.try_extract_tensor::<f32>() {
        return Ok(data.to_vec());
    }
    if let Ok((_, data)) = value.try_extract_tensor::<f16>() {
        return Ok(data.to_f32_vec());
    }
    Err(Error::ElementType { tensor: what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensorrt_is_registered_with_cuda_behind_it() {
        assert_eq!(
            registered_with(Provider::TensorRt),
            [Provider::TensorRt, Provider::Cuda]
        );
        assert_eq!(registered_with(Provider::Cuda), [Provider::Cuda]);
        assert!(registered_with(Provider::Cpu).is_empty());
    }
}
