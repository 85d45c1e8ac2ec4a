//! The user documentation cannot drift from the binary: every `vlguard-ort SUBCOMMAND ...`
//! written in a fenced code block of README.md, docs/*.md or models/README.md names a
//! subcommand that exists, and every `--flag` it uses is one that subcommand's `--help`
//! (of the binary Cargo just built) lists; every relative link of those pages points at a
//! file that exists. A failure names the file, the line and the flag.
//!
//! What counts as an invocation: in a fenced block, a logical line (`\` continuations
//! joined) with its `$ ` prompt and `# comment` stripped, any word that is `vlguard-ort` or
//! ends in `/vlguard-ort` (env assignments before it are fine); its words up to a shell
//! separator (`|`, `&&`, `;`, `>`) are the subcommand path, then arguments. Lines that only
//! run a script (`scripts/demo.sh --subset all`) are not the binary's flags and are skipped
//! by construction: they hold no `vlguard-ort` word.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What one subcommand path's `--help` offers.
#[derive(Debug, Clone, Default)]
struct Help {
    flags: BTreeSet<String>,
    subcommands: BTreeSet<String>,
}

/// Parses clap's `--help` text: long flags from the option lines, subcommand names from
/// the `Commands:` section.
fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut in_commands = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            in_commands = false;
            continue;
        }
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        let trimmed = line.trim_start();
        if in_commands && line.starts_with("  ") {
            if let Some(name) = trimmed.split_whitespace().next() {
                if name != "help" {
                    help.subcommands.insert(name.to_string());
                }
            }
        } else if trimmed.starts_with('-') {
            for word in trimmed.split_whitespace() {
                let word = word.trim_end_matches(',');
                if let Some(flag) = word.strip_prefix("--") {
                    let flag = flag.split(['=', '<', '[']).next().unwrap_or("");
                    if !flag.is_empty() {
                        help.flags.insert(format!("--{flag}"));
                    }
                } else if !word.starts_with('-') {
                    break;
                }
            }
        }
    }
    help
}

/// The `--help` of each subcommand path, asked of a binary once per path.
trait HelpSource {
    fn help(&mut self, path: &[String]) -> Option<Help>;
}

struct Binary {
    exe: PathBuf,
    cache: BTreeMap<Vec<String>, Option<Help>>,
}

impl HelpSource for Binary {
    fn help(&mut self, path: &[String]) -> Option<Help> {
        let exe = &self.exe;
        self.cache
            .entry(path.to_vec())
            .or_insert_with(|| {
                let out = Command::new(exe).args(path).arg("--help").output().ok()?;
                out.status
                    .success()
                    .then(|| parse_help(&String::from_utf8_lossy(&out.stdout)))
            })
            .clone()
    }
}

/// A logical line of a fenced code block: its first physical line number (1-based) and
/// its text with continuations joined.
fn code_lines(markdown: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let trimmed = raw.trim_start();
        if let Some(marker) = &fence {
            if trimmed.starts_with(marker.as_str()) && trimmed.trim_start_matches('`').is_empty() {
                fence = None;
                lines.extend(pending.take());
                continue;
            }
        } else {
            if trimmed.starts_with("```") {
                let ticks = trimmed.len() - trimmed.trim_start_matches('`').len();
                fence = Some("`".repeat(ticks));
            }
            continue;
        }
        let (number, mut text) = pending.take().unwrap_or((i + 1, String::new()));
        let piece = raw.trim_end();
        if let Some(head) = piece.strip_suffix('\\') {
            text.push_str(head);
            text.push(' ');
            pending = Some((number, text));
        } else {
            text.push_str(piece);
            lines.push((number, text));
        }
    }
    lines.extend(pending);
    lines
}

/// Shell words of a line, quotes removed, up to a `#` comment.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.get_or_insert_with(String::new).push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            None if c.is_whitespace() => words.extend(word.take()),
            None if c == '#' && word.is_none() => break,
            None => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

fn is_separator(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | ";" | "&" | ")")
        || word.starts_with('>')
        || word.starts_with("2>")
        || word.starts_with('<')
}

/// Checks one markdown text; returns one message per problem, naming `file` and the line.
fn check_markdown(
    file: &str,
    markdown: &str,
    source: &mut impl HelpSource,
) -> (usize, Vec<String>) {
    let mut found = 0;
    let mut problems = Vec::new();
    for (number, line) in code_lines(markdown) {
        let line = line.trim_start();
        let line = line.strip_prefix("$ ").unwrap_or(line);
        let words = words(line);
        let mut i = 0;
        while i < words.len() {
            let w = &words[i];
            i += 1;
            if w != "vlguard-ort" && !w.ends_with("/vlguard-ort") {
                continue;
            }
            found += 1;
            let args: Vec<&String> = words[i..].iter().take_while(|w| !is_separator(w)).collect();
            i += args.len();
            check_invocation(&format!("{file}:{number}"), &args, source, &mut problems);
        }
    }
    (found, problems)
}

/// One invocation's words after `vlguard-ort`: the subcommand path, then its flags.
fn check_invocation(
    at: &str,
    args: &[&String],
    source: &mut impl HelpSource,
    problems: &mut Vec<String>,
) {
    let mut path: Vec<String> = Vec::new();
    let mut levels = vec![source.help(&path).expect("the top-level --help runs")];
    // Any word naming a subcommand of the deepest level so far goes down a level, also
    // after that level's own flags (`fetch --endpoint URL dataset`).
    for word in args {
        let current = levels.last().expect("at least the top level");
        if current.subcommands.contains(word.as_str()) {
            path.push(word.to_string());
            match source.help(&path) {
                Some(help) => levels.push(help),
                None => {
                    problems.push(format!("{at}: `{}` has no --help", path.join(" ")));
                    return;
                }
            }
        } else if path.is_empty() && !word.starts_with('-') {
            problems.push(format!("{at}: `vlguard-ort {word}` is not a subcommand"));
            return;
        }
    }
    // Flags may belong to the subcommand or to a parent below the top level
    // (`fetch --endpoint URL dataset`); the top level's are only its own.
    let offered: BTreeSet<&String> = if path.is_empty() {
        levels[0].flags.iter().collect()
    } else {
        levels[1..].iter().flat_map(|h| h.flags.iter()).collect()
    };
    for word in args {
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let flag = format!("--{}", flag.split('=').next().unwrap_or(""));
        if flag != "--" && !offered.contains(&flag) {
            let command = std::iter::once("vlguard-ort")
                .chain(path.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            problems.push(format!("{at}: `{command}` has no flag {flag}"));
        }
    }
}

/// Relative link targets of a markdown text (`[text](target)`), anchors cut off.
fn relative_links(markdown: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (i, line) in markdown.lines().enumerate() {
        for piece in line.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            let target = target.split('#').next().unwrap_or("").trim();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            links.push((i + 1, target.to_string()));
        }
    }
    links
}

/// README.md, every docs/*.md page, and models/README.md.
fn documentation() -> Vec<PathBuf> {
    let root = repo();
    let mut pages = vec![root.join("README.md"), root.join("models/README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("a docs/ folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_documented_command_and_flag_exists() {
    let mut binary = Binary {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort")),
        cache: BTreeMap::new(),
    };
    let mut found = 0;
    let mut problems = Vec::new();
    for page in documentation() {
        let text = std::fs::read_to_string(&page).unwrap();
        let (n, mut p) = check_markdown(&relative(&page), &text, &mut binary);
        found += n;
        problems.append(&mut p);
    }
    // The check must have something to check: the README's quick start alone has four.
    assert!(found >= 20, "only {found} vlguard-ort invocations found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_relative_link_points_at_a_file() {
    let mut broken = Vec::new();
    for page in documentation() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for (line, target) in relative_links(&text) {
            if !dir.join(&target).exists() {
                broken.push(format!(
                    "{}:{line}: {target} does not exist",
                    relative(&page)
                ));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn the_readme_links_into_docs() {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let into_docs = relative_links(&text)
        .iter()
        .filter(|(_, t)| t.starts_with("docs/"))
        .count();
    assert!(
        into_docs >= 8,
        "README.md links into docs/ {into_docs} times"
    );
}

/// A stand-in binary with two subcommands, so the checker's own tests need no build.
struct Scripted;

impl HelpSource for Scripted {
    fn help(&mut self, path: &[String]) -> Option<Help> {
        let text = match path.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => "Usage: x <COMMAND>\n\nCommands:\n  run    Run\n  fetch  Fetch\n  help  Print\n\nOptions:\n  -h, --help     Print help\n  -V, --version  Print version\n",
            ["run"] => "Usage: x run [OPTIONS]\n\nOptions:\n      --model <MODEL>\n          Model\n      --batch-size <N>  Rows [default: 1]\n  -h, --help  Print help\n",
            ["fetch"] => "Usage: x fetch [OPTIONS] <COMMAND>\n\nCommands:\n  dataset  Data\n\nOptions:\n      --endpoint <ENDPOINT>  Hub\n  -h, --help  Print help\n",
            ["fetch", "dataset"] => "Usage: x fetch dataset\n\nOptions:\n      --to <TO>  Folder\n  -h, --help  Print help\n",
            _ => return None,
        };
        Some(parse_help(text))
    }
}

#[test]
fn a_wrong_flag_in_a_doc_snippet_is_named_with_its_line() {
    let doc =
        "# t\n\n```sh\n$ vlguard-ort run --model m \\\n    --batch-size 4 --no-such-flag\n```\n";
    let (found, problems) = check_markdown("doc.md", doc, &mut Scripted);
    assert_eq!(found, 1);
    assert_eq!(
        problems,
        ["doc.md:4: `vlguard-ort run` has no flag --no-such-flag"]
    );
}

#[test]
fn an_unknown_subcommand_and_a_flag_of_another_level_are_caught() {
    let doc = "```\nX=1 target/release/vlguard-ort sing --loud\nvlguard-ort fetch dataset --model m   # --comment-is-fine\n```\n";
    let (found, problems) = check_markdown("d.md", doc, &mut Scripted);
    assert_eq!(found, 2);
    assert_eq!(
        problems,
        [
            "d.md:2: `vlguard-ort sing` is not a subcommand",
            "d.md:3: `vlguard-ort fetch dataset` has no flag --model",
        ]
    );
}

#[test]
fn right_snippets_pass_and_text_outside_fences_is_not_read() {
    let doc = "vlguard-ort run --bogus (prose)\n\n```sh\nvlguard-ort fetch --endpoint=http://h dataset --to d && vlguard-ort run --model m | head -c 10\nscripts/demo.sh --not-ours\nvlguard-ort --version\n```\n";
    let (found, problems) = check_markdown("d.md", doc, &mut Scripted);
    assert_eq!(found, 3);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_broken_relative_link_is_found() {
    let links = relative_links(
        "see [GPU](docs/gpu.md#tensorrt) and [site](https://x.org/a) [n](docs/none.md)",
    );
    assert_eq!(
        links,
        [
            (1, "docs/gpu.md".to_string()),
            (1, "docs/none.md".to_string())
        ]
    );
}
