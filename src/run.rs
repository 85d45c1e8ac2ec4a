//! `vlguard-ort run`: the evaluation end to end. (stub)

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct RunArgs {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("run is not implemented yet")]
    Unimplemented,
}

pub fn command(_args: &RunArgs) -> Result<ExitCode, Error> {
    Err(Error::Unimplemented)
}
