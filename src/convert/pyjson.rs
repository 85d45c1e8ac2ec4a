//! Where Python's `json.load` and `str()` give other values than serde_json would, for the
//! text the reference script reads and the `<image>` prefix it formats.
//!
//! - Python reads an integer without a fraction or exponent as an `int` of any size:
//!   `-0` is the integer 0 (written back as `0`), where serde_json reads a float `-0.0`;
//!   an integer beyond 64 bits stays exact, where serde_json rounds it to a float. The
//!   first is rewritten before parsing ([`python_integers`]); the second has no exact
//!   `serde_json::Value`, so it is refused rather than written wrong.
//! - `f'<image>{value}'` is Python's `str(value)` ([`python_str`]): `None`, `True`,
//!   `False`, the `int`'s digits, `repr` of a float. Of a list or dict it is Python's
//!   `repr`, which this does not reproduce (refused, with the reason).

use serde_json::Value;

use crate::util::python_float_repr;

/// An integer the input spells that no 64-bit integer holds.
#[derive(Debug, Clone, PartialEq)]
pub struct WideInteger {
    /// 1-based, as serde_json counts.
    pub line: usize,
    pub column: usize,
    pub text: String,
}

/// `bytes` with each integer `-0` rewritten as ` 0` (same length, so every position in
/// a later parse error still points at the original text), and the first integer beyond
/// 64 bits, if any. Strings are skipped; the scan assumes nothing else about the text, so
/// on text that is not JSON its findings are moot (the parse reports that).
pub fn python_integers(bytes: &[u8]) -> (Vec<u8>, Option<WideInteger>) {
    let mut out = bytes.to_vec();
    let mut wide = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let token = &bytes[start..i];
                if token.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
                    continue;
                }
                if token == b"-0" {
                    out[start] = b' ';
                    continue;
                }
                let text = String::from_utf8_lossy(token);
                let fits = text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok();
                let digits = token.len() > usize::from(token[0] == b'-');
                if !fits && digits && wide.is_none() {
                    let (line, column) = line_column(bytes, start);
                    wide = Some(WideInteger {
                        line,
                        column,
                        text: text.into_owned(),
                    });
                }
            }
            _ => i += 1,
        }
    }
    (out, wide)
}

/// The index just past the closing quote of the string whose text starts at `i`.
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn line_column(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    (line, at - line_start + 1)
}

/// Python's `str(value)` for the value of a JSON scalar; `None` for a list or an object.
pub fn python_str(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => python_float_repr(f),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(_) | Value::Object(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_zero_integers_become_zero_and_nothing_else_moves() {
        let text = br#"{"a": -0, "b": -0.0, "c": "-0", "d": [-0,-0e1], "e": "\"-0"}"#;
        let (out, wide) = python_integers(text);
        assert_eq!(wide, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a":  0, "b": -0.0, "c": "-0", "d": [ 0,-0e1], "e": "\"-0"}"#
        );
    }

    #[test]
    fn integers_beyond_64_bits_are_found_with_their_position() {
        let text = b"[18446744073709551615, -9223372036854775808, 1e400,\n \"99999999999999999999\", 18446744073709551616]";
        let (_, wide) = python_integers(text);
        assert_eq!(
            wide,
            Some(WideInteger {
                line: 2,
                column: 26,
                text: "18446744073709551616".into()
            })
        );
        let (_, wide) = python_integers(b"[-9223372036854775809]");
        assert_eq!(wide.unwrap().text, "-9223372036854775809");
    }

    #[test]
    fn str_of_scalars_is_pythons() {
        // Python 3.11: str(None), str(True), str(False), str(42), str(-7), str(2.5e-07),
        // str(1e16), str(1.0) -> None True False 42 -7 2.5e-07 1e+16 1.0
        let values: Value =
            serde_json::from_str("[null, true, false, 42, -7, 2.5e-7, 1e16, 1.0]").unwrap();
        let strs: Vec<String> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| python_str(v).unwrap())
            .collect();
        assert_eq!(
            strs,
            ["None", "True", "False", "42", "-7", "2.5e-07", "1e+16", "1.0"]
        );
        assert_eq!(python_str(&serde_json::json!([1])), None);
    }
}
