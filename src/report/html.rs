//! The HTML leaderboard: one self-contained page (inline CSS and SVG, no script, no URL)
//! with the heading, a harmfulness-vs-helpfulness chart under it, then the table. Engines
//! link to their browse pages where they exist (relative links to local files).
//!
//! The chart shows every engine of the results folder that has an unsafes ASR: a filled
//! marker at (helpfulness win rate, unsafes ASR) once a judge summary exists, and before
//! that a hollow ring on the harmfulness axis (win rate 0) labelled "not judged yet", so
//! a first run is on the chart before any judge has run. The paper's rows have no
//! published win rate: they are dashed lines at their ASR. Every position comes from
//! [`chart`], which the browser test (tests/report_browser.rs) reads as well.

use std::fmt::Write as _;

use super::{Leaderboard, Row, RowSource, Table, COLUMNS, JUDGED_NOTE};
use crate::score::Subset;
use crate::util::python_float_repr;

/// Chart geometry (CSS pixels). The SVG sits at the page's left edge, right under the
/// heading's band: chart coordinate (x, y) is page pixel (x, `PAGE_TOP` + y).
pub mod chart {
    /// Height of the heading's band above the chart.
    pub const PAGE_TOP: f64 = 56.0;
    pub const WIDTH: f64 = 720.0;
    pub const HEIGHT: f64 = 480.0;
    /// Plot area: x from LEFT to RIGHT, y from TOP to BOTTOM.
    pub const LEFT: f64 = 80.0;
    pub const RIGHT: f64 = 690.0;
    pub const TOP: f64 = 50.0;
    pub const BOTTOM: f64 = 410.0;
    pub const POINT_RADIUS: f64 = 8.0;
    /// Ring width of a marker that is not judged yet (white inside).
    pub const RING_WIDTH: f64 = 3.0;
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

/// An engine on the chart.
#[derive(Debug, Clone, Copy)]
pub struct Plotted<'a> {
    pub row: &'a Row,
    /// Unsafes ASR, percent: the y axis.
    pub asr: f64,
    /// Helpfulness win rate, percent: the x axis; `None` until the engine is judged.
    pub win: Option<f64>,
}

impl Plotted<'_> {
    /// The marker's centre in chart coordinates: on the harmfulness axis (win rate 0)
    /// while not judged.
    pub fn center(&self) -> (f64, f64) {
        chart::point(self.win.unwrap_or(0.0), self.asr)
    }
}

/// Engines on the chart: the run rows with an unsafes ASR, in row order; the i-th gets
/// `chart::color(i)`.
pub fn plotted(board: &Leaderboard) -> Vec<Plotted<'_>> {
    board
        .rows
        .iter()
        .filter(|row| row.source == RowSource::Run)
        .filter_map(|row| {
            Some(Plotted {
                row,
                asr: row.asr(Subset::Unsafes)?,
                win: row.helpfulness.as_ref().map(|h| h.win_rate),
            })
        })
        .collect()
}

pub fn html_escape(s: &str) -> String {
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

/// The plot area, its grid with tick labels, the frame and the two axis titles.
fn svg_axes(s: &mut String) {
    use chart::*;
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
}

/// One engine's marker and label: filled once judged, a ring on the harmfulness axis
/// before.
fn svg_marker(s: &mut String, p: &Plotted, rgb: [u8; 3]) {
    use chart::{BOTTOM, POINT_RADIUS, RING_WIDTH};
    // A white halo under the letters keeps a label readable where it crosses a grid line.
    const LABEL: &str = r##"font-size="12" stroke="#fff" stroke-width="3" paint-order="stroke""##;
    let (x, y) = p.center();
    let name = html_escape(&p.row.engine);
    let asr = python_float_repr(p.asr);
    // Right of the marker, centred on it; lifted above the bottom axis near 0 % ASR.
    let label_y = if y + 4.0 > BOTTOM - 2.0 {
        y - 6.0
    } else {
        y + 4.0
    };
    let label_x = x + POINT_RADIUS + 4.0;
    match p.win {
        Some(win) => {
            let _ = writeln!(
                s,
                r##"<circle cx="{x}" cy="{y}" r="{POINT_RADIUS}" fill="{}" stroke="#fff" stroke-width="1.5"><title>{name}: ASR {asr} %, win rate {} %</title></circle><text x="{label_x}" y="{label_y}" {LABEL}>{name}</text>"##,
                hex(rgb),
                python_float_repr(win),
            );
        }
        None => {
            let _ = writeln!(
                s,
                r##"<circle cx="{x}" cy="{y}" r="{POINT_RADIUS}" fill="#fff" stroke="{}" stroke-width="{RING_WIDTH}"><title>{name}: ASR {asr} %, not judged yet</title></circle><text x="{label_x}" y="{label_y}" {LABEL}>{name} (not judged yet)</text>"##,
                hex(rgb),
            );
        }
    }
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
    svg_axes(&mut s);
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
    for (i, p) in plotted(board).iter().enumerate() {
        svg_marker(&mut s, p, color(i));
    }
    s.push_str("</svg>\n");
    s
}

/// The notes above the table: engines not judged yet, and engines the chart cannot show.
fn chart_notes(out: &mut String, board: &Leaderboard) {
    let names = |keep: &dyn Fn(&Row) -> bool| -> Vec<String> {
        board
            .rows
            .iter()
            .filter(|r| r.source == RowSource::Run && keep(r))
            .map(|r| html_escape(&r.engine))
            .collect()
    };
    let on_axis = names(&|r| r.helpfulness.is_none() && r.asr(Subset::Unsafes).is_some());
    if !on_axis.is_empty() {
        let _ = writeln!(
            out,
            "<p>Not judged yet (no judge summary; on the harmfulness axis): {}.</p>",
            on_axis.join(", ")
        );
    }
    let off_chart = names(&|r| r.asr(Subset::Unsafes).is_none());
    if !off_chart.is_empty() {
        let _ = writeln!(
            out,
            "<p>Not on the chart (no unsafes results): {}.</p>",
            off_chart.join(", ")
        );
    }
}

/// One self-contained HTML page: the heading, the chart under it, then the table.
pub fn render_html(board: &Leaderboard) -> String {
    let mut out = String::new();
    let band = chart::PAGE_TOP;
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>VLGuard leaderboard</title>\n<style>\n\
         body {{ margin: 0; font-family: sans-serif; color: #222; background: #fff; }}\n\
         header {{ height: {band}px; overflow: hidden; padding: 0 16px; }}\n\
         h1 {{ margin: 0; font-size: 24px; line-height: {band}px; }}\n\
         #chart {{ display: block; }}\n\
         main {{ padding: 0 16px 16px; }}\n\
         table {{ border-collapse: collapse; font-size: 14px; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}\n\
         td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         tr.paper {{ color: #666; font-style: italic; }}\n\
         </style>\n</head>\n<body>\n\
         <header><h1>VLGuard leaderboard</h1></header>\n"
    );
    out.push_str(&render_svg(board));
    out.push_str("<main>\n");
    chart_notes(&mut out, board);
    out.push_str("<table>\n<thead><tr>");
    let table = Table::new(board);
    for c in &table.titles {
        let _ = write!(out, "<th>{}</th>", html_escape(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (row, cells) in board.rows.iter().zip(&table.rows) {
        let class = if row.source == RowSource::Paper {
            " class=\"paper\""
        } else {
            ""
        };
        let _ = write!(out, "<tr{class}>");
        for (i, cell) in cells.iter().enumerate() {
            let cls = if table.numeric[i] { " class=\"n\"" } else { "" };
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
    if table.titles.len() > COLUMNS.len() {
        let _ = writeln!(out, "<p>{}</p>", html_escape(JUDGED_NOTE));
    }
    for problem in &board.problems {
        let _ = writeln!(out, "<p>Not included: {}</p>", html_escape(problem));
    }
    out.push_str("</main>\n</body>\n</html>\n");
    out
}
