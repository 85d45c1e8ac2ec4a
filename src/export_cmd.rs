//! `vlguard-ort export`: flags to `vlguard_export` options. (Owner: export work; stub.)

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// LLaVA checkpoint folder (config.json, weights, tokenizer.model).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// CLIP vision tower checkpoint folder.
    #[arg(long)]
    pub vision_tower: PathBuf,
    /// Model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight and activation dtype of the graphs.
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Replace a non-empty --out.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("export is not implemented yet")]
    Unimplemented,
}

pub fn command(_args: &ExportArgs) -> Result<ExitCode, Error> {
    Err(Error::Unimplemented)
}
