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
//!   caller starts fresh. Lines are read and appended by `jsonl`, whose torn-line rule
//!   this journal shares with the judge's: a torn last line (kill -9 mid-write) is left
//!   out and cut off on reopen (the caller notes it, [`Journal::torn`]); a line that is
//!   not valid UTF-8 or not an entry is an error naming its line number. A torn or
//!   missing header (a kill during the first write) is rewritten with the finished
//!   entries kept.
//! - `{engine}.lock`: one writer at a time. A run holds an exclusive `flock` on it for as
//!   long as its journal is open (the kernel releases it when the process ends, kill -9
//!   included); a second run on the same `OUT/{subset}/{engine}` exits at once naming the
//!   lock and the holder's pid, which the file holds. The file stays after the run: an
//!   unlinked lock file could be locked twice.
//!   The lock is opened without following a symlink and must be a regular file with one
//!   link: a lock planted as a link to another file would have that file truncated.
//! - `{engine}.run.json`: the run manifest (configuration, providers, timings, errors).
//! - Nothing finished is destroyed: `--fresh` moves the journal, the answers file and the
//!   run manifest aside as numbered backups (`{file}.~N~`, N one more than any there, as
//!   GNU `cp --backup=numbered` names them), and so does a run that finds an answers file
//!   with no journal beside it (one written by VLGuard_eval.py, or by hand). The caller
//!   says what was kept ([`Journal::kept`]).
//!
//! The lines and the manifest are typed in `formats` (`JournalHeader`, `JournalEntry`,
//! `RunManifest`); this module owns how they reach the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataset::Sample;
use crate::formats::{Answer, JournalHeader, Predictions};
pub use crate::formats::{Fingerprint, JournalEntry};
use crate::jsonl::{self, Appender, BadLine, Lines};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} was written by a different configuration ({differences}); rerun with --fresh to start over, or use another --out/--engine")]
    Mismatch { path: PathBuf, differences: String },
    #[error("{path} is held by another run (pid {pid}): one writer at a time per results file; wait for it to end, or use another --out or --engine")]
    Locked { path: PathBuf, pid: String },
    #[error("{path} is {what}: refused as a lock file (the run would write its pid into whatever it leads to); remove it")]
    LockNotAFile { path: PathBuf, what: &'static str },
    #[error("{path}: line {line} is not a journal entry ({reason}); move the file away or rerun with --fresh")]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: BadLine,
    },
}

impl From<jsonl::Error> for Error {
    fn from(e: jsonl::Error) -> Error {
        match e {
            jsonl::Error::Io { path, source } => Error::Io { path, source },
            jsonl::Error::BadLine { path, line, reason } => Error::Corrupt { path, line, reason },
        }
    }
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
    pub lock: PathBuf,
}

impl Paths {
    pub fn new(out: &Path, subset: &str, engine: &str) -> Paths {
        let dir = out.join(subset);
        Paths {
            answers: dir.join(format!("{engine}.json")),
            journal: dir.join(format!("{engine}.journal.jsonl")),
            manifest: dir.join(format!("{engine}.run.json")),
            lock: dir.join(format!("{engine}.lock")),
        }
    }
}

/// An exclusive `flock` on a results file's lock file, held while the value lives.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Takes the lock without waiting and writes this process's pid into the file; a lock
    /// held by another process is [`Error::Locked`] with the pid it wrote.
    pub fn acquire(path: &Path) -> Result<Lock, Error> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let refuse = |what| Error::LockNotAFile {
            path: path.to_path_buf(),
            what,
        };
        // O_NOFOLLOW: a symlink fails with ELOOP instead of being followed; O_NONBLOCK: a
        // FIFO does not block the open (it is refused just below).
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => refuse("a symbolic link"),
                _ => io(path)(e),
            })?;
        let meta = file.metadata().map_err(io(path))?;
        if !meta.is_file() {
            return Err(refuse(vlguard_export::files::kind(&meta.file_type())));
        }
        if meta.nlink() > 1 {
            return Err(refuse("a file with other hard links"));
        }
        // SAFETY: a valid descriptor; LOCK_NB makes the call return at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(io(path)(err));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(Error::Locked {
                path: path.to_path_buf(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
            });
        }
        file.set_len(0).map_err(io(path))?;
        write!(file, "{}", std::process::id()).map_err(io(path))?;
        file.sync_data().map_err(io(path))?;
        Ok(Lock { _file: file })
    }
}

/// An open journal: append-only, one synced line per sample, under its lock.
pub struct Journal {
    appender: Appender,
    _lock: Lock,
    kept: Vec<(PathBuf, PathBuf)>,
    torn: Option<usize>,
}

/// What an existing journal holds.
struct Existing {
    entries: HashMap<String, JournalEntry>,
    /// The entry lines (newline included) when the header must be rewritten.
    rewrite: Option<Vec<u8>>,
    /// The bytes of a torn entry line left out (a torn header, the only line, is rewritten
    /// without a word, as a missing one is).
    torn: Option<usize>,
}

impl Journal {
    /// Opens (or creates) the journal under `lock` (the results file's, taken with
    /// [`Lock::acquire`] on `paths.lock`) and returns the latest entry per image. With
    /// `fresh`, or when an answers file has no journal beside it, the earlier files are
    /// kept as numbered backups (see the module contract) and a new journal begins.
    pub fn open(
        paths: &Paths,
        lock: Lock,
        fingerprint: &Fingerprint,
        fresh: bool,
    ) -> Result<(Journal, HashMap<String, JournalEntry>), Error> {
        let path = paths.journal.as_path();
        let journal_there = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        let orphan_answers = !journal_there && paths.answers.symlink_metadata().is_ok();
        let kept = if fresh || orphan_answers {
            keep_numbered(&[&paths.journal, &paths.answers, &paths.manifest])?
        } else {
            Vec::new()
        };
        let existing = match std::fs::metadata(path) {
            Ok(meta) if meta.len() > 0 => Some(read_journal(path, Some(fingerprint))?),
            _ => None,
        };
        let torn = existing.as_ref().and_then(|e| e.torn);
        let (appender, entries) = match existing {
            // Cuts the torn line off.
            Some(Existing {
                entries,
                rewrite: None,
                ..
            }) => (Appender::open(path)?, entries),
            Some(Existing {
                entries,
                rewrite: Some(lines),
                ..
            }) => (create(path, fingerprint, &lines)?, entries),
            None => (create(path, fingerprint, &[])?, HashMap::new()),
        };
        let journal = Journal {
            appender,
            _lock: lock,
            kept,
            torn,
        };
        Ok((journal, entries))
    }

    /// The bytes of the torn last line (a write cut short) this open left out and cut off.
    pub fn torn(&self) -> Option<usize> {
        self.torn
    }

    /// The earlier files this open moved aside: (file, its numbered backup).
    pub fn kept(&self) -> &[(PathBuf, PathBuf)] {
        &self.kept
    }

    /// Appends one entry and syncs it to disk before returning.
    pub fn append(&mut self, entry: &JournalEntry) -> Result<(), Error> {
        Ok(self.appender.append(entry)?)
    }
}

/// Moves each of `files` that exists to `{file}.~N~`, one N for all of them: one more
/// than the largest any of them has (so backups of one run sort together and none is
/// ever overwritten). Returns (file, backup) for each one moved.
fn keep_numbered(files: &[&Path]) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    let present: Vec<&Path> = files
        .iter()
        .copied()
        .filter(|f| f.symlink_metadata().is_ok())
        .collect();
    let Some(dir) = present.first().and_then(|f| f.parent()) else {
        return Ok(Vec::new());
    };
    let mut largest = 0u64;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        for file in &present {
            let Some(base) = file.file_name().map(|n| n.to_string_lossy()) else {
                continue;
            };
            let number = name
                .strip_prefix(base.as_ref())
                .and_then(|rest| rest.strip_prefix(".~"))
                .and_then(|rest| rest.strip_suffix('~'))
                .and_then(|n| n.parse::<u64>().ok());
            largest = largest.max(number.unwrap_or(0));
        }
    }
    let mut kept = Vec::new();
    for file in present {
        let mut backup = file.as_os_str().to_owned();
        backup.push(format!(".~{}~", largest + 1));
        let backup = PathBuf::from(backup);
        std::fs::rename(file, &backup).map_err(io(file))?;
        kept.push((file.to_path_buf(), backup));
    }
    Ok(kept)
}

/// A new journal: the header, then `lines` (entries kept from a journal whose header was
/// torn or missing), written through a temporary file and a rename.
fn create(path: &Path, fingerprint: &Fingerprint, lines: &[u8]) -> Result<Appender, Error> {
    let header = JournalHeader {
        journal: 1,
        fingerprint: fingerprint.clone(),
        created_at: crate::util::utc_now_rfc3339(),
    };
    let mut bytes = serde_json::to_vec(&header).expect("header serializes");
    bytes.push(b'\n');
    bytes.extend_from_slice(lines);
    crate::util::write_atomic(path, &bytes).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        // The new file's directory entry must survive a crash too.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(Appender::open(path)?)
}

/// The latest entry per image of the journal at `path`, read without the lock and
/// whatever its configuration (`merge --status` reading another run's progress); a torn
/// last line is left out, as a resume would.
pub fn read_entries(path: &Path) -> Result<HashMap<String, JournalEntry>, Error> {
    Ok(read_journal(path, None)?.entries)
}

/// Reads an existing journal: its entries, whether its header must be rewritten, whether
/// its last line was torn. A header whose fingerprint is not `fingerprint` (when given) is
/// [`Error::Mismatch`].
fn read_journal(path: &Path, fingerprint: Option<&Fingerprint>) -> Result<Existing, Error> {
    let mut lines = Lines::open(path)?;
    let mut entries = HashMap::new();
    let mut kept = Vec::new();
    let mut header_ok = false;
    let mut whole_lines = 0;
    while let Some(line) = lines.next_line()? {
        whole_lines = line.number;
        if line.number == 1 {
            if let Ok(header) = line.parse::<JournalHeader>() {
                if let Some(expected) = fingerprint.filter(|f| **f != header.fingerprint) {
                    return Err(Error::Mismatch {
                        path: path.to_path_buf(),
                        differences: describe_differences(&header.fingerprint, expected),
                    });
                }
                header_ok = true;
                continue;
            }
            // No header: killed during the first write, or lost; the entries are kept
            // and a header is written before them.
        }
        let entry: JournalEntry = line.parse().map_err(|reason| lines.bad(&line, reason))?;
        entries.insert(entry.image.clone(), entry);
        kept.extend_from_slice(&line.raw);
    }
    Ok(Existing {
        entries,
        rewrite: (!header_ok).then_some(kept),
        torn: lines.torn().filter(|_| whole_lines > 0),
    })
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

    /// The journal of `paths` under its lock.
    fn open(
        paths: &Paths,
        fingerprint: &Fingerprint,
        fresh: bool,
    ) -> Result<(Journal, HashMap<String, JournalEntry>), Error> {
        Journal::open(paths, Lock::acquire(&paths.lock)?, fingerprint, fresh)
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
        let paths = Paths::new(dir.path(), "unsafes", "e");
        {
            let (mut j, done) = open(&paths, &fp(256), false).unwrap();
            assert!(done.is_empty());
            j.append(&answered("a.png", "x")).unwrap();
            j.append(&answered("b.png", "y\u{e9}")).unwrap();
        }
        // Simulate kill -9 in the middle of the third line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(&paths.journal)
            .unwrap();
        f.write_all(br#"{"image":"c.png","ans"#).unwrap();
        drop(f);
        let (mut j, done) = open(&paths, &fp(256), false).unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(j.torn(), Some(21), "the caller is told, to note it");
        assert_eq!(done["b.png"].answer.as_deref(), Some("y\u{e9}"));
        j.append(&answered("c.png", "z")).unwrap();
        drop(j);
        let (_, done) = open(&paths, &fp(256), false).unwrap();
        assert_eq!(
            done.len(),
            3,
            "the torn line must be gone, the new one readable"
        );
    }

    #[test]
    fn a_different_fingerprint_is_refused_and_fresh_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), "s", "j");
        let (mut j, _) = open(&paths, &fp(256), false).unwrap();
        j.append(&answered("a.png", "x")).unwrap();
        drop(j);
        let err = open(&paths, &fp(128), false).err().unwrap().to_string();
        assert!(
            err.contains("max_new_tokens 256 vs 128") && err.contains("--fresh"),
            "{err}"
        );
        let (_, done) = open(&paths, &fp(128), true).unwrap();
        assert!(done.is_empty());
        assert!(paths.journal.with_extension("jsonl.~1~").exists());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), "s", "e");
        let (first, _) = open(&paths, &fp(256), false).unwrap();
        let err = open(&paths, &fp(256), false).err().unwrap().to_string();
        let pid = std::process::id().to_string();
        assert!(
            err.contains("held by another run") && err.contains(&pid),
            "{err}"
        );
        assert!(err.contains("e.lock"), "{err}");
        drop(first);
        assert!(open(&paths, &fp(256), false).is_ok(), "released on drop");
    }

    #[test]
    fn a_torn_or_missing_header_is_rewritten_and_entries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), "s", "e");
        std::fs::create_dir_all(paths.journal.parent().unwrap()).unwrap();
        // Killed during the first write: half a header, no newline.
        std::fs::write(&paths.journal, br#"{"journal":1,"finger"#).unwrap();
        let (mut j, done) = open(&paths, &fp(256), false).unwrap();
        assert!(done.is_empty());
        assert_eq!(j.torn(), None, "a torn header is rewritten, not noted");
        j.append(&answered("a.png", "x")).unwrap();
        drop(j);
        let (_, done) = open(&paths, &fp(256), false).unwrap();
        assert_eq!(done.len(), 1, "the rewritten journal resumes");
        // No header at all: the entries are kept under a new one.
        let entry = serde_json::to_string(&answered("b.png", "y")).unwrap();
        std::fs::write(&paths.journal, format!("{entry}\n")).unwrap();
        let (_, done) = open(&paths, &fp(256), false).unwrap();
        assert_eq!(done["b.png"].answer.as_deref(), Some("y"));
        let text = std::fs::read_to_string(&paths.journal).unwrap();
        assert!(text.starts_with(r#"{"journal":1"#), "{text}");
        let (_, done) = open(&paths, &fp(256), false).unwrap();
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), "s", "e");
        let (mut j, _) = open(&paths, &fp(256), false).unwrap();
        j.append(&answered("a.png", "x")).unwrap();
        drop(j);
        let mut f = OpenOptions::new()
            .append(true)
            .open(&paths.journal)
            .unwrap();
        f.write_all(b"{\"image\":\"\xff\"}\n").unwrap();
        drop(f);
        let err = open(&paths, &fp(256), false).err().unwrap().to_string();
        assert!(
            err.contains("line 3") && err.contains("UTF-8") && err.contains("--fresh"),
            "{err}"
        );
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

    /// Issue 24, case 7: a lock planted as a symlink or a hard link to another file, or
    /// as a FIFO, is refused and the file it leads to is left as it was.
    #[test]
    fn a_lock_that_is_a_link_or_not_a_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        let paths = Paths::new(dir.path(), "s", "e");
        std::fs::create_dir_all(paths.lock.parent().unwrap()).unwrap();
        type Plant<'a> = &'a dyn Fn(&Path);
        let plant: [(&str, Plant); 4] = [
            ("a symbolic link", &|l| {
                std::os::unix::fs::symlink(&victim, l).unwrap()
            }),
            ("a symbolic link", &|l| {
                std::os::unix::fs::symlink("/nonexistent/x", l).unwrap()
            }),
            ("other hard links", &|l| {
                std::fs::hard_link(&victim, l).unwrap()
            }),
            ("a FIFO", &|l| {
                let made = std::process::Command::new("mkfifo").arg(l).status();
                assert!(made.unwrap().success());
            }),
        ];
        for (what, plant) in plant {
            plant(&paths.lock);
            let err = Lock::acquire(&paths.lock).err().unwrap().to_string();
            assert!(
                err.contains(what) && err.contains("e.lock"),
                "{what}: {err}"
            );
            std::fs::remove_file(&paths.lock).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            Lock::acquire(&paths.lock).is_ok(),
            "a plain lock still works"
        );
    }

    /// Issue 24, case 8: every `--fresh` keeps what it replaces, numbered, never
    /// overwriting an earlier backup.
    #[test]
    fn every_fresh_start_keeps_the_earlier_files_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), "s", "e");
        for run in 1..=3 {
            let (mut j, _) = open(&paths, &fp(256), run > 1).unwrap();
            j.append(&answered("a.png", &format!("answer {run}")))
                .unwrap();
            std::fs::write(&paths.answers, format!("answers {run}")).unwrap();
            std::fs::write(&paths.manifest, format!("manifest {run}")).unwrap();
            let kept: Vec<String> = j
                .kept()
                .iter()
                .map(|(_, b)| b.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let n = run - 1;
            let expected: Vec<String> = if run == 1 {
                Vec::new()
            } else {
                ["e.journal.jsonl", "e.json", "e.run.json"]
                    .map(|f| format!("{f}.~{n}~"))
                    .to_vec()
            };
            assert_eq!(kept, expected, "run {run}");
        }
        for n in 1..=2 {
            let journal =
                std::fs::read_to_string(dir.path().join(format!("s/e.journal.jsonl.~{n}~")));
            assert!(journal.unwrap().contains(&format!("answer {n}")));
            let answers = std::fs::read_to_string(dir.path().join(format!("s/e.json.~{n}~")));
            assert_eq!(answers.unwrap(), format!("answers {n}"));
        }
    }

    /// Issue 24, case 9: an answers file with no journal (VLGuard_eval.py's, say) is kept
    /// aside, not overwritten; one with its journal is the run's own and is not.
    #[test]
    fn an_answers_file_without_a_journal_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path(), "s", "e");
        std::fs::create_dir_all(paths.answers.parent().unwrap()).unwrap();
        std::fs::write(&paths.answers, r#"{"a.png": "from the reference"}"#).unwrap();
        let (j, done) = open(&paths, &fp(256), false).unwrap();
        assert!(done.is_empty());
        assert_eq!(j.kept().len(), 1);
        assert!(!paths.answers.exists());
        let backup = std::fs::read_to_string(paths.answers.with_extension("json.~1~"));
        assert_eq!(backup.unwrap(), r#"{"a.png": "from the reference"}"#);
        drop(j);
        // Its own answers beside its journal: a resume, nothing moved.
        std::fs::write(&paths.answers, "{}").unwrap();
        let (j, _) = open(&paths, &fp(256), false).unwrap();
        assert!(j.kept().is_empty());
        assert!(paths.answers.exists());
    }
}
