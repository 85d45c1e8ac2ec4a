//! One entry of VLGuard's `test.json` (and `train.json`), as the published files spell it:
//! `id`, `image`, `safe`, `instr-resp` (a list of question/answer items), and for unsafe
//! entries `harmful_category` / `harmful_subcategory`. The fields only: which entries a
//! subset takes and which question it asks is `dataset::Subset`'s rule.

use serde::Deserialize;

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
