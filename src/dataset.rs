//! VLGuard `test.json` -> the samples of one subset, exactly as VLGuard_eval.py picks them.
//!
//! Contract (REFERENCE.md "Test set and subsets"): file order is kept; `unsafes` are the
//! entries with `safe == false` and ask `instr-resp[0].instruction`; `safe_unsafes` and
//! `safe_safes` are the `safe == true` entries and ask the first `instr-resp` item that
//! holds `unsafe_instruction` / `safe_instruction`. Results are keyed by the `image`
//! string, so a duplicate image inside one subset is an error. The dataset hash (sha256
//! of the test.json bytes) is part of a run's fingerprint.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::formats::TestEntry;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[value(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum Subset {
    Unsafes,
    SafeUnsafes,
    SafeSafes,
}

impl Subset {
    pub const ALL: [Subset; 3] = [Subset::Unsafes, Subset::SafeUnsafes, Subset::SafeSafes];

    pub fn name(self) -> &'static str {
        match self {
            Subset::Unsafes => "unsafes",
            Subset::SafeUnsafes => "safe_unsafes",
            Subset::SafeSafes => "safe_safes",
        }
    }

    /// The reference prints an ASR line only for the subsets that ask unsafe questions.
    pub fn reports_asr(self) -> bool {
        !matches!(self, Subset::SafeSafes)
    }

    /// Whether this subset takes `entry`: `safe == false` for unsafes, `safe == true` for
    /// both safe subsets (VLGuard_eval.py's `load_data`).
    pub fn takes(self, entry: &TestEntry) -> bool {
        entry.safe != (self == Subset::Unsafes)
    }

    /// The question this subset asks of `entry`: for unsafes the first item's
    /// `instruction` (`sample['instr-resp'][0]['instruction']`), for the safe subsets the
    /// first item holding the subset's key, as the reference's loop-and-break finds it.
    pub fn question(self, entry: &TestEntry) -> Option<&str> {
        match self {
            Subset::Unsafes => entry.instr_resp.first()?.instruction.as_deref(),
            Subset::SafeUnsafes => entry
                .instr_resp
                .iter()
                .find_map(|item| item.unsafe_instruction.as_deref()),
            Subset::SafeSafes => entry
                .instr_resp
                .iter()
                .find_map(|item| item.safe_instruction.as_deref()),
        }
    }

    /// The `instr-resp` key [`Subset::question`] reads, for messages.
    pub fn question_field(self) -> &'static str {
        match self {
            Subset::Unsafes => "instruction",
            Subset::SafeUnsafes => "unsafe_instruction",
            Subset::SafeSafes => "safe_instruction",
        }
    }
}

impl std::str::FromStr for Subset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Subset::ALL
            .into_iter()
            .find(|subset| subset.name() == s)
            .ok_or_else(|| format!("unknown subset `{s}` (unsafes, safe_unsafes or safe_safes)"))
    }
}

impl std::fmt::Display for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One question about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The `image` string of test.json: the results key and the path under the image root.
    pub image: String,
    pub question: String,
    pub id: String,
    pub harmful_category: Option<String>,
    pub harmful_subcategory: Option<String>,
}

impl Sample {
    /// A sample with only its image key and question (no id or categories).
    pub fn new(image: &str, question: &str) -> Sample {
        Sample {
            image: image.into(),
            question: question.into(),
            id: String::new(),
            harmful_category: None,
            harmful_subcategory: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the dataset file {path}: {source} (fetch it with `vlguard-ort fetch dataset`, or pass --meta)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {problem}", .path.display())]
    Encoding { path: PathBuf, problem: String },
    #[error("{path} is not a VLGuard test.json: {source}")]
    Schema {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: entry {index} (id {id}) has no `{field}` question for subset {subset}")]
    MissingQuestion {
        path: PathBuf,
        index: usize,
        id: String,
        field: &'static str,
        subset: Subset,
    },
    #[error("{path}: image {image} appears twice in subset {subset}; results are keyed by image")]
    DuplicateImage {
        path: PathBuf,
        image: String,
        subset: Subset,
    },
}

/// The parsed test set with the hash of its bytes.
#[derive(Debug)]
pub struct Dataset {
    pub path: PathBuf,
    pub sha256: String,
    entries: Vec<TestEntry>,
}

impl Dataset {
    pub fn load(path: &Path) -> Result<Dataset, Error> {
        let bytes = vlguard_export::files::read_regular(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let entries: Vec<TestEntry> = serde_json::from_slice(&bytes).map_err(|source| {
            let path = path.to_path_buf();
            match crate::formats::encoding_problem(&path, &bytes) {
                Some(problem) => Error::Encoding { path, problem },
                None => Error::Schema { path, source },
            }
        })?;
        Ok(Dataset {
            path: path.to_path_buf(),
            sha256: crate::util::sha256_hex(&bytes),
            entries,
        })
    }

    /// The samples of `subset` in file order.
    pub fn samples(&self, subset: Subset) -> Result<Vec<Sample>, Error> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            if !subset.takes(entry) {
                continue;
            }
            let question = subset
                .question(entry)
                .ok_or_else(|| Error::MissingQuestion {
                    path: self.path.clone(),
                    index,
                    id: entry.id.clone(),
                    field: subset.question_field(),
                    subset,
                })?;
            if !seen.insert(entry.image.as_str()) {
                return Err(Error::DuplicateImage {
                    path: self.path.clone(),
                    image: entry.image.clone(),
                    subset,
                });
            }
            out.push(Sample {
                image: entry.image.clone(),
                question: question.to_string(),
                id: entry.id.clone(),
                harmful_category: entry.harmful_category.clone(),
                harmful_subcategory: entry.harmful_subcategory.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{fetched_test_json, repo_file};

    #[test]
    fn questions_follow_the_reference_rule() {
        let safe: TestEntry = serde_json::from_str(
            r#"{"image": "a.png", "safe": true, "instr-resp": [
                {"safe_instruction": "s", "response": "r1"},
                {"unsafe_instruction": "u", "response": "r2"}]}"#,
        )
        .unwrap();
        assert!(!Subset::Unsafes.takes(&safe) && Subset::SafeSafes.takes(&safe));
        assert_eq!(Subset::SafeSafes.question(&safe), Some("s"));
        assert_eq!(Subset::SafeUnsafes.question(&safe), Some("u"));
        assert_eq!(Subset::Unsafes.question(&safe), None);
        let unsafe_: TestEntry = serde_json::from_str(
            r#"{"id": "x", "image": "b.png", "safe": false, "harmful_category": "privacy",
                "instr-resp": [{"instruction": "i", "response": "r"}]}"#,
        )
        .unwrap();
        assert_eq!(Subset::Unsafes.question(&unsafe_), Some("i"));
        assert_eq!(unsafe_.harmful_category.as_deref(), Some("privacy"));
    }

    #[test]
    fn a_test_json_with_a_bom_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.json");
        std::fs::write(&path, b"\xEF\xBB\xBF[]").unwrap();
        let err = Dataset::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: starts with a UTF-8 byte-order mark",
                path.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn subset_sizes_match_the_reference() {
        // REFERENCE.md: 442 unsafe entries, 558 safe ones.
        let Some(test_json) = fetched_test_json() else {
            return;
        };
        let data = Dataset::load(&test_json).unwrap();
        assert_eq!(data.samples(Subset::Unsafes).unwrap().len(), 442);
        assert_eq!(data.samples(Subset::SafeUnsafes).unwrap().len(), 558);
        assert_eq!(data.samples(Subset::SafeSafes).unwrap().len(), 558);
    }

    #[test]
    fn questions_match_the_golden_generations() {
        // golden/dev/reference/generations.jsonl was written by the reference loop: its
        // (subset, image, question) triples, in order, are what our selection must give.
        let data = Dataset::load(&repo_file("data/mini/test.json")).unwrap();
        let text = std::fs::read_to_string(repo_file(
            "tests/data/golden-dev/reference/generations.jsonl",
        ))
        .unwrap();
        let mut expected: Vec<(String, String, String)> = Vec::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            expected.push((
                v["subset"].as_str().unwrap().into(),
                v["image"].as_str().unwrap().into(),
                v["question"].as_str().unwrap().into(),
            ));
        }
        let mut got = Vec::new();
        for subset in Subset::ALL {
            for s in data.samples(subset).unwrap() {
                got.push((subset.name().to_string(), s.image, s.question));
            }
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn schema_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.json");
        std::fs::write(&path, r#"[{"image": "a.png"}]"#).unwrap();
        let err = Dataset::load(&path).unwrap_err().to_string();
        assert!(err.contains("test.json") && err.contains("safe"), "{err}");
    }

    #[test]
    fn a_missing_question_is_an_error_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.json");
        std::fs::write(
            &path,
            r#"[{"id": "x1", "image": "a.png", "safe": true, "instr-resp": [{"safe_instruction": "q"}]}]"#,
        )
        .unwrap();
        let data = Dataset::load(&path).unwrap();
        assert_eq!(data.samples(Subset::SafeSafes).unwrap()[0].question, "q");
        let err = data.samples(Subset::SafeUnsafes).unwrap_err().to_string();
        assert!(
            err.contains("x1") && err.contains("unsafe_instruction"),
            "{err}"
        );
    }
}
