//! Where the ONNX Runtime library may be, in the order it is looked for. Pure: every input
//! (executable, working directory, environment variables) comes in a [`SearchEnv`], so the
//! order is tested without touching the process.
//!
//! 1. `--ort-lib` / `VLGUARD_ORT_LIB`, then `ORT_DYLIB_PATH`: when given, the only place.
//! 2. The checkout's `.ort/lib` (what `scripts/setup.sh` fills), in every folder above the
//!    executable and above the working directory.
//! 3. The per-user data folder `$XDG_DATA_HOME/vlguard-ort/lib`, else
//!    `~/.local/share/vlguard-ort/lib` (what `vlguard-ort setup` fills by default).
//! 4. Beside the binary: `BIN/../lib/vlguard-ort/lib` (an image or a tarball installing
//!    `bin/` and `lib/` together).
//! 5. System-wide: `/usr/local/lib/vlguard-ort/lib`, `/opt/vlguard-ort/lib`.
//! 6. A pip-installed `onnxruntime` / `onnxruntime-gpu` wheel (`onnxruntime/capi`): in the
//!    active virtual environment (`$VIRTUAL_ENV`, `$CONDA_PREFIX`), then in the usual
//!    site-packages of the first `python3` on PATH (for a pyenv shim, of the version pyenv
//!    selects) and the user's own site-packages.
//!
//! Every vlguard-ort folder (2 to 5) has one layout: `lib/` for ONNX Runtime and
//! `gpu-site/` for the CUDA, cuDNN and TensorRT wheels' libraries ([`runtime_site`]).
//! Site-packages are found by listing `lib/python3*` under the interpreter's prefix, not by
//! running Python: no process is started on every run, a broken or slow interpreter (a
//! pyenv shim, a conda activation hook) cannot stall or break the search, and the folders
//! pip uses are fixed by layout (`lib/python3.X/site-packages` in a venv, conda or a source
//! build; `dist-packages` under `/usr/lib` and `/usr/local/lib` on Debian and Ubuntu, as in
//! NVIDIA's containers).

use std::path::{Path, PathBuf};

/// The name of the folder the binary keeps its runtime libraries in, wherever it is.
pub const FOLDER: &str = "vlguard-ort";
/// Folder, relative to the project root, where `scripts/setup.sh` keeps its libraries.
pub const CHECKOUT_DIR: &str = ".ort";

/// What the search depends on, read once from the process.
#[derive(Debug, Clone, Default)]
pub struct SearchEnv {
    pub explicit: Option<PathBuf>,
    pub ort_dylib_path: Option<PathBuf>,
    pub exe: Option<PathBuf>,
    pub cwd: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub virtual_env: Option<PathBuf>,
    pub conda_prefix: Option<PathBuf>,
    /// `PATH`, split.
    pub path: Vec<PathBuf>,
    pub pyenv_version: Option<String>,
}

fn var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl SearchEnv {
    /// This process's view; `explicit` is `--ort-lib` (clap already read `VLGUARD_ORT_LIB`).
    pub fn current(explicit: Option<&Path>) -> SearchEnv {
        SearchEnv {
            explicit: explicit.map(Path::to_path_buf),
            ort_dylib_path: var("ORT_DYLIB_PATH"),
            exe: std::env::current_exe().ok(),
            cwd: std::env::current_dir().ok(),
            xdg_data_home: var("XDG_DATA_HOME"),
            home: var("HOME"),
            virtual_env: var("VIRTUAL_ENV"),
            conda_prefix: var("CONDA_PREFIX"),
            path: std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
            pyenv_version: std::env::var("PYENV_VERSION")
                .ok()
                .filter(|v| !v.is_empty()),
        }
    }

    /// The per-user data folder (`$XDG_DATA_HOME/vlguard-ort`, else
    /// `~/.local/share/vlguard-ort`); a relative `XDG_DATA_HOME` is ignored, as the XDG
    /// specification says.
    pub fn user_dir(&self) -> Option<PathBuf> {
        let data = self
            .xdg_data_home
            .clone()
            .filter(|p| p.is_absolute())
            .or_else(|| self.home.as_ref().map(|h| h.join(".local/share")))?;
        Some(data.join(FOLDER))
    }
}

/// Why a place is searched, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Flag,
    DylibEnv,
    Checkout,
    User,
    BesideBinary,
    System,
    Virtualenv,
    Python,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Flag => "--ort-lib / VLGUARD_ORT_LIB",
            Source::DylibEnv => "ORT_DYLIB_PATH",
            Source::Checkout => "checkout (.ort/lib)",
            Source::User => "per-user folder",
            Source::BesideBinary => "beside the binary",
            Source::System => "system-wide folder",
            Source::Virtualenv => "active Python environment",
            Source::Python => "python3 on PATH",
        }
    }
}

/// One file or folder to look in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub source: Source,
    pub path: PathBuf,
}

/// Every place, in search order, without duplicates (the first occurrence keeps its
/// source). An explicit path is the only place.
pub fn places(env: &SearchEnv) -> Vec<Place> {
    if let Some(path) = &env.explicit {
        return vec![place(Source::Flag, path.clone())];
    }
    if let Some(path) = &env.ort_dylib_path {
        return vec![place(Source::DylibEnv, path.clone())];
    }
    let mut all = Vec::new();
    let roots = env.exe.iter().flat_map(|e| e.ancestors().skip(1));
    let roots = roots.chain(env.cwd.iter().flat_map(|c| c.ancestors()));
    all.extend(roots.map(|r| place(Source::Checkout, r.join(CHECKOUT_DIR).join("lib"))));
    if let Some(dir) = env.user_dir() {
        all.push(place(Source::User, dir.join("lib")));
    }
    if let Some(prefix) = env.exe.as_ref().and_then(|e| e.parent()?.parent()) {
        let dir = prefix.join("lib").join(FOLDER).join("lib");
        all.push(place(Source::BesideBinary, dir));
    }
    for prefix in ["/usr/local/lib", "/opt"] {
        all.push(place(
            Source::System,
            Path::new(prefix).join(FOLDER).join("lib"),
        ));
    }
    for prefix in env.virtual_env.iter().chain(&env.conda_prefix) {
        for site in site_packages(prefix) {
            all.push(place(Source::Virtualenv, capi(&site)));
        }
    }
    for site in python_sites(env) {
        all.push(place(Source::Python, capi(&site)));
    }
    let mut unique: Vec<Place> = Vec::with_capacity(all.len());
    for p in all {
        if !unique.iter().any(|u| u.path == p.path) {
            unique.push(p);
        }
    }
    unique
}

fn place(source: Source, path: PathBuf) -> Place {
    Place { source, path }
}

/// Where a wheel keeps its library inside site-packages.
fn capi(site: &Path) -> PathBuf {
    site.join("onnxruntime").join("capi")
}

/// The site-packages of the first `python3` on PATH (its prefix is the folder above its
/// `bin/`, the symlink not followed: a venv's `bin/python3` points at the system one; for a
/// pyenv shim, the version pyenv selects), then the user's own (`pip install --user`).
fn python_sites(env: &SearchEnv) -> Vec<PathBuf> {
    let mut sites = Vec::new();
    let python = env.path.iter().find(|dir| dir.join("python3").is_file());
    let prefix = python
        .and_then(|bin| pyenv_prefix(env, bin).or_else(|| bin.parent().map(Path::to_path_buf)));
    if let Some(prefix) = prefix {
        sites.extend(site_packages(&prefix));
        sites.extend(site_packages(&prefix.join("local")));
    }
    if let Some(home) = &env.home {
        sites.extend(site_packages(&home.join(".local")));
    }
    sites
}

/// For pyenv's `ROOT/shims`: `ROOT/versions/V`, V from `PYENV_VERSION`, else the first
/// line of `ROOT/version` (pyenv's global version; a folder's `.python-version` is not
/// followed).
fn pyenv_prefix(env: &SearchEnv, bin: &Path) -> Option<PathBuf> {
    if bin.file_name()? != "shims" {
        return None;
    }
    let root = bin.parent()?;
    let version = env.pyenv_version.clone().or_else(|| {
        let text = std::fs::read_to_string(root.join("version")).ok()?;
        text.lines().next().map(|l| l.trim().to_string())
    })?;
    Some(root.join("versions").join(version.split(':').next()?))
}

/// `PREFIX/lib/python3.X/{site,dist}-packages` (newest Python first), then Debian's
/// version-less `PREFIX/lib/python3/dist-packages`.
pub fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    let lib = prefix.join("lib");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let minor = name.to_str()?.strip_prefix("python3.")?.parse().ok()?;
            Some((minor, e.path()))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    let mut sites: Vec<PathBuf> = versions
        .into_iter()
        .flat_map(|(_, dir)| [dir.join("site-packages"), dir.join("dist-packages")])
        .collect();
    sites.push(lib.join("python3").join("dist-packages"));
    sites.retain(|s| s.is_dir());
    sites
}

/// The folder holding the GPU runtime libraries that belong with the ONNX Runtime library
/// at `ort_lib`: `DIR/gpu-site` for a vlguard-ort folder (`DIR/lib/libonnxruntime.so.*`),
/// site-packages itself for a pip wheel (`SITE/onnxruntime/capi/...`, where pip puts
/// `nvidia/cu13/lib`, `nvidia/cudnn/lib` and `tensorrt_libs` too).
pub fn runtime_site(ort_lib: &Path) -> Option<PathBuf> {
    let dir = ort_lib.parent()?;
    let above = dir.parent()?;
    if dir.file_name()? == "capi" && above.file_name()? == "onnxruntime" {
        return above.parent().map(Path::to_path_buf);
    }
    Some(above.join("gpu-site"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_in(tmp: &Path) -> SearchEnv {
        SearchEnv {
            exe: Some(tmp.join("inst/bin/vlguard-ort")),
            cwd: Some(tmp.join("work")),
            home: Some(tmp.join("home")),
            ..SearchEnv::default()
        }
    }

    #[test]
    fn explicit_paths_are_the_only_place() {
        let tmp = tempfile::tempdir().unwrap();
        let mut env = env_in(tmp.path());
        env.ort_dylib_path = Some("/x/libonnxruntime.so".into());
        assert_eq!(
            places(&env)[..],
            [place(Source::DylibEnv, "/x/libonnxruntime.so".into())]
        );
        env.explicit = Some("/y".into());
        assert_eq!(places(&env)[..], [place(Source::Flag, "/y".into())]);
    }

    #[test]
    fn the_documented_order() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let venv = t.join("venv");
        let usr = t.join("usr");
        for site in [
            "venv/lib/python3.12/site-packages",
            "usr/lib/python3.11/dist-packages",
            "usr/lib/python3.13/site-packages",
            "usr/local/lib/python3.13/dist-packages",
            "home/.local/lib/python3.12/site-packages",
        ] {
            std::fs::create_dir_all(t.join(site)).unwrap();
        }
        std::fs::create_dir_all(usr.join("bin")).unwrap();
        std::fs::write(usr.join("bin/python3"), b"").unwrap();
        let mut env = env_in(t);
        env.virtual_env = Some(venv);
        env.xdg_data_home = Some(t.join("xdg"));
        env.path = vec![t.join("nothing"), usr.join("bin")];
        let got: Vec<(Source, PathBuf)> = places(&env)
            .into_iter()
            .filter(|p| p.path.starts_with(t) || p.source == Source::System)
            .map(|p| (p.source, p.path))
            .collect();
        let capi = |site: &str| t.join(site).join("onnxruntime/capi");
        let want = vec![
            (Source::Checkout, t.join("inst/bin/.ort/lib")),
            (Source::Checkout, t.join("inst/.ort/lib")),
            (Source::Checkout, t.join(".ort/lib")),
            (Source::Checkout, t.join("work/.ort/lib")),
            (Source::User, t.join("xdg/vlguard-ort/lib")),
            (Source::BesideBinary, t.join("inst/lib/vlguard-ort/lib")),
            (Source::System, "/usr/local/lib/vlguard-ort/lib".into()),
            (Source::System, "/opt/vlguard-ort/lib".into()),
            (
                Source::Virtualenv,
                capi("venv/lib/python3.12/site-packages"),
            ),
            (Source::Python, capi("usr/lib/python3.13/site-packages")),
            (Source::Python, capi("usr/lib/python3.11/dist-packages")),
            (
                Source::Python,
                capi("usr/local/lib/python3.13/dist-packages"),
            ),
            (
                Source::Python,
                capi("home/.local/lib/python3.12/site-packages"),
            ),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn a_pyenv_shim_leads_to_the_selected_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join(".pyenv");
        std::fs::create_dir_all(root.join("shims")).unwrap();
        std::fs::write(root.join("shims/python3"), b"").unwrap();
        std::fs::write(root.join("version"), "3.11.7\n").unwrap();
        for v in ["3.11.7", "3.12.1"] {
            std::fs::create_dir_all(root.join(format!(
                "versions/{v}/lib/python3.{}/site-packages",
                &v[2..4]
            )))
            .unwrap();
        }
        let mut env = SearchEnv {
            path: vec![root.join("shims")],
            ..SearchEnv::default()
        };
        let site = |v: &str, minor: &str| {
            vec![root.join(format!("versions/{v}/lib/python3.{minor}/site-packages"))]
        };
        assert_eq!(python_sites(&env), site("3.11.7", "11"));
        env.pyenv_version = Some("3.12.1".into());
        assert_eq!(python_sites(&env), site("3.12.1", "12"));
    }

    #[test]
    fn user_folder_falls_back_to_home() {
        let env = SearchEnv {
            home: Some("/h".into()),
            xdg_data_home: Some("relative".into()),
            ..SearchEnv::default()
        };
        assert_eq!(env.user_dir(), Some("/h/.local/share/vlguard-ort".into()));
        assert_eq!(SearchEnv::default().user_dir(), None);
    }

    #[test]
    fn gpu_libraries_sit_beside_the_runtime() {
        assert_eq!(
            runtime_site(Path::new("/d/vlguard-ort/lib/libonnxruntime.so.1.31.1")),
            Some("/d/vlguard-ort/gpu-site".into())
        );
        assert_eq!(
            runtime_site(Path::new(
                "/v/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"
            )),
            Some("/v/site-packages".into())
        );
    }
}
