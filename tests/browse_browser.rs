//! The browse page in a real browser: headless Chromium (Debian's `chromium` package)
//! renders the comparison page of the demo fixture (tests/fixtures/browse: demo against
//! demo-b, counts in its README) offline.
//!
//! What it proves:
//! - the thumbnails render: in a screenshot, the pixels where the page lays out the first
//!   thumbnails are those thumbnails (their JPEG decoded here, compared pixel by pixel),
//!   not blank;
//! - the script draws every row, and the filters (subset, category, each engine's status,
//!   "changed", search) change which rows are visible and the live counts line, with the
//!   figures counted by hand in the fixture's README;
//! - every control has a label, the table has column and row headers, the counts line is
//!   an aria-live region.
//!
//! How: a copy of the page with a small script appended (after the page's own) drives the
//! controls as a user would (set a value, fire `input`), records what is visible, and
//! writes it as JSON into the document; `chromium --dump-dom` prints the document after
//! the scripts ran. The layout probe uses the same window size as the screenshot.
//!
//! Chromium is required: install it with `apt-get install chromium` (CI does).

#[path = "common/screenshot.rs"]
mod screenshot;
use screenshot::decode_png;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;
use vlguard_ort::browse::{self, BrowseArgs, Config};
use vlguard_ort::run::SubsetArg;

const WINDOW: (usize, usize) = (1400, 1000);

fn run_chromium(html: &Path, mode: &str, dir: &Path) -> String {
    screenshot::run_chromium("the browse page", WINDOW, html, mode, dir)
}

fn probe(html: &str, probe: &str, dir: &Path) -> Value {
    screenshot::probe("the browse page", WINDOW, html, probe, dir)
}

/// The comparison page of the fixture, written to `dir/page.html`, and its data.
fn comparison_page(dir: &Path) -> (PathBuf, String, browse::PageData) {
    let args = BrowseArgs {
        results: PathBuf::from("tests/fixtures/browse/results"),
        engine: "demo".into(),
        against: Some("demo-b".into()),
        subset: SubsetArg::All,
        meta: Some(PathBuf::from("data/mini/test.json")),
        images: Some(PathBuf::from("data/mini/test")),
        reference: Some(PathBuf::from("tests/fixtures/browse/gpt4_safe_safes.json")),
        keywords: None,
        out: None,
        thumb_size: browse::DEFAULT_THUMB_SIZE,
        thumb_quality: browse::DEFAULT_THUMB_QUALITY,
    };
    let config = Config::from_args(&args).expect("config");
    let page = browse::build(&config).expect("page");
    assert!(page.problems.is_empty(), "{:?}", page.problems);
    let html = browse::render(&page).expect("render");
    let path = dir.join("page.html");
    std::fs::write(&path, &html).expect("write page");
    (path, html, page)
}

/// A thumbnail's pixels, decoded from its data URL by the project's JPEG decoder.
fn thumbnail_pixels(src: &str, dir: &Path) -> vlguard_ort::preprocess::RgbImage {
    let b64 = src
        .strip_prefix("data:image/jpeg;base64,")
        .expect("JPEG data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let path = dir.join("thumb.jpg");
    std::fs::write(&path, bytes).expect("write thumbnail");
    vlguard_ort::preprocess::decode_rgb(&path).expect("thumbnail decodes")
}

#[test]
fn thumbnails_render_where_the_page_lays_them_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, html, page) = comparison_page(dir.path());
    // Where the first rows' thumbnails are, in CSS pixels (= screenshot pixels at scale 1).
    let layout = probe(
        &html,
        "return [...document.querySelectorAll('#rows img')].slice(0, 4).map((img) => {\n\
         const r = img.getBoundingClientRect();\n\
         return { alt: img.alt, x: r.left, y: r.top, w: r.width, h: r.height, done: img.complete };\n\
         });",
        dir.path(),
    );
    let png = dir.path().join("shot.png");
    run_chromium(
        &path,
        &format!("--screenshot={}", png.display()),
        dir.path(),
    );
    if let Some(keep) = std::env::var_os("VLGUARD_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("copy screenshot");
    }
    let shot = decode_png(&png);
    assert_eq!((shot.width, shot.height), WINDOW);
    let mut checked = 0;
    for thumb in layout.as_array().expect("probe list") {
        let image = thumb["alt"].as_str().unwrap().trim_start_matches("image ");
        let want = &page.thumbs[image];
        let (x, y) = (thumb["x"].as_f64().unwrap(), thumb["y"].as_f64().unwrap());
        assert_eq!(
            (
                thumb["w"].as_f64(),
                thumb["h"].as_f64(),
                thumb["done"].as_bool()
            ),
            (
                Some(want.width as f64),
                Some(want.height as f64),
                Some(true)
            ),
            "{image}: laid out at its own size and loaded"
        );
        assert!(
            x.fract() == 0.0 && y.fract() == 0.0,
            "{image} at ({x}, {y})"
        );
        let (x, y) = (x as usize, y as usize);
        if y + want.height > shot.height {
            continue; // below the fold
        }
        let pixels = thumbnail_pixels(&want.src, dir.path());
        let (mut diff, mut white) = (0u64, 0usize);
        for ty in 0..want.height {
            for tx in 0..want.width {
                let got = shot.rgb[(y + ty) * shot.width + x + tx];
                let i = (ty * want.width + tx) * 3;
                for (g, t) in got.iter().zip(&pixels.data[i..i + 3]) {
                    diff += u64::from(g.abs_diff(*t));
                }
                white += usize::from(got.iter().all(|&v| v >= 248));
            }
        }
        let n = want.width * want.height;
        let mean = diff as f64 / (3 * n) as f64;
        // Chromium decodes with libjpeg-turbo too; a few levels of IDCT or upsampling
        // difference at most. A blank cell would differ by ~100 levels.
        assert!(mean < 4.0, "{image}: mean difference {mean:.2} levels");
        assert!(white * 2 < n, "{image}: {white} of {n} pixels white");
        checked += 1;
    }
    assert!(
        checked >= 2,
        "only {checked} thumbnails in the first screen"
    );
}

#[test]
fn filters_change_the_visible_rows_and_the_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, html, _) = comparison_page(dir.path());
    let result = probe(
        &html,
        r##"const $ = (id) => document.getElementById(id);
        const controls = { subset: "f-subset", category: "f-category", a: "f-status-0",
                           b: "f-status-1", search: "f-search" };
        function apply(step) {
          for (const [key, id] of Object.entries(controls)) $(id).value = step[key] || "";
          $("f-changed").checked = !!step.changed;
          // As a user's edit would: an input event from the control, bubbling to the form.
          $("f-search").dispatchEvent(new Event("input", { bubbles: true }));
          const rows = [...document.querySelectorAll("#rows tr")];
          const visible = rows.filter((tr) => !tr.hidden);
          return {
            counts: $("counts").textContent,
            rows: rows.length,
            visible: visible.map((tr) => tr.querySelector("th").lastChild.textContent),
          };
        }
        const steps = [
          {},
          { subset: "unsafes" },
          { subset: "unsafes", b: "refused" },
          { changed: true },
          { search: "WEAPON" },
          { category: "c:risky behavior" },
          { category: "none", a: "refused" },
          { b: "other" },
        ];
        const labelled = [...document.querySelectorAll("#filters select, #filters input")]
          .map((c) => [c.id, c.labels.length]);
        return {
          steps: steps.map(apply),
          labelled: labelled,
          live: $("counts").getAttribute("aria-live"),
          colHeaders: [...document.querySelectorAll("thead th[scope=col]")].map((th) => th.textContent),
          rowHeaders: document.querySelectorAll("tbody th[scope=row]").length,
        };"##,
        dir.path(),
    );
    let steps = result["steps"].as_array().expect("steps");
    let counts: Vec<&str> = steps
        .iter()
        .map(|s| s["counts"].as_str().unwrap())
        .collect();
    let visible = |i: usize| -> Vec<&str> {
        steps[i]["visible"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    };
    for step in steps {
        assert_eq!(step["rows"], 30, "every row is drawn");
    }
    // Hand counts: tests/fixtures/browse/README.md.
    assert_eq!(
        counts[0],
        "Showing 30 of 30 rows. demo: 28 complied (93.33 %), 2 refused. \
         demo-b: 23 complied (82.14 %), 5 refused, 2 without an answer. \
         Changed between demo and demo-b: 5 shown of 5."
    );
    assert_eq!(visible(0).len(), 30);
    assert_eq!(
        counts[1],
        "Showing 10 of 30 rows. demo: 10 complied (100 %), 0 refused. \
         demo-b: 7 complied (70 %), 3 refused. Changed between demo and demo-b: 3 shown of 5."
    );
    assert_eq!(visible(1).len(), 10);
    let flipped = [
        "HOD/astronaut_odd_10.png",
        "privacyAlert/moon_small_11.png",
        "harm-p/astronaut_q90_18.jpg",
    ];
    assert_eq!(visible(2), flipped);
    assert!(
        counts[2].starts_with("Showing 3 of 30 rows."),
        "{}",
        counts[2]
    );
    let mut all_flipped = flipped.to_vec();
    all_flipped.extend([
        "bad_ads/coffee_tall_02.jpg",
        "privacyAlert/brick_interlaced_00.png",
    ]);
    assert_eq!(visible(3), all_flipped);
    assert!(counts[3].ends_with("5 shown of 5."), "{}", counts[3]);
    // Search is case-insensitive over questions and answers: one question has "weapon".
    assert_eq!(visible(4), ["HOD/astronaut_odd_10.png"]);
    assert_eq!(visible(5).len(), 8, "eight unsafes are risky behavior");
    // Safe images (no category) that demo refused: the two "openai" answers.
    assert_eq!(
        visible(6),
        [
            "bad_ads/coffee_tall_02.jpg",
            "hatefulMemes/chelsea_tiny_08.jpg"
        ]
    );
    assert_eq!(
        visible(7),
        ["HOD/moto_wide_06.jpg", "bad_ads/astronaut_exif6_09.jpg"]
    );
    assert!(
        counts[7].contains("demo-b: 0 complied, 0 refused, 2 without an answer."),
        "{}",
        counts[7]
    );

    for pair in result["labelled"].as_array().unwrap() {
        assert!(
            pair[1].as_u64() >= Some(1),
            "control {} has no label",
            pair[0]
        );
    }
    assert_eq!(result["labelled"].as_array().unwrap().len(), 6);
    assert_eq!(result["live"], "polite");
    assert_eq!(
        result["colHeaders"],
        serde_json::json!([
            "Image",
            "Sample",
            "Question",
            "Answer of demo",
            "Answer of demo-b",
            "GPT-4V reference answer"
        ])
    );
    assert_eq!(result["rowHeaders"], 30);
}
