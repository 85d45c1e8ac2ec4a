//! The browse page's embedded data, golden-tested on the demo's answers
//! (tests/fixtures/browse: the demo model's answers on the mini test set, a second engine
//! made from them with hand-picked edits, judge verdicts, the mini set's GPT-4V file; see
//! its README for the hand counts), and the command's errors.
//!
//! The expected blobs (`expected_demo.json`, `expected_demo_vs_b.json`) are the command's
//! output reviewed against the README's counts, with each thumbnail's `src` replaced by
//! `<jpeg WxH>` once the test has decoded it to exactly that size (the JPEG bytes depend on
//! the encoder build; the size, and the pixels the browser test checks, do not). Rewrite
//! them after a reviewed change with `VLGUARD_BLESS=1 cargo test --test browse_data`.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;
use vlguard_ort::browse::{self, html, BrowseArgs, Config};
use vlguard_ort::run::SubsetArg;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/browse");
const BIN: &str = env!("CARGO_BIN_EXE_vlguard-ort");

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURE).join(rel)
}

/// The args of `browse tests/fixtures/browse/results --engine demo [--against demo-b]`, with
/// repository-relative paths (tests run in the package root) so the blob is stable.
fn args(against: Option<&str>) -> BrowseArgs {
    BrowseArgs {
        results: PathBuf::from("tests/fixtures/browse/results"),
        engine: "demo".into(),
        against: against.map(str::to_owned),
        subset: SubsetArg::All,
        meta: None,
        images: None,
        reference: Some(PathBuf::from("tests/fixtures/browse/gpt4_safe_safes.json")),
        keywords: None,
        out: None,
        thumb_size: browse::DEFAULT_THUMB_SIZE,
        thumb_quality: browse::DEFAULT_THUMB_QUALITY,
    }
}

/// Checks every thumbnail decodes to the size it claims and that size fits the original
/// image into the default size, then replaces its bytes by `<jpeg WxH>`.
fn check_and_mask_thumbs(data: &mut Value, images: &Path) {
    let dir = tempfile::tempdir().expect("tempdir");
    let thumbs = data["thumbs"].as_object_mut().expect("thumbs object");
    for (image, thumb) in thumbs.iter_mut() {
        let (w, h) = (
            thumb["width"].as_u64().unwrap(),
            thumb["height"].as_u64().unwrap(),
        );
        let src = thumb["src"].as_str().expect("src");
        let b64 = src
            .strip_prefix("data:image/jpeg;base64,")
            .unwrap_or_else(|| panic!("{image}: not a JPEG data URL"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        let path = dir.path().join("t.jpg");
        std::fs::write(&path, bytes).expect("write");
        let decoded = vlguard_ort::preprocess::decode_rgb(&path).expect("thumbnail decodes");
        assert_eq!(
            (decoded.width as u64, decoded.height as u64),
            (w, h),
            "{image}"
        );
        let original = vlguard_ort::preprocess::decode_rgb(&images.join(image)).expect("image");
        let want = browse::thumbs::fit(original.width, original.height, browse::DEFAULT_THUMB_SIZE);
        assert_eq!((w as usize, h as usize), want, "{image}");
        thumb["src"] = Value::String(format!("<jpeg {w}x{h}>"));
    }
}

fn golden(name: &str, data: &Value) {
    let path = fixture(name);
    let text = serde_json::to_string_pretty(data).expect("json") + "\n";
    if std::env::var_os("VLGUARD_BLESS").is_some() {
        std::fs::write(&path, &text).expect("bless");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VLGUARD_BLESS=1 writes it)", path.display()));
    let expected: Value = serde_json::from_str(&expected).expect("expected JSON");
    if &expected != data {
        let got = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.got"));
        std::fs::write(&got, text).expect("write got");
        panic!(
            "the page data differs from {}; what was made is in {}",
            path.display(),
            got.display()
        );
    }
}

fn page_data(against: Option<&str>) -> Value {
    let config = Config::from_args(&args(against)).expect("config");
    let page = browse::build(&config).expect("page");
    let mut data = serde_json::to_value(&page).expect("serialize");
    check_and_mask_thumbs(&mut data, Path::new("data/mini/test"));
    data
}

#[test]
fn the_fixture_holds_the_demo_answers() {
    // The demo's answers are tests/data/golden-dev/reference (byte-identical to the reference's,
    // tests/e2e_run.rs); the fixture's copies must not drift from them.
    for subset in ["unsafes", "safe_unsafes", "safe_safes"] {
        let golden =
            std::fs::read(format!("tests/data/golden-dev/reference/{subset}.json")).unwrap();
        let copy = std::fs::read(fixture(&format!("results/{subset}/demo.json"))).unwrap();
        assert!(golden == copy, "{subset}/demo.json differs from golden-dev");
    }
}

#[test]
fn demo_page_data_is_golden() {
    let data = page_data(None);
    // The README's hand counts: 30 rows, 2 refusals (both "openai", safe_unsafes).
    let rows = data["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 30);
    let refused: Vec<&str> = rows
        .iter()
        .filter(|r| r["answers"][0]["status"] == "refused")
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "bad_ads/coffee_tall_02.jpg",
            "hatefulMemes/chelsea_tiny_08.jpg"
        ]
    );
    assert_eq!(data["thumbs"].as_object().unwrap().len(), 20);
    golden("expected_demo.json", &data);
}

#[test]
fn comparison_page_data_is_golden() {
    let data = page_data(Some("demo-b"));
    let rows = data["rows"].as_array().unwrap();
    let changed: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["changed"] == true)
        .map(|r| (r["subset"].as_str().unwrap(), r["image"].as_str().unwrap()))
        .collect();
    // README: five flips, three in unsafes, one in each safe subset.
    assert_eq!(
        changed,
        [
            ("unsafes", "HOD/astronaut_odd_10.png"),
            ("unsafes", "privacyAlert/moon_small_11.png"),
            ("unsafes", "harm-p/astronaut_q90_18.jpg"),
            ("safe_unsafes", "bad_ads/coffee_tall_02.jpg"),
            ("safe_safes", "privacyAlert/brick_interlaced_00.png"),
        ]
    );
    // The phrase offsets are UTF-16 code units: "İİ 😀 " is 6 of them before "As an AI".
    let moon = rows
        .iter()
        .find(|r| r["image"] == "privacyAlert/moon_small_11.png")
        .unwrap();
    let m = &moon["answers"][1]["matched"];
    assert_eq!(
        (
            m["keyword"].as_str(),
            m["start"].as_u64(),
            m["end"].as_u64()
        ),
        (Some("as an ai"), Some(6), Some(14))
    );
    golden("expected_demo_vs_b.json", &data);
}

/// `browse` run as a program, from the package root.
fn browse_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("browse")
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn the_command_writes_the_same_data_with_the_manifest_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("page.html");
    // No --meta, no --images: taken from results/unsafes/demo.run.json.
    let run = browse_cli(&[
        "tests/fixtures/browse/results",
        "--engine",
        "demo",
        "--against",
        "demo-b",
        "--reference",
        "tests/fixtures/browse/gpt4_safe_safes.json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("30 rows, 20 thumbnails"), "{stderr}");
    let html = std::fs::read_to_string(&out).unwrap();
    let mut data = html::embedded_data(&html).expect("blob");
    check_and_mask_thumbs(&mut data, Path::new("data/mini/test"));
    assert_eq!(data, page_data(Some("demo-b")));
    // Self-contained: no URL to load anything from.
    for needle in [
        "http://",
        "https://",
        " src=\"",
        "href=\"http",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(needle), "the page holds {needle:?}");
    }
}

/// A copy of the fixture's results folder in a temporary directory.
fn results_copy(dir: &Path) -> PathBuf {
    let results = dir.join("results");
    for entry in ["unsafes", "safe_unsafes", "safe_safes", "judge"] {
        let from = fixture("results").join(entry);
        std::fs::create_dir_all(results.join(entry)).unwrap();
        for file in std::fs::read_dir(&from).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, results.join(entry).join(file.file_name().unwrap())).unwrap();
        }
    }
    results
}

#[test]
fn default_page_names_follow_the_convention() {
    let dir = tempfile::tempdir().unwrap();
    let results = results_copy(dir.path());
    let r = results.to_str().unwrap();
    for (extra, page) in [
        (vec![], "browse/demo.html"),
        (
            vec!["--against", "demo-b"],
            "browse/compare/demo--demo-b.html",
        ),
    ] {
        let mut argv = vec![r, "--engine", "demo", "--subset", "unsafes"];
        argv.extend(extra);
        let run = browse_cli(&argv);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(results.join(page).is_file(), "{page}");
    }
    // The leaderboard links demo (which has browse/demo.html) to its page, relative to
    // where the leaderboard is written; demo-b has no page and no link.
    let board = dir.path().join("site/leaderboard.html");
    let run = Command::new(BIN)
        .args(["leaderboard", r, "--format", "html", "--out"])
        .arg(&board)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let html = std::fs::read_to_string(&board).unwrap();
    assert!(
        html.contains("<td><a href=\"../results/browse/demo.html\">demo</a></td>"),
        "{html}"
    );
    assert!(html.contains("<td>demo-b</td>"), "{html}");
}

#[test]
fn unreadable_images_and_journal_lines_are_named_and_the_page_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let results = results_copy(dir.path());
    // An image folder with one image missing and one that is not an image.
    let images = dir.path().join("images");
    for folder in ["HOD", "bad_ads", "harm-p", "hatefulMemes", "privacyAlert"] {
        std::fs::create_dir_all(images.join(folder)).unwrap();
        for file in std::fs::read_dir(Path::new("data/mini/test").join(folder)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, images.join(folder).join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::remove_file(images.join("HOD/astronaut_odd_10.png")).unwrap();
    std::fs::write(images.join("harm-p/astronaut_q90_18.jpg"), b"not a jpeg").unwrap();
    // A torn line at the end of the judge journal (a crash mid-write).
    let journal = results.join("judge/demo.journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).unwrap();
    text.push_str("{\"image\": \"HOD/moto_wi");
    std::fs::write(&journal, text).unwrap();
    let out = dir.path().join("page.html");
    let run = browse_cli(&[
        results.to_str().unwrap(),
        "--engine",
        "demo",
        "--images",
        images.to_str().unwrap(),
        "--meta",
        "data/mini/test.json",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no thumbnail for HOD/astronaut_odd_10.png")
            && stderr.contains("no thumbnail for harm-p/astronaut_q90_18.jpg")
            && stderr.contains("cannot identify image file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("demo.journal.jsonl: 1 line(s) that are not verdicts"),
        "{stderr}"
    );
    let data = html::embedded_data(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(data["rows"].as_array().unwrap().len(), 30);
    assert_eq!(data["thumbs"].as_object().unwrap().len(), 18);
    assert_eq!(data["problems"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_input_is_refused_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let results = results_copy(dir.path());
    let r = results.to_str().unwrap();
    let expect_error = |argv: &[&str], needle: &str| {
        let run = browse_cli(argv);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{argv:?}: {stderr}");
        assert!(stderr.contains(needle), "{argv:?}: {stderr}");
    };
    expect_error(
        &[r, "--engine", "demo", "--against", "demo"],
        "--against: `demo` is the engine itself",
    );
    expect_error(
        &[r, "--engine", "../demo"],
        "engine name `../demo` is refused",
    );
    expect_error(&[r, "--engine", "nobody"], "no answers from nobody under");
    // A reference file named with --reference must be there (the default may be absent).
    expect_error(
        &[r, "--engine", "demo", "--reference", "nowhere.json"],
        "nowhere.json: No such file",
    );
    std::fs::remove_file(results.join("safe_safes/demo.json")).unwrap();
    expect_error(
        &[r, "--engine", "demo", "--subset", "safe_safes"],
        "safe_safes/demo.json (the subset was asked for with --subset)",
    );
    // The unsafes answers filed as safe_unsafes: their keys are not safe images.
    std::fs::copy(
        results.join("unsafes/demo.json"),
        results.join("safe_unsafes/demo.json"),
    )
    .unwrap();
    expect_error(
        &[r, "--engine", "demo"],
        "safe_unsafes/demo.json: 10 key(s) are not safe_unsafes images of data/mini/test.json",
    );
    expect_error(
        &[
            r,
            "--engine",
            "demo",
            "--subset",
            "safe_unsafes",
            "--thumb-quality",
            "0",
        ],
        "--thumb-quality: 0 is not from 1 to 100",
    );
}
