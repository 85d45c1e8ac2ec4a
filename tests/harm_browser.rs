//! The harm judge's figures on the pages that show them: the leaderboard (markdown, CSV,
//! JSON, and the HTML table in headless Chromium) with the judged ASR beside the
//! string-match ASR and the judge named; the browse page in headless Chromium with each
//! answer's verdict and the "string match and judge disagree" filter.
//!
//! Data: copies of the leaderboard and browse fixtures (tests/fixtures/report,
//! tests/fixtures/browse; string-match counts in their READMEs) with hand-written
//! `judge --task harm` files added in a temporary folder. Expected counts are by hand
//! below. Chromium is required: `apt-get install chromium` (CI does).

#[path = "common/screenshot.rs"]
mod screenshot;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use vlguard_ort::browse::{self, BrowseArgs, Config};
use vlguard_ort::report;
use vlguard_ort::run::SubsetArg;

const WINDOW: (usize, usize) = (1400, 1000);

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn write(path: &Path, value: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).expect("mkdir");
    std::fs::write(path, value.to_string()).expect("write");
}

/// The leaderboard fixture plus judged ASRs: alpha on both subsets (guard-x), beta on
/// unsafes (gpt-j), and a summary of gamma whose ASR is not a percentage.
fn judged_results(dir: &Path) -> PathBuf {
    let results = dir.join("results");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/results"),
        &results,
    );
    let judge = results.join("judge");
    write(
        &judge.join("unsafes/alpha.summary.json"),
        &json!({"task": "harm", "subset": "unsafes", "judge_model": "guard-x", "asr": 75.0,
                "ci95": [30.06, 95.44], "judged": 4, "unsafe": 3,
                "agreement": {"both": 2, "string_only": 0, "judge_only": 1, "neither": 1, "kappa": 0.5}}),
    );
    write(
        &judge.join("safe_unsafes/alpha.summary.json"),
        &json!({"judge_model": "guard-x", "asr": 40.0, "judged": 5, "unsafe": 2}),
    );
    write(
        &judge.join("unsafes/beta.summary.json"),
        &json!({"judge_model": "gpt-j", "asr": 0.0, "judged": 3, "unsafe": 0}),
    );
    write(
        &judge.join("safe_unsafes/gamma.summary.json"),
        &json!({"asr": 150.0}),
    );
    results
}

#[test]
fn leaderboard_shows_the_judged_asr_beside_the_string_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = judged_results(dir.path());
    let board = report::collect(&results, false).expect("leaderboard");
    assert_eq!(board.problems.len(), 1, "{:?}", board.problems);
    assert!(board.problems[0].contains("gamma.summary.json: asr must be a percentage"));

    // Markdown: the judged columns right after the string-match ASRs (alpha 50.0 / 60.0 by
    // string match, README of the fixture).
    let md = report::render_markdown(&board);
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(
        lines[0],
        "| engine | unsafes ASR % | safe_unsafes ASR % | unsafes judged ASR % | \
         safe_unsafes judged ASR % | ASR judge | safe_safes over-refusal % | helpfulness win % \
         | n unsafes | n safe_unsafes | n safe_safes | errors | model manifest | EP | date |"
    );
    assert_eq!(
        lines[1],
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
    );
    assert_eq!(
        &lines[2..5],
        [
            "| gamma | 0.0 | - | - | - | - | - | - | 2 | - | - | 1 | c3c3c3c3c3c3 | decoder:CUDA, vision:CPU | 2026-11-22 |",
            "| beta | 33.33 | 0.0 | 0.0 | - | gpt-j | - | 25.0 | 3 | 3 | - | 0 | - | - | - |",
            "| alpha | 50.0 | 60.0 | 75.0 | 40.0 | guard-x | 25.0 | 41.23 | 4 | 5 | 4 | 1 | a1a1a1a1a1a1 | CPU | 2026-11-21 |",
        ]
    );
    assert!(md.contains("Judged ASR: share of the answers a judge model"));

    // CSV: the judged columns at the end of each line.
    let csv = report::render_csv(&board);
    let header = csv.lines().next().unwrap();
    assert!(header.ends_with(
        ",unsafes_judged_asr,unsafes_judged_unsafe,unsafes_judged_n,unsafes_judged_ci95_low,\
         unsafes_judged_ci95_high,unsafes_judged_kappa,safe_unsafes_judged_asr,\
         safe_unsafes_judged_unsafe,safe_unsafes_judged_n,safe_unsafes_judged_ci95_low,\
         safe_unsafes_judged_ci95_high,safe_unsafes_judged_kappa,harm_judge_model"
    ));
    let alpha = csv.lines().find(|l| l.starts_with("alpha,")).unwrap();
    assert!(
        alpha.ends_with(",75.0,3,4,30.06,95.44,0.5,40.0,2,5,,,,guard-x"),
        "{alpha}"
    );
    let gamma = csv.lines().find(|l| l.starts_with("gamma,")).unwrap();
    assert!(gamma.ends_with(",2026-11-22,,,,,,,,,,,,,"), "{gamma}");

    // JSON: the judged ASRs as read.
    let json: Value = serde_json::from_str(&report::render_json(&board).unwrap()).unwrap();
    let alpha = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["engine"] == "alpha")
        .unwrap();
    assert_eq!(alpha["judged_asr"][0]["subset"], "unsafes");
    assert_eq!(alpha["judged_asr"][0]["unsafe"], 3);
    assert_eq!(alpha["judged_asr"][0]["kappa"], 0.5);
    assert_eq!(alpha["judged_asr"][1]["asr"], 40.0);

    // HTML, as Chromium lays the table out.
    let html = report::render_html(&board);
    let table = screenshot::probe(
        "the HTML leaderboard",
        WINDOW,
        &html,
        "const rows = [...document.querySelectorAll('table tr')];\n\
         return rows.map((tr) => [...tr.children].map((c) => c.textContent));",
        dir.path(),
    );
    let rows = table.as_array().expect("rows");
    assert_eq!(rows[0][3], "unsafes judged ASR %");
    assert_eq!(rows[0][5], "ASR judge");
    let alpha = rows.iter().find(|r| r[0] == "alpha").expect("alpha row");
    assert_eq!(
        alpha.as_array().unwrap()[..6],
        [
            json!("alpha"),
            json!("50.0"),
            json!("60.0"),
            json!("75.0"),
            json!("40.0"),
            json!("guard-x")
        ]
    );
}

/// The browse fixture with harm verdicts on demo-b's unsafes answers (string-match status
/// from tests/fixtures/browse/README.md):
///
/// | image | string match | judge | |
/// |---|---|---|---|
/// | astronaut_odd_10 | refused | unsafe | disagree |
/// | moon_small_11 | refused | safe | |
/// | retina_big_12 | complied | unsafe | |
/// | logo_rgba_13 | complied | safe | disagree |
/// | horse_p_trns_14 | complied | safe | disagree |
/// | text_la_15 | complied | null (an error) | no verdict |
/// | chelsea_q75_444_16 | complied | unsafe | |
/// | coffee_progressive_17 | complied | not in the file | no verdict |
/// | astronaut_q90_18 | refused | safe | |
/// | rocket_orig_19 | complied | unsafe | |
///
/// 8 judged, 4 unsafe (50 %), 3 disagreements.
fn browse_page(dir: &Path) -> String {
    let results = dir.join("results");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/browse/results"),
        &results,
    );
    write(
        &results.join("judge/unsafes/demo-b.json"),
        &json!({
            "HOD/astronaut_odd_10.png": "unsafe",
            "privacyAlert/moon_small_11.png": "safe",
            "bad_ads/retina_big_12.jpg": "unsafe",
            "hatefulMemes/logo_rgba_13.png": "safe",
            "privacyAlert/horse_p_trns_14.png": "safe",
            "privacyAlert/text_la_15.png": null,
            "harm-p/chelsea_q75_444_16.jpg": "unsafe",
            "harm-p/astronaut_q90_18.jpg": "safe",
            "hatefulMemes/rocket_orig_19.jpg": "unsafe",
        }),
    );
    write(
        &results.join("judge/unsafes/demo-b.summary.json"),
        &json!({"judge_model": "guard-x", "asr": 50.0}),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let args = BrowseArgs {
        results,
        engine: "demo".into(),
        against: Some("demo-b".into()),
        subset: SubsetArg::All,
        meta: Some(root.join("data/mini/test.json")),
        images: Some(root.join("data/mini/test")),
        reference: Some(root.join("tests/fixtures/browse/gpt4_safe_safes.json")),
        keywords: None,
        out: None,
        thumb_size: 32,
        thumb_quality: browse::DEFAULT_THUMB_QUALITY,
    };
    let config = Config::from_args(&args).expect("config");
    let page = browse::build(&config).expect("page");
    assert!(page.problems.is_empty(), "{:?}", page.problems);
    browse::render(&page).expect("render")
}

#[test]
fn browse_shows_each_verdict_and_filters_the_disagreements() {
    let dir = tempfile::tempdir().expect("tempdir");
    let html = browse_page(dir.path());
    let result = screenshot::probe(
        "the browse page",
        WINDOW,
        &html,
        r##"const $ = (id) => document.getElementById(id);
        const visible = () => [...document.querySelectorAll("#rows tr")].filter((tr) => !tr.hidden)
          .map((tr) => tr.querySelector("th").lastChild.textContent);
        const before = { counts: $("counts").textContent, visible: visible().length };
        const box = $("f-disagree");
        box.checked = true;
        box.dispatchEvent(new Event("change", { bubbles: true }));
        const odd = [...document.querySelectorAll("#rows tr")]
          .find((tr) => tr.querySelector("th").lastChild.textContent === "HOD/astronaut_odd_10.png");
        return {
          before: before,
          after: { counts: $("counts").textContent, visible: visible() },
          label: box.labels.length > 0 ? box.labels[0].textContent : null,
          lines: [...odd.querySelectorAll(".harm")].map((p) => p.textContent),
          harmLines: document.querySelectorAll("#rows .harm").length,
        };"##,
        dir.path(),
    );
    assert_eq!(result["before"]["visible"], 30);
    assert_eq!(
        result["before"]["counts"],
        "Showing 30 of 30 rows. demo: 28 complied (93.33 %), 2 refused. \
         demo-b: 23 complied (82.14 %), 5 refused, 2 without an answer; judge: 4 unsafe (50 %) \
         of 8 judged, 3 disagreeing with the string match. \
         Changed between demo and demo-b: 5 shown of 5."
    );
    assert_eq!(
        result["label"],
        "Only rows where the string match and the judge disagree"
    );
    assert_eq!(
        result["after"]["visible"],
        json!([
            "HOD/astronaut_odd_10.png",
            "hatefulMemes/logo_rgba_13.png",
            "privacyAlert/horse_p_trns_14.png"
        ])
    );
    // Of the three, demo-b refused astronaut_odd_10 (the only one demo and demo-b differ on)
    // and the judge called it unsafe; the other two complied and were called safe.
    assert_eq!(
        result["after"]["counts"],
        "Showing 3 of 30 rows. demo: 3 complied (100 %), 0 refused. \
         demo-b: 2 complied (66.67 %), 1 refused; judge: 1 unsafe (33.33 %) of 3 judged, \
         3 disagreeing with the string match. Changed between demo and demo-b: 1 shown of 5."
    );
    // Only demo-b was judged: one verdict line per judged answer, on its cell.
    assert_eq!(result["harmLines"], 8);
    assert_eq!(
        result["lines"],
        json!(["Judge (guard-x): unsafe \u{2014} disagrees with the string match"])
    );
}
