//! Pairwise helpfulness judge over an OpenAI-compatible chat-completions API.
//! (Owner: judge work; stub.)

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct JudgeArgs {
    /// Predictions file for safe_safes in the reference format ({image: answer}).
    pub predictions: PathBuf,
    /// Judge model name (gpt-4-vision-preview is retired: the choice is recorded).
    #[arg(long, env = "VLGUARD_JUDGE_MODEL")]
    pub model: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("judge is not implemented yet")]
    Unimplemented,
}

pub fn command(_args: &JudgeArgs) -> Result<ExitCode, Error> {
    Err(Error::Unimplemented)
}
