//! End-to-end: the built binary exports the bundled demo model and runs the evaluation
//! on the bundled mini test set, on the CPU, in temp folders.
//!
//! Expected files: tests/data/golden-dev/reference/{subset}.json are the answers the ORIGINAL
//! reference pipeline (VLGuard_eval.py code path, transformers 4.37.2, fp32 CPU) wrote
//! for this model and these images (copied from the golden bundle `dev`).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn golden(subset: &str) -> String {
    std::fs::read_to_string(repo().join(format!("tests/data/golden-dev/reference/{subset}.json")))
        .unwrap()
}

/// The run in `out` wrote each subset's answers byte for byte as the reference did.
fn assert_golden_files(out: &Path, what: &str) {
    for subset in ["unsafes", "safe_unsafes", "safe_safes"] {
        let ours = std::fs::read_to_string(out.join(subset).join("demo.json")).unwrap();
        assert!(
            ours == golden(subset),
            "{subset}: {what}: answers differ from the reference"
        );
    }
}

fn run_manifest(out: &Path, subset: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(subset).join("demo.run.json")).unwrap())
        .unwrap()
}

#[test]
fn all_subsets_are_byte_identical_to_the_reference() {
    let out = tempfile::tempdir().unwrap();
    let output = run_ok(run_cmd(out.path(), "all").args(["--batch-size", "1"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_golden_files(out.path(), "batch 1");
    for subset in ["unsafes", "safe_unsafes", "safe_safes"] {
        let manifest = run_manifest(out.path(), subset);
        assert_eq!(manifest["n_errors"], 0);
        assert_eq!(
            manifest["execution_providers"]["decoder"],
            "CPUExecutionProvider"
        );
    }
    assert!(stdout.contains("unsafes ASR of demo:  "), "{stdout}");
    assert!(stdout.contains("safe_unsafes ASR of demo:  "), "{stdout}");
}

#[test]
fn batch_of_four_gives_the_same_files() {
    let out = tempfile::tempdir().unwrap();
    run_ok(run_cmd(out.path(), "all").args(["--batch-size", "4"]));
    assert_golden_files(out.path(), "batch 4");
}

/// The fused decoder flavour (GroupQueryAttention, in-place cache, right padding) must
/// give the reference's bytes too: alone, in static batches whose rows finish early, and
/// with continuous batching (rows joining slots as others finish); with the vision tower
/// inline and on its own thread.
#[test]
fn fused_decoder_gives_the_same_files() {
    // The vision tower on its own thread (a GPU run's default) in two of the runs.
    for (batch, batching, vision_thread) in [
        ("1", "auto", "auto"),
        ("4", "static", "on"),
        ("3", "continuous", "on"),
    ] {
        let out = tempfile::tempdir().unwrap();
        run_ok(run_cmd_with(demo_model_fused(), out.path(), "all").args([
            "--batch-size",
            batch,
            "--batching",
            batching,
            "--vision-thread",
            vision_thread,
        ]));
        assert_golden_files(
            out.path(),
            &format!("fused decoder, batch {batch} ({batching})"),
        );
        for subset in ["unsafes", "safe_unsafes", "safe_safes"] {
            let manifest = run_manifest(out.path(), subset);
            let expected = if batching == "continuous" {
                "continuous"
            } else {
                "static"
            };
            assert_eq!(manifest["batching"], expected);
        }
    }
}

/// The GPU's scheduling on the CPU (`--keep-finished-rows`: finished rows ride along, free
/// slots step a throwaway position, no compaction, prompts joining busy slots copied in
/// through the device-copy seam on host memory): still the reference's bytes, with the
/// plain decoder's growing cache and the fused decoder's slots.
#[test]
fn device_style_scheduling_gives_the_same_files() {
    for (model, batching) in [(demo_model(), "static"), (demo_model_fused(), "continuous")] {
        let out = tempfile::tempdir().unwrap();
        run_ok(run_cmd_with(model, out.path(), "all").args([
            "--batch-size",
            "4",
            "--batching",
            batching,
            "--keep-finished-rows",
        ]));
        assert_golden_files(out.path(), &format!("{batching} batches with riders"));
    }
}

/// Issue 28: a model folder exported before graph tensors were named by role (format
/// version 1, tests/data/manifest-v1: the manifest that version wrote for the demo model,
/// whose graph files a current export reproduces byte for byte) loads, its ordered lists
/// read by role, and gives the reference's bytes with either decoder flavour.
#[test]
fn a_version_1_model_folder_runs_to_the_reference_answers() {
    for (model, flavour) in [(demo_model(), "plain"), (demo_model_fused(), "fused")] {
        let folder = tempfile::tempdir().unwrap();
        copy_dir(model, folder.path());
        let v1 = repo().join(format!("tests/data/manifest-v1/demo-fp32-{flavour}.json"));
        std::fs::copy(v1, folder.path().join("manifest.json")).unwrap();
        let out = tempfile::tempdir().unwrap();
        run_ok(run_cmd_with(folder.path(), out.path(), "all").args(["--batch-size", "4"]));
        assert_golden_files(
            out.path(),
            &format!("version 1 manifest, {flavour} decoder"),
        );
    }
}

#[test]
fn continuous_batching_needs_the_fused_decoder() {
    let out = tempfile::tempdir().unwrap();
    let output = run_cmd(out.path(), "unsafes")
        .args(["--batch-size", "2", "--batching", "continuous"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--decoder fused"), "{stderr}");
}

#[test]
fn killed_run_resumes_without_regenerating() {
    kill_and_resume(demo_model(), &[]);
}

/// The same under continuous batching: answers are journaled as rows end, mid-batch.
#[test]
fn killed_continuous_run_resumes_without_regenerating() {
    kill_and_resume(
        demo_model_fused(),
        &["--batch-size", "3", "--batching", "continuous"],
    );
}

/// Kills a safe_safes run of `model` (with `args`) once three answers are journaled,
/// reruns it, and checks nothing journaled was regenerated and the file is the reference's.
fn kill_and_resume(model: &std::path::Path, args: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let journal = out.path().join("safe_safes/demo.journal.jsonl");
    let log = out.path().join("first-run.log");
    let mut child = run_cmd_with(model, out.path(), "safe_safes")
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Kill -9 once a few samples are journaled (header + 3 lines).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let lines = std::fs::read_to_string(&journal)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 4 || std::time::Instant::now() > deadline {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let first_log = std::fs::read_to_string(&log).unwrap_or_default();
    let before: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap_or_else(|e| {
            panic!("no journal after the first run ({e}); its stderr:\n{first_log}")
        })
        .lines()
        .skip(1)
        .filter(|l| l.ends_with('}'))
        .map(String::from)
        .collect();
    assert!(
        !before.is_empty(),
        "the journal should hold finished samples before the kill"
    );
    assert!(
        before.len() < 10,
        "the first run finished before it could be killed: nothing was tested"
    );
    // A kill in the middle of a line, made certain: the rerun leaves it out and says so.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .and_then(|mut f| std::io::Write::write_all(&mut f, br#"{"image":"torn","ans"#))
        .unwrap();

    let output = run_ok(run_cmd_with(model, out.path(), "safe_safes").args(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("safe_safes: left out a torn last line of ")
            && stderr.contains("a write cut short, its sample runs again)"),
        "{stderr}"
    );
    let manifest: serde_json::Value = run_manifest(out.path(), "safe_safes");
    let resumed = manifest["n_resumed"].as_u64().unwrap() as usize;
    let generated = manifest["n_generated"].as_u64().unwrap() as usize;
    assert!(
        resumed >= before.len().min(10),
        "resumed {resumed}, journal had {}: {stderr}",
        before.len()
    );
    assert_eq!(resumed + generated, 10);
    // Earlier lines are untouched: the rerun only appended.
    let after = std::fs::read_to_string(&journal).unwrap();
    for line in &before {
        assert!(after.contains(line.as_str()));
    }
    let ours = std::fs::read_to_string(out.path().join("safe_safes/demo.json")).unwrap();
    assert!(
        ours == golden("safe_safes"),
        "resumed answers differ from an uninterrupted run"
    );

    // A rerun with nothing left generates nothing.
    run_ok(run_cmd_with(model, out.path(), "safe_safes").args(args));
    let manifest: serde_json::Value = run_manifest(out.path(), "safe_safes");
    assert_eq!(manifest["n_generated"], 0);
    assert_eq!(manifest["n_resumed"], 10);
}

#[test]
fn a_bad_image_is_recorded_and_the_rest_completes() {
    let out = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    copy_dir(&mini_images(), images.path());
    // One truncated JPEG, one missing file.
    let victim = images.path().join("harm-p/astronaut_q90_18.jpg");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::remove_file(images.path().join("hatefulMemes/rocket_orig_19.jpg")).unwrap();
    let output = bin()
        .arg("run")
        .arg("--model")
        .arg(demo_model())
        .args([
            "--subset",
            "unsafes",
            "--ep",
            "cpu",
            "--engine",
            "demo",
            "--max-new-tokens",
            "8",
        ])
        .arg("--meta")
        .arg(mini_meta())
        .arg("--images")
        .arg(images.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a failed sample must make the exit code 1"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rocket_orig_19.jpg"), "{stderr}");
    let answers: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("unsafes/demo.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(answers.len(), 8, "the 8 good samples are answered");
    let manifest: serde_json::Value = run_manifest(out.path(), "unsafes");
    assert_eq!(manifest["n_errors"], 2);
    let errors = manifest["errors"].to_string();
    assert!(
        errors.contains("astronaut_q90_18.jpg") && errors.contains("rocket_orig_19.jpg"),
        "{errors}"
    );
}

#[test]
fn a_missing_model_or_dataset_is_a_clear_error() {
    let out = tempfile::tempdir().unwrap();
    let output = bin()
        .args(["run", "--subset", "unsafes", "--model"])
        .arg(out.path().join("nope"))
        .arg("--images")
        .arg(mini_images())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nope") && stderr.contains("manifest.json"),
        "{stderr}"
    );

    let output = bin()
        .arg("run")
        .arg("--model")
        .arg(demo_model())
        .args(["--subset", "unsafes", "--ep", "cpu"])
        .arg("--meta")
        .arg(out.path().join("missing.json"))
        .arg("--images")
        .arg(mini_images())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.json"), "{stderr}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_provider_asked_for_by_name_never_falls_back_silently() {
    let out = tempfile::tempdir().unwrap();
    let output = bin()
        .arg("run")
        .arg("--model")
        .arg(demo_model())
        .args(["--subset", "unsafes", "--ep", "cuda", "--engine", "demo"])
        .args(["--limit", "1", "--max-new-tokens", "2"])
        .arg("--meta")
        .arg(mini_meta())
        .arg("--images")
        .arg(mini_images())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        // A GPU build of ONNX Runtime on a GPU machine: CUDA must then be what ran.
        let manifest = std::fs::read_to_string(out.path().join("unsafes/demo.run.json")).unwrap();
        assert!(
            manifest.contains("\"decoder\": \"CUDAExecutionProvider\""),
            "{manifest}"
        );
    } else {
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("CUDAExecutionProvider was requested"),
            "{stderr}"
        );
        assert!(
            !out.path().join("unsafes/demo.json").exists(),
            "nothing may run on the CPU instead"
        );
    }
}

/// `score` on a run's answers needs neither --meta nor --subset: the run manifest beside
/// the answers says which dataset and subset they are (the demo's test set is not the
/// default data/VLGuard/test.json).
#[test]
fn score_takes_the_dataset_and_subset_from_the_run_manifest() {
    let out = tempfile::tempdir().unwrap();
    let run = run_ok(run_cmd(out.path(), "unsafes").args(["--max-new-tokens", "8"]));
    let asr_line = String::from_utf8_lossy(&run.stdout)
        .lines()
        .find(|l| l.starts_with("unsafes ASR of demo:"))
        .expect("the run prints the ASR line")
        .to_string();
    let score = run_ok(bin().arg("score").arg(out.path().join("unsafes/demo.json")));
    let text = String::from_utf8_lossy(&score.stdout);
    // Scored against the mini test set's unsafes (the default test.json would refuse
    // these keys): the same line as the run's.
    assert!(text.contains(&asr_line), "{text}");
}
