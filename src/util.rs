//! Small shared helpers: hashing, atomic writes, Python-compatible JSON text (a
//! serde_json `Formatter`), retry backoff, timestamps, and [`escape_controls`], the one
//! way untrusted text reaches a terminal or a text table.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::ser::{Formatter, PrettyFormatter};

/// `text` with every control character (C0, DEL, C1: escape sequences, BEL, newlines) and
/// every Unicode bidirectional or line-separating format character written as `\u{1b}`,
/// so text from files, file names or servers (an image path of test.json, a server's error
/// message, an engine name) cannot retitle or clear the terminal, move the cursor, fake a
/// line, or reorder what is shown. Used wherever such text is printed; everything else,
/// other scripts included, is left as it is.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape_controls`] on each line of a multi-line text (a report), its line breaks kept.
pub fn escape_lines(text: &str) -> String {
    let lines: Vec<std::borrow::Cow<'_, str>> = text.split('\n').map(escape_controls).collect();
    lines.join("\n")
}

/// Lowercase hex sha256 of bytes and of a regular file: the exporter's, so that a
/// manifest's hashes and the runtime's are spelt by one function.
pub use vlguard_export::files::{sha256_file, sha256_hex};

/// Writes `bytes` to `path` through a temporary sibling and a rename, so a reader never
/// sees a half-written file and a crash leaves the old one intact.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        // A full disk or a vanished folder must not leave the temporary file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Serializes like Python's `json.dump(obj, f, indent=indent)` with the default
/// `ensure_ascii=True`; see [`PythonFormatter`]. Serializing a `Value` cannot fail.
pub fn python_json_dumps(value: &serde_json::Value, indent: usize) -> String {
    to_python_json(value, indent).expect("a serde_json::Value always serializes")
}

/// `value` as Python's `json.dumps(value, indent=indent)` writes it; fails only where
/// `value`'s own `Serialize` does (a map key that is not a string).
pub fn to_python_json<T: serde::Serialize + ?Sized>(
    value: &T,
    indent: usize,
) -> Result<String, serde_json::Error> {
    let mut out = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, PythonFormatter::new(indent));
    value.serialize(&mut serializer)?;
    // The formatter writes ASCII only, so the bytes are valid UTF-8.
    Ok(String::from_utf8(out).expect("ensure_ascii output is ASCII"))
}

/// Python's `json` text with `indent` and the default `ensure_ascii=True`: `indent`
/// spaces per level, `,` at line ends and `": "` after keys (the separators `json.dump`
/// uses whenever an indent is given), `[]` / `{}` for empty containers, every character
/// outside printable ASCII (DEL and all non-ASCII included) escaped as `\uXXXX` with
/// UTF-16 surrogate pairs above U+FFFF, floats in `repr` form ([`python_float_repr`]).
/// Control characters get serde_json's escapes, which are Python's (`\n`, `\u001f`).
pub struct PythonFormatter {
    pretty: PrettyFormatter<'static>,
}

/// Enough spaces for any indent a caller uses (Python's 4, the score report's 2).
const SPACES: &[u8; 8] = b"        ";

impl PythonFormatter {
    pub fn new(indent: usize) -> Self {
        assert!(indent <= SPACES.len(), "indent {indent} is wider than 8");
        PythonFormatter {
            pretty: PrettyFormatter::with_indent(&SPACES[..indent]),
        }
    }
}

impl Formatter for PythonFormatter {
    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> std::io::Result<()> {
        w.write_all(python_float_repr(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, value: f32) -> std::io::Result<()> {
        self.write_f64(w, f64::from(value))
    }

    /// serde_json hands over runs of characters it does not escape itself (it escapes
    /// `"`, `\` and controls below 0x20); Python's `ensure_ascii` escapes the rest of
    /// what is not printable ASCII.
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.begin_array(w)
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_array(w)
    }

    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.pretty.begin_array_value(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_array_value(w)
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.begin_object(w)
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_object(w)
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.pretty.begin_object_key(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.begin_object_value(w)
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.pretty.end_object_value(w)
    }
}

/// Python's `repr(float)`: shortest round-trip digits, always with a `.0` or an exponent.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    // Rust's `{}` gives the shortest round-trip digits too, but never uses an exponent;
    // Python switches to one below 1e-4 and from 1e16 up.
    let abs = f.abs();
    if abs != 0.0 && !(1e-4..1e16).contains(&abs) {
        let s = format!("{f:e}");
        let (mantissa, exp) = s.split_once('e').expect("exponent form");
        let exp: i32 = exp.parse().expect("exponent");
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

/// Exponential backoff shared by fetch and judge: `base * 2^retry` before retry number
/// `retry` (0-based), never longer than `max`.
pub fn backoff_delay(base: Duration, max: Duration, retry: u32) -> Duration {
    base.saturating_mul(1u32 << retry.min(31)).min(max)
}

/// The exit code of a command that ran to its end (main.rs's contract): 0 when nothing
/// failed along the way, 1 when something did and was recorded.
pub fn exit_code(all_ok: bool) -> std::process::ExitCode {
    if all_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

/// UTC timestamp `YYYY-MM-DDTHH:MM:SSZ` without a date-time dependency.
pub fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

pub fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The error and its causes, each cause added only when the message above it does not
/// already quote it (many messages embed their source's text).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        let hostile = "\u{1b}]0;PWNED\u{7}\u{1b}[2Jimg\nerror: x\u{202e}gnp.exe\u{9b}";
        assert_eq!(
            escape_controls(hostile),
            "\\u{1b}]0;PWNED\\u{7}\\u{1b}[2Jimg\\u{a}error: x\\u{202e}gnp.exe\\u{9b}"
        );
        assert_eq!(escape_lines("a\u{7}\nb\n"), "a\\u{7}\nb\n");
        let plain = "caf\u{e9} \u{5199}\u{771f}/a b.png";
        assert!(matches!(escape_controls(plain), std::borrow::Cow::Borrowed(p) if p == plain));
    }

    #[test]
    fn python_json_matches_json_dump_indent_4() {
        // Expected text produced by Python 3.11: json.dumps({"a/b.png": "caf\u00e9 \U0001F600 \"q\"\n", "e": ""}, indent=4)
        let value = serde_json::json!({"a/b.png": "caf\u{e9} \u{1F600} \"q\"\n", "e": ""});
        let expected =
            "{\n    \"a/b.png\": \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\"\\n\",\n    \"e\": \"\"\n}";
        assert_eq!(python_json_dumps(&value, 4), expected);
    }

    #[test]
    fn python_formatter_matches_json_dumps_edge_cases() {
        // Expected text printed by Python 3.11:
        // json.dumps({"a": "\x7f\x1f\u00e9\U0001F600", "b": [], "c": {},
        //             "d": [1.0, 1e-05, 1e16, 0.1, 3]}, indent=4)
        let value = serde_json::json!({
            "a": "\u{7f}\u{1f}\u{e9}\u{1F600}", "b": [], "c": {},
            "d": [1.0, 1e-5, 1e16, 0.1, 3]
        });
        let expected = "{\n    \"a\": \"\\u007f\\u001f\\u00e9\\ud83d\\ude00\",\n    \"b\": [],\n    \"c\": {},\n    \"d\": [\n        1.0,\n        1e-05,\n        1e+16,\n        0.1,\n        3\n    ]\n}";
        assert_eq!(python_json_dumps(&value, 4), expected);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = (0..5).map(|r| backoff_delay(ms(100), ms(350), r)).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(350), ms(350), ms(350)]);
        assert_eq!(backoff_delay(ms(1), ms(u64::MAX), 40), ms(1 << 31));
    }

    #[test]
    fn python_float_repr_matches_python() {
        assert_eq!(python_float_repr(72.62), "72.62");
        assert_eq!(python_float_repr(100.0), "100.0");
        assert_eq!(python_float_repr(0.9), "0.9");
        assert_eq!(python_float_repr(1e-5), "1e-05");
        assert_eq!(python_float_repr(1.5e16), "1.5e+16");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_795_219_200), "2026-11-21T00:00:00Z");
    }

    #[test]
    fn a_failed_atomic_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder: the final rename fails after the temp file was written.
        let target = dir.path().join("model.json");
        std::fs::create_dir(&target).unwrap();
        assert!(write_atomic(&target, b"{}").is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("model.json")],
            "{left:?}"
        );
    }
}
