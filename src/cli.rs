//! Command-line shape. Each subcommand's flags live in its module's `*Args` struct (clap
//! derive, `///` comments are the `--help`); modules validate them into their own config
//! before doing any work, so no stage reads raw flags.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "vlguard-ort",
    version,
    about = "The VLGuard safety benchmark on LLaVA-1.5 models through ONNX Runtime, with no Python"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export a LLaVA-1.5 checkpoint and its CLIP tower to a model directory of ONNX graphs.
    Export(crate::export_cmd::ExportArgs),
    /// Check a model directory: print its manifest and every graph's inputs and outputs,
    /// test the manifest's fields against their bounds and the graphs, and list what
    /// TensorRT's ONNX parser would not take (exit 1 when a field cannot be right).
    Inspect(crate::inspect::InspectArgs),
    /// Run the VLGuard evaluation: answers for a test subset, written like the reference.
    Run(crate::run::RunArgs),
    /// Join the shard files of `run --shard K/N` into one answers file per subset.
    Merge(crate::merge::MergeArgs),
    /// Attack success rate (and more) of a predictions file, as the reference computes it.
    Score(crate::score::ScoreArgs),
    /// One table of every engine found under a results folder.
    Leaderboard(crate::report::LeaderboardArgs),
    /// One offline HTML page to read, filter and compare the answers of one or two engines.
    Browse(crate::browse::BrowseArgs),
    /// Pairwise helpfulness judge against the GPT-4V reference answers.
    Judge(crate::judge::JudgeArgs),
    /// Download the dataset or a checkpoint from the Hugging Face Hub.
    Fetch(crate::fetch::FetchArgs),
    /// From a model name (or Hub repo id) to a model directory: fetch, then export.
    Prepare(crate::prepare::PrepareArgs),
    /// A table of models in one resumable command: prepare or export, run, score, judge
    /// each, then one leaderboard beside the paper's numbers (--dry-run: the status).
    Reproduce(crate::reproduce::ReproduceArgs),
}
