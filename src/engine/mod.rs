//! ONNX Runtime sessions: library loading, execution providers, graph I/O checks.

pub mod ort_lib;

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model directory written by `export`.
    pub model: PathBuf,
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH, then the setup folder).
    #[arg(long, env = "VLGUARD_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Library(#[from] ort_lib::LibraryError),
    #[error("inspect is not implemented yet")]
    Unimplemented,
}

pub fn inspect_command(_args: &InspectArgs) -> Result<ExitCode, Error> {
    Err(Error::Unimplemented)
}
