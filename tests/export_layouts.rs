//! Every checkpoint layout a VLGuard user holds, exported and run by the built binary on the
//! bundled mini test set (CPU, temp folders).
//!
//! Fixtures: tests/data/checkpoints (made by scripts/make_checkpoint_fixtures.py from the
//! dev golden bundle's tiny LLaVA-1.5; see the README there). Expected answers:
//! tests/data/golden-dev/reference/{subset}.json, written by the ORIGINAL reference pipeline for
//! the original-layout weights, which the llava-hf fixtures hold too (plus padded
//! vocabulary rows). For LoRA, the expected side is the checkpoint PEFT merged
//! (`merge_and_unload` in fp32, saved in the base dtype), exported as a full checkpoint.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::*;

const SUBSETS: [&str; 3] = ["unsafes", "safe_unsafes", "safe_safes"];
const GRAPH_DATA: [&str; 4] = [
    "vision.onnx.data",
    "projector.onnx.data",
    "embed.onnx.data",
    "decoder.onnx.data",
];

fn fixture(name: &str) -> PathBuf {
    let p = repo().join("tests/data/checkpoints").join(name);
    assert!(p.is_dir(), "fixture {} is missing", p.display());
    p
}

fn demo_clip() -> PathBuf {
    repo().join("models/demo-src/clip-vit-tiny-patch14-336")
}

/// `vlguard-ort export ARGS --out TMP/model` (fp32, plain decoder unless ARGS say).
fn export(args: &[OsString]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    run_ok(bin().arg("export").args(args).arg("--out").arg(&out));
    (dir, out)
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

/// The answers files `run` writes for `model` on `subset` (`all` for the three), batch 4.
fn answers(model: &Path, subset: &str) -> Vec<String> {
    let out = tempfile::tempdir().unwrap();
    run_ok(run_cmd_with(model, out.path(), subset).args(["--batch-size", "4"]));
    let subsets: Vec<&str> = if subset == "all" {
        SUBSETS.to_vec()
    } else {
        vec![subset]
    };
    subsets
        .iter()
        .map(|s| std::fs::read_to_string(out.path().join(s).join("demo.json")).unwrap())
        .collect()
}

fn assert_same_weights(a: &Path, b: &Path, what: &str) {
    for file in GRAPH_DATA {
        let (x, y) = (
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
        );
        assert!(x == y, "{what}: {file} differs");
    }
}

/// llava-hf in both key styles: answers byte-identical to the reference's on all 30
/// samples, so the layout mapping, the sparse-config defaults and the padded vocabulary
/// (1216 rows, logits over all of them) change nothing.
#[test]
fn llava_hf_in_both_key_styles_answers_like_the_reference() {
    for name in ["llava-hf", "llava-hf-new-keys"] {
        let (_dir, model) = export(&os(&[&"--checkpoint", &fixture(name)]));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["decoder"]["vocab_size"], 1216, "{name}");
        for (subset, got) in SUBSETS.iter().zip(answers(&model, "all")) {
            let want = std::fs::read_to_string(
                repo().join(format!("tests/data/golden-dev/reference/{subset}.json")),
            )
            .unwrap();
            assert!(got == want, "{name}: {subset} differs from the reference");
        }
    }
}

/// The two llava-hf key styles hold the same tensors: identical graph weights.
#[test]
fn llava_hf_key_styles_give_identical_graphs() {
    let (_a, old) = export(&os(&[&"--checkpoint", &fixture("llava-hf")]));
    let (_b, new) = export(&os(&[&"--checkpoint", &fixture("llava-hf-new-keys")]));
    assert_same_weights(&old, &new, "llava-hf vs new key style");
}

/// A ZIP64 `pytorch_model.bin` (ZIP64 extra fields in every header, ZIP64 end records; the
/// path every real 7B/13B shard takes) mixing HalfStorage and FloatStorage exports the very
/// graphs of the golden checkpoint's plain zip shards, in fp32 and in fp16.
#[test]
fn zip64_checkpoint_exports_the_same_graphs() {
    for dtype in ["fp32", "fp16"] {
        let (_a, zip64) = export(&os(&[
            &"--checkpoint",
            &fixture("zip64"),
            &"--vision-tower",
            &demo_clip(),
            &"--dtype",
            &dtype,
        ]));
        let (_b, shards) = export(&os(&[
            &"--checkpoint",
            &repo().join("models/demo-src/llava-v1.5-tiny"),
            &"--vision-tower",
            &demo_clip(),
            &"--dtype",
            &dtype,
        ]));
        assert_same_weights(&zip64, &shards, &format!("zip64 vs shards, {dtype}"));
    }
}

/// LLaVA's own LoRA output (adapter_model.bin, non_lora_trainables.bin, the llava config, no
/// tokenizer) on its Vicuna base, merged while exporting: the same graph weights, bit for
/// bit, and the same answers as PEFT's merged checkpoint. The adapter changes the answers
/// (the check would be empty otherwise).
#[test]
fn llava_lora_adapter_merges_like_peft() {
    let (_a, adapter) = export(&os(&[
        &"--checkpoint",
        &fixture("llava-lora"),
        &"--base",
        &fixture("vicuna-tiny"),
        &"--vision-tower",
        &demo_clip(),
    ]));
    let (_b, merged) = export(&os(&[
        &"--checkpoint",
        &fixture("llava-lora-merged"),
        &"--vision-tower",
        &demo_clip(),
    ]));
    assert_same_weights(&adapter, &merged, "LLaVA LoRA vs PEFT merge");
    let got = answers(&adapter, "unsafes");
    assert_eq!(got, answers(&merged, "unsafes"));
    let golden =
        std::fs::read_to_string(repo().join("tests/data/golden-dev/reference/unsafes.json"))
            .unwrap();
    assert_ne!(got[0], golden, "the adapter should change the answers");
}

/// A PEFT adapter on a llava-hf model (rsLoRA, every linear layer of decoder, projector
/// and vision tower, bf16 factors, no config of its own), merged into the base's fp16
/// decoder and fp32 tower: the same graph weights and answers as PEFT's merged checkpoint.
#[test]
fn peft_adapter_on_llava_hf_merges_like_peft() {
    let (_a, adapter) = export(&os(&[
        &"--checkpoint",
        &fixture("hf-lora"),
        &"--base",
        &fixture("llava-hf"),
    ]));
    let (_b, merged) = export(&os(&[&"--checkpoint", &fixture("hf-lora-merged")]));
    assert_same_weights(&adapter, &merged, "PEFT LoRA on llava-hf vs PEFT merge");
    assert_eq!(answers(&adapter, "unsafes"), answers(&merged, "unsafes"));
}

/// What a user gets wrong with these layouts is refused with the flag that fixes it.
#[test]
fn layout_mistakes_name_the_fix() {
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        (
            os(&[
                &"--checkpoint",
                &fixture("llava-lora"),
                &"--vision-tower",
                &demo_clip(),
            ]),
            "--base",
        ),
        (
            os(&[
                &"--checkpoint",
                &fixture("llava-hf"),
                &"--vision-tower",
                &demo_clip(),
            ]),
            "drop --vision-tower",
        ),
        (os(&[&"--checkpoint", &fixture("zip64")]), "--vision-tower"),
        (
            os(&[
                &"--checkpoint",
                &fixture("llava-hf"),
                &"--base",
                &fixture("vicuna-tiny"),
            ]),
            "not a LoRA adapter",
        ),
    ];
    for (args, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = bin()
            .arg("export")
            .args(&args)
            .arg("--out")
            .arg(dir.path().join("m"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!dir.path().join("m").exists());
    }
}
