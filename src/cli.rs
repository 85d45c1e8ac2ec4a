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
    /// Join the shard files of `run --shard K/N` into one answers file per subset, with a
    /// run manifest combined from the shards' (`--status`: which shards are still to run).
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
    /// Install ONNX Runtime (and with --gpu the CUDA, cuDNN and TensorRT libraries) where
    /// this binary finds it, from PyPI: no Python, no checkout needed.
    Setup(crate::setup::SetupArgs),
    /// What this binary would run on: its version, the ONNX Runtime library it finds (and
    /// every place it looked), its execution providers, the CUDA/cuDNN/TensorRT libraries.
    Doctor(crate::doctor::DoctorArgs),
    /// VLGuard's train.json in LLaVA's fine-tuning format, byte for byte as VLGuard's
    /// convert_to_llava_format.py writes it.
    ///
    /// The output is the `--data_path` of LLaVA's fine-tuning scripts (train.py, e.g. via
    /// scripts/v1_5/finetune.sh; VLGuard's README uses the same file for MiniGPT-v2), the first step of
    /// VLGuard's safety fine-tuning: each item keeps its fields, and its `instr-resp` becomes
    /// `conversations` (human/gpt turns, `<image>` before the first question; of a safe
    /// image's two pairs a seeded shuffle picks which comes first, as the script's
    /// `random.seed(0)` does). Each item's `image` stays relative to the `train/` folder
    /// that `fetch dataset --with-train` unpacks: give LLaVA `--image_folder
    /// data/VLGuard/train`. Input the script would fail on is refused with the item's index
    /// and id, and nothing is written.
    Convert(crate::convert::ConvertArgs),
    /// A table of models in one resumable command: prepare or export, run, score, judge
    /// each, then one leaderboard beside the paper's numbers (--dry-run: the status).
    Reproduce(crate::reproduce::ReproduceArgs),
}
