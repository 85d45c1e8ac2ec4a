//! Golden texts of `leaderboard` over tests/fixtures/report/results.
//!
//! The fixture answers were written by hand so that each verdict is obvious; the expected
//! numbers below were counted by hand from them (see tests/fixtures/report/README.md) and
//! the Wilson intervals checked with statsmodels' `proportion_confint(method="wilson")`.
//! The golden files are the command's output, reviewed line by line against those numbers;
//! set VLGUARD_UPDATE_GOLDEN=1 to rewrite them after an intended change.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixtures() -> PathBuf {
    Path::new(ROOT).join("tests/fixtures/report")
}

/// Runs the binary from the package root on the relative fixture path (so the path in
/// the output does not depend on the checkout's location).
fn leaderboard(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"))
        .current_dir(ROOT)
        .arg("leaderboard")
        .arg("tests/fixtures/report/results")
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("utf-8"),
        String::from_utf8(out.stderr).expect("utf-8"),
    )
}

fn check_golden(name: &str, got: &str) {
    let path = fixtures().join(name);
    if std::env::var_os("VLGUARD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (VLGUARD_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert_eq!(got, want, "{name} differs from the golden text");
}

#[test]
fn markdown_with_paper_rows() {
    let (code, out, err) = leaderboard(&["--with-paper"]);
    assert_eq!(code, Some(0), "{err}");
    check_golden("leaderboard.md", &out);
    // Sorted by unsafes ASR, safest first: gamma 0/2, Mixed (paper) 0.9, beta 1/3,
    // alpha 2/4, 13B (paper) 55.88, 7B (paper) 72.62.
    let engines: Vec<&str> = out
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1).map(str::trim))
        .collect();
    assert_eq!(
        engines,
        [
            "gamma",
            "LLaVA-v1.5-7B-Mixed (paper)",
            "beta",
            "alpha",
            "LLaVA-v1.5-13B (paper)",
            "LLaVA-v1.5-7B (paper)"
        ]
    );
}

#[test]
fn csv_with_paper_rows() {
    let (code, out, err) = leaderboard(&["--with-paper", "--format", "csv"]);
    assert_eq!(code, Some(0), "{err}");
    check_golden("leaderboard.csv", &out);
    let header: Vec<&str> = out.lines().next().expect("header").split(',').collect();
    let alpha: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("alpha,"))
        .expect("alpha row")
        .split(',')
        .collect();
    let field = |name: &str| alpha[header.iter().position(|h| *h == name).expect(name)];
    // Hand counts (README.md): unsafes 2/4, safe_unsafes 3/5, safe_safes 1 refusal of 4,
    // judge 0.4123 -> 41.23, debiased 0.4 -> 40.0, one errored sample in the manifests.
    assert_eq!(field("unsafes_asr"), "50.0");
    assert_eq!(field("unsafes_successes"), "2");
    // statsmodels: proportion_confint(2, 4, method="wilson") = (0.1500, 0.8500)
    assert_eq!(field("unsafes_ci95_low"), "15.0");
    assert_eq!(field("unsafes_ci95_high"), "85.0");
    assert_eq!(field("safe_unsafes_asr"), "60.0");
    assert_eq!(field("safe_safes_over_refusal"), "25.0");
    assert_eq!(field("helpfulness_win_rate"), "41.23");
    assert_eq!(field("helpfulness_debiased_win_rate"), "40.0");
    assert_eq!(field("n_errors"), "1");
    assert_eq!(field("date"), "2026-11-21");
    // The paper's 7B row keeps the counts REFERENCE.md gives: 321/442.
    let paper = out
        .lines()
        .find(|l| l.starts_with("LLaVA-v1.5-7B (paper),"))
        .expect("paper row");
    assert!(
        paper.starts_with("LLaVA-v1.5-7B (paper),paper,72.62,321,442,"),
        "{paper}"
    );
}

#[test]
fn json_without_paper_rows() {
    let (code, out, err) = leaderboard(&["--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    check_golden("leaderboard.json", &out);
    let v: Value = serde_json::from_str(&out).expect("json");
    let rows = v["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "three engines, no paper rows");
    let beta = rows.iter().find(|r| r["engine"] == "beta").expect("beta");
    // beta: Python-reference folder, no run manifest; 1/3 and 0/3 by hand.
    assert_eq!(beta["unsafes"]["asr"], 33.33);
    assert_eq!(beta["safe_unsafes"]["asr"], 0.0);
    assert!(beta["model_manifest_sha256"].is_null());
    assert_eq!(beta["helpfulness"]["win_rate"], 25.0);
    let gamma = rows.iter().find(|r| r["engine"] == "gamma").expect("gamma");
    assert_eq!(gamma["execution_provider"], "decoder:CUDA, vision:CPU");
    assert_eq!(gamma["unsafes"]["n"], 2, "the null answer is not scored");
    assert_eq!(
        gamma["n_errors"], 1,
        "null answer and manifest count the same sample"
    );
    assert_eq!(v["keywords"]["entries"], 63);
}

#[test]
fn out_file_and_html_is_self_contained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("board.html");
    let (code, out, err) = leaderboard(&[
        "--with-paper",
        "--format",
        "html",
        "--out",
        path.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.is_empty(), "--out writes nothing to stdout");
    let html = std::fs::read_to_string(&path).expect("html written");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg id=\"chart\""));
    // No network at view time: no script, no stylesheet or image link, and the only URL
    // is the SVG namespace name (an identifier, never fetched).
    let without_ns = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for banned in [
        "http:", "https:", "<script", "<link", "<img", "@import", "url(",
    ] {
        assert!(!without_ns.contains(banned), "{banned} in the page");
    }
    for engine in ["alpha", "beta", "gamma", "LLaVA-v1.5-7B (paper)"] {
        assert!(html.contains(&format!("<td>{engine}</td>")), "{engine} row");
    }
    assert!(html.contains("Not judged yet (no judge summary; on the harmfulness axis): gamma."));
    assert!(
        html.contains(">gamma (not judged yet)</text>"),
        "gamma's chart label"
    );
    let (h1, svg) = (html.find("<h1>"), html.find("<svg"));
    assert!(
        h1.is_some() && h1 < svg,
        "the heading comes before the chart"
    );
}

#[test]
fn unreadable_file_is_reported_and_others_still_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unsafes = dir.path().join("unsafes");
    std::fs::create_dir_all(&unsafes).expect("mkdir");
    std::fs::write(unsafes.join("good.json"), r#"{"a.png": "Sure."}"#).expect("write");
    std::fs::write(unsafes.join("bad.json"), "{not json").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"))
        .arg("leaderboard")
        .arg(dir.path())
        .args(["--format", "csv"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\ngood,run,100.0,1,1,"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.json") && stderr.contains("not valid JSON"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"))
        .arg("leaderboard")
        .arg(empty.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no results under"));
}
