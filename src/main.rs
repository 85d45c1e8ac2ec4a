//! The `vlguard-ort` binary: parse, dispatch, map errors to exit codes.
//!
//! Exit codes: 0 success; 1 the command ran but something failed along the way (a bad
//! sample, a judge error) and was recorded; 2 the command could not run (bad input,
//! missing files, wrong configuration).

use std::process::ExitCode;

use clap::Parser;
use vlguard_ort::cli::{Cli, Command};

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so a print to a closed pipe (`score --json | head -c 10`)
    // would panic; with the default action the process ends quietly, as Unix tools do.
    // Sockets are unaffected: the standard library sends with MSG_NOSIGNAL.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result: anyhow::Result<ExitCode> = match cli.command {
        Command::Export(args) => vlguard_ort::export_cmd::command(&args).map_err(Into::into),
        Command::Inspect(args) => vlguard_ort::inspect::command(&args).map_err(Into::into),
        Command::Run(args) => vlguard_ort::run::command(&args).map_err(Into::into),
        Command::Merge(args) => vlguard_ort::merge::command(&args).map_err(Into::into),
        Command::Score(args) => vlguard_ort::score::command(&args).map_err(Into::into),
        Command::Leaderboard(args) => vlguard_ort::report::command(&args).map_err(Into::into),
        Command::Browse(args) => vlguard_ort::browse::command(&args).map_err(Into::into),
        Command::Judge(args) => vlguard_ort::judge::command(&args).map_err(Into::into),
        Command::Fetch(args) => vlguard_ort::fetch::command(&args).map_err(Into::into),
        Command::Prepare(args) => vlguard_ort::prepare::command(&args).map_err(Into::into),
        Command::Setup(args) => vlguard_ort::setup::command(&args).map_err(Into::into),
        Command::Doctor(args) => vlguard_ort::doctor::command(&args).map_err(Into::into),
        Command::Convert(args) => vlguard_ort::convert::command(&args).map_err(Into::into),
        Command::Reproduce(args) => vlguard_ort::reproduce::command(&args).map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // Messages quote file contents, file names and server replies: escaped, line by
            // line (a message of several lines, such as the places searched for ONNX
            // Runtime, keeps its line breaks; a line break cannot drive the terminal).
            let message = vlguard_ort::util::error_chain(err.as_ref());
            eprintln!("error: {}", vlguard_ort::util::escape_lines(&message));
            ExitCode::from(2)
        }
    }
}
