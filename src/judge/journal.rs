//! The verdict journal: `{stem}.journal.jsonl`, one JSON object per verdict, appended,
//! flushed and fsynced as each verdict arrives, so a crash or Ctrl-C loses at most the
//! requests in flight.
//!
//! Reading tolerates a torn last line (a crash mid-write) and any other unreadable line
//! (skipped and counted). A verdict is reused on a rerun only when its `request_key` — the
//! sha256 of everything that shapes the request: judge model, max_tokens, prompt text,
//! image bytes — equals the current one; later lines win over earlier ones. Error lines
//! are kept for the record but never reused, so a rerun asks for them again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::client::Usage;

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
}

/// What a journal held.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The last non-error verdict per (image, order), whatever its request key.
    pub verdicts: HashMap<(String, Order), Verdict>,
    /// Lines that did not parse (a torn last line after a crash, hand edits).
    pub unreadable_lines: usize,
}

/// Reads `path`; a missing file is an empty journal.
pub fn load(path: &Path) -> Result<Loaded, JournalError> {
    let mut text = String::new();
    match File::open(path) {
        Ok(mut f) => {
            // Lossy: a torn multi-byte character must not make the whole file unreadable.
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)
                .map_err(|source| JournalError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(JournalError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let mut loaded = Loaded::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Verdict>(line) {
            Ok(v) if v.outcome == Outcome::Error => {}
            Ok(v) => {
                loaded.verdicts.insert((v.image.clone(), v.order), v);
            }
            Err(_) => loaded.unreadable_lines += 1,
        }
    }
    Ok(loaded)
}

/// An open journal for appending.
pub struct Writer {
    file: File,
    path: PathBuf,
}

impl Writer {
    /// Opens (creating) `path` for appending; if a crash left the last line without its
    /// newline, one is written first so the next verdict starts a line of its own.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let err = |source| JournalError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1)).map_err(err)?;
            file.read_exact(&mut last).map_err(err)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(err)?;
            }
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Appends one verdict as one line, then flushes and fsyncs.
    pub fn append(&mut self, verdict: &Verdict) -> Result<(), JournalError> {
        let err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(verdict)
            .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.flush().map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn torn_line_is_skipped_and_next_append_starts_a_new_line() {
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
        assert_eq!(loaded.unreadable_lines, 1);
        let mut images: Vec<_> = loaded.verdicts.keys().map(|k| k.0.clone()).collect();
        images.sort();
        // b.png was an error: kept in the file, not reused.
        assert_eq!(images, ["a.png", "d.png"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 4);
    }
}
