//! One repository file from a `resolve` URL to a verified file on disk.
//!
//! Like huggingface_hub's `hf_hub_download`: a HEAD on the resolve URL (following only
//! relative redirects, i.e. a renamed repo) gives the metadata: `X-Linked-Etag` (LFS:
//! the sha256) or `ETag` (plain git file: the git blob sha1), `X-Linked-Size` or
//! `Content-Length`, and a `Location` to the bytes (the CDN for LFS files). The bytes go to
//! `NAME.incomplete` beside the target; an existing one is resumed with
//! `Range: bytes=N-`. Size and digest are checked while streaming; only a verified file is
//! renamed onto `NAME`. `.fetch-state.json` in the target directory records each verified
//! file's size, etag and modification time, so a rerun skips it after one HEAD; a file
//! found without a record, or changed since (same size, other bytes: its mtime moved), is
//! hashed once instead of downloaded.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::http::{header, redirect_target, status_error, Client, Method, MAX_REDIRECTS};
use super::{io_err, Error};

/// What the Hub says a file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    /// Normalised: no quotes, no `W/`.
    pub etag: String,
    pub expected: Expected,
    /// Where the bytes are (the resolve URL itself, or where it redirects to).
    pub location: String,
    /// `X-Repo-Commit`, when sent.
    pub commit: Option<String>,
}

/// The digest a file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// LFS file: sha256 of the content.
    Sha256(String),
    /// Plain git file: sha1 of `blob {size}\0` + content.
    GitSha1(String),
    /// An etag of another shape (some mirrors): only the size can be checked.
    SizeOnly,
}

impl Expected {
    fn from_etag(etag: &str, linked: bool) -> Expected {
        let hex = |len: usize| etag.len() == len && etag.bytes().all(|b| b.is_ascii_hexdigit());
        if hex(64) {
            Expected::Sha256(etag.to_ascii_lowercase())
        } else if hex(40) && !linked {
            Expected::GitSha1(etag.to_ascii_lowercase())
        } else {
            Expected::SizeOnly
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Expected::Sha256(_) => "sha256",
            Expected::GitSha1(_) => "git blob sha1",
            Expected::SizeOnly => "size",
        }
    }
}

fn normalise_etag(raw: &str) -> String {
    let raw = raw.trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    raw.trim_matches('"').to_string()
}

/// HEAD on a resolve URL, following relative redirects only; metadata from the first
/// answer that is not such a redirect.
pub(crate) fn file_meta(client: &Client, url: &str) -> Result<FileMeta, Error> {
    let mut current = url.to_string();
    for _ in 0..MAX_REDIRECTS {
        let mut resp = client.send(Method::Head, &current, None)?;
        let status = resp.status();
        let target = redirect_target(&current, &resp);
        // Only a relative Location is followed here (huggingface_hub's
        // `follow_relative_redirects`): a renamed repo. An absolute one points at the bytes,
        // and this answer carries their metadata.
        let relative = header(resp.headers(), "location")
            .is_some_and(|l| !l.contains("://") && !l.starts_with("//"));
        if let (Some(next), true) = (&target, relative) {
            current = next.clone();
            continue;
        }
        if !(status.is_success() || status.is_redirection()) {
            return Err(status_error(client, &current, &mut resp));
        }
        let h = resp.headers();
        let linked_etag = header(h, "x-linked-etag");
        let etag = linked_etag
            .or_else(|| header(h, "etag"))
            .map(normalise_etag)
            .ok_or_else(|| Error::BadResponse {
                url: current.clone(),
                what: "no ETag / X-Linked-Etag header: is HF_ENDPOINT a Hugging Face Hub (mirror)?"
                    .into(),
            })?;
        let size = header(h, "x-linked-size")
            .or_else(|| header(h, "content-length"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::BadResponse {
                url: current.clone(),
                what: "no X-Linked-Size / Content-Length header: cannot check the size".into(),
            })?;
        return Ok(FileMeta {
            size,
            expected: Expected::from_etag(&etag, linked_etag.is_some()),
            etag,
            location: target.unwrap_or(current),
            commit: header(h, "x-repo-commit").map(str::to_string),
        });
    }
    Err(Error::BadResponse {
        url: url.to_string(),
        what: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// Streaming digest matching an [`Expected`].
enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
    None,
}

impl Hasher {
    fn new(expected: &Expected, size: u64) -> Hasher {
        match expected {
            Expected::Sha256(_) => Hasher::Sha256(Sha256::new()),
            Expected::GitSha1(_) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(h)
            }
            Expected::SizeOnly => Hasher::None,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::GitSha1(h) => h.update(bytes),
            Hasher::None => {}
        }
    }

    fn finish(self) -> Option<String> {
        use vlguard_export::files::hex;
        match self {
            Hasher::Sha256(h) => Some(hex(&h.finalize())),
            Hasher::GitSha1(h) => Some(hex(&h.finalize())),
            Hasher::None => None,
        }
    }
}

/// The git object id of a file's content, as `git hash-object` prints it.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut h = Hasher::new(&Expected::GitSha1(String::new()), bytes.len() as u64);
    h.update(bytes);
    h.finish().unwrap_or_default()
}

fn check_digest(path: &Path, meta: &FileMeta, got: Option<String>) -> Result<(), Error> {
    let want = match &meta.expected {
        Expected::Sha256(w) | Expected::GitSha1(w) => w,
        Expected::SizeOnly => return Ok(()),
    };
    match got {
        Some(g) if &g == want => Ok(()),
        got => Err(Error::ChecksumMismatch {
            path: path.to_path_buf(),
            algo: meta.expected.name(),
            expected: want.clone(),
            got: got.unwrap_or_default(),
        }),
    }
}

/// Hashes the first `len` bytes of `path` into `hasher`.
fn hash_prefix(path: &Path, len: u64, hasher: &mut Hasher) -> Result<(), Error> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// One verified file record in `.fetch-state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub size: u64,
    pub etag: String,
    /// Modification time of the file as verified (ns since the epoch); absent in older
    /// records, which are then hashed once more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i128>,
}

/// A file's modification time in ns since the epoch.
fn mtime_ns(meta: &std::fs::Metadata) -> Option<i128> {
    use std::os::unix::fs::MetadataExt;
    Some(i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()))
}

/// `.fetch-state.json`: what earlier runs verified in a target directory.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub files: BTreeMap<String, Verified>,
    /// Archive name -> etag of the archive that was unpacked.
    #[serde(default)]
    pub unpacked: BTreeMap<String, String>,
}

pub const STATE_FILE: &str = ".fetch-state.json";

impl State {
    pub fn load(dir: &Path) -> State {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                eprintln!(
                    "fetch: ignoring unreadable {} ({e}); files will be re-checked",
                    path.display()
                );
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::util::write_atomic(&path, text.as_bytes())
            .map_err(|source| Error::Io { path, source })
    }
}

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Already there and verified; nothing downloaded.
    Present,
    /// Downloaded this many bytes (less than the size when resumed) and verified.
    Downloaded(u64),
}

fn incomplete_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".incomplete");
    dest.with_file_name(name)
}

/// Makes `dest` hold the verified content of the repo file at `resolve_url`.
/// `key` names the file in `state` (its repo path).
pub(crate) fn fetch_file(
    client: &Client,
    resolve_url: &str,
    dest: &Path,
    key: &str,
    state: &mut State,
) -> Result<(Done, FileMeta), Error> {
    let meta = client.with_retries(|_| file_meta(client, resolve_url))?;
    let done = fetch_with(client, &meta, dest, key, state, |attempt| {
        // A fresh HEAD after a failure: CDN links are signed and expire.
        if attempt == 1 {
            Ok(meta.clone())
        } else {
            file_meta(client, resolve_url)
        }
    })?;
    Ok((done, meta))
}

/// Makes `dest` hold the file `meta` describes, its size and digest known beforehand (a
/// package index lists them): resumed, verified and recorded like [`fetch_file`].
pub(crate) fn fetch_known(
    client: &Client,
    meta: &FileMeta,
    dest: &Path,
    key: &str,
    state: &mut State,
) -> Result<Done, Error> {
    fetch_with(client, meta, dest, key, state, |_| Ok(meta.clone()))
}

/// The verified-or-download logic of [`fetch_file`] and [`fetch_known`]: `refresh` gives
/// the metadata for try number N (1-based).
fn fetch_with(
    client: &Client,
    meta: &FileMeta,
    dest: &Path,
    key: &str,
    state: &mut State,
    mut refresh: impl FnMut(u32) -> Result<FileMeta, Error>,
) -> Result<Done, Error> {
    let record = |md: Option<std::fs::Metadata>| Verified {
        size: meta.size,
        etag: meta.etag.clone(),
        mtime_ns: md.as_ref().and_then(mtime_ns),
    };

    // A rerun: trust our own record when the file on disk is as it was verified (size
    // and modification time); otherwise hash what is there once rather than download it
    // again.
    if let Ok(md) = std::fs::metadata(dest) {
        if md.is_file() && md.len() == meta.size {
            let record = record(Some(md));
            if state.files.get(key) == Some(&record) {
                return Ok(Done::Present);
            }
            let mut hasher = Hasher::new(&meta.expected, meta.size);
            hash_prefix(dest, meta.size, &mut hasher)?;
            if check_digest(dest, meta, hasher.finish()).is_ok() {
                state.files.insert(key.to_string(), record);
                return Ok(Done::Present);
            }
        }
    }

    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let partial = incomplete_path(dest);
    let mut fetched: u64 = 0;
    client.with_retries(|attempt| {
        let meta_now = refresh(attempt)?;
        if meta_now.etag != meta.etag || meta_now.size != meta.size {
            // The file changed upstream between tries: start over on the new one.
            let _ = std::fs::remove_file(&partial);
            return Err(Error::BadResponse {
                url: meta.location.clone(),
                what: "the file changed on the server during the download; rerun".into(),
            });
        }
        transfer(client, &meta_now, dest, &partial, &mut fetched)
    })?;
    state
        .files
        .insert(key.to_string(), record(std::fs::metadata(dest).ok()));
    Ok(Done::Downloaded(fetched))
}

/// One try: resume `partial`, verify, rename onto `dest`.
fn transfer(
    client: &Client,
    meta: &FileMeta,
    dest: &Path,
    partial: &Path,
    fetched: &mut u64,
) -> Result<(), Error> {
    let mut start = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if start > meta.size {
        start = 0;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(partial)
        .map_err(io_err(partial))?;
    let mut hasher = Hasher::new(&meta.expected, meta.size);
    let url = if start < meta.size {
        let (resp, url, from) = request_from(client, meta, start, &file, partial)?;
        file.set_len(from).map_err(io_err(partial))?;
        file.seek(std::io::SeekFrom::Start(from))
            .map_err(io_err(partial))?;
        hash_prefix(partial, from, &mut hasher)?;
        let bar = progress_bar(client, dest, meta.size);
        bar.set_position(from);
        let body = Body {
            url: &url,
            dest,
            partial,
            meta,
            bar: &bar,
        };
        let streamed = body.stream(resp, &mut file, from, &mut hasher, fetched);
        bar.finish_and_clear();
        if let Err(e) = streamed {
            if matches!(e, Error::SizeMismatch { .. }) {
                drop(file);
                let _ = std::fs::remove_file(partial);
            }
            return Err(e);
        }
        start = from;
        url
    } else {
        // A complete partial from an earlier run: verify it as it is.
        hash_prefix(partial, meta.size, &mut hasher)?;
        meta.location.clone()
    };
    if let Err(e) = check_digest(dest, meta, hasher.finish()) {
        drop(file);
        let _ = std::fs::remove_file(partial);
        if start > 0 {
            // A stale partial from an earlier run may be the culprit: one fresh try.
            return Err(Error::Transfer {
                url,
                detail: format!("{e}; downloading from the start"),
                attempts: 1,
            });
        }
        return Err(e);
    }
    file.sync_all().map_err(io_err(partial))?;
    drop(file);
    std::fs::rename(partial, dest).map_err(io_err(dest))?;
    Ok(())
}

/// GET of `meta.location` from byte `start` (following redirects): the response, the URL
/// that answered and the byte its body starts at (0 when the server ignored the range). A
/// range the server got wrong or refused empties `file` (the partial) for the next try.
fn request_from(
    client: &Client,
    meta: &FileMeta,
    start: u64,
    file: &File,
    partial: &Path,
) -> Result<(ureq::http::Response<ureq::Body>, String, u64), Error> {
    let mut url = meta.location.clone();
    let mut resp = None;
    for _ in 0..MAX_REDIRECTS {
        let r = client.send(Method::Get, &url, (start > 0).then_some(start))?;
        match redirect_target(&url, &r) {
            Some(next) => url = next,
            None => {
                resp = Some(r);
                break;
            }
        }
    }
    let Some(mut resp) = resp else {
        return Err(Error::BadResponse {
            url,
            what: format!("more than {MAX_REDIRECTS} redirects"),
        });
    };
    let from = match resp.status().as_u16() {
        206 => {
            let range_start = header(resp.headers(), "content-range")
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if range_start != Some(start) {
                file.set_len(0).map_err(io_err(partial))?;
                return Err(Error::Transfer {
                    url,
                    detail: format!("asked for bytes from {start}, got range {range_start:?}"),
                    attempts: 1,
                });
            }
            start
        }
        200 => 0, // range ignored: the whole file comes again
        416 => {
            file.set_len(0).map_err(io_err(partial))?;
            return Err(Error::Transfer {
                url,
                detail: format!("the server refused to resume at byte {start}"),
                attempts: 1,
            });
        }
        401 | 403 if !client.is_hub(&url) => {
            // A signed CDN link that expired or was refused: the next try asks the
            // Hub for a fresh one; the token has nothing to do with it.
            return Err(Error::Transfer {
                url,
                detail: format!("the download link was refused (HTTP {})", resp.status()),
                attempts: 1,
            });
        }
        _ => return Err(status_error(client, &url, &mut resp)),
    };
    Ok((resp, url, from))
}

/// Where a response body goes: the partial file of `dest`, hashed on the way.
struct Body<'a> {
    url: &'a str,
    dest: &'a Path,
    partial: &'a Path,
    meta: &'a FileMeta,
    bar: &'a ProgressBar,
}

impl Body<'_> {
    /// Appends the body to `file` (which holds `from` bytes), never past the declared
    /// size; an early end is a transfer error for the next try to resume.
    fn stream(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        file: &mut File,
        from: u64,
        hasher: &mut Hasher,
        fetched: &mut u64,
    ) -> Result<(), Error> {
        let transfer_err = |detail: String| Error::Transfer {
            url: self.url.to_string(),
            detail,
            attempts: 1,
        };
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut have = from;
        let result = loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) => break Err(transfer_err(e.to_string())),
            };
            if have + n as u64 > self.meta.size {
                break Err(Error::SizeMismatch {
                    path: self.dest.to_path_buf(),
                    expected: self.meta.size,
                    got: have + n as u64,
                });
            }
            file.write_all(&buf[..n]).map_err(io_err(self.partial))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            *fetched += n as u64;
            self.bar.set_position(have);
        };
        file.flush().map_err(io_err(self.partial))?;
        result?;
        if have < self.meta.size {
            return Err(transfer_err(format!(
                "connection closed after {have} of {} bytes",
                self.meta.size
            )));
        }
        Ok(())
    }
}

fn progress_bar(client: &Client, dest: &Path, size: u64) -> ProgressBar {
    if !client.policy.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:30!} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec:>12} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_matches_git() {
        // Expected values: `printf 'hello\n' | git hash-object --stdin` and
        // `git hash-object /dev/null` (the well-known empty blob id).
        assert_eq!(
            git_blob_sha1(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(
            git_blob_sha1(b""),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
    }

    #[test]
    fn etags_pick_the_digest() {
        let sha256 = "a".repeat(64);
        let sha1 = "b".repeat(40);
        assert_eq!(
            Expected::from_etag(&normalise_etag(&format!("\"{sha256}\"")), true),
            Expected::Sha256(sha256.clone())
        );
        assert_eq!(
            Expected::from_etag(&normalise_etag(&format!("W/\"{sha1}\"")), false),
            Expected::GitSha1(sha1)
        );
        assert_eq!(Expected::from_etag("xyz-12", false), Expected::SizeOnly);
    }
}
