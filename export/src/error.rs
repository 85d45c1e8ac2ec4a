//! `ExportError`: every way an export fails, one variant per cause, each naming the file,
//! folder or field that caused it. The readers' own errors (`ConfigError`,
//! `CheckpointError`, `LayoutError`, `LoraError`, `OnnxError`) pass through unchanged.
//!
//! Its own module so the pipeline and the graph builders both import it from here, never
//! from the crate root.

use std::path::{Path, PathBuf};

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::layout::LayoutError;
use crate::lora::LoraError;
use crate::onnx::OnnxError;
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{out} exists and is not empty; pass --force to replace it")]
    OutNotEmpty { out: PathBuf },
    #[error("{out} exists and is not a directory")]
    OutNotDir { out: PathBuf },
    #[error("--out {out} {relation} the {what} {input}: the export would replace what it reads; choose another --out")]
    OutOverlapsInput {
        out: PathBuf,
        relation: &'static str,
        what: &'static str,
        input: PathBuf,
    },
    #[error("{path}: `{field}` {message}")]
    Bound {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    #[error("{dir} has {free} bytes free; this export writes about {needed} bytes (the weights at this dtype): free some space or export elsewhere")]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The layout's own refusals; the readers' errors it passes through become their
    /// variants here (see the `From` below).
    #[error(transparent)]
    Layout(LayoutError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{llava}: mm_hidden_size {mm_hidden} differs from the vision tower's hidden_size {clip_hidden} ({clip})")]
    HiddenMismatch {
        llava: PathBuf,
        clip: PathBuf,
        mm_hidden: usize,
        clip_hidden: usize,
    },
    #[error("{path}: the fused decoder needs a head size that is a multiple of 16 (ONNX Runtime's GroupQueryAttention); this model's is {head_dim}: export it with --decoder plain")]
    FusedHeadDim { path: PathBuf, head_dim: usize },
    #[error(
        "{path}: mm_vision_select_layer {select} is out of range for a tower of {layers} layers"
    )]
    SelectLayer {
        path: PathBuf,
        select: i64,
        layers: usize,
    },
}

impl From<LayoutError> for ExportError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::Config(e) => ExportError::Config(e),
            LayoutError::Checkpoint(e) => ExportError::Checkpoint(e),
            LayoutError::Lora(e) => ExportError::Lora(e),
            e => ExportError::Layout(e),
        }
    }
}

/// `map_err` helper: an I/O failure on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}
