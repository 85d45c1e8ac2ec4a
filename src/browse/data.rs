//! What the browse page shows, as one serde value: the page embeds it as a single JSON
//! blob and its script draws the table from it.
//!
//! Input: the validated [`Config`] (results folder, engines, subsets, test.json, keyword
//! list, GPT-4V reference file). For each subset, every sample of test.json (file order)
//! that at least one engine answered becomes a [`Row`]: the question, category,
//! subcategory and source folder, each engine's answer scored exactly as `score` scores it
//! (`check_success_attack`, with the decisive refusal phrase located by
//! `score::refusal_match`), the GPT-4V reference answer on safe_safes, the judge's verdicts
//! from `RESULTS/judge/{engine}.journal.jsonl`, on unsafes / safe_unsafes the harm judge's
//! verdict from `RESULTS/judge/{subset}/{engine}.json` (`judge --task harm`, its model from
//! the summary beside it) and whether it disagrees with the string match, and whether the
//! two engines' refusal status differs. Offsets of a highlighted phrase count UTF-16 code units, as JavaScript strings
//! do.
//!
//! A predictions key that is not a sample of its subset is an error naming the file (a
//! results file of another subset, most likely). Samples no engine answered are left out
//! and counted in `notes`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::thumbs::Thumb;
use super::{Config, Error};
use crate::dataset::{Dataset, Sample, Subset};
use crate::formats::{
    Answer, HarmSummary, HarmVerdict, HarmVerdicts, Order, Outcome, Predictions, ReferenceItem,
};
use crate::score::{check_success_attack, refusal_match, source_folder, KeywordList};

/// Version of the embedded data's shape, for anyone reading it out of a page.
pub const DATA_VERSION: u32 = 1;

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct PageData {
    pub version: u32,
    /// The engine, then the one it is compared with (`--against`).
    pub engines: Vec<String>,
    pub results: String,
    pub meta: String,
    pub images: String,
    /// The GPT-4V reference file read for safe_safes rows, if any.
    pub reference: Option<String>,
    pub keywords: KeywordList,
    /// Subsets shown, in the reference's order.
    pub subsets: Vec<Subset>,
    /// Harmful categories met in the rows, sorted.
    pub categories: Vec<String>,
    pub rows: Vec<Row>,
    /// Thumbnails by image path; an image with none is in `problems`.
    pub thumbs: BTreeMap<String, Thumb>,
    /// What the page leaves out by design (unanswered samples, absent files).
    pub notes: Vec<String>,
    /// What could not be read; the exit code is 1 when there are any.
    pub problems: Vec<String>,
}

/// One question about one image, with every engine's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub subset: Subset,
    pub image: String,
    pub id: String,
    pub question: String,
    pub category: Option<String>,
    pub subcategory: Option<String>,
    /// First folder of the image path.
    pub source: String,
    /// One per engine, in `engines` order.
    pub answers: Vec<AnswerCell>,
    /// The GPT-4V answer (safe_safes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Both engines answered in text and exactly one of the answers is a refusal.
    pub changed: bool,
    /// Some engine's answer has a harm verdict that disagrees with its string match.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disagree: bool,
}

/// How an answer was scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No refusal phrase: the attack succeeded (for an unsafe question).
    Complied,
    Refused,
    /// The results file holds something other than text (a failed sample's `null`).
    Error,
    /// This engine has no answer for the sample (another engine has).
    Missing,
}

/// One engine's answer to one row.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerCell {
    pub status: Status,
    /// The answer, or the JSON of a non-text value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<Highlight>,
    /// The judge's verdicts on this answer (safe_safes), one per seat order judged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub judge: Vec<JudgeCell>,
    /// The harm judge's verdict on this answer (unsafes, safe_unsafes), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harm: Option<HarmCell>,
}

/// A harm verdict on one answer (`judge --task harm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HarmCell {
    pub verdict: HarmVerdict,
    pub judge_model: String,
    /// The string match calls the answer an attack (complied) and the judge `safe`, or the
    /// string match a refusal and the judge `unsafe`.
    pub disagrees: bool,
}

/// The refusal phrase that decided, at `start..end` in UTF-16 code units of the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Highlight {
    pub keyword: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JudgeCell {
    pub order: Order,
    pub outcome: Outcome,
    pub judge_model: String,
}

/// Scores one answer as `score` does and locates its refusal phrase.
pub fn answer_cell(answer: Option<&Answer>, keywords: &[String]) -> AnswerCell {
    let (status, text, matched) = match answer {
        None => (Status::Missing, None, None),
        Some(Answer::Other(value)) => (Status::Error, Some(value.to_string()), None),
        Some(Answer::Text(text)) => {
            let complied = check_success_attack(text, keywords);
            let matched = refusal_match(text, keywords).map(|m| Highlight {
                start: utf16_len(&text[..m.start]),
                end: utf16_len(&text[..m.end]),
                keyword: m.keyword,
            });
            debug_assert_eq!(complied, matched.is_none());
            let status = if complied {
                Status::Complied
            } else {
                Status::Refused
            };
            (status, Some(text.clone()), matched)
        }
    };
    AnswerCell {
        status,
        text,
        matched,
        judge: Vec::new(),
        harm: None,
    }
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Where an engine's answers to a subset are: `RESULTS/{subset}/{engine}.json`, as `run`
/// writes them.
pub fn predictions_path(results: &Path, subset: Subset, engine: &str) -> PathBuf {
    crate::results::Paths::new(results, subset.name(), engine).answers
}

/// Where `judge` keeps an engine's verdicts by default: `RESULTS/judge/{engine}.journal.jsonl`.
pub fn judge_journal_path(results: &Path, engine: &str) -> PathBuf {
    results
        .join("judge")
        .join(format!("{engine}.journal.jsonl"))
}

/// The page's data without thumbnails (see `thumbs`), read from the files `config` names.
pub fn collect(config: &Config) -> Result<PageData, Error> {
    let engine = &config.engines[0];
    let files: Vec<PathBuf> = config
        .subsets
        .iter()
        .map(|&s| predictions_path(&config.results, s, engine))
        .collect();
    if let ([path], true) = (files.as_slice(), config.subset_named) {
        if !path.is_file() {
            return Err(Error::NoPredictions { path: path.clone() });
        }
    }
    if !files.iter().any(|path| path.is_file()) {
        return Err(Error::NoAnswers {
            results: config.results.clone(),
            engine: engine.clone(),
        });
    }
    let dataset = Dataset::load(&config.meta)?;
    let mut page = PageData {
        version: DATA_VERSION,
        engines: config.engines.clone(),
        results: config.results.display().to_string(),
        meta: config.meta.display().to_string(),
        images: config.images.display().to_string(),
        reference: None,
        keywords: config.keywords.clone(),
        subsets: Vec::new(),
        categories: Vec::new(),
        rows: Vec::new(),
        thumbs: BTreeMap::new(),
        notes: Vec::new(),
        problems: Vec::new(),
    };
    let judged = Judged {
        references: read_references(config, &mut page)?,
        verdicts: read_verdicts(config, &mut page)?,
        harm: read_harm_verdicts(config, &mut page),
    };
    for &subset in &config.subsets {
        let answers = read_answers(config, subset, &mut page)?;
        if answers.iter().all(Option::is_none) {
            continue;
        }
        let samples = dataset.samples(subset)?;
        check_keys(config, subset, &samples, &answers)?;
        page.subsets.push(subset);
        let before = page.rows.len();
        for sample in &samples {
            if let Some(row) = make_row(config, subset, sample, &answers, &judged) {
                page.rows.push(row);
            }
        }
        let shown = page.rows.len() - before;
        if shown < samples.len() {
            page.notes.push(format!(
                "{subset}: {} of {} samples have no answer from any engine shown and are left out",
                samples.len() - shown,
                samples.len()
            ));
        }
    }
    if page.rows.is_empty() {
        return Err(Error::EmptyAnswers {
            results: config.results.clone(),
            engine: config.engines[0].clone(),
        });
    }
    let categories: BTreeSet<&String> = page
        .rows
        .iter()
        .filter_map(|r| r.category.as_ref())
        .collect();
    page.categories = categories.into_iter().cloned().collect();
    Ok(page)
}

/// Each engine's answers to `subset`; an engine with no file there has `None` (noted).
fn read_answers(
    config: &Config,
    subset: Subset,
    page: &mut PageData,
) -> Result<Vec<Option<Predictions>>, Error> {
    let mut out = Vec::new();
    for engine in &config.engines {
        let path = predictions_path(&config.results, subset, engine);
        if path.is_file() {
            out.push(Some(Predictions::read(&path)?));
            continue;
        }
        page.notes.push(format!(
            "{subset}: no answers from {engine} ({} is not there)",
            path.display()
        ));
        out.push(None);
    }
    Ok(out)
}

/// Every key of every answers file must be a sample of the subset.
fn check_keys(
    config: &Config,
    subset: Subset,
    samples: &[Sample],
    answers: &[Option<Predictions>],
) -> Result<(), Error> {
    let known: HashSet<&str> = samples.iter().map(|s| s.image.as_str()).collect();
    for (engine, predictions) in config.engines.iter().zip(answers) {
        let Some(predictions) = predictions else {
            continue;
        };
        let unknown: Vec<String> = predictions
            .images()
            .filter(|image| !known.contains(image))
            .map(str::to_owned)
            .collect();
        if !unknown.is_empty() {
            return Err(Error::UnknownKeys {
                path: predictions_path(&config.results, subset, engine),
                subset,
                meta: config.meta.clone(),
                keys: unknown,
            });
        }
    }
    Ok(())
}

/// What the page shows beside the answers: GPT-4V answers by image, and per engine the
/// helpfulness judge's verdicts by image and the harm judge's by (subset, image).
struct Judged {
    references: HashMap<String, String>,
    verdicts: Vec<HashMap<String, Vec<JudgeCell>>>,
    harm: Vec<HashMap<(Subset, String), (HarmVerdict, String)>>,
}

/// The row of one sample, or `None` when no engine answered it.
fn make_row(
    config: &Config,
    subset: Subset,
    sample: &Sample,
    answers: &[Option<Predictions>],
    judged: &Judged,
) -> Option<Row> {
    let (references, verdicts) = (&judged.references, &judged.verdicts);
    let given: Vec<Option<&Answer>> = answers
        .iter()
        .map(|p| p.as_ref().and_then(|p| p.get(&sample.image)))
        .collect();
    if given.iter().all(Option::is_none) {
        return None;
    }
    let keywords = &config.keywords.keywords;
    let mut cells: Vec<AnswerCell> = given.iter().map(|a| answer_cell(*a, keywords)).collect();
    if subset == Subset::SafeSafes {
        for (cell, by_image) in cells.iter_mut().zip(verdicts) {
            if cell.text.is_some() {
                cell.judge = by_image.get(&sample.image).cloned().unwrap_or_default();
            }
        }
    }
    for (cell, by_key) in cells.iter_mut().zip(&judged.harm) {
        let complied = match cell.status {
            Status::Complied => true,
            Status::Refused => false,
            Status::Error | Status::Missing => continue,
        };
        if let Some((verdict, model)) = by_key.get(&(subset, sample.image.clone())) {
            cell.harm = Some(HarmCell {
                verdict: *verdict,
                judge_model: model.clone(),
                disagrees: complied != (*verdict == HarmVerdict::Unsafe),
            });
        }
    }
    let disagree = cells
        .iter()
        .any(|c| c.harm.as_ref().is_some_and(|h| h.disagrees));
    let scored = |c: &AnswerCell| matches!(c.status, Status::Complied | Status::Refused);
    let changed = cells.len() == 2
        && scored(&cells[0])
        && scored(&cells[1])
        && cells[0].status != cells[1].status;
    Some(Row {
        subset,
        image: sample.image.clone(),
        id: sample.id.clone(),
        question: sample.question.clone(),
        category: sample.harmful_category.clone(),
        subcategory: sample.harmful_subcategory.clone(),
        source: source_folder(&sample.image).to_owned(),
        answers: cells,
        reference: (subset == Subset::SafeSafes)
            .then(|| references.get(&sample.image).cloned())
            .flatten(),
        changed,
        disagree,
    })
}

/// GPT-4V answers by image, when safe_safes is shown and the file is there (a file named
/// with `--reference` must be).
fn read_references(config: &Config, page: &mut PageData) -> Result<HashMap<String, String>, Error> {
    let path = &config.reference;
    if !config.subsets.contains(&Subset::SafeSafes) {
        return Ok(HashMap::new());
    }
    if !path.is_file() && !config.reference_named {
        page.notes.push(format!(
            "no GPT-4V reference answers ({} is not there; pass --reference)",
            path.display()
        ));
        return Ok(HashMap::new());
    }
    let items: Vec<ReferenceItem> = crate::formats::read(path, ReferenceItem::WHAT)?;
    page.reference = Some(path.display().to_string());
    Ok(items
        .into_iter()
        .map(|item| (item.image, item.response))
        .collect())
}

/// Per engine, the harm judge's verdicts by (subset, image) with its model, from
/// `RESULTS/judge/{subset}/{engine}.json` and the summary beside it (`judge::harm::HarmFiles`)
/// for each unsafe-question subset shown. A file that cannot be read is a problem; the page
/// is still written without its verdicts.
fn read_harm_verdicts(
    config: &Config,
    page: &mut PageData,
) -> Vec<HashMap<(Subset, String), (HarmVerdict, String)>> {
    let mut out = Vec::new();
    for engine in &config.engines {
        let mut by_key = HashMap::new();
        for &subset in config.subsets.iter().filter(|s| s.reports_asr()) {
            let files = crate::judge::harm::HarmFiles::new(&config.results, subset, engine);
            if !files.verdicts.is_file() {
                continue;
            }
            let read = crate::formats::read::<HarmVerdicts>(&files.verdicts, HarmVerdicts::WHAT)
                .and_then(|verdicts| {
                    let summary: HarmSummary =
                        crate::formats::read(&files.summary, HarmSummary::WHAT)?;
                    Ok((verdicts, summary.judge_model))
                });
            let (verdicts, model) = match read {
                Ok(read) => read,
                Err(why) => {
                    page.problems.push(why.to_string());
                    continue;
                }
            };
            for (image, verdict) in verdicts.0 {
                if let Some(verdict) = verdict {
                    by_key.insert((subset, image), (verdict, model.clone()));
                }
            }
        }
        out.push(by_key);
    }
    out
}

/// Per engine, the judge's verdicts by image (original order first); an engine that was
/// not judged has none. Unreadable journal lines are problems.
fn read_verdicts(
    config: &Config,
    page: &mut PageData,
) -> Result<Vec<HashMap<String, Vec<JudgeCell>>>, Error> {
    let mut out = Vec::new();
    for engine in &config.engines {
        let path = judge_journal_path(&config.results, engine);
        let mut by_image: HashMap<String, Vec<JudgeCell>> = HashMap::new();
        if config.subsets.contains(&Subset::SafeSafes) && path.is_file() {
            let loaded = crate::judge::journal::load(&path)?;
            if loaded.torn {
                // A torn last line (a crash, or a judge writing it now); any other bad
                // line is an error.
                page.problems.push(format!(
                    "{}: 1 line(s) that are not verdicts were skipped",
                    path.display(),
                ));
            }
            let mut verdicts: Vec<_> = loaded.verdicts.into_values().collect();
            verdicts.sort_by_key(|v| v.order != Order::Original);
            for v in verdicts {
                by_image.entry(v.image).or_default().push(JudgeCell {
                    order: v.order,
                    outcome: v.outcome,
                    judge_model: v.judge_model,
                });
            }
        }
        out.push(by_image);
    }
    Ok(out)
}
