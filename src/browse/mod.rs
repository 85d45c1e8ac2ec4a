//! `vlguard-ort browse`: one offline HTML page to read, filter and compare what engines
//! answered.
//!
//! Input: a results folder as `run` writes it (`{subset}/{engine}.json`, optionally
//! `judge/{engine}.journal.jsonl` and `judge --task harm`'s `judge/{subset}/{engine}.json`), VLGuard's test.json, the image folder, the GPT-4V
//! reference answers (`gpt4_safe_safes.json`) and the refusal keyword list.
//!
//! Output: one self-contained HTML file (inline CSS and script, thumbnails as `data:`
//! URLs; nothing is fetched when it is viewed), by default `RESULTS/browse/{engine}.html`,
//! or `RESULTS/browse/compare/{engine}--{against}.html` with `--against`; the leaderboard
//! links each engine to `browse/{engine}.html` when that page exists. The page embeds its
//! data as one JSON blob ([`data::PageData`], in `<script type="application/json"
//! id="vlguard-data">`); its script draws the table and the filters from it
//! ([`html`]).
//!
//! Errors: a file that cannot be read as its format, a predictions key that is not a
//! sample of its subset, an engine with no answers: nothing is written. An image that
//! cannot be read or decoded has no thumbnail; it is named on the page and on stderr and
//! the exit code is 1, as for unreadable judge journal lines.

pub mod data;
pub mod html;
pub mod thumbs;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use data::{collect, PageData};
pub use html::render;
pub use thumbs::ThumbSpec;

use crate::dataset::Subset;
use crate::formats::ReadError;
use crate::run::SubsetArg;
use crate::score::KeywordList;

/// Where the dataset's files are when `fetch dataset` put them there.
const DEFAULT_META: &str = "data/VLGuard/test.json";
const DEFAULT_IMAGES: &str = "data/VLGuard/test";
use crate::judge::DEFAULT_REFERENCE;

/// Thumbnail defaults: the full test set's page (1,000 images, 1,558 answers) measured 8.1
/// MB with them, 9.2 MB with a second engine (`scripts/browse_size.sh`, README), inside
/// the 15 MB budget with room for photos more detailed than the measured ones.
pub const DEFAULT_THUMB_SIZE: usize = 200;
pub const DEFAULT_THUMB_QUALITY: u8 = 75;

#[derive(Debug, clap::Args)]
pub struct BrowseArgs {
    /// Results folder written by `run` (one subfolder per subset).
    #[arg(default_value = "results")]
    pub results: PathBuf,
    /// The engine whose answers to show (`RESULTS/{subset}/ENGINE.json`).
    #[arg(long)]
    pub engine: String,
    /// A second engine shown side by side; rows where exactly one of the two refused are
    /// marked and counted.
    #[arg(long)]
    pub against: Option<String>,
    /// Which subsets to show (`all`: every subset with answers from the engine).
    #[arg(long, value_enum, default_value = "all")]
    pub subset: SubsetArg,
    /// VLGuard test.json [default: the dataset the engine's run manifest records, else
    /// data/VLGuard/test.json].
    #[arg(long)]
    pub meta: Option<PathBuf>,
    /// Image folder [default: the one the engine's run manifest records, else
    /// data/VLGuard/test].
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// GPT-4V reference answers shown beside safe_safes answers [default:
    /// data/VLGuard/gpt4_safe_safes.json, when it is there].
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Refusal keyword list (JSON array of strings); the reference's list by default.
    #[arg(long)]
    pub keywords: Option<PathBuf>,
    /// Output page [default: RESULTS/browse/ENGINE.html, with --against
    /// RESULTS/browse/compare/ENGINE--AGAINST.html].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Longest side of a thumbnail in pixels.
    #[arg(long, default_value_t = DEFAULT_THUMB_SIZE)]
    pub thumb_size: usize,
    /// JPEG quality of the thumbnails, 1 to 100.
    #[arg(long, default_value_t = DEFAULT_THUMB_QUALITY)]
    pub thumb_quality: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid option --{flag}: {reason}")]
    BadOption { flag: &'static str, reason: String },
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::Error),
    #[error(transparent)]
    Keywords(#[from] crate::score::Error),
    #[error(transparent)]
    Journal(#[from] crate::judge::journal::JournalError),
    #[error("no answers file {path} (the subset was asked for with --subset)")]
    NoPredictions { path: PathBuf },
    #[error(
        "no answers from {engine} under {}: expected {{unsafes,safe_unsafes,safe_safes}}/{engine}.json",
        results.display()
    )]
    NoAnswers { results: PathBuf, engine: String },
    #[error(
        "no answer from {engine} under {}: its answers files hold none (an empty subset, or every sample failed: its run manifest says why)",
        results.display()
    )]
    EmptyAnswers { results: PathBuf, engine: String },
    #[error(
        "{}: {} key(s) are not {subset} images of {}: {}",
        path.display(),
        keys.len(),
        meta.display(),
        keys.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
    )]
    UnknownKeys {
        path: PathBuf,
        subset: Subset,
        meta: PathBuf,
        keys: Vec<String>,
    },
    #[error("cannot serialize the page data")]
    Serialize(#[from] serde_json::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The validated configuration every stage reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub results: PathBuf,
    /// The engine, then `--against`.
    pub engines: Vec<String>,
    pub subsets: Vec<Subset>,
    /// A single subset was asked for: the engine's file for it must exist.
    pub subset_named: bool,
    pub meta: PathBuf,
    pub images: PathBuf,
    pub reference: PathBuf,
    /// `--reference` was given: the file must exist.
    pub reference_named: bool,
    pub keywords: KeywordList,
    pub thumbs: ThumbSpec,
    pub out: PathBuf,
}

impl Config {
    pub fn from_args(args: &BrowseArgs) -> Result<Config, Error> {
        let name = |flag: &'static str, text: &str| {
            crate::run::parse_engine_name(text).map_err(|reason| Error::BadOption { flag, reason })
        };
        let mut engines = vec![name("engine", &args.engine)?];
        if let Some(against) = &args.against {
            let against = name("against", against)?;
            if against == engines[0] {
                return Err(Error::BadOption {
                    flag: "against",
                    reason: format!("`{against}` is the engine itself"),
                });
            }
            engines.push(against);
        }
        if args.thumb_size == 0 || args.thumb_size > 4096 {
            return Err(Error::BadOption {
                flag: "thumb-size",
                reason: format!("{} is not from 1 to 4096 pixels", args.thumb_size),
            });
        }
        if !(1..=100).contains(&args.thumb_quality) {
            return Err(Error::BadOption {
                flag: "thumb-quality",
                reason: format!("{} is not from 1 to 100", args.thumb_quality),
            });
        }
        let subsets = args.subset.subsets();
        let manifest = run_manifest(&args.results, &subsets, &engines[0]);
        let recorded = |field: fn(&crate::formats::RunManifest) -> &str| {
            manifest
                .as_ref()
                .map(field)
                .filter(|p| !p.is_empty() && Path::new(p).exists())
                .map(PathBuf::from)
        };
        let meta = args
            .meta
            .clone()
            .or_else(|| recorded(|m| &m.dataset))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_META));
        let images = args
            .images
            .clone()
            .or_else(|| recorded(|m| &m.images))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGES));
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| default_out(&args.results, &engines));
        Ok(Config {
            results: args.results.clone(),
            subset_named: subsets.len() == 1,
            subsets,
            meta,
            images,
            reference_named: args.reference.is_some(),
            reference: args
                .reference
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_REFERENCE)),
            keywords: match &args.keywords {
                Some(path) => KeywordList::from_file(path)?,
                None => KeywordList::reference(),
            },
            thumbs: ThumbSpec {
                max_side: args.thumb_size,
                quality: args.thumb_quality,
            },
            out,
            engines,
        })
    }
}

/// The page's default place: `RESULTS/browse/{engine}.html` (what the leaderboard links
/// to), or `RESULTS/browse/compare/{engine}--{against}.html` for a comparison.
pub fn default_out(results: &Path, engines: &[String]) -> PathBuf {
    let browse = results.join("browse");
    match engines {
        [one] => browse.join(format!("{one}.html")),
        [a, b, ..] => browse.join("compare").join(format!("{a}--{b}.html")),
        [] => browse.join("index.html"),
    }
}

/// An engine's browse page as the leaderboard links to it: `RESULTS/browse/{engine}.html`
/// ([`default_out`]), as a percent-encoded href relative to `from_dir` (the folder of the
/// page that links); `None` when there is no such page.
pub fn page_link(results: &Path, engine: &str, from_dir: &Path) -> Option<String> {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    // Everything but unreserved characters and the path separator is escaped.
    const HREF: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_')
        .remove(b'~');
    let page = default_out(results, &[engine.to_owned()]);
    let page = page.is_file().then(|| page.canonicalize().ok()).flatten()?;
    let from = if from_dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        from_dir
    };
    let from = from
        .canonicalize()
        .or_else(|_| std::path::absolute(from))
        .ok()?;
    let (to, from): (Vec<_>, Vec<_>) = (page.components().collect(), from.components().collect());
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    rel.extend(&to[common..]);
    Some(utf8_percent_encode(rel.to_str()?, HREF).to_string())
}

/// The engine's run manifest of the first subset shown that has one, else of any subset
/// (its dataset and image folder are the defaults for `--meta` and `--images`).
fn run_manifest(
    results: &Path,
    subsets: &[Subset],
    engine: &str,
) -> Option<crate::formats::RunManifest> {
    subsets.iter().chain(&Subset::ALL).find_map(|subset| {
        let path = crate::results::Paths::new(results, subset.name(), engine).manifest;
        path.symlink_metadata().ok()?;
        // One that cannot be read is said, as the leaderboard says it, not passed over.
        crate::formats::RunManifest::read(&path)
            .map_err(|why| {
                let why = why.to_string();
                let why = crate::util::escape_controls(&why);
                eprintln!("warning: {why}; its --meta and --images are not used");
            })
            .ok()
    })
}

/// The page's data with thumbnails: [`collect`], then every image shown made once.
pub fn build(config: &Config) -> Result<PageData, Error> {
    let mut page = collect(config)?;
    let mut images: Vec<&str> = page.rows.iter().map(|r| r.image.as_str()).collect();
    images.sort_unstable();
    images.dedup();
    let (thumbs, failed) = thumbs::thumbnails(&config.images, &images, config.thumbs);
    page.thumbs = thumbs;
    page.problems.extend(
        failed
            .into_iter()
            .map(|(image, reason)| format!("no thumbnail for {image}: {reason}")),
    );
    Ok(page)
}

/// `vlguard-ort browse`: writes the page; exit 1 when something could not be shown (named
/// on stderr and on the page).
pub fn command(args: &BrowseArgs) -> Result<ExitCode, Error> {
    let config = Config::from_args(args)?;
    let page = build(&config)?;
    let html = render(&page)?;
    crate::util::write_atomic(&config.out, html.as_bytes()).map_err(|source| Error::Write {
        path: config.out.clone(),
        source,
    })?;
    for problem in &page.problems {
        eprintln!("warning: {}", crate::util::escape_controls(problem));
    }
    let thumbs_kb = page.thumbs.values().map(|t| t.src.len()).sum::<usize>() / 1024;
    eprintln!(
        "wrote {} ({} rows, {} thumbnails, {} KB of them, {} KB in all)",
        config.out.display(),
        page.rows.len(),
        page.thumbs.len(),
        thumbs_kb,
        html.len() / 1024
    );
    Ok(crate::util::exit_code(page.problems.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_are_relative_to_the_linking_page_and_escaped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let results = dir.path().join("results");
        let engine = "a b#1";
        assert_eq!(page_link(&results, engine, dir.path()), None, "no page yet");
        let page = default_out(&results, &[engine.to_owned()]);
        std::fs::create_dir_all(page.parent().unwrap()).unwrap();
        std::fs::write(&page, "x").unwrap();
        assert_eq!(
            page_link(&results, engine, dir.path()).as_deref(),
            Some("results/browse/a%20b%231.html")
        );
        assert_eq!(
            page_link(&results, engine, &dir.path().join("site/new")).as_deref(),
            Some("../../results/browse/a%20b%231.html")
        );
        assert_eq!(
            page_link(&results, engine, &results).as_deref(),
            Some("browse/a%20b%231.html")
        );
    }
}
