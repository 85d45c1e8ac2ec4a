//! Every file the tool reads or writes, one serde type per format, shared by its writer
//! and every reader (no JSON is read back by string keys):
//!
//! - [`TestEntry`]: one entry of VLGuard's `test.json` / `train.json` (dataset, score, fetch).
//! - [`Predictions`]: a `{image: answer}` results file, written like the reference's
//!   `json.dump(indent=4)` (run, shard merge), read by score, judge and the leaderboard.
//! - [`ReferenceItem`] / [`JudgedItem`]: the GPT-4V reference answers
//!   (`gpt4_safe_safes.json`) and the judge's output items (fetch, judge).
//! - [`RunManifest`] (`{engine}.run.json`, with [`StageTimings`], [`SampleError`],
//!   [`AsrSummary`], [`Batching`]) written by run, read by the leaderboard.
//! - [`JournalHeader`] + [`JournalEntry`] (with [`Fingerprint`]): the run journal's lines.
//! - [`Verdict`] (with [`Order`], [`Outcome`]): the judge journal's lines.
//! - [`JudgeSummary`]: `judge/{engine}.summary.json`, written by judge, read by the
//!   leaderboard.
//!
//! Readers are lenient only where older or hand-made files are expected: a run manifest
//! or judge summary that lacks a field reads it as its default (empty text, zero), since
//! the leaderboard shows whatever a results folder holds. Everything else is strict.
//! Reading goes through [`read`], whose errors name the file and say whether it could not
//! be read, is not JSON, or is JSON of the wrong shape. Python-compatible text comes from
//! [`crate::util::PythonFormatter`].

mod dataset;
mod judge;
mod predictions;
mod run;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use dataset::{InstrResp, TestEntry};
pub use judge::{
    CostSummary, JudgeSummary, JudgedItem, Order, Outcome, ReferenceItem, SwapSummary,
    TallySummary, Verdict,
};
pub use predictions::{Answer, Predictions};
pub use run::{
    AsrSummary, Batching, Fingerprint, JournalEntry, JournalHeader, RunManifest, SampleError,
    StageTimings,
};

/// A file that could not be read as its format.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid JSON: {source}", .path.display())]
    Syntax {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: not {what}: {source}", .path.display())]
    Shape {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Reads and parses the whole file at `path`; `what` names the format in errors
/// ("a predictions file {image: answer}").
pub fn read<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &bytes, what)
}

/// Parses `bytes` read from `path` (for callers that also hash or keep the bytes).
pub fn parse<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, ReadError> {
    serde_json::from_slice(bytes).map_err(|source| {
        let path = path.to_owned();
        match source.classify() {
            serde_json::error::Category::Data => ReadError::Shape { path, what, source },
            _ => ReadError::Syntax { path, source },
        }
    })
}

/// Writes `value` as Python's `json.dump(value, f, indent=4)` does, atomically.
pub fn write_python_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> std::io::Result<()> {
    let text = crate::util::to_python_json(value, 4)?;
    crate::util::write_atomic(path, text.as_bytes())
}

/// Writes `value` as two-space-indented JSON with a final newline, atomically.
pub fn write_pretty_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    crate::util::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_say_what_went_wrong_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let missing = read::<Predictions>(&path, "a predictions file").unwrap_err();
        assert!(matches!(missing, ReadError::Io { .. }), "{missing}");
        std::fs::write(&path, "{not json").unwrap();
        let syntax = read::<Predictions>(&path, "a predictions file").unwrap_err();
        assert!(
            syntax.to_string().contains("p.json: not valid JSON"),
            "{syntax}"
        );
        std::fs::write(&path, "[1]").unwrap();
        let shape = read::<Predictions>(&path, "a predictions file").unwrap_err();
        assert!(
            shape.to_string().contains("p.json: not a predictions file"),
            "{shape}"
        );
    }
}
