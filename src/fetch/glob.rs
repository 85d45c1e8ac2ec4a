//! `--include` patterns, matched like Python's `fnmatch.fnmatch` (what huggingface_hub's
//! `allow_patterns` uses): `*` any run of characters INCLUDING `/`, `?` one character,
//! `[abc]` / `[a-z]` a set, `[!abc]` its complement; everything else literal. Case-sensitive.

/// A checked pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug)]
enum Token {
    Literal(char),
    Any,
    AnyRun,
    Set {
        negated: bool,
        items: Vec<(char, char)>,
    },
}

impl Pattern {
    /// Parses `text`; an unclosed `[` is an error (fnmatch would read it literally, which
    /// is never what a user typing a set meant).
    pub fn new(text: &str) -> Result<Pattern, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' => {
                    if !matches!(tokens.last(), Some(Token::AnyRun)) {
                        tokens.push(Token::AnyRun);
                    }
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                '[' => {
                    let mut j = i + 1;
                    let negated = chars.get(j) == Some(&'!');
                    if negated {
                        j += 1;
                    }
                    let mut items = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&c) = chars.get(j) else {
                            return Err("unclosed '[' in pattern".into());
                        };
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        if chars.get(j + 1) == Some(&'-')
                            && chars.get(j + 2).is_some_and(|&e| e != ']')
                        {
                            items.push((c, chars[j + 2]));
                            j += 3;
                        } else {
                            items.push((c, c));
                            j += 1;
                        }
                    }
                    tokens.push(Token::Set { negated, items });
                    i = j + 1;
                }
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        Ok(Pattern { tokens })
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // Classic wildcard matching with one backtrack point for the last `*`: linear
        // in practice, never exponential.
        let (mut t, mut n) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(t) {
                Some(Token::AnyRun) => {
                    star = Some((t, n));
                    t += 1;
                    continue;
                }
                Some(tok) if single_matches(tok, name[n]) => {
                    t += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((st, sn)) => {
                    t = st + 1;
                    n = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            }
        }
        self.tokens[t..]
            .iter()
            .all(|tok| matches!(tok, Token::AnyRun))
    }
}

fn single_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::Any => true,
        Token::AnyRun => false,
        Token::Set { negated, items } => {
            items.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).expect("valid pattern").matches(n)
    }

    #[test]
    fn matches_like_python_fnmatch() {
        // Expected values: Python 3 `fnmatch.fnmatchcase(name, pattern)` for each pair.
        assert!(m("*.safetensors", "model-00001-of-00002.safetensors"));
        assert!(!m("*.safetensors", "pytorch_model.bin"));
        assert!(m("*.json", "sub/dir/config.json")); // `*` crosses `/` in fnmatch
        assert!(m("model-0000?-of-*.bin", "model-00002-of-00003.bin"));
        assert!(!m("model-0000?-of-*.bin", "model-00012-of-00013.bin"));
        assert!(m("[!p]*", "config.json"));
        assert!(!m("[!p]*", "pytorch_model.bin"));
        assert!(m("[a-c]at", "bat"));
        assert!(!m("[a-c]at", "hat"));
        assert!(m("*", ""));
        assert!(!m("a*b", "a"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(m("[]]", "]"));
        assert!(Pattern::new("[abc").is_err());
    }
}
