//! `vlguard-ort setup [--gpu] [--tensorrt] [--dir DIR]`: puts the ONNX Runtime library (and
//! for a GPU the CUDA 13.0 / cuDNN 9 runtime, and TensorRT 10) where the binary finds it,
//! from an installed binary with no checkout and no Python.
//!
//! Wheels come from a package index's standard Simple API ([`index`]; `--index-url` /
//! `VLGUARD_PYPI_URL`, default https://pypi.org/simple, the same setting as pip's
//! `--index-url`, so a mirror or private index works), which lists each file's URL and
//! sha256; TensorRT from NVIDIA's own index (`--nvidia-index-url` /
//! `VLGUARD_NVIDIA_INDEX_URL`), the only place its libraries are published. Downloads
//! resume and are verified ([`install`]); `--dry-run` stops after choosing. The folder (default: the per-user folder,
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

use index::Pin;
use install::Choice;
use install::Extract;
use record::Installed;

use crate::engine::ort_lib::{places::SearchEnv, Search};
use crate::fetch::{header, Client, Method, Policy};

/// The ONNX Runtime this binary speaks (C API 31).
pub const ORT_VERSION: &str = "1.31.1";
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";
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
    /// Package index: its Simple API base, as pip's --index-url (a mirror or private
    /// index; project pages at URL/NAME/).
    #[arg(long, env = "VLGUARD_PYPI_URL", default_value = DEFAULT_INDEX)]
    pub index_url: String,
    /// NVIDIA's package index (Simple API base), for --tensorrt.
    #[arg(long, env = "VLGUARD_NVIDIA_INDEX_URL", default_value = DEFAULT_NVIDIA_INDEX)]
    pub nvidia_index_url: String,
    /// Tries per request and per file before giving up (a dropped transfer resumes).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Ask the index which wheels fit and print them (version, file, size, address);
    /// download and install nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Fetch(#[from] crate::fetch::Error),
    #[error("{url}: {what}")]
    Index { url: String, what: String },
    #[error("{url}: not found (404): the index has no page for {package}; {setting} must be a package index's Simple API base, as pip's --index-url (e.g. {DEFAULT_INDEX})")]
    NoProject {
        url: String,
        package: &'static str,
        setting: &'static str,
    },
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

/// A package index: its Simple API base and the setting that names it.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    base: &'a str,
    setting: &'static str,
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
    let pypi = Source {
        base: index,
        setting: "VLGUARD_PYPI_URL (--index-url)",
    };
    for w in packages {
        ensure(&client, &dir, &mut record, w, pypi, args.dry_run)
            .map_err(|e| via(e, pypi.setting))?;
    }
    if args.tensorrt {
        let nvidia_client = Client::new(None, nvidia, client.policy.clone());
        let source = Source {
            base: nvidia,
            setting: "VLGUARD_NVIDIA_INDEX_URL (--nvidia-index-url)",
        };
        ensure(
            &nvidia_client,
            &dir,
            &mut record,
            &TENSORRT,
            source,
            args.dry_run,
        )
        .map_err(|e| match via(e, source.setting) {
            // Nothing was installed: the advice about what works would not hold.
            e if args.dry_run => e,
            e => SetupError::TensorRt {
                reason: e.to_string(),
                index: nvidia.to_string(),
            },
        })?;
    }
    if !args.dry_run {
        report_search(&dir);
    }
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

/// Installs `w` into `dir` unless the record says it is there and complete (`dry_run`:
/// says which wheel it would install).
fn ensure(
    client: &Client,
    dir: &Path,
    record: &mut Installed,
    w: &Wanted,
    source: Source,
    dry_run: bool,
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
    let choice = resolve(client, w, source)?;
    if dry_run {
        println!(
            "{} {}: would install {} ({} bytes) from {}",
            w.package, choice.version, choice.filename, choice.size, choice.url
        );
        return Ok(());
    }
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
fn resolve(client: &Client, w: &Wanted, source: Source) -> Result<Choice, SetupError> {
    let url = format!("{}/{}/", source.base, w.package);
    let page = index::read_page(client, &url).map_err(|e| match e {
        SetupError::Fetch(crate::fetch::Error::NotFound { url, .. }) => SetupError::NoProject {
            url,
            package: w.package,
            setting: source.setting,
        },
        other => other,
    })?;
    let found = index::choose(w.package, w.pin, &page, index::arch())?;
    let size = match found.file.size {
        Some(size) => size,
        None => content_length(client, &found.file.url)?,
    };
    Ok(Choice {
        version: found.version,
        filename: found.file.filename.clone(),
        url: found.file.url.clone(),
        sha256: found.sha256.to_string(),
        size,
    })
}

/// The size of the file at `url` (a HEAD, for an index that does not list sizes).
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
