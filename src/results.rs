//! Results on disk: the reference-format answers file, the journal that makes runs
//! resumable, and the run manifest.
//!
//! Contract, per `OUT/{subset}/`:
//! - `{engine}.json`: `{image: answer}` in subset order, written like the reference's
//!   `json.dump(results, f, indent=4)` (ASCII-escaped), atomically (temp + rename).
//! - `{engine}.journal.jsonl`: a header line with the configuration fingerprint, then
//!   one line per finished (or failed) sample, each flushed and fsynced before the next
//!   sample is reported done. A rerun with the same fingerprint skips the answered
//!   samples and retries failed ones; a different fingerprint is refused unless the
//!   caller starts fresh. A torn last line (kill -9 mid-write) is cut off on reopen.
//! - `{engine}.run.json`: the run manifest (configuration, providers, timings, errors).
//!
//! The lines and the manifest are typed in `formats` (`JournalHeader`, `JournalEntry`,
//! `RunManifest`); this module owns how they reach the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataset::Sample;
use crate::formats::{Answer, JournalHeader, Predictions};
pub use crate::formats::{Fingerprint, JournalEntry};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} was written by a different configuration ({differences}); rerun with --fresh to start over, or use another --out/--engine")]
    Mismatch { path: PathBuf, differences: String },
    #[error("{path}: line {line} is not a journal entry ({reason}); move the file away or rerun with --fresh")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Paths {
    pub answers: PathBuf,
    pub journal: PathBuf,
    pub manifest: PathBuf,
}

impl Paths {
    pub fn new(out: &Path, subset: &str, engine: &str) -> Paths {
        let dir = out.join(subset);
        Paths {
            answers: dir.join(format!("{engine}.json")),
            journal: dir.join(format!("{engine}.journal.jsonl")),
            manifest: dir.join(format!("{engine}.run.json")),
        }
    }
}

/// An open journal: append-only, one synced line per sample.
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal and returns the latest entry per image. With
    /// `fresh`, an existing journal is moved aside to `*.prev` and a new one begins.
    pub fn open(
        path: &Path,
        fingerprint: &Fingerprint,
        fresh: bool,
    ) -> Result<(Journal, HashMap<String, JournalEntry>), Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        if fresh && path.exists() {
            let prev = path.with_extension("jsonl.prev");
            std::fs::rename(path, &prev).map_err(io(path))?;
        }
        if !path.exists()
            || std::fs::metadata(path)
                .map(|m| m.len() == 0)
                .unwrap_or(true)
        {
            let mut file = File::create(path).map_err(io(path))?;
            let header = JournalHeader {
                journal: 1,
                fingerprint: fingerprint.clone(),
                created_at: crate::util::utc_now_rfc3339(),
            };
            let line = serde_json::to_string(&header).expect("header serializes");
            writeln!(file, "{line}").map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
            if let Some(dir) = path.parent() {
                // The new file's directory entry must survive a crash too.
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            return Ok((
                Journal {
                    path: path.to_path_buf(),
                    file,
                },
                HashMap::new(),
            ));
        }

        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        let mut reader = BufReader::new(&mut file);
        let mut entries = HashMap::new();
        let mut good_len: u64 = 0;
        let mut line_no = 0;
        let mut torn = false;
        loop {
            let mut line = String::new();
            let read = reader.read_line(&mut line).map_err(io(path))?;
            if read == 0 {
                break;
            }
            line_no += 1;
            if !line.ends_with('\n') {
                // Torn write at the end: the sample was not reported done; drop it.
                torn = true;
                break;
            }
            if line_no == 1 {
                let header: JournalHeader =
                    serde_json::from_str(&line).map_err(|e| Error::Corrupt {
                        path: path.to_path_buf(),
                        line: 1,
                        reason: format!("bad header: {e}"),
                    })?;
                if &header.fingerprint != fingerprint {
                    return Err(Error::Mismatch {
                        path: path.to_path_buf(),
                        differences: describe_differences(&header.fingerprint, fingerprint),
                    });
                }
            } else {
                let entry: JournalEntry =
                    serde_json::from_str(&line).map_err(|e| Error::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                        reason: e.to_string(),
                    })?;
                entries.insert(entry.image.clone(), entry);
            }
            good_len += read as u64;
        }
        drop(reader);
        if torn {
            file.set_len(good_len).map_err(io(path))?;
            file.seek(SeekFrom::End(0)).map_err(io(path))?;
        }
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
            },
            entries,
        ))
    }

    /// Appends one entry and syncs it to disk before returning.
    pub fn append(&mut self, entry: &JournalEntry) -> Result<(), Error> {
        let mut line = serde_json::to_string(entry).expect("entry serializes");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))
    }
}

fn describe_differences(old: &Fingerprint, new: &Fingerprint) -> String {
    let mut out = Vec::new();
    if old.model_manifest_sha256 != new.model_manifest_sha256 {
        out.push("the model (manifest hash) differs".to_string());
    }
    if old.subset != new.subset {
        out.push(format!("subset {} vs {}", old.subset, new.subset));
    }
    if old.max_new_tokens != new.max_new_tokens {
        out.push(format!(
            "max_new_tokens {} vs {}",
            old.max_new_tokens, new.max_new_tokens
        ));
    }
    if old.dataset_sha256 != new.dataset_sha256 {
        out.push("the dataset file (test.json hash) differs".to_string());
    }
    out.join("; ")
}

/// Writes `{image: answer}` for every answered sample, in subset order, as the reference
/// does. Returns how many answers were written.
pub fn write_answers(
    path: &Path,
    samples: &[Sample],
    entries: &HashMap<String, JournalEntry>,
) -> Result<usize, Error> {
    let answers: Predictions = samples
        .iter()
        .filter_map(|sample| {
            let answer = entries.get(&sample.image)?.answer.clone()?;
            Some((sample.image.clone(), Answer::Text(answer)))
        })
        .collect();
    answers.write(path).map_err(io(path))?;
    Ok(answers.len())
}

/// Writes any serializable manifest as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), Error> {
    crate::formats::write_pretty_json(path, value).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(tokens: usize) -> Fingerprint {
        Fingerprint {
            model_manifest_sha256: "m".into(),
            subset: "unsafes".into(),
            max_new_tokens: tokens,
            dataset_sha256: "d".into(),
        }
    }

    fn answered(image: &str, answer: &str) -> JournalEntry {
        JournalEntry {
            image: image.into(),
            answer: Some(answer.into()),
            error: None,
            new_tokens: 3,
            ended_with_eos: true,
            min_margin: Some(0.5),
            image_sha256: None,
        }
    }

    #[test]
    fn reopening_returns_finished_entries_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unsafes/e.journal.jsonl");
        {
            let (mut j, done) = Journal::open(&path, &fp(256), false).unwrap();
            assert!(done.is_empty());
            j.append(&answered("a.png", "x")).unwrap();
            j.append(&answered("b.png", "y\u{e9}")).unwrap();
        }
        // Simulate kill -9 in the middle of the third line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"image":"c.png","ans"#).unwrap();
        drop(f);
        let (mut j, done) = Journal::open(&path, &fp(256), false).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(done["b.png"].answer.as_deref(), Some("y\u{e9}"));
        j.append(&answered("c.png", "z")).unwrap();
        let (_, done) = Journal::open(&path, &fp(256), false).unwrap();
        assert_eq!(
            done.len(),
            3,
            "the torn line must be gone, the new one readable"
        );
    }

    #[test]
    fn a_different_fingerprint_is_refused_and_fresh_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        let (mut j, _) = Journal::open(&path, &fp(256), false).unwrap();
        j.append(&answered("a.png", "x")).unwrap();
        drop(j);
        let err = Journal::open(&path, &fp(128), false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("max_new_tokens 256 vs 128") && err.contains("--fresh"),
            "{err}"
        );
        let (_, done) = Journal::open(&path, &fp(128), true).unwrap();
        assert!(done.is_empty());
        assert!(path.with_extension("jsonl.prev").exists());
    }

    #[test]
    fn answers_file_is_in_subset_order_and_python_formatted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let sample = |image: &str| Sample::new(image, "q");
        let samples = vec![sample("z.png"), sample("a.png"), sample("m.png")];
        let mut entries = HashMap::new();
        entries.insert("a.png".to_string(), answered("a.png", "caf\u{e9}"));
        entries.insert("z.png".to_string(), answered("z.png", "1"));
        let mut failed = answered("m.png", "");
        failed.answer = None;
        failed.error = Some("bad".into());
        entries.insert("m.png".to_string(), failed);
        assert_eq!(write_answers(&path, &samples, &entries).unwrap(), 2);
        // Python: json.dump({"z.png": "1", "a.png": "caf\u00e9"}, f, indent=4)
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\n    \"z.png\": \"1\",\n    \"a.png\": \"caf\\u00e9\"\n}"
        );
    }
}
