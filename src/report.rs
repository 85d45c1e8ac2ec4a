//! Leaderboard tables (markdown, CSV, HTML with a chart, JSON) over a results folder.
//! (Owner: score/report work; stub.)

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct LeaderboardArgs {
    /// Results folder written by `run` (one subfolder per subset).
    #[arg(default_value = "results")]
    pub results: PathBuf,
    /// Output format.
    #[arg(long, default_value = "md")]
    pub format: String,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Add the paper's published rows as reference rows.
    #[arg(long)]
    pub with_paper: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leaderboard is not implemented yet")]
    Unimplemented,
}

pub fn command(_args: &LeaderboardArgs) -> Result<ExitCode, Error> {
    Err(Error::Unimplemented)
}
