//! Where each model of the table stands, read from disk alone (no network, no model
//! loaded), and the table that shows it.
//!
//! Per model: `model` (the model folder: its manifest there = done), one column per asked
//! subset (the run manifest records every sample of this run's size answered = done; else
//! the journal's answered samples = partial k/n; else pending), `score` (a score file per
//! subset, newer than its answers) and `judge` (the judge summary complete = done; else the
//! journal's verdicts = partial; `off` when no judge is configured). This is what the
//! stages skip: the status is the resume point.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::dataset::Subset;
use crate::formats::{HarmSummary, JournalEntry, JudgeSummary, RunManifest};
use crate::judge::harm::HarmFiles;
use crate::results::Paths;

use super::plan::Model;
use super::Settings;

/// One cell of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Done,
    Partial {
        done: usize,
        total: usize,
    },
    Pending,
    /// Not asked for (no judge configured), or not needed (every run done, model folder
    /// deleted).
    Off(&'static str),
    Failed(String),
}

impl State {
    pub fn is_done(&self) -> bool {
        matches!(self, State::Done)
    }

    pub fn text(&self) -> String {
        match self {
            State::Done => "done".into(),
            State::Partial { done, total } => format!("partial {done}/{total}"),
            State::Pending => "pending".into(),
            State::Off(why) => why.to_string(),
            State::Failed(_) => "FAILED".into(),
        }
    }
}

/// Every stage of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    pub model: State,
    pub runs: Vec<(Subset, State)>,
    pub score: State,
    pub judge: State,
    /// The harm judge over the unsafes / safe_unsafes answers (`--judge-harm`).
    pub harm: State,
}

impl ModelStatus {
    pub fn runs_done(&self) -> bool {
        self.runs.iter().all(|(_, s)| s.is_done())
    }

    pub fn all_done(&self) -> bool {
        self.runs_done()
            && self.score.is_done()
            && matches!(self.judge, State::Done | State::Off(_))
            && matches!(self.harm, State::Done | State::Off(_))
    }
}

/// The model folder of `model`.
pub fn model_dir(settings: &Settings, model: &Model) -> PathBuf {
    settings.models_dir.join(&model.name)
}

/// The score file of one subset: under `OUT/reproduce/`, where `leaderboard` does not look.
pub fn score_path(settings: &Settings, model: &Model, subset: Subset) -> PathBuf {
    settings
        .out
        .join("reproduce/scores")
        .join(format!("{}.{}.json", model.name, subset.name()))
}

/// The judge output `OUT/judge/NAME.json` (its summary is what `leaderboard` reads).
pub fn judge_out(settings: &Settings, model: &Model) -> PathBuf {
    settings
        .out
        .join("judge")
        .join(format!("{}.json", model.name))
}

pub fn status(settings: &Settings, model: &Model) -> ModelStatus {
    let runs: Vec<(Subset, State)> = settings
        .subsets
        .iter()
        .map(|&(subset, total)| (subset, run_state(settings, model, subset, total)))
        .collect();
    let has_model = model_dir(settings, model)
        .join(crate::export::manifest::MANIFEST_FILE)
        .is_file();
    let model_state = match (has_model, runs.iter().all(|(_, s)| s.is_done())) {
        (true, _) => State::Done,
        (false, true) => State::Off("not needed"),
        (false, false) => State::Pending,
    };
    ModelStatus {
        model: model_state,
        score: score_state(settings, model),
        judge: judge_state(settings, model),
        harm: harm_state(settings, model),
        runs,
    }
}

/// Done when the run manifest records this run's size (same --limit, --max-new-tokens)
/// answered in full; else the journal's answered samples.
fn run_state(settings: &Settings, model: &Model, subset: Subset, total: usize) -> State {
    let paths = Paths::new(&settings.out, subset.name(), &model.name);
    if let Ok(m) = RunManifest::read(&paths.manifest) {
        if m.n_samples == total
            && m.n_answered == total
            && m.limit == settings.limit
            && m.max_new_tokens == settings.max_new_tokens
            && paths.answers.is_file()
        {
            return State::Done;
        }
    }
    let done = answered_in_journal(&paths.journal);
    if done == 0 {
        State::Pending
    } else {
        State::Partial {
            done: done.min(total),
            total,
        }
    }
}

/// Distinct images answered in a run journal (its first line is the header).
fn answered_in_journal(path: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(path) else {
        return 0;
    };
    let answered: HashSet<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| serde_json::from_str::<JournalEntry>(line).ok())
        .filter(|e| e.answer.is_some())
        .map(|e| e.image)
        .collect();
    answered.len()
}

fn score_state(settings: &Settings, model: &Model) -> State {
    let fresh = |subset: Subset| {
        let answers = Paths::new(&settings.out, subset.name(), &model.name).answers;
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        match (
            modified(&score_path(settings, model, subset)),
            modified(&answers),
        ) {
            (Some(score), Some(answers)) => score >= answers,
            _ => false,
        }
    };
    let total = settings.subsets.len();
    let done = settings.subsets.iter().filter(|(s, _)| fresh(*s)).count();
    match done {
        0 => State::Pending,
        d if d == total => State::Done,
        d => State::Partial { done: d, total },
    }
}

fn judge_state(settings: &Settings, model: &Model) -> State {
    let Some(judge) = &settings.judge else {
        return State::Off("off");
    };
    let Some(&(_, answers)) = settings
        .subsets
        .iter()
        .find(|(s, _)| *s == Subset::SafeSafes)
    else {
        return State::Off("off (no safe_safes)");
    };
    if settings.limit.is_some() {
        return State::Off("off (--limit)");
    }
    // One verdict per answer, two with --swap (both seat orders).
    let total = answers * if judge.swap { 2 } else { 1 };
    let out = judge_out(settings, model);
    let summary = out.with_file_name(format!("{}.summary.json", model.name));
    if let Ok(s) = crate::formats::read::<JudgeSummary>(&summary, JudgeSummary::WHAT) {
        if s.complete && s.judge_model == judge.model {
            return State::Done;
        }
    }
    let journal = out.with_file_name(format!("{}.journal.jsonl", model.name));
    let verdicts = std::fs::read_to_string(journal)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    match verdicts {
        0 => State::Pending,
        n => State::Partial {
            done: n.min(total),
            total,
        },
    }
}

/// The subsets the harm judge reads, of those asked.
pub fn harm_subsets(settings: &Settings) -> Vec<Subset> {
    settings
        .subsets
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != Subset::SafeSafes)
        .collect()
}

/// Done per subset when its harm summary judged every answer with this judge model.
fn harm_state(settings: &Settings, model: &Model) -> State {
    let judge = match &settings.judge {
        Some(judge) if settings.judge_harm => judge,
        _ => return State::Off("off"),
    };
    let subsets = harm_subsets(settings);
    if subsets.is_empty() {
        return State::Off("off (no unsafes)");
    }
    let done = subsets
        .iter()
        .filter(|&&subset| {
            let path = HarmFiles::new(&settings.out, subset, &model.name).summary;
            crate::formats::read::<HarmSummary>(&path, HarmSummary::WHAT)
                .is_ok_and(|s| s.judged == s.n && s.errors == 0 && s.judge_model == judge.model)
        })
        .count();
    match done {
        0 => State::Pending,
        d if d == subsets.len() => State::Done,
        d => State::Partial {
            done: d,
            total: subsets.len(),
        },
    }
}

/// The table: one line per model, one column per stage.
pub fn render(models: &[Model], statuses: &[ModelStatus], subsets: &[Subset]) -> String {
    let mut header = vec!["model".to_string(), "weights".into()];
    header.extend(subsets.iter().map(|s| format!("run {}", s.name())));
    header.extend(["score".into(), "judge".into(), "harm".into()]);
    let mut rows = vec![header];
    for (m, s) in models.iter().zip(statuses) {
        let mut row = vec![m.name.clone(), s.model.text()];
        row.extend(s.runs.iter().map(|(_, r)| r.text()));
        row.extend([s.score.text(), s.judge.text(), s.harm.text()]);
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    for (m, s) in models.iter().zip(statuses) {
        for state in [&s.model, &s.score, &s.judge, &s.harm]
            .into_iter()
            .chain(s.runs.iter().map(|(_, r)| r))
        {
            if let State::Failed(why) = state {
                out += &format!("{} failed: {why}\n", m.name);
            }
        }
    }
    out
}
