//! `vlguard-ort reproduce`: a small table on the CPU from local checkpoints (the demo model
//! source models/demo-src and the llava-hf fixture of tests/data/checkpoints) on the mini
//! test set, killed mid-way and rerun; a model that cannot load reported while the others
//! finish; `--devices` and `--delete-models-after`; the judge stage against a local chat
//! server; `table2` and `--dry-run` against the local Hub stand-in (tests/hub_server),
//! never the real Hub.

// Both helpers include tests/common/http_head.rs as a module of their own: two copies of
// one small parser, each used by its own server only.
#[allow(clippy::duplicate_mod)]
#[path = "common/chat_server.rs"]
mod chat_server;
mod common;
mod hub_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chat_server::{completion, ChatServer};
use common::*;
use hub_server::{model_hub, Faults, COMMIT};

const SUBSETS: [&str; 3] = ["unsafes", "safe_unsafes", "safe_safes"];

fn demo_src(name: &str) -> PathBuf {
    repo().join("models/demo-src").join(name)
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/data/checkpoints").join(name)
}

/// `vlguard-ort reproduce MODELS ARGS` in `cwd` on the mini test set, CPU, no judge.
fn reproduce(cwd: &Path, models: &str, args: &[&str]) -> Command {
    let mut cmd = bin();
    cmd.current_dir(cwd)
        .env_remove("VLGUARD_JUDGE_MODEL")
        .env_remove("HF_TOKEN")
        .args(["reproduce", models, "--ep", "cpu", "--quiet"])
        .arg("--meta")
        .arg(mini_meta())
        .arg("--images")
        .arg(mini_images())
        .args(args);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn failed(out: &Output) -> (String, String) {
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    (text(&out.stdout), text(&out.stderr))
}

/// The model entries: the demo model (original layout + CLIP folder, compared with the
/// paper's LLaVA-v1.5-7B row), a folder whose config cannot load, the llava-hf fixture.
fn models_toml(dir: &Path) -> String {
    let broken = dir.join("broken-ckpt");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("config.json"), "{ not json").unwrap();
    let toml = format!(
        "[[model]]\nname = \"demo\"\ncheckpoint = {:?}\nvision_tower = {:?}\ndtype = \"fp32\"\n\
         paper = \"LLaVA-v1.5-7B\"\n\n\
         [[model]]\nname = \"broken\"\ncheckpoint = \"broken-ckpt\"\n\n\
         [[model]]\nname = \"hf\"\ncheckpoint = {:?}\ndtype = \"fp32\"\n",
        demo_src("llava-v1.5-tiny"),
        demo_src("clip-vit-tiny-patch14-336"),
        fixture("llava-hf"),
    );
    std::fs::write(dir.join("models.toml"), toml).unwrap();
    "models.toml".into()
}

/// `manifest.json`'s (inode, mtime): a new export replaces the folder, so both change.
fn export_id(model: &Path) -> Option<(u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(model.join("manifest.json")).ok()?;
    Some((meta.ino(), meta.modified().unwrap()))
}

/// Killed (SIGKILL) once the first model has journaled an answer, then rerun: the table
/// ends with every answers file byte-identical to a separate `export` + `run` of that
/// model, the demo model exported once (its folder untouched by the rerun), no journaled
/// sample answered again, the broken entry reported as failed (exit 1) while the models
/// after it finish, and reproduce.json / the leaderboard recording what repeats the table.
#[test]
fn killed_table_resumes_to_the_answers_of_separate_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let models = models_toml(dir);
    let args = ["--limit", "4"];
    let journal = dir.join("results/unsafes/demo.journal.jsonl");
    let mut child = reproduce(dir, &models, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&journal).map_or(0, |t| t.lines().count()) < 2 {
        assert!(child.try_wait().unwrap().is_none(), "ended before the kill");
        assert!(Instant::now() < deadline, "no answer journaled in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Finished lines after the header (a kill may cut the last one short).
    let before = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.ends_with('}'))
        .count();
    assert!(
        before < 4,
        "the first model finished before the kill: nothing tested"
    );
    let demo_export = export_id(&dir.join("models/demo")).expect("demo exported before the kill");
    assert!(!dir.join("models/hf").exists());

    let status = run_ok(reproduce(dir, &models, &args).arg("--dry-run"));
    let table = text(&status.stdout);
    assert!(table.contains(&format!("partial {before}/4")), "{table}");

    let (stdout, stderr) = failed(&reproduce(dir, &models, &args).output().unwrap());
    assert_eq!(export_id(&dir.join("models/demo")), Some(demo_export));
    assert!(!stderr.contains("exported models/demo"), "{stderr}");
    assert_eq!(stderr.matches("exported models/hf").count(), 1, "{stderr}");
    let unsafes = json(&dir.join("results/unsafes/demo.run.json"));
    assert_eq!(unsafes["n_resumed"], before as u64, "{stderr}");
    assert_eq!(unsafes["n_generated"], (4 - before) as u64);
    assert!(stdout.contains("broken failed: weights:"), "{stdout}");

    // The same answers as each model exported and run on its own.
    let alone = dir.join("alone");
    for (name, checkpoint, tower) in [
        (
            "demo",
            demo_src("llava-v1.5-tiny"),
            Some(demo_src("clip-vit-tiny-patch14-336")),
        ),
        ("hf", fixture("llava-hf"), None),
    ] {
        let model = alone.join("models").join(name);
        let mut export = bin();
        export
            .args(["export", "--dtype", "fp32", "--checkpoint"])
            .arg(&checkpoint)
            .arg("--out")
            .arg(&model);
        if let Some(tower) = tower {
            export.arg("--vision-tower").arg(tower);
        }
        run_ok(&mut export);
        run_ok(
            bin()
                .args(["run", "--subset", "all", "--ep", "cpu", "--limit", "4"])
                .args(["--engine", name, "--model"])
                .arg(&model)
                .arg("--meta")
                .arg(mini_meta())
                .arg("--images")
                .arg(mini_images())
                .arg("--out")
                .arg(alone.join("results")),
        );
        for subset in SUBSETS {
            let file = format!("{subset}/{name}.json");
            let ours = std::fs::read(dir.join("results").join(&file)).unwrap();
            let theirs = std::fs::read(alone.join("results").join(&file)).unwrap();
            assert!(
                ours == theirs,
                "{file} differs from a separate export + run"
            );
        }
    }

    let summary = json(&dir.join("results/reproduce.json"));
    assert_eq!(summary["tool_version"], env!("CARGO_PKG_VERSION"));
    assert!(summary["onnxruntime"]["build"]
        .as_str()
        .is_some_and(|b| b.contains("ORT Build Info")));
    let version = summary["onnxruntime"]["version"].as_str().unwrap();
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "ONNX Runtime version {version:?}"
    );
    assert_eq!(summary["dataset"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(summary["flags"]["limit"], 4);
    let by_name = |name: &str| -> serde_json::Value {
        summary["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone()
    };
    for name in ["demo", "hf"] {
        let m = by_name(name);
        assert_eq!(m["status"], "done", "{m}");
        let manifest = std::fs::read(dir.join("models").join(name).join("manifest.json")).unwrap();
        assert_eq!(
            m["model_manifest_sha256"],
            vlguard_ort::util::sha256_hex(&manifest)
        );
        assert_eq!(m["source"]["kind"], "local");
        assert_eq!(m["execution_providers"]["decoder"], "CPUExecutionProvider");
    }
    assert_eq!(
        by_name("demo")["exported_now"],
        false,
        "kept from the first run"
    );
    assert_eq!(by_name("hf")["exported_now"], true);
    let broken = by_name("broken");
    assert_eq!(broken["status"], "failed");
    assert!(broken["error"].as_str().unwrap().contains("config.json"));

    // The demo row beside the paper's LLaVA-v1.5-7B: 4 samples give a wide interval.
    let comparison = &summary["paper_comparison"];
    assert_eq!(comparison.as_array().unwrap().len(), 2, "{comparison}");
    assert_eq!(comparison[0]["paper_asr"], 72.62);
    let [lo, hi] = [0, 1].map(|i| comparison[0]["ci95"][i].as_f64().unwrap());
    assert_eq!(comparison[0]["inside_ci95"], lo <= 72.62 && 72.62 <= hi);
    let board = std::fs::read_to_string(dir.join("results/leaderboard.md")).unwrap();
    assert!(
        board.contains("| demo (LLaVA-v1.5-7B) | unsafes |"),
        "{board}"
    );
    let page = std::fs::read_to_string(dir.join("results/leaderboard.html")).unwrap();
    assert!(page.contains("<td>demo (LLaVA-v1.5-7B)</td>"), "{page}");
    assert!(json(&dir.join("results/leaderboard.json"))["paper_comparison"].is_array());
}

/// Two devices take one model each at the same time (the CPU provider stands in for the
/// GPUs); `--delete-models-after` removes each model folder once done, and a rerun then
/// needs no model: nothing to export, exit 0.
#[test]
fn devices_share_the_models_and_finished_models_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let toml = format!(
        "[[model]]\nname = \"a\"\ncheckpoint = {:?}\ndtype = \"fp32\"\n\n\
         [[model]]\nname = \"b\"\ncheckpoint = {:?}\ndtype = \"fp32\"\n",
        fixture("llava-hf"),
        fixture("llava-hf-new-keys"),
    );
    std::fs::write(dir.join("m.toml"), toml).unwrap();
    let args = [
        "--limit",
        "1",
        "--subset",
        "unsafes",
        "--devices",
        "0,1",
        "--delete-models-after",
    ];
    run_ok(&mut reproduce(dir, "m.toml", &args));
    let summary = json(&dir.join("results/reproduce.json"));
    let mut devices: Vec<i64> = summary["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["device"].as_i64().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, [0, 1]);
    assert!(!dir.join("models/a").exists() && !dir.join("models/b").exists());
    let again = run_ok(&mut reproduce(dir, "m.toml", &args));
    assert!(!text(&again.stderr).contains("exported"));
    assert!(text(&again.stdout).contains("not needed"));
}

/// `--dry-run` of table2 lists the fourteen models pending and asks the Hub nothing;
/// `table2` prepares what the Hub has (pinned to its commit), reports each model missing
/// there as failed, and a second dry run shows the three done.
#[test]
fn table2_against_the_hub_stand_in() {
    // It serves three of table2's repos (and the base and tower they name).
    let server = model_hub(Faults::default());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let with_hub = |args: &[&str]| {
        let mut cmd = reproduce(dir, "table2", args);
        cmd.env("HF_ENDPOINT", &server.hub_url);
        cmd
    };
    let dry = run_ok(&mut with_hub(&["--dry-run", "--subset", "unsafes"]));
    let table = text(&dry.stdout);
    assert_eq!(table.lines().count(), 15, "{table}");
    for name in vlguard_ort::reproduce::plan::TABLE2 {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains("pending")),
            "{name}: {table}"
        );
    }
    assert!(server.log().is_empty(), "a dry run asks the Hub nothing");

    let args = [
        "--subset",
        "unsafes",
        "--limit",
        "2",
        "--dtype",
        "fp32",
        "--attempts",
        "1",
    ];
    let (stdout, _) = failed(&with_hub(&args).output().unwrap());
    let served = [
        "llava15-7b-mixed",
        "llava15-7b-mixed-lora",
        "llava15-13b-mixed-lora",
    ];
    let summary = json(&dir.join("results/reproduce.json"));
    for m in summary["models"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        if served.contains(&name) {
            assert_eq!(m["status"], "done", "{m}");
            assert_eq!(m["source"]["commit"], COMMIT);
        } else {
            assert_eq!(m["status"], "failed", "{m}");
            assert!(
                stdout.contains(&format!("{name} failed: weights:")),
                "{stdout}"
            );
        }
    }
    let comparison = summary["paper_comparison"].as_array().unwrap();
    assert!(comparison
        .iter()
        .any(|c| c["engine"] == "llava15-7b-mixed" && c["paper_row"] == "LLaVA-v1.5-7B-Mixed"));

    server.clear_log();
    let table = text(
        &run_ok(&mut with_hub(&[
            "--dry-run",
            "--subset",
            "unsafes",
            "--limit",
            "2",
        ]))
        .stdout,
    );
    for name in served {
        let line = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        assert!(!line.contains("pending"), "{table}");
    }
    assert!(server.log().is_empty());
}

/// With a judge model set, each model's safe_safes answers are judged for helpfulness and,
/// with --judge-harm, its unsafes and safe_unsafes answers for harm (here by a local chat
/// server that prefers the model's answer and calls every answer unsafe); both reach the
/// leaderboard, and a rerun asks the judge nothing again.
#[test]
fn the_judge_runs_when_configured_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A reference answer for each safe_safes image of the mini test set, in file order.
    let meta = json(&mini_meta());
    let reference: Vec<serde_json::Value> = meta
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["safe"] == true)
        .map(|e| serde_json::json!({"image": e["image"], "instruction": "q", "response": "r"}))
        .collect();
    std::fs::write(
        dir.join("reference.json"),
        serde_json::Value::Array(reference.clone()).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("m.toml"),
        format!(
            "[[model]]\nname = \"hf\"\ncheckpoint = {:?}\ndtype = \"fp32\"\n",
            fixture("llava-hf")
        ),
    )
    .unwrap();
    // The helpfulness judge asks for 2 tokens (the reference's), the harm judge for more.
    let server = ChatServer::start(|req, _| {
        completion(if req.json()["max_tokens"] == 2 {
            "m"
        } else {
            "unsafe"
        })
    });
    // One helpfulness request per safe_safes item, one harm request per unsafes and per
    // safe_unsafes answer: every entry of the mini test set once.
    let requests = reference.len() + meta.as_array().unwrap().len();
    let with_judge = || {
        let mut cmd = reproduce(dir, "m.toml", &["--judge-harm"]);
        cmd.args([
            "--judge-model",
            "judge-x",
            "--judge-reference",
            "reference.json",
        ])
        .args(["--judge-base-url", &server.base_url])
        .env("OPENAI_API_KEY", "sk-test");
        for proxy in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            cmd.env_remove(proxy);
        }
        cmd
    };
    let out = run_ok(&mut with_judge());
    assert!(
        text(&out.stdout).contains("Winning rate of hf: 1.0"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(server.requests().len(), requests);
    let board = json(&dir.join("results/leaderboard.json"));
    let row = board["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["engine"] == "hf")
        .unwrap()
        .clone();
    assert_eq!(row["helpfulness"]["win_rate"], 100.0, "{row}");
    let judged = row["judged_asr"].as_array().unwrap();
    assert_eq!(judged.len(), 2, "{row}");
    assert!(judged.iter().all(|j| j["asr"] == 100.0), "{row}");
    let again = run_ok(&mut with_judge());
    assert_eq!(server.requests().len(), requests, "the rerun asked again");
    let table = text(&again.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("hf ") && l.trim_end().ends_with("done")),
        "{table}"
    );
}

/// A kept model folder exported otherwise than its entry now asks (here fp32, then fp16)
/// is not used for the entry's answers: the model fails with the reason and the remedy.
#[test]
fn a_kept_model_of_another_dtype_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let entry = |dtype: &str| {
        let toml = format!(
            "[[model]]\nname = \"hf\"\ncheckpoint = {:?}\ndtype = \"{dtype}\"\n",
            fixture("llava-hf")
        );
        std::fs::write(dir.join("m.toml"), toml).unwrap();
    };
    let args = ["--limit", "1", "--subset", "unsafes"];
    entry("fp32");
    run_ok(&mut reproduce(dir, "m.toml", &args));
    entry("fp16");
    let more = ["--limit", "2", "--subset", "unsafes"];
    let (stdout, _) = failed(&reproduce(dir, "m.toml", &more).output().unwrap());
    assert!(
        stdout.contains("hf failed: weights: models/hf was exported as fp32 with the plain decoder, the entry asks for fp16"),
        "{stdout}"
    );
}
