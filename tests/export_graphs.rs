//! The exported graphs, run with ONNX Runtime, against the dev golden bundle.
//!
//! Expected values: `tests/data/golden-dev/reference/tensors/unsafes_KK_*.npy`, written by
//! the reference pipeline (haotian-liu/LLaVA c121f04, transformers 4.37.2, fp32 on CPU) for
//! the first unsafes samples: `vision_features` (CLIP layer -2, CLS dropped),
//! `projector_out`, `inputs_embeds` (spliced) and `last_logits` of the prefill. The source
//! checkpoint is the repo's `models/demo-src` (a copy of the bundle's `checkpoint/`).
//! The exports here use a stub tokenizer so that graph parity does not depend on the
//! SentencePiece converter.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use half::f16;
use ort::session::Session;
use ort::value::Tensor;
use vlguard_ort::engine::{Engine, EngineOptions, EpChoice};
use vlguard_ort::export::manifest::Flavour;
use vlguard_ort::export::manifest::{names, GraphKind, Graphs, Manifest};
use vlguard_ort::export::tokenizer::SpecialIds;
use vlguard_ort::export::{export_with, Dtype, ExportOptions, DECODER_FILE};
use vlguard_ort::generate::Prompt;

const TOL: f32 = 1e-4;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tensors_dir() -> PathBuf {
    let dir = repo().join("tests/data/golden-dev/reference/tensors");
    assert!(
        dir.is_dir(),
        "golden bundle missing: {} (tests/data/README.md lists what the tests read)",
        dir.display()
    );
    dir
}

/// A minimal `.npy` reader: little-endian f32, C order.
fn npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap();
    let shape_text = &shape_text[..shape_text.find(')').unwrap()];
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

fn golden(sample: usize, what: &str) -> (Vec<usize>, Vec<f32>) {
    npy_f32(&tensors_dir().join(format!("unsafes_{sample:02}_{what}.npy")))
}

fn stub_tokenizer(
    _: &[u8],
) -> Result<(String, SpecialIds), vlguard_ort::export::tokenizer::TokenizerError> {
    Ok((
        "{}".to_string(),
        SpecialIds {
            bos: 1,
            eos: 2,
            unk: 0,
        },
    ))
}

struct Exported {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    manifest: Manifest,
}

/// Export options for the repo's demo checkpoint (`models/demo-src`) into `out`.
fn demo_options(out: &Path, dtype: Dtype, flavour: Flavour) -> ExportOptions {
    let src = repo().join("models/demo-src");
    ExportOptions {
        checkpoint: src.join("llava-v1.5-tiny"),
        vision_tower: Some(src.join("clip-vit-tiny-patch14-336")),
        base: None,
        out: out.to_path_buf(),
        dtype,
        force: false,
        random_weights: false,
        flavour,
    }
}

fn export_demo(dtype: Dtype, flavour: Flavour) -> Exported {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let opts = demo_options(&out, dtype, flavour);
    let report = export_with(&opts, &stub_tokenizer).expect("export of the demo model");
    Exported {
        _tmp: tmp,
        dir: out,
        manifest: report.manifest,
    }
}

fn fp32_model() -> &'static Exported {
    static M: OnceLock<Exported> = OnceLock::new();
    M.get_or_init(|| export_demo(Dtype::Fp32, Flavour::Plain))
}

fn fused_model() -> &'static Exported {
    static M: OnceLock<Exported> = OnceLock::new();
    M.get_or_init(|| export_demo(Dtype::Fp32, Flavour::Fused))
}

/// The process-wide ONNX Runtime environment, from the library `ort_lib` finds.
fn environment() -> &'static ort::environment::Environment {
    // The engine's own environment: the fused tests below open an `Engine` in this
    // process too, and a process has one environment.
    vlguard_ort::engine::ort_lib::environment(None)
        .expect("ONNX Runtime library (run scripts/setup.sh)")
        .1
}

fn session(dir: &Path, file: &str) -> Session {
    Session::builder(environment())
        .unwrap()
        .commit_from_file(dir.join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0f32,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

/// Runs the decoder: `embeds` [B, T, H] in f32, returns (logits [B*V], presents).
struct DecoderRun {
    logits: Vec<f32>,
    present: Vec<(Vec<i64>, Vec<f32>)>,
}

/// One decoder call's inputs (f32 embeds, row-major).
struct Step {
    b: usize,
    t: usize,
    embeds: Vec<f32>,
    mask: Vec<i64>,
    positions: Vec<i64>,
}

fn run_decoder(
    sess: &mut Session,
    m: &Manifest,
    step: Step,
    past: Option<&[(Vec<i64>, Vec<f32>)]>,
) -> DecoderRun {
    let Step {
        b,
        t,
        embeds,
        mask,
        positions,
    } = step;
    let d = &m.decoder;
    let total = mask.len() / b;
    let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
        (
            names::INPUTS_EMBEDS.into(),
            Tensor::from_array(([b, t, d.hidden_size], embeds))
                .unwrap()
                .into_dyn(),
        ),
        (
            names::ATTENTION_MASK.into(),
            Tensor::from_array(([b, total], mask)).unwrap().into_dyn(),
        ),
        (
            names::POSITION_IDS.into(),
            Tensor::from_array(([b, t], positions)).unwrap().into_dyn(),
        ),
    ];
    for l in 0..d.num_layers {
        for (i, name) in [names::past_key(l), names::past_value(l)]
            .into_iter()
            .enumerate()
        {
            let (shape, data) = match past {
                Some(p) => (p[2 * l + i].0.clone(), p[2 * l + i].1.clone()),
                None => (
                    vec![b as i64, d.num_kv_heads as i64, 0, d.head_dim as i64],
                    vec![],
                ),
            };
            let shape: Vec<usize> = shape.iter().map(|v| *v as usize).collect();
            inputs.push((name, Tensor::from_array((shape, data)).unwrap().into_dyn()));
        }
    }
    let out = sess.run(inputs).unwrap();
    let (_, logits) = out[names::LOGITS].try_extract_tensor::<f32>().unwrap();
    let mut present = Vec::new();
    for l in 0..d.num_layers {
        for name in [names::present_key(l), names::present_value(l)] {
            let (shape, data) = out[name.as_str()].try_extract_tensor::<f32>().unwrap();
            present.push((shape.to_vec(), data.to_vec()));
        }
    }
    DecoderRun {
        logits: logits.to_vec(),
        present,
    }
}

fn prefill_one(sess: &mut Session, m: &Manifest, embeds: &[f32], len: usize) -> DecoderRun {
    let step = Step {
        b: 1,
        t: len,
        embeds: embeds.to_vec(),
        mask: vec![1; len],
        positions: (0..len as i64).collect(),
    };
    run_decoder(sess, m, step, None)
}

/// The cached path for one row of `len` positions: a prefill of all but the last, then a
/// one-token step on its cache. Returns (that prefill, the step).
fn prefix_then_step(
    sess: &mut Session,
    m: &Manifest,
    embeds: &[f32],
    len: usize,
) -> (DecoderRun, DecoderRun) {
    let h = m.decoder.hidden_size;
    let head = prefill_one(sess, m, &embeds[..(len - 1) * h], len - 1);
    let one = Step {
        b: 1,
        t: 1,
        embeds: embeds[(len - 1) * h..].to_vec(),
        mask: vec![1; len],
        positions: vec![len as i64 - 1],
    };
    let step = run_decoder(sess, m, one, Some(&head.present));
    (head, step)
}

#[test]
fn vision_matches_reference() {
    let m = fp32_model();
    let mut vision = session(&m.dir, &m.manifest.graphs.vision.file);
    for sample in 0..4 {
        let (shape, px) = golden(sample, "pixel_values");
        let (ref_shape, expected) = golden(sample, "vision_features");
        let mut full = vec![1usize];
        full.extend(&shape);
        let out = vision
            .run(ort::inputs![names::PIXEL_VALUES => Tensor::from_array((full, px)).unwrap()])
            .unwrap();
        let (got_shape, got) = out[names::IMAGE_FEATURES]
            .try_extract_tensor::<f32>()
            .unwrap();
        assert_eq!(&got_shape[1..], &[ref_shape[0] as i64, ref_shape[1] as i64]);
        let diff = max_abs_diff(got, &expected);
        eprintln!("vision sample {sample}: max abs diff {diff:e}");
        assert!(diff <= TOL, "sample {sample}: {diff}");
    }
}

/// Two images in one batch: each row equals its reference (the CLS token is broadcast
/// over the batch, not baked in for B = 1).
#[test]
fn vision_batch_of_two() {
    let m = fp32_model();
    let mut vision = session(&m.dir, &m.manifest.graphs.vision.file);
    let (shape, mut px) = golden(0, "pixel_values");
    px.extend(golden(1, "pixel_values").1);
    let (_, mut expected) = golden(0, "vision_features");
    expected.extend(golden(1, "vision_features").1);
    let full = vec![2, shape[0], shape[1], shape[2]];
    let out = vision
        .run(ort::inputs![names::PIXEL_VALUES => Tensor::from_array((full, px)).unwrap()])
        .unwrap();
    let (got_shape, got) = out[names::IMAGE_FEATURES]
        .try_extract_tensor::<f32>()
        .unwrap();
    assert_eq!(got_shape[0], 2);
    let diff = max_abs_diff(got, &expected);
    assert!(diff <= TOL, "{diff}");
}

#[test]
fn projector_matches_reference() {
    let m = fp32_model();
    let mut proj = session(&m.dir, &m.manifest.graphs.projector.file);
    for sample in 0..4 {
        let (shape, feats) = golden(sample, "vision_features");
        let (_, expected) = golden(sample, "projector_out");
        let out = proj
            .run(ort::inputs![names::IMAGE_FEATURES => Tensor::from_array(([1, shape[0], shape[1]], feats)).unwrap()])
            .unwrap();
        let (_, got) = out[names::PROJECTOR_OUT]
            .try_extract_tensor::<f32>()
            .unwrap();
        let diff = max_abs_diff(got, &expected);
        eprintln!("projector sample {sample}: max abs diff {diff:e}");
        assert!(diff <= TOL, "sample {sample}: {diff}");
    }
}

/// `input_ids` of the first unsafes sample from the bundle's generations.jsonl.
fn first_input_ids() -> Vec<i64> {
    input_ids(1).remove(0)
}

#[test]
fn embed_gives_the_reference_rows_exactly() {
    let m = fp32_model();
    let h = m.manifest.decoder.hidden_size;
    let ids = first_input_ids();
    let slot = ids.iter().position(|&i| i == -200).expect("image slot");
    let (shape, spliced) = golden(0, "inputs_embeds");
    let n_img = m.manifest.vision.num_tokens;
    assert_eq!(shape[0], ids.len() - 1 + n_img);
    let text_ids: Vec<i64> = ids.iter().copied().filter(|&i| i != -200).collect();
    let mut embed = session(&m.dir, &m.manifest.graphs.embed.file);
    let out = embed
        .run(ort::inputs![names::INPUT_IDS => Tensor::from_array(([1, text_ids.len()], text_ids.clone())).unwrap()])
        .unwrap();
    let (_, got) = out[names::INPUTS_EMBEDS]
        .try_extract_tensor::<f32>()
        .unwrap();
    for (k, _) in text_ids.iter().enumerate() {
        // Text token k sits before the image slot, or after the n_img image rows.
        let row = if k < slot { k } else { k + n_img };
        assert_eq!(
            &got[k * h..(k + 1) * h],
            &spliced[row * h..(row + 1) * h],
            "token {k}"
        );
    }
}

#[test]
fn prefill_logits_match_reference() {
    let m = fp32_model();
    let mut dec = session(&m.dir, &m.manifest.graphs.decoder.file);
    for sample in 0..4 {
        let (shape, embeds) = golden(sample, "inputs_embeds");
        let (_, expected) = golden(sample, "last_logits");
        let run = prefill_one(&mut dec, &m.manifest, &embeds, shape[0]);
        let diff = max_abs_diff(&run.logits, &expected);
        eprintln!("last_logits sample {sample}: max abs diff {diff:e}");
        assert!(diff <= TOL, "sample {sample}: {diff}");
        // present has all L positions.
        assert_eq!(run.present[0].0[2], shape[0] as i64);
    }
}

#[test]
fn decode_step_with_cache_matches_full_prefill() {
    let m = fp32_model();
    let mut dec = session(&m.dir, &m.manifest.graphs.decoder.file);
    let (shape, embeds) = golden(0, "inputs_embeds");
    let len = shape[0];
    let full = prefill_one(&mut dec, &m.manifest, &embeds, len);
    let (_, step) = prefix_then_step(&mut dec, &m.manifest, &embeds, len);
    let diff = max_abs_diff(&step.logits, &full.logits);
    eprintln!("decode step vs full prefill: max abs diff {diff:e}");
    assert!(diff <= TOL, "{diff}");
    assert_eq!(step.present[0].0[2], len as i64);
    let diff = max_abs_diff(&step.present[1].1, &full.present[1].1);
    assert!(diff <= TOL, "present value cache differs by {diff}");
}

#[test]
fn left_padded_batch_matches_unpadded_rows() {
    let m = fp32_model();
    let h = m.manifest.decoder.hidden_size;
    let mut dec = session(&m.dir, &m.manifest.graphs.decoder.file);
    let (sa, ea) = golden(0, "inputs_embeds");
    let (sb, eb) = golden(1, "inputs_embeds");
    let (la, lb) = (sa[0], sb[0]);
    assert!(lb < la, "sample 1 must be the shorter one");
    let pad = la - lb;
    let mut embeds = ea.clone();
    embeds.extend(vec![0.0; pad * h]);
    embeds.extend(&eb);
    let mut mask = vec![1i64; la];
    mask.extend(vec![0; pad]);
    mask.extend(vec![1; lb]);
    let mut positions: Vec<i64> = (0..la as i64).collect();
    positions.extend(vec![1; pad]); // HF fills padded positions with 1
    positions.extend(0..lb as i64);
    let step = Step {
        b: 2,
        t: la,
        embeds,
        mask,
        positions,
    };
    let batch = run_decoder(&mut dec, &m.manifest, step, None);
    assert!(batch.logits.iter().all(|v| v.is_finite()));
    for (_, p) in &batch.present {
        assert!(
            p.iter().all(|v| v.is_finite()),
            "NaN/inf in the padded cache"
        );
    }
    let v = m.manifest.decoder.vocab_size;
    let alone_a = prefill_one(&mut dec, &m.manifest, &ea, la);
    let alone_b = prefill_one(&mut dec, &m.manifest, &eb, lb);
    let da = max_abs_diff(&batch.logits[..v], &alone_a.logits);
    let db = max_abs_diff(&batch.logits[v..], &alone_b.logits);
    eprintln!("batch-2 left padding: row 0 {da:e}, padded row 1 {db:e}");
    assert!(da <= TOL && db <= TOL, "{da} {db}");
}

/// `inspect` reads the graphs' inputs and outputs from their files (no session, no
/// weights): names, element types and shapes must be what ONNX Runtime reports, for every
/// graph of both decoder flavours.
#[test]
fn graph_files_declare_what_onnx_runtime_reports() {
    use ort::value::ValueType;
    use vlguard_ort::export::graph_io;
    for model in [fp32_model(), fused_model()] {
        for kind in GraphKind::ALL {
            let file = model.manifest.graphs.file(kind);
            let io = graph_io::read_file(&model.dir.join(file)).expect("graph I/O");
            let sess = session(&model.dir, file);
            let ort_side = |list: &[ort::value::Outlet]| -> Vec<(String, String, Vec<i64>)> {
                list.iter()
                    .map(|o| match o.dtype() {
                        ValueType::Tensor { ty, shape, .. } => {
                            (o.name().to_string(), format!("{ty}"), shape.to_vec())
                        }
                        other => panic!("{file}: {} is {other:?}", o.name()),
                    })
                    .collect()
            };
            let file_side = |list: &[graph_io::Io]| -> Vec<(String, String, Vec<i64>)> {
                list.iter()
                    .map(|v| (v.name.clone(), graph_io::elem_name(v.elem_type), v.shape()))
                    .collect()
            };
            assert_eq!(
                file_side(&io.inputs),
                ort_side(sess.inputs()),
                "{file} inputs"
            );
            assert_eq!(
                file_side(&io.outputs),
                ort_side(sess.outputs()),
                "{file} outputs"
            );
        }
    }
}

#[test]
fn manifest_describes_the_graphs() {
    let m = fp32_model();
    let (loaded, _) = Manifest::load(&m.dir).unwrap();
    assert_eq!(loaded, m.manifest);
    // Dimensions from the bundle's configs (README: hidden 64, 2 layers, 4 heads, MLP 128,
    // vocab 1200; CLIP hidden 32, 3 layers, image 336, patch 14 -> 576 tokens).
    let d = &loaded.decoder;
    assert_eq!(
        (
            d.hidden_size,
            d.num_layers,
            d.num_heads,
            d.num_kv_heads,
            d.head_dim,
            d.vocab_size
        ),
        (64, 2, 4, 4, 16, 1200)
    );
    let v = &loaded.vision;
    assert_eq!(
        (
            v.num_tokens,
            v.hidden_size,
            v.layers_emitted,
            v.select_layer
        ),
        (576, 32, 2, -2)
    );
    assert_eq!(loaded.tokenizer.image_token_id, -200);
    assert_eq!(loaded.tokenizer.template, "llava_v1");
    assert_eq!(loaded.graphs, Graphs::exported(d));
    // Each graph's declared I/O is what the ONNX file declares, in its order.
    for kind in GraphKind::ALL {
        let file = loaded.graphs.file(kind);
        let s = session(&m.dir, file);
        let ins: Vec<&str> = s.inputs().iter().map(|i| i.name()).collect();
        let outs: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
        assert_eq!(ins, loaded.graphs.inputs(kind), "{file}");
        assert_eq!(outs, loaded.graphs.outputs(kind), "{file}");
        assert!(m.dir.join(format!("{file}.data")).is_file());
    }
    // Source hashes: every shard, both configs, the tokenizer model.
    let files = &loaded.source.files;
    for key in [
        "checkpoint/config.json",
        "checkpoint/pytorch_model.bin.index.json",
        "checkpoint/pytorch_model-00001-of-00002.bin",
        "checkpoint/pytorch_model-00002-of-00002.bin",
        "checkpoint/tokenizer.model",
        "vision_tower/config.json",
        "vision_tower/model.safetensors",
        "vision_tower/preprocessor_config.json",
    ] {
        assert_eq!(files.get(key).map(String::len), Some(64), "{key}");
    }
}

/// Issue 28: a version 1 manifest (tests/data/manifest-v1: ordered tensor lists, as the
/// exporter wrote them before tensors were named by role) loads as the manifest a current
/// export writes; lists that do not fit version 1's order, and unknown versions, are
/// refused naming the file and the way out.
#[test]
fn version_1_manifests_load_by_role_or_are_refused() {
    for (flavour, model) in [("plain", fp32_model()), ("fused", fused_model())] {
        let v1 =
            std::fs::read(repo().join(format!("tests/data/manifest-v1/demo-fp32-{flavour}.json")))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.json"), &v1).unwrap();
        let (mut loaded, bytes) = Manifest::load(dir.path()).unwrap();
        assert_eq!(
            bytes, v1,
            "the file's own bytes (its sha256 keys TensorRT's cache)"
        );
        // Not the same export: the source folders were given as relative paths there,
        // and the tokenizer here is a stub.
        loaded.source.checkpoint = model.manifest.source.checkpoint.clone();
        loaded.source.vision_tower = model.manifest.source.vision_tower.clone();
        let tokenizer = model.manifest.files["tokenizer.json"].clone();
        loaded.files.insert("tokenizer.json".into(), tokenizer);
        assert_eq!(loaded, model.manifest, "{flavour}");
    }
    let refused = |edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let v1 = repo().join("tests/data/manifest-v1/demo-fp32-plain.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(v1).unwrap()).unwrap();
        edit(&mut json);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        let message = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.ends_with("re-export the model with `vlguard-ort export`"),
            "{message}"
        );
        message
    };
    // One layer's past value left out of the decoder's inputs.
    let message = refused(&|json| {
        json["graphs"]["decoder"]["inputs"]
            .as_array_mut()
            .unwrap()
            .pop();
    });
    assert!(
        message.contains("is a version 1 manifest whose tensor lists"),
        "{message}"
    );
    assert!(
        message.contains("graph decoder must list 3 + 2 x 2 inputs"),
        "{message}"
    );
    let message = refused(&|json| {
        json["graphs"]["vision"]["outputs"] = serde_json::json!([]);
    });
    assert!(
        message.contains("graph vision must list one input and one output"),
        "{message}"
    );
    let message = refused(&|json| json["format_version"] = 3.into());
    assert!(
        message.contains("has format version 3, this build reads versions 1 and 2"),
        "{message}"
    );
}

/// Every plain graph, fp32 and fp16, is one TensorRT engine for TensorRT's ONNX parser
/// (supported operators, constant axes, opset); the fused decoder's ONNX Runtime-only
/// operators are exactly what it would not take.
#[test]
fn plain_graphs_pass_the_tensorrt_parser_rules() {
    use vlguard_ort::export::tensorrt;
    let fp16 = export_demo(Dtype::Fp16, Flavour::Plain);
    for (label, model) in [
        ("fp32", fp32_model()),
        ("fp16", &fp16),
        ("fused", fused_model()),
    ] {
        for kind in GraphKind::ALL {
            let file = model.manifest.graphs.file(kind);
            let found = tensorrt::check_file(&model.dir.join(file)).unwrap();
            if label == "fused" && kind == GraphKind::Decoder {
                let mut ops: Vec<&str> = found.iter().map(|f| f.op.as_str()).collect();
                ops.sort();
                ops.dedup();
                assert_eq!(
                    ops,
                    [
                        "GroupQueryAttention",
                        "SimplifiedLayerNormalization",
                        "SkipSimplifiedLayerNormalization"
                    ],
                    "{found:?}"
                );
            } else {
                assert!(found.is_empty(), "{label} {file}: {found:?}");
            }
        }
    }
}

/// Initializers of the graph file at `path` that no node reads and no graph output names:
/// ONNX Runtime warns "Removing initializer ... It is not used by any node" for each, at
/// every load with its default log level.
fn unused_initializers(path: &Path) -> Vec<String> {
    use std::collections::HashSet;
    use vlguard_ort::export::onnx::field::{graph, model, node, tensor, value_info};
    use vlguard_ort::export::wire::{Reader, Value};
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    // Every LEN field `field` of `msg` (a sub-message or a string).
    let fields = |msg: &[u8], base: usize, field: u32| {
        let mut out = Vec::new();
        let mut r = Reader::new(msg, base);
        while let Some((f, v)) = r.next_field().unwrap() {
            if let (true, Value::Bytes(b, off)) = (f == field, v) {
                out.push((b.to_vec(), off));
            }
        }
        out
    };
    let graphs = fields(&bytes, 0, model::GRAPH);
    assert_eq!(graphs.len(), 1, "{}: one graph", path.display());
    let (graph, base) = &graphs[0];
    let mut read = HashSet::new();
    for (n, off) in fields(graph, *base, graph::NODE) {
        read.extend(fields(&n, off, node::INPUT).iter().map(|(b, _)| text(b)));
    }
    for (output, off) in fields(graph, *base, graph::OUTPUT) {
        read.extend(
            fields(&output, off, value_info::NAME)
                .iter()
                .map(|(b, _)| text(b)),
        );
    }
    let mut unused = Vec::new();
    for (t, off) in fields(graph, *base, graph::INITIALIZER) {
        let name = text(&fields(&t, off, tensor::NAME)[0].0);
        if !read.contains(&name) {
            unused.push(name);
        }
    }
    unused
}

/// Issue 16 item 4: no graph of any export flavour carries an initializer nothing reads.
#[test]
fn no_graph_carries_an_unused_initializer() {
    let fp16 = export_demo(Dtype::Fp16, Flavour::Plain);
    let fp16_fused = export_demo(Dtype::Fp16, Flavour::Fused);
    for (label, model) in [
        ("fp32 plain", fp32_model()),
        ("fp32 fused", fused_model()),
        ("fp16 plain", &fp16),
        ("fp16 fused", &fp16_fused),
    ] {
        for kind in GraphKind::ALL {
            let file = model.manifest.graphs.file(kind);
            let unused = unused_initializers(&model.dir.join(file));
            assert!(unused.is_empty(), "{label} {file}: unused {unused:?}");
        }
    }
}

#[test]
fn fp16_export_runs_and_agrees_loosely() {
    let m = export_demo(Dtype::Fp16, Flavour::Plain);
    assert_eq!(m.manifest.dtype, Dtype::Fp16);
    // Vision: pixel_values stay f32, features come out f16.
    let mut vision = session(&m.dir, &m.manifest.graphs.vision.file);
    let (shape, px) = golden(0, "pixel_values");
    let (_, expected) = golden(0, "vision_features");
    let mut full = vec![1usize];
    full.extend(&shape);
    let out = vision
        .run(ort::inputs![names::PIXEL_VALUES => Tensor::from_array((full, px)).unwrap()])
        .unwrap();
    let (_, got) = out[names::IMAGE_FEATURES]
        .try_extract_tensor::<f16>()
        .unwrap();
    let got: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
    let diff = max_abs_diff(&got, &expected);
    eprintln!("fp16 vision: max abs diff {diff:e}");
    assert!(diff <= 0.05, "{diff}");
    // Decoder: f16 embeds and cache, f32 logits.
    let mut dec = session(&m.dir, &m.manifest.graphs.decoder.file);
    let (shape, embeds) = golden(0, "inputs_embeds");
    let (_, expected) = golden(0, "last_logits");
    let d = &m.manifest.decoder;
    let len = shape[0];
    let embeds: Vec<f16> = embeds.iter().map(|v| f16::from_f32(*v)).collect();
    let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
        (
            names::INPUTS_EMBEDS.into(),
            Tensor::from_array(([1, len, d.hidden_size], embeds))
                .unwrap()
                .into_dyn(),
        ),
        (
            names::ATTENTION_MASK.into(),
            Tensor::from_array(([1, len], vec![1i64; len]))
                .unwrap()
                .into_dyn(),
        ),
        (
            names::POSITION_IDS.into(),
            Tensor::from_array(([1, len], (0..len as i64).collect::<Vec<_>>()))
                .unwrap()
                .into_dyn(),
        ),
    ];
    for l in 0..d.num_layers {
        for name in [names::past_key(l), names::past_value(l)] {
            let empty: Vec<f16> = vec![];
            inputs.push((
                name,
                Tensor::from_array(([1, d.num_kv_heads, 0, d.head_dim], empty))
                    .unwrap()
                    .into_dyn(),
            ));
        }
    }
    let out = dec.run(inputs).unwrap();
    let (_, logits) = out[names::LOGITS].try_extract_tensor::<f32>().unwrap();
    let diff = max_abs_diff(logits, &expected);
    eprintln!("fp16 last_logits: max abs diff {diff:e}");
    assert!(diff <= 0.05, "{diff}");
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
    };
    assert_eq!(argmax(logits), argmax(&expected));
}

/// Writes a safetensors file of f32 tensors.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, data) in tensors {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        let end = offset + data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for (_, _, data) in tensors {
        bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(path, bytes).unwrap();
}

/// Deterministic values in [-0.5, 0.5) (a 64-bit LCG; any fixed sequence will do).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Grouped-query attention: a model with 4 query heads sharing 2 kv heads must give the
/// same logits as the 4-kv-head model whose k/v projections repeat each kv head for its
/// group (HF `repeat_kv`: query head h reads kv head h / 2). The expected values come from
/// that second, plain multi-head export, so the check does not trust the GQA path. Also
/// covers a safetensors LLaVA checkpoint and the `linear` projector.
#[test]
fn grouped_query_attention_equals_repeated_kv_heads() {
    let (h, nh, nkv, hd, inter, vocab, layers) =
        (32usize, 4usize, 2usize, 8usize, 48usize, 50usize, 2usize);
    let demo = repo().join("models/demo-src");
    let tmp = tempfile::tempdir().unwrap();
    let mut logits = Vec::new();
    for kv_heads in [nkv, nh] {
        let ck = tmp.path().join(format!("llava-kv{kv_heads}"));
        std::fs::create_dir(&ck).unwrap();
        std::fs::copy(
            demo.join("llava-v1.5-tiny/tokenizer.model"),
            ck.join("tokenizer.model"),
        )
        .unwrap();
        let config = serde_json::json!({
            "model_type": "llava", "hidden_size": h, "num_attention_heads": nh,
            "num_key_value_heads": kv_heads, "intermediate_size": inter, "vocab_size": vocab,
            "num_hidden_layers": layers, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 64, "mm_projector_type": "linear", "mm_hidden_size": 32,
            "mm_vision_select_layer": -2
        });
        std::fs::write(ck.join("config.json"), config.to_string()).unwrap();
        let mut t: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
            (
                "model.embed_tokens.weight".into(),
                vec![vocab, h],
                values(1, vocab * h),
            ),
            (
                "model.norm.weight".into(),
                vec![h],
                values(2, h).iter().map(|v| 1.0 + v).collect(),
            ),
            (
                "lm_head.weight".into(),
                vec![vocab, h],
                values(3, vocab * h),
            ),
            (
                "model.mm_projector.weight".into(),
                vec![h, 32],
                values(4, h * 32),
            ),
            ("model.mm_projector.bias".into(), vec![h], values(5, h)),
        ];
        for l in 0..layers {
            let p = format!("model.layers.{l}");
            let seed = 100 * (l as u64 + 1);
            for (name, s) in [("k_proj", 1), ("v_proj", 2)] {
                // The GQA weights: [nkv * hd, h]; the MHA copy repeats kv head g for heads
                // 2g and 2g + 1.
                let gqa = values(seed + s, nkv * hd * h);
                let w: Vec<f32> = if kv_heads == nkv {
                    gqa
                } else {
                    (0..nh)
                        .flat_map(|head| gqa[(head / (nh / nkv)) * hd * h..][..hd * h].to_vec())
                        .collect()
                };
                t.push((
                    format!("{p}.self_attn.{name}.weight"),
                    vec![kv_heads * hd, h],
                    w,
                ));
            }
            t.push((
                format!("{p}.self_attn.q_proj.weight"),
                vec![nh * hd, h],
                values(seed + 3, nh * hd * h),
            ));
            t.push((
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, nh * hd],
                values(seed + 4, h * nh * hd),
            ));
            t.push((
                format!("{p}.mlp.gate_proj.weight"),
                vec![inter, h],
                values(seed + 5, inter * h),
            ));
            t.push((
                format!("{p}.mlp.up_proj.weight"),
                vec![inter, h],
                values(seed + 6, inter * h),
            ));
            t.push((
                format!("{p}.mlp.down_proj.weight"),
                vec![h, inter],
                values(seed + 7, h * inter),
            ));
            t.push((format!("{p}.input_layernorm.weight"), vec![h], vec![1.0; h]));
            t.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                vec![1.0; h],
            ));
        }
        write_safetensors(&ck.join("model.safetensors"), &t);
        let out = tmp.path().join(format!("out-kv{kv_heads}"));
        let opts = ExportOptions {
            checkpoint: ck,
            vision_tower: Some(demo.join("clip-vit-tiny-patch14-336")),
            base: None,
            out: out.clone(),
            dtype: Dtype::Fp32,
            force: false,
            random_weights: false,
            flavour: Default::default(),
        };
        let report = export_with(&opts, &stub_tokenizer).unwrap();
        assert_eq!(report.manifest.decoder.num_kv_heads, kv_heads);
        assert_eq!(report.manifest.projector.kind, "linear");
        let mut dec = session(&out, DECODER_FILE);
        let len = 7;
        let embeds = values(9, len * h);
        let full = prefill_one(&mut dec, &report.manifest, &embeds, len);
        // And the cached path of the GQA graph: 6 positions, then 1 step.
        let (head, step) = prefix_then_step(&mut dec, &report.manifest, &embeds, len);
        assert_eq!(
            head.present[0].0,
            vec![1, kv_heads as i64, len as i64 - 1, hd as i64]
        );
        let diff = max_abs_diff(&step.logits, &full.logits);
        assert!(diff <= TOL, "kv {kv_heads}: step vs prefill {diff}");
        logits.push(full.logits);
    }
    let diff = max_abs_diff(&logits[0], &logits[1]);
    eprintln!("GQA vs repeated-kv MHA: max abs diff {diff:e}");
    assert!(diff <= 1e-5, "{diff}");
}

/// The real SentencePiece converter (`export/src/tokenizer.rs`) instead of the stub.
#[test]
fn export_writes_a_loadable_tokenizer_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let opts = demo_options(&out, Dtype::Fp32, Flavour::Plain);
    let report = vlguard_ort::export::export(&opts).expect("export with the real tokenizer");
    // ids 0/1/2 = unk/bos/eos (bundle README, checkpoint/ section).
    let t = &report.manifest.tokenizer;
    assert_eq!((t.unk_id, t.bos_id, t.eos_id), (0, 1, 2));
    let tok = tokenizers::Tokenizer::from_file(out.join(&t.file)).expect("tokenizer.json loads");
    assert_eq!(tok.get_vocab_size(true), report.manifest.decoder.vocab_size);
}

// ------------------------------------------------------------------ fused decoder flavour

fn engine(model: &Exported) -> Engine {
    Engine::open(&EngineOptions {
        model_dir: model.dir.clone(),
        ort_lib: None,
        ep: EpChoice::Cpu,
        device_id: 0,
        threads: Some(1),
        trt_cache: None,
        trt_limits: vlguard_ort::engine::trt::Limits::new(1, 8),
        trt_lib_dir: None,
        keep_finished_rows: false,
    })
    .unwrap_or_else(|e| panic!("{}: {e}", model.dir.display()))
}

/// `input_ids` of the first `n` unsafes samples from the bundle's generations.jsonl.
fn input_ids(n: usize) -> Vec<Vec<i64>> {
    let path = repo().join("tests/data/golden-dev/reference/generations.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .take(n)
        .map(|line| {
            let g: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(g["subset"], "unsafes");
            g["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .collect()
}

/// The prompt of unsafes sample `k` as a run builds it: its ids with the image slot and
/// the reference's projector output for its image.
fn golden_prompt(k: usize, ids: &[i64], manifest: &Manifest) -> Prompt {
    Prompt {
        ids: ids.to_vec(),
        image_embeds: golden(k, "projector_out").1,
        image_tokens: manifest.vision.num_tokens,
    }
}

#[test]
fn fused_prefill_logits_match_reference() {
    let m = fused_model();
    assert_eq!(m.manifest.decoder.flavour, Flavour::Fused);
    let mut fused = engine(m);
    for (sample, ids) in input_ids(4).iter().enumerate() {
        let (_, expected) = golden(sample, "last_logits");
        let prompt = golden_prompt(sample, ids, &m.manifest);
        fused.decoder.open(1, prompt.positions() + 4).unwrap();
        let logits = fused.decoder.prefill(&[0], &[&prompt]).unwrap();
        let diff = max_abs_diff(&logits, &expected);
        eprintln!("fused last_logits sample {sample}: max abs diff {diff:e}");
        assert!(diff <= TOL, "sample {sample}: {diff}");
    }
}

/// Three prompts of different lengths through the decoder seam exactly as the generator
/// drives a static batch (prefill, steps, a finished row dropped mid-way): the fused
/// decoder (right padding, in-place cache, compaction) gives the plain decoder's logits
/// (left padding, masks, growing cache) at every call.
#[test]
fn fused_batch_steps_and_row_drops_match_plain() {
    let manifest = &fp32_model().manifest;
    let mut plain = engine(fp32_model());
    let mut fused = engine(fused_model());
    let ids = input_ids(3);
    let prompts: Vec<Prompt> = (0..3)
        .map(|k| golden_prompt(k, &ids[k], manifest))
        .collect();
    let lens: Vec<usize> = prompts.iter().map(Prompt::positions).collect();
    let longest = *lens.iter().max().unwrap();
    assert!(
        lens.iter().any(|&l| l != longest),
        "rows must differ in length"
    );
    let compare = |a: Vec<f32>, b: Vec<f32>, what: &str| {
        let diff = max_abs_diff(&a, &b);
        eprintln!("{what}: fused vs plain max abs diff {diff:e}");
        assert!(diff <= TOL, "{what}: {diff}");
    };
    let refs: Vec<&Prompt> = prompts.iter().collect();
    let mut logits = Vec::new();
    for engine in [&mut plain, &mut fused] {
        engine.decoder.open(3, longest + 8).unwrap();
        logits.push(engine.decoder.prefill(&[0, 1, 2], &refs).unwrap());
    }
    compare(logits.remove(0), logits.remove(0), "prompt");
    let mut live = vec![0usize, 1, 2];
    for step in 0..5u32 {
        if step == 2 {
            // The middle row finishes: both decoders keep slots 0 and 2.
            live = vec![0, 2];
            plain.decoder.retain(&live).unwrap();
            fused.decoder.retain(&live).unwrap();
        }
        let tokens: Vec<u32> = live.iter().map(|&r| 100 + 7 * r as u32 + step).collect();
        let a = plain.decoder.step(&live, &tokens).unwrap();
        let b = fused.decoder.step(&live, &tokens).unwrap();
        compare(a, b, &format!("step {step}"));
    }
}

/// Issue 15: the fused fp16 decoder keeps its residual stream and norms in fp32, so its
/// prompt logits are about as far from the reference (fp32) as the plain fp16 decoder's.
/// Relative RMS error over these four prompts, fused / plain: 1.70 with the residual in
/// fp16 (one rounding per sub-layer), 1.06 now. The bound leaves room for what still
/// differs by chance of rounding (GroupQueryAttention rounds q after the rotation, the
/// plain graph rounds the last residual): over 600 prompts the fused error is 0.93x the
/// plain one (`cargo run --release --example layer_drift -- --cross`, README "fp16").
#[test]
fn fused_fp16_is_as_close_to_the_reference_as_plain_fp16() {
    let mut errors = Vec::new();
    for flavour in [Flavour::Plain, Flavour::Fused] {
        let model = export_demo(Dtype::Fp16, flavour);
        let mut e = engine(&model);
        let (mut err2, mut ref2) = (0.0f64, 0.0f64);
        for (sample, ids) in input_ids(4).iter().enumerate() {
            let (_, expected) = golden(sample, "last_logits");
            let prompt = golden_prompt(sample, ids, &model.manifest);
            e.decoder.open(1, prompt.positions() + 4).unwrap();
            let logits = e.decoder.prefill(&[0], &[&prompt]).unwrap();
            for (x, y) in logits.iter().zip(&expected) {
                err2 += f64::from(x - y).powi(2);
                ref2 += f64::from(*y).powi(2);
            }
        }
        errors.push((err2 / ref2).sqrt());
    }
    let (plain, fused) = (errors[0], errors[1]);
    eprintln!("fp16 prompt logits, relative RMS error: plain {plain:.3e}, fused {fused:.3e}");
    assert!(fused <= plain * 1.2, "fused {fused:e} vs plain {plain:e}");
}

#[test]
fn fused_cache_overflow_is_an_error_not_a_wrong_answer() {
    let m = fused_model();
    let mut fused = engine(m);
    let prompt = golden_prompt(0, &input_ids(1)[0], &m.manifest);
    fused.decoder.open(1, prompt.positions()).unwrap(); // room for the prompt only
    fused.decoder.prefill(&[0], &[&prompt]).unwrap();
    let err = fused.decoder.step(&[0], &[5]).unwrap_err().to_string();
    assert!(err.contains("do not fit the cache"), "{err}");
}
