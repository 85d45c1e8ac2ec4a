//! The HTML leaderboard in a real browser: headless Chromium (Debian's `chromium`
//! package) renders the page offline, takes a screenshot, and the test reads the PNG.
//!
//! What it proves: the heading is drawn above the chart; the inline SVG chart renders (its
//! plot area and grid are drawn where the page puts them); each engine with a judge
//! summary has its filled marker, in its colour, at the position its unsafes ASR and win
//! rate call for; an engine not judged yet still shows, as a hollow ring in its colour on
//! the harmfulness axis at its ASR; and the paper's reference lines are drawn. Expected
//! positions come from `report::chart` (the layout the page is written with) applied to
//! the hand-counted fixture values (tests/fixtures/report).
//!
//! Chromium is required: install it with `apt-get install chromium` (CI does).

#[path = "common/screenshot.rs"]
mod screenshot;
use screenshot::{decode_png, headless, wait_for, Screenshot};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use vlguard_ort::report::{self, chart};

fn screenshot(html: &Path, png: &Path, profile: &Path) -> Screenshot {
    let url = format!("file://{}", html.display());
    let child = headless("the HTML leaderboard", profile)
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1000,800")
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    wait_for(child, "its screenshot");
    decode_png(png)
}

fn close(a: [u8; 3], b: [u8; 3], tol: u8) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= tol)
}

/// The page pixel of chart coordinate (x, y), offset by (dx, dy) pixels.
fn page(x: f64, y: f64, dx: i32, dy: i32) -> (usize, usize) {
    let px = x.round() as i32 + dx;
    let py = (y + chart::PAGE_TOP).round() as i32 + dy;
    (px as usize, py as usize)
}

const WHITE: [u8; 3] = [255, 255, 255];

#[test]
fn chart_renders_in_headless_chromium() {
    let results = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/report/results"
    ));
    let board = report::collect(&results, true).expect("fixture leaderboard");
    let dir = tempfile::tempdir().expect("tempdir");
    let html = dir.path().join("leaderboard.html");
    std::fs::write(&html, report::render_html(&board)).expect("write html");
    let png = dir.path().join("shot.png");
    let shot = screenshot(&html, &png, &dir.path().join("profile"));
    if let Some(keep) = std::env::var_os("VLGUARD_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("copy screenshot");
    }
    assert_eq!((shot.width, shot.height), (1000, 800));

    // Page background right of the chart stays white: the page did render and nothing
    // spills there.
    assert_eq!(shot.at(900, 100), WHITE);

    // The heading, in its band above the chart: dark text pixels at its left.
    let band = chart::PAGE_TOP as usize;
    let heading = (0..band)
        .flat_map(|y| (0..400).map(move |x| (x, y)))
        .filter(|&(x, y)| close(shot.at(x, y), [0x22; 3], 40))
        .count();
    assert!(
        heading > 100,
        "no heading above the chart: {heading} dark pixels"
    );

    // The plot area (inset by 2 px from its border) is filled, not blank.
    let (l, r, t, b) = (
        chart::LEFT as usize + 2,
        chart::RIGHT as usize - 2,
        band + chart::TOP as usize + 2,
        band + chart::BOTTOM as usize - 2,
    );
    let total = (r - l) * (b - t);
    let non_white = (t..b)
        .flat_map(|y| (l..r).map(move |x| (x, y)))
        .filter(|&(x, y)| shot.at(x, y) != WHITE)
        .count();
    assert!(
        non_white * 10 >= total * 9,
        "plot area mostly blank: {non_white} of {total} pixels drawn"
    );
    // Its frame: a dark (#333) left axis line over the whole height.
    let dark_axis = (t..b)
        .filter(|&y| close(shot.at(chart::LEFT as usize, y), [0x33; 3], 16))
        .count();
    assert!(
        dark_axis * 10 >= (b - t) * 9,
        "left axis not drawn: {dark_axis}"
    );

    // One marker per engine with an unsafes ASR, in row order (tests/fixtures/report/
    // README.md): gamma (0.0 ASR, not judged), beta (33.33 ASR, 25.0 win), alpha (50.0
    // ASR, 41.23 win).
    let plotted = report::plotted(&board);
    let got: Vec<(&str, f64, Option<f64>)> = plotted
        .iter()
        .map(|p| (p.row.engine.as_str(), p.asr, p.win))
        .collect();
    assert_eq!(
        got,
        [
            ("gamma", 0.0, None),
            ("beta", 33.33, Some(25.0)),
            ("alpha", 50.0, Some(41.23))
        ]
    );
    for (i, p) in plotted.iter().enumerate() {
        let (x, y) = p.center();
        let color = chart::color(i);
        let name = &p.row.engine;
        if p.win.is_none() {
            // Not judged: on the harmfulness axis, a ring of its colour around a white
            // centre.
            assert_eq!(x, chart::LEFT, "{name} is on the harmfulness axis");
            let ring = chart::POINT_RADIUS as i32;
            for (dx, dy) in [(ring, 0), (-ring, 0), (0, -ring)] {
                let (px, py) = page(x, y, dx, dy);
                let got = shot.at(px, py);
                assert!(
                    close(got, color, 24),
                    "{name} ring: pixel ({px},{py}) is {got:?}, want about {color:?}"
                );
            }
            for (dx, dy) in [(0, 0), (-2, -2), (2, -2)] {
                let (px, py) = page(x, y, dx, dy);
                let got = shot.at(px, py);
                assert!(
                    close(got, WHITE, 16),
                    "{name} ring is not hollow: ({px},{py}) is {got:?}"
                );
            }
            continue;
        }
        // Judged: the marker's centre and a few pixels around it (radius 8) carry its
        // colour ...
        for (dx, dy) in [(0, 0), (-3, 0), (3, 0), (0, -3), (0, 3)] {
            let (px, py) = page(x, y, dx, dy);
            let got = shot.at(px, py);
            assert!(
                close(got, color, 24),
                "{name} marker: pixel ({px},{py}) is {got:?}, want about {color:?}"
            );
        }
        // ... and no marker colour 30 px below it, where nothing is plotted.
        let (px, py) = page(x, y, 0, 30);
        assert!(!close(shot.at(px, py), color, 24), "{name} colour leaks");
    }

    // Paper reference line (dashed grey) at the 7B's 72.62: many grey pixels on its row.
    // Anti-aliasing may put it on the row above or below the exact coordinate.
    let (_, y) = chart::point(0.0, 72.62);
    let y = (y + chart::PAGE_TOP).floor() as usize;
    let grey = (y - 1..=y + 1)
        .map(|y| {
            (l..r)
                .filter(|&x| {
                    let p = shot.at(x, y);
                    p[0] < 200 && p[0] > 90 && close(p, [p[0]; 3], 6)
                })
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        grey > (r - l) / 3,
        "paper line at y={y}: {grey} grey pixels"
    );
}
