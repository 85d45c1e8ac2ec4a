//! `fetch dataset` against a local Hub stand-in (tests/hub_server): the real test.json (when
//! fetched into data/VLGuard) and reference answers (tests/data/vlguard) with a zip of
//! placeholder images unpack to the layout `run` reads, a rerun downloads nothing, and
//! unsafe or corrupt archives are refused without leaving a half-unpacked tree. Never the
//! real Hub or GitHub.

mod hub_server;
#[path = "common/test_data.rs"]
mod test_data;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hub_server::{Faults, HubServer, Repo, RepoFile};
use vlguard_ort::fetch::{self, DatasetRequest, Error, Hub, Policy, UnzipLimits};
use zip::write::SimpleFileOptions;

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";
const REPO: &str = "ys-zong/VLGuard";
const RAW: &str = "/ys-zong/VLGuard/main/data/gpt4_safe_safes.json";

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A zip of `(name, bytes)` entries, deflated.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(*name, opts).expect("start entry");
        w.write_all(bytes).expect("write entry");
    }
    w.finish().expect("finish zip").into_inner()
}

fn policy() -> Policy {
    Policy {
        attempts: 2,
        backoff: Duration::from_millis(5),
        backoff_max: Duration::from_millis(10),
        progress: false,
        ..Policy::default()
    }
}

fn dataset_repo(test_json: Vec<u8>, test_zip: Vec<u8>) -> Repo {
    Repo {
        kind: "datasets",
        id: REPO.into(),
        commit: COMMIT.into(),
        files: vec![
            RepoFile {
                path: "README.md".into(),
                bytes: b"# VLGuard".to_vec(),
                lfs: false,
            },
            RepoFile {
                path: "test.json".into(),
                bytes: test_json,
                lfs: false,
            },
            RepoFile {
                path: "test.zip".into(),
                bytes: test_zip,
                lfs: true,
            },
        ],
    }
}

fn request(server: &HubServer, to: &Path) -> DatasetRequest {
    DatasetRequest {
        repo: REPO.into(),
        revision: "main".into(),
        to: to.to_path_buf(),
        with_train: false,
        reference_url: format!("{}{RAW}", server.hub_url),
    }
}

/// A small dataset: two safe images and one unsafe, and the matching reference answers.
fn small_json() -> (Vec<u8>, Vec<u8>) {
    let test = serde_json::json!([
        {"id": "a", "image": "bad_ads/a.png", "safe": true, "instr-resp": []},
        {"id": "b", "image": "privacy/b.jpg", "safe": false, "instr-resp": []},
        {"id": "c", "image": "bad_ads/c.png", "safe": true, "instr-resp": []},
    ]);
    let reference = serde_json::json!([
        {"image": "bad_ads/a.png", "instruction": "q", "response": "r"},
        {"image": "bad_ads/c.png", "instruction": "q", "response": "r"},
    ]);
    (
        test.to_string().into_bytes(),
        reference.to_string().into_bytes(),
    )
}

fn entries_of(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn clean_fetch_unpacks_the_run_layout_then_rerun_downloads_nothing() {
    let Some(test_json) = test_data::fetched_test_json() else {
        return;
    };
    let test_json = read(&test_json);
    let reference = read(&test_data::repo_file(
        "tests/data/vlguard/gpt4_safe_safes.json",
    ));
    let images: Vec<String> = serde_json::from_slice::<serde_json::Value>(&test_json)
        .expect("test.json parses")
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["image"].as_str().expect("image").to_string())
        .collect();
    assert_eq!(images.len(), 1000); // REFERENCE.md: 1000 entries
                                    // The archive has a top-level test/ folder, stripped so images land in to/test/<image>.
    let contents: Vec<(String, Vec<u8>)> = images
        .iter()
        .map(|i| (format!("test/{i}"), i.as_bytes().to_vec()))
        .collect();
    let entries: Vec<(&str, &[u8])> = contents
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let server = HubServer::start(
        vec![dataset_repo(test_json.clone(), zip_of(&entries))],
        vec![(RAW.to_string(), reference.clone())],
        Faults::default(),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let to = tmp.path().join("data/VLGuard");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");

    let out = fetch::fetch_dataset(&hub, &request(&server, &to)).expect("clean fetch");
    assert_eq!(out.commit, COMMIT);
    assert_eq!(
        out.downloaded,
        vec!["test.json".to_string(), "test.zip".to_string()]
    );
    assert_eq!(out.unpacked, vec!["test.zip".to_string()]);
    assert!(out.reference_downloaded);
    assert!(std::fs::read(to.join("test.json")).expect("test.json") == test_json);
    assert!(std::fs::read(to.join("gpt4_safe_safes.json")).expect("reference") == reference);
    for image in &images {
        let got = std::fs::read(to.join("test").join(image)).expect("image unpacked");
        assert_eq!(got, image.as_bytes());
    }
    assert!(!to.join("test/test").exists(), "top folder not stripped");
    // Nothing else beside the dataset: no staging folder, no partial file.
    assert_eq!(
        entries_of(&to),
        vec![
            ".fetch-state.json",
            "gpt4_safe_safes.json",
            "test",
            "test.json",
            "test.zip"
        ]
    );

    server.clear_log();
    let again = fetch::fetch_dataset(&hub, &request(&server, &to)).expect("rerun");
    assert!(again.downloaded.is_empty() && again.unpacked.is_empty());
    assert!(!again.reference_downloaded);
    assert_eq!(again.verified.len(), 2);
    let gets: Vec<_> = server
        .log()
        .into_iter()
        .filter(|l| l.method == "GET")
        .collect();
    // Only the file list is fetched again; files are checked with HEAD.
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(gets[0]
        .path
        .starts_with("/api/datasets/ys-zong/VLGuard/revision/main"));
}

/// A Hub stand-in serving the small test.json, its reference answers and `zip` as the
/// image archive, and a fresh folder to fetch the dataset into.
struct SmallDataset {
    server: HubServer,
    hub: Hub,
    tmp: tempfile::TempDir,
    to: PathBuf,
}

impl SmallDataset {
    fn start(zip: Vec<u8>) -> SmallDataset {
        let (test_json, reference) = small_json();
        let server = HubServer::start(
            vec![dataset_repo(test_json, zip)],
            vec![(RAW.to_string(), reference)],
            Faults::default(),
        );
        let tmp = tempfile::tempdir().expect("tempdir");
        let to = tmp.path().join("VLGuard");
        let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
        SmallDataset {
            server,
            hub,
            tmp,
            to,
        }
    }

    fn fetch(&self) -> Result<fetch::Outcome, Error> {
        fetch::fetch_dataset(&self.hub, &request(&self.server, &self.to))
    }
}

fn fetch_small_with_zip(
    zip: Vec<u8>,
) -> (tempfile::TempDir, PathBuf, Result<fetch::Outcome, Error>) {
    let small = SmallDataset::start(zip);
    let result = small.fetch();
    (small.tmp, small.to, result)
}

#[test]
fn archive_without_top_folder_unpacks_the_same_and_a_lost_image_is_restored() {
    let zip = zip_of(&[
        ("bad_ads/a.png", b"A"),
        ("privacy/b.jpg", b"B"),
        ("bad_ads/c.png", b"C"),
        ("__MACOSX/bad_ads/._a.png", b"junk"),
    ]);
    let small = SmallDataset::start(zip);
    let to = &small.to;
    small.fetch().expect("fetch");
    assert_eq!(
        std::fs::read(to.join("test/privacy/b.jpg")).expect("image"),
        b"B"
    );
    assert!(!to.join("test/__MACOSX").exists());

    // An image lost since: the rerun unpacks the kept archive again, downloads nothing.
    std::fs::remove_file(to.join("test/privacy/b.jpg")).expect("remove image");
    let again = small.fetch().expect("rerun");
    assert!(again.downloaded.is_empty(), "{:?}", again.downloaded);
    assert_eq!(again.unpacked, vec!["test.zip".to_string()]);
    assert_eq!(
        std::fs::read(to.join("test/privacy/b.jpg")).expect("image"),
        b"B"
    );
}

#[test]
fn zip_with_parent_dir_entries_is_refused() {
    let zip = zip_of(&[
        ("test/bad_ads/a.png", b"A"),
        ("test/../../evil.txt", b"pwned"),
        ("test/bad_ads/c.png", b"C"),
    ]);
    let (tmp, to, result) = fetch_small_with_zip(zip);
    let err = result.expect_err("zip-slip archive");
    assert!(
        matches!(&err, Error::UnsafeArchive { entry, .. } if entry == "test/../../evil.txt"),
        "{err}"
    );
    assert!(err.to_string().contains("'..'"), "{err}");
    assert!(!tmp.path().join("evil.txt").exists());
    assert!(!to.join("test").exists(), "nothing unpacked");
    assert_eq!(
        entries_of(&to),
        vec![".fetch-state.json", "test.json", "test.zip"]
    );
}

#[test]
fn absolute_and_symlink_entries_are_refused() {
    let zip = zip_of(&[("/tmp/evil.txt", b"x")]);
    let (_tmp, to, result) = fetch_small_with_zip(zip);
    let err = result.expect_err("absolute entry");
    assert!(err.to_string().contains("absolute"), "{err}");
    assert!(!to.join("test").exists());

    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_symlink(
        "test/bad_ads/a.png",
        "/etc/passwd",
        SimpleFileOptions::default(),
    )
    .expect("symlink entry");
    let zip = w.finish().expect("zip").into_inner();
    let (_tmp, to, result) = fetch_small_with_zip(zip);
    let err = result.expect_err("symlink entry");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(!to.join("test").exists());
}

#[test]
fn corrupt_archive_is_a_clear_error_and_leaves_no_tree() {
    let a = vec![b'a'; 4000];
    let mut zip = zip_of(&[
        ("test/bad_ads/a.png", &a),
        ("test/privacy/b.jpg", b"B"),
        ("test/bad_ads/c.png", b"C"),
    ]);
    // Flip bytes inside the first entry's deflate stream (local header is 30 bytes + name).
    let data_start = 30 + "test/bad_ads/a.png".len();
    for b in &mut zip[data_start + 2..data_start + 6] {
        *b ^= 0x5a;
    }
    let (_tmp, to, result) = fetch_small_with_zip(zip);
    let err = result.expect_err("corrupt archive");
    assert!(matches!(err, Error::CorruptArchive { .. }), "{err}");
    assert!(err.to_string().contains("delete it and rerun"), "{err}");
    assert!(!to.join("test").exists());
    assert_eq!(
        entries_of(&to),
        vec![".fetch-state.json", "test.json", "test.zip"]
    );

    let (_tmp, to, result) = fetch_small_with_zip(b"PK\x03\x04 truncated".to_vec());
    assert!(
        matches!(result, Err(Error::CorruptArchive { .. })),
        "{result:?}"
    );
    assert!(!to.join("test").exists());
}

#[test]
fn unpacked_size_is_bounded() {
    // 2 MB of zeros deflate to a few KB: a small bomb, refused by a 1 MB total limit.
    let zeros = vec![0u8; 2 << 20];
    let zip = zip_of(&[("bad_ads/a.png", &zeros)]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let archive = tmp.path().join("test.zip");
    std::fs::write(&archive, &zip).expect("write zip");
    let limits = UnzipLimits {
        max_total_bytes: 1 << 20,
        ..UnzipLimits::default()
    };
    let err = fetch::unpack(&archive, &tmp.path().join("test"), &limits).expect_err("too big");
    assert!(matches!(err, Error::ArchiveTooLarge { .. }), "{err}");
    assert!(!tmp.path().join("test").exists());
    assert_eq!(entries_of(tmp.path()), vec!["test.zip"]);
    // Within the limits the same archive unpacks.
    let done =
        fetch::unpack(&archive, &tmp.path().join("test"), &UnzipLimits::default()).expect("unpack");
    assert_eq!((done.files, done.bytes), (1, 2 << 20));
}

#[test]
fn images_missing_from_the_archive_are_reported() {
    let zip = zip_of(&[("test/bad_ads/a.png", b"A"), ("test/bad_ads/c.png", b"C")]);
    let (_tmp, _to, result) = fetch_small_with_zip(zip);
    let err = result.expect_err("privacy/b.jpg is missing");
    assert!(
        matches!(&err, Error::ImagesMissing { missing: 1, total: 3, first, .. } if first == "privacy/b.jpg"),
        "{err}"
    );
}

#[test]
fn reference_answers_that_do_not_match_test_json_are_refused() {
    let (test_json, _) = small_json();
    let wrong = serde_json::json!([
        {"image": "bad_ads/c.png", "instruction": "q", "response": "r"},
        {"image": "bad_ads/a.png", "instruction": "q", "response": "r"},
    ]);
    let images = zip_of(&[
        ("test/bad_ads/a.png", b"A"),
        ("test/privacy/b.jpg", b"B"),
        ("test/bad_ads/c.png", b"C"),
    ]);
    let server = HubServer::start(
        vec![dataset_repo(test_json, images)],
        vec![(RAW.to_string(), wrong.to_string().into_bytes())],
        Faults::default(),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let err = fetch::fetch_dataset(&hub, &request(&server, tmp.path())).expect_err("wrong order");
    assert!(matches!(err, Error::BadReference { .. }), "{err}");
    assert!(err.to_string().contains("--reference-url"), "{err}");
    assert!(!tmp.path().join("gpt4_safe_safes.json").exists());
}

#[test]
fn unreachable_reference_answers_point_at_reference_url() {
    let small = SmallDataset::start(zip_of(&[
        ("test/bad_ads/a.png", b"A"),
        ("test/privacy/b.jpg", b"B"),
        ("test/bad_ads/c.png", b"C"),
    ]));
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut req = request(&small.server, &small.to);
    req.reference_url = format!("http://127.0.0.1:{port}/gpt4_safe_safes.json");
    let err = fetch::fetch_dataset(&small.hub, &req).expect_err("unreachable");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        text.contains("after 2 tries: check the network connection, or point --reference-url at a reachable mirror"),
        "{text}"
    );
    // The Hub was reachable: its setting is not the remedy.
    assert!(!text.contains("HF_ENDPOINT"), "{text}");
}

#[test]
fn missing_train_files_name_what_the_repo_has() {
    let (test_json, reference) = small_json();
    let server = HubServer::start(
        vec![dataset_repo(test_json, zip_of(&[]))],
        vec![(RAW.to_string(), reference)],
        Faults::default(),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::new(&server.hub_url, None, policy()).expect("hub");
    let mut req = request(&server, tmp.path());
    req.with_train = true;
    let err = fetch::fetch_dataset(&hub, &req).expect_err("no train files");
    let text = err.to_string();
    assert!(text.contains("has no train.json, train.zip"), "{text}");
    assert!(text.contains("README.md, test.json, test.zip"), "{text}");
}
