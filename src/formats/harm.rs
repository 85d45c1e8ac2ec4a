//! The harm judge's files (`judge --task harm`): its verdicts (`{stem}.json`, a
//! [`HarmVerdicts`]: image -> `safe` / `unsafe`, `null` where no verdict exists yet) and
//! its summary (`{stem}.summary.json`, a [`HarmSummary`]), read by the leaderboard and
//! `browse`. Its journal's lines are the helpfulness judge's [`super::Verdict`].

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// A judge's verdict on one answer to an unsafe question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HarmVerdict {
    /// The answer refuses (or gives nothing that serves the harmful request).
    Safe,
    /// The answer complies: the attack succeeded.
    Unsafe,
}

impl HarmVerdict {
    pub fn name(self) -> &'static str {
        match self {
            HarmVerdict::Safe => "safe",
            HarmVerdict::Unsafe => "unsafe",
        }
    }
}

/// `{stem}.json`: every judged answer's verdict by image, in the subset's file order;
/// `null` for an answer that has no verdict (an error, asked again on a rerun).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HarmVerdicts(pub IndexMap<String, Option<HarmVerdict>>);

impl HarmVerdicts {
    /// The format's name in read errors.
    pub const WHAT: &'static str = "a harm verdicts file {image: \"safe\" | \"unsafe\" | null}";
}

/// How the judge's verdicts and the string match agree on the same answers (those with a
/// verdict). An attack by string match: no refusal phrase (`score::check_success_attack`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Agreement {
    /// Attack by both: no refusal phrase, and the judge says `unsafe`.
    pub both: usize,
    /// No refusal phrase, but the judge says `safe`.
    pub string_only: usize,
    /// A refusal phrase, but the judge says `unsafe`.
    pub judge_only: usize,
    /// A refusal phrase, and the judge says `safe`.
    pub neither: usize,
    /// Cohen's kappa of the two; `null` when it is undefined (both raters put every answer
    /// in the same class, so chance agreement is 1).
    pub kappa: Option<f64>,
}

/// `{stem}.summary.json` of `judge --task harm`. A missing field reads as its default
/// (hand-made or older summaries); only `asr` is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HarmSummary {
    /// Always `"harm"`: tells this summary from a helpfulness one.
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub engine: String,
    /// `unsafes` or `safe_unsafes`.
    #[serde(default)]
    pub subset: String,
    #[serde(default)]
    pub judge_model: String,
    #[serde(default)]
    pub base_url: String,
    /// `rubric` (the project's or `--prompt-file`'s) or `guard` (Llama Guard layout).
    #[serde(default)]
    pub layout: String,
    /// The image was sent with each request (not `--no-image`).
    #[serde(default)]
    pub with_image: bool,
    /// sha256 of the rubric template; empty for the guard layout.
    #[serde(default)]
    pub prompt_sha256: String,
    /// Answers asked about: the subset's samples with a text answer.
    #[serde(default)]
    pub n: usize,
    /// Answers with a verdict: `safe + unsafe`.
    #[serde(default)]
    pub judged: usize,
    /// Answers with no verdict (asked again on a rerun): `n - judged`.
    #[serde(default)]
    pub errors: usize,
    #[serde(default)]
    pub safe: usize,
    #[serde(default)]
    pub r#unsafe: usize,
    /// Percent of judged answers the judge calls `unsafe`, rounded as `score` rounds (a
    /// run with no verdict at all writes no summary).
    pub asr: f64,
    /// 95 % Wilson interval of `asr`, percent, two decimals.
    #[serde(default)]
    pub ci95: Option<[f64; 2]>,
    /// The string-match ASR over the same judged answers, percent.
    #[serde(default)]
    pub string_match_asr: Option<f64>,
    #[serde(default)]
    pub agreement: Agreement,
    /// Subset samples with no text answer in the predictions file (not asked about).
    #[serde(default)]
    pub unanswered: usize,
    /// Every answer asked about has a verdict.
    #[serde(default)]
    pub complete: bool,
    /// Tokens, and the cost with `--price-in` / `--price-out`.
    #[serde(flatten)]
    pub usage: super::UsageSummary,
    #[serde(default)]
    pub max_tokens: u32,
    #[serde(default)]
    pub predictions: String,
    #[serde(default)]
    pub keywords_sha256: String,
    /// The run that wrote this: `resumed`, `asked`, `finished_at`.
    #[serde(flatten)]
    pub run: super::JudgeRun,
}

impl HarmSummary {
    /// The format's name in read errors.
    pub const WHAT: &'static str = "a harm judge summary";
    /// The value of `task`.
    pub const TASK: &'static str = "harm";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_keep_their_order_and_nulls() {
        let text = r#"{"b.png":"unsafe","a.png":null,"c.png":"safe"}"#;
        let v: HarmVerdicts = serde_json::from_str(text).unwrap();
        assert_eq!(v.0.get("b.png"), Some(&Some(HarmVerdict::Unsafe)));
        assert_eq!(v.0.get("a.png"), Some(&None));
        assert_eq!(serde_json::to_string(&v).unwrap(), text);
        assert!(serde_json::from_str::<HarmVerdicts>(r#"{"a.png":"maybe"}"#).is_err());
    }

    #[test]
    fn a_minimal_summary_reads() {
        let s: HarmSummary = serde_json::from_str(r#"{"asr": 12.5}"#).unwrap();
        assert_eq!(s.asr, 12.5);
        assert_eq!(s.agreement.kappa, None);
        assert!(serde_json::from_str::<HarmSummary>(r#"{"judged": 1}"#).is_err());
    }

    /// The keys in the order the summary has always written them (the run's three last,
    /// as when they were the struct's own fields).
    #[test]
    fn summary_keys_keep_their_order() {
        let value = serde_json::to_value(HarmSummary::default()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let expected = "task engine subset judge_model base_url layout with_image \
            prompt_sha256 n judged errors safe unsafe asr ci95 string_match_asr agreement \
            unanswered complete prompt_tokens completion_tokens total_tokens max_tokens \
            predictions keywords_sha256 resumed asked finished_at";
        assert_eq!(keys, expected.split_whitespace().collect::<Vec<_>>());
    }
}
