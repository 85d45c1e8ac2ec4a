//! scripts/slurm/ without a cluster: submit.sh, the array and merge job scripts and
//! `submit.sh --resume` against the stand-in Slurm of tests/fixtures/fake-slurm (it runs
//! each job at once, in order, leaves a job whose afterok cannot be met pending, as Slurm
//! does, and requeues a task). The same recovery check runs on a real single-node Slurm in
//! scripts/slurm/selftest.sh: opt-in (`VLGUARD_SLURM_SELFTEST=1`, root), since it installs
//! Slurm and starts system daemons.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{demo_model, repo, run_ok};

fn bin_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort"))
}

/// A command with the stand-in Slurm first on PATH, its state in `state`.
fn with_fake_slurm(program: &Path, state: &Path) -> Command {
    let fake = repo().join("tests/fixtures/fake-slurm");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(program);
    cmd.env("PATH", path)
        .env("FAKE_SLURM_STATE", state)
        .env("VLGUARD_BIN", bin_path())
        .env_remove("VLGUARD_SBATCH_FLAGS");
    cmd
}

#[test]
fn the_readme_example_fails_a_task_and_resume_finishes_it() {
    let state = tempfile::tempdir().unwrap();
    let out = run_ok(
        with_fake_slurm(
            &repo().join("scripts/slurm/recovery_check.sh"),
            state.path(),
        )
        .arg(demo_model()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok: ")).count(), 9);
}

#[test]
fn submit_takes_equals_forms_and_paths_with_spaces_and_refuses_what_it_sets() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path().join("a folder");
    std::fs::create_dir(&cwd).unwrap();
    let submit = repo().join("scripts/slurm/submit.sh");
    let submit_cmd = || {
        let mut cmd = with_fake_slurm(&submit, state.path());
        cmd.current_dir(&cwd);
        cmd
    };
    let mut cmd = submit_cmd();
    cmd.arg("2")
        .arg(demo_model())
        .args([
            "--ep",
            "cpu",
            "--limit",
            "3",
            "--out=my results",
            "--subset=unsafes",
        ])
        .arg(format!("--meta={}", common::mini_meta().display()))
        .arg("--images")
        .arg(common::mini_images());
    let out = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shards: job array 1000 (2 tasks"), "{text}");
    // Every run flag reached `run` once (no --subset added), and the merge got --out as
    // one argument with its space.
    let merge_args = std::fs::read_to_string(state.path().join("1001.args")).unwrap();
    assert!(
        merge_args.contains("\n--dependency=afterok:1000\n"),
        "{merge_args}"
    );
    assert!(
        merge_args.contains("\nmerge\n--engine\ndemo\n--limit\n3\n--out=my results\n"),
        "{merge_args}"
    );
    let array_args = std::fs::read_to_string(state.path().join("1000.args")).unwrap();
    assert_eq!(array_args.matches("--subset").count(), 1, "{array_args}");
    let merged = cwd.join("my results/unsafes");
    for shard in ["demo.shard-1-of-2", "demo.shard-2-of-2", "demo"] {
        assert!(
            merged.join(format!("{shard}.run.json")).is_file(),
            "{shard}"
        );
    }
    let log = std::fs::read_to_string(cwd.join("vlguard-1000_1.out")).unwrap();
    assert!(
        log.starts_with("== vlguard-array.sbatch: shard 2/2, job 1000_1, attempt 1"),
        "{log}"
    );

    // --resume waits while a task of the run is still queued.
    std::fs::write(state.path().join("pending"), "1000 vlguard-eval\n").unwrap();
    let out = submit_cmd().args(["--resume", "1000"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("job(s) 1000 of this run still have tasks queued or running"),
        "{err}"
    );
    // With every shard complete it submits the merge alone.
    std::fs::remove_file(state.path().join("pending")).unwrap();
    let out = run_ok(submit_cmd().args(["--resume", "1000"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pending: none") && text.contains("every shard is complete"),
        "{text}"
    );

    for (flag, word) in [
        ("--shard", "--shard"),
        ("--model=x", "--model"),
        ("--out", "--out"),
    ] {
        let out = submit_cmd()
            .arg("2")
            .arg(demo_model())
            .arg(flag)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(word), "{flag}: {err}");
    }
}

/// The recovery check on a real single-node Slurm (Debian's slurm-wlm), opt-in.
#[test]
fn the_recovery_check_on_a_real_slurm() {
    if std::env::var("VLGUARD_SLURM_SELFTEST").as_deref() != Ok("1") {
        println!(
            "skipped: set VLGUARD_SLURM_SELFTEST=1 (as root) to run scripts/slurm/selftest.sh, \
             which installs Slurm and starts its daemons on this machine"
        );
        return;
    }
    let out = run_ok(
        Command::new(repo().join("scripts/slurm/selftest.sh")).env("VLGUARD_BIN", bin_path()),
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
