//! The judge's files: the GPT-4V reference answers it reads (`gpt4_safe_safes.json`, a
//! list of [`ReferenceItem`]), the reference-format output it writes (a list of
//! [`JudgedItem`]), its journal's lines ([`Verdict`]) and its summary ([`JudgeSummary`],
//! read by the leaderboard).

use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// One item of `gpt4_safe_safes.json`: the three fields the judge reads, and every field
/// of the item in file order (the judge's output repeats them as `gpt4_evaluator.py` does).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceItem {
    pub image: String,
    pub instruction: String,
    /// The GPT-4V answer the model's answer is compared with.
    pub response: String,
    fields: Map<String, Value>,
}

impl ReferenceItem {
    /// The format's name in read errors.
    pub const WHAT: &'static str =
        "a list of reference items with string image, instruction and response";
}

impl<'de> Deserialize<'de> for ReferenceItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = Map::deserialize(deserializer)?;
        let text = |key: &str| {
            fields
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| D::Error::custom(format!("an item has no string field {key:?}")))
        };
        Ok(ReferenceItem {
            image: text("image")?,
            instruction: text("instruction")?,
            response: text("response")?,
            fields,
        })
    }
}

/// A reference item as the judge's output file shows it: its fields, then `output_1`,
/// `output_2` and `choice` set as `gpt4_evaluator.py` sets them (a field the item already
/// has keeps its place and takes the new value). `choice` is `null` until a verdict exists.
#[derive(Debug, Clone, Copy)]
pub struct JudgedItem<'a> {
    pub item: &'a ReferenceItem,
    pub output_1: &'a str,
    pub output_2: &'a str,
    pub choice: Option<&'a str>,
}

impl Serialize for JudgedItem<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let added: [(&str, Option<&str>); 3] = [
            ("output_1", Some(self.output_1)),
            ("output_2", Some(self.output_2)),
            ("choice", self.choice),
        ];
        let fields = &self.item.fields;
        let new = added.iter().filter(|(k, _)| !fields.contains_key(*k));
        let mut map = serializer.serialize_map(Some(fields.len() + new.clone().count()))?;
        for (key, value) in fields {
            match added.iter().find(|(k, _)| k == key) {
                Some((_, replaced)) => map.serialize_entry(key, replaced)?,
                None => map.serialize_entry(key, value)?,
            }
        }
        for (key, value) in new {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Which seat the model under test sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// The reference's order: the model's answer is `output_1`, seat `m`.
    Original,
    /// The model's answer is `output_2`, seat `M`.
    Swapped,
}

impl std::fmt::Display for Order {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Order::Original => "original",
            Order::Swapped => "swapped",
        })
    }
}

impl Order {
    /// The reply that means the model under test won.
    pub fn winning_reply(self) -> &'static str {
        match self {
            Order::Original => "m",
            Order::Swapped => "M",
        }
    }

    /// The reply that means the reference answer won.
    pub fn losing_reply(self) -> &'static str {
        match self {
            Order::Original => "M",
            Order::Swapped => "m",
        }
    }
}

/// What a verdict means for the model under test (helpfulness: win to error; harm: safe,
/// unsafe or error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Win,
    Loss,
    /// The API refused with `content_policy_violation`; the reference counts it as not won.
    ContentPolicy,
    /// A reply that is neither `m` nor `M` (kept verbatim in `choice`); not won.
    Other,
    /// No verdict (retries exhausted, client error); asked again on a rerun.
    Error,
    /// `judge --task harm`: the answer refuses.
    Safe,
    /// `judge --task harm`: the answer complies with the harmful request.
    Unsafe,
}

/// One line of the judge journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub image: String,
    pub order: Order,
    pub judge_model: String,
    pub request_key: String,
    pub outcome: Outcome,
    /// The reply verbatim (`"content_policy_violation"` for a refusal, as the reference
    /// stores it); `null` for errors and null replies.
    pub choice: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub attempts: u32,
    /// Why there is no verdict, or the API's content-policy message.
    pub error: Option<String>,
    pub at: String,
}

/// `judge/{engine}.summary.json`. Only `win_rate` is required of a summary a reader
/// finds; a missing field reads as its default (hand-made or older summaries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeSummary {
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub judge_model: String,
    #[serde(default)]
    pub base_url: String,
    /// The reference's seat order.
    #[serde(flatten)]
    pub original: TallySummary,
    /// Every request has a verdict (no errors left to ask again).
    #[serde(default)]
    pub complete: bool,
    /// Tokens, and the cost with `--price-in` / `--price-out`.
    #[serde(flatten)]
    pub usage: UsageSummary,
    /// With `--swap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapSummary>,
    #[serde(default)]
    pub max_tokens: u32,
    #[serde(default)]
    pub predictions: String,
    #[serde(default)]
    pub reference: String,
    #[serde(default)]
    pub prompt_sha256: String,
    /// The run that wrote this: `resumed`, `asked`, `finished_at`.
    #[serde(flatten)]
    pub run: JudgeRun,
}

/// The run that wrote a judge summary, as both judges' summaries end with it (flattened
/// into the summary object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeRun {
    /// Verdicts taken from the journal.
    #[serde(default)]
    pub resumed: usize,
    /// Requests sent.
    #[serde(default)]
    pub asked: usize,
    #[serde(default)]
    pub finished_at: String,
}

impl JudgeSummary {
    /// The format's name in read errors.
    pub const WHAT: &'static str = "a judge summary";
}

/// The summary as its file's text.
impl std::fmt::Display for JudgeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = crate::util::to_python_json(self, 4).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}

/// Counts for one seat order: `wins + losses + content_policy + other_replies + errors = n`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TallySummary {
    /// wins / n, a fraction.
    pub win_rate: f64,
    #[serde(default)]
    pub wins: usize,
    #[serde(default)]
    pub n: usize,
    #[serde(default)]
    pub losses: usize,
    #[serde(default)]
    pub content_policy: usize,
    #[serde(default)]
    pub other_replies: usize,
    #[serde(default)]
    pub errors: usize,
}

/// The tokens a judge run used and what they cost, as both judges' summaries write them
/// (flattened into the summary object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSummary {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    /// With `--price-in` / `--price-out`.
    #[serde(flatten)]
    pub cost: Option<CostSummary>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CostSummary {
    pub price_in_per_million: f64,
    pub price_out_per_million: f64,
    pub cost: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SwapSummary {
    pub win_rate_original: f64,
    pub win_rate_swapped: f64,
    /// (wins original + wins swapped) / (2 n).
    pub debiased_win_rate: f64,
    pub swapped: TallySummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judged_items_keep_the_item_order_and_replace_in_place() {
        let item: ReferenceItem = serde_json::from_str(
            r#"{"id": "T", "choice": "old", "image": "a.png", "instruction": "q", "response": "r"}"#,
        )
        .unwrap();
        let judged = JudgedItem {
            item: &item,
            output_1: "o1",
            output_2: "r",
            choice: None,
        };
        // Python: item = {...}; item['output_1'] = 'o1'; item['output_2'] = 'r';
        // item['choice'] = None; json.dumps(item)
        assert_eq!(
            serde_json::to_string(&judged).unwrap(),
            r#"{"id":"T","choice":null,"image":"a.png","instruction":"q","response":"r","output_1":"o1","output_2":"r"}"#
        );
        let err = serde_json::from_str::<ReferenceItem>(r#"{"image": "a.png", "instruction": 1}"#)
            .unwrap_err();
        assert!(err.to_string().contains("\"instruction\""), "{err}");
    }

    #[test]
    fn a_minimal_summary_reads_and_a_full_one_round_trips() {
        let s: JudgeSummary =
            serde_json::from_str(r#"{"win_rate": 0.25, "swap": {"debiased_win_rate": 0.4}}"#)
                .unwrap();
        assert_eq!(s.original.win_rate, 0.25);
        assert_eq!(s.usage.cost, None);
        assert_eq!(s.swap.map(|w| w.debiased_win_rate), Some(0.4));
        assert!(serde_json::from_str::<JudgeSummary>(r#"{"wins": 1}"#).is_err());
        let mut full = s.clone();
        full.usage.cost = Some(CostSummary {
            price_in_per_million: 2.5,
            price_out_per_million: 10.0,
            cost: 0.001,
        });
        let back: JudgeSummary = serde_json::from_str(&full.to_string()).unwrap();
        assert_eq!(back, full);
    }

    /// The keys in the order the summary has always written them (the run's three last,
    /// as when they were the struct's own fields).
    #[test]
    fn summary_keys_keep_their_order() {
        let text = JudgeSummary::default().to_string();
        let keys: Vec<String> =
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        let expected = "engine judge_model base_url win_rate wins n losses content_policy \
            other_replies errors complete prompt_tokens completion_tokens total_tokens \
            max_tokens predictions reference prompt_sha256 resumed asked finished_at";
        assert_eq!(
            keys.join(" "),
            expected.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}
