//! Dataset and checkpoint downloads from the Hugging Face Hub: resumable and verified.
//!
//! `fetch dataset` brings the VLGuard dataset repo (`test.json`, `test.zip`, and
//! `train.json`, `train.zip` with `--with-train`) into `data/VLGuard`, unpacks each zip to
//! the folder `run` reads (`data/VLGuard/test/<category>/<file>`), checks that every image
//! `test.json` names is there, and adds the GPT-4V reference answers for the judge
//! (`gpt4_safe_safes.json`, from the VLGuard GitHub repository), checked to list exactly the
//! safe images of `test.json` in order (558 for the published set).
//! `fetch model REPO` brings every file of a model repo (or those matching `--include`).
//!
//! The Hub's conventions, as huggingface_hub follows them: `HF_ENDPOINT` (a mirror) and
//! `HF_TOKEN` (gated repos; sent only to the Hub's own origin, never to a CDN or GitHub,
//! never printed); the file list and the commit from `/api/{models|datasets}/REPO/revision/REV`,
//! then each file from `/{datasets/}REPO/resolve/COMMIT/PATH` (pinned to that commit, so a
//! push during the download cannot mix versions). Per-file guarantees are in [`download`];
//! unpacking guarantees in [`unzip`]. A rerun downloads nothing that is already verified.
//! Errors say what failed and what to do: 401/403 -> set HF_TOKEN / accept the terms,
//! 404 -> check the repo id and revision, no connection -> which host.

mod download;
mod glob;
mod http;
pub mod unzip;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub use download::{git_blob_sha1, Done, Expected, FileMeta, State, Verified, STATE_FILE};
pub use glob::Pattern;
pub use http::{Policy, Token};
pub use unzip::{unpack, Unpacked, UnzipLimits};

pub(crate) use download::fetch_known;
pub(crate) use http::{header, resolve, status_error, Client, Method};

use crate::formats::{ReadError, ReferenceItem, TestEntry};

/// The public Hub, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The GPT-4V reference answers in the VLGuard GitHub repository (not on the Hub).
pub const DEFAULT_REFERENCE_URL: &str =
    "https://raw.githubusercontent.com/ys-zong/VLGuard/main/data/gpt4_safe_safes.json";
/// Name of the reference answers inside the dataset folder.
pub const REFERENCE_FILE: &str = "gpt4_safe_safes.json";

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    #[command(subcommand)]
    pub what: FetchWhat,
    /// Hub address; set it to use a mirror.
    #[arg(long, env = "HF_ENDPOINT", default_value = DEFAULT_ENDPOINT, global = true)]
    pub endpoint: String,
    /// Tries per request and per file before giving up (a dropped transfer resumes).
    #[arg(long, default_value_t = 5, global = true)]
    pub attempts: u32,
    /// No progress bars.
    #[arg(long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum FetchWhat {
    /// The VLGuard test set (and train set with --with-train) plus GPT-4V reference answers.
    /// Gated on the Hub: accept its terms on the dataset page and set HF_TOKEN.
    Dataset {
        /// Folder to fill (the layout `run` reads by default).
        #[arg(long, default_value = "data/VLGuard")]
        to: PathBuf,
        /// Dataset repository on the Hub.
        #[arg(long, default_value = "ys-zong/VLGuard")]
        repo: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Also fetch and unpack train.json and train.zip.
        #[arg(long)]
        with_train: bool,
        /// Where the GPT-4V reference answers (gpt4_safe_safes.json) come from.
        #[arg(long, default_value = DEFAULT_REFERENCE_URL)]
        reference_url: String,
    },
    /// Every file of a model repository (HF_TOKEN for gated or private ones).
    Model {
        /// Repository id, e.g. liuhaotian/llava-v1.5-7b.
        repo: String,
        /// Branch, tag or commit.
        #[arg(long, default_value = "main")]
        revision: String,
        /// Folder to fill [default: checkpoints/REPO].
        #[arg(long)]
        to: Option<PathBuf>,
        /// Only files matching this pattern (fnmatch: `*` crosses `/`); repeatable, e.g.
        /// --include '*.safetensors' --include '*.json' --include tokenizer.model
        #[arg(long)]
        include: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url}: HTTP {status}{server}: {}", denied_hint(*.token_set))]
    Denied {
        url: String,
        status: u16,
        server: String,
        token_set: bool,
    },
    #[error("{url}: HTTP 404 not found{server}: check the repo id and --revision")]
    NotFound { url: String, server: String },
    #[error("{url}: HTTP {status}{server}")]
    Status {
        url: String,
        status: u16,
        server: String,
    },
    #[error("cannot reach {host} ({detail}) after {}: check the network connection, or point {via} at a reachable mirror", tries(*.attempts))]
    Unreachable {
        host: String,
        detail: String,
        attempts: u32,
        /// The setting that names the unreachable host: `HF_ENDPOINT (--endpoint)` for the
        /// Hub and its file CDN, `--reference-url` for the reference answers.
        via: &'static str,
    },
    #[error("{url}: transfer failed after {} ({detail}); rerun to resume from the partial file", tries(*.attempts))]
    Transfer {
        url: String,
        detail: String,
        attempts: u32,
    },
    #[error("{url}: {what}")]
    BadResponse { url: String, what: String },
    #[error("{}: {got} bytes, the server says {expected}; the download was deleted, rerun to fetch it again", .path.display())]
    SizeMismatch {
        path: PathBuf,
        expected: u64,
        got: u64,
    },
    #[error("{}: {algo} is {got}, the server says {expected}; the download was deleted, rerun to fetch it again (if this repeats, the server sends a different file than it lists)", .path.display())]
    ChecksumMismatch {
        path: PathBuf,
        algo: &'static str,
        expected: String,
        got: String,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{repo}@{revision} has no {missing}; it has: {present}. Check --repo and --revision")]
    MissingFiles {
        repo: String,
        revision: String,
        missing: String,
        present: String,
    },
    #[error("no file of {repo} matches --include {patterns:?}; its files: {present}")]
    NothingIncluded {
        repo: String,
        patterns: Vec<String>,
        present: String,
    },
    #[error("--include {pattern:?}: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("{repo}: the file list names {path:?}, which {reason}; refusing to write it")]
    UnsafeRepoPath {
        repo: String,
        path: String,
        reason: String,
    },
    #[error("{}: {message}; delete it and rerun the fetch to download it again", .archive.display())]
    CorruptArchive { archive: PathBuf, message: String },
    #[error("{}: entry {entry:?} {reason}; refusing to unpack this archive", .archive.display())]
    UnsafeArchive {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("{}: {what} exceeds the limit of {limit}; refusing to unpack this archive", .archive.display())]
    ArchiveTooLarge {
        archive: PathBuf,
        what: String,
        limit: String,
    },
    #[error(transparent)]
    BadDatasetFile(#[from] ReadError),
    #[error("{}: {missing} of {total} images named in {} are missing after unpacking (first: {first}); the archive does not match the json", .dir.display(), .json.display())]
    ImagesMissing {
        dir: PathBuf,
        json: PathBuf,
        missing: usize,
        total: usize,
        first: String,
    },
    #[error("reference answers from {url}: {message}; pass --reference-url with the right file")]
    BadReference { url: String, message: String },
    #[error("HF_ENDPOINT / --endpoint {0:?} must start with http:// or https://")]
    BadEndpoint(String),
}

/// `map_err` for an I/O failure on `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { path, source }
}

/// What points at the Hub (and at the CDN its file links redirect to).
const VIA_ENDPOINT: &str = "HF_ENDPOINT (--endpoint)";

/// `1 try`, `3 tries`.
fn tries(n: u32) -> String {
    if n == 1 {
        "1 try".into()
    } else {
        format!("{n} tries")
    }
}

fn denied_hint(token_set: bool) -> &'static str {
    if token_set {
        "HF_TOKEN is set but has no access: accept the repo's terms on its Hub page with the same account, or use a token with read access"
    } else {
        "the repo is gated or private: accept its terms on its Hub page, then set HF_TOKEN to a read token (https://huggingface.co/settings/tokens)"
    }
}

impl Error {
    /// Whether another try could succeed.
    fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Transfer { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }

    fn with_attempts(mut self, n: u32) -> Error {
        if let Error::Unreachable { attempts, .. } | Error::Transfer { attempts, .. } = &mut self {
            *attempts = n;
        }
        self
    }

    /// What one failed try met, for a retry line: the error without the count of tries
    /// and the advice its final form gives.
    fn brief(&self) -> String {
        match self {
            Error::Unreachable { host, detail, .. } => format!("cannot reach {host} ({detail})"),
            Error::Transfer { url, detail, .. } => format!("{url}: transfer failed ({detail})"),
            other => other.to_string(),
        }
    }
}

/// Model or dataset repository: they live under different URL prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

impl RepoKind {
    fn api(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }

    fn url_prefix(self) -> &'static str {
        match self {
            RepoKind::Model => "",
            RepoKind::Dataset => "datasets/",
        }
    }
}

/// A repository at one commit, as the Hub lists it.
#[derive(Debug, Clone)]
pub struct RepoListing {
    pub commit: String,
    pub files: Vec<String>,
}

/// A Hub (or mirror) to fetch from.
pub struct Hub {
    endpoint: String,
    client: Client,
}

impl Hub {
    /// `endpoint` like `https://huggingface.co`; `token` sent to that origin only.
    pub fn new(endpoint: &str, token: Option<Token>, policy: Policy) -> Result<Hub, Error> {
        let endpoint = endpoint.trim().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(Error::BadEndpoint(endpoint));
        }
        let client = Client::new(token, &endpoint, policy);
        Ok(Hub { endpoint, client })
    }

    /// The file list and commit of `repo` at `revision`
    /// (`GET /api/{models|datasets}/REPO/revision/REV`, huggingface_hub's `repo_info`).
    pub fn list(&self, kind: RepoKind, repo: &str, revision: &str) -> Result<RepoListing, Error> {
        let url = format!(
            "{}/api/{}/{}/revision/{}",
            self.endpoint,
            kind.api(),
            repo,
            quote(revision, false)
        );
        let (final_url, mut resp) = self.client.with_retries(|_| {
            let (u, mut r) = self.client.send_following(Method::Get, &url)?;
            if !r.status().is_success() {
                return Err(status_error(&self.client, &u, &mut r));
            }
            Ok((u, r))
        })?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| Error::Transfer {
                url: final_url.clone(),
                detail: e.to_string(),
                attempts: 1,
            })?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Error::BadResponse {
                url: final_url.clone(),
                what: format!("not the Hub's repo JSON: {e}"),
            })?;
        let bad = |what: &str| Error::BadResponse {
            url: final_url.clone(),
            what: what.to_string(),
        };
        let commit = value
            .get("sha")
            .and_then(|s| s.as_str())
            .ok_or_else(|| bad("no \"sha\" (commit) in the repo JSON"))?
            .to_string();
        let files = value
            .get("siblings")
            .and_then(|s| s.as_array())
            .ok_or_else(|| bad("no \"siblings\" (file list) in the repo JSON"))?
            .iter()
            .map(|s| {
                s.get("rfilename")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
                    .ok_or_else(|| bad("a sibling without \"rfilename\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RepoListing { commit, files })
    }

    /// The resolve URL of `path` in `repo` at `revision`.
    pub fn resolve_url(&self, kind: RepoKind, repo: &str, revision: &str, path: &str) -> String {
        format!(
            "{}/{}{}/resolve/{}/{}",
            self.endpoint,
            kind.url_prefix(),
            repo,
            quote(revision, false),
            quote(path, true)
        )
    }
}

/// One repository being fetched into one directory: what it lists, what is verified
/// there, what this run did.
struct Session<'a> {
    hub: &'a Hub,
    kind: RepoKind,
    repo: &'a str,
    listing: RepoListing,
    dir: &'a Path,
    state: State,
    outcome: Outcome,
}

impl<'a> Session<'a> {
    fn new(
        hub: &'a Hub,
        kind: RepoKind,
        repo: &'a str,
        revision: &str,
        dir: &'a Path,
    ) -> Result<Self, Error> {
        let listing = hub.list(kind, repo, revision)?;
        Ok(Session {
            hub,
            kind,
            repo,
            outcome: Outcome {
                commit: listing.commit.clone(),
                ..Outcome::default()
            },
            listing,
            dir,
            state: State::load(dir),
        })
    }

    /// Fetches `path` of the listed commit into `dir/path`, recording it in the state file.
    fn fetch(&mut self, path: &str) -> Result<FileMeta, Error> {
        let rel = unzip::safe_relative_path(path).map_err(|reason| Error::UnsafeRepoPath {
            repo: self.repo.to_string(),
            path: path.to_string(),
            reason: reason.to_string(),
        })?;
        let url = self
            .hub
            .resolve_url(self.kind, self.repo, &self.listing.commit, path);
        let dest = self.dir.join(rel);
        let (done, meta) =
            download::fetch_file(&self.hub.client, &url, &dest, path, &mut self.state)?;
        self.state.save(self.dir)?;
        match done {
            Done::Present => {
                eprintln!("fetch: {path}: already verified ({} bytes)", meta.size);
                self.outcome.verified.push(path.to_string());
            }
            Done::Downloaded(n) => {
                eprintln!(
                    "fetch: {path}: {} bytes, {} checked",
                    meta.size,
                    meta.expected.name()
                );
                self.outcome.downloaded.push(path.to_string());
                self.outcome.bytes += n;
            }
        }
        Ok(meta)
    }
}

/// What Python's `urllib.parse.quote(text, safe="")` leaves as it is: letters, digits and
/// `-._~`; everything else is `%XX`.
const URLLIB_QUOTED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes like Python's `urllib.parse.quote` (`safe="/"` when `keep_slash`).
fn quote(text: &str, keep_slash: bool) -> String {
    const PATH: &AsciiSet = &URLLIB_QUOTED.remove(b'/');
    utf8_percent_encode(text, if keep_slash { PATH } else { URLLIB_QUOTED }).to_string()
}

/// What a fetch did, for the summary and for tests.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub commit: String,
    /// Repo paths downloaded (fully or resumed) this run.
    pub downloaded: Vec<String>,
    /// Repo paths found already verified.
    pub verified: Vec<String>,
    /// Bytes received this run.
    pub bytes: u64,
    /// Archives unpacked this run.
    pub unpacked: Vec<String>,
    /// Whether the reference answers were downloaded this run.
    pub reference_downloaded: bool,
}

/// `fetch dataset`, validated.
#[derive(Debug, Clone)]
pub struct DatasetRequest {
    pub repo: String,
    pub revision: String,
    pub to: PathBuf,
    pub with_train: bool,
    pub reference_url: String,
}

/// `fetch model`, validated.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub repo: String,
    pub revision: String,
    pub to: PathBuf,
    pub include: Vec<String>,
}

/// Brings the VLGuard dataset into `req.to`; see the module contract.
pub fn fetch_dataset(hub: &Hub, req: &DatasetRequest) -> Result<Outcome, Error> {
    let mut session = Session::new(hub, RepoKind::Dataset, &req.repo, &req.revision, &req.to)?;
    let splits: &[&str] = if req.with_train {
        &["test", "train"]
    } else {
        &["test"]
    };
    let wanted: Vec<String> = splits
        .iter()
        .flat_map(|s| [format!("{s}.json"), format!("{s}.zip")])
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|w| !session.listing.files.contains(w))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingFiles {
            repo: req.repo.clone(),
            revision: req.revision.clone(),
            missing: missing.join(", "),
            present: session.listing.files.join(", "),
        });
    }

    for split in splits {
        let json_name = format!("{split}.json");
        let zip_name = format!("{split}.zip");
        session.fetch(&json_name)?;
        let zip_meta = session.fetch(&zip_name)?;
        let json_path = req.to.join(&json_name);
        let images = dataset_images(&json_path)?;
        let image_dir = req.to.join(split);
        // Unpacked by an earlier run from this very archive and still complete: keep it.
        let unpacked_before = session.state.unpacked.get(&zip_name) == Some(&zip_meta.etag)
            && check_images(&json_path, &image_dir, &images).is_ok();
        if !unpacked_before {
            let archive = req.to.join(&zip_name);
            eprintln!("fetch: unpacking {} ...", archive.display());
            let summary = unpack(&archive, &image_dir, &hub.client.policy.unzip)?;
            eprintln!(
                "fetch: {zip_name}: {} files, {} bytes -> {}",
                summary.files,
                summary.bytes,
                image_dir.display()
            );
            session
                .state
                .unpacked
                .insert(zip_name.clone(), zip_meta.etag);
            session.state.save(&req.to)?;
            session.outcome.unpacked.push(zip_name);
        }
        check_images(&json_path, &image_dir, &images)?;
    }

    session.outcome.reference_downloaded = fetch_reference(hub, req)?;
    Ok(session.outcome)
}

/// `(image, safe)` of every entry of a VLGuard json.
fn dataset_images(path: &Path) -> Result<Vec<(String, bool)>, Error> {
    let entries: Vec<TestEntry> = crate::formats::read(path, "a VLGuard dataset json")?;
    Ok(entries.into_iter().map(|e| (e.image, e.safe)).collect())
}

fn check_images(json: &Path, dir: &Path, images: &[(String, bool)]) -> Result<(), Error> {
    let missing: Vec<&str> = images
        .iter()
        .map(|(image, _)| image.as_str())
        .filter(|image| {
            unzip::safe_relative_path(image).map_or(true, |rel| !dir.join(rel).is_file())
        })
        .collect();
    match missing.first() {
        None => Ok(()),
        Some(first) => Err(Error::ImagesMissing {
            dir: dir.to_path_buf(),
            json: json.to_path_buf(),
            missing: missing.len(),
            total: images.len(),
            first: (*first).to_string(),
        }),
    }
}

/// Checks the reference answers: a JSON array of objects with string `image`,
/// `instruction` and `response`, whose images are exactly the safe images of `test.json`
/// in the same order (the judge pairs them by image).
fn validate_reference(bytes: &[u8], safe_images: &[&str]) -> Result<usize, String> {
    let items: Vec<ReferenceItem> =
        serde_json::from_slice(bytes).map_err(|e| format!("not {}: {e}", ReferenceItem::WHAT))?;
    if items.len() != safe_images.len() {
        return Err(format!(
            "{} items, but test.json has {} safe images",
            items.len(),
            safe_images.len()
        ));
    }
    for (i, (item, want)) in items.iter().zip(safe_images).enumerate() {
        if item.image != *want {
            return Err(format!(
                "item {i} is image {:?}, test.json's safe image {i} is {want:?}",
                item.image
            ));
        }
    }
    Ok(items.len())
}

/// Downloads the reference answers unless a valid copy is there; true when downloaded.
fn fetch_reference(hub: &Hub, req: &DatasetRequest) -> Result<bool, Error> {
    let images = dataset_images(&req.to.join("test.json"))?;
    let safe: Vec<&str> = images
        .iter()
        .filter(|(_, safe)| *safe)
        .map(|(image, _)| image.as_str())
        .collect();
    let dest = req.to.join(REFERENCE_FILE);
    if let Ok(bytes) = std::fs::read(&dest) {
        if validate_reference(&bytes, &safe).is_ok() {
            eprintln!("fetch: {REFERENCE_FILE}: already there and valid");
            return Ok(false);
        }
    }
    let bytes = hub
        .client
        .with_retries(|_| {
            let (url, mut resp) = hub.client.send_following(Method::Get, &req.reference_url)?;
            if !resp.status().is_success() {
                return Err(status_error(&hub.client, &url, &mut resp));
            }
            resp.body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_vec()
                .map_err(|e| Error::Transfer {
                    url,
                    detail: e.to_string(),
                    attempts: 1,
                })
        })
        .map_err(|mut e| {
            // Not the Hub: the reference answers come from wherever --reference-url says.
            if let Error::Unreachable { via, .. } = &mut e {
                *via = "--reference-url";
            }
            e
        })?;
    let count = validate_reference(&bytes, &safe).map_err(|message| Error::BadReference {
        url: req.reference_url.clone(),
        message,
    })?;
    crate::util::write_atomic(&dest, &bytes).map_err(io_err(&dest))?;
    eprintln!("fetch: {REFERENCE_FILE}: {count} reference answers");
    Ok(true)
}

/// Brings the files of a model repo into `req.to`.
pub fn fetch_model(hub: &Hub, req: &ModelRequest) -> Result<Outcome, Error> {
    let patterns = req
        .include
        .iter()
        .map(|p| {
            Pattern::new(p).map_err(|message| Error::BadPattern {
                pattern: p.clone(),
                message,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut session = Session::new(hub, RepoKind::Model, &req.repo, &req.revision, &req.to)?;
    let chosen: Vec<String> = session
        .listing
        .files
        .iter()
        .filter(|f| patterns.is_empty() || patterns.iter().any(|p| p.matches(f)))
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(Error::NothingIncluded {
            repo: req.repo.clone(),
            patterns: req.include.clone(),
            present: session.listing.files.join(", "),
        });
    }
    for path in &chosen {
        session.fetch(path)?;
    }
    Ok(session.outcome)
}

/// `vlguard-ort fetch`: validate, fetch, print a summary.
pub fn command(args: &FetchArgs) -> Result<ExitCode, Error> {
    let policy = Policy {
        attempts: args.attempts.max(1),
        progress: !args.quiet,
        ..Policy::default()
    };
    let token = std::env::var("HF_TOKEN").ok().and_then(Token::new);
    let hub = Hub::new(&args.endpoint, token, policy)?;
    match &args.what {
        FetchWhat::Dataset {
            to,
            repo,
            revision,
            with_train,
            reference_url,
        } => {
            let req = DatasetRequest {
                repo: repo.clone(),
                revision: revision.clone(),
                to: to.clone(),
                with_train: *with_train,
                reference_url: reference_url.clone(),
            };
            let outcome = fetch_dataset(&hub, &req)?;
            print_summary(&format!("dataset {repo}"), &req.to, &outcome);
        }
        FetchWhat::Model {
            repo,
            revision,
            to,
            include,
        } => {
            let req = ModelRequest {
                repo: repo.clone(),
                revision: revision.clone(),
                to: to
                    .clone()
                    .unwrap_or_else(|| Path::new("checkpoints").join(repo)),
                include: include.clone(),
            };
            let outcome = fetch_model(&hub, &req)?;
            print_summary(&format!("model {repo}"), &req.to, &outcome);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(what: &str, to: &Path, outcome: &Outcome) {
    println!(
        "{what} @ {} -> {}: {} downloaded ({} bytes), {} already verified{}{}",
        outcome.commit,
        to.display(),
        outcome.downloaded.len(),
        outcome.bytes,
        outcome.verified.len(),
        if outcome.unpacked.is_empty() {
            String::new()
        } else {
            format!(", unpacked {}", outcome.unpacked.join(", "))
        },
        if outcome.reference_downloaded {
            format!(", {REFERENCE_FILE} downloaded")
        } else {
            String::new()
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_like_urllib() {
        // Expected values: Python `urllib.parse.quote("refs/pr/1", safe="")` and
        // `quote("dir/a b+c.json")`.
        assert_eq!(quote("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(quote("dir/a b+c.json", true), "dir/a%20b%2Bc.json");
    }

    #[test]
    fn reference_must_list_the_safe_images_in_order() {
        let good = br#"[{"image":"a.png","instruction":"q","response":"r"},
                        {"image":"b.png","instruction":"q","response":"r"}]"#;
        assert_eq!(validate_reference(good, &["a.png", "b.png"]), Ok(2));
        assert!(validate_reference(good, &["b.png", "a.png"]).is_err());
        assert!(validate_reference(good, &["a.png"]).is_err());
        assert!(validate_reference(br#"[{"image":"a.png"}]"#, &["a.png"]).is_err());
        assert!(validate_reference(b"{}", &[]).is_err());
    }

    #[test]
    fn the_real_reference_answers_pass_validation() {
        // The fetched test.json and VLGuard's gpt4_safe_safes.json (tests/data/vlguard).
        let Some(test_json) = crate::test_data::fetched_test_json() else {
            return;
        };
        let images = dataset_images(&test_json).expect("test.json parses");
        let safe: Vec<&str> = images
            .iter()
            .filter(|(_, s)| *s)
            .map(|(i, _)| i.as_str())
            .collect();
        let reference = crate::test_data::repo_file("tests/data/vlguard").join(REFERENCE_FILE);
        let bytes = std::fs::read(reference).expect("reference file");
        // 558 = the safe_safes count in REFERENCE.md.
        assert_eq!(validate_reference(&bytes, &safe), Ok(558));
    }
}
