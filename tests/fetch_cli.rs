//! The built binary's `fetch model`: HF_ENDPOINT and HF_TOKEN read from the environment,
//! exit code 2 and a message naming HF_TOKEN on a 401 (the token itself never printed),
//! exit code 0 and a one-line summary on success, the retry lines of an unreachable Hub.
//! Runs against tests/hub_server.

mod hub_server;

use std::process::Command;

use hub_server::{Faults, HubServer, Repo, RepoFile};

fn server() -> HubServer {
    HubServer::start(
        vec![Repo {
            kind: "models",
            id: "tester/gated".into(),
            commit: "1111111111111111111111111111111111111111".into(),
            files: vec![
                RepoFile {
                    path: "config.json".into(),
                    bytes: b"{}".to_vec(),
                    lfs: false,
                },
                RepoFile {
                    path: "model.safetensors".into(),
                    bytes: vec![7u8; 10_000],
                    lfs: true,
                },
            ],
        }],
        vec![],
        Faults {
            require_token: Some("hf_cli_secret".into()),
            ..Faults::default()
        },
    )
}

fn fetch(server: &HubServer, to: &std::path::Path, token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"));
    cmd.args(["fetch", "model", "tester/gated", "--quiet", "--to"])
        .arg(to)
        .env("HF_ENDPOINT", &server.hub_url)
        .env_remove("HF_TOKEN");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    cmd.output().expect("run vlguard-ort")
}

#[test]
fn gated_repo_without_token_exits_2_and_names_hf_token() {
    let server = server();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = fetch(&server, tmp.path(), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(stderr.contains("set HF_TOKEN"), "{stderr}");

    let out = fetch(&server, tmp.path(), Some("hf_wrong_value"));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("HF_TOKEN is set but has no access"), "{all}");
    assert!(!all.contains("hf_wrong_value"), "token printed: {all}");
}

#[test]
fn token_from_environment_fetches_and_summarises() {
    let server = server();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = fetch(&server, tmp.path(), Some("hf_cli_secret"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("model tester/gated @ 1111111111111111111111111111111111111111")
            && stdout.contains("2 downloaded (10002 bytes), 0 already verified"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(tmp.path().join("model.safetensors")).expect("weights"),
        vec![7u8; 10_000]
    );
    assert!(!stdout.contains("hf_cli_secret"));
}

#[test]
fn unreachable_hub_retry_lines_count_tries_from_one() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"))
        .args([
            "fetch",
            "model",
            "tester/gated",
            "--quiet",
            "--attempts",
            "2",
        ])
        .arg("--to")
        .arg(tmp.path())
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env_remove("HF_TOKEN")
        .output()
        .expect("run vlguard-ort");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    // The default policy waits 1 s before the second try.
    let refused = format!("cannot reach 127.0.0.1:{port} (io: Connection refused (os error 111))");
    assert_eq!(
        lines[0],
        format!("fetch: try 1 of 2 failed: {refused}; try 2 of 2 in 1s")
    );
    assert_eq!(
        lines[1],
        format!("error: {refused} after 2 tries: check the network connection, or point HF_ENDPOINT (--endpoint) at a reachable mirror")
    );
}
