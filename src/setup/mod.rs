//! `vlguard-ort setup [--gpu] [--tensorrt] [--dir DIR]`: puts the ONNX Runtime library (and
//! for a GPU the CUDA 13.0 / cuDNN 9 runtime, and TensorRT 10) where the binary finds it,
//! from an installed binary with no checkout and no Python.
//!
//! Wheels come from PyPI's JSON API (`--index-url` / `VLGUARD_PYPI_URL`, default
//! https://pypi.org/pypi), which lists each file's URL, size and sha256; TensorRT from
//! NVIDIA's own index (`--nvidia-index-url` / `VLGUARD_NVIDIA_INDEX_URL`, a PEP 503 simple
//! page), the only place its libraries are published. Downloads resume and are verified
//! ([`install`]). The folder (default: the per-user folder,
//! `$XDG_DATA_HOME/vlguard-ort` or `~/.local/share/vlguard-ort`) gets `lib/` and `gpu-site/`,
//! the layout the library search reads ([`crate::engine::ort_lib::places`]), and
//! `installed.json` ([`record`]), so a rerun installs nothing that is already there and
//! does not contact the index. The CUDA wheels are pinned to CUDA 13.0, the runtime the
//! H100 driver 580 supports (a `~=13.0` spec would take 13.x runtimes newer than the
//! driver), the same pins as `scripts/setup_gpu_runtime.sh`.

mod index;
mod install;
mod record;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use index::{Choice, Pin};
use install::Extract;
use record::Installed;

use crate::engine::ort_lib::{places::SearchEnv, Search};
use crate::fetch::{header, Client, Method, Policy};

/// The ONNX Runtime this binary speaks (C API 31).
pub const ORT_VERSION: &str = "1.31.1";
pub const DEFAULT_INDEX: &str = "https://pypi.org/pypi";
pub const DEFAULT_NVIDIA_INDEX: &str = "https://pypi.nvidia.com";

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The GPU build: onnxruntime-gpu (CUDA and TensorRT providers) and the CUDA 13.0 /
    /// cuDNN 9 runtime libraries.
    #[arg(long)]
    pub gpu: bool,
    /// Also TensorRT 10, from NVIDIA's package index (goes with --gpu).
    #[arg(long, requires = "gpu")]
    pub tensorrt: bool,
    /// Folder to install into [default: $XDG_DATA_HOME/vlguard-ort, else
    /// ~/.local/share/vlguard-ort].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// PyPI's JSON API (a mirror of it also works).
    #[arg(long, env = "VLGUARD_PYPI_URL", default_value = DEFAULT_INDEX)]
    pub index_url: String,
    /// NVIDIA's package index (PEP 503 simple pages), for --tensorrt.
    #[arg(long, env = "VLGUARD_NVIDIA_INDEX_URL", default_value = DEFAULT_NVIDIA_INDEX)]
    pub nvidia_index_url: String,
    /// Tries per request and per file before giving up (a dropped transfer resumes).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Fetch(#[from] crate::fetch::Error),
    #[error("{url}: {what}")]
    Index { url: String, what: String },
    #[error("no manylinux {arch} wheel of {package} in the index (files: {seen})")]
    NoWheel {
        package: String,
        arch: String,
        seen: String,
    },
    #[error("{}: {what}: the index lists it for this package, but it is not the wheel vlguard-ort expects", .wheel.display())]
    WheelContents { wheel: PathBuf, what: String },
    #[error("no folder to install into: neither XDG_DATA_HOME nor HOME is set; pass --dir DIR")]
    NoDir,
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {url:?} must start with http:// or https://")]
    BadIndex { flag: &'static str, url: String },
    #[error("TensorRT 10 was not installed: {reason}\n{}", tensorrt_advice(.index))]
    TensorRt { reason: String, index: String },
}

fn tensorrt_advice(index: &str) -> String {
    format!(
        "  ONNX Runtime and the CUDA libraries are installed: --ep cuda works, and --ep auto \
         falls back to CUDA. To use TensorRT, one of:\n  \
         - run where {index} is reachable and rerun: vlguard-ort setup --gpu --tensorrt\n  \
         - NVIDIA's containers (nvcr.io/nvidia/tensorrt, .../pytorch) ship TensorRT on the \
         system library path: nothing to set there\n  \
         - an existing installation: run with --trt-lib-dir DIR (or VLGUARD_TRT_LIB_DIR=DIR), \
         DIR holding libnvinfer.so.10"
    )
}

/// One package to install.
#[derive(Debug, Clone, Copy)]
struct Wanted {
    package: &'static str,
    pin: Pin,
    extract: Extract,
}

const fn wanted(package: &'static str, pin: Pin, extract: Extract) -> Wanted {
    Wanted {
        package,
        pin,
        extract,
    }
}

const CPU: [Wanted; 1] = [wanted(
    "onnxruntime",
    Pin::Exact(ORT_VERSION),
    Extract::Runtime,
)];
/// The GPU runtime: what onnxruntime-gpu 1.31.1's CUDA provider loads
/// (libcudart/cublas/cublasLt/nvrtc .so.13, libcurand .so.10, libcufft .so.12,
/// libcudnn*.so.9), at the component versions CUDA 13.0 ships.
const GPU: [Wanted; 8] = [
    wanted("onnxruntime-gpu", Pin::Exact(ORT_VERSION), Extract::Runtime),
    cuda("nvidia-cuda-runtime", "13.0"),
    cuda("nvidia-cublas", "13.0"),
    cuda("nvidia-cuda-nvrtc", "13.0"),
    cuda("nvidia-curand", "10.4.0"),
    cuda("nvidia-cufft", "12.0.0"),
    cuda("nvidia-nvjitlink", "13.0"),
    cuda("nvidia-cudnn-cu13", "9"),
];

/// A CUDA runtime wheel: the newest of `series`, its libraries under `nvidia/`.
const fn cuda(package: &'static str, series: &'static str) -> Wanted {
    wanted(package, Pin::Series(series), Extract::Site("nvidia"))
}

const TENSORRT: Wanted = wanted(
    "tensorrt-cu13-libs",
    Pin::Series("10"),
    Extract::Site("tensorrt_libs"),
);

/// Where a package's wheels are listed.
#[derive(Debug, Clone, Copy)]
enum Index<'a> {
    /// PyPI's JSON API base (`https://pypi.org/pypi`).
    Json(&'a str),
    /// A PEP 503 simple index base (`https://pypi.nvidia.com`).
    Simple(&'a str),
}

fn checked_url<'a>(flag: &'static str, url: &'a str) -> Result<&'a str, SetupError> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(SetupError::BadIndex {
            flag,
            url: url.to_string(),
        })
    }
}

/// `vlguard-ort setup`.
pub fn command(args: &SetupArgs) -> Result<ExitCode, SetupError> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => SearchEnv::current(None)
            .user_dir()
            .ok_or(SetupError::NoDir)?,
    };
    let index = checked_url("--index-url", &args.index_url)?;
    let nvidia = checked_url("--nvidia-index-url", &args.nvidia_index_url)?;
    let policy = Policy {
        attempts: args.attempts.max(1),
        progress: !args.quiet,
        ..Policy::default()
    };
    let client = Client::new(None, index, policy);
    let mut record = Installed::load(&dir);
    let packages: &[Wanted] = if args.gpu { &GPU } else { &CPU };
    for w in packages {
        ensure(&client, &dir, &mut record, w, Index::Json(index))
            .map_err(|e| via(e, "VLGUARD_PYPI_URL (--index-url)"))?;
    }
    if args.tensorrt {
        let nvidia_client = Client::new(None, nvidia, client.policy.clone());
        ensure(
            &nvidia_client,
            &dir,
            &mut record,
            &TENSORRT,
            Index::Simple(nvidia),
        )
        .map_err(|e| SetupError::TensorRt {
            reason: via(e, "VLGUARD_NVIDIA_INDEX_URL (--nvidia-index-url)").to_string(),
            index: nvidia.to_string(),
        })?;
    }
    report_search(&dir);
    Ok(ExitCode::SUCCESS)
}

/// Names the setting that points at an unreachable index.
fn via(err: SetupError, setting: &'static str) -> SetupError {
    match err {
        SetupError::Fetch(mut e) => {
            if let crate::fetch::Error::Unreachable { via, .. } = &mut e {
                *via = setting;
            }
            SetupError::Fetch(e)
        }
        other => other,
    }
}

/// Installs `w` into `dir` unless the record says it is there and complete.
fn ensure(
    client: &Client,
    dir: &Path,
    record: &mut Installed,
    w: &Wanted,
    index: Index,
) -> Result<(), SetupError> {
    // The GPU build of ONNX Runtime runs on the CPU too: it satisfies a CPU setup.
    let accepted: &[&str] = match w.package {
        "onnxruntime" => &["onnxruntime", "onnxruntime-gpu"],
        _ => std::slice::from_ref(&w.package),
    };
    for name in accepted {
        if let Some(p) = record.complete(dir, name, |v| w.pin.matches(v)) {
            println!(
                "{name} {}: already installed in {}",
                p.version,
                dir.display()
            );
            return Ok(());
        }
    }
    let choice = resolve(client, w, index)?;
    let package = install::install(client, dir, &choice, w.extract)?;
    println!(
        "{} {}: installed {} into {}",
        w.package,
        choice.version,
        package.files.join(", "),
        dir.display()
    );
    if w.extract == Extract::Runtime {
        // One runtime per folder: the other build's files were just replaced.
        record
            .packages
            .retain(|name, _| !name.starts_with("onnxruntime"));
    }
    record.packages.insert(w.package.to_string(), package);
    record.save(dir)
}

/// The wheel of `w` that fits this machine, with its size and sha256.
fn resolve(client: &Client, w: &Wanted, index: Index) -> Result<Choice, SetupError> {
    let arch = index::arch();
    match index {
        Index::Json(base) => {
            let url = match w.pin {
                Pin::Exact(v) => format!("{base}/{}/{v}/json", w.package),
                Pin::Series(_) => format!("{base}/{}/json", w.package),
            };
            let project = index::get_json(client, &url)?;
            let mut choice = index::choose(w.package, w.pin, &project, arch)?;
            // PyPI gives absolute URLs; a mirror may give them relative to the page.
            choice.file.url = crate::fetch::resolve(&url, &choice.file.url);
            Ok(choice)
        }
        Index::Simple(base) => {
            let url = format!("{base}/{}/", w.package);
            let html = index::get_bytes(client, &url)?;
            let project = index::parse_simple(&String::from_utf8_lossy(&html), &url);
            let mut choice = index::choose(w.package, w.pin, &project, arch)?;
            choice.file.size = content_length(client, &choice.file.url)?;
            Ok(choice)
        }
    }
}

/// The size of the file at `url` (a HEAD; simple indexes do not list sizes).
fn content_length(client: &Client, url: &str) -> Result<u64, SetupError> {
    let (final_url, resp) = client.with_retries(|_| client.send_following(Method::Head, url))?;
    header(resp.headers(), "content-length")
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| SetupError::Index {
            url: final_url,
            what: "no Content-Length: cannot check the download's size".into(),
        })
}

/// Says which library the binary will now load, and when that is not the one in `dir`, why.
fn report_search(dir: &Path) {
    let lib = dir.join(install::LIB_DIR);
    let search = Search::run(&SearchEnv::current(None));
    match search.chosen() {
        Some((_, file, version)) if file.starts_with(&lib) => {
            println!("ready: ONNX Runtime {version} at {}; `vlguard-ort doctor` shows the rest", file.display());
        }
        Some((looked, file, version)) => println!(
            "note: the binary finds ONNX Runtime {version} at {} ({}) before {}: pass --ort-lib {} to use this one",
            file.display(),
            looked.place.source.label(),
            lib.display(),
            lib.display()
        ),
        None => println!(
            "note: {} is not a folder the binary searches: pass --ort-lib {} (or set VLGUARD_ORT_LIB)",
            lib.display(),
            lib.display()
        ),
    }
}
