//! A local stand-in for the Hugging Face Hub on 127.0.0.1, laid out like the real one:
//! `/api/{models|datasets}/REPO/revision/REV` (repo JSON with `sha` and `siblings`),
//! `/{datasets/}REPO/resolve/REV/PATH` (plain files: 200 with the git blob sha1 as ETag;
//! LFS files: 302 to a separate "CDN" listener with `X-Linked-Etag` = sha256 and
//! `X-Linked-Size`), byte ranges (206 / 416), `X-Error-Code` on 401/404, plus static routes
//! (the GitHub raw file, a package index's pages, with a Content-Type when set). Faults on demand: a connection dropped mid-body (once), a wrong
//! advertised digest, a 500 forever, a required token. Every request is logged.
//! One request per connection (`Connection: close`), one thread per connection.

#![allow(dead_code)] // each test file uses a different part of this helper

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

#[path = "../common/http_head.rs"]
mod http_head;
use http_head::read_head;

pub struct RepoFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub lfs: bool,
}

pub struct Repo {
    /// "models" or "datasets".
    pub kind: &'static str,
    pub id: String,
    pub commit: String,
    pub files: Vec<RepoFile>,
}

#[derive(Default)]
pub struct Faults {
    /// Repo path -> close the connection after this many body bytes, on the next body
    /// response for that file only.
    pub drop_after: HashMap<String, usize>,
    /// Repo paths whose advertised digest is wrong.
    pub wrong_digest: HashSet<String>,
    /// Repo paths whose body requests always answer 500.
    pub always_500: HashSet<String>,
    /// When set, Hub routes (not the CDN) want `Authorization: Bearer <this>`.
    pub require_token: Option<String>,
    /// (old id, new id): requests naming the old id get a 307 with a relative Location,
    /// as the Hub answers for a renamed repo.
    pub renamed: Option<(String, String)>,
}

#[derive(Clone, Debug)]
pub struct Logged {
    /// "hub" or "cdn".
    pub listener: &'static str,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    pub status: u16,
    /// Body bytes sent (fewer than the body when a drop was injected).
    pub body_bytes: usize,
}

struct Inner {
    repos: Vec<Repo>,
    statics: HashMap<String, Vec<u8>>,
    /// Static path -> its `Content-Type` (none sent otherwise).
    content_types: HashMap<String, String>,
    faults: Faults,
    log: Vec<Logged>,
    hub_url: String,
    cdn_url: String,
}

pub struct HubServer {
    pub hub_url: String,
    pub cdn_url: String,
    inner: Arc<Mutex<Inner>>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `git hash-object` of `bytes`, computed here with the `sha1` crate directly.
pub fn git_sha1_hex(bytes: &[u8]) -> String {
    use sha1::Sha1;
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn lock(inner: &Arc<Mutex<Inner>>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl HubServer {
    pub fn start(repos: Vec<Repo>, statics: Vec<(String, Vec<u8>)>, faults: Faults) -> HubServer {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind hub listener");
        let cdn = TcpListener::bind("127.0.0.1:0").expect("bind cdn listener");
        let hub_url = format!("http://{}", hub.local_addr().expect("hub addr"));
        let cdn_url = format!("http://{}", cdn.local_addr().expect("cdn addr"));
        let inner = Arc::new(Mutex::new(Inner {
            repos,
            statics: statics.into_iter().collect(),
            content_types: HashMap::new(),
            faults,
            log: Vec::new(),
            hub_url: hub_url.clone(),
            cdn_url: cdn_url.clone(),
        }));
        for (listener, name) in [(hub, "hub"), (cdn, "cdn")] {
            let inner = Arc::clone(&inner);
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let inner = Arc::clone(&inner);
                    std::thread::spawn(move || handle(stream, name, &inner));
                }
            });
        }
        HubServer {
            hub_url,
            cdn_url,
            inner,
        }
    }

    pub fn log(&self) -> Vec<Logged> {
        lock(&self.inner).log.clone()
    }

    pub fn clear_log(&self) {
        lock(&self.inner).log.clear();
    }

    /// Serves the static route `path` with this `Content-Type`.
    pub fn set_content_type(&self, path: &str, content_type: &str) {
        lock(&self.inner)
            .content_types
            .insert(path.to_string(), content_type.to_string());
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.inner).faults = faults;
    }

    /// Body-carrying GETs of file bytes (resolve or CDN), i.e. actual downloads.
    pub fn downloads(&self) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| {
                l.method == "GET"
                    && (l.listener == "cdn" || l.path.contains("/resolve/"))
                    && l.body_bytes > 0
            })
            .collect()
    }
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let head = read_head(&mut reader)?;
    Some(Request {
        method: head.method,
        path: head.path,
        headers: head.headers.into_iter().collect(),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Write only this many body bytes, then close.
    cut_at: Option<usize>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            cut_at: None,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn body(mut self, body: Vec<u8>) -> Reply {
        self.body = body;
        self
    }
    fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::new(status)
            .header("X-Error-Code", code)
            .header("X-Error-Message", message)
            .body(message.as_bytes().to_vec())
    }
}

fn handle(mut stream: TcpStream, listener: &'static str, inner: &Arc<Mutex<Inner>>) {
    let Some(req) = read_request(&stream) else {
        return;
    };
    let reply = route(&req, listener, inner);
    let head_only = req.method == "HEAD";
    let mut text = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (k, v) in &reply.headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    if !reply.headers.iter().any(|(k, _)| k == "Content-Length") {
        text.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    text.push_str("Connection: close\r\n\r\n");
    // Logged before answering, so a client that has its answer sees the entry.
    let n = if head_only {
        0
    } else {
        reply
            .cut_at
            .unwrap_or(reply.body.len())
            .min(reply.body.len())
    };
    lock(inner).log.push(Logged {
        listener,
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.headers.get("range").cloned(),
        authorization: req.headers.get("authorization").cloned(),
        accept: req.headers.get("accept").cloned(),
        status: reply.status,
        body_bytes: n,
    });
    let _ = stream.write_all(text.as_bytes());
    let _ = stream.write_all(&reply.body[..n]);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    // Drain what the client may still send so the close is graceful.
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
}

/// Serves `bytes` honouring `Range: bytes=N-` and the per-path faults.
fn serve_bytes(req: &Request, inner: &mut Inner, repo_path: &str, bytes: &[u8]) -> Reply {
    if inner.faults.always_500.contains(repo_path) {
        return Reply::error(500, "Internal", "injected failure");
    }
    let mut reply = match req.headers.get("range") {
        Some(range) => {
            let start: usize = range
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            if start >= bytes.len() {
                return Reply::new(416).header("Content-Range", format!("bytes */{}", bytes.len()));
            }
            Reply::new(206)
                .header(
                    "Content-Range",
                    format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
                )
                .body(bytes[start..].to_vec())
        }
        None => Reply::new(200).body(bytes.to_vec()),
    };
    if req.method == "GET" {
        if let Some(n) = inner.faults.drop_after.remove(repo_path) {
            reply.cut_at = Some(n);
        }
    }
    reply
}

fn route(req: &Request, listener: &'static str, inner: &Arc<Mutex<Inner>>) -> Reply {
    let mut inner = lock(inner);
    let path = req.path.split('?').next().unwrap_or_default().to_string();

    if listener == "cdn" {
        // /cdn/{kind}/{owner}/{name}/{file path}
        let Some(rest) = path.strip_prefix("/cdn/") else {
            return Reply::new(404);
        };
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() < 4 {
            return Reply::new(404);
        }
        let (kind, id, file) = (
            parts[0],
            format!("{}/{}", parts[1], parts[2]),
            percent_decode(parts[3]),
        );
        let bytes = inner
            .repos
            .iter()
            .find(|r| r.kind == kind && r.id == id)
            .and_then(|r| r.files.iter().find(|f| f.path == file))
            .map(|f| f.bytes.clone());
        return match bytes {
            Some(b) => serve_bytes(req, &mut inner, &file, &b),
            None => Reply::new(404),
        };
    }

    if let Some(bytes) = inner.statics.get(&path).cloned() {
        let reply = serve_bytes(req, &mut inner, &path, &bytes);
        return match inner.content_types.get(&path) {
            Some(t) => reply.header("Content-Type", t.clone()),
            None => reply,
        };
    }

    if let Some(want) = &inner.faults.require_token {
        let got = req.headers.get("authorization");
        if got != Some(&format!("Bearer {want}")) {
            return Reply::error(
                401,
                "GatedRepo",
                "Access to this repo is restricted. You must be authenticated to access it.",
            );
        }
    }

    if let Some((old, new)) = &inner.faults.renamed {
        for prefix in ["/api/models/", "/api/datasets/", "/datasets/", "/"] {
            if let Some(rest) = path.strip_prefix(&format!("{prefix}{old}/")) {
                return Reply::new(307).header("Location", format!("{prefix}{new}/{rest}"));
            }
        }
    }

    // API: /api/{kind}/{owner}/{name}/revision/{rev}
    if let Some(rest) = path.strip_prefix("/api/") {
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != 5 || parts[3] != "revision" {
            return Reply::new(404);
        }
        let (kind, id, rev) = (
            parts[0],
            format!("{}/{}", parts[1], parts[2]),
            percent_decode(parts[4]),
        );
        let Some(repo) = inner.repos.iter().find(|r| r.kind == kind && r.id == id) else {
            return Reply::error(404, "RepoNotFound", "Repository not found");
        };
        if rev != "main" && rev != repo.commit {
            return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| serde_json::json!({ "rfilename": f.path }))
            .collect();
        let body = serde_json::json!({ "id": repo.id, "sha": repo.commit, "siblings": siblings });
        return Reply::new(200)
            .header("Content-Type", "application/json")
            .body(body.to_string().into_bytes());
    }

    // Resolve: /{datasets/}{owner}/{name}/resolve/{rev}/{path}
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(rest) => ("datasets", rest.to_string()),
        None => ("models", path.trim_start_matches('/').to_string()),
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return Reply::new(404);
    }
    let (id, rev, file) = (
        format!("{}/{}", parts[0], parts[1]),
        percent_decode(parts[3]),
        percent_decode(parts[4]),
    );
    let Some(repo) = inner.repos.iter().find(|r| r.kind == kind && r.id == id) else {
        return Reply::error(404, "RepoNotFound", "Repository not found");
    };
    if rev != "main" && rev != repo.commit {
        return Reply::error(404, "RevisionNotFound", &format!("Invalid rev id: {rev}"));
    }
    let Some(f) = repo.files.iter().find(|f| f.path == file) else {
        return Reply::error(404, "EntryNotFound", &format!("{file} does not exist"));
    };
    let (bytes, lfs, commit) = (f.bytes.clone(), f.lfs, repo.commit.clone());
    let wrong = inner.faults.wrong_digest.contains(&file);
    let advertised = |digest: fn(&[u8]) -> String| {
        if wrong {
            let mut other = bytes.clone();
            other.push(b'!');
            digest(&other)
        } else {
            digest(&bytes)
        }
    };
    if lfs {
        let sha = advertised(sha256_hex);
        let location = format!(
            "{}/cdn/{kind}/{id}/{}?X-Amz-Signature=abc",
            inner.cdn_url, parts[4]
        );
        Reply::new(302)
            .header("Location", location)
            .header("X-Linked-Etag", format!("\"{sha}\""))
            .header("X-Linked-Size", bytes.len().to_string())
            .header("ETag", format!("\"{sha}\""))
            .header("X-Repo-Commit", commit)
    } else {
        let etag = advertised(git_sha1_hex);
        serve_bytes(req, &mut inner, &file, &bytes)
            .header("ETag", format!("\"{etag}\""))
            .header("X-Repo-Commit", commit)
    }
}

/// The commit every repo of [`repo_of`] is served at.
pub const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Every file of `dir` as a repo; weights and tokenizer files as LFS (as on the Hub).
pub fn repo_of(id: &str, dir: &Path, extra: &[(&str, &[u8])]) -> Repo {
    let mut files: Vec<RepoFile> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let path = p.file_name().unwrap().to_string_lossy().into_owned();
            let lfs = [".bin", ".safetensors", ".model", ".h5"]
                .iter()
                .any(|x| path.ends_with(x));
            RepoFile {
                bytes: std::fs::read(&p).unwrap(),
                path,
                lfs,
            }
        })
        .collect();
    for (path, bytes) in extra {
        files.push(RepoFile {
            path: path.to_string(),
            bytes: bytes.to_vec(),
            lfs: true,
        });
    }
    Repo {
        kind: "models",
        id: id.into(),
        commit: COMMIT.into(),
        files,
    }
}

/// The stand-in Hub of the model tests (prepare, reproduce): models/demo-src and
/// tests/data/checkpoints (see its README) under the real repo ids they stand in for.
pub fn model_hub(faults: Faults) -> HubServer {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = |name: &str| root.join("tests/data/checkpoints").join(name);
    let demo = |name: &str| root.join("models/demo-src").join(name);
    let decoy: &[u8] = b"not meant to be downloaded";
    HubServer::start(
        vec![
            repo_of("ys-zong/llava-v1.5-7b-Mixed", &demo("llava-v1.5-tiny"), &[]),
            // The real tower repo also holds .bin, TensorFlow and Flax copies.
            repo_of(
                "openai/clip-vit-large-patch14-336",
                &demo("clip-vit-tiny-patch14-336"),
                &[("pytorch_model.bin", decoy), ("tf_model.h5", decoy)],
            ),
            repo_of(
                "ys-zong/llava-v1.5-7b-Mixed-lora",
                &fixture("llava-lora"),
                &[],
            ),
            repo_of("lmsys/vicuna-7b-v1.5", &fixture("vicuna-tiny"), &[]),
            // A "-lora" repo that ships merged full weights.
            repo_of("ys-zong/llava-v1.5-13b-Mixed-lora", &fixture("zip64"), &[]),
            repo_of("llava-hf/llava-1.5-7b-hf", &fixture("llava-hf"), &[]),
            repo_of("tester/hf-lora", &fixture("hf-lora"), &[]),
        ],
        vec![],
        faults,
    )
}
