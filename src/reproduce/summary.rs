//! The end of `reproduce`: one leaderboard of the table's models (markdown, HTML, JSON)
//! with the paper's published numbers beside the models that have them, and
//! `OUT/reproduce.json`, the record needed to repeat the table.
//!
//! Paper numbers: only those the repository holds with their source (REFERENCE.md,
//! "Attack success"; `report::PAPER_ROWS`): LLaVA-v1.5-7B, LLaVA-v1.5-13B and
//! LLaVA-v1.5-7B-Mixed, unsafes and safe_unsafes ASR. The paper's other rows are not
//! transcribed here: no number is shown that was not checked against its source. A
//! paper figure is "inside" when it lies in our 95 % Wilson interval of the same subset.
//!
//! Outputs: `OUT/leaderboard.md`, `OUT/leaderboard.html`, `OUT/leaderboard.json` (the
//! leaderboard rows of the table's models and the paper rows, then the comparison), and
//! `OUT/reproduce.json` ([`Summary`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::dataset::Subset;
use crate::report::{self, html_escape, Leaderboard, RowSource, PAPER_ROWS};
use crate::results::Paths;
use crate::util::python_float_repr;

use super::plan::Model;
use super::stages::SourceRecord;
use super::Settings;

/// Engine names of the paper's rows (REFERENCE.md "Engine names").
const PAPER_ENGINES: [(&str, &str); 3] = [
    ("llava15-7b", "LLaVA-v1.5-7B"),
    ("llava15-13b", "LLaVA-v1.5-13B"),
    ("llava15-7b-mixed", "LLaVA-v1.5-7B-Mixed"),
];

/// The paper row of an engine name, if the paper publishes one.
pub fn paper_row_for(engine: &str) -> Option<&'static str> {
    PAPER_ENGINES
        .iter()
        .find(|(e, _)| *e == engine)
        .map(|(_, row)| *row)
}

/// A paper row by its name (any case).
pub fn paper_row(name: &str) -> Option<&'static str> {
    PAPER_ROWS
        .iter()
        .find(|(row, _, _)| row.eq_ignore_ascii_case(name))
        .map(|(row, _, _)| *row)
}

pub fn paper_names() -> Vec<&'static str> {
    PAPER_ROWS.iter().map(|(row, _, _)| *row).collect()
}

/// One paper figure beside ours.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub engine: String,
    pub paper_row: String,
    pub subset: Subset,
    /// Ours: ASR percent and its 95 % interval (null when the subset was not run).
    pub asr: Option<f64>,
    pub ci95: Option<[f64; 2]>,
    pub n: Option<usize>,
    pub paper_asr: f64,
    /// Whether the paper's figure lies inside our interval (null without ours).
    pub inside_ci95: Option<bool>,
}

/// The comparisons of every model with a paper row.
pub fn compare(board: &Leaderboard, models: &[Model]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for model in models {
        let Some(paper) = &model.paper else { continue };
        let Some(&(row_name, unsafes, safe_unsafes)) =
            PAPER_ROWS.iter().find(|(row, _, _)| row == paper)
        else {
            continue;
        };
        let ours = board
            .rows
            .iter()
            .find(|r| r.source == RowSource::Run && r.engine == model.name);
        for (subset, paper_asr) in [
            (Subset::Unsafes, unsafes),
            (Subset::SafeUnsafes, safe_unsafes),
        ] {
            let tally = ours.and_then(|r| r.subset(subset)).map(|s| &s.tally);
            let ci95 = tally.and_then(|t| t.ci95);
            out.push(Comparison {
                engine: model.name.clone(),
                paper_row: row_name.to_string(),
                subset,
                asr: tally.and_then(|t| t.asr),
                ci95,
                n: tally.map(|t| t.n),
                paper_asr,
                inside_ci95: ci95.map(|[lo, hi]| lo <= paper_asr && paper_asr <= hi),
            });
        }
    }
    out
}

fn comparison_cells(c: &Comparison) -> [String; 6] {
    let num = |v: Option<f64>| v.map_or_else(|| "-".to_string(), python_float_repr);
    [
        format!("{} ({})", c.engine, c.paper_row),
        c.subset.name().to_string(),
        num(c.asr),
        c.ci95.map_or_else(
            || "-".into(),
            |[lo, hi]| format!("{} - {}", python_float_repr(lo), python_float_repr(hi)),
        ),
        python_float_repr(c.paper_asr),
        match c.inside_ci95 {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => "-".into(),
        },
    ]
}

const COMPARISON_COLUMNS: [&str; 6] = [
    "model (paper row)",
    "subset",
    "our ASR %",
    "our 95% CI",
    "paper ASR %",
    "paper inside CI",
];

const PAPER_NOTE: &str = "Paper figures: REFERENCE.md (the VLGuard paper, LLaVA-v1.5-7B, \
LLaVA-v1.5-13B and LLaVA-v1.5-7B-Mixed); the paper's other rows are not transcribed in \
this tool and are not shown.";

pub fn comparison_markdown(comparisons: &[Comparison]) -> String {
    let mut out = String::from("\n## Beside the paper\n\n");
    if comparisons.is_empty() {
        let _ = writeln!(
            out,
            "No model of this table has a published row.\n\n{PAPER_NOTE}"
        );
        return out;
    }
    let _ = writeln!(out, "| {} |", COMPARISON_COLUMNS.join(" | "));
    let _ = writeln!(out, "|---|---|---:|---|---:|---|");
    for c in comparisons {
        let _ = writeln!(out, "| {} |", comparison_cells(c).join(" | "));
    }
    let _ = writeln!(out, "\n{PAPER_NOTE}");
    out
}

fn comparison_html(comparisons: &[Comparison]) -> String {
    let mut out = String::from("<h2>Beside the paper</h2>\n<table>\n<thead><tr>");
    for c in COMPARISON_COLUMNS {
        let _ = write!(out, "<th>{}</th>", html_escape(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for c in comparisons {
        out.push_str("<tr>");
        for cell in comparison_cells(c) {
            let _ = write!(out, "<td>{}</td>", html_escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    let _ = writeln!(
        out,
        "</tbody>\n</table>\n<p>{}</p>",
        html_escape(PAPER_NOTE)
    );
    out
}

/// The leaderboard JSON: the rows, then the comparison.
#[derive(Serialize)]
struct BoardJson<'a> {
    #[serde(flatten)]
    board: &'a Leaderboard,
    paper_comparison: &'a [Comparison],
}

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("leaderboard: {0}")]
    Report(#[from] report::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot serialize: {0}")]
    Json(#[from] serde_json::Error),
}

fn write(path: &Path, text: &str) -> Result<(), SummaryError> {
    crate::util::write_atomic(path, text.as_bytes()).map_err(|source| SummaryError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes the three leaderboard files (the table's models only, plus the paper rows);
/// returns the comparisons. `Ok(None)` when no model has answers yet.
pub fn write_leaderboard(
    settings: &Settings,
    models: &[Model],
) -> Result<Option<Vec<Comparison>>, SummaryError> {
    let mut board = match report::collect(&settings.out, true) {
        Ok(board) => board,
        Err(report::Error::Empty(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    board
        .rows
        .retain(|r| r.source == RowSource::Paper || models.iter().any(|m| m.name == r.engine));
    if !board.rows.iter().any(|r| r.source == RowSource::Run) {
        return Ok(None);
    }
    let comparisons = compare(&board, models);
    let out = &settings.out;
    write(
        &out.join("leaderboard.md"),
        &(report::render_markdown(&board) + &comparison_markdown(&comparisons)),
    )?;
    for row in board.rows.iter_mut().filter(|r| r.source == RowSource::Run) {
        row.browse_page = crate::browse::page_link(out, &row.engine, out);
    }
    let page = report::render_html(&board).replacen(
        "</main>\n</body>",
        &format!("{}</main>\n</body>", comparison_html(&comparisons)),
        1,
    );
    write(&out.join("leaderboard.html"), &page)?;
    let json = serde_json::to_string_pretty(&BoardJson {
        board: &board,
        paper_comparison: &comparisons,
    })?;
    write(&out.join("leaderboard.json"), &(json + "\n"))?;
    Ok(Some(comparisons))
}

/// `OUT/reproduce.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub tool: &'static str,
    pub tool_version: &'static str,
    pub started_at: String,
    pub finished_at: String,
    /// The command line as given.
    pub command: Vec<String>,
    pub flags: super::Flags,
    pub onnxruntime: OrtRecord,
    pub dataset: DatasetRecord,
    pub models: Vec<ModelRecord>,
    pub leaderboard: Vec<String>,
    pub paper_comparison: Vec<Comparison>,
}

#[derive(Debug, Serialize)]
pub struct OrtRecord {
    pub library: Option<String>,
    /// The library's own version (`OrtGetApiBase()->GetVersionString()`).
    pub version: Option<String>,
    /// ONNX Runtime's build string (version, git commit).
    pub build: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DatasetRecord {
    pub meta: String,
    pub sha256: String,
    pub images: String,
}

#[derive(Debug, Serialize)]
pub struct ModelRecord {
    pub name: String,
    /// done, failed, or incomplete (sample errors left).
    pub status: String,
    pub error: Option<String>,
    /// The device it ran on in this invocation.
    pub device: i32,
    /// Whether this invocation exported (or prepared) it; false when the folder was kept.
    pub exported_now: bool,
    /// Whether this invocation deleted its folder (--delete-models-after).
    pub deleted: bool,
    pub dtype: String,
    pub decoder: String,
    pub source: Option<SourceRecord>,
    /// The export manifest's sha256 the answers were made with (from the run manifests;
    /// "mixed" when subsets differ).
    pub model_manifest_sha256: Option<String>,
    pub execution_providers: BTreeMap<String, String>,
    pub subsets: BTreeMap<String, SubsetRecord>,
}

#[derive(Debug, Serialize)]
pub struct SubsetRecord {
    pub answers: String,
    pub run_manifest: String,
    pub n_samples: usize,
    pub n_answered: usize,
    pub n_errors: usize,
    pub model_manifest_sha256: String,
    pub asr: Option<f64>,
}

/// What became of a model in this invocation.
#[derive(Debug)]
pub struct Fate {
    /// done, failed or incomplete.
    pub status: &'static str,
    pub error: Option<String>,
    pub device: i32,
    pub exported_now: bool,
    pub deleted: bool,
}

/// What reproduce.json keeps of one model, read from its run manifests.
pub fn model_record(settings: &Settings, model: &Model, fate: Fate) -> ModelRecord {
    let mut subsets = BTreeMap::new();
    let mut providers = BTreeMap::new();
    let mut hashes: Vec<String> = Vec::new();
    for &(subset, _) in &settings.subsets {
        let paths = Paths::new(&settings.out, subset.name(), &model.name);
        let Ok(m) = crate::formats::RunManifest::read(&paths.manifest) else {
            continue;
        };
        providers.extend(m.execution_providers.clone());
        hashes.push(m.model_manifest_sha256.clone());
        subsets.insert(
            subset.name().to_string(),
            SubsetRecord {
                answers: paths.answers.display().to_string(),
                run_manifest: paths.manifest.display().to_string(),
                n_samples: m.n_samples,
                n_answered: m.n_answered,
                n_errors: m.n_errors,
                model_manifest_sha256: m.model_manifest_sha256,
                asr: m.asr.and_then(|a| a.asr),
            },
        );
    }
    hashes.dedup();
    ModelRecord {
        name: model.name.clone(),
        status: fate.status.into(),
        error: fate.error,
        device: fate.device,
        exported_now: fate.exported_now,
        deleted: fate.deleted,
        dtype: model.dtype.as_str().into(),
        decoder: model.flavour.as_str().into(),
        source: SourceRecord::read(settings, model),
        model_manifest_sha256: match hashes.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            _ => Some("mixed".into()),
        },
        execution_providers: providers,
        subsets,
    }
}

/// ONNX Runtime's library and build string (loaded now if no run loaded it).
pub fn ort_record(ort_lib: Option<&Path>) -> OrtRecord {
    match crate::engine::ort_lib::init(ort_lib) {
        Ok(path) => OrtRecord {
            version: ort_version(&path),
            library: Some(path.display().to_string()),
            build: Some(ort::info().to_string()),
            error: None,
        },
        Err(e) => OrtRecord {
            library: None,
            version: None,
            build: None,
            error: Some(e.to_string()),
        },
    }
}

/// The version string of the ONNX Runtime library at `path` (already loaded by `init`, so
/// opening it again only takes another reference).
fn ort_version(path: &Path) -> Option<String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: the library is the one `ort` loaded (same path); `OrtGetApiBase` is its
    // exported entry point with this signature, and it returns a static, valid base
    // whose `GetVersionString` returns a static NUL-terminated string.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get: libloading::Symbol<GetApiBase> = lib.get(b"OrtGetApiBase").ok()?;
        let base = get();
        if base.is_null() {
            return None;
        }
        let text = ((*base).GetVersionString)();
        (!text.is_null()).then(|| {
            std::ffi::CStr::from_ptr(text)
                .to_string_lossy()
                .into_owned()
        })
    }
}
