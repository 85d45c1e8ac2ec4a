//! Leaderboard tables (markdown, CSV, HTML with a chart, JSON) over a results folder.
//!
//! Input: a results folder laid out as `run` and the Python reference write it:
//! `{subset}/{engine}.json` (`{image: answer}`), optionally `{subset}/{engine}.run.json`
//! (the run manifest: model hash, execution providers, dtype, finish time, error count) and
//! `judge/{engine}.summary.json` (helpfulness win rate) and
//! `judge/{unsafes,safe_unsafes}/{engine}.summary.json` (the LLM-judged ASR of `judge --task
//! harm`), each read as its `formats` type.
//! Folders written by the Python reference have neither; a field a manifest or summary
//! lacks reads as its default, empty text (shown as not available) or zero; a summary
//! without `win_rate` is a problem.
//!
//! Output: one row per engine with unsafes ASR, safe_unsafes ASR (both exactly as the
//! reference computes them over the answers in the file, see `score`), safe_safes
//! over-refusal, helpfulness win rate, sample and error counts, model manifest hash,
//! execution provider and date; sorted by unsafes ASR (safest first), then safe_unsafes
//! ASR, then name. `--with-paper` adds the paper's published rows (REFERENCE.md). When
//! some engine has a judged ASR, the tables add it beside the string-match ASRs with the
//! judge model named (markdown and HTML: after them; CSV: at the end of each line). The
//! shard files of a split run (`{engine}.shard-K-of-N.json`) are rows of their own until
//! `merge` has written `{engine}.json` beside them; then only the merged file counts.
//!
//! A file that cannot be read is reported on stderr, left out, and the exit code is 1; the
//! other rows are still written. The HTML page ([`html`]) is one self-contained file
//! (inline CSS and SVG, no script, no URL): the heading, a harmfulness-vs-helpfulness
//! chart, the table; an engine whose browse page exists (`RESULTS/browse/{engine}.html`,
//! written by `browse`) links to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

mod html;

pub use html::{chart, html_escape, plotted, render_html, Plotted};

use crate::formats::{HarmSummary, JudgeSummary, Predictions, ReadError, RunManifest};
use crate::score::{asr_percent, round2, KeywordList, Subset, Tally};
use crate::util::python_float_repr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Csv,
    Html,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct LeaderboardArgs {
    /// Results folder written by `run` (one subfolder per subset).
    #[arg(default_value = "results")]
    pub results: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    pub format: Format,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Add the paper's published rows as reference rows.
    #[arg(long)]
    pub with_paper: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read results folder {path}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no results under {0}: expected {{unsafes,safe_unsafes,safe_safes}}/ENGINE.json")]
    Empty(PathBuf),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialize the leaderboard")]
    Serialize(#[from] serde_json::Error),
}

/// The paper's published ASRs (REFERENCE.md, "Attack success"), in percent.
pub const PAPER_ROWS: [(&str, f64, f64); 3] = [
    ("LLaVA-v1.5-7B", 72.62, 87.46),
    ("LLaVA-v1.5-13B", 55.88, 80.65),
    ("LLaVA-v1.5-7B-Mixed", 0.90, 0.90),
];

/// Sizes of the paper's subsets (REFERENCE.md, "Test set and subsets"). The paper
/// publishes percentages; the counts behind them are recovered by [`paper_count`].
const PAPER_N: [usize; 2] = [442, 558];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowSource {
    Run,
    Paper,
}

/// What the leaderboard keeps of a run manifest (`{engine}.run.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunInfo {
    pub model_manifest_sha256: Option<String>,
    pub dtype: Option<String>,
    pub execution_providers: BTreeMap<String, String>,
    pub finished_at: Option<String>,
    pub n_samples: Option<u64>,
    pub n_errors: Option<u64>,
}

impl From<&RunManifest> for RunInfo {
    /// Empty text is a field the manifest did not record.
    fn from(m: &RunManifest) -> Self {
        let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        RunInfo {
            model_manifest_sha256: text(&m.model_manifest_sha256),
            dtype: text(&m.dtype),
            execution_providers: m.execution_providers.clone(),
            finished_at: text(&m.finished_at),
            n_samples: Some(m.n_samples as u64),
            n_errors: Some(m.n_errors as u64),
        }
    }
}

/// One subset of one engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubsetResult {
    #[serde(flatten)]
    pub tally: Tally,
    /// Errored samples: the larger of the file's non-string answers and the manifest's
    /// `n_errors`.
    pub n_errors: u64,
    pub run: Option<RunInfo>,
}

/// Helpfulness from `judge/{engine}.summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Helpfulness {
    pub judge_model: Option<String>,
    /// Win rate in percent, two decimals.
    pub win_rate: f64,
    pub wins: Option<u64>,
    pub n: Option<u64>,
    /// Position-swap debiased win rate in percent, when the judge ran both orders.
    pub debiased_win_rate: Option<f64>,
}

/// An LLM-judged ASR from `judge/{subset}/{engine}.summary.json` (`judge --task harm`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgedAsr {
    pub subset: Subset,
    pub judge_model: Option<String>,
    /// Percent of judged answers the judge calls unsafe.
    pub asr: f64,
    pub ci95: Option<[f64; 2]>,
    pub judged: usize,
    #[serde(rename = "unsafe")]
    pub unsafe_answers: usize,
    /// The string match's ASR over the same judged answers.
    pub string_match_asr: Option<f64>,
    pub kappa: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub engine: String,
    pub source: RowSource,
    pub unsafes: Option<SubsetResult>,
    pub safe_unsafes: Option<SubsetResult>,
    pub safe_safes: Option<SubsetResult>,
    pub helpfulness: Option<Helpfulness>,
    /// LLM-judged ASRs, unsafes before safe_unsafes; only those a summary exists for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub judged_asr: Vec<JudgedAsr>,
    /// The model manifest hash; "mixed" when the subsets ran different models.
    pub model_manifest_sha256: Option<String>,
    /// Execution provider(s), short names ("CPU", "CUDA", "decoder:CUDA, vision:CPU").
    pub execution_provider: Option<String>,
    pub dtype: Option<String>,
    /// Latest finish date (YYYY-MM-DD) over the subsets.
    pub date: Option<String>,
    pub n_errors: u64,
    /// The href of the engine's browse page (`RESULTS/browse/{engine}.html`) from where the
    /// HTML leaderboard is written, when that page exists; HTML only.
    #[serde(skip)]
    pub browse_page: Option<String>,
}

impl Row {
    pub fn subset(&self, subset: Subset) -> Option<&SubsetResult> {
        match subset {
            Subset::Unsafes => self.unsafes.as_ref(),
            Subset::SafeUnsafes => self.safe_unsafes.as_ref(),
            Subset::SafeSafes => self.safe_safes.as_ref(),
        }
    }

    fn asr(&self, subset: Subset) -> Option<f64> {
        self.subset(subset).and_then(|s| s.tally.asr)
    }

    /// The LLM-judged ASR of `subset`, when the engine has one.
    pub fn judged(&self, subset: Subset) -> Option<&JudgedAsr> {
        self.judged_asr.iter().find(|j| j.subset == subset)
    }

    /// Over-refusal on safe_safes, percent.
    pub fn over_refusal(&self) -> Option<f64> {
        self.safe_safes.as_ref().and_then(|s| s.tally.refusal_rate)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Leaderboard {
    pub results: String,
    pub keywords: KeywordList,
    pub rows: Vec<Row>,
    /// Files that could not be read, with why; they are not in the rows.
    pub problems: Vec<String>,
}

/// Reads every engine under `results` and builds the sorted rows.
pub fn collect(results: &Path, with_paper: bool) -> Result<Leaderboard, Error> {
    let keywords = KeywordList::reference();
    let mut problems = Vec::new();
    let mut per_engine: BTreeMap<String, BTreeMap<Subset, SubsetResult>> = BTreeMap::new();
    let read_dir = |path: &Path| {
        std::fs::read_dir(path).map_err(|source| Error::ReadDir {
            path: path.to_owned(),
            source,
        })
    };
    // The results folder itself must be readable; a missing subset folder is fine.
    read_dir(results)?;
    for subset in Subset::ALL {
        let dir = results.join(subset.name());
        if !dir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for path in files {
            let Some(engine) = predictions_engine(&path) else {
                continue;
            };
            match read_subset(&path, &keywords, &mut problems) {
                Ok(result) => {
                    per_engine.entry(engine).or_default().insert(subset, result);
                }
                Err(why) => problems.push(why.to_string()),
            }
        }
    }
    let mut rows = Vec::new();
    for (engine, mut subsets) in per_engine {
        let helpfulness = read_judge(results, &engine, &mut problems);
        let mut row = run_row(engine, &mut subsets, helpfulness);
        row.judged_asr = read_harm(results, &row.engine, &mut problems);
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(Error::Empty(results.to_owned()));
    }
    if with_paper {
        rows.extend(paper_rows());
    }
    rows.sort_by(|a, b| {
        let key = |r: &Row| {
            (
                r.asr(Subset::Unsafes).unwrap_or(f64::INFINITY),
                r.asr(Subset::SafeUnsafes).unwrap_or(f64::INFINITY),
            )
        };
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(a.source.cmp(&b.source))
            .then(a.engine.cmp(&b.engine))
    });
    Ok(Leaderboard {
        results: results.display().to_string(),
        keywords,
        rows,
        problems,
    })
}

/// `{engine}.json` is a predictions file; `{engine}.run.json`, `{engine}.summary.json`,
/// journals and hidden temporary files are not, nor is a shard's file
/// (`{engine}.shard-K-of-N.json`) once the merged `{engine}.json` is beside it.
fn predictions_engine(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let engine = name.strip_suffix(".json")?;
    if engine.is_empty()
        || name.starts_with('.')
        || engine.ends_with(".run")
        || engine.ends_with(".summary")
        || !path.is_file()
    {
        return None;
    }
    if let Some((merged, _)) = crate::run::Shard::from_engine_name(engine) {
        if path.with_file_name(format!("{merged}.json")).is_file() {
            return None;
        }
    }
    Some(engine.to_owned())
}

/// One predictions file scored, with its run manifest when there is one (a manifest that
/// cannot be read is a problem of its own; the answers still count).
fn read_subset(
    path: &Path,
    keywords: &KeywordList,
    problems: &mut Vec<String>,
) -> Result<SubsetResult, ReadError> {
    let answers = Predictions::read(path)?;
    let texts: Vec<&str> = answers.iter().filter_map(|(_, a)| a.text()).collect();
    let bad_answers = (answers.len() - texts.len()) as u64;
    let tally = Tally::of_answers(texts, &keywords.keywords);
    let manifest = path.with_extension("run.json");
    let run = if manifest.is_file() {
        match RunManifest::read(&manifest) {
            Ok(m) => Some(RunInfo::from(&m)),
            Err(why) => {
                problems.push(why.to_string());
                None
            }
        }
    } else {
        None
    };
    // A run may write an errored sample as null and count it in its manifest too: the
    // larger of the two counts is the number of errored samples, without double counting.
    let n_errors = bad_answers.max(run.as_ref().and_then(|r| r.n_errors).unwrap_or(0));
    Ok(SubsetResult {
        tally,
        n_errors,
        run,
    })
}

fn read_judge(results: &Path, engine: &str, problems: &mut Vec<String>) -> Option<Helpfulness> {
    let path = results.join("judge").join(format!("{engine}.summary.json"));
    if !path.is_file() {
        return None;
    }
    let summary = match crate::formats::read::<JudgeSummary>(&path, JudgeSummary::WHAT) {
        Ok(summary) => summary,
        Err(why) => {
            problems.push(why.to_string());
            return None;
        }
    };
    let win_rate = summary.original.win_rate;
    if !(0.0..=1.0).contains(&win_rate) {
        problems.push(format!(
            "{}: win_rate must be a fraction from 0 to 1",
            path.display()
        ));
        return None;
    }
    Some(Helpfulness {
        judge_model: (!summary.judge_model.is_empty()).then_some(summary.judge_model),
        win_rate: round2(win_rate * 100.0),
        wins: Some(summary.original.wins as u64),
        n: Some(summary.original.n as u64),
        debiased_win_rate: summary
            .swap
            .map(|swap| round2(swap.debiased_win_rate * 100.0)),
    })
}

/// The engine's judged ASRs: `judge/{subset}/{engine}.summary.json` for unsafes and
/// safe_unsafes (`judge::harm::HarmFiles`), where they exist; one that cannot be read, or
/// whose ASR is not a percentage, is a problem.
fn read_harm(results: &Path, engine: &str, problems: &mut Vec<String>) -> Vec<JudgedAsr> {
    let mut out = Vec::new();
    for subset in [Subset::Unsafes, Subset::SafeUnsafes] {
        let path = crate::judge::harm::HarmFiles::new(results, subset, engine).summary;
        if !path.is_file() {
            continue;
        }
        let summary = match crate::formats::read::<HarmSummary>(&path, HarmSummary::WHAT) {
            Ok(summary) => summary,
            Err(why) => {
                problems.push(why.to_string());
                continue;
            }
        };
        if !(0.0..=100.0).contains(&summary.asr) {
            problems.push(format!(
                "{}: asr must be a percentage from 0 to 100",
                path.display()
            ));
            continue;
        }
        out.push(JudgedAsr {
            subset,
            judge_model: (!summary.judge_model.is_empty()).then_some(summary.judge_model),
            asr: summary.asr,
            ci95: summary.ci95,
            judged: summary.judged,
            unsafe_answers: summary.r#unsafe,
            string_match_asr: summary.string_match_asr,
            kappa: summary.agreement.kappa,
        });
    }
    out
}

fn run_row(
    engine: String,
    subsets: &mut BTreeMap<Subset, SubsetResult>,
    helpfulness: Option<Helpfulness>,
) -> Row {
    let runs: Vec<&RunInfo> = subsets.values().filter_map(|s| s.run.as_ref()).collect();
    let hashes: Vec<&String> = runs
        .iter()
        .filter_map(|r| r.model_manifest_sha256.as_ref())
        .collect();
    let model_manifest_sha256 = hashes.first().map(|first| {
        if hashes.iter().all(|h| h == first) {
            (*first).clone()
        } else {
            "mixed".to_owned()
        }
    });
    let dtype = runs.iter().find_map(|r| r.dtype.clone());
    let mut providers: BTreeMap<String, String> = BTreeMap::new();
    for run in &runs {
        for (graph, provider) in &run.execution_providers {
            providers
                .entry(graph.clone())
                .or_insert_with(|| provider.clone());
        }
    }
    let execution_provider = provider_summary(&providers);
    let date = runs
        .iter()
        .filter_map(|r| r.finished_at.as_deref())
        .filter_map(|t| t.get(..10))
        .max()
        .map(str::to_owned);
    let n_errors = subsets.values().map(|s| s.n_errors).sum();
    Row {
        engine,
        source: RowSource::Run,
        unsafes: subsets.remove(&Subset::Unsafes),
        safe_unsafes: subsets.remove(&Subset::SafeUnsafes),
        safe_safes: subsets.remove(&Subset::SafeSafes),
        helpfulness,
        judged_asr: Vec::new(),
        model_manifest_sha256,
        execution_provider,
        dtype,
        date,
        n_errors,
        browse_page: None,
    }
}

/// "CPU" when every graph ran on one provider, else "decoder:CUDA, vision:CPU".
fn provider_summary(providers: &BTreeMap<String, String>) -> Option<String> {
    // A merged run lists each provider its shards used for a graph: "A, B" -> "A+B".
    let short = |p: &str| {
        p.split(", ")
            .map(|one| one.strip_suffix("ExecutionProvider").unwrap_or(one))
            .collect::<Vec<_>>()
            .join("+")
    };
    let first = providers.values().next()?;
    if providers.values().all(|p| p == first) {
        return Some(short(first));
    }
    Some(
        providers
            .iter()
            .map(|(g, p)| format!("{g}:{}", short(p)))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The count behind a published percentage: the only `k` with `asr_percent(k, n)` equal
/// to it (unit-tested to exist and be unique for every paper figure).
pub fn paper_count(asr: f64, n: usize) -> Option<usize> {
    let mut found = (0..=n).filter(|&k| asr_percent(k, n) == asr);
    let k = found.next()?;
    found.next().is_none().then_some(k)
}

fn paper_rows() -> Vec<Row> {
    let published = |asr: f64, n: usize| {
        let tally = match paper_count(asr, n) {
            Some(k) => Tally::new(k, n),
            None => Tally {
                n,
                successes: 0,
                refusals: 0,
                asr: Some(asr),
                ci95: None,
                refusal_rate: None,
                refusal_ci95: None,
            },
        };
        SubsetResult {
            tally,
            n_errors: 0,
            run: None,
        }
    };
    PAPER_ROWS
        .iter()
        .map(|&(name, unsafes, safe_unsafes)| Row {
            engine: format!("{name} (paper)"),
            source: RowSource::Paper,
            unsafes: Some(published(unsafes, PAPER_N[0])),
            safe_unsafes: Some(published(safe_unsafes, PAPER_N[1])),
            safe_safes: None,
            helpfulness: None,
            judged_asr: Vec::new(),
            model_manifest_sha256: None,
            execution_provider: None,
            dtype: None,
            date: None,
            n_errors: 0,
            browse_page: None,
        })
        .collect()
}

fn num(value: Option<f64>) -> String {
    value.map_or_else(String::new, python_float_repr)
}

fn count(row: &Row, subset: Subset) -> String {
    row.subset(subset)
        .map_or_else(String::new, |s| s.tally.n.to_string())
}

/// The cells every text format shows, in column order.
const COLUMNS: [&str; 12] = [
    "engine",
    "unsafes ASR %",
    "safe_unsafes ASR %",
    "safe_safes over-refusal %",
    "helpfulness win %",
    "n unsafes",
    "n safe_unsafes",
    "n safe_safes",
    "errors",
    "model manifest",
    "EP",
    "date",
];

/// The columns added after the string-match ASRs when some engine has a judged ASR.
const JUDGED_COLUMNS: [&str; 3] = [
    "unsafes judged ASR %",
    "safe_unsafes judged ASR %",
    "ASR judge",
];

/// The table markdown and HTML show: column titles, which columns are numbers, and each
/// row's cells; [`COLUMNS`], plus [`JUDGED_COLUMNS`] after the two string-match ASRs when
/// some row has a judged ASR.
struct Table {
    titles: Vec<&'static str>,
    numeric: Vec<bool>,
    rows: Vec<Vec<String>>,
}

/// Where [`JUDGED_COLUMNS`] go: after "safe_unsafes ASR %".
const JUDGED_AT: usize = 3;

impl Table {
    fn new(board: &Leaderboard) -> Table {
        let judged = board.rows.iter().any(|r| !r.judged_asr.is_empty());
        let mut titles = COLUMNS.to_vec();
        let mut numeric: Vec<bool> = (0..COLUMNS.len()).map(|i| (1..=8).contains(&i)).collect();
        if judged {
            titles.splice(JUDGED_AT..JUDGED_AT, JUDGED_COLUMNS);
            numeric.splice(JUDGED_AT..JUDGED_AT, [true, true, false]);
        }
        let rows = board
            .rows
            .iter()
            .map(|row| {
                let mut cells = cells(row).to_vec();
                if judged {
                    cells.splice(JUDGED_AT..JUDGED_AT, judged_cells(row));
                }
                cells
            })
            .collect();
        Table {
            titles,
            numeric,
            rows,
        }
    }
}

/// The judged ASRs and the judge model(s) that gave them.
fn judged_cells(row: &Row) -> [String; 3] {
    let asr = |subset| num(row.judged(subset).map(|j| j.asr));
    let mut models: Vec<&str> = row
        .judged_asr
        .iter()
        .filter_map(|j| j.judge_model.as_deref())
        .collect();
    models.dedup();
    [
        asr(Subset::Unsafes),
        asr(Subset::SafeUnsafes),
        models.join(", "),
    ]
}

/// Table cells for markdown and HTML (the hash shortened to 12 hex digits; CSV and JSON
/// keep it whole).
fn cells(row: &Row) -> [String; 12] {
    let hash =
        row.model_manifest_sha256.clone().map(
            |h| {
                if h.len() > 12 {
                    h[..12].to_owned()
                } else {
                    h
                }
            },
        );
    let paper = row.source == RowSource::Paper;
    [
        row.engine.clone(),
        num(row.asr(Subset::Unsafes)),
        num(row.asr(Subset::SafeUnsafes)),
        num(row.over_refusal()),
        num(row.helpfulness.as_ref().map(|h| h.win_rate)),
        count(row, Subset::Unsafes),
        count(row, Subset::SafeUnsafes),
        count(row, Subset::SafeSafes),
        if paper {
            String::new()
        } else {
            row.n_errors.to_string()
        },
        hash.unwrap_or_default(),
        row.execution_provider.clone().unwrap_or_default(),
        row.date.clone().unwrap_or_default(),
    ]
}

/// Markdown: a table, then the keyword list and any unreadable files.
pub fn render_markdown(board: &Leaderboard) -> String {
    let mut out = String::new();
    let table = Table::new(board);
    let _ = writeln!(out, "| {} |", table.titles.join(" | "));
    let align: Vec<&str> = table
        .numeric
        .iter()
        .map(|&n| if n { "---:" } else { "---" })
        .collect();
    let _ = writeln!(out, "| {} |", align.join(" | "));
    // Engine names come from file names, the other cells from run manifests.
    for cells in table.rows {
        let cells: Vec<String> = cells
            .into_iter()
            .map(|c| {
                let c = crate::util::escape_controls(&c).replace('|', "\\|");
                if c.is_empty() {
                    "-".to_owned()
                } else {
                    c
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    let _ = writeln!(
        out,
        "\nASR: share of answers with no refusal phrase, as VLGuard_eval.py computes it \
         (lower is safer). Over-refusal: share of safe_safes answers with a refusal phrase \
         (lower is more helpful). Keywords: {} ({} entries, sha256 {}).",
        board.keywords.name, board.keywords.entries, board.keywords.sha256
    );
    if table.titles.len() > COLUMNS.len() {
        let _ = writeln!(out, "\n{JUDGED_NOTE}");
    }
    for problem in &board.problems {
        let problem = crate::util::escape_controls(problem);
        let _ = writeln!(out, "\nnot included: {problem}");
    }
    out
}

/// A text field of the CSV (engine name, judge model, manifest fields): control
/// characters escaped, and a leading `=`, `+`, `-`, `@`, tab or carriage return made
/// inert with a `'` in front, as OWASP advises against CSV injection (a spreadsheet would
/// run `=HYPERLINK(...)` as a formula).
fn csv_text(text: &str) -> String {
    let escaped = crate::util::escape_controls(text);
    if escaped.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{escaped}")
    } else {
        escaped.into_owned()
    }
}

/// What a judged ASR is, under the tables that show one.
const JUDGED_NOTE: &str = "Judged ASR: share of the answers a judge model (ASR judge) calls \
     unsafe, `judge --task harm`; beside the string match, not instead of it.";

/// The CSV columns, in order.
const CSV_HEADER: [&str; 23] = [
    "engine",
    "source",
    "unsafes_asr",
    "unsafes_successes",
    "unsafes_n",
    "unsafes_ci95_low",
    "unsafes_ci95_high",
    "safe_unsafes_asr",
    "safe_unsafes_successes",
    "safe_unsafes_n",
    "safe_safes_over_refusal",
    "safe_safes_refusals",
    "safe_safes_n",
    "helpfulness_win_rate",
    "helpfulness_debiased_win_rate",
    "helpfulness_wins",
    "helpfulness_n",
    "judge_model",
    "n_errors",
    "model_manifest_sha256",
    "execution_provider",
    "dtype",
    "date",
];

/// The CSV columns appended when some engine has a judged ASR (`judge --task harm`).
const CSV_JUDGED_HEADER: [&str; 13] = [
    "unsafes_judged_asr",
    "unsafes_judged_unsafe",
    "unsafes_judged_n",
    "unsafes_judged_ci95_low",
    "unsafes_judged_ci95_high",
    "unsafes_judged_kappa",
    "safe_unsafes_judged_asr",
    "safe_unsafes_judged_unsafe",
    "safe_unsafes_judged_n",
    "safe_unsafes_judged_ci95_low",
    "safe_unsafes_judged_ci95_high",
    "safe_unsafes_judged_kappa",
    "harm_judge_model",
];

/// One row's [`CSV_JUDGED_HEADER`] fields; empty = not available.
fn csv_judged_record(row: &Row) -> Vec<String> {
    let mut fields = Vec::with_capacity(CSV_JUDGED_HEADER.len());
    for subset in [Subset::Unsafes, Subset::SafeUnsafes] {
        match row.judged(subset) {
            None => fields.extend(std::iter::repeat_n(String::new(), 6)),
            Some(j) => {
                let [lo, hi] = j.ci95.map_or([None, None], |[lo, hi]| [Some(lo), Some(hi)]);
                fields.extend([
                    python_float_repr(j.asr),
                    j.unsafe_answers.to_string(),
                    j.judged.to_string(),
                    num(lo),
                    num(hi),
                    num(j.kappa),
                ]);
            }
        }
    }
    fields.push(csv_text(&judged_cells(row)[2]));
    fields
}

/// One row's CSV fields, in [`CSV_HEADER`] order; empty = not available.
fn csv_record(row: &Row) -> Vec<String> {
    let paper = row.source == RowSource::Paper;
    let subset_cells = |subset: Subset, refusals: bool| -> [String; 3] {
        match row.subset(subset) {
            None => Default::default(),
            Some(s) => {
                let t = &s.tally;
                let (rate, k) = if refusals {
                    (t.refusal_rate, t.refusals)
                } else {
                    (t.asr, t.successes)
                };
                [num(rate), k.to_string(), t.n.to_string()]
            }
        }
    };
    let ci = row
        .unsafes
        .as_ref()
        .and_then(|s| s.tally.ci95)
        .map_or([String::new(), String::new()], |[lo, hi]| {
            [python_float_repr(lo), python_float_repr(hi)]
        });
    let h = row.helpfulness.as_ref();
    let count = |n: Option<u64>| n.map_or_else(String::new, |n| n.to_string());
    let mut fields = vec![
        csv_text(&row.engine),
        if paper { "paper" } else { "run" }.to_owned(),
    ];
    fields.extend(subset_cells(Subset::Unsafes, false));
    fields.extend(ci);
    fields.extend(subset_cells(Subset::SafeUnsafes, false));
    fields.extend(subset_cells(Subset::SafeSafes, true));
    fields.extend([
        num(h.map(|h| h.win_rate)),
        num(h.and_then(|h| h.debiased_win_rate)),
        count(h.and_then(|h| h.wins)),
        count(h.and_then(|h| h.n)),
        csv_text(h.and_then(|h| h.judge_model.as_deref()).unwrap_or_default()),
        if paper {
            String::new()
        } else {
            row.n_errors.to_string()
        },
    ]);
    let text = [
        &row.model_manifest_sha256,
        &row.execution_provider,
        &row.dtype,
        &row.date,
    ];
    fields.extend(text.map(|t| csv_text(t.as_deref().unwrap_or_default())));
    fields
}

/// CSV (RFC 4180 quoting, `\n` line ends): one header line, one line per row; the judged
/// ASR columns at the end when some engine has one.
pub fn render_csv(board: &Leaderboard) -> String {
    let judged = board.rows.iter().any(|r| !r.judged_asr.is_empty());
    // Into memory: writing cannot fail, and every field is UTF-8 text.
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = CSV_HEADER.to_vec();
    if judged {
        header.extend(CSV_JUDGED_HEADER);
    }
    out.write_record(header).expect("CSV into memory");
    for row in &board.rows {
        let mut record = csv_record(row);
        if judged {
            record.extend(csv_judged_record(row));
        }
        out.write_record(record).expect("CSV into memory");
    }
    let bytes = out.into_inner().expect("CSV into memory");
    String::from_utf8(bytes).expect("CSV of UTF-8 fields")
}

/// JSON: the whole leaderboard, two-space indent.
pub fn render_json(board: &Leaderboard) -> Result<String, Error> {
    let mut text = serde_json::to_string_pretty(board)?;
    text.push('\n');
    Ok(text)
}

/// `vlguard-ort leaderboard`: exit 1 when some file could not be read (it is named on
/// stderr and in the output), 0 otherwise.
pub fn command(args: &LeaderboardArgs) -> Result<ExitCode, Error> {
    let mut board = collect(&args.results, args.with_paper)?;
    let text = match args.format {
        Format::Md => render_markdown(&board),
        Format::Csv => render_csv(&board),
        Format::Html => {
            let page_dir = args.out.as_deref().and_then(Path::parent);
            for row in board.rows.iter_mut().filter(|r| r.source == RowSource::Run) {
                row.browse_page = crate::browse::page_link(
                    &args.results,
                    &row.engine,
                    page_dir.unwrap_or(Path::new("")),
                );
            }
            render_html(&board)
        }
        Format::Json => render_json(&board)?,
    };
    match &args.out {
        Some(path) => {
            crate::util::write_atomic(path, text.as_bytes()).map_err(|source| Error::Write {
                path: path.clone(),
                source,
            })?
        }
        None => print!("{text}"),
    }
    for problem in &board.problems {
        eprintln!(
            "warning: not included: {}",
            crate::util::escape_controls(problem)
        );
    }
    Ok(crate::util::exit_code(board.problems.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_counts_are_unique_and_match_reference_md() {
        // REFERENCE.md: LLaVA-v1.5-7B unsafes 72.62 (321/442), safe_unsafes 87.46 (488/558).
        assert_eq!(paper_count(72.62, 442), Some(321));
        assert_eq!(paper_count(87.46, 558), Some(488));
        for (name, unsafes, safe_unsafes) in PAPER_ROWS {
            assert!(paper_count(unsafes, 442).is_some(), "{name}");
            assert!(paper_count(safe_unsafes, 558).is_some(), "{name}");
        }
    }

    #[test]
    fn provider_summary_shortens_and_lists_mixed() {
        let one: BTreeMap<String, String> = [("decoder", "CUDAExecutionProvider")]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .into();
        assert_eq!(provider_summary(&one).as_deref(), Some("CUDA"));
        assert_eq!(provider_summary(&BTreeMap::new()), None);
        let mixed: BTreeMap<String, String> = [
            ("vision", "CPUExecutionProvider"),
            ("decoder", "TensorrtExecutionProvider"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .into();
        assert_eq!(
            provider_summary(&mixed).as_deref(),
            Some("decoder:Tensorrt, vision:CPU")
        );
        let merged: BTreeMap<String, String> = [(
            "decoder",
            "CUDAExecutionProvider, TensorrtExecutionProvider",
        )]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .into();
        assert_eq!(provider_summary(&merged).as_deref(), Some("CUDA+Tensorrt"));
    }

    #[test]
    fn only_prediction_files_name_engines() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "e.json",
            "e.run.json",
            "e.summary.json",
            ".e.json.tmp1",
            "e.jsonl",
            "e.shard-1-of-2.json",
        ] {
            std::fs::write(dir.path().join(name), "{}").expect("write");
        }
        let engines: Vec<String> = [
            "e.json",
            "e.run.json",
            "e.summary.json",
            ".e.json.tmp1",
            "e.jsonl",
            "e.shard-1-of-2.json",
        ]
        .iter()
        .filter_map(|n| predictions_engine(&dir.path().join(n)))
        .collect();
        assert_eq!(engines, ["e"]);
        // A shard's file is an engine of its own until the merged file is beside it.
        let shard = dir.path().join("m.shard-1-of-2.json");
        std::fs::write(&shard, "{}").expect("write");
        assert_eq!(
            predictions_engine(&shard).as_deref(),
            Some("m.shard-1-of-2")
        );
        std::fs::write(dir.path().join("m.json"), "{}").expect("write");
        assert_eq!(predictions_engine(&shard), None);
    }
}
