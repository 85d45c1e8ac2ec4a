//! `vlguard-ort doctor` and the library search as a user meets them: the report on this
//! machine (binary version, the library and where it came from, its providers, the GPU
//! libraries found or missing), a copy of the binary with no library anywhere (every place
//! listed, the fix named, exit 1), a library of the wrong version named and skipped, and
//! `run` refusing it with the same list.

mod common;

use std::path::PathBuf;

use common::*;

fn built() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort"))
}

/// From the checkout: the checkout's library, its version and providers, and a CUDA
/// runtime folder's file reported where the run would take it from.
#[test]
fn doctor_reports_the_library_and_the_gpu_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = ort_library().expect("ONNX Runtime for the tests");
    let cuda = tmp.path().join("cuda");
    std::fs::create_dir_all(&cuda).unwrap();
    std::fs::write(cuda.join("libcudart.so.13"), b"placeholder").unwrap();
    let out = run_ok(
        isolated(&built(), tmp.path())
            .current_dir(repo())
            .env("VLGUARD_ORT_LIB", lib)
            .env("VLGUARD_CUDA_LIB_DIR", &cuda)
            .arg("doctor"),
    );
    let report = printed(&out);
    let first = format!(
        "vlguard-ort {} (ort 2.0.0-rc.15, needs ONNX Runtime 1.31.x)\n",
        env!("CARGO_PKG_VERSION")
    );
    assert!(report.starts_with(&first), "{report}");
    assert!(
        report.contains(&format!(
            "  - --ort-lib / VLGUARD_ORT_LIB: {}: ONNX Runtime 1.31.1\n",
            lib.display()
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "ONNX Runtime 1.31.1: {} (--ort-lib / VLGUARD_ORT_LIB)\n",
            lib.display()
        )),
        "{report}"
    );
    let providers = report
        .lines()
        .find_map(|l| l.strip_prefix("execution providers: "))
        .expect("a providers line");
    assert!(
        providers.split(", ").any(|p| p == "CPUExecutionProvider"),
        "{report}"
    );
    let cudart = cuda.join("libcudart.so.13");
    assert!(
        report.contains(&format!(
            "  - libcudart.so.13: {}: found but cannot be loaded",
            cudart.display()
        )),
        "{report}"
    );
    assert!(report.contains("  - libnvinfer.so.10: missing"), "{report}");
}

/// A copy of the binary outside the checkout, nothing installed: every place is listed,
/// with the per-user folder and the folder beside the binary, and the fix.
#[test]
fn nothing_installed_lists_every_place_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("x/bin/vlguard-ort");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(built(), &bin).unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = isolated(&bin, tmp.path())
        .current_dir(&work)
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    let report = printed(&out);
    for (label, path) in [
        ("checkout (.ort/lib)", work.join(".ort/lib")),
        (
            "per-user folder",
            tmp.path().join(".local/share/vlguard-ort/lib"),
        ),
        (
            "beside the binary",
            tmp.path().join("x/lib/vlguard-ort/lib"),
        ),
        ("system-wide folder", PathBuf::from("/opt/vlguard-ort/lib")),
    ] {
        let line = format!("  - {label}: {}: no library\n", path.display());
        assert!(report.contains(&line), "no {line:?} in:\n{report}");
    }
    assert!(
        report.contains("ONNX Runtime: not found. To fix: run `vlguard-ort setup`"),
        "{report}"
    );
}

/// A library of another version is named with its path and skipped; `run` refuses to
/// start with the same list and the fix.
#[test]
fn a_wrong_version_is_named_not_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("libonnxruntime.so.1.20.0");
    std::fs::write(&old, b"an older ONNX Runtime").unwrap();
    let line = format!(
        "ORT_DYLIB_PATH: {}: ONNX Runtime 1.20.0, this binary needs 1.31.x: skipped",
        old.display()
    );
    let out = isolated(&built(), tmp.path())
        .env("ORT_DYLIB_PATH", &old)
        .arg("doctor")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", printed(&out));
    assert!(printed(&out).contains(&line), "{}", printed(&out));

    let out = isolated(&built(), tmp.path())
        .current_dir(tmp.path())
        .env("ORT_DYLIB_PATH", &old)
        .arg("run")
        .arg("--model")
        .arg(demo_model())
        .args(["--subset", "unsafes", "--ep", "cpu", "--out", "results"])
        .arg("--meta")
        .arg(mini_meta())
        .arg("--images")
        .arg(mini_images())
        .output()
        .unwrap();
    let said = printed(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("error: ONNX Runtime 1.31.x not found; looked at:\n") && said.contains(&line),
        "{said}"
    );
    assert!(said.contains("To fix: run `vlguard-ort setup`"), "{said}");
}
