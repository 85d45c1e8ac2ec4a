//! The judge prompt: `gpt4_evaluator.py`'s `system_image` template, carried as
//! `data/judge_prompt.txt` (byte-identical to the reference's triple-quoted string, leading
//! and trailing newline included), and a filler with Python `str.format` semantics.
//!
//! Guarantees: `{{` gives `{`, `}}` gives `}`, `{name}` gives the named value inserted
//! literally (braces inside a value are never re-read as fields, as in Python); an unknown
//! field, a lone brace, a format spec or a conversion is an error, never a guess.

/// The reference's template (`system_image` in `gpt4_evaluator.py`).
pub const JUDGE_PROMPT_TEMPLATE: &str = include_str!("../../data/judge_prompt.txt");

/// What went wrong filling a template; the byte offset points into the template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("template has a single '{{' at byte {0} that opens no field")]
    UnclosedField(usize),
    #[error("template has a single '}}' at byte {0} (Python: \"Single '}}' encountered\")")]
    LoneCloseBrace(usize),
    #[error("template field {{{name}}} at byte {at} has no value")]
    UnknownField { name: String, at: usize },
    #[error("template field {{{field}}} at byte {at} uses a conversion or format spec, which the judge does not support")]
    Unsupported { field: String, at: usize },
}

/// Fills `template` the way Python's `template.format(**fields)` does for plain named
/// fields.
pub fn py_format(template: &str, fields: &[(&str, &str)]) -> Result<String, FormatError> {
    let mut out = String::with_capacity(template.len() + 256);
    let bytes = template.as_bytes();
    let mut i = 0;
    // Copy runs of ordinary text whole; braces are ASCII so byte offsets stay on char
    // boundaries.
    let mut run_start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                out.push_str(&template[run_start..i]);
                if bytes.get(i + 1) == Some(&b'{') {
                    out.push('{');
                    i += 2;
                } else {
                    let close = template[i + 1..]
                        .find('}')
                        .map(|off| i + 1 + off)
                        .ok_or(FormatError::UnclosedField(i))?;
                    let field = &template[i + 1..close];
                    if field.contains(['{', '!', ':', '[', '.']) {
                        return Err(FormatError::Unsupported {
                            field: field.to_string(),
                            at: i,
                        });
                    }
                    let value = fields
                        .iter()
                        .find(|(name, _)| *name == field)
                        .map(|(_, value)| *value)
                        .ok_or_else(|| FormatError::UnknownField {
                            name: field.to_string(),
                            at: i,
                        })?;
                    out.push_str(value);
                    i = close + 1;
                }
                run_start = i;
            }
            b'}' => {
                out.push_str(&template[run_start..i]);
                if bytes.get(i + 1) == Some(&b'}') {
                    out.push('}');
                    i += 2;
                    run_start = i;
                } else {
                    return Err(FormatError::LoneCloseBrace(i));
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&template[run_start..]);
    Ok(out)
}

/// The judge prompt for one item: `instruction`, `output_1` in seat `m`, `output_2` in
/// seat `M`, exactly as `system_image.format(instruction=..., output_1=..., output_2=...)`.
pub fn judge_prompt(
    template: &str,
    instruction: &str,
    output_1: &str,
    output_2: &str,
) -> Result<String, FormatError> {
    py_format(
        template,
        &[
            ("instruction", instruction),
            ("output_1", output_1),
            ("output_2", output_2),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected strings below are what CPython 3 prints for the same `str.format` calls.
    #[test]
    fn doubled_braces_and_fields() {
        // "{{a}} {x}-{y}".format(x="1", y="2") == "{a} 1-2"
        assert_eq!(
            py_format("{{a}} {x}-{y}", &[("x", "1"), ("y", "2")]).unwrap(),
            "{a} 1-2"
        );
        // "{{{x}}}".format(x="v") == "{v}"
        assert_eq!(py_format("{{{x}}}", &[("x", "v")]).unwrap(), "{v}");
    }

    #[test]
    fn values_with_braces_are_inserted_literally() {
        // "<{x}>".format(x="{y} }} {{") == "<{y} }} {{>"
        assert_eq!(
            py_format("<{x}>", &[("x", "{y} }} {{"), ("y", "NO")]).unwrap(),
            "<{y} }} {{>"
        );
    }

    #[test]
    fn bad_templates_are_errors() {
        // Python: "a } b".format() -> ValueError: Single '}' encountered in format string
        assert_eq!(py_format("a } b", &[]), Err(FormatError::LoneCloseBrace(2)));
        // Python: "a { b".format() -> ValueError: expected '}' before end of string
        assert_eq!(py_format("a { b", &[]), Err(FormatError::UnclosedField(2)));
        // Python: "{z}".format(x=1) -> KeyError: 'z'
        assert_eq!(
            py_format("{z}", &[("x", "1")]),
            Err(FormatError::UnknownField {
                name: "z".into(),
                at: 0
            })
        );
        assert!(matches!(
            py_format("{x!r}", &[("x", "1")]),
            Err(FormatError::Unsupported { .. })
        ));
    }

    #[test]
    fn template_is_the_references() {
        // gpt4_evaluator.py's system_image opens with a newline right after `"""` and ends
        // with "m or M.\n"; it has exactly three fields.
        assert!(JUDGE_PROMPT_TEMPLATE.starts_with("\nYou are a highly efficient assistant"));
        assert!(JUDGE_PROMPT_TEMPLATE.ends_with("m or M.\n"));
        assert_eq!(JUDGE_PROMPT_TEMPLATE.len(), 1331);
        let filled = judge_prompt(JUDGE_PROMPT_TEMPLATE, "I", "A", "B").unwrap();
        assert!(filled.contains("{\n    \"instruction\": \"I\",\n}"));
        assert!(filled.contains("\"model_identifier\": \"m\",\n        \"output\": \"A\""));
        assert!(filled.contains("\"model_identifier\": \"M\",\n        \"output\": \"B\""));
    }
}
