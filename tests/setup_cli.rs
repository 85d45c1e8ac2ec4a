//! `vlguard-ort setup` against a local stand-in of PyPI's JSON API and file server
//! (tests/hub_server's static routes), and the installed binary that uses what it put
//! there: a download dropped mid-wheel and resumed with Range by the rerun, a rerun that
//! says "already installed" without a request, a wrong sha256 refused, a wheel for another
//! platform refused, `--gpu` taking the CUDA 13.0 runtime (not a newer 13.x) and TensorRT
//! from a PEP 503 simple page, an unreachable index naming its setting. Never the real index.
//!
//! The ONNX Runtime wheel served is made here: a zip holding the library the tests already
//! use (found as the binary finds it) as `onnxruntime/capi/libonnxruntime.so.1.31.1`, so
//! the copy of the binary outside the checkout then answers the demo model's unsafes with
//! the reference's bytes (tests/data/golden-dev/reference/unsafes.json). The GPU wheels hold
//! placeholder bytes under the real file names: no GPU library is loaded here.

mod common;
mod hub_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use hub_server::{sha256_hex, Faults, HubServer};
use zip::write::SimpleFileOptions;

const ARCH: &str = std::env::consts::ARCH;

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in entries {
        w.start_file(*name, opts).expect("start entry");
        w.write_all(bytes).expect("write entry");
    }
    w.finish().expect("finish zip").into_inner()
}

/// The ONNX Runtime library the tests use.
fn real_library() -> &'static Path {
    ort_library().expect("ONNX Runtime for the tests (run scripts/setup.sh)")
}

/// One file entry of PyPI's JSON API, its URL relative to the JSON page.
fn file_entry(name: &str, bytes: &[u8], sha256: &str) -> serde_json::Value {
    serde_json::json!({
        "filename": name,
        "url": format!("/packages/{name}"),
        "digests": { "sha256": sha256 },
        "size": bytes.len(),
        "packagetype": "bdist_wheel",
        "yanked": false
    })
}

/// Static routes for `package` at `version`: its version JSON (`exact`) or project JSON
/// listing `versions`, and each wheel.
struct Index {
    statics: Vec<(String, Vec<u8>)>,
}

impl Index {
    fn new() -> Index {
        Index {
            statics: Vec::new(),
        }
    }

    fn wheel_name(package: &str, version: &str) -> String {
        let tag = if package.starts_with("onnxruntime") {
            "cp312-cp312"
        } else {
            "py3-none"
        };
        format!(
            "{}-{version}-{tag}-manylinux_2_27_{ARCH}.manylinux_2_28_{ARCH}.whl",
            package.replace('-', "_")
        )
    }

    /// `/pypi/PACKAGE/VERSION/json` with one wheel for this machine and one for Windows.
    fn exact(
        mut self,
        package: &str,
        version: &str,
        wheel: Vec<u8>,
        listed_sha: Option<String>,
    ) -> Index {
        let name = Index::wheel_name(package, version);
        let sha = listed_sha.unwrap_or_else(|| sha256_hex(&wheel));
        let windows = format!(
            "{}-{version}-cp312-cp312-win_amd64.whl",
            package.replace('-', "_")
        );
        let json = serde_json::json!({
            "info": { "name": package, "version": version },
            "urls": [file_entry(&windows, b"x", &sha256_hex(b"x")), file_entry(&name, &wheel, &sha)]
        });
        self.statics.push((
            format!("/pypi/{package}/{version}/json"),
            json.to_string().into_bytes(),
        ));
        self.statics.push((format!("/packages/{name}"), wheel));
        self
    }

    /// `/pypi/PACKAGE/json` with a release per `(version, wheel)`.
    fn series(mut self, package: &str, releases: &[(&str, Vec<u8>)]) -> Index {
        let mut listed = serde_json::Map::new();
        for (version, wheel) in releases {
            let name = Index::wheel_name(package, version);
            listed.insert(
                version.to_string(),
                serde_json::json!([file_entry(&name, wheel, &sha256_hex(wheel))]),
            );
            self.statics
                .push((format!("/packages/{name}"), wheel.clone()));
        }
        let json =
            serde_json::json!({ "info": { "name": package }, "urls": [], "releases": listed });
        self.statics.push((
            format!("/pypi/{package}/json"),
            json.to_string().into_bytes(),
        ));
        self
    }

    fn start(self, faults: Faults) -> HubServer {
        HubServer::start(Vec::new(), self.statics, faults)
    }
}

fn ort_wheel(lib: &[u8]) -> Vec<u8> {
    zip_of(&[
        ("onnxruntime/__init__.py", b""),
        ("onnxruntime/capi/libonnxruntime.so.1.31.1", lib),
        (
            "onnxruntime/capi/libonnxruntime_providers_shared.so",
            b"providers",
        ),
        ("onnxruntime-1.31.1.dist-info/RECORD", b""),
    ])
}

/// `vlguard-ort setup ARGS` against `server`, with a clean environment under `home`.
fn setup(bin: &Path, server: &HubServer, home: &Path, args: &[&str]) -> Command {
    let mut cmd = isolated(bin, home);
    cmd.env("VLGUARD_PYPI_URL", format!("{}/pypi", server.hub_url))
        .args(["setup", "--quiet"])
        .args(args);
    cmd
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the binary starts");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{cmd:?} should fail:\n{}",
        printed(&out)
    );
    printed(&out)
}

/// A copy of the built binary in `DIR/bin`, outside the checkout.
fn installed_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("bin/vlguard-ort");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_vlguard-ort"), &bin).unwrap();
    bin
}

/// The proof of issue 26: a copy of the binary outside the checkout installs ONNX Runtime
/// into the per-user folder with its own `setup` (a dropped download resumed by the rerun,
/// a third run a no-op), then from a third folder with no library variable finds it
/// (`doctor`) and answers the demo model's unsafes like the reference.
#[test]
fn an_installed_binary_sets_up_and_runs_from_anywhere() {
    let lib = std::fs::read(real_library()).unwrap();
    let wheel = ort_wheel(&lib);
    let wheel_path = format!("/packages/{}", Index::wheel_name("onnxruntime", "1.31.1"));
    let faults = Faults {
        drop_after: [(wheel_path.clone(), 1 << 20)].into(),
        ..Faults::default()
    };
    let server = Index::new()
        .exact("onnxruntime", "1.31.1", wheel.clone(), None)
        .start(faults);
    let tmp = tempfile::tempdir().unwrap();
    let bin = installed_binary(&tmp.path().join("x"));
    let home = tmp.path().join("home");
    let user_dir = home.join(".local/share/vlguard-ort");

    // One try: the dropped connection fails it, leaving the partial wheel.
    let err = fails(setup(&bin, &server, &home, &["--attempts", "1"]).current_dir(tmp.path()));
    assert!(err.contains("rerun to resume"), "{err}");
    let wheel_name = Index::wheel_name("onnxruntime", "1.31.1");
    let partial = user_dir.join(format!("wheels/{wheel_name}.incomplete"));
    assert_eq!(
        std::fs::metadata(&partial).map(|m| m.len()).ok(),
        Some(1 << 20)
    );

    server.clear_log();
    let out = run_ok(setup(&bin, &server, &home, &[]).current_dir(tmp.path()));
    let ranges: Vec<Option<String>> = server
        .log()
        .iter()
        .filter(|l| l.path == wheel_path)
        .map(|l| l.range.clone())
        .collect();
    assert_eq!(
        ranges,
        [Some(format!("bytes={}-", 1 << 20))],
        "the rerun resumes the partial wheel"
    );
    let installed = user_dir.join("lib/libonnxruntime.so.1.31.1");
    assert!(
        std::fs::read(&installed).unwrap() == lib,
        "the library is the wheel's"
    );
    assert!(
        !user_dir.join("wheels").join(&wheel_name).exists(),
        "the wheel is deleted"
    );
    let said = printed(&out);
    assert!(
        said.contains(&format!(
            "ready: ONNX Runtime 1.31.1 at {}",
            installed.display()
        )),
        "{said}"
    );

    server.clear_log();
    let again = printed(&run_ok(
        setup(&bin, &server, &home, &[]).current_dir(tmp.path()),
    ));
    assert!(
        again.contains(&format!(
            "onnxruntime 1.31.1: already installed in {}",
            user_dir.display()
        )),
        "{again}"
    );
    assert!(server.log().is_empty(), "a rerun asks the index nothing");

    // A third folder, no library variable: doctor names the per-user library.
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut doctor = isolated(&bin, &home);
    let report = printed(&run_ok(doctor.current_dir(&work).arg("doctor")));
    assert!(
        report.contains(&format!(
            "ONNX Runtime 1.31.1: {} (per-user folder)",
            installed.display()
        )),
        "{report}"
    );
    assert!(report.contains("CPUExecutionProvider"), "{report}");

    let mut run = isolated(&bin, &home);
    run_ok(
        run.current_dir(&work)
            .arg("run")
            .arg("--model")
            .arg(demo_model())
            .args([
                "--subset", "unsafes", "--ep", "cpu", "--engine", "demo", "--out", "results",
            ])
            .arg("--meta")
            .arg(mini_meta())
            .arg("--images")
            .arg(mini_images()),
    );
    let got = std::fs::read_to_string(work.join("results/unsafes/demo.json")).unwrap();
    let want = std::fs::read_to_string(repo().join("tests/data/golden-dev/reference/unsafes.json"))
        .unwrap();
    assert!(got == want, "answers differ from the reference");
}

/// A wheel whose bytes do not match the sha256 the index lists is deleted and refused;
/// nothing is installed.
#[test]
fn a_wrong_digest_is_refused() {
    let wheel = ort_wheel(b"not the library");
    let server = Index::new()
        .exact("onnxruntime", "1.31.1", wheel, Some("ab".repeat(32)))
        .start(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ort");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort"));
    let err = fails(setup(&bin, &server, tmp.path(), &["--attempts", "1", "--dir"]).arg(&dir));
    assert!(
        err.contains("sha256 is ")
            && err.contains(&format!(
                "the server says {}; the download was deleted",
                "ab".repeat(32)
            )),
        "{err}"
    );
    assert!(!dir.join("lib").exists() && !dir.join("installed.json").exists());
}

/// Only a Windows wheel: refused naming what the index has; an unreachable index names the
/// setting that points at it.
#[test]
fn no_fitting_wheel_and_no_index_say_what_to_do() {
    let json = serde_json::json!({
        "urls": [file_entry("onnxruntime-1.31.1-cp312-cp312-win_amd64.whl", b"x", &sha256_hex(b"x"))]
    });
    let server = HubServer::start(
        Vec::new(),
        vec![(
            "/pypi/onnxruntime/1.31.1/json".into(),
            json.to_string().into_bytes(),
        )],
        Faults::default(),
    );
    let tmp = tempfile::tempdir().unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort"));
    let err = fails(&mut setup(&bin, &server, tmp.path(), &[]));
    assert!(
        err.contains(&format!(
            "error: no manylinux {ARCH} wheel of onnxruntime==1.31.1 in the index (files: onnxruntime-1.31.1-cp312-cp312-win_amd64.whl)"
        )),
        "{err}"
    );
    let mut cmd = isolated(&bin, tmp.path());
    let err = fails(cmd.args([
        "setup",
        "--quiet",
        "--attempts",
        "1",
        "--index-url",
        "http://127.0.0.1:9/pypi",
    ]));
    assert!(
        err.contains("cannot reach 127.0.0.1:9")
            && err.contains("point VLGUARD_PYPI_URL (--index-url) at a reachable mirror"),
        "{err}"
    );
}

/// `--gpu`: onnxruntime-gpu and the CUDA runtime wheels into `gpu-site/nvidia/...`, the
/// CUDA 13.0 release chosen over a newer 13.1 one; `--tensorrt` with NVIDIA's index
/// unreachable keeps them and says what to do; with the index (a simple page) it adds
/// `gpu-site/tensorrt_libs`.
#[test]
fn gpu_wheels_land_where_the_run_looks() {
    let stub = |path: &str| zip_of(&[(path, b"placeholder"), ("nvidia/__init__.py", b"")]);
    let gpu_ort = zip_of(&[
        ("onnxruntime/capi/libonnxruntime.so.1.31.1", b"placeholder"),
        (
            "onnxruntime/capi/libonnxruntime_providers_cuda.so",
            b"placeholder",
        ),
    ]);
    let mut index = Index::new()
        .exact("onnxruntime-gpu", "1.31.1", gpu_ort, None)
        .series(
            "nvidia-cuda-runtime",
            &[
                ("13.0.96", stub("nvidia/cu13/lib/libcudart.so.13")),
                ("13.1.80", stub("nvidia/cu13/lib/libcudart.so.13.1-too-new")),
            ],
        );
    for (package, version, file) in [
        (
            "nvidia-cublas",
            "13.0.2.14",
            "nvidia/cu13/lib/libcublas.so.13",
        ),
        (
            "nvidia-cuda-nvrtc",
            "13.0.88",
            "nvidia/cu13/lib/libnvrtc.so.13",
        ),
        (
            "nvidia-curand",
            "10.4.0.35",
            "nvidia/cu13/lib/libcurand.so.10",
        ),
        (
            "nvidia-cufft",
            "12.0.0.61",
            "nvidia/cu13/lib/libcufft.so.12",
        ),
        (
            "nvidia-nvjitlink",
            "13.0.88",
            "nvidia/cu13/lib/libnvJitLink.so.13",
        ),
        (
            "nvidia-cudnn-cu13",
            "9.13.0.50",
            "nvidia/cudnn/lib/libcudnn.so.9",
        ),
    ] {
        index = index.series(package, &[(version, stub(file))]);
    }
    let trt_wheel = zip_of(&[("tensorrt_libs/libnvinfer.so.10", b"placeholder")]);
    let trt_name = format!("tensorrt_cu13_libs-10.13.3.9-py2.py3-none-manylinux_2_28_{ARCH}.whl");
    let page = format!(
        "<a href=\"/nvidia/files/{trt_name}#sha256={}\">{trt_name}</a>",
        sha256_hex(&trt_wheel)
    );
    index
        .statics
        .push(("/nvidia/tensorrt-cu13-libs/".into(), page.into_bytes()));
    index
        .statics
        .push((format!("/nvidia/files/{trt_name}"), trt_wheel));
    let server = index.start(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ort");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort"));

    let err = fails(
        setup(
            &bin,
            &server,
            tmp.path(),
            &[
                "--gpu",
                "--tensorrt",
                "--attempts",
                "1",
                "--nvidia-index-url",
                "http://127.0.0.1:9",
            ],
        )
        .arg("--dir")
        .arg(&dir),
    );
    assert!(
        err.contains("error: TensorRT 10 was not installed: cannot reach 127.0.0.1:9"),
        "{err}"
    );
    assert!(
        err.contains("--ep cuda works") && err.contains("--trt-lib-dir DIR"),
        "{err}"
    );
    for file in [
        "lib/libonnxruntime.so.1.31.1",
        "lib/libonnxruntime_providers_cuda.so",
        "gpu-site/nvidia/cu13/lib/libcudart.so.13",
        "gpu-site/nvidia/cu13/lib/libcublas.so.13",
        "gpu-site/nvidia/cudnn/lib/libcudnn.so.9",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing after setup --gpu");
    }
    assert!(
        !dir.join("gpu-site/nvidia/cu13/lib/libcudart.so.13.1-too-new")
            .exists(),
        "CUDA 13.1 taken"
    );

    server.clear_log();
    let nvidia = format!("{}/nvidia", server.hub_url);
    let out = run_ok(
        setup(
            &bin,
            &server,
            tmp.path(),
            &["--gpu", "--tensorrt", "--nvidia-index-url", &nvidia],
        )
        .arg("--dir")
        .arg(&dir),
    );
    assert!(
        dir.join("gpu-site/tensorrt_libs/libnvinfer.so.10")
            .is_file(),
        "{}",
        printed(&out)
    );
    let asked: Vec<String> = server.log().iter().map(|l| l.path.clone()).collect();
    assert!(
        asked.iter().all(|p| p.starts_with("/nvidia/")),
        "only TensorRT was fetched again: {asked:?}"
    );
}
