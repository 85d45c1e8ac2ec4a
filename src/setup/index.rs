//! Which wheel file to download, from a package index: PyPI's JSON API
//! (`/pypi/NAME/VERSION/json` for an exact version, `/pypi/NAME/json` for the newest of a
//! series) or, for NVIDIA's index, a PEP 503 simple page (`/NAME/`, links carrying
//! `#sha256=`). A wheel fits when it is a manylinux wheel for this machine's architecture;
//! the Python tag does not matter (only the shared libraries inside are used).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::SetupError;
use crate::fetch::{status_error, Client, Method};

/// PyPI's JSON API answer (the fields read here; https://docs.pypi.org/api/json/).
#[derive(Debug, Deserialize)]
pub struct Project {
    /// The files of the version asked for (or of the latest, for `/pypi/NAME/json`).
    #[serde(default)]
    pub urls: Vec<IndexFile>,
    /// Every version's files (`/pypi/NAME/json` only).
    #[serde(default)]
    pub releases: BTreeMap<String, Vec<IndexFile>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexFile {
    pub filename: String,
    pub url: String,
    pub digests: Digests,
    pub size: u64,
    #[serde(default)]
    pub packagetype: String,
    #[serde(default)]
    pub yanked: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Digests {
    pub sha256: String,
}

/// Which versions of a package fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Exactly this version (`==1.31.1`).
    Exact(&'static str),
    /// The newest of a series (`==13.0.*`).
    Series(&'static str),
}

impl Pin {
    pub fn matches(self, version: &str) -> bool {
        match self {
            Pin::Exact(v) => version == v,
            Pin::Series(s) => {
                let numeric = version
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                numeric && (version == s || version.starts_with(&format!("{s}.")))
            }
        }
    }

    /// As pip writes it.
    pub fn spec(self) -> String {
        match self {
            Pin::Exact(v) => format!("=={v}"),
            Pin::Series(s) => format!("=={s}.*"),
        }
    }
}

/// The wheel chosen for a package: its version and file.
#[derive(Debug, Clone)]
pub struct Choice {
    pub version: String,
    pub file: IndexFile,
}

/// The machine's architecture as wheel platform tags spell it.
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

/// Whether `filename` is a manylinux wheel for `arch` (`..-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl`).
pub fn fits(filename: &str, arch: &str) -> bool {
    let Some(stem) = filename.strip_suffix(".whl") else {
        return false;
    };
    let platform = stem.rsplit('-').next().unwrap_or_default();
    let suffix = format!("_{arch}");
    platform
        .split('.')
        .any(|tag| tag.starts_with("manylinux") && tag.ends_with(&suffix))
}

fn numeric_key(version: &str) -> Vec<u64> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The fitting wheel among `files` (the greatest name, so the choice is stable).
fn pick<'a>(files: impl IntoIterator<Item = &'a IndexFile>, arch: &str) -> Option<&'a IndexFile> {
    files
        .into_iter()
        .filter(|f| !f.yanked && f.packagetype == "bdist_wheel" && fits(&f.filename, arch))
        .max_by(|a, b| a.filename.cmp(&b.filename))
}

/// The newest version matching `pin` with a fitting wheel: for [`Pin::Exact`] among the
/// `urls` of a `/pypi/NAME/VERSION/json` answer, for [`Pin::Series`] among the `releases`
/// of a `/pypi/NAME/json` answer.
pub fn choose(
    package: &str,
    pin: Pin,
    project: &Project,
    arch: &str,
) -> Result<Choice, SetupError> {
    let mut versions: Vec<(&str, &[IndexFile])> = match pin {
        Pin::Exact(v) => vec![(v, project.urls.as_slice())],
        Pin::Series(_) => project
            .releases
            .iter()
            .filter(|(v, _)| pin.matches(v))
            .map(|(v, files)| (v.as_str(), files.as_slice()))
            .collect(),
    };
    versions.sort_by_key(|(v, _)| numeric_key(v));
    for (version, files) in versions.iter().rev() {
        if let Some(file) = pick(*files, arch) {
            return Ok(Choice {
                version: version.to_string(),
                file: file.clone(),
            });
        }
    }
    let seen: Vec<&str> = versions
        .iter()
        .flat_map(|(_, files)| files.iter().map(|f| f.filename.as_str()))
        .take(12)
        .collect();
    Err(SetupError::NoWheel {
        package: format!("{package}{}", pin.spec()),
        arch: arch.to_string(),
        seen: if seen.is_empty() {
            "no matching version".into()
        } else {
            seen.join(", ")
        },
    })
}

/// The wheel links of a PEP 503 simple page (`<a href="URL#sha256=HEX">NAME</a>`), as
/// `releases` keyed by the version in each file name. Links without a sha256 are left out
/// (nothing could verify them); sizes are unknown (0) until asked for.
pub fn parse_simple(html: &str, page_url: &str) -> Project {
    let mut releases: BTreeMap<String, Vec<IndexFile>> = BTreeMap::new();
    for piece in html.split("href=\"").skip(1) {
        let Some(href) = piece.split('"').next() else {
            continue;
        };
        let href = href.replace("&amp;", "&");
        let (link, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let Some(sha256) = fragment.strip_prefix("sha256=") else {
            continue;
        };
        let filename = link.rsplit('/').next().unwrap_or_default().to_string();
        let Some(version) = filename.split('-').nth(1).map(str::to_string) else {
            continue;
        };
        releases.entry(version).or_default().push(IndexFile {
            url: crate::fetch::resolve(page_url, link),
            filename,
            digests: Digests {
                sha256: sha256.to_ascii_lowercase(),
            },
            size: 0,
            packagetype: "bdist_wheel".into(),
            yanked: false,
        });
    }
    Project {
        urls: Vec::new(),
        releases,
    }
}

/// GET `url` as JSON of type `T`, retried like every fetch.
pub fn get_json<T: serde::de::DeserializeOwned>(
    client: &Client,
    url: &str,
) -> Result<T, SetupError> {
    let bytes = get_bytes(client, url)?;
    serde_json::from_slice(&bytes).map_err(|e| SetupError::Index {
        url: url.to_string(),
        what: format!("not PyPI's JSON API answer: {e}"),
    })
}

/// GET `url` (following redirects), the body up to 64 MiB.
pub fn get_bytes(client: &Client, url: &str) -> Result<Vec<u8>, SetupError> {
    let bytes = client.with_retries(|_| {
        let (final_url, mut resp) = client.send_following(Method::Get, url)?;
        if !resp.status().is_success() {
            return Err(status_error(client, &final_url, &mut resp));
        }
        resp.body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| crate::fetch::Error::Transfer {
                url: final_url,
                detail: e.to_string(),
                attempts: 1,
            })
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> IndexFile {
        IndexFile {
            filename: name.into(),
            url: format!("https://files/{name}"),
            digests: Digests {
                sha256: "ab".repeat(32),
            },
            size: 1,
            packagetype: "bdist_wheel".into(),
            yanked: false,
        }
    }

    #[test]
    fn manylinux_wheels_of_this_architecture_fit() {
        // File names as PyPI lists them for onnxruntime 1.31.1 and nvidia-cublas.
        assert!(fits(
            "onnxruntime-1.31.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "x86_64"
        ));
        assert!(fits(
            "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_aarch64.whl",
            "aarch64"
        ));
        assert!(!fits(
            "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_aarch64.whl",
            "x86_64"
        ));
        assert!(!fits(
            "onnxruntime-1.31.1-cp311-cp311-win_amd64.whl",
            "x86_64"
        ));
        assert!(!fits(
            "onnxruntime-1.31.1-cp311-cp311-macosx_13_0_arm64.whl",
            "aarch64"
        ));
        assert!(!fits("onnxruntime-1.31.1.tar.gz", "x86_64"));
    }

    #[test]
    fn a_series_takes_its_newest_fitting_version() {
        let mut project = Project {
            urls: Vec::new(),
            releases: BTreeMap::new(),
        };
        for (v, name) in [
            (
                "13.0.48",
                "nvidia_cuda_runtime-13.0.48-py3-none-manylinux_2_27_x86_64.whl",
            ),
            (
                "13.0.96",
                "nvidia_cuda_runtime-13.0.96-py3-none-manylinux_2_27_x86_64.whl",
            ),
            (
                "13.0.100",
                "nvidia_cuda_runtime-13.0.100-py3-none-win_amd64.whl",
            ),
            (
                "13.1.80",
                "nvidia_cuda_runtime-13.1.80-py3-none-manylinux_2_27_x86_64.whl",
            ),
            (
                "13.0.99rc1",
                "nvidia_cuda_runtime-13.0.99rc1-py3-none-manylinux_2_27_x86_64.whl",
            ),
        ] {
            project.releases.insert(v.into(), vec![file(name)]);
        }
        let pick = |series| {
            choose(
                "nvidia-cuda-runtime",
                Pin::Series(series),
                &project,
                "x86_64",
            )
        };
        assert_eq!(pick("13.0").unwrap().version, "13.0.96");
        let err = pick("12.8").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no manylinux x86_64 wheel of nvidia-cuda-runtime==12.8.* in the index (files: no matching version)"
        );
    }

    #[test]
    fn simple_pages_give_links_with_digests() {
        let sha = "0f".repeat(32);
        let html = format!(
            r#"<html><body><a href="/files/tensorrt_cu13_libs-10.13.3.9-py2.py3-none-manylinux_2_28_x86_64.whl#sha256={sha}">x</a>
            <a href="https://o/tensorrt_cu13_libs-10.9.0.34-py2.py3-none-manylinux_2_28_x86_64.whl">no digest</a></body></html>"#
        );
        let project = parse_simple(&html, "https://pypi.nvidia.com/simple/tensorrt-cu13-libs/");
        let got = choose("tensorrt-cu13-libs", Pin::Series("10"), &project, "x86_64").unwrap();
        assert_eq!(got.version, "10.13.3.9");
        assert_eq!(got.file.digests.sha256, sha);
        assert_eq!(
            got.file.url,
            "https://pypi.nvidia.com/files/tensorrt_cu13_libs-10.13.3.9-py2.py3-none-manylinux_2_28_x86_64.whl"
        );
        assert_eq!(
            project.releases.len(),
            1,
            "the link without a digest is left out"
        );
    }
}
