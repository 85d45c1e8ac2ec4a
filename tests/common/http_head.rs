//! The head of one HTTP/1.1 request, for the tests' local servers (the chat stand-in and
//! the Hub stand-in): request line and headers, the body left in the reader.

use std::io::BufRead;

pub struct Head {
    pub method: String,
    pub path: String,
    /// In arrival order, names lowercased; a line without `:` is skipped.
    pub headers: Vec<(String, String)>,
}

/// Reads up to the blank line that ends the headers (or the end of the stream).
pub fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some(Head {
        method,
        path,
        headers,
    })
}
