//! Hostile input (issue 18): each case once failed (a crash, a hang, runaway memory, a
//! file read outside the image folder, a corrupted journal) and now gets a clear error,
//! per sample where it concerns one sample, with the rest of the run completing.
//!
//! The runs use the bundled demo model and mini test set (`data/mini`), rewritten into
//! temp folders with the hostile part added.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The mini test.json's unsafes entries (10), as JSON values to edit.
fn unsafes() -> Vec<Value> {
    let all: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(mini_meta()).unwrap()).unwrap();
    all.into_iter().filter(|e| e["safe"] == false).collect()
}

/// A copy of the mini images and a test.json of `entries` in a temp folder.
struct Set {
    dir: tempfile::TempDir,
}

impl Set {
    fn new(entries: &[Value]) -> Set {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&mini_images(), &dir.path().join("images"));
        let set = Set { dir };
        set.write_meta(entries);
        set
    }
    fn write_meta(&self, entries: &[Value]) {
        std::fs::write(self.meta(), serde_json::to_string(entries).unwrap()).unwrap();
    }
    fn meta(&self) -> PathBuf {
        self.dir.path().join("test.json")
    }
    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("results")
    }
    /// `run --subset unsafes` on the demo model, short answers.
    fn run(&self) -> Command {
        self.run_with(demo_model(), "demo")
    }
    fn run_with(&self, model: &Path, engine: &str) -> Command {
        self.run_tokens(model, engine, "4")
    }
    /// `run` with `--max-new-tokens tokens`.
    fn run_tokens(&self, model: &Path, engine: &str, tokens: &str) -> Command {
        let mut cmd = bin();
        cmd.arg("run")
            .arg("--model")
            .arg(model)
            .args(["--subset", "unsafes", "--ep", "cpu", "--engine", engine])
            .args(["--max-new-tokens", tokens])
            .arg("--meta")
            .arg(self.meta())
            .arg("--images")
            .arg(self.images())
            .arg("--out")
            .arg(self.out());
        cmd
    }
    fn manifest(&self) -> Value {
        let path = self.out().join("unsafes/demo.run.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
    fn answers(&self) -> serde_json::Map<String, Value> {
        let path = self.out().join("unsafes/demo.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Runs `cmd` with a deadline: a hang is a failure, not a stuck test.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("{cmd:?} did not finish within {limit:?} (a hang)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error the run manifest records for `image`.
fn error_of(manifest: &Value, image: &str) -> String {
    manifest["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["image"] == image)
        .map(|e| e["error"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no error recorded for {image}: {manifest}"))
}

#[test]
fn prompts_longer_than_the_context_fail_alone_before_any_graph_runs() {
    let mut entries = unsafes();
    // Some 5,000 and 20,000 text tokens, plus the 576 image features (context 4,096).
    let long = "Describe every detail of this picture. ".repeat(800);
    let huge = "word ".repeat(20_000);
    entries[0]["instr-resp"][0]["instruction"] = Value::from(long);
    entries[1]["instr-resp"][0]["instruction"] = Value::from(huge);
    let set = Set::new(&entries);
    let output = output_within(&mut set.run(), Duration::from_secs(300));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let manifest = set.manifest();
    assert_eq!(manifest["n_errors"], 2);
    for entry in &entries[..2] {
        let error = error_of(&manifest, entry["image"].as_str().unwrap());
        assert!(
            error.contains("over the model's context of 4096") && error.contains("576 image"),
            "{error}"
        );
    }
    assert_eq!(set.answers().len(), 8, "the other samples are answered");
    // The normal per-sample memory of the demo run (~100 MB), not gigabytes.
    let rss = manifest["peak_rss_mb"].as_f64().unwrap();
    assert!(rss < 1000.0, "peak RSS {rss} MB");
}

#[test]
fn fifos_devices_and_oversized_files_are_refused_unread() {
    let entries = unsafes();
    let set = Set::new(&entries);
    let image = |k: usize| set.images().join(entries[k]["image"].as_str().unwrap());
    // A FIFO named like an image (reading it would hang), a symlink to /dev/zero (reading
    // it never ends), a 2 GB sparse file (read whole before, then "cannot identify").
    std::fs::remove_file(image(0)).unwrap();
    let status = Command::new("mkfifo").arg(image(0)).status().unwrap();
    assert!(status.success(), "mkfifo");
    std::fs::remove_file(image(1)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", image(1)).unwrap();
    let sparse = std::fs::File::create(image(2)).unwrap();
    sparse.set_len(2 << 30).unwrap();
    let output = output_within(&mut set.run(), Duration::from_secs(300));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let manifest = set.manifest();
    let name = |k: usize| entries[k]["image"].as_str().unwrap().to_string();
    assert!(error_of(&manifest, &name(0)).contains("a FIFO"));
    assert!(error_of(&manifest, &name(1)).contains("a character device"));
    let too_large = error_of(&manifest, &name(2));
    assert!(
        too_large.contains("2147483648 bytes") && too_large.contains("--max-image-bytes"),
        "{too_large}"
    );
    assert_eq!(set.answers().len(), 7);
}

#[test]
fn image_paths_must_stay_under_the_image_folder() {
    let mut entries = unsafes();
    let set = Set::new(&entries);
    // A real image outside --images, reachable by `..`.
    let secret = set.dir.path().join("secret.png");
    std::fs::copy(
        set.images().join(entries[3]["image"].as_str().unwrap()),
        &secret,
    )
    .unwrap();
    entries[0]["image"] = Value::from("../secret.png");
    entries[1]["image"] = Value::from("/etc/passwd");
    entries[2]["image"] = Value::from("HOD/../../secret.png");
    set.write_meta(&entries);
    let output = output_within(&mut set.run(), Duration::from_secs(300));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let manifest = set.manifest();
    for (k, why) in [(0, "`..`"), (1, "absolute"), (2, "`..`")] {
        let error = error_of(&manifest, entries[k]["image"].as_str().unwrap());
        assert!(
            error.contains("is refused") && error.contains(why),
            "{error}"
        );
    }
    assert_eq!(set.answers().len(), 7);
}

#[test]
fn an_engine_name_must_be_a_plain_file_name() {
    let set = Set::new(&unsafes());
    for name in ["../../data/test", "/tmp/x", "", ".hidden"] {
        let output = set.run_with(demo_model(), name).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{name:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is refused"), "{name:?}: {stderr}");
    }
    assert!(!set.out().exists(), "nothing is written");
}

/// A copy of the demo model with `tamper` applied to its manifest.json.
fn tampered_model(tamper: impl Fn(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(demo_model(), dir.path());
    let path = dir.path().join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tamper(&mut manifest);
    std::fs::write(&path, serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    dir
}

#[test]
fn a_tampered_manifest_is_one_error_naming_the_field_before_any_sample() {
    type Tamper = fn(&mut Value);
    let cases: [(&str, Tamper); 4] = [
        ("decoder.head_dim", |m| {
            m["decoder"]["hidden_size"] = Value::from(128)
        }),
        ("preprocess.crop_size", |m| {
            m["preprocess"]["crop_size"] = Value::from(100_000)
        }),
        ("preprocess.image_std", |m| {
            m["preprocess"]["image_std"] = serde_json::json!([0.0, 0.0, 0.0])
        }),
        // Consistent with itself (224 / 14 = 16, 16 x 16 = 256 tokens), not with the graph.
        ("vision.image_size", |m| {
            m["vision"]["image_size"] = Value::from(224);
            m["vision"]["num_tokens"] = Value::from(256);
            m["preprocess"]["crop_size"] = Value::from(224);
        }),
    ];
    let set = Set::new(&unsafes());
    for (field, tamper) in cases {
        let model = tampered_model(tamper);
        let output = set.run_with(model.path(), "demo").output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{field}: {stderr}");
        assert!(stderr.contains(&format!("`{field}`")), "{field}: {stderr}");
        let journal = set.out().join("unsafes/demo.journal.jsonl");
        assert!(!journal.exists(), "{field}: no sample ran");
        let inspect = bin().arg("inspect").arg(model.path()).output().unwrap();
        assert_ne!(inspect.status.code(), Some(0), "{field}: inspect must fail");
        let stdout = String::from_utf8_lossy(&inspect.stdout);
        assert!(stdout.contains(&format!("`{field}`")), "{field}: {stdout}");
    }
}

/// Runs `cmd` with its stdout on a pipe whose reader is already gone (`cmd | head -c 0`):
/// the first print fails, and the process must end quietly (killed by SIGPIPE like
/// `cat`), never panic with exit code 101.
fn closed_stdout(cmd: &mut Command) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `pipe` writes two new descriptors into the array on success.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    let output = cmd
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(13),
        "{:?}: {stderr}",
        output.status
    );
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut inspect = bin();
    inspect.arg("inspect").arg(demo_model());
    closed_stdout(&mut inspect);
    let predictions = tempfile::tempdir().unwrap();
    let path = predictions.path().join("demo.json");
    std::fs::write(
        &path,
        std::fs::read(repo().join("tests/data/golden-dev/reference/unsafes.json")).unwrap(),
    )
    .unwrap();
    let mut score = bin();
    score
        .arg("score")
        .arg(&path)
        .args(["--subset", "unsafes", "--json"])
        .arg("--meta")
        .arg(mini_meta());
    closed_stdout(&mut score);
}

#[test]
fn a_second_writer_on_the_same_results_file_exits_at_once_naming_the_holder() {
    let set = Set::new(&unsafes());
    let paths = vlguard_ort::results::Paths::new(&set.out(), "unsafes", "demo");
    std::fs::create_dir_all(set.out().join("unsafes")).unwrap();
    // Another run holds the lock (this test process, as a run would).
    let held = vlguard_ort::results::Lock::acquire(&paths.lock).unwrap();
    let started = Instant::now();
    let output = output_within(&mut set.run(), Duration::from_secs(120));
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let pid = std::process::id().to_string();
    assert!(
        stderr.contains("demo.lock") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    assert!(!paths.journal.exists(), "the journal was not touched");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it did not wait"
    );
    drop(held);
    let output = output_within(&mut set.run(), Duration::from_secs(300));
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn weights_overwritten_in_place_are_caught_at_load() {
    let set = Set::new(&unsafes());
    let model = tampered_model(|_| {});
    let first = set.run_with(model.path(), "demo").output().unwrap();
    assert!(first.status.success(), "{first:?}");
    // Other weights of the same size: one byte of the decoder's weights changed (its
    // last bytes are initializer data).
    let decoder = model.path().join("decoder.onnx");
    let mut bytes = std::fs::read(&decoder).unwrap();
    let at = bytes.len() - 8;
    bytes[at] ^= 0x5a;
    std::fs::write(&decoder, &bytes).unwrap();
    let output = set.run_with(model.path(), "demo").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("decoder.onnx is not the file the export wrote"),
        "{stderr}"
    );
}

#[test]
fn an_image_changed_since_it_was_answered_is_answered_again() {
    let entries = unsafes();
    let set = Set::new(&entries);
    let output = set.run().output().unwrap();
    assert!(output.status.success(), "{output:?}");
    // Another folder's file under the same name: the second image's bytes in the first's
    // place.
    let first = set.images().join(entries[0]["image"].as_str().unwrap());
    let second = set.images().join(entries[1]["image"].as_str().unwrap());
    std::fs::copy(&second, &first).unwrap();
    let output = set.run().output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("1 answered images changed"), "{stderr}");
    let manifest = set.manifest();
    assert_eq!(manifest["n_generated"], 1, "{manifest}");
    assert_eq!(manifest["n_resumed"], 9);
}

/// `export --random-weights` from a copy of models/bench-100m's configs with `tamper`
/// applied to the LLaVA config, into `dir/out`.
fn export_random(dir: &Path, tamper: impl Fn(&mut Value)) -> Output {
    let llava = dir.join("llava");
    let clip = dir.join("clip");
    std::fs::create_dir_all(&llava).unwrap();
    std::fs::create_dir_all(&clip).unwrap();
    let bench = repo().join("models/bench-100m");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(bench.join("config.json")).unwrap()).unwrap();
    tamper(&mut config);
    std::fs::write(llava.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(bench.join("clip/config.json"), clip.join("config.json")).unwrap();
    std::fs::copy(
        repo().join("models/demo-src/llava-v1.5-tiny/tokenizer.model"),
        llava.join("tokenizer.model"),
    )
    .unwrap();
    bin()
        .args(["export", "--random-weights", "--dtype", "fp16"])
        .arg("--checkpoint")
        .arg(&llava)
        .arg("--vision-tower")
        .arg(&clip)
        .arg("--out")
        .arg(dir.join("out"))
        .output()
        .unwrap()
}

#[test]
fn absurd_export_dimensions_are_refused_and_leave_nothing_behind() {
    type Tamper = fn(&mut Value);
    let cases: [(&str, Tamper); 3] = [
        ("`vocab_size` is 2000000000", |c| {
            c["vocab_size"] = Value::from(2_000_000_000u64)
        }),
        ("`num_hidden_layers` is 1000000000", |c| {
            c["num_hidden_layers"] = Value::from(1_000_000_000u64)
        }),
        // Within every bound, but some 4 TB of weights: more than the disk holds.
        ("bytes free; this export writes about", |c| {
            c["hidden_size"] = Value::from(16384);
            c["num_attention_heads"] = Value::from(128);
            c["num_key_value_heads"] = Value::from(128);
            c["intermediate_size"] = Value::from(65536);
            c["num_hidden_layers"] = Value::from(1000);
        }),
    ];
    for (expected, tamper) in cases {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let output = export_random(dir.path(), tamper);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{expected}: refused at once"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "llava" && n != "clip")
            .collect();
        assert!(left.is_empty(), "{expected}: left behind {left:?}");
    }
}

// ---------------------------------------------------------------- issue 24, second sweep

/// Runs `cmd` with a deadline and returns its exit code and stderr.
fn code_and_stderr(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let output = output_within(cmd, limit);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

#[test]
fn issue24_1_an_empty_or_all_failed_run_writes_a_manifest_every_reader_takes() {
    let entries = unsafes();
    let set = Set::new(&entries);
    // Every image gone: every sample fails.
    for entry in &entries {
        std::fs::remove_file(set.images().join(entry["image"].as_str().unwrap())).unwrap();
    }
    let empty = Set::new(&entries);
    let mut limit_zero = empty.run();
    limit_zero.args(["--limit", "0"]);
    let all_failed = output_within(&mut set.run(), Duration::from_secs(300));
    assert_eq!(all_failed.status.code(), Some(1), "{all_failed:?}");
    let nothing = output_within(&mut limit_zero, Duration::from_secs(300));
    assert!(nothing.status.success(), "{nothing:?}");
    for results in [set.out(), empty.out()] {
        let manifest: Value = serde_json::from_str(
            &std::fs::read_to_string(results.join("unsafes/demo.run.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["asr"]["n"], 0, "{manifest}");
        assert!(manifest["asr"]["asr"].is_null(), "no rate over nothing");
        for format in ["md", "json", "csv"] {
            let board = bin()
                .arg("leaderboard")
                .arg(&results)
                .args(["--format", format])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&board.stdout);
            let stderr = String::from_utf8_lossy(&board.stderr);
            assert!(board.status.success(), "{format}: {stderr}");
            assert!(!stderr.contains("not included"), "{format}: {stderr}");
            assert!(text.contains("demo"), "{format}: {text}");
        }
        let answers = results.join("unsafes/demo.json");
        let (code, stderr) =
            code_and_stderr(bin().arg("score").arg(&answers), Duration::from_secs(60));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("no answer for any of the 10 unsafes"),
            "{stderr}"
        );
        let (code, stderr) = code_and_stderr(
            bin().arg("browse").arg(&results).args(["--engine", "demo"]),
            Duration::from_secs(60),
        );
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("its answers files hold none"), "{stderr}");
    }
}

/// Replaces `path` with a FIFO.
fn make_fifo(path: &Path) {
    std::fs::remove_file(path).unwrap();
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

/// Replaces `path` with a symlink to /dev/zero.
fn make_zero(path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", path).unwrap();
}

/// Rewrites `dir/manifest.json` with `change` applied.
fn edit_manifest(dir: &Path, change: &dyn Fn(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    change(&mut manifest);
    std::fs::write(&path, manifest.to_string()).unwrap();
}

#[test]
fn issue24_2_model_files_that_are_not_regular_files_or_outside_the_folder_are_refused() {
    type Tamper = fn(&Path);
    let cases: [(&str, Tamper); 7] = [
        (
            "vision.onnx.data: not a regular file (a character device)",
            |d| make_zero(&d.join("vision.onnx.data")),
        ),
        ("decoder.onnx: not a regular file (a FIFO)", |d| {
            make_fifo(&d.join("decoder.onnx"))
        }),
        (
            "manifest.json: not a regular file (a character device)",
            |d| make_zero(&d.join("manifest.json")),
        ),
        ("no sha256 for", |d| {
            edit_manifest(d, &|m| m["files"] = serde_json::json!({}))
        }),
        ("no sha256 for embed.onnx.data", |d| {
            edit_manifest(d, &|m| {
                m["files"]
                    .as_object_mut()
                    .unwrap()
                    .remove("embed.onnx.data");
            })
        }),
        ("the tokenizer file `../tokenizer.json` is refused", |d| {
            std::fs::copy(d.join("tokenizer.json"), d.join("../tokenizer.json")).unwrap();
            edit_manifest(d, &|m| {
                m["tokenizer"]["file"] = Value::from("../tokenizer.json")
            })
        }),
        ("a graph file `/dev/zero` is refused", |d| {
            edit_manifest(d, &|m| {
                m["graphs"]["vision"]["file"] = Value::from("/dev/zero")
            })
        }),
    ];
    let set = Set::new(&unsafes());
    for (expected, tamper) in cases {
        let parent = tempfile::tempdir().unwrap();
        let model = parent.path().join("model");
        copy_dir(demo_model(), &model);
        tamper(&model);
        let limit = Duration::from_secs(60);
        let (code, stderr) = code_and_stderr(&mut set.run_with(&model, "demo"), limit);
        assert_eq!(code, Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "run: {expected}: {stderr}");
        let (code, stderr) = code_and_stderr(bin().arg("inspect").arg(&model), limit);
        assert_ne!(code, Some(0), "{expected}: inspect must fail");
        assert!(stderr.contains(expected), "inspect: {expected}: {stderr}");
    }
}

/// Issue 24, case 5: shards answered with another token limit or by another model merged
/// silently. Each difference is named, with the shards holding each value.
#[test]
fn issue24_5_shards_answered_with_different_settings_do_not_merge() {
    let set = Set::new(&unsafes());
    let shard = |k: usize, model: &Path, tokens: &str| {
        let mut cmd = set.run_tokens(model, "demo", tokens);
        // --fresh: shard 2 is answered again each time (its earlier files kept aside).
        cmd.args(["--shard", &format!("{k}/2"), "--fresh"]);
        let output = output_within(&mut cmd, Duration::from_secs(300));
        assert!(output.status.success(), "{output:?}");
    };
    let merge = || {
        let mut cmd = bin();
        cmd.args(["merge", "--engine", "demo", "--subset", "unsafes", "--meta"])
            .arg(set.meta())
            .arg("--out")
            .arg(set.out());
        code_and_stderr(&mut cmd, Duration::from_secs(60))
    };
    shard(1, demo_model(), "4");
    shard(2, demo_model(), "3");
    let (code, stderr) = merge();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("different settings")
            && stderr.contains("max_new_tokens: 4 (shard 1) vs 3 (shard 2)"),
        "{stderr}"
    );
    assert!(
        !set.out().join("unsafes/demo.json").exists(),
        "nothing merged"
    );
    // The same weights under another manifest (another export of them): another model.
    let other = tampered_model(|m| m["exporter_version"] = Value::from("vlguard-export 9.9.9"));
    shard(2, other.path(), "4");
    let (code, stderr) = merge();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("model (manifest sha256): "), "{stderr}");
    assert!(!stderr.contains("max_new_tokens"), "{stderr}");
    // Answered alike: they merge.
    shard(2, demo_model(), "4");
    let (code, stderr) = merge();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(set.answers().len(), 10);
}

/// Issue 24, case 7: a lock file planted as a symlink had its target truncated and the
/// run's pid written into it.
#[test]
fn issue24_7_a_symlinked_lock_file_is_refused_and_its_target_kept() {
    let set = Set::new(&unsafes());
    let victim = set.dir.path().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let lock = set.out().join("unsafes/demo.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    for target in [victim.clone(), set.dir.path().join("not-there-yet.txt")] {
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let (code, stderr) = code_and_stderr(&mut set.run(), Duration::from_secs(60));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains("demo.lock is a symbolic link: refused as a lock file"),
            "{stderr}"
        );
        std::fs::remove_file(&lock).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!set.dir.path().join("not-there-yet.txt").exists());
    assert!(!set.out().join("unsafes/demo.journal.jsonl").exists());
}

/// Issue 24, cases 8 and 9: a second `--fresh` overwrote the only backup, and a
/// predictions file with no journal (VLGuard_eval.py's) was overwritten without a word.
/// Every replaced file is kept, numbered, and the run says so.
#[test]
fn issue24_8_9_fresh_runs_and_foreign_answers_keep_what_they_replace() {
    let set = Set::new(&unsafes());
    let results = set.out().join("unsafes");
    std::fs::create_dir_all(&results).unwrap();
    // The reference's own answers file, no journal beside it.
    let reference = r#"{"a.png": "written by VLGuard_eval.py"}"#;
    std::fs::write(results.join("demo.json"), reference).unwrap();
    let output = output_within(&mut set.run(), Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no journal beside it") && stderr.contains("demo.json.~1~"),
        "{stderr}"
    );
    let kept = |name: &str| std::fs::read_to_string(results.join(name)).unwrap();
    assert_eq!(kept("demo.json.~1~"), reference);
    let first = kept("demo.json");
    // Two --fresh runs, the second with another token limit: both earlier runs kept.
    for (n, tokens) in [(2, "4"), (3, "2")] {
        let mut cmd = set.run_tokens(demo_model(), "demo", tokens);
        cmd.arg("--fresh");
        let output = output_within(&mut cmd, Duration::from_secs(300));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        for file in ["demo.journal.jsonl", "demo.json", "demo.run.json"] {
            assert!(
                stderr.contains(&format!("{file}.~{n}~")),
                "{file}: {stderr}"
            );
        }
    }
    assert_eq!(kept("demo.json.~2~"), first, "the first run's answers");
    assert!(kept("demo.journal.jsonl.~2~").contains("\"max_new_tokens\":4"));
    assert!(kept("demo.journal.jsonl.~3~").contains("\"max_new_tokens\":4"));
    assert!(kept("demo.journal.jsonl").contains("\"max_new_tokens\":2"));
}

/// Issue 24, case 10: control characters from test.json, a results file name or a judge
/// server reached the terminal raw; an image path of ESC ] 0 ; PWNED BEL ESC [ 2 J
/// retitled and cleared it. They are shown escaped.
#[test]
fn issue24_10_control_characters_never_reach_the_terminal() {
    let hostile = "\u{1b}]0;PWNED\u{7}\u{1b}[2J";
    let mut entries = unsafes();
    entries[0]["image"] = Value::from(format!("{hostile}.png"));
    entries[1]["image"] = Value::from(format!("../{hostile}\u{9b}31m.png"));
    let set = Set::new(&entries);
    let output = output_within(&mut set.run(), Duration::from_secs(300));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let clean = |text: &str, what: &str| {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{what}: raw control characters in {text:?}"
        );
    };
    clean(&stderr, "run");
    assert!(
        stderr.contains("\\u{1b}]0;PWNED\\u{7}\\u{1b}[2J.png"),
        "{stderr}"
    );
    assert!(stderr.contains("\\u{9b}31m"), "{stderr}");
    // An engine name that only a file name can give (run refuses it as --engine).
    let answers = set.out().join("unsafes/demo.json");
    let forged = set
        .out()
        .join(format!("unsafes/=HYPERLINK(1){hostile}.json"));
    std::fs::copy(&answers, &forged).unwrap();
    for format in ["md", "csv"] {
        let board = bin()
            .arg("leaderboard")
            .arg(set.out())
            .args(["--format", format])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&board.stdout);
        clean(&stdout, format);
        clean(&String::from_utf8_lossy(&board.stderr), format);
        assert!(stdout.contains("\\u{1b}]0;PWNED"), "{format}: {stdout}");
        if format == "csv" {
            assert!(
                stdout.contains("'=HYPERLINK(1)"),
                "formula made inert: {stdout}"
            );
        }
    }
    // The score report lists the run's errors, hostile image paths among them.
    let report = bin()
        .arg("score")
        .arg(set.out().join("unsafes/demo.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&report.stdout);
    clean(&stdout, "score report");
    assert!(stdout.contains("\\u{1b}]0;PWNED"), "{stdout}");
    // A run error whose text quotes a file name (the whole message is escaped).
    let (code, stderr) = code_and_stderr(
        bin()
            .arg("score")
            .arg(set.out().join(format!("{hostile}.json"))),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(2), "{stderr}");
    clean(&stderr, "score");
    assert!(stderr.contains("\\u{1b}]0;PWNED"), "{stderr}");
}
