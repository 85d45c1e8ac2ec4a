//! Append-only JSONL journals, the run's (`results`) and the judge's (`judge::journal`):
//! one JSON value a line, each appended, flushed and fsynced before its caller reports it
//! done, so a crash loses at most the line being written.
//!
//! One torn-line rule for both. A last line without its newline is a write cut short (a
//! crash or kill -9 mid-line): reading leaves it out and says so ([`Lines::torn`], for the
//! caller's note), and [`Appender::open`] cuts it off so the next line starts clean. Every
//! whole line must be valid UTF-8 and the expected JSON: one that is not is an error that
//! names the file and the line ([`Error::BadLine`]), since no crash writes one in the middle
//! (it is a hand edit or another program's file, which a resume must not silently skip).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: line {line}: {reason}", .path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: BadLine,
    },
}

/// Why a whole line is not an entry.
#[derive(Debug, thiserror::Error)]
pub enum BadLine {
    #[error("not valid UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error(transparent)]
    NotJson(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One whole line of a journal.
pub struct Line {
    /// 1-based, as messages name it.
    pub number: usize,
    /// The line's bytes, its newline included.
    pub raw: Vec<u8>,
}

impl Line {
    /// The line as a `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, BadLine> {
        let text = std::str::from_utf8(&self.raw).map_err(|e| BadLine::NotUtf8(e.valid_up_to()))?;
        Ok(serde_json::from_str(text)?)
    }
}

/// The whole lines of a journal file, in order.
pub struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    number: usize,
    torn: Option<usize>,
}

impl Lines {
    /// Opens `path` for reading its lines.
    pub fn open(path: &Path) -> Result<Lines, Error> {
        let file = File::open(path).map_err(io(path))?;
        Ok(Lines {
            path: path.to_path_buf(),
            reader: BufReader::new(file),
            number: 0,
            torn: None,
        })
    }

    /// The next whole line; `None` at the end, and at a torn last line (see [`Lines::torn`]).
    pub fn next_line(&mut self) -> Result<Option<Line>, Error> {
        let mut raw = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut raw)
            .map_err(io(&self.path))?;
        if read == 0 {
            return Ok(None);
        }
        if raw.last() != Some(&b'\n') {
            self.torn = Some(raw.len());
            return Ok(None);
        }
        self.number += 1;
        Ok(Some(Line {
            number: self.number,
            raw,
        }))
    }

    /// The bytes of the torn last line that reading stopped at, if there was one.
    pub fn torn(&self) -> Option<usize> {
        self.torn
    }

    /// `Error::BadLine` for `line` of this file.
    pub fn bad(&self, line: &Line, reason: BadLine) -> Error {
        Error::BadLine {
            path: self.path.clone(),
            line: line.number,
            reason,
        }
    }
}

/// A journal read whole: every line as a `T`.
pub struct Contents<T> {
    pub entries: Vec<T>,
    /// The bytes of a torn last line left out (a write cut short).
    pub torn: Option<usize>,
}

/// Every whole line of `path` as a `T`, in file order; a missing file is an empty journal.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Contents<T>, Error> {
    let mut lines = match Lines::open(path) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Contents {
                entries: Vec::new(),
                torn: None,
            })
        }
        opened => opened?,
    };
    let mut entries = Vec::new();
    while let Some(line) = lines.next_line()? {
        entries.push(line.parse().map_err(|reason| lines.bad(&line, reason))?);
    }
    Ok(Contents {
        entries,
        torn: lines.torn(),
    })
}

/// A journal open for appending.
pub struct Appender {
    path: PathBuf,
    file: File,
}

impl Appender {
    /// Opens (creating it and its folder) `path` for appending, with a torn last line cut
    /// off first.
    pub fn open(path: &Path) -> Result<Appender, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(path))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io(path))?;
        let whole = whole_lines_len(&mut file).map_err(io(path))?;
        file.set_len(whole).map_err(io(path))?;
        file.seek(SeekFrom::End(0)).map_err(io(path))?;
        Ok(Appender {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `value` as one line, then flushes and fsyncs.
    pub fn append<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let mut line = serde_json::to_vec(value)
            .map_err(|e| io(&self.path)(std::io::Error::other(e.to_string())))?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io(&self.path))?;
        self.file.flush().map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The length of `file` up to the end of its last newline (0 when it has none).
fn whole_lines_len(file: &mut File) -> std::io::Result<u64> {
    const BLOCK: u64 = 4096;
    let mut end = file.metadata()?.len();
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Entry {
        n: u32,
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_left_out_then_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/j.jsonl");
        let mut a = Appender::open(&path).unwrap();
        a.append(&Entry { n: 1 }).unwrap();
        a.append(&Entry { n: 2 }).unwrap();
        drop(a);
        // A crash in the middle of the third line (a multi-byte character cut too).
        append_raw(&path, b"{\"n\":3, \"s\": \"\xc3");
        let got = read::<Entry>(&path).unwrap();
        assert_eq!(got.entries, [Entry { n: 1 }, Entry { n: 2 }]);
        assert_eq!(got.torn, Some(15));
        let mut a = Appender::open(&path).unwrap();
        a.append(&Entry { n: 4 }).unwrap();
        drop(a);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":4}\n"
        );
        let got = read::<Entry>(&path).unwrap();
        assert_eq!(got.entries.len(), 3);
        assert_eq!(got.torn, None);
    }

    #[test]
    fn a_bad_whole_line_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        std::fs::write(&path, b"{\"n\":1}\n{\"n\":\"x\"}\n{\"n\":3}\n").unwrap();
        let err = read::<Entry>(&path).err().unwrap();
        assert!(matches!(
            err,
            Error::BadLine {
                line: 2,
                reason: BadLine::NotJson(_),
                ..
            }
        ));
        assert!(err
            .to_string()
            .starts_with(&format!("{}: line 2: ", path.display())));
        std::fs::write(&path, b"{\"n\":1}\n\xff\n").unwrap();
        let err = read::<Entry>(&path).err().unwrap().to_string();
        assert!(err.ends_with("line 2: not valid UTF-8 at byte 0"), "{err}");
    }

    #[test]
    fn a_missing_journal_is_empty_and_a_long_tail_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.jsonl");
        assert!(read::<Entry>(&path).unwrap().entries.is_empty());
        // A torn tail longer than one block: the last newline is found blocks back.
        std::fs::write(&path, b"{\"n\":1}\n").unwrap();
        append_raw(&path, &vec![b'x'; 10_000]);
        drop(Appender::open(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":1}\n");
        // No newline at all: everything is torn.
        std::fs::write(&path, b"{\"n\":").unwrap();
        drop(Appender::open(&path).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
