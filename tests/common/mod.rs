//! Shared helpers for the end-to-end tests: the built binary, the bundled demo model
//! exported once per test process, and the bundled mini test set.

#![allow(dead_code)] // each test file uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built binary, told which ONNX Runtime library to load: the one this test process
/// finds (tests run in the checkout, so its `.ort/lib` is among the places searched). The
/// binary itself may sit in a `CARGO_TARGET_DIR` outside the checkout and run in a temp
/// folder, where its own search would not reach the checkout (issue 26: tests/prepare.rs
/// failed that way). The search itself is tested by doctor_cli.rs and setup_cli.rs, which
/// start the binary without this.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vlguard-ort"));
    if let Some(lib) = ort_library() {
        cmd.env("VLGUARD_ORT_LIB", lib);
    }
    cmd
}

/// The ONNX Runtime library the tests use (`VLGUARD_ORT_LIB` when set, else the search's
/// choice), when there is one; without it, the binary says what is missing.
pub fn ort_library() -> Option<&'static Path> {
    static LIB: OnceLock<Option<PathBuf>> = OnceLock::new();
    LIB.get_or_init(|| {
        let explicit = std::env::var_os("VLGUARD_ORT_LIB").map(PathBuf::from);
        vlguard_ort::engine::ort_lib::locate(explicit.as_deref()).ok()
    })
    .as_deref()
}

/// The binary at `bin` as a user who installed it would start it: no variable that points
/// at a library, HOME in `home` (so the per-user folder is the test's), and a PATH without
/// a Python (so no pip-installed ONNX Runtime is found by accident).
pub fn isolated(bin: &Path, home: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for var in [
        "VLGUARD_ORT_LIB",
        "ORT_DYLIB_PATH",
        "LD_LIBRARY_PATH",
        "XDG_DATA_HOME",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "VLGUARD_CUDA_LIB_DIR",
        "VLGUARD_CUDNN_LIB_DIR",
        "VLGUARD_TRT_LIB_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home).env("PATH", home.join("no-bin"));
    cmd
}

/// Everything a command printed, stdout then stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
