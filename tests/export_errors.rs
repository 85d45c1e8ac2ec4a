//! Bad input to the exporter: each case gets a typed error naming the file, key or shape,
//! and no half-written model directory is left behind.
//!
//! Each test copies the repo's demo source (`models/demo-src`, the dev golden bundle's
//! checkpoints) into a temp dir, breaks one thing, and exports next to it.

use std::path::{Path, PathBuf};

use vlguard_ort::export::checkpoint::CheckpointError;
use vlguard_ort::export::config::ConfigError;
use vlguard_ort::export::tokenizer::{SpecialIds, TokenizerError};
use vlguard_ort::export::{export_with, Dtype, ExportError, ExportOptions, Flavour};
use vlguard_ort::export_cmd::ExportArgs;

fn demo_src() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/demo-src");
    assert!(p.is_dir(), "{} missing", p.display());
    p
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(
            &demo_src().join("llava-v1.5-tiny"),
            &tmp.path().join("llava"),
        );
        copy_dir(
            &demo_src().join("clip-vit-tiny-patch14-336"),
            &tmp.path().join("clip"),
        );
        Case { tmp }
    }
    fn llava(&self) -> PathBuf {
        self.tmp.path().join("llava")
    }
    fn clip(&self) -> PathBuf {
        self.tmp.path().join("clip")
    }
    fn out(&self) -> PathBuf {
        self.tmp.path().join("out")
    }
    fn edit_json(&self, path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
    /// Options exporting this case's folders into `out`.
    fn options(&self, dtype: Dtype, random_weights: bool, flavour: Flavour) -> ExportOptions {
        ExportOptions {
            checkpoint: self.llava(),
            vision_tower: Some(self.clip()),
            base: None,
            out: self.out(),
            dtype,
            force: false,
            random_weights,
            flavour,
        }
    }
    fn export(&self, force: bool) -> Result<(), ExportError> {
        let opts = ExportOptions {
            force,
            ..self.options(Dtype::Fp32, false, Flavour::Plain)
        };
        export_with(&opts, &stub_tokenizer).map(|_| ())
    }
    /// Nothing but the two source folders (and a pre-existing `out` if any) remains.
    fn assert_no_partial_output(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "out")
            .collect();
        names.sort();
        assert_eq!(names, ["clip", "llava"]);
    }
}

fn stub_tokenizer(_: &[u8]) -> Result<(String, SpecialIds), TokenizerError> {
    Ok((
        "{}".into(),
        SpecialIds {
            bos: 1,
            eos: 2,
            unk: 0,
        },
    ))
}

#[test]
fn missing_shard_is_named() {
    let c = Case::new();
    std::fs::remove_file(c.llava().join("pytorch_model-00002-of-00002.bin")).unwrap();
    let err = c.export(false).unwrap_err();
    assert!(
        matches!(&err, ExportError::Checkpoint(CheckpointError::MissingShard { shard, .. }) if shard == "pytorch_model-00002-of-00002.bin"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("pytorch_model.bin.index.json"),
        "{err}"
    );
    c.assert_no_partial_output();
    assert!(!c.out().exists());
}

#[test]
fn wrong_shape_names_key_file_and_shapes() {
    let c = Case::new();
    // The checkpoint's MLP is 128 wide (bundle README); a config saying 96 mismatches.
    c.edit_json(&c.llava().join("config.json"), |v| {
        v["intermediate_size"] = 96.into()
    });
    let err = c.export(false).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, ExportError::Checkpoint(CheckpointError::Shape { key, found, expected, .. })
            if key == "model.layers.0.mlp.gate_proj.weight" && found == &[128, 64] && expected == &[96, 64]),
        "{err:?}"
    );
    assert!(text.contains("pytorch_model-00001-of-00002.bin"), "{text}");
    c.assert_no_partial_output();
}

#[test]
fn missing_key_is_named() {
    let c = Case::new();
    // 5 layers with select_layer -2 -> layers 0..=3 needed; the tower has only 3.
    c.edit_json(&c.clip().join("config.json"), |v| {
        v["vision_config"]["num_hidden_layers"] = 5.into()
    });
    let err = c.export(false).unwrap_err();
    assert!(
        matches!(&err, ExportError::Checkpoint(CheckpointError::MissingKey { key, .. })
            if key == "vision_model.encoder.layers.3.layer_norm1.weight"),
        "{err:?}"
    );
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    c.assert_no_partial_output();
}

#[test]
fn unsupported_projector_is_named() {
    let c = Case::new();
    c.edit_json(&c.llava().join("config.json"), |v| {
        v["mm_projector_type"] = "mlp3x_gelu".into()
    });
    let err = c.export(false).unwrap_err();
    assert!(
        matches!(&err, ExportError::Config(ConfigError::UnsupportedProjector { kind, .. }) if kind == "mlp3x_gelu"),
        "{err:?}"
    );
    assert!(err.to_string().contains("mlp3x_gelu"));
    c.assert_no_partial_output();
}

#[test]
fn non_empty_out_needs_force() {
    let c = Case::new();
    std::fs::create_dir(c.out()).unwrap();
    std::fs::write(c.out().join("keep.txt"), "user data").unwrap();
    let err = c.export(false).unwrap_err();
    assert!(matches!(err, ExportError::OutNotEmpty { .. }), "{err:?}");
    assert!(err.to_string().contains("--force"));
    assert_eq!(
        std::fs::read_to_string(c.out().join("keep.txt")).unwrap(),
        "user data"
    );
    c.assert_no_partial_output();
    // With --force the old content is replaced by a complete model directory.
    c.export(true).unwrap();
    assert!(!c.out().join("keep.txt").exists());
    assert!(c.out().join("manifest.json").is_file());
    assert!(c.out().join("decoder.onnx.data").is_file());
    c.assert_no_partial_output();
}

#[test]
fn failure_with_force_keeps_the_old_output() {
    let c = Case::new();
    std::fs::create_dir(c.out()).unwrap();
    std::fs::write(c.out().join("keep.txt"), "old model").unwrap();
    std::fs::remove_file(c.llava().join("pytorch_model-00001-of-00002.bin")).unwrap();
    assert!(c.export(true).is_err());
    assert_eq!(
        std::fs::read_to_string(c.out().join("keep.txt")).unwrap(),
        "old model"
    );
    c.assert_no_partial_output();
}

/// Issue 24, case 6: with `--force`, an `--out` at the checkpoint or above it replaced
/// the checkpoint. Whatever names it (the folder itself, a parent, a symlink, a `..`
/// detour), an `--out` that is, contains or lies inside an input is refused untouched.
#[test]
fn issue24_6_an_out_that_is_contains_or_lies_inside_an_input_is_refused() {
    let c = Case::new();
    std::os::unix::fs::symlink(c.clip(), c.tmp.path().join("tower-link")).unwrap();
    std::fs::write(c.tmp.path().join("notes.txt"), "beside the checkpoints").unwrap();
    let cases = [
        (c.llava(), "is the checkpoint"),
        (c.tmp.path().to_path_buf(), "contains the checkpoint"),
        (c.llava().join("onnx"), "lies inside the checkpoint"),
        (c.tmp.path().join("tower-link"), "is the vision tower"),
        (c.llava().join("../clip/./"), "is the vision tower"),
        (
            c.clip().join("new/../../clip/x"),
            "lies inside the vision tower",
        ),
    ];
    let before = std::fs::read(c.llava().join("config.json")).unwrap();
    for (out, expected) in cases {
        let opts = ExportOptions {
            out: out.clone(),
            force: true,
            ..c.options(Dtype::Fp32, false, Flavour::Plain)
        };
        let err = export_with(&opts, &stub_tokenizer).unwrap_err();
        assert!(
            matches!(err, ExportError::OutOverlapsInput { .. }),
            "{out:?}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(expected) && text.contains("choose another --out"),
            "{text}"
        );
    }
    assert_eq!(
        std::fs::read(c.llava().join("config.json")).unwrap(),
        before
    );
    assert!(c.clip().join("config.json").is_file());
    assert!(c.tmp.path().join("notes.txt").is_file());
    assert!(!c.llava().join("onnx").exists() && !c.clip().join("new").exists());
    // A sibling of the inputs is still fine.
    let opts = ExportOptions {
        out: c.llava().join("../out"),
        ..c.options(Dtype::Fp32, false, Flavour::Plain)
    };
    export_with(&opts, &stub_tokenizer).unwrap();
}

/// The command's arguments with this `--dtype` and `--decoder`.
fn export_args(dtype: &str, decoder: &str) -> ExportArgs {
    ExportArgs {
        checkpoint: "a".into(),
        vision_tower: Some("b".into()),
        base: None,
        out: "c".into(),
        dtype: dtype.into(),
        force: false,
        random_weights: false,
        decoder: decoder.into(),
    }
}

#[test]
fn unknown_dtype_is_refused_by_the_command() {
    let err = export_args("int8", "plain")
        .options()
        .unwrap_err()
        .to_string();
    assert!(err.contains("int8") && err.contains("--dtype"), "{err}");
}

#[test]
fn fused_decoder_refuses_a_head_size_gqa_cannot_run() {
    let c = Case::new();
    // 64 hidden / 8 heads = head size 8; ONNX Runtime's GroupQueryAttention needs 16k.
    c.edit_json(&c.llava().join("config.json"), |v| {
        v["num_attention_heads"] = 8.into();
        v["num_key_value_heads"] = 8.into();
    });
    let opts = c.options(Dtype::Fp32, true, Flavour::Fused);
    let err = export_with(&opts, &stub_tokenizer).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("multiple of 16") && err.contains("is 8"),
        "{err}"
    );
    assert!(err.contains("--decoder plain"), "{err}");
    c.assert_no_partial_output();
}

#[test]
fn unknown_decoder_flavour_is_refused_by_the_command() {
    let err = export_args("fp32", "flash")
        .options()
        .unwrap_err()
        .to_string();
    assert!(err.contains("flash") && err.contains("--decoder"), "{err}");
}

#[test]
fn random_weights_need_no_weights_files() {
    let c = Case::new();
    for f in [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ] {
        std::fs::remove_file(c.llava().join(f)).unwrap();
    }
    std::fs::remove_file(c.clip().join("model.safetensors")).unwrap();
    // GQA shape: 4 heads sharing 2 kv heads.
    c.edit_json(&c.llava().join("config.json"), |v| {
        v["num_key_value_heads"] = 2.into()
    });
    let opts = c.options(Dtype::Fp16, true, Flavour::Plain);
    let mut report = export_with(&opts, &stub_tokenizer).unwrap();
    assert_eq!(report.manifest.decoder.num_kv_heads, 2);
    // What the command prints (time fixed; the rest from the bundle's configs).
    report.seconds = 0.25;
    let text = vlguard_ort::export_cmd::summary(&report);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("exported {} (fp16) in 0.2 s", c.out().display())
    );
    assert!(lines[1].starts_with("  decoder.onnx ") && lines[1].ends_with(" MiB of weights"));
    assert_eq!(
        lines[5],
        "  vision: 2 of 3 layers, 576 tokens x 32; decoder: 2 layers, hidden 64, heads 4 (2 kv), vocab 1200"
    );
    // k_proj is [kv*hd, H] = [32, 64]: 2048 fp16 values; the decoder data holds all layers.
    let dec_bytes = report.weight_bytes["decoder.onnx"];
    // Per layer: q 64*64 + k,v 2*32*64 + o 64*64 + 3 MLP 64*128 + 2 norms 64; + norm 64 +
    // lm_head 64*1200, 2 bytes each in fp16, plus alignment padding (hence >=).
    let per_layer = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 64 * 128 + 2 * 64;
    let expected_min = (2 * per_layer + 64 + 64 * 1200) * 2;
    assert!(
        dec_bytes >= expected_min as u64,
        "{dec_bytes} < {expected_min}"
    );
}

/// The built binary: bad flags and a non-empty --out exit with code 2 and say why.
#[test]
fn cli_reports_bad_input_with_exit_code_2() {
    let c = Case::new();
    let bin = env!("CARGO_BIN_EXE_vlguard-ort");
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("export")
            .arg("--checkpoint")
            .arg(c.llava())
            .arg("--vision-tower")
            .arg(c.clip())
            .arg("--out")
            .arg(c.out())
            .args(extra);
        cmd.output().unwrap()
    };
    let out = run(&["--dtype", "bf8"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bf8") && stderr.contains("--dtype"),
        "{stderr}"
    );

    std::fs::create_dir(c.out()).unwrap();
    std::fs::write(c.out().join("x"), "").unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not empty") && stderr.contains("--force"),
        "{stderr}"
    );
    c.assert_no_partial_output();
}
