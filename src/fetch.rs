//! Dataset and checkpoint downloads from the Hugging Face Hub: resumable and verified.
//! (Owner: fetch work; stub.)

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(subcommand)]
    pub what: FetchWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum FetchWhat {
    /// The VLGuard test set (and train set with --with-train) plus GPT-4V reference answers.
    Dataset {},
    /// Every file of a model repository.
    Model {
        /// Repository id, e.g. liuhaotian/llava-v1.5-7b.
        repo: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("fetch is not implemented yet")]
    Unimplemented,
}

pub fn command(_args: &FetchArgs) -> Result<ExitCode, Error> {
    Err(Error::Unimplemented)
}
