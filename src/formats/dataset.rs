//! One entry of VLGuard's `test.json` (and `train.json`), as the published files spell it:
//! `id`, `image`, `safe`, `instr-resp` (a list of question/answer items), and for unsafe
//! entries `harmful_category` / `harmful_subcategory`. Which question a subset asks is
//! REFERENCE.md's rule ("Test set and subsets"), kept here beside the fields it reads.

use serde::Deserialize;

use crate::dataset::Subset;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TestEntry {
    /// e.g. `Ads_306373`; empty when a hand-made file has none.
    #[serde(default)]
    pub id: String,
    /// The path under the image root, and the key of every results file.
    pub image: String,
    pub safe: bool,
    #[serde(rename = "instr-resp")]
    pub instr_resp: Vec<InstrResp>,
    #[serde(default)]
    pub harmful_category: Option<String>,
    #[serde(default)]
    pub harmful_subcategory: Option<String>,
}

/// One `instr-resp` item: an unsafe entry has `instruction`; a safe one has one item with
/// `safe_instruction` and one with `unsafe_instruction`; each has its `response`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct InstrResp {
    #[serde(default)]
    pub instruction: Option<String>,
    #[serde(default)]
    pub safe_instruction: Option<String>,
    #[serde(default)]
    pub unsafe_instruction: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
}

impl TestEntry {
    /// Whether `subset` takes this entry: `safe == false` for unsafes, `safe == true` for
    /// both safe subsets (VLGuard_eval.py's `load_data`).
    pub fn in_subset(&self, subset: Subset) -> bool {
        self.safe != (subset == Subset::Unsafes)
    }

    /// The question `subset` asks of this entry: for unsafes the first item's
    /// `instruction` (`sample['instr-resp'][0]['instruction']`), for the safe subsets the
    /// first item holding the subset's key, as the reference's loop-and-break finds it.
    pub fn question(&self, subset: Subset) -> Option<&str> {
        match subset {
            Subset::Unsafes => self.instr_resp.first()?.instruction.as_deref(),
            Subset::SafeUnsafes => self
                .instr_resp
                .iter()
                .find_map(|item| item.unsafe_instruction.as_deref()),
            Subset::SafeSafes => self
                .instr_resp
                .iter()
                .find_map(|item| item.safe_instruction.as_deref()),
        }
    }

    /// The `instr-resp` key [`TestEntry::question`] reads for `subset`, for messages.
    pub fn question_field(subset: Subset) -> &'static str {
        match subset {
            Subset::Unsafes => "instruction",
            Subset::SafeUnsafes => "unsafe_instruction",
            Subset::SafeSafes => "safe_instruction",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_follow_the_reference_rule() {
        let safe: TestEntry = serde_json::from_str(
            r#"{"image": "a.png", "safe": true, "instr-resp": [
                {"safe_instruction": "s", "response": "r1"},
                {"unsafe_instruction": "u", "response": "r2"}]}"#,
        )
        .unwrap();
        assert!(!safe.in_subset(Subset::Unsafes) && safe.in_subset(Subset::SafeSafes));
        assert_eq!(safe.question(Subset::SafeSafes), Some("s"));
        assert_eq!(safe.question(Subset::SafeUnsafes), Some("u"));
        assert_eq!(safe.question(Subset::Unsafes), None);
        let unsafe_: TestEntry = serde_json::from_str(
            r#"{"id": "x", "image": "b.png", "safe": false, "harmful_category": "privacy",
                "instr-resp": [{"instruction": "i", "response": "r"}]}"#,
        )
        .unwrap();
        assert_eq!(unsafe_.question(Subset::Unsafes), Some("i"));
        assert_eq!(unsafe_.harmful_category.as_deref(), Some("privacy"));
    }
}
