//! `vlguard-ort prepare` against the local Hub stand-in (tests/hub_server): engine names and
//! repo ids resolved, the CLIP tower fetched from the config's `mm_vision_tower` (one
//! weights file of it), LoRA repos taken as adapters with their base fetched or as the
//! full checkpoints they are, a dropped download resumed by a rerun, and the model folder
//! name becoming `run`'s engine name. Never the real Hub.
//!
//! Served files: models/demo-src (the golden tiny LLaVA and CLIP) and tests/data/checkpoints
//! (see its README), under the real repo ids they stand in for.

mod common;
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use hub_server::{model_hub as hub, Faults, HubServer, Repo, RepoFile, COMMIT};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/data/checkpoints").join(name)
}

fn demo(name: &str) -> PathBuf {
    repo().join("models/demo-src").join(name)
}

/// `vlguard-ort prepare ARGS` in `cwd` against `server`, fp32 (the golden answers are fp32).
fn prepare(server: &HubServer, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.current_dir(cwd)
        .env("HF_ENDPOINT", &server.hub_url)
        .env_remove("HF_TOKEN")
        .args(["prepare", "--quiet", "--dtype", "fp32"])
        .args(args);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A logged request path without its query (the CDN's signed URLs carry one).
fn file_path(path: &str) -> &str {
    path.split('?').next().unwrap_or_default()
}

/// Names of the files downloaded from `repo` since the log was cleared.
fn downloaded(server: &HubServer, repo: &str) -> Vec<String> {
    server
        .downloads()
        .iter()
        .filter(|l| l.path.contains(&format!("/{repo}/")))
        .map(|l| {
            file_path(&l.path)
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn data(model: &Path, file: &str) -> Vec<u8> {
    std::fs::read(model.join(file)).unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

/// `prepare llava15-7b-mixed`: the repo of that engine name and the CLIP tower its config
/// names are fetched (the tower's safetensors only), the model lands in
/// models/llava15-7b-mixed, and `run` with no --engine writes
/// results/unsafes/llava15-7b-mixed.json, here the reference's bytes (the served weights
/// are the golden ones). A second prepare keeps the model and downloads nothing.
#[test]
fn engine_name_to_results_file() {
    let server = hub(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(&mut prepare(&server, tmp.path(), &["llava15-7b-mixed"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("models/llava15-7b-mixed"), "{stdout}");
    let mut tower = downloaded(&server, "openai/clip-vit-large-patch14-336");
    tower.sort();
    assert_eq!(
        tower,
        [
            "config.json",
            "model.safetensors",
            "preprocessor_config.json"
        ]
    );
    let shards = downloaded(&server, "ys-zong/llava-v1.5-7b-Mixed");
    assert!(
        shards
            .iter()
            .any(|f| f == "pytorch_model-00002-of-00002.bin"),
        "{shards:?}"
    );
    // Only what the export reads: no generation or tokenizer configs.
    assert!(
        !shards.iter().any(|f| f == "generation_config.json"),
        "{shards:?}"
    );

    run_ok(
        bin()
            .current_dir(tmp.path())
            .args([
                "run",
                "--model",
                "models/llava15-7b-mixed",
                "--subset",
                "unsafes",
            ])
            .args(["--ep", "cpu", "--batch-size", "4", "--out", "results"])
            .arg("--meta")
            .arg(mini_meta())
            .arg("--images")
            .arg(mini_images()),
    );
    let got = std::fs::read_to_string(tmp.path().join("results/unsafes/llava15-7b-mixed.json"))
        .expect("results named after the model folder");
    let want = std::fs::read_to_string(repo().join("tests/data/golden-dev/reference/unsafes.json"))
        .unwrap();
    assert!(got == want, "answers differ from the reference");

    server.clear_log();
    let again = run_ok(&mut prepare(&server, tmp.path(), &["llava15-7b-mixed"]));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exported"));
    assert!(server.downloads().is_empty());
}

/// A connection dropped in the middle of a shard fails the first prepare (one try
/// allowed) and leaves no model; the rerun asks only for the rest of that shard
/// (`Range`) and finishes.
#[test]
fn interrupted_prepare_resumes() {
    let shard = "pytorch_model-00001-of-00002.bin";
    let faults = Faults {
        drop_after: [(shard.to_string(), 100_000)].into(),
        ..Faults::default()
    };
    let server = hub(faults);
    let tmp = tempfile::tempdir().unwrap();
    let first = prepare(
        &server,
        tmp.path(),
        &["llava15-7b-mixed", "--attempts", "1"],
    )
    .output()
    .unwrap();
    assert_eq!(first.status.code(), Some(2), "{}", stderr(&first));
    assert!(stderr(&first).contains("rerun"), "{}", stderr(&first));
    assert!(!tmp.path().join("models/llava15-7b-mixed").exists());

    server.clear_log();
    run_ok(&mut prepare(
        &server,
        tmp.path(),
        &["llava15-7b-mixed", "--attempts", "1"],
    ));
    let resumed: Vec<_> = server
        .downloads()
        .into_iter()
        .filter(|l| file_path(&l.path).ends_with(shard))
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].range.as_deref(), Some("bytes=100000-"));
    assert!(tmp
        .path()
        .join("models/llava15-7b-mixed/manifest.json")
        .is_file());
}

/// A "-lora" repo holding an adapter: its base (adapter_config.json's lmsys/vicuna-7b-v1.5)
/// and tower are fetched and the merge equals PEFT's (the merged fixture's graphs). A
/// "-lora" repo holding merged full weights: exported as the checkpoint it is, no base.
#[test]
fn lora_repos_as_adapter_or_full_checkpoint() {
    let server = hub(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&mut prepare(
        &server,
        tmp.path(),
        &["ys-zong/llava-v1.5-7b-Mixed-lora"],
    ));
    assert!(!downloaded(&server, "lmsys/vicuna-7b-v1.5").is_empty());
    let model = tmp.path().join("models/llava15-7b-mixed-lora");
    let merged = tmp.path().join("merged");
    run_ok(
        bin()
            .args(["export", "--checkpoint"])
            .arg(fixture("llava-lora-merged"))
            .arg("--vision-tower")
            .arg(demo("clip-vit-tiny-patch14-336"))
            .arg("--out")
            .arg(&merged),
    );
    assert!(data(&model, "decoder.onnx.data") == data(&merged, "decoder.onnx.data"));
    assert!(data(&model, "projector.onnx.data") == data(&merged, "projector.onnx.data"));

    server.clear_log();
    run_ok(&mut prepare(
        &server,
        tmp.path(),
        &["llava15-13b-mixed-lora"],
    ));
    assert!(downloaded(&server, "lmsys/vicuna-7b-v1.5").is_empty());
    let full = tmp.path().join("models/llava15-13b-mixed-lora");
    let shards = tmp.path().join("shards");
    run_ok(
        bin()
            .args(["export", "--checkpoint"])
            .arg(demo("llava-v1.5-tiny"))
            .arg("--vision-tower")
            .arg(demo("clip-vit-tiny-patch14-336"))
            .arg("--out")
            .arg(&shards),
    );
    assert!(data(&full, "decoder.onnx.data") == data(&shards, "decoder.onnx.data"));
}

/// Any repo id: a PEFT adapter on a llava-hf base. The base comes from the Hub, the tower
/// from inside it (no CLIP repo is asked for), the folder is named after the repo.
#[test]
fn peft_adapter_repo_on_a_llava_hf_base() {
    let server = hub(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    run_ok(&mut prepare(&server, tmp.path(), &["tester/hf-lora"]));
    assert!(!downloaded(&server, "llava-hf/llava-1.5-7b-hf").is_empty());
    assert!(
        !server.log().iter().any(|l| l.path.contains("clip-vit")),
        "no tower repo for llava-hf"
    );
    let model = tmp.path().join("models/hf-lora");
    let merged = tmp.path().join("merged");
    run_ok(
        bin()
            .args(["export", "--checkpoint"])
            .arg(fixture("hf-lora-merged"))
            .arg("--out")
            .arg(&merged),
    );
    for file in ["vision.onnx.data", "decoder.onnx.data"] {
        assert!(data(&model, file) == data(&merged, file), "{file}");
    }
}

#[test]
fn list_and_unknown_names() {
    let out = run_ok(bin().args(["prepare", "--list"]));
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "llava15-7b-mixed",
        "ys-zong/llava-v1.5-7b-Mixed",
        "llava15-13b-clean-lora",
    ] {
        assert!(text.contains(want), "{text}");
    }
    let out = bin().args(["prepare", "llava-7b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("prepare --list"), "{}", stderr(&out));
}

/// Issue 28: prepare reads a weights index with the exporter's reader, so an index naming a
/// shard outside the repo folder (`../x.safetensors`, an absolute path) is refused before
/// anything it names is fetched, with the exporter's message naming the index file. Its
/// own string-keyed copy let such names through to the download.
#[test]
fn issue28_unsafe_shard_name_refused() {
    let config = std::fs::read(demo("llava-v1.5-tiny").join("config.json")).unwrap();
    let file = |path: &str, bytes: Vec<u8>| RepoFile {
        path: path.to_string(),
        bytes,
        lfs: false,
    };
    let shards = ["../x.safetensors", "/tmp/x.safetensors"];
    let repos = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let index = format!(r#"{{"weight_map": {{"lm_head.weight": "{shard}"}}}}"#);
            Repo {
                kind: "models",
                id: format!("tester/unsafe-{i}"),
                commit: COMMIT.into(),
                files: vec![
                    file("config.json", config.clone()),
                    file("model.safetensors.index.json", index.into_bytes()),
                ],
            }
        })
        .collect();
    let server = HubServer::start(repos, vec![], Faults::default());
    for (i, shard) in shards.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = format!("tester/unsafe-{i}");
        let out = prepare(&server, tmp.path(), &[&repo]).output().unwrap();
        assert!(!out.status.success(), "{shard}: prepare succeeded");
        let err = stderr(&out);
        let index = Path::new("checkpoints")
            .join(&repo)
            .join("model.safetensors.index.json");
        let want = format!(
            "{} is not a valid shard index: shard name `{shard}` is not a plain file name",
            index.display()
        );
        assert!(err.contains(&want), "{shard}: {err}");
        assert!(
            !server
                .log()
                .iter()
                .any(|l| l.path.contains("x.safetensors")),
            "{shard}: the unsafe shard was asked for"
        );
        assert!(!tmp
            .path()
            .join("models")
            .join(format!("unsafe-{i}"))
            .exists());
    }
}
