//! `fetch model` against a local Hub stand-in (tests/hub_server): a clean fetch, a rerun
//! that downloads nothing, a connection dropped mid-file and resumed with Range, a partial
//! file left by an earlier run resumed, a wrong checksum rejected, 401 / 404 / unreachable
//! errors that say what to do, bounded retries, `--include`. Never the real Hub.

mod hub_server;

use std::path::Path;
use std::time::Duration;

use hub_server::{Faults, HubServer, Repo, RepoFile};
use vlguard_ort::fetch::{self, Error, Hub, ModelRequest, Policy, Token};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "tester/llava-tiny";

/// Deterministic pseudo-random bytes (xorshift), so nothing compresses or repeats.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn weights() -> Vec<u8> {
    noise(300_000, 7)
}

fn model_repo() -> Repo {
    Repo {
        kind: "models",
        id: REPO.into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile {
                path: "config.json".into(),
                bytes: br#"{"model_type": "llava"}"#.to_vec(),
                lfs: false,
            },
            RepoFile {
                path: "model.safetensors".into(),
                bytes: weights(),
                lfs: true,
            },
            RepoFile {
                path: "sub dir/tokenizer.model".into(),
                bytes: noise(5_000, 3),
                lfs: true,
            },
        ],
    }
}

fn policy() -> Policy {
    Policy {
        attempts: 3,
        backoff: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        progress: false,
        ..Policy::default()
    }
}

fn token(t: &str) -> Option<Token> {
    Token::new(t.to_string())
}

fn request(to: &Path, include: &[&str]) -> ModelRequest {
    ModelRequest {
        repo: REPO.into(),
        revision: "main".into(),
        to: to.to_path_buf(),
        include: include.iter().map(|s| s.to_string()).collect(),
    }
}

fn assert_all_files_match(dir: &Path) {
    for f in model_repo().files {
        let got = std::fs::read(dir.join(&f.path)).expect("fetched file exists");
        assert!(got == f.bytes, "{} differs from the served bytes", f.path);
    }
    let leftovers: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn clean_fetch_then_rerun_downloads_nothing() {
    let server = HubServer::start(vec![model_repo()], vec![], Faults::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, token("hf_test_token"), policy()).expect("hub");

    let first = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("clean fetch");
    assert_eq!(first.commit, COMMIT);
    assert_eq!(first.downloaded.len(), 3);
    assert_eq!(
        first.bytes,
        model_repo()
            .files
            .iter()
            .map(|f| f.bytes.len() as u64)
            .sum::<u64>()
    );
    assert_all_files_match(tmp.path());

    // Files are requested at the listed commit, not at the moving branch name.
    let log = server.log();
    assert!(log
        .iter()
        .filter(|l| l.path.contains("/resolve/"))
        .all(|l| l.path.contains(&format!("/resolve/{COMMIT}/"))));
    // The token goes to the Hub, never to the CDN the LFS files redirect to.
    assert!(log
        .iter()
        .filter(|l| l.listener == "hub")
        .all(|l| l.authorization.as_deref() == Some("Bearer hf_test_token")));
    let cdn: Vec<_> = log.iter().filter(|l| l.listener == "cdn").collect();
    assert_eq!(cdn.len(), 2, "two LFS files from the CDN");
    assert!(cdn.iter().all(|l| l.authorization.is_none()));

    server.clear_log();
    let second = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("rerun");
    assert!(
        second.downloaded.is_empty(),
        "rerun downloaded {:?}",
        second.downloaded
    );
    assert_eq!(second.verified.len(), 3);
    assert_eq!(second.bytes, 0);
    assert!(
        server.downloads().is_empty(),
        "rerun fetched bytes: {:?}",
        server.downloads()
    );
    assert_all_files_match(tmp.path());
}

#[test]
fn rerun_without_state_file_hashes_instead_of_downloading() {
    let server = HubServer::start(vec![model_repo()], vec![], Faults::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("clean fetch");
    std::fs::remove_file(tmp.path().join(fetch::STATE_FILE)).expect("state file written");
    // A file changed on disk must be fetched again; the others verify by hash.
    std::fs::write(
        tmp.path().join("config.json"),
        br#"{"model_type": "LLAVA"}"#,
    )
    .expect("write");
    server.clear_log();
    let again = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("rerun");
    assert_eq!(again.downloaded, vec!["config.json".to_string()]);
    assert_eq!(again.verified.len(), 2);
    assert_all_files_match(tmp.path());
}

/// Issue 24 (minor): bytes changed on disk at the same size, with the state file kept,
/// were taken as "already verified"; the changed modification time now makes the rerun
/// hash the file, find it wrong and fetch it again.
#[test]
fn a_file_changed_at_the_same_size_is_checked_again() {
    let server = HubServer::start(vec![model_repo()], vec![], Faults::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("clean fetch");
    let path = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&path, &bytes).expect("write");
    let again = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("rerun");
    assert_eq!(again.downloaded, vec!["model.safetensors".to_string()]);
    assert_eq!(again.verified.len(), 2);
    assert_all_files_match(tmp.path());
}

#[test]
fn dropped_connection_resumes_with_a_range_request() {
    let faults = Faults {
        drop_after: [("model.safetensors".to_string(), 120_000)].into(),
        ..Faults::default()
    };
    let server = HubServer::start(vec![model_repo()], vec![], faults);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    fetch::fetch_model(&hub, &request(tmp.path(), &["*.safetensors"])).expect("resumed fetch");
    let got = std::fs::read(tmp.path().join("model.safetensors")).expect("file");
    assert!(got == weights(), "resumed file differs");

    let cdn: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.listener == "cdn")
        .collect();
    assert_eq!(cdn.len(), 2, "{cdn:?}");
    assert_eq!(
        (cdn[0].range.as_deref(), cdn[0].body_bytes),
        (None, 120_000)
    );
    assert_eq!(cdn[1].range.as_deref(), Some("bytes=120000-"));
    assert_eq!(cdn[1].status, 206);
    // Nothing downloaded twice: the two responses add up to the file.
    assert_eq!(cdn[0].body_bytes + cdn[1].body_bytes, weights().len());
}

#[test]
fn partial_file_from_an_earlier_run_is_resumed() {
    let server = HubServer::start(vec![model_repo()], vec![], Faults::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        tmp.path().join("model.safetensors.incomplete"),
        &weights()[..50_000],
    )
    .expect("write partial");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let out = fetch::fetch_model(&hub, &request(tmp.path(), &["model.safetensors"]))
        .expect("resumed fetch");
    assert_eq!(out.bytes, (weights().len() - 50_000) as u64);
    assert!(std::fs::read(tmp.path().join("model.safetensors")).expect("file") == weights());
    let ranges: Vec<_> = server.log().into_iter().filter_map(|l| l.range).collect();
    assert_eq!(ranges, vec!["bytes=50000-".to_string()]);
}

#[test]
fn wrong_checksum_is_rejected_and_nothing_is_kept() {
    let faults = Faults {
        wrong_digest: ["model.safetensors".to_string(), "config.json".to_string()].into(),
        ..Faults::default()
    };
    let server = HubServer::start(vec![model_repo()], vec![], faults);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");

    let err = fetch::fetch_model(&hub, &request(tmp.path(), &["model.safetensors"]))
        .expect_err("LFS sha256 mismatch");
    assert!(
        matches!(&err, Error::ChecksumMismatch { algo: "sha256", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("rerun"), "{err}");
    assert!(!tmp.path().join("model.safetensors").exists());
    assert!(!tmp.path().join("model.safetensors.incomplete").exists());

    let err = fetch::fetch_model(&hub, &request(tmp.path(), &["config.json"]))
        .expect_err("git sha1 mismatch");
    assert!(
        matches!(
            &err,
            Error::ChecksumMismatch {
                algo: "git blob sha1",
                ..
            }
        ),
        "{err}"
    );
    assert!(!tmp.path().join("config.json").exists());
}

#[test]
fn unauthorized_says_to_set_hf_token_and_never_shows_it() {
    let faults = Faults {
        require_token: Some("hf_right".into()),
        ..Faults::default()
    };
    let server = HubServer::start(vec![model_repo()], vec![], faults);
    let tmp = tempfile::tempdir().expect("tempdir");

    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let err = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect_err("401");
    assert!(
        matches!(
            err,
            Error::Denied {
                status: 401,
                token_set: false,
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("set HF_TOKEN") && text.contains("GatedRepo"),
        "{text}"
    );

    let hub = Hub::new(&server.hub_url, token("hf_wrong_secret"), policy()).expect("hub");
    let err = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect_err("401");
    let text = format!("{err} {err:?}");
    assert!(text.contains("HF_TOKEN is set but has no access"), "{text}");
    assert!(!text.contains("hf_wrong_secret"), "token leaked: {text}");
    // A 401 is not retried: one API request per attempt at fetching.
    assert_eq!(server.log().len(), 2);

    let hub = Hub::new(&server.hub_url, token("hf_right"), policy()).expect("hub");
    fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect("authorised fetch");
    assert_all_files_match(tmp.path());
}

#[test]
fn not_found_says_to_check_repo_and_revision() {
    let server = HubServer::start(vec![model_repo()], vec![], Faults::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let mut req = request(tmp.path(), &[]);
    req.repo = "tester/no-such-model".into();
    let err = fetch::fetch_model(&hub, &req).expect_err("404");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("RepoNotFound"), "{err}");
    assert!(
        err.to_string().contains("check the repo id and --revision"),
        "{err}"
    );

    let mut req = request(tmp.path(), &[]);
    req.revision = "refs/pr/9".into();
    let err = fetch::fetch_model(&hub, &req).expect_err("404");
    assert!(err.to_string().contains("RevisionNotFound"), "{err}");
    // The revision travels percent-encoded, as huggingface_hub quotes it.
    assert!(server
        .log()
        .iter()
        .any(|l| l.path.ends_with("/revision/refs%2Fpr%2F9")));
}

#[test]
fn unreachable_host_is_named_after_bounded_retries() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&format!("http://127.0.0.1:{port}"), None, policy()).expect("hub");
    let err = fetch::fetch_model(&hub, &request(tmp.path(), &[])).expect_err("no server");
    assert!(
        matches!(err, Error::Unreachable { attempts: 3, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("after 3 tries"), "{text}");
    assert!(text.contains("point HF_ENDPOINT (--endpoint) at"), "{text}");
    // A flag of `fetch dataset` only: no use to someone fetching a model.
    assert!(!text.contains("--reference-url"), "{text}");
}

#[test]
fn server_errors_are_retried_a_bounded_number_of_times() {
    let faults = Faults {
        always_500: ["model.safetensors".to_string()].into(),
        ..Faults::default()
    };
    let server = HubServer::start(vec![model_repo()], vec![], faults);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let err = fetch::fetch_model(&hub, &request(tmp.path(), &["model.safetensors"]))
        .expect_err("500 forever");
    assert!(matches!(err, Error::Status { status: 500, .. }), "{err}");
    let cdn_gets = server.log().iter().filter(|l| l.listener == "cdn").count();
    assert_eq!(cdn_gets, policy().attempts as usize);
}

#[test]
fn include_picks_files_and_an_empty_match_is_an_error() {
    let server = HubServer::start(vec![model_repo()], vec![], Faults::default());
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let out = fetch::fetch_model(&hub, &request(tmp.path(), &["*.json", "*.model"]))
        .expect("filtered fetch");
    assert_eq!(
        out.downloaded,
        vec![
            "config.json".to_string(),
            "sub dir/tokenizer.model".to_string()
        ]
    );
    assert!(!tmp.path().join("model.safetensors").exists());
    let err = fetch::fetch_model(&hub, &request(tmp.path(), &["*.bin"])).expect_err("no match");
    assert!(matches!(err, Error::NothingIncluded { .. }), "{err}");
}

#[test]
fn renamed_repo_is_followed_through_relative_redirects() {
    let faults = Faults {
        renamed: Some(("tester/old-name".into(), REPO.into())),
        ..Faults::default()
    };
    let server = HubServer::start(vec![model_repo()], vec![], faults);
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let mut req = request(tmp.path(), &[]);
    req.repo = "tester/old-name".into();
    fetch::fetch_model(&hub, &req).expect("fetch through the rename");
    assert_all_files_match(tmp.path());
    assert!(server.log().iter().any(|l| l.status == 307));
}
