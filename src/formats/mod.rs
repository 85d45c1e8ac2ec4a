//! Every file the tool reads or writes, one serde type per format, shared by its writer
//! and every reader (no JSON is read back by string keys):
//!
//! - [`TestEntry`]: one entry of VLGuard's `test.json` / `train.json` (dataset, score, fetch).
//! - [`Turn`] (with [`Speaker`]): a turn of LLaVA's fine-tuning conversations, written by
//!   convert.
//! - [`Predictions`]: a `{image: answer}` results file, written like the reference's
//!   `json.dump(indent=4)` (run, shard merge), read by score, judge and the leaderboard.
//! - [`ReferenceItem`] / [`JudgedItem`]: the GPT-4V reference answers
//!   (`gpt4_safe_safes.json`) and the judge's output items (fetch, judge).
//! - [`RunManifest`] (`{engine}.run.json`, with [`StageTimings`], [`SampleError`],
//!   [`AsrSummary`], [`Batching`], [`TrtBuild`]) written by run, read by the leaderboard.
//! - [`JournalHeader`] + [`JournalEntry`] (with [`Fingerprint`]): the run journal's lines.
//! - [`Verdict`] (with [`Order`], [`Outcome`]): the judge journal's lines.
//! - [`JudgeSummary`] (with [`JudgeRun`]): `judge/{engine}.summary.json`, written by
//!   judge, read by the leaderboard.
//! - [`HarmVerdicts`] / [`HarmSummary`] (with [`HarmVerdict`], [`Agreement`]):
//!   `judge/{subset}/{engine}.json` and `.summary.json` of `judge --task harm`, read by the
//!   leaderboard and browse.
//!
//! Readers are lenient only where older or hand-made files are expected: a run manifest
//! or judge summary that lacks a field reads it as its default (empty text, zero), since
//! the leaderboard shows whatever a results folder holds. Everything else is strict.
//! Reading goes through [`read`], whose errors name the file and say whether it could not
//! be read, is not JSON, or is JSON of the wrong shape. A file that does not parse because
//! it starts with a byte-order mark or is UTF-16 / UTF-32 says so and how to convert it
//! ([`encoding_problem`]; JSON is UTF-8 without a BOM, and Python's `json.load` refuses the
//! BOM too). Python-compatible text comes from [`crate::util::PythonFormatter`].

mod dataset;
mod harm;
mod judge;
mod llava;
mod predictions;
mod run;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use dataset::{InstrResp, TestEntry};
pub use harm::{Agreement, HarmSummary, HarmVerdict, HarmVerdicts};
pub use judge::{
    CostSummary, JudgeRun, JudgeSummary, JudgedItem, Order, Outcome, ReferenceItem, SwapSummary,
    TallySummary, UsageSummary, Verdict,
};
pub use llava::{Speaker, Turn};
pub use predictions::{Answer, Predictions};
pub use run::{
    AsrSummary, Batching, Fingerprint, JournalEntry, JournalHeader, RunManifest, SampleError,
    ShardRun, StageTimings, TrtBuild,
};

/// A file that could not be read as its format.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", .path.display())]
    Encoding { path: PathBuf, problem: String },
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
    // Regular files only: a FIFO or /dev/zero named like a results file would hang.
    let bytes = vlguard_export::files::read_regular(path).map_err(|source| ReadError::Io {
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
        if let Some(problem) = encoding_problem(&path, bytes) {
            return ReadError::Encoding { path, problem };
        }
        match source.classify() {
            serde_json::error::Category::Data => ReadError::Shape { path, what, source },
            _ => ReadError::Syntax { path, source },
        }
    })
}

/// Why the JSON text `bytes` (read from `path`) is not UTF-8 without a BOM, with the
/// command that converts it; `None` when it starts like UTF-8 JSON. The encodings are told
/// apart by their byte-order mark or, without one, by where the zero bytes of the first
/// (ASCII) characters fall (RFC 4627, section 3).
pub fn encoding_problem(path: &Path, bytes: &[u8]) -> Option<String> {
    let file = path.display();
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        return Some(format!(
            "starts with a UTF-8 byte-order mark, which JSON does not allow: remove it, e.g. \
             `sed -i '1s/^\\xEF\\xBB\\xBF//' {file}`"
        ));
    }
    let head: [u8; 4] = match bytes.get(..4) {
        Some(b) => b.try_into().ok()?,
        None => return None,
    };
    let (encoding, bom) = match head {
        [0, 0, 0xFE, 0xFF] => ("UTF-32BE", true),
        [0xFF, 0xFE, 0, 0] => ("UTF-32LE", true),
        [0xFE, 0xFF, ..] => ("UTF-16BE", true),
        [0xFF, 0xFE, ..] => ("UTF-16LE", true),
        [0, 0, 0, b] if b != 0 => ("UTF-32BE", false),
        [a, 0, 0, 0] if a != 0 => ("UTF-32LE", false),
        [0, b, ..] if b != 0 => ("UTF-16BE", false),
        [a, 0, ..] if a != 0 => ("UTF-16LE", false),
        _ => return None,
    };
    // With a BOM, iconv's plain UTF-16 / UTF-32 reads it and drops it; without one the
    // byte order must be named.
    let from = if bom { &encoding[..6] } else { encoding };
    Some(format!(
        "is {encoding} text{}; JSON files must be UTF-8: convert it, e.g. \
         `iconv -f {from} -t UTF-8 {file} > {file}.utf8 && mv {file}.utf8 {file}`",
        if bom { " (with a byte-order mark)" } else { "" }
    ))
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

    /// `text` in UTF-16 or UTF-32, little- or big-endian, as Python's `str.encode` writes
    /// it (`utf-16-le` etc.: no BOM).
    fn encode(text: &str, width: usize, big_endian: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for c in text.chars() {
            let units: Vec<u32> = if width == 2 {
                c.encode_utf16(&mut [0; 2])
                    .iter()
                    .map(|&u| u32::from(u))
                    .collect()
            } else {
                vec![u32::from(c)]
            };
            for u in units {
                let bytes = u.to_le_bytes();
                let mut unit = bytes[..width].to_vec();
                if big_endian {
                    unit.reverse();
                }
                out.extend(unit);
            }
        }
        out
    }

    #[test]
    fn a_bom_or_a_wide_encoding_is_named_with_its_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.json");
        let text = r#"[{"image": "a.png", "safe": true, "instr-resp": []}]"#;
        let message = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let err = read::<Vec<TestEntry>>(&path, "a VLGuard test.json").unwrap_err();
            assert!(matches!(err, ReadError::Encoding { .. }), "{err}");
            err.to_string()
        };
        let file = path.display();
        let mut bom = b"\xEF\xBB\xBF".to_vec();
        bom.extend_from_slice(text.as_bytes());
        assert_eq!(
            message(&bom),
            format!(
                "{file}: starts with a UTF-8 byte-order mark, which JSON does not allow: \
                 remove it, e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' {file}`"
            )
        );
        // Python's "utf-16" codec writes a little-endian BOM first.
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(encode(text, 2, false));
        assert_eq!(
            message(&utf16),
            format!(
                "{file}: is UTF-16LE text (with a byte-order mark); JSON files must be UTF-8: \
                 convert it, e.g. `iconv -f UTF-16 -t UTF-8 {file} > {file}.utf8 && mv {file}.utf8 {file}`"
            )
        );
        assert!(message(&encode(text, 2, true)).contains("is UTF-16BE text; JSON files must be UTF-8: convert it, e.g. `iconv -f UTF-16BE -t UTF-8"));
        assert!(message(&encode(text, 4, false)).contains("is UTF-32LE text;"));
        let mut utf32 = vec![0, 0, 0xFE, 0xFF];
        utf32.extend(encode(text, 4, true));
        assert!(message(&utf32).contains("is UTF-32BE text (with a byte-order mark);"));
        // Whitespace first is still told apart; plain UTF-8 errors stay what they were.
        assert!(message(&encode(&format!("\n {text}"), 2, false)).contains("is UTF-16LE text;"));
        std::fs::write(&path, "[{\"image\": 1}]").unwrap();
        let err = read::<Vec<TestEntry>>(&path, "a VLGuard test.json").unwrap_err();
        assert!(matches!(err, ReadError::Shape { .. }), "{err}");
    }
}
