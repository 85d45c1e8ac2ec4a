//! `vlguard-ort convert`, the built binary in a temp dir: its output equals byte for byte
//! what VLGuard's `convert_to_llava_format.py` wrote for the inputs of tests/data/convert
//! (README.md there: made by `scripts/make_convert_fixtures.py`, Python 3.11.7) and, when
//! the gated `data/VLGuard/train.json` is present, for the real training set (the
//! reference's size and sha256 from REFERENCE.md); every input the script fails on is
//! refused with the file and item named, exit 2, and nothing written.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
#[path = "common/test_data.rs"]
mod test_data;

use common::bin;
use test_data::{fetched_train_json, repo_file};
use vlguard_ort::util::sha256_hex;

fn convert(meta: &Path, out: &Path) -> Output {
    bin()
        .arg("convert")
        .arg("--meta")
        .arg(meta)
        .arg("--out")
        .arg(out)
        .output()
        .expect("the binary starts")
}

/// Converts `tests/data/convert/NAME.json` and returns (bytes written, stdout).
fn convert_fixture(name: &str) -> (Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    let run = convert(&repo_file(&format!("tests/data/convert/{name}.json")), &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{name}: {}\n{stderr}", run.status);
    let stdout = String::from_utf8(run.stdout).unwrap();
    let summary = stdout.replace(&out.display().to_string(), "OUT");
    (std::fs::read(&out).unwrap(), summary)
}

fn assert_same_bytes(name: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        let at = at.unwrap_or(got.len().min(want.len()));
        let context = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(80)..(at + 80).min(b.len())]).into_owned()
        };
        panic!(
            "{name}: output differs from the reference script's at byte {at} ({} vs {} bytes)\n\
             got:  ...{}...\nwant: ...{}...",
            got.len(),
            want.len(),
            context(got),
            context(want)
        );
    }
}

#[test]
fn varied_input_is_written_byte_for_byte_as_the_reference_script_writes_it() {
    let (got, summary) = convert_fixture("varied");
    let want = std::fs::read(repo_file("tests/data/convert/varied.llava.json")).unwrap();
    assert_same_bytes("varied.json", &got, &want);
    assert_eq!(
        summary,
        "wrote OUT (5885 bytes): 15 items (5 with one instruction/response pair, 10 with two \
         or more), 9 safe, 6 unsafe\n"
    );
}

#[test]
fn many_pairs_give_the_reference_shuffles() {
    let (got, _) = convert_fixture("many_pairs");
    let want = std::fs::read(repo_file("tests/data/convert/many_pairs.llava.json")).unwrap();
    assert_same_bytes("many_pairs.json", &got, &want);
}

#[test]
fn real_training_set_gives_the_reference_file() {
    let Some(train) = fetched_train_json() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train_llava_format.json");
    let run = convert(&train, &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    // REFERENCE.md, "Fine-tuning data": the reference script's output on this file.
    assert_eq!(bytes.len(), 2_042_545);
    assert_eq!(
        sha256_hex(&bytes),
        "15ed7b60b6d183f8b749fc2761cb414d0a22e45d6abab8cd6de94fad5a952cd6"
    );
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        format!(
            "wrote {} (2042545 bytes): 2000 items (1023 with one instruction/response pair, \
             977 with two or more), 977 safe, 1023 unsafe\n",
            out.display()
        )
    );
}

#[test]
fn a_new_output_replaces_an_old_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.json");
    std::fs::write(&out, "an older, longer file ".repeat(1000)).unwrap();
    let run = convert(&repo_file("tests/data/convert/varied.json"), &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let want = std::fs::read(repo_file("tests/data/convert/varied.llava.json")).unwrap();
    assert_same_bytes(
        "varied.json over an old file",
        &std::fs::read(&out).unwrap(),
        &want,
    );
}

/// (what, input text, what stderr must say after the file name). The reference script
/// raises on each (checked with Python 3.11.7) except three it takes but whose output
/// vlguard-ort cannot write unchanged, refused instead: the NaN literal, the integer beyond
/// 64 bits and the list after `<image>` (src/convert/mod.rs says why).
const BAD_INPUTS: &[(&str, &str, &str)] = &[
    ("truncated", r#"[{"id": "a", "instr-resp": ["#, "not valid JSON: EOF while parsing"),
    ("empty file", "", "not valid JSON"),
    ("NaN literal", r#"[{"id": "a", "n": NaN, "instr-resp": [{"instruction": "q", "response": "r"}]}]"#, "not valid JSON"),
    ("BOM", "\u{feff}[]", "starts with a UTF-8 byte-order mark"),
    ("top level object", r#"{"id": "a"}"#, "the top level is an object, not a list of items"),
    ("item not an object", r#"[["a"]]"#, "item [0] (no id): is a list, not an object"),
    ("no instr-resp", r#"[{"id": "a", "image": "a.png"}]"#, "item [0] (id \"a\"): has no `instr-resp`"),
    ("empty instr-resp", r#"[{"id": "a", "instr-resp": []}]"#, "item [0] (id \"a\"): `instr-resp` is empty"),
    (
        "instr-resp an object",
        r#"[{"id": "a", "instr-resp": {"instruction": "q", "response": "r"}}]"#,
        "item [0] (id \"a\"): `instr-resp` is an object, not a list of instruction/response pairs",
    ),
    (
        "single pair without instruction",
        r#"[{"id": "a", "instr-resp": [{"safe_instruction": "q", "response": "r"}]}]"#,
        "item [0] (id \"a\"): `instr-resp[0]` has no `instruction`",
    ),
    (
        "single pair without response",
        r#"[{"id": "a", "instr-resp": [{"instruction": "q"}]}]"#,
        "item [0] (id \"a\"): `instr-resp[0]` has no `response`",
    ),
    (
        "second of two pairs without response, in the second item",
        r#"[{"id": "ok", "instr-resp": [{"instruction": "q", "response": "r"}]},
            {"id": "b", "instr-resp": [{"s": "q", "response": "r"}, {"u": "q2"}]}]"#,
        "item [1] (id \"b\"): `instr-resp[1]` has no `response`",
    ),
    (
        "pair not an object",
        r#"[{"id": "a", "instr-resp": ["q", {"s": "q", "response": "r"}]}]"#,
        "item [0] (id \"a\"): `instr-resp[0]` is a string, not an object",
    ),
    (
        "single pair a list",
        r#"[{"id": 7, "instr-resp": [["q", "r"]]}]"#,
        "item [0] (id 7): `instr-resp[0]` is a list, not an object",
    ),
    (
        "pair without keys",
        r#"[{"id": "a", "instr-resp": [{}, {"s": "q", "response": "r"}]}]"#,
        "item [0] (id \"a\"): `instr-resp[0]` has no keys",
    ),
    (
        "integer beyond 64 bits",
        "[{\"id\": \"a\",\n \"n\": 18446744073709551616, \"instr-resp\": [{\"instruction\": \"q\", \"response\": \"r\"}]}]",
        "line 2 column 7: the integer 18446744073709551616 is wider than 64 bits",
    ),
    (
        "a list after <image>",
        r#"[{"id": "a", "instr-resp": [{"instruction": ["q"], "response": "r"}]}]"#,
        "item [0] (id \"a\"): `instr-resp[0]`.`instruction` is a list: the reference writes \
         Python's repr() of it",
    ),
];

fn refused(dir: &Path, input: &str, out: &Path) -> String {
    let meta = dir.join("train.json");
    std::fs::write(&meta, input).unwrap();
    let run = convert(&meta, out);
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        run.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    stderr
}

#[test]
fn bad_inputs_are_refused_naming_file_and_item_and_nothing_is_written() {
    for (what, input, says) in BAD_INPUTS {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out").join("train_llava_format.json");
        let stderr = refused(dir.path(), input, &out);
        let meta = dir.path().join("train.json");
        let want = format!("error: {}: {says}", meta.display());
        assert!(
            stderr.starts_with(&want),
            "{what}: stderr\n{stderr}\nshould start with\n{want}"
        );
        let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, [meta], "{what}: something was written");

        // An existing output stays as it was.
        let kept = dir.path().join("kept.json");
        std::fs::write(&kept, "previous").unwrap();
        refused(dir.path(), input, &kept);
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "previous",
            "{what}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "{what}");
    }
}

#[test]
fn a_missing_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("train.json");
    let run = convert(&meta, &dir.path().join("out.json"));
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: {}: No such file", meta.display())),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A training set that is not a regular file (a FIFO nobody writes to) is refused at once,
/// never read: reading it would hang.
#[test]
fn an_input_that_is_not_a_regular_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("train.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&meta)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let out = dir.path().join("out.json");
    let run = convert(&meta, &out);
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&meta.display().to_string()) && stderr.contains("not a regular file"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn help_says_what_the_output_is_for_and_where_the_images_are() {
    let run = bin().args(["convert", "--help"]).output().unwrap();
    assert!(run.status.success());
    let help = String::from_utf8(run.stdout).unwrap();
    for needle in [
        "LLaVA's fine-tuning",
        "--data_path",
        "`fetch dataset --with-train` unpacks",
        "--image_folder data/VLGuard/train",
        "[default: data/VLGuard/train.json]",
        "[default: data/VLGuard/train_llava_format.json]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
