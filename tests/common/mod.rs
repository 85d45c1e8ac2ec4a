//! Shared helpers for the end-to-end tests: the built binary, the bundled demo model
//! exported once per test process, and the bundled mini test set.

#![allow(dead_code)] // each test file uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vlguard-ort"))
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the binary starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The demo model (models/demo-src) exported fp32 once into a temp folder kept for the
/// life of the test process.
pub fn demo_model() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL.get_or_init(|| export_demo("plain")).1
}

/// The same model with the `fused` decoder flavour (ONNX Runtime contrib ops).
pub fn demo_model_fused() -> &'static Path {
    static MODEL: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &MODEL.get_or_init(|| export_demo("fused")).1
}

fn export_demo(flavour: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let src = repo().join("models/demo-src");
    run_ok(
        bin()
            .args([
                "export",
                "--dtype",
                "fp32",
                "--decoder",
                flavour,
                "--checkpoint",
            ])
            .arg(src.join("llava-v1.5-tiny"))
            .arg("--vision-tower")
            .arg(src.join("clip-vit-tiny-patch14-336"))
            .arg("--out")
            .arg(&out),
    );
    (dir, out)
}

pub fn mini_meta() -> PathBuf {
    repo().join("data/mini/test.json")
}

pub fn mini_images() -> PathBuf {
    repo().join("data/mini/test")
}

/// `vlguard-ort run` on the demo model and mini test set, CPU, into `out`.
pub fn run_cmd(out: &Path, subset: &str) -> Command {
    run_cmd_with(demo_model(), out, subset)
}

/// `vlguard-ort run` of `model` on the mini test set, CPU, into `out`.
pub fn run_cmd_with(model: &Path, out: &Path, subset: &str) -> Command {
    let mut cmd = bin();
    cmd.arg("run")
        .arg("--model")
        .arg(model)
        .args(["--subset", subset, "--ep", "cpu", "--engine", "demo"])
        .arg("--meta")
        .arg(mini_meta())
        .arg("--images")
        .arg(mini_images())
        .arg("--out")
        .arg(out);
    cmd
}
