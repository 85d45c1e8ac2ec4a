//! The built `vlguard-ort judge` binary against a scripted chat-completions server on
//! 127.0.0.1: default paths on the real 558-item reference file, the printed line, exit
//! codes, the key kept out of every output, and a kill -9 in the middle of a run.

#[path = "common/chat_server.rs"]
mod chat_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chat_server::{completion, ChatServer, Reply};
use serde_json::Value;

const KEY: &str = "sk-proj-SECRET-cli-test-key-42";

/// VLGuard's GPT-4V reference answers (tests/data/vlguard, see its README).
fn gpt4_reference() -> PathBuf {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/vlguard/gpt4_safe_safes.json"
    ));
    assert!(
        path.is_file(),
        "missing {}: the repository's test data is incomplete",
        path.display()
    );
    path.to_path_buf()
}

/// A working folder laid out like a checkout: data/VLGuard/gpt4_safe_safes.json (the real
/// one), a stand-in file for each of its images, and predictions for the first `n` items
/// (all when `None`) in results/safe_safes/llava15-7b.json: every third answer carries
/// the word WIN.
fn workdir(limit: Option<usize>) -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = root.join("data/VLGuard");
    std::fs::create_dir_all(&data).unwrap();
    let mut reference: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(gpt4_reference()).unwrap()).unwrap();
    if let Some(n) = limit {
        reference.truncate(n);
    }
    std::fs::write(
        data.join("gpt4_safe_safes.json"),
        Value::Array(reference.clone()).to_string(),
    )
    .unwrap();
    let mut predictions = serde_json::Map::new();
    for (i, item) in reference.iter().enumerate() {
        let image = item["image"].as_str().unwrap();
        let path = data.join("test").join(image);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("image {i}")).unwrap();
        let answer = if i % 3 == 0 {
            format!("answer {i} WIN")
        } else {
            format!("answer {i}")
        };
        predictions.insert(image.to_string(), Value::String(answer));
    }
    std::fs::create_dir_all(root.join("results/safe_safes")).unwrap();
    std::fs::write(
        root.join("results/safe_safes/llava15-7b.json"),
        Value::Object(predictions).to_string(),
    )
    .unwrap();
    let n = reference.len();
    (dir, n)
}

fn judge(dir: &Path, server: &ChatServer, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"));
    cmd.current_dir(dir)
        .args(["judge", "results/safe_safes/llava15-7b.json"])
        .args(extra)
        .env("OPENAI_API_KEY", KEY)
        .env("OPENAI_BASE_URL", &server.base_url)
        .env("VLGUARD_JUDGE_MODEL", "judge-cli")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("all_proxy");
    cmd
}

fn wins_if_marked() -> ChatServer {
    ChatServer::start(|req, _| {
        let prompt = req.prompt();
        completion(if prompt.contains("WIN") { "m" } else { "M" })
    })
}

fn all_text_under(dir: &Path, out: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_text_under(&path, out);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            out.push_str(&text);
        }
    }
}

#[test]
fn full_reference_run_prints_the_reference_line() {
    let (dir, n) = workdir(None);
    assert_eq!(n, 558);
    let server = wins_if_marked();
    let output: Output = judge(dir.path(), &server, &["--concurrency", "8"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    // 186 of 558 items carry WIN; Python: 186 / 558 == 0.3333333333333333
    assert_eq!(stdout, "Winning rate of llava15-7b: 0.3333333333333333\n");
    assert_eq!(server.requests().len(), 558);

    let results = dir.path().join("results/judge");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("llava15-7b.summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["n"], 558);
    assert_eq!(summary["wins"], 186);
    assert_eq!(summary["losses"], 372);
    assert_eq!(summary["judge_model"], "judge-cli");
    let items: Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("llava15-7b.json")).unwrap())
            .unwrap();
    assert_eq!(items.as_array().unwrap().len(), 558);
    assert_eq!(
        std::fs::read_to_string(results.join("llava15-7b.journal.jsonl"))
            .unwrap()
            .lines()
            .count(),
        558
    );

    let mut everything = format!("{stdout}{stderr}");
    all_text_under(dir.path(), &mut everything);
    assert!(!everything.contains(KEY), "the API key leaked");
}

#[test]
fn configuration_errors_exit_2_without_leaking_the_key() {
    let (dir, _) = workdir(Some(3));
    let server = wins_if_marked();

    // No judge model anywhere.
    let output = judge(dir.path(), &server, &[])
        .env_remove("VLGUARD_JUDGE_MODEL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--model"));

    // No key.
    let output = judge(dir.path(), &server, &[])
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("OPENAI_API_KEY"));

    // A rejected key stops the run (HTTP 401 is fatal), the message does not show it.
    let rejecting = ChatServer::start(|_, _| {
        chat_server::error(
            401,
            "invalid_api_key",
            &format!("Incorrect API key provided: {KEY}."),
            &[],
        )
    });
    let output = judge(dir.path(), &rejecting, &["--concurrency", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("HTTP 401"), "stderr: {stderr}");
    assert!(!stderr.contains(KEY));
    assert_eq!(rejecting.requests().len(), 1);
    assert!(server.requests().is_empty());
}

#[test]
fn killed_run_loses_nothing_and_rerun_asks_only_for_the_rest() {
    let (dir, n) = workdir(Some(12));
    // Items 0..4 answer at once; the sixth request hangs until the process is killed.
    let slow = ChatServer::start(|req, _| {
        if req.prompt().contains("answer 5") {
            Reply::Delay(Duration::from_secs(30), Box::new(completion("m")))
        } else {
            completion("m")
        }
    });
    let mut child = judge(dir.path(), &slow, &["--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = dir.path().join("results/judge/llava15-7b.journal.jsonl");
    let deadline = Instant::now() + Duration::from_secs(20);
    // Item 5 is in flight and items 0..4 are journaled.
    let journaled = || {
        std::fs::read_to_string(&journal)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    while slow.requests().len() < 6 || journaled() < 5 {
        assert!(Instant::now() < deadline, "the judge never reached item 5");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(journaled(), 5);

    let fast = wins_if_marked();
    let output = judge(dir.path(), &fast, &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(fast.requests().len(), n - 5);
    // Items 0..4 were won (the slow server said m); of 5..11, 6 and 9 carry WIN: 7 / 12.
    // Python: 7 / 12 == 0.5833333333333334
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "Winning rate of llava15-7b: 0.5833333333333334\n"
    );
}

#[test]
fn a_model_name_the_server_refuses_stops_with_one_error() {
    // What a LiteLLM proxy answers for a model it does not serve (checked against one).
    let (dir, _) = workdir(Some(40));
    let refusing = ChatServer::start(|_, _| {
        chat_server::error(
            400,
            "400",
            "litellm.BadRequestError: Invalid model name passed in model=judge-cli",
            &[],
        )
    });
    let output = judge(dir.path(), &refusing, &["--concurrency", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    // No rate for a run without a verdict, and one message instead of one per item.
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.starts_with("error: judge stopped: 3 requests in a row were refused with HTTP 400: litellm.BadRequestError: Invalid model name"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("results/judge/llava15-7b.journal.jsonl"),
        "{stderr}"
    );
    assert_eq!(refusing.requests().len(), 3);
    let journal = dir.path().join("results/judge/llava15-7b.journal.jsonl");
    assert_eq!(std::fs::read_to_string(journal).unwrap().lines().count(), 3);
    assert!(!dir
        .path()
        .join("results/judge/llava15-7b.summary.json")
        .exists());
}

/// Issue 24, case 10: a judge server's error text reached the terminal raw. Every line
/// the judge prints shows its control characters escaped, the per-item lines (a 500
/// that gives up) and the final error alike.
#[test]
fn a_server_message_with_control_characters_is_shown_escaped() {
    let (dir, _) = workdir(Some(4));
    let hostile = "\u{1b}]0;PWNED\u{7}\u{1b}[2J";
    let server = ChatServer::start(move |req, _| {
        // The first item fails with a server error (retried, then given up: a line of
        // its own); the others with a client error (a row that stops the run).
        if req.prompt().contains("answer 0") {
            chat_server::error(500, "500", &format!("down {hostile}"), &[])
        } else {
            chat_server::error(400, "400", &format!("bad {hostile}"), &[])
        }
    });
    let output = judge(
        dir.path(),
        &server,
        &[
            "--concurrency",
            "1",
            "--retries",
            "1",
            "--backoff-base",
            "0.01",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        !stderr.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters: {stderr:?}"
    );
    assert!(stderr.contains("down \\u{1b}]0;PWNED\\u{7}"), "{stderr}");
    assert!(stderr.contains("bad \\u{1b}]0;PWNED\\u{7}"), "{stderr}");
}

#[test]
fn a_closed_port_says_so_on_every_retry_before_it_stops() {
    // Retrying a connection that is refused used to be silent for minutes (8 retries,
    // backoff up to 60 s); each failed try that will be retried now prints one line.
    let (dir, _) = workdir(Some(4));
    let unused = wins_if_marked();
    let base = chat_server::closed_port_url();
    let mut flags = vec!["--base-url", &base];
    flags.extend(chat_server::GIVE_UP_FAST);
    let output = judge(dir.path(), &unused, &flags).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let retries: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(": try ") && l.contains(" failed: cannot connect to "))
        .collect();
    assert_eq!(retries.len(), 2, "stderr: {stderr}");
    assert!(retries[0].starts_with("judge: "), "{stderr}");
    assert!(
        retries[0].contains("(original): try 1 of 3 failed"),
        "{stderr}"
    );
    assert!(retries[0].ends_with("; try 2 of 3 in 10ms"), "{stderr}");
    assert!(retries[1].ends_with("; try 3 of 3 in 20ms"), "{stderr}");
    assert!(
        stderr.contains("error: judge stopped: cannot connect to"),
        "{stderr}"
    );
    assert!(unused.requests().is_empty());
    assert!(!stderr.contains(KEY));
}
