//! `vlguard-ort convert`: VLGuard's `train.json` in LLaVA's fine-tuning format, byte for
//! byte as VLGuard's `convert_to_llava_format.py` writes it (REFERENCE.md, "Fine-tuning
//! data"; `scripts/convert_reference.py` is that script with paths as arguments).
//!
//! In: a JSON list of items. Out: the same list, where each item got `conversations` (at
//! the end of its fields, or in the place of one it already had) and lost `instr-resp`,
//! every other field kept in its order, written as `json.dump(items, f, indent=2)`
//! writes it ([`crate::util::to_python_json`]). The turns are the script's: draws from
//! Python's Mersenne Twister seeded by `random.seed(0)` ([`pyrandom`]), one
//! `random.shuffle` per item with two or more pairs, then human/gpt turns from the first
//! two pairs after the shuffle (the human text is the pair's FIRST key, whatever its
//! name, `<image>` before the first only); a single pair gives one human/gpt turn from its
//! `instruction`.
//!
//! Guarantees: every input on which the script raises is refused with an error naming the
//! file and, for an item, its index (from 0) and id, and then nothing is written; an
//! existing output is replaced only by a complete new one (temporary file, then rename).
//! Inputs the script takes but whose output this cannot write unchanged are refused too,
//! never written differently: `NaN` / `Infinity` literals, lone surrogate escapes, numbers
//! out of the double range (1e400), nesting deeper than 128 (serde_json's limit; Python's
//! is about 1000), integers beyond 64 bits, a list or an object as the value written
//! after `<image>` (Python writes its `repr`), and a top level that is not a list (Python
//! would iterate a `{}` or `""` and write it back unchanged).

mod pyjson;
pub mod pyrandom;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::{Map, Value};

use crate::formats::{ReadError, Speaker, Turn};
use pyrandom::PyRandom;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// VLGuard's training set (where `fetch dataset --with-train` puts it).
    #[arg(long, default_value = "data/VLGuard/train.json")]
    pub meta: PathBuf,
    /// The LLaVA fine-tuning file to write (replaced only by a complete new one).
    #[arg(long, default_value = "data/VLGuard/train_llava_format.json")]
    pub out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(
        "{}: line {line} column {column}: the integer {text} is wider than 64 bits; Python \
         reads it exactly but vlguard-ort cannot write it back unchanged, so the file is \
         refused rather than converted with the number rounded",
        .path.display()
    )]
    WideInteger {
        path: PathBuf,
        line: usize,
        column: usize,
        text: String,
    },
    #[error("{}: the top level is {found}, not a list of items", .path.display())]
    NotAList { path: PathBuf, found: &'static str },
    #[error("{}: item [{index}] ({id}): {problem}", .path.display())]
    Item {
        path: PathBuf,
        index: usize,
        /// `id "Ads_306373"`, or `no id`.
        id: String,
        problem: ItemProblem,
    },
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one item cannot be converted: each is an input on which the reference script
/// raises (or, for [`ItemProblem::ReprInstruction`], writes what this cannot).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ItemProblem {
    #[error("is {0}, not an object")]
    NotAnObject(&'static str),
    #[error("has no `instr-resp`")]
    NoInstrResp,
    #[error("`instr-resp` is {0}, not a list of instruction/response pairs")]
    InstrRespNotAList(&'static str),
    #[error("`instr-resp` is empty")]
    EmptyInstrResp,
    #[error("`instr-resp[{index}]` is {found}, not an object")]
    PairNotAnObject { index: usize, found: &'static str },
    #[error("`instr-resp[{index}]` has no keys (its first key names the instruction)")]
    PairWithoutKeys { index: usize },
    #[error(
        "`instr-resp[{index}]` has no `instruction` (a single pair's question is read from it)"
    )]
    NoInstruction { index: usize },
    #[error("`instr-resp[{index}]` has no `response`")]
    NoResponse { index: usize },
    #[error(
        "`instr-resp[{index}]`.`{key}` is {found}: the reference writes Python's repr() of it \
         after `<image>`, which vlguard-ort does not reproduce; make it a string"
    )]
    ReprInstruction {
        index: usize,
        key: String,
        found: &'static str,
    },
}

/// What was converted, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub items: usize,
    pub one_pair: usize,
    pub two_or_more_pairs: usize,
    pub safe: usize,
    pub unsafe_: usize,
    /// Items whose `safe` is missing or not `true` / `false`.
    pub safe_unknown: usize,
}

impl Summary {
    fn count(&mut self, pairs: usize, safe: Option<&Value>) {
        self.items += 1;
        if pairs > 1 {
            self.two_or_more_pairs += 1;
        } else {
            self.one_pair += 1;
        }
        match safe {
            Some(Value::Bool(true)) => self.safe += 1,
            Some(Value::Bool(false)) => self.unsafe_ += 1,
            _ => self.safe_unknown += 1,
        }
    }

    /// `wrote P (N bytes): ...`, the line `convert` prints.
    pub fn line(&self, out: &Path, bytes: usize) -> String {
        let mut line = format!(
            "wrote {} ({bytes} bytes): {} items ({} with one instruction/response pair, {} \
             with two or more), {} safe, {} unsafe",
            out.display(),
            self.items,
            self.one_pair,
            self.two_or_more_pairs,
            self.safe,
            self.unsafe_
        );
        if self.safe_unknown > 0 {
            line.push_str(&format!(
                ", {} without a true/false `safe`",
                self.safe_unknown
            ));
        }
        line
    }
}

pub fn command(args: &ConvertArgs) -> Result<ExitCode, Error> {
    let bytes =
        vlguard_export::files::read_regular(&args.meta).map_err(|source| ReadError::Io {
            path: args.meta.clone(),
            source,
        })?;
    let (text, summary) = convert(&args.meta, &bytes)?;
    crate::util::write_atomic(&args.out, text.as_bytes()).map_err(|source| Error::Write {
        path: args.out.clone(),
        source,
    })?;
    println!("{}", summary.line(&args.out, text.len()));
    Ok(ExitCode::SUCCESS)
}

/// The reference script's output for the `train.json` text `bytes` (read from `path`,
/// which errors name).
pub fn convert(path: &Path, bytes: &[u8]) -> Result<(String, Summary), Error> {
    let (python_ints, wide) = pyjson::python_integers(bytes);
    let value: Value = crate::formats::parse(path, &python_ints, "JSON")?;
    if let Some(wide) = wide {
        return Err(Error::WideInteger {
            path: path.to_owned(),
            line: wide.line,
            column: wide.column,
            text: wide.text,
        });
    }
    let Value::Array(mut items) = value else {
        return Err(Error::NotAList {
            path: path.to_owned(),
            found: kind(&value),
        });
    };
    let mut random = PyRandom::seeded(0);
    let mut summary = Summary::default();
    for (index, item) in items.iter_mut().enumerate() {
        let id = match item.get("id") {
            Some(Value::String(id)) => format!("id {id:?}"),
            Some(other) => format!("id {other}"),
            None => "no id".into(),
        };
        convert_item(item, &mut random, &mut summary).map_err(|problem| Error::Item {
            path: path.to_owned(),
            index,
            id,
            problem,
        })?;
    }
    let text = crate::util::to_python_json(&items, 2).expect("a Value always serializes");
    Ok((text, summary))
}

/// One iteration of the script's loop over items.
fn convert_item(
    item: &mut Value,
    random: &mut PyRandom,
    summary: &mut Summary,
) -> Result<(), ItemProblem> {
    let Value::Object(fields) = item else {
        return Err(ItemProblem::NotAnObject(kind(item)));
    };
    let pairs = match fields.get("instr-resp") {
        Some(Value::Array(pairs)) => pairs,
        Some(other) => return Err(ItemProblem::InstrRespNotAList(kind(other))),
        None => return Err(ItemProblem::NoInstrResp),
    };
    let turns = if pairs.len() > 1 {
        // The shuffle's permutation does not depend on the pairs: shuffling their indices
        // draws the same numbers and keeps the original index for error messages.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        random.shuffle(&mut order);
        let mut turns = pair_turns(pairs, order[0], None, true)?;
        turns.extend(pair_turns(pairs, order[1], None, false)?);
        turns
    } else if pairs.is_empty() {
        return Err(ItemProblem::EmptyInstrResp);
    } else {
        pair_turns(pairs, 0, Some("instruction"), true)?
    };
    summary.count(pairs.len(), fields.get("safe"));
    let turns = serde_json::to_value(turns).expect("turns always serialize");
    // `item['conversations'] = [...]`: a key already there keeps its place.
    fields.insert("conversations".into(), turns);
    fields.shift_remove("instr-resp");
    Ok(())
}

/// The script's `format_conversation(key, pairs[index], prepend_image)`: `key` is the
/// pair's first key when `None`.
fn pair_turns(
    pairs: &[Value],
    index: usize,
    key: Option<&str>,
    prepend_image: bool,
) -> Result<Vec<Turn>, ItemProblem> {
    let pair: &Map<String, Value> = match &pairs[index] {
        Value::Object(pair) => pair,
        other => {
            return Err(ItemProblem::PairNotAnObject {
                index,
                found: kind(other),
            })
        }
    };
    let (key, instruction) = match key {
        None => pair
            .iter()
            .next()
            .ok_or(ItemProblem::PairWithoutKeys { index })?,
        Some(key) => pair
            .get_key_value(key)
            .ok_or(ItemProblem::NoInstruction { index })?,
    };
    let response = pair
        .get("response")
        .ok_or(ItemProblem::NoResponse { index })?;
    let human = if prepend_image {
        // f'<image>{value}': Python's str() of the value.
        let text = pyjson::python_str(instruction).ok_or_else(|| ItemProblem::ReprInstruction {
            index,
            key: key.clone(),
            found: kind(instruction),
        })?;
        Value::String(format!("<image>{text}"))
    } else {
        instruction.clone()
    };
    Ok(vec![
        Turn {
            from: Speaker::Human,
            value: human,
        },
        Turn {
            from: Speaker::Gpt,
            value: response.clone(),
        },
    ])
}

/// A JSON value's kind, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_pairs_and_safety_and_says_when_safe_is_missing() {
        let text = br#"[{"safe": true, "instr-resp": [{"s": "a", "response": "b"}, {"u": "c", "response": "d"}]},
            {"safe": "yes", "instr-resp": [{"instruction": "a", "response": "b"}]},
            {"instr-resp": [{"instruction": "a", "response": "b"}]}]"#;
        let (_, summary) = convert(Path::new("t.json"), text).unwrap();
        assert_eq!(
            summary.line(Path::new("o.json"), 10),
            "wrote o.json (10 bytes): 3 items (2 with one instruction/response pair, 1 with \
             two or more), 1 safe, 0 unsafe, 2 without a true/false `safe`"
        );
    }

    #[test]
    fn an_empty_list_is_written_as_python_writes_it() {
        let (text, summary) = convert(Path::new("t.json"), b" [ ] ").unwrap();
        assert_eq!((text.as_str(), summary.items), ("[]", 0));
    }
}
