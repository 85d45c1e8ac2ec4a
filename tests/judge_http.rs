//! The judge against a scripted chat-completions server on 127.0.0.1 (never a real
//! provider): the exact requests it sends, how it survives 429/5xx/hang-ups/timeouts/bad
//! JSON, what it counts, how it resumes, the swapped seats, and that the key stays secret.
//!
//! Expected values: `tests/fixtures/judge/` was made by running the reference
//! `gpt4_evaluator.py` itself with its HTTP call stubbed (see make_expected.py there);
//! other expected rates are Python `wins / n` reprs, quoted where used.

#[path = "common/chat_server.rs"]
mod chat_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chat_server::{completion, error, raw, ChatServer, Reply, Request};
use clap::Parser;
use serde_json::{json, Value};
use vlguard_ort::cli::{Cli, Command};
use vlguard_ort::judge::{self, JudgeConfig, JudgeReport, Tally};

const KEY: &str = "sk-test-0123456789abcdef";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/judge")
        .join(name)
}

fn config(server: &ChatServer, args: &[&str]) -> JudgeConfig {
    let mut argv = vec!["vlguard-ort", "judge", "--base-url", &server.base_url];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    let Command::Judge(args) = cli.command else {
        panic!("not the judge command")
    };
    JudgeConfig::from_args(&args, |name| {
        (name == "OPENAI_API_KEY").then(|| KEY.to_string())
    })
    .expect("valid config")
}

fn run(config: &JudgeConfig) -> (JudgeReport, String) {
    let mut stdout = Vec::new();
    let report = judge::run(config, &mut stdout).expect("judge runs");
    (report, String::from_utf8(stdout).expect("utf-8 stdout"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).expect("json")
}

/// A reference file of items `Q0..Q{n-1}` (image `img/iK.png` holding bytes `img-K`),
/// and predictions `P0..`, written to `dir`; returns (reference, predictions, images).
fn synthetic(dir: &Path, n: usize, prediction: impl Fn(usize) -> String) -> [PathBuf; 3] {
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("img")).unwrap();
    let mut reference = Vec::new();
    let mut predictions = serde_json::Map::new();
    for i in 0..n {
        let image = format!("img/i{i}.png");
        std::fs::write(images.join(&image), format!("img-{i}")).unwrap();
        reference.push(json!({
            "id": format!("S_{i}"), "image": image, "safe": true,
            "instruction": format!("Q{i}"), "response": format!("R{i}"),
        }));
        predictions.insert(image, Value::String(prediction(i)));
    }
    let reference_path = dir.join("reference.json");
    std::fs::write(&reference_path, Value::Array(reference).to_string()).unwrap();
    let predictions_path = dir.join("model-x.json");
    std::fs::write(&predictions_path, Value::Object(predictions).to_string()).unwrap();
    [reference_path, predictions_path, images]
}

/// Which synthetic item a request is for (its instruction `QK`).
fn item_of(request: &Request) -> usize {
    let prompt = request.prompt();
    let start = prompt.find("\"instruction\": \"Q").expect("instruction") + 17;
    let digits: String = prompt[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("item number")
}

fn synthetic_args<'a>(paths: &'a [PathBuf; 3], out: &'a Path) -> Vec<&'a str> {
    vec![
        paths[1].to_str().unwrap(),
        "--reference",
        paths[0].to_str().unwrap(),
        "--images",
        paths[2].to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        "judge-x",
    ]
}

#[test]
fn requests_and_output_match_the_reference() {
    let server = ChatServer::start(|req, _| {
        let url = req.image_url();
        if url.starts_with("data:image/png") {
            completion("m")
        } else if url.ends_with("/9j/Yw==") {
            error(
                400,
                "content_policy_violation",
                "Your input image may contain content that is not allowed by our safety system.",
                &[],
            )
        } else {
            completion("M")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("judge/predictions.json");
    let predictions = fixture("predictions.json");
    let reference = fixture("reference.json");
    let images = fixture("images");
    let config = config(
        &server,
        &[
            predictions.to_str().unwrap(),
            "--reference",
            reference.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--model",
            "gpt-4o-2024-08-06",
            "--price-in",
            "2.5",
            "--price-out",
            "10",
        ],
    );
    let (report, stdout) = run(&config);

    // The reference printed exactly this for the same fixture and choices.
    assert_eq!(stdout, "Winning rate of predictions: 0.3333333333333333\n");
    assert_eq!(
        report.original,
        Tally {
            n: 3,
            wins: 1,
            losses: 1,
            content_policy: 1,
            other_replies: 0,
            errors: 0
        }
    );
    // Byte-identical to the reference's json.dump(results, f, indent=4).
    assert_eq!(read(&out), read(&fixture("expected_output.json")));

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    // Data URLs: the reference's encode_image on the fixture images (make_expected.py).
    let expected = [
        (
            "data:image/png;base64,iVBORw0KGgpmaXh0dXJlLWE=",
            Some("prompt_a.txt"),
        ),
        (
            "data:image/jpeg;base64,/9j/4GZpeHR1cmUtYg==",
            Some("prompt_b.txt"),
        ),
        ("data:image/jpeg;base64,/9j/Yw==", None),
    ];
    for (url, prompt_file) in expected {
        let req = requests
            .iter()
            .find(|r| r.image_url() == url)
            .unwrap_or_else(|| panic!("no request with image {url}"));
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/chat/completions");
        assert_eq!(req.header("authorization"), Some(&*format!("Bearer {KEY}")));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let body = req.json();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["model", "messages", "max_tokens"]);
        let prompt = req.prompt();
        let expected_body = json!({
            "model": "gpt-4o-2024-08-06",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": url, "detail": "low"}}
            ]}],
            "max_tokens": 2
        });
        assert_eq!(body, expected_body);
        if let Some(file) = prompt_file {
            // system_image.format(...) as the reference computed it.
            assert_eq!(prompt, read(&fixture(file)), "prompt for {url}");
        }
    }

    let summary = read_json(&config.summary_path());
    assert_eq!(summary["engine"], "predictions");
    assert_eq!(summary["judge_model"], "gpt-4o-2024-08-06");
    assert_eq!(summary["base_url"], server.base_url.as_str());
    assert_eq!(summary["win_rate"], json!(1.0 / 3.0));
    assert_eq!(
        (
            &summary["wins"],
            &summary["n"],
            &summary["losses"],
            &summary["content_policy"],
            &summary["other_replies"],
            &summary["errors"]
        ),
        (
            &json!(1),
            &json!(3),
            &json!(1),
            &json!(1),
            &json!(0),
            &json!(0)
        )
    );
    assert_eq!(summary["complete"], true);
    // Two completions of 100 + 1 tokens; the refusal carries no usage.
    assert_eq!(summary["prompt_tokens"], 200);
    assert_eq!(summary["completion_tokens"], 2);
    // (200 * 2.5 + 2 * 10) / 1e6
    let cost = summary["cost"].as_f64().unwrap();
    assert!((cost - 0.00052).abs() < 1e-15, "cost {cost}");
    assert!(summary["finished_at"].as_str().unwrap().ends_with('Z'));
    assert!(summary.get("swap").is_none());

    let journal = read(&config.journal_path());
    let lines: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|l| l["judge_model"] == "gpt-4o-2024-08-06"));
}

#[test]
fn transient_failures_are_retried_and_outcomes_counted_apart() {
    let server = ChatServer::start(|req, attempt| match (item_of(req), attempt) {
        (0, 0) => error(
            429,
            "rate_limit_exceeded",
            "slow down",
            &[("Retry-After", "1")],
        ),
        (1, 0) => error(
            429,
            "rate_limit_exceeded",
            "slow down",
            &[("Retry-After", "1800")],
        ),
        (2, 0 | 1) => error(500, "server_error", "oops", &[]),
        (2, _) => completion("M"),
        (3, 0) => Reply::Delay(Duration::from_secs(2), Box::new(completion("M"))),
        (4, 0) => raw(200, "{\"choices\": [{\"message\": "),
        (5, _) => error(400, "content_policy_violation", "refused", &[]),
        (6, _) => completion("I think m"),
        (7, _) => error(500, "server_error", "always down", &[]),
        (8, 0) => Reply::Hangup,
        (8, _) => completion("M"),
        _ => completion("m"),
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 9, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend([
        "--concurrency",
        "4",
        "--timeout",
        "0.5",
        "--retries",
        "2",
        "--backoff-base",
        "0.01",
        "--backoff-max",
        "1.2",
    ]);
    let config = config(&server, &args);
    let started = std::time::Instant::now();
    let (report, stdout) = run(&config);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Python: 4 / 9 == 0.4444444444444444 (wins: Q0 Q1 Q3 Q4).
    assert_eq!(stdout, "Winning rate of model-x: 0.4444444444444444\n");
    assert_eq!(
        report.original,
        Tally {
            n: 9,
            wins: 4,
            losses: 2,
            content_policy: 1,
            other_replies: 1,
            errors: 1
        }
    );
    assert!(!report.complete());
    assert_eq!(report.exit_code(), std::process::ExitCode::from(1));

    let requests = server.requests();
    let of = |i: usize| -> Vec<&Request> { requests.iter().filter(|r| item_of(r) == i).collect() };
    let counts: Vec<usize> = (0..9).map(|i| of(i).len()).collect();
    // Q7 fails 1 + --retries 2 times; Q5 (content policy) and Q6 are not retried.
    assert_eq!(counts, [2, 2, 3, 2, 2, 1, 1, 3, 2]);
    // Retry-After: 1 honoured (backoff alone would wait 10 ms) ...
    let gap = |i: usize| of(i)[1].at - of(i)[0].at;
    assert!(gap(0) >= Duration::from_millis(950), "gap {:?}", gap(0));
    // ... and Retry-After: 1800 capped at --backoff-max 1.2 s.
    assert!(gap(1) >= Duration::from_millis(1150), "gap {:?}", gap(1));
    assert!(gap(1) < Duration::from_secs(3), "gap {:?}", gap(1));
    // The slow reply was abandoned at the 0.5 s timeout and asked again.
    assert!(gap(3) < Duration::from_millis(1500), "gap {:?}", gap(3));

    let output = read_json(&out);
    let choices: Vec<&Value> = output
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["choice"])
        .collect();
    let expected_choices = [
        json!("m"),
        json!("m"),
        json!("M"),
        json!("m"),
        json!("m"),
        json!("content_policy_violation"),
        json!("I think m"),
        // Q7: no verdict.
        Value::Null,
        json!("M"),
    ];
    assert_eq!(choices, expected_choices.iter().collect::<Vec<_>>());
    let summary = read_json(&config.summary_path());
    assert_eq!(summary["errors"], 1);
    assert_eq!(summary["other_replies"], 1);
    assert_eq!(summary["content_policy"], 1);
    assert_eq!(summary["complete"], false);
    let journal = read(&config.journal_path());
    let error_line = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["outcome"] == "error")
        .expect("error journaled");
    assert_eq!(error_line["image"], "img/i7.png");
    assert_eq!(error_line["attempts"], 3);
    assert!(error_line["error"].as_str().unwrap().contains("HTTP 500"));
}

#[test]
fn rerun_asks_only_for_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 5, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend(["--retries", "0", "--concurrency", "2"]);

    let first = ChatServer::start(|req, _| match item_of(req) {
        1 | 3 => error(503, "server_error", "down", &[]),
        _ => completion("m"),
    });
    let (report, _) = run(&config(&first, &args));
    assert_eq!((report.original.wins, report.original.errors), (3, 2));
    assert_eq!(first.requests().len(), 5);

    // A crash in the middle of writing a line must not block the rerun.
    let journal = config(&first, &args).journal_path();
    let mut text = read(&journal);
    text.push_str("{\"image\": \"img/i1.png\", \"ord");
    std::fs::write(&journal, text).unwrap();

    let second = ChatServer::start(|_, _| completion("M"));
    let config2 = config(&second, &args);
    let (report, stdout) = run(&config2);
    let mut asked: Vec<usize> = second.requests().iter().map(item_of).collect();
    asked.sort();
    assert_eq!(asked, [1, 3]);
    assert_eq!((report.resumed, report.asked), (3, 2));
    assert_eq!(
        report.original,
        Tally {
            n: 5,
            wins: 3,
            losses: 2,
            content_policy: 0,
            other_replies: 0,
            errors: 0
        }
    );
    // Python: 3 / 5 == 0.6
    assert_eq!(stdout, "Winning rate of model-x: 0.6\n");
    assert!(report.complete());

    // Verdicts of another judge model are not reused.
    let third = ChatServer::start(|_, _| completion("m"));
    let args3: Vec<&str> = args
        .iter()
        .map(|a| if *a == "judge-x" { "judge-y" } else { a })
        .collect();
    let (report, _) = run(&config(&third, &args3));
    assert_eq!(third.requests().len(), 5);
    assert_eq!(report.original.wins, 5);
}

#[test]
fn swap_judges_both_seats_and_reports_the_debiased_rate() {
    // A judge with position bias: it picks the answer containing GOOD, else seat m.
    let server = ChatServer::start(|req, _| {
        let prompt = req.prompt();
        let m_at = prompt.find("\"model_identifier\": \"m\"").unwrap();
        let big_m_at = prompt.find("\"model_identifier\": \"M\"").unwrap();
        let m_output = &prompt[m_at..big_m_at];
        let big_m_output = &prompt[big_m_at..];
        if big_m_output.contains("GOOD") && !m_output.contains("GOOD") {
            completion("M")
        } else {
            completion("m")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    // Q0: model GOOD (wins both orders); Q1: reference GOOD (loses both); Q2, Q3: the
    // bias decides (wins original, loses swapped).
    let paths = synthetic(dir.path(), 4, |i| {
        if i == 0 {
            "P0 GOOD".into()
        } else {
            format!("P{i}")
        }
    });
    let reference: Value = read_json(&paths[0]);
    let mut reference = reference.as_array().unwrap().clone();
    reference[1]["response"] = json!("R1 GOOD");
    std::fs::write(&paths[0], Value::Array(reference).to_string()).unwrap();

    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.push("--swap");
    let config = config(&server, &args);
    let (report, stdout) = run(&config);

    // Python: 3 / 4 == 0.75, 1 / 4 == 0.25, (3 + 1) / 8 == 0.5
    assert_eq!(
        stdout,
        "Winning rate of model-x: 0.75\n\
         Winning rate of model-x (swapped seats): 0.25\n\
         Debiased winning rate of model-x: 0.5\n"
    );
    assert_eq!(report.swapped.map(|s| (s.wins, s.losses)), Some((1, 3)));
    assert_eq!(server.requests().len(), 8);
    // The swapped request for Q2 seats the reference answer at m and the model's at M.
    let swapped_q2 = server
        .requests()
        .into_iter()
        .find(|r| {
            item_of(r) == 2
                && r.prompt()
                    .contains("\"model_identifier\": \"m\",\n        \"output\": \"R2\"")
        })
        .expect("swapped request");
    assert!(swapped_q2
        .prompt()
        .contains("\"model_identifier\": \"M\",\n        \"output\": \"P2\""));

    let summary = read_json(&config.summary_path());
    assert_eq!(summary["swap"]["win_rate_original"], 0.75);
    assert_eq!(summary["swap"]["win_rate_swapped"], 0.25);
    assert_eq!(summary["swap"]["debiased_win_rate"], 0.5);
    assert_eq!(summary["win_rate"], 0.75);
    let swapped = read_json(&config.swapped_path());
    assert_eq!(swapped[2]["output_1"], "R2");
    assert_eq!(swapped[2]["output_2"], "P2");
    assert_eq!(swapped[2]["choice"], "m");
    assert_eq!(swapped[0]["choice"], "M");
}

#[test]
fn api_key_is_never_written() {
    let server = ChatServer::start(|req, _| match item_of(req) {
        0 => error(
            400,
            "invalid_request",
            &format!("Echoing your key {KEY} back"),
            &[],
        ),
        1 => raw(502, &format!("<html>bad gateway for {KEY}</html>")),
        _ => completion("m"),
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 3, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend(["--retries", "0"]);
    let config = config(&server, &args);
    assert!(!format!("{config:?}").contains(KEY));
    let (report, stdout) = run(&config);
    assert_eq!(report.original.errors, 2);
    // The key was used ...
    assert!(server
        .requests()
        .iter()
        .all(|r| r.header("authorization") == Some(&*format!("Bearer {KEY}"))));
    // ... and appears in no output.
    assert!(!stdout.contains(KEY));
    assert!(!report.summary.to_string().contains(KEY));
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let text = read(&entry.unwrap().path());
        assert!(!text.contains(KEY));
        files += 1;
    }
    assert_eq!(files, 3); // output, journal, summary
    let journal = read(&config.journal_path());
    assert!(journal.contains("Echoing your key <redacted> back"));
}

#[test]
fn missing_prediction_is_an_error_before_any_request() {
    let server = ChatServer::start(|_, _| completion("m"));
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 3, |i| format!("P{i}"));
    let mut predictions = read_json(&paths[1]);
    predictions.as_object_mut().unwrap().remove("img/i1.png");
    std::fs::write(&paths[1], predictions.to_string()).unwrap();
    let out = dir.path().join("out/model-x.json");
    let config = config(&server, &synthetic_args(&paths, &out));
    let err = judge::run(&config, &mut Vec::new()).expect_err("missing prediction");
    assert!(
        err.to_string().contains("img/i1.png"),
        "error names the image: {err}"
    );
    assert!(server.requests().is_empty());
}

#[test]
fn output_over_an_input_file_is_refused() {
    let server = ChatServer::start(|_, _| completion("m"));
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 1, |i| format!("P{i}"));
    // --out pointing at the predictions file itself.
    let argv: Vec<&str> = ["vlguard-ort", "judge", "--base-url", &server.base_url]
        .into_iter()
        .chain(synthetic_args(&paths, &paths[1]))
        .collect();
    let Command::Judge(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not the judge command")
    };
    let err = JudgeConfig::from_args(&args, |_| Some(KEY.to_string())).expect_err("refused");
    assert!(err.to_string().contains("--out"), "{err}");
    assert!(server.requests().is_empty());
}

/// The lines of the journal, parsed.
fn journal_lines(config: &JudgeConfig) -> Vec<Value> {
    read(&config.journal_path())
        .lines()
        .map(|l| serde_json::from_str(l).expect("journal line"))
        .collect()
}

#[test]
fn invalid_model_name_stops_the_run_and_keeps_the_verdicts() {
    // LiteLLM's answer for a model it does not serve; items 0 and 1 were judged before
    // the proxy's configuration changed.
    let server = ChatServer::start(|req, _| match item_of(req) {
        0 | 1 => completion("m"),
        _ => error(
            400,
            "400",
            "Invalid model name passed in model=judge-x",
            &[],
        ),
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 9, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend(["--concurrency", "1"]);
    let config = config(&server, &args);
    let mut stdout = Vec::new();
    let err = judge::run(&config, &mut stdout).expect_err("the run stops");

    let text = err.to_string();
    assert!(
        text.starts_with("judge stopped: 3 requests in a row were refused with HTTP 400: Invalid model name passed in model=judge-x"),
        "{text}"
    );
    assert!(
        text.contains(&config.journal_path().display().to_string()),
        "{text}"
    );
    // Items 2, 3, 4 were refused; 5..8 were never asked.
    let mut asked: Vec<usize> = server.requests().iter().map(item_of).collect();
    asked.sort();
    assert_eq!(asked, [0, 1, 2, 3, 4]);
    assert!(stdout.is_empty(), "no rate printed");
    assert!(!out.exists() && !config.summary_path().exists());
    let outcomes: Vec<String> = journal_lines(&config)
        .iter()
        .map(|l| l["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["win", "win", "error", "error", "error"]);

    // Fixed: the rerun keeps the two verdicts and asks for the other seven.
    let fixed = ChatServer::start(|_, _| completion("M"));
    let (report, stdout) = run(&self::config(&fixed, &args));
    assert_eq!((report.resumed, report.asked), (2, 7));
    // Python: 2 / 9 == 0.2222222222222222
    assert_eq!(stdout, "Winning rate of model-x: 0.2222222222222222\n");
}

#[test]
fn a_closed_port_stops_after_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 6, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut argv = vec![
        "vlguard-ort".to_string(),
        "judge".into(),
        "--base-url".into(),
        chat_server::closed_port_url(),
    ];
    argv.extend(synthetic_args(&paths, &out).iter().map(|s| s.to_string()));
    argv.extend(chat_server::GIVE_UP_FAST.map(String::from));
    let Command::Judge(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not the judge command")
    };
    let config = JudgeConfig::from_args(&args, |_| Some(KEY.to_string())).unwrap();
    let err = judge::run(&config, &mut Vec::new()).expect_err("the run stops");
    let text = err.to_string();
    assert!(
        text.contains("cannot connect to http://127.0.0.1:"),
        "{text}"
    );
    assert!(
        text.contains("on every try of img/i0.png (original)"),
        "{text}"
    );
    // One request, three tries, journaled; the other five items were never tried.
    let lines = journal_lines(&config);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["attempts"], 3);
    assert_eq!(lines[0]["outcome"], "error");
}

#[test]
fn client_errors_that_are_not_in_a_row_do_not_stop_the_run() {
    // Items 1, 2 and 4, 5 are refused the same way, but a verdict comes between; item 7
    // is refused differently; 8 fails with 500 once, then answers.
    let server = ChatServer::start(|req, attempt| match (item_of(req), attempt) {
        (1 | 2 | 4 | 5, _) => error(400, "invalid_image", "Image too large", &[]),
        (7, _) => error(422, "unprocessable", "Bad image", &[]),
        (8, 0) => error(500, "server_error", "oops", &[]),
        _ => completion("m"),
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 9, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend(["--concurrency", "1", "--backoff-base", "0.01"]);
    let config = config(&server, &args);
    let (report, stdout) = run(&config);
    assert_eq!((report.original.wins, report.original.errors), (4, 5));
    // Python: 4 / 9 == 0.4444444444444444
    assert_eq!(stdout, "Winning rate of model-x: 0.4444444444444444\n");
    assert_eq!(report.exit_code(), std::process::ExitCode::from(1));
    assert_eq!(server.requests().len(), 10);
}

#[test]
fn no_verdict_at_all_prints_no_rate() {
    // Every request fails in a way a retry might fix, until the retries run out.
    let server = ChatServer::start(|_, _| error(503, "server_error", "overloaded", &[]));
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 3, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend(["--retries", "1", "--backoff-base", "0.01"]);
    let config = config(&server, &args);
    let mut stdout = Vec::new();
    let err = judge::run(&config, &mut stdout).expect_err("no verdict");
    assert!(
        err.to_string()
            .starts_with("no verdict at all: 3 request(s) asked, every one failed"),
        "{err}"
    );
    assert!(stdout.is_empty(), "{}", String::from_utf8_lossy(&stdout));
    // Nothing for the leaderboard to show as a 0.0 win rate.
    assert!(!config.summary_path().exists() && !out.exists());
    assert_eq!(journal_lines(&config).len(), 3);
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn litellm_provider_retry_after_is_honoured() {
    // A LiteLLM proxy passes the upstream provider's Retry-After on under this name.
    let server = ChatServer::start(|_, attempt| match attempt {
        0 => error(
            429,
            "429",
            "Rate limit reached",
            &[("llm_provider-retry-after", "1")],
        ),
        _ => completion("m"),
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 1, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut args = synthetic_args(&paths, &out);
    args.extend(["--backoff-base", "0.01"]);
    let (report, _) = run(&config(&server, &args));
    assert_eq!(report.original.wins, 1);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    // The backoff alone would have waited 10 ms.
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_millis(950), "gap {gap:?}");
}

/// Runs `config` on another thread with a deadline: a hang fails the test, not the suite.
fn run_within(config: JudgeConfig, limit: Duration) -> Result<(JudgeReport, String), String> {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = Vec::new();
        let result = judge::run(&config, &mut stdout)
            .map(|report| (report, String::from_utf8_lossy(&stdout).into_owned()))
            .map_err(|e| e.to_string());
        let _ = send.send(result);
    });
    receive
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("judge did not finish within {limit:?} (a hang)"))
}

/// Issue 24, case 3: a FIFO as a reference image hung the judge before any request. Any
/// image that is not a regular file, or that leaves --images, is an error naming it,
/// before anything is sent.
#[test]
fn issue24_3_reference_images_that_are_not_regular_files_are_refused_unread() {
    type Plant = fn(&Path);
    let cases: [(&str, Plant); 3] = [
        ("not a regular file (a FIFO)", |p| {
            let made = std::process::Command::new("mkfifo").arg(p).status();
            assert!(made.unwrap().success());
        }),
        ("not a regular file (a character device)", |p| {
            std::os::unix::fs::symlink("/dev/zero", p).unwrap()
        }),
        ("not a regular file (a directory)", |p| {
            std::fs::create_dir(p).unwrap()
        }),
    ];
    let server = ChatServer::start(|_, _| completion("m"));
    for (expected, plant) in cases {
        let dir = tempfile::tempdir().unwrap();
        let paths = synthetic(dir.path(), 3, |i| format!("P{i}"));
        let image = paths[2].join("img/i1.png");
        std::fs::remove_file(&image).unwrap();
        plant(&image);
        let out = dir.path().join("out/model-x.json");
        let config = config(&server, &synthetic_args(&paths, &out));
        let err = run_within(config, Duration::from_secs(60)).expect_err("refused");
        assert!(err.contains("i1.png") && err.contains(expected), "{err}");
    }
    // A reference path that leaves the image folder.
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 2, |i| format!("P{i}"));
    let mut reference: Value = read_json(&paths[0]);
    reference[0]["image"] = Value::from("../reference.json");
    std::fs::write(&paths[0], reference.to_string()).unwrap();
    let mut predictions: Value = read_json(&paths[1]);
    predictions["../reference.json"] = Value::from("P0");
    std::fs::write(&paths[1], predictions.to_string()).unwrap();
    let out = dir.path().join("out/model-x.json");
    let config = config(&server, &synthetic_args(&paths, &out));
    let err = run_within(config, Duration::from_secs(60)).expect_err("refused");
    assert!(
        err.contains("`..` component leaves the image folder"),
        "{err}"
    );
    assert!(server.requests().is_empty(), "nothing was sent");
}

/// Issue 24, case 4: a 302 turned the POST into a GET to another origin, whose answer
/// was taken as the verdict (`Winning rate: 1.0`). No redirect is followed: each is an
/// error for its request naming the target, and a row of them stops the run.
#[test]
fn issue24_4_a_redirect_of_the_post_is_never_followed() {
    // What a redirect would reach: a "judge" that says the model won.
    let elsewhere = ChatServer::start(|_, _| completion("m"));
    let target = format!("{}/chat/completions", elsewhere.base_url);
    for status in [301, 302, 303, 307, 308] {
        let location = target.clone();
        let server = ChatServer::start(move |_, _| Reply::Http {
            status,
            headers: vec![("Location".into(), location.clone())],
            body: String::new(),
        });
        let dir = tempfile::tempdir().unwrap();
        let paths = synthetic(dir.path(), 4, |i| format!("P{i}"));
        let out = dir.path().join("out/model-x.json");
        let mut args = synthetic_args(&paths, &out);
        args.extend(["--concurrency", "1"]);
        let config = config(&server, &args);
        let summary = config.summary_path();
        let err = run_within(config, Duration::from_secs(60)).expect_err("no verdict");
        assert!(
            err.contains(&format!(
                "HTTP {status}: the endpoint redirects to {target}"
            )) && err.contains("3 requests in a row"),
            "{status}: {err}"
        );
        assert_eq!(server.requests().len(), 3, "{status}");
        assert!(!summary.exists() && !out.exists(), "{status}: no rate");
    }
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}

/// Issue 24 (minor): a password in --base-url was printed and stored in the journal and
/// the summary.
#[test]
fn a_password_in_the_base_url_stays_out_of_every_file() {
    let server = ChatServer::start(|req, _| match item_of(req) {
        0 => error(400, "bad", "refused", &[]),
        _ => completion("m"),
    });
    let with_password = server
        .base_url
        .replacen("http://", "http://judge:hunter2@", 1);
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic(dir.path(), 3, |i| format!("P{i}"));
    let out = dir.path().join("out/model-x.json");
    let mut argv = vec!["vlguard-ort", "judge", "--base-url", &with_password];
    argv.extend(synthetic_args(&paths, &out));
    let Command::Judge(args) = Cli::try_parse_from(argv).unwrap().command else {
        panic!("not the judge command")
    };
    let config = JudgeConfig::from_args(&args, |_| Some(KEY.to_string())).unwrap();
    let _ = run_within(config, Duration::from_secs(60));
    let summary = read(&out.with_file_name("model-x.summary.json"));
    assert!(summary.contains("judge:<redacted>@"), "{summary}");
    for entry in std::fs::read_dir(out.parent().unwrap()).unwrap() {
        let text = read(&entry.unwrap().path());
        assert!(!text.contains("hunter2"), "{text}");
    }
}
