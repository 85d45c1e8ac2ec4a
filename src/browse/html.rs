//! The browse page as one self-contained HTML file: fixed markup (labelled filter
//! controls, a live counts line, an empty table with its caption), the page data as one
//! JSON blob in `<script type="application/json" id="vlguard-data">`, then the page's
//! script (`page.js`) and style (`page.css`), both inline. No URL is loaded when the page
//! is viewed: thumbnails are `data:` URLs inside the blob.
//!
//! The script builds the title, filter options, table head and one row per answer from
//! the blob; all text reaches the document through `textContent`, never as markup, so
//! answers and questions need no HTML escaping. Inside the blob every `<` is written as
//! `\u003c` (same JSON value), so no text can end the script element early.

use super::data::PageData;

/// The id of the script element that holds the data.
pub const DATA_ELEMENT_ID: &str = "vlguard-data";

const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The markup before the data: everything a reader or a screen reader meets first.
const BODY: &str = r##"<body>
<a class="skip" href="#answers">Skip to the answers</a>
<header>
<h1 id="title">VLGuard answers</h1>
<p id="sources"></p>
</header>
<noscript><p>This page draws its table with JavaScript; enable it to see the answers.</p></noscript>
<form id="filters" role="search" aria-label="Filter the answers" onsubmit="return false">
<div class="control"><label for="f-subset">Subset</label> <select id="f-subset"></select></div>
<div class="control"><label for="f-category">Harmful category</label> <select id="f-category"></select></div>
<div id="status-filters"></div>
<div class="control" id="changed-control" hidden><input type="checkbox" id="f-changed"> <label for="f-changed" id="f-changed-label">Only answers that changed</label></div>
<div class="control"><label for="f-search">Search questions and answers</label> <input type="search" id="f-search" size="30"></div>
</form>
<p id="counts" role="status" aria-live="polite" aria-atomic="true"></p>
<table id="answers">
<caption id="caption">One row per question; the refusal phrase that decided is highlighted.</caption>
<thead><tr id="head"></tr></thead>
<tbody id="rows"></tbody>
</table>
<section id="notes-section" hidden><h2>Notes</h2><ul id="notes"></ul></section>
"##;

/// The page for `page`.
pub fn render(page: &PageData) -> Result<String, serde_json::Error> {
    let blob = serde_json::to_string(page)?.replace('<', "\\u003c");
    let mut out = String::with_capacity(blob.len() + STYLE.len() + SCRIPT.len() + 4096);
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>VLGuard answers</title>\n<style>\n",
    );
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n");
    out.push_str(BODY);
    out.push_str("<script type=\"application/json\" id=\"");
    out.push_str(DATA_ELEMENT_ID);
    out.push_str("\">");
    out.push_str(&blob);
    out.push_str("</script>\n<script>\n");
    out.push_str(SCRIPT);
    out.push_str("</script>\n</body>\n</html>\n");
    Ok(out)
}

/// The data blob of a page [`render`] wrote, parsed (for tests and other readers).
pub fn embedded_data(html: &str) -> Option<serde_json::Value> {
    let open = format!("<script type=\"application/json\" id=\"{DATA_ELEMENT_ID}\">");
    let start = html.find(&open)? + open.len();
    let end = start + html[start..].find("</script>")?;
    serde_json::from_str(&html[start..end]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_text_can_close_the_data_element() {
        let mut page = test_page();
        page.notes
            .push("</script><script>alert(1)</script> <!-- x".into());
        let html = render(&page).expect("renders");
        assert_eq!(html.matches("</script>").count(), 2, "only the page's own");
        assert!(!html.contains("<!--"));
        let data = embedded_data(&html).expect("blob parses");
        assert_eq!(
            data["notes"][0],
            "</script><script>alert(1)</script> <!-- x"
        );
    }

    fn test_page() -> PageData {
        PageData {
            version: super::super::data::DATA_VERSION,
            engines: vec!["e".into()],
            results: "r".into(),
            meta: "m".into(),
            images: "i".into(),
            reference: None,
            keywords: crate::score::KeywordList::reference(),
            subsets: Vec::new(),
            categories: Vec::new(),
            rows: Vec::new(),
            thumbs: Default::default(),
            notes: Vec::new(),
            problems: Vec::new(),
        }
    }
}
