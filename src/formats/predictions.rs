//! A predictions file, `{image: answer}`: what `run` writes as `{subset}/{engine}.json`
//! and what the reference's `VLGuard_eval.py` writes, read by score, judge, the
//! leaderboard and the shard merge.
//!
//! Key order is file order, and writing keeps it. A key written twice keeps its first
//! place and its last answer (what Python's `json.load` into a dict does). An answer that
//! is not a string (a hand-edited file, a `null` for a failed sample) is kept as it was, as
//! [`Answer::Other`], so a reader can count it and a rewrite does not change it.

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ReadError;

/// One answer: text, or whatever other JSON value a file holds in its place.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Text(String),
    Other(serde_json::Value),
}

impl Answer {
    /// The answer's text; `None` for a value that is not a string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Answer::Text(text) => Some(text),
            Answer::Other(_) => None,
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Text(text) => serializer.serialize_str(text),
            Answer::Other(value) => value.serialize(serializer),
        }
    }
}

impl From<serde_json::Value> for Answer {
    fn from(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::String(text) => Answer::Text(text),
            other => Answer::Other(other),
        }
    }
}

impl<'de> Deserialize<'de> for Answer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Answer::from)
    }
}

/// `{image: answer}` in file order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Predictions(IndexMap<String, Answer>);

impl Predictions {
    /// The format's name in read errors.
    pub const WHAT: &'static str = "a predictions file {image: answer}";

    pub fn read(path: &std::path::Path) -> Result<Predictions, ReadError> {
        super::read(path, Self::WHAT)
    }

    /// Writes the file as the reference's `json.dump(results, f, indent=4)`, atomically.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        super::write_python_json(path, self)
    }

    /// Adds (or replaces in place) the answer for `image`; returns the one it replaced.
    pub fn insert(&mut self, image: String, answer: Answer) -> Option<Answer> {
        self.0.insert(image, answer)
    }

    pub fn get(&self, image: &str) -> Option<&Answer> {
        self.0.get(image)
    }

    /// Removes `image`'s answer, keeping the order of the others.
    pub fn remove(&mut self, image: &str) -> Option<Answer> {
        self.0.shift_remove(image)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(image, answer)` in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Answer)> {
        self.0
            .iter()
            .map(|(image, answer)| (image.as_str(), answer))
    }

    /// The images, in file order.
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl FromIterator<(String, Answer)> for Predictions {
    fn from_iter<I: IntoIterator<Item = (String, Answer)>>(iter: I) -> Self {
        Predictions(iter.into_iter().collect())
    }
}

impl IntoIterator for Predictions {
    type Item = (String, Answer);
    type IntoIter = indexmap::map::IntoIter<String, Answer>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_duplicates_and_non_string_answers_survive_a_round_trip() {
        let text = r#"{"z.png": "1", "a.png": null, "z.png": "2", "m.png": 3}"#;
        let p: Predictions = serde_json::from_str(text).unwrap();
        let images: Vec<&str> = p.images().collect();
        assert_eq!(images, ["z.png", "a.png", "m.png"]);
        assert_eq!(p.get("z.png").and_then(Answer::text), Some("2"));
        assert_eq!(
            p.get("a.png"),
            Some(&Answer::Other(serde_json::Value::Null))
        );
        // Python: json.dumps({"z.png": "2", "a.png": None, "m.png": 3}, indent=4)
        assert_eq!(
            crate::util::to_python_json(&p, 4).unwrap(),
            "{\n    \"z.png\": \"2\",\n    \"a.png\": null,\n    \"m.png\": 3\n}"
        );
    }
}
