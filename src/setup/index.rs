//! Which wheel file to download, from a package index's Simple Repository API, the standard
//! every index serves (PyPI, NVIDIA's, mirrors, devpi, Artifactory, Nexus): the project page
//! `BASE/NAME/`, asked for as PEP 691 JSON (`files` with `filename`, `url`,
//! `hashes.sha256`, `yanked`, and PEP 700's `size`) and read as the PEP 503 HTML page
//! (links carrying `#sha256=`, `data-yanked`) when the server answers HTML. Relative URLs
//! are resolved against the page's final address. A wheel fits when it is a manylinux wheel
//! for this machine's architecture; the Python tag does not matter (only the shared
//! libraries inside are used). Each file's version is the one in its name.

use serde::{Deserialize, Deserializer};

use super::SetupError;
use crate::fetch::{header, status_error, Client};

/// What `setup` asks an index for: PEP 691 JSON, else its HTML (pip sends the same).
pub const ACCEPT: &str = "application/vnd.pypi.simple.v1+json, \
                          application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";

/// A project page of the Simple API in PEP 691's JSON form (the fields read here); the
/// HTML form is read into the same type.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub meta: Meta,
    pub files: Vec<IndexFile>,
}

#[derive(Debug, Deserialize)]
pub struct Meta {
    /// `1.0`, or `1.1` and later with PEP 700's `size`; another major version is refused.
    #[serde(rename = "api-version")]
    pub api_version: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexFile {
    pub filename: String,
    pub url: String,
    #[serde(default)]
    pub hashes: Hashes,
    /// PEP 700 (API 1.1); absent in HTML pages and older JSON ones.
    #[serde(default)]
    pub size: Option<u64>,
    /// `false`, `true` or the reason (a string) it was yanked.
    #[serde(default, deserialize_with = "yanked")]
    pub yanked: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Hashes {
    pub sha256: Option<String>,
}

fn yanked<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(!matches!(value, serde_json::Value::Bool(false)))
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

/// The wheel chosen for a package: its version and file, the sha256 the index lists.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    pub version: String,
    pub file: &'a IndexFile,
    pub sha256: &'a str,
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

/// The version in a wheel's name (`NAME-VERSION-...whl`; the name has no `-`).
fn wheel_version(filename: &str) -> Option<&str> {
    filename.strip_suffix(".whl")?.split('-').nth(1)
}

fn numeric_key(version: &str) -> Vec<u64> {
    version.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The newest version matching `pin` with a fitting wheel that is not yanked and has a
/// sha256 (nothing could verify one without); among a version's fitting wheels the greatest
/// name, so the choice is stable.
pub fn choose<'a>(
    package: &str,
    pin: Pin,
    page: &'a Page,
    arch: &str,
) -> Result<Found<'a>, SetupError> {
    let mut matching: Vec<(&str, &IndexFile)> = page
        .files
        .iter()
        .filter_map(|f| Some((wheel_version(&f.filename)?, f)))
        .filter(|(v, _)| pin.matches(v))
        .collect();
    matching.sort_by(|(va, a), (vb, b)| {
        (numeric_key(va), &a.filename).cmp(&(numeric_key(vb), &b.filename))
    });
    let found = matching.iter().rev().find_map(|(version, file)| {
        let sha256 = file.hashes.sha256.as_deref()?;
        (!file.yanked && fits(&file.filename, arch)).then(|| Found {
            version: version.to_string(),
            file,
            sha256,
        })
    });
    found.ok_or_else(|| {
        let seen: Vec<&str> = matching
            .iter()
            .map(|(_, f)| f.filename.as_str())
            .take(12)
            .collect();
        SetupError::NoWheel {
            package: format!("{package}{}", pin.spec()),
            arch: arch.to_string(),
            seen: if seen.is_empty() {
                "no matching version".into()
            } else {
                seen.join(", ")
            },
        }
    })
}

/// GETs the project page at `url` (following redirects, retried like every fetch) and
/// reads it as JSON or HTML by its `Content-Type` (by its first byte when there is none),
/// every file URL made absolute against the page's final address.
pub fn read_page(client: &Client, url: &str) -> Result<Page, SetupError> {
    let (final_url, json, body) = client.with_retries(|_| {
        let (final_url, mut resp) = client.get_accepting(url, ACCEPT)?;
        if !resp.status().is_success() {
            return Err(status_error(client, &final_url, &mut resp));
        }
        let content_type = header(resp.headers(), "content-type").map(str::to_ascii_lowercase);
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| crate::fetch::Error::Transfer {
                url: final_url.clone(),
                detail: e.to_string(),
                attempts: 1,
            })?;
        let json = match content_type {
            Some(t) => t.contains("json"),
            None => body.trim_ascii_start().starts_with(b"{"),
        };
        Ok((final_url, json, body))
    })?;
    let mut page = if json {
        parse_json(&body, &final_url)?
    } else {
        parse_html(&String::from_utf8_lossy(&body))
    };
    for file in &mut page.files {
        file.url = crate::fetch::resolve(&final_url, &file.url);
    }
    Ok(page)
}

/// A PEP 691 JSON page, refused when it is not one or its API's major version is not 1.
pub fn parse_json(body: &[u8], url: &str) -> Result<Page, SetupError> {
    let bad = |what: String| SetupError::Index {
        url: url.to_string(),
        what,
    };
    let page: Page = serde_json::from_slice(body)
        .map_err(|e| bad(format!("not a Simple API (PEP 691) JSON page: {e}")))?;
    if page.meta.api_version.split('.').next() != Some("1") {
        return Err(bad(format!(
            "Simple API version {} (this vlguard-ort reads 1.x)",
            page.meta.api_version
        )));
    }
    Ok(page)
}

/// The links of a PEP 503 HTML page (`<a href="URL#sha256=HEX" data-yanked="">NAME</a>`),
/// URLs as written (relative ones resolved by [`read_page`]).
pub fn parse_html(html: &str) -> Page {
    let mut files = Vec::new();
    for piece in html.split("<a").skip(1) {
        if !piece.starts_with(|c: char| c.is_ascii_whitespace()) {
            continue; // <abbr>, <area>, ...
        }
        let tag = piece.split('>').next().unwrap_or_default();
        let attrs = attributes(tag);
        let value = |name: &str| attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let Some(href) = value("href") else {
            continue;
        };
        let (link, fragment) = href.split_once('#').unwrap_or((href, ""));
        files.push(IndexFile {
            filename: link.rsplit('/').next().unwrap_or_default().to_string(),
            url: link.to_string(),
            hashes: Hashes {
                sha256: fragment
                    .strip_prefix("sha256=")
                    .map(str::to_ascii_lowercase),
            },
            size: None,
            yanked: value("data-yanked").is_some(),
        });
    }
    Page {
        meta: Meta {
            api_version: "1.0".into(),
        },
        files,
    }
}

/// The attributes of an HTML start tag's inside (`href="x" data-yanked`), names lowercased,
/// values unquoted with `&amp;`, `&lt;`, `&gt;`, `&quot;` decoded; a bare name has "".
fn attributes(tag: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = tag.trim_start();
    while !rest.is_empty() {
        let name_end = rest
            .find(|c: char| c == '=' || c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        let name = rest[..name_end].trim_end_matches('/').to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let mut value = "";
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (v, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => after[1..].split_once(q).unwrap_or((&after[1..], "")),
                _ => after
                    .split_once(|c: char| c.is_ascii_whitespace())
                    .unwrap_or((after, "")),
            };
            value = v;
            rest = tail.trim_start();
        }
        if !name.is_empty() {
            let value = value
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&amp;", "&");
            out.push((name, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> IndexFile {
        IndexFile {
            filename: name.into(),
            url: format!("https://files/{name}"),
            hashes: Hashes {
                sha256: Some("ab".repeat(32)),
            },
            size: Some(1),
            yanked: false,
        }
    }

    fn page(files: Vec<IndexFile>) -> Page {
        Page {
            meta: Meta {
                api_version: "1.1".into(),
            },
            files,
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
        let mut yanked = file("nvidia_cuda_runtime-13.0.97-py3-none-manylinux_2_27_x86_64.whl");
        yanked.yanked = true;
        let mut unhashed = file("nvidia_cuda_runtime-13.0.98-py3-none-manylinux_2_27_x86_64.whl");
        unhashed.hashes.sha256 = None;
        let page = page(vec![
            file("nvidia_cuda_runtime-13.0.48-py3-none-manylinux_2_27_x86_64.whl"),
            file("nvidia_cuda_runtime-13.0.96-py3-none-manylinux_2_27_x86_64.whl"),
            yanked,
            unhashed,
            file("nvidia_cuda_runtime-13.0.100-py3-none-win_amd64.whl"),
            file("nvidia_cuda_runtime-13.1.80-py3-none-manylinux_2_27_x86_64.whl"),
            file("nvidia_cuda_runtime-13.0.99rc1-py3-none-manylinux_2_27_x86_64.whl"),
            file("nvidia_cuda_runtime-13.0.101.tar.gz"),
        ]);
        let pick = |series| choose("nvidia-cuda-runtime", Pin::Series(series), &page, "x86_64");
        assert_eq!(pick("13.0").unwrap().version, "13.0.96");
        let err = pick("12.8").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no manylinux x86_64 wheel of nvidia-cuda-runtime==12.8.* in the index (files: no matching version)"
        );
    }

    #[test]
    fn json_pages_are_read_with_their_yanked_and_sizes() {
        // Shaped like https://pypi.org/simple/onnxruntime/ with
        // Accept: application/vnd.pypi.simple.v1+json (PEP 691, PEP 700's size).
        let body = br#"{"meta":{"api-version":"1.4","_last-serial":1},"name":"onnxruntime",
            "versions":["1.31.0","1.31.1"],
            "files":[
             {"filename":"onnxruntime-1.31.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
              "url":"https://files.pythonhosted.org/packages/aa/bb/x.whl","hashes":{"sha256":"0f0f"},
              "requires-python":">=3.10","size":23000000,"upload-time":"2026-01-01T00:00:00Z","yanked":false},
             {"filename":"onnxruntime-1.31.0-cp312-cp312-manylinux_2_27_x86_64.whl",
              "url":"../../packages/y.whl","hashes":{},"yanked":"broken build"}]}"#;
        let page = parse_json(body, "https://pypi.org/simple/onnxruntime/").unwrap();
        assert_eq!(page.files[0].size, Some(23_000_000));
        assert!(!page.files[0].yanked && page.files[1].yanked);
        assert_eq!(page.files[1].hashes.sha256, None);
        let got = choose("onnxruntime", Pin::Exact("1.31.1"), &page, "x86_64").unwrap();
        assert_eq!((got.version.as_str(), got.sha256), ("1.31.1", "0f0f"));

        let v2 = parse_json(
            br#"{"meta":{"api-version":"2.0"},"files":[]}"#,
            "https://i/x/",
        )
        .unwrap_err();
        assert_eq!(
            v2.to_string(),
            "https://i/x/: Simple API version 2.0 (this vlguard-ort reads 1.x)"
        );
        let html = parse_json(b"<html></html>", "https://i/x/").unwrap_err();
        assert!(
            html.to_string()
                .starts_with("https://i/x/: not a Simple API (PEP 691) JSON page: "),
            "{html}"
        );
    }

    #[test]
    fn html_pages_give_links_with_digests_and_yanked_marks() {
        let sha = "0F".repeat(32);
        let html = format!(
            r#"<html><body><abbr>x</abbr><a href="/files/tensorrt_cu13_libs-10.13.3.9-py2.py3-none-manylinux_2_28_x86_64.whl#sha256={sha}" data-requires-python="&gt;=3.8">x</a>
            <a data-yanked="" href="/files/tensorrt_cu13_libs-10.14.0.1-py2.py3-none-manylinux_2_28_x86_64.whl#sha256={sha}">yanked</a>
            <a href='https://o/tensorrt_cu13_libs-10.15.0.1-py2.py3-none-manylinux_2_28_x86_64.whl?a=1&amp;b=2'>no digest</a></body></html>"#
        );
        let page = parse_html(&html);
        assert_eq!(page.files.len(), 3);
        assert_eq!(
            page.files[2].url,
            "https://o/tensorrt_cu13_libs-10.15.0.1-py2.py3-none-manylinux_2_28_x86_64.whl?a=1&b=2"
        );
        let got = choose("tensorrt-cu13-libs", Pin::Series("10"), &page, "x86_64").unwrap();
        assert_eq!(
            got.version, "10.13.3.9",
            "yanked and unverifiable files are passed over"
        );
        assert_eq!(got.sha256, "0f".repeat(32));
        assert_eq!(
            got.file.url,
            "/files/tensorrt_cu13_libs-10.13.3.9-py2.py3-none-manylinux_2_28_x86_64.whl"
        );
    }
}
