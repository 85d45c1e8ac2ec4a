//! The leaderboard as one self-contained HTML page: a harmfulness-vs-helpfulness chart
//! (inline SVG) at the top left, then the table. No script, no stylesheet link, no URL:
//! the page shows the same offline. Engines link to their browse pages where they exist
//! (relative links to local files).

use std::fmt::Write as _;

use super::{cells, Leaderboard, Row, RowSource, COLUMNS};
use crate::score::Subset;
use crate::util::python_float_repr;

/// Chart geometry (CSS pixels): the SVG is the first thing on the page, at (0, 0).
pub mod chart {
    pub const WIDTH: f64 = 720.0;
    pub const HEIGHT: f64 = 480.0;
    /// Plot area: x from LEFT to RIGHT, y from TOP to BOTTOM.
    pub const LEFT: f64 = 80.0;
    pub const RIGHT: f64 = 690.0;
    pub const TOP: f64 = 50.0;
    pub const BOTTOM: f64 = 410.0;
    pub const POINT_RADIUS: f64 = 8.0;
    /// Marker colours, one per plotted engine in row order (cycled).
    pub const PALETTE: [[u8; 3]; 8] = [
        [0x1f, 0x77, 0xb4],
        [0xd6, 0x27, 0x28],
        [0x2c, 0xa0, 0x2c],
        [0x94, 0x67, 0xbd],
        [0xff, 0x7f, 0x0e],
        [0x8c, 0x56, 0x4b],
        [0xe3, 0x77, 0xc2],
        [0x17, 0xbe, 0xcf],
    ];

    /// Where a point with helpfulness win rate `win` and unsafes ASR `asr` (both percent,
    /// 0..100) is drawn.
    pub fn point(win: f64, asr: f64) -> (f64, f64) {
        let x = LEFT + win.clamp(0.0, 100.0) / 100.0 * (RIGHT - LEFT);
        let y = BOTTOM - asr.clamp(0.0, 100.0) / 100.0 * (BOTTOM - TOP);
        (x, y)
    }

    pub fn color(i: usize) -> [u8; 3] {
        PALETTE[i % PALETTE.len()]
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Rows on the chart: those with both an unsafes ASR and a helpfulness win rate, in row
/// order; the i-th gets `chart::color(i)`.
pub fn plotted(board: &Leaderboard) -> Vec<(&Row, f64, f64)> {
    board
        .rows
        .iter()
        .filter_map(|r| Some((r, r.helpfulness.as_ref()?.win_rate, r.asr(Subset::Unsafes)?)))
        .collect()
}

fn render_svg(board: &Leaderboard) -> String {
    use chart::*;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg id="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Harmfulness versus helpfulness">"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="28" text-anchor="middle" font-size="18" font-weight="bold">Harmfulness vs helpfulness</text>"##,
        (LEFT + RIGHT) / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="#f4f6f8"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    for tick in (0..=100).step_by(20) {
        let t = f64::from(tick);
        let (x, _) = point(t, 0.0);
        let (_, y) = point(0.0, t);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{BOTTOM}" stroke="#d0d4d8"/><text x="{x}" y="{}" text-anchor="middle" font-size="12">{tick}</text>"##,
            BOTTOM + 18.0
        );
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}" stroke="#d0d4d8"/><text x="{}" y="{}" text-anchor="end" font-size="12">{tick}</text>"##,
            LEFT - 8.0,
            y + 4.0
        );
    }
    // The frame after the grid, so grid lines at 0 and 100 do not cover the axes; width
    // 2 on integer coordinates keeps it crisp (two whole pixels).
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333" stroke-width="2"/>"##,
        RIGHT - LEFT,
        BOTTOM - TOP
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="14">helpfulness: win rate vs GPT-4V answers, safe_safes (%) &#8594; better</text>"##,
        (LEFT + RIGHT) / 2.0,
        BOTTOM + 44.0
    );
    let _ = writeln!(
        s,
        r##"<text x="22" y="{}" text-anchor="middle" font-size="14" transform="rotate(-90 22 {})">harmfulness: unsafes ASR (%) &#8595; better</text>"##,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );
    // The paper's rows have no published win rate here: drawn as reference lines.
    for row in board.rows.iter().filter(|r| r.source == RowSource::Paper) {
        if let Some(asr) = row.asr(Subset::Unsafes) {
            let (_, y) = point(0.0, asr);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}" stroke="#888" stroke-dasharray="6 4"/><text x="{}" y="{}" text-anchor="end" font-size="11" fill="#555">{} {}</text>"##,
                RIGHT - 4.0,
                y - 4.0,
                html_escape(&row.engine),
                python_float_repr(asr)
            );
        }
    }
    for (i, (row, win, asr)) in plotted(board).into_iter().enumerate() {
        let (x, y) = point(win, asr);
        let _ = writeln!(
            s,
            r##"<circle cx="{x}" cy="{y}" r="{POINT_RADIUS}" fill="{}" stroke="#fff" stroke-width="1.5"><title>{}: ASR {} %, win rate {} %</title></circle><text x="{}" y="{}" font-size="12">{}</text>"##,
            hex(color(i)),
            html_escape(&row.engine),
            python_float_repr(asr),
            python_float_repr(win),
            x + POINT_RADIUS + 4.0,
            y + 4.0,
            html_escape(&row.engine)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One self-contained HTML page: the chart at the top left, then the table.
pub fn render_html(board: &Leaderboard) -> String {
    let mut out = String::new();
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>VLGuard leaderboard</title>\n<style>\n\
         body { margin: 0; font-family: sans-serif; color: #222; background: #fff; }\n\
         #chart { display: block; }\n\
         main { padding: 0 16px 16px; }\n\
         table { border-collapse: collapse; font-size: 14px; }\n\
         th, td { border: 1px solid #ccc; padding: 4px 8px; }\n\
         td.n { text-align: right; font-variant-numeric: tabular-nums; }\n\
         tr.paper { color: #666; font-style: italic; }\n\
         </style>\n</head>\n<body>\n",
    );
    out.push_str(&render_svg(board));
    out.push_str("<main>\n");
    let not_plotted: Vec<String> = board
        .rows
        .iter()
        .filter(|r| r.source == RowSource::Run && r.helpfulness.is_none())
        .map(|r| html_escape(&r.engine))
        .collect();
    if !not_plotted.is_empty() {
        let _ = writeln!(
            out,
            "<p>Not on the chart (no judge summary): {}.</p>",
            not_plotted.join(", ")
        );
    }
    out.push_str("<h1>VLGuard leaderboard</h1>\n<table>\n<thead><tr>");
    for c in COLUMNS {
        let _ = write!(out, "<th>{}</th>", html_escape(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &board.rows {
        let class = if row.source == RowSource::Paper {
            " class=\"paper\""
        } else {
            ""
        };
        let _ = write!(out, "<tr{class}>");
        for (i, cell) in cells(row).iter().enumerate() {
            let cls = if (1..=8).contains(&i) {
                " class=\"n\""
            } else {
                ""
            };
            match (&row.browse_page, i) {
                (Some(href), 0) => {
                    let (href, cell) = (html_escape(href), html_escape(cell));
                    let _ = write!(out, "<td><a href=\"{href}\">{cell}</a></td>");
                }
                _ => {
                    let _ = write!(out, "<td{cls}>{}</td>", html_escape(cell));
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
    let _ = writeln!(
        out,
        "<p>ASR: share of answers with no refusal phrase, as VLGuard_eval.py computes it \
         (lower is safer). Over-refusal: share of safe_safes answers with a refusal phrase. \
         Keywords: {} ({} entries, sha256 <code>{}</code>).</p>",
        html_escape(&board.keywords.name),
        board.keywords.entries,
        board.keywords.sha256
    );
    for problem in &board.problems {
        let _ = writeln!(out, "<p>Not included: {}</p>", html_escape(problem));
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}
