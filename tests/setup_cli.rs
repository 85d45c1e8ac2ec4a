//! `vlguard-ort setup` against a local stand-in of a package index's Simple API and file
//! server (tests/hub_server's static routes): project pages as PEP 691 JSON (with PEP 700
//! sizes and URLs relative to the page) or as PEP 503 HTML (sizes by HEAD), like PyPI and
//! the mirrors and private indexes pip talks to. And the installed binary that uses what it
//! put there: a download dropped mid-wheel and resumed with Range by the rerun, a rerun that
//! says "already installed" without a request, a wrong sha256 refused, a wheel for another
//! platform refused, `--gpu` taking the CUDA 13.0 runtime (not a newer 13.x) and TensorRT
//! from NVIDIA's index, an unreachable or wrong index naming its setting. Never the real
//! index.
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

/// How the stand-in's project pages answer.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// PEP 691 JSON with PEP 700 sizes; file URLs relative to the page (`../../packages/..`).
    Json,
    /// PEP 503 HTML, `#sha256=` on each link, no sizes; URLs absolute paths (`/packages/..`).
    Html,
}

/// One listed file: its name, bytes and the sha256 the page gives.
struct Listed {
    name: String,
    size: usize,
    sha256: String,
}

/// A stand-in index: project pages at `/simple/PACKAGE/` in `form`, wheels at `/packages/NAME`.
struct Index {
    form: Form,
    pages: Vec<(String, Vec<Listed>)>,
    statics: Vec<(String, Vec<u8>)>,
}

impl Index {
    fn new(form: Form) -> Index {
        Index {
            form,
            pages: Vec::new(),
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

    /// `package` with a release per `(version, wheel)`, each with a wheel for this machine,
    /// the first also with one for Windows; `listed_sha` instead of the wheel's own sha256.
    fn project(
        mut self,
        package: &str,
        releases: &[(&str, Vec<u8>)],
        listed_sha: Option<String>,
    ) -> Index {
        let mut files = Vec::new();
        for (version, wheel) in releases {
            if files.is_empty() {
                let windows = format!(
                    "{}-{version}-cp312-cp312-win_amd64.whl",
                    package.replace('-', "_")
                );
                files.push(Listed {
                    name: windows,
                    size: 1,
                    sha256: sha256_hex(b"x"),
                });
            }
            let name = Index::wheel_name(package, version);
            files.push(Listed {
                name: name.clone(),
                size: wheel.len(),
                sha256: listed_sha.clone().unwrap_or_else(|| sha256_hex(wheel)),
            });
            self.statics
                .push((format!("/packages/{name}"), wheel.clone()));
        }
        self.pages.push((package.to_string(), files));
        self
    }

    fn start(self, faults: Faults) -> HubServer {
        let mut statics = self.statics;
        let mut types = Vec::new();
        for (package, files) in &self.pages {
            let path = format!("/simple/{package}/");
            let (body, content_type) = page(self.form, package, files);
            statics.push((path.clone(), body));
            types.push((path, content_type));
        }
        let server = HubServer::start(Vec::new(), statics, faults);
        for (path, content_type) in types {
            server.set_content_type(&path, content_type);
        }
        server
    }
}

/// A project page in `form`, with its Content-Type.
fn page(form: Form, package: &str, files: &[Listed]) -> (Vec<u8>, &'static str) {
    match form {
        Form::Json => {
            let files: Vec<serde_json::Value> = files
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "filename": f.name,
                        "url": format!("../../packages/{}", f.name),
                        "hashes": { "sha256": f.sha256 },
                        "requires-python": ">=3.10",
                        "size": f.size,
                        "yanked": false
                    })
                })
                .collect();
            let json = serde_json::json!({
                "meta": { "api-version": "1.1" },
                "name": package,
                "files": files
            });
            (
                json.to_string().into_bytes(),
                "application/vnd.pypi.simple.v1+json",
            )
        }
        Form::Html => {
            let links: String = files
                .iter()
                .map(|f| {
                    format!(
                        "<a href=\"/packages/{0}#sha256={1}\" data-requires-python=\"&gt;=3.10\">{0}</a><br />\n",
                        f.name, f.sha256
                    )
                })
                .collect();
            let html = format!(
                "<!DOCTYPE html>\n<html><head><title>Links for {package}</title></head><body>\n{links}</body></html>"
            );
            (html.into_bytes(), "text/html")
        }
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
    cmd.env("VLGUARD_PYPI_URL", format!("{}/simple", server.hub_url))
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
    let older = ort_wheel(b"1.31.0: not this one");
    let server = Index::new(Form::Json)
        .project(
            "onnxruntime",
            &[("1.31.0", older), ("1.31.1", wheel.clone())],
            None,
        )
        .start(faults);
    let tmp = tempfile::tempdir().unwrap();
    let bin = installed_binary(&tmp.path().join("x"));
    let home = tmp.path().join("home");
    let user_dir = home.join(".local/share/vlguard-ort");

    // One try: the dropped connection fails it, leaving the partial wheel.
    let err = fails(setup(&bin, &server, &home, &["--attempts", "1"]).current_dir(tmp.path()));
    assert!(err.contains("rerun to resume"), "{err}");
    let asked = server.log();
    assert_eq!(asked[0].path, "/simple/onnxruntime/", "{asked:?}");
    assert!(
        asked[0]
            .accept
            .as_deref()
            .is_some_and(|a| a.starts_with("application/vnd.pypi.simple.v1+json")),
        "the page is asked for as PEP 691 JSON: {asked:?}"
    );
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
    let server = Index::new(Form::Json)
        .project("onnxruntime", &[("1.31.1", wheel)], Some("ab".repeat(32)))
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

/// Only a Windows wheel: refused naming what the index has; an index address that is not a
/// Simple API base (PyPI's old JSON API `/pypi`) and an unreachable index name the setting.
#[test]
fn no_fitting_wheel_and_no_index_say_what_to_do() {
    let windows = Listed {
        name: "onnxruntime-1.31.1-cp312-cp312-win_amd64.whl".into(),
        size: 1,
        sha256: sha256_hex(b"x"),
    };
    let (html, content_type) = page(Form::Html, "onnxruntime", &[windows]);
    let server = HubServer::start(
        Vec::new(),
        vec![("/simple/onnxruntime/".into(), html)],
        Faults::default(),
    );
    server.set_content_type("/simple/onnxruntime/", content_type);
    let tmp = tempfile::tempdir().unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vlguard-ort"));
    let err = fails(&mut setup(&bin, &server, tmp.path(), &[]));
    assert!(
        err.contains(&format!(
            "error: no manylinux {ARCH} wheel of onnxruntime==1.31.1 in the index (files: onnxruntime-1.31.1-cp312-cp312-win_amd64.whl)"
        )),
        "{err}"
    );
    let old_api = format!("{}/pypi", server.hub_url);
    let err = fails(&mut setup(
        &bin,
        &server,
        tmp.path(),
        &["--index-url", &old_api],
    ));
    assert!(
        err.contains(&format!(
            "error: {old_api}/onnxruntime/: not found (404): the index has no page for onnxruntime; \
             VLGUARD_PYPI_URL (--index-url) must be a package index's Simple API base, as pip's \
             --index-url (e.g. https://pypi.org/simple)"
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
        "http://127.0.0.1:9/simple",
    ]));
    assert!(
        err.contains("cannot reach 127.0.0.1:9")
            && err.contains("point VLGUARD_PYPI_URL (--index-url) at a reachable mirror"),
        "{err}"
    );
}

/// `--gpu`: onnxruntime-gpu and the CUDA runtime wheels (from HTML pages, sizes by HEAD) into
/// `gpu-site/nvidia/...`, the CUDA 13.0 release chosen over a newer 13.1 one; `--tensorrt`
/// with NVIDIA's index unreachable keeps them and says what to do; with the index (an HTML
/// page served without a Content-Type) it adds `gpu-site/tensorrt_libs`.
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
    let mut index = Index::new(Form::Html)
        .project("onnxruntime-gpu", &[("1.31.1", gpu_ort)], None)
        .project(
            "nvidia-cuda-runtime",
            &[
                ("13.0.96", stub("nvidia/cu13/lib/libcudart.so.13")),
                ("13.1.80", stub("nvidia/cu13/lib/libcudart.so.13.1-too-new")),
            ],
            None,
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
        index = index.project(package, &[(version, stub(file))], None);
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

    // --dry-run: what would be installed, nothing downloaded.
    let out = printed(&run_ok(
        setup(&bin, &server, tmp.path(), &["--gpu", "--dry-run", "--dir"]).arg(&dir),
    ));
    let cudart = Index::wheel_name("nvidia-cuda-runtime", "13.0.96");
    let sized_by_head = server
        .log()
        .iter()
        .any(|l| l.method == "HEAD" && l.path.ends_with(&cudart));
    assert!(
        sized_by_head,
        "the size comes from a HEAD: {:?}",
        server.log()
    );
    assert!(
        out.contains(&format!(
            "nvidia-cuda-runtime 13.0.96: would install {cudart} ("
        )) && out.contains(&format!("from {}/packages/{cudart}", server.hub_url)),
        "{out}"
    );
    assert_eq!(out.matches("would install").count(), 8, "{out}");
    assert!(
        !server
            .log()
            .iter()
            .any(|l| l.method == "GET" && l.path.starts_with("/packages/")),
        "a dry run downloads nothing"
    );
    assert!(!dir.exists(), "a dry run writes nothing");

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
