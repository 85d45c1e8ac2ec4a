//! The verdict journal: `{stem}.journal.jsonl`, one JSON object per verdict, appended,
//! flushed and fsynced as each verdict arrives, so a crash or Ctrl-C loses at most the
//! requests in flight.
//!
//! Lines are read and appended by `jsonl`, with the run journal's torn-line rule: a torn
//! last line (a crash mid-write) is left out ([`Loaded::torn`]) and cut off when the
//! journal is reopened; any other line that is not a verdict is an error naming its line
//! number. A verdict is reused on a rerun only when its `request_key` — the
//! sha256 of everything that shapes the request: judge model, max_tokens, prompt text,
//! image bytes — equals the current one; later lines win over earlier ones. Error lines
//! are kept for the record but never reused, so a rerun asks for them again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::client::Usage;
use crate::jsonl::{self, Appender, BadLine};

pub use crate::formats::{Order, Outcome, Verdict};

impl Verdict {
    /// The tokens the verdict's request used (0 for what the API did not report).
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            total_tokens: self.total_tokens.unwrap_or(0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot read journal {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write journal {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: line {line} is not a verdict ({reason}); remove that line (its request is asked again) or move the file away")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: BadLine,
    },
}

impl JournalError {
    /// `jsonl`'s error, an I/O failure as `Read` or `Write` (`wrap`).
    fn from_jsonl(
        e: jsonl::Error,
        wrap: fn(PathBuf, std::io::Error) -> JournalError,
    ) -> JournalError {
        match e {
            jsonl::Error::Io { path, source } => wrap(path, source),
            jsonl::Error::BadLine { path, line, reason } => {
                JournalError::Corrupt { path, line, reason }
            }
        }
    }
}

fn read_error(path: PathBuf, source: std::io::Error) -> JournalError {
    JournalError::Read { path, source }
}

fn write_error(path: PathBuf, source: std::io::Error) -> JournalError {
    JournalError::Write { path, source }
}

/// What a journal held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The last non-error verdict per (image, order), whatever its request key.
    pub verdicts: HashMap<(String, Order), Verdict>,
    /// Whether a torn last line (a crash mid-write) was left out.
    pub torn: bool,
}

/// Reads `path`; a missing file is an empty journal.
pub fn load(path: &Path) -> Result<Loaded, JournalError> {
    let read = jsonl::read::<Verdict>(path).map_err(|e| JournalError::from_jsonl(e, read_error))?;
    let mut loaded = Loaded {
        torn: read.torn.is_some(),
        ..Loaded::default()
    };
    for v in read.entries {
        if v.outcome != Outcome::Error {
            loaded.verdicts.insert((v.image.clone(), v.order), v);
        }
    }
    Ok(loaded)
}

/// An open journal for appending.
pub struct Writer(Appender);

impl Writer {
    /// Opens (creating) `path` for appending; a torn last line a crash left is cut off
    /// first, so the next verdict starts a line of its own.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Appender::open(path)
            .map(Writer)
            .map_err(|e| JournalError::from_jsonl(e, write_error))
    }

    /// Appends one verdict as one line, then flushes and fsyncs.
    pub fn append(&mut self, verdict: &Verdict) -> Result<(), JournalError> {
        self.0
            .append(verdict)
            .map_err(|e| JournalError::from_jsonl(e, write_error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;

    fn verdict(image: &str, outcome: Outcome) -> Verdict {
        Verdict {
            image: image.into(),
            order: Order::Original,
            judge_model: "j".into(),
            request_key: "k".into(),
            outcome,
            choice: Some("m".into()),
            prompt_tokens: Some(3),
            completion_tokens: Some(1),
            total_tokens: Some(4),
            attempts: 1,
            error: None,
            at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn torn_line_is_dropped_and_next_append_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/j.journal.jsonl");
        let mut w = Writer::open(&path).unwrap();
        w.append(&verdict("a.png", Outcome::Win)).unwrap();
        w.append(&verdict("b.png", Outcome::Error)).unwrap();
        drop(w);
        // A crash in the middle of the third line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"image":"c.png","ord"#).unwrap();
        drop(f);
        let mut w = Writer::open(&path).unwrap();
        w.append(&verdict("d.png", Outcome::Loss)).unwrap();
        drop(w);
        let loaded = load(&path).unwrap();
        assert!(!loaded.torn, "cut off when reopened for appending");
        let mut images: Vec<_> = loaded.verdicts.keys().map(|k| k.0.clone()).collect();
        images.sort();
        // b.png was an error: kept in the file, not reused.
        assert_eq!(images, ["a.png", "d.png"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
        // Torn again, read without reopening (a crash, then browse): left out and said.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"image":"e.png""#).unwrap();
        drop(f);
        let loaded = load(&path).unwrap();
        assert!(loaded.torn);
        assert_eq!(loaded.verdicts.len(), 2);
    }

    #[test]
    fn a_line_in_the_middle_that_is_not_a_verdict_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.journal.jsonl");
        let mut w = Writer::open(&path).unwrap();
        w.append(&verdict("a.png", Outcome::Win)).unwrap();
        drop(w);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"image\":\"c.png\",\"ord\n").unwrap();
        drop(f);
        let mut w = Writer::open(&path).unwrap();
        w.append(&verdict("b.png", Outcome::Win)).unwrap();
        drop(w);
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: line 2 is not a verdict (", path.display()))
                && err.ends_with(
                    "remove that line (its request is asked again) or move the file away"
                ),
            "{err}"
        );
    }
}
