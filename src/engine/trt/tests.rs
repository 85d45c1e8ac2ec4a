//! Profiles, cache folders and build records against hand-computed values, and the
//! TensorRT version probe against a stub library.

use super::*;
use crate::engine::test_manifests::{demo, llava_7b};
use vlguard_export::manifest::Graphs;

fn limits(batch: usize, text: usize, new: usize) -> Limits {
    Limits {
        max_batch: batch,
        max_text_tokens: text,
        max_new_tokens: new,
    }
}

#[test]
fn an_fp32_model_is_refused_because_tensorrt_would_run_it_in_tf32() {
    let mut m = demo();
    m.dtype = vlguard_export::manifest::Dtype::Fp32;
    for kind in GraphKind::ALL {
        let path = Path::new("model").join(m.graphs.file(kind));
        let err = execution_provider(&m, kind, &path, 0, &Limits::new(4, 256), None)
            .err()
            .expect("fp32 is refused");
        assert_eq!(err, Refused::Fp32);
        let text = err.to_string();
        assert!(
            text.contains("TF32") && text.contains("--ep cuda"),
            "{text}"
        );
    }
}

#[test]
fn a_fused_decoder_is_refused_with_the_way_out() {
    let mut m = demo();
    m.decoder.flavour = Flavour::Fused;
    let decoder = Path::new("model").join(&m.graphs.decoder.file);
    let Err(err) = execution_provider(
        &m,
        GraphKind::Decoder,
        &decoder,
        0,
        &Limits::new(4, 256),
        None,
    ) else {
        panic!("TensorRT must refuse the fused decoder");
    };
    assert_eq!(err, Refused::FusedDecoder);
    assert_eq!(
        err.to_string(),
        "the fused decoder uses ONNX Runtime contrib operators that TensorRT cannot run: use \
         --ep cuda for it, or export with --decoder plain for TensorRT"
    );
    // The other graphs of the same model still get a provider.
    let vision = Path::new("model").join(&m.graphs.vision.file);
    assert!(execution_provider(
        &m,
        GraphKind::Vision,
        &vision,
        0,
        &Limits::new(4, 256),
        None
    )
    .is_ok());
}

#[test]
fn demo_profiles_for_every_graph() {
    let m = demo();
    let l = limits(8, 256, 256);
    // Expected by hand: batch 1/8/8; pixel_values [B, 3, 336, 336]; image_features
    // [B, 576, 32]; input_ids [1,1] / [8,1] / [8, 256 text tokens].
    let p = profile(&m, GraphKind::Vision, &l).unwrap();
    assert_eq!(p.min, "pixel_values:1x3x336x336");
    assert_eq!(p.opt, "pixel_values:8x3x336x336");
    assert_eq!(p.max, "pixel_values:8x3x336x336");
    let p = profile(&m, GraphKind::Projector, &l).unwrap();
    assert_eq!(
        (p.min.as_str(), p.opt.as_str(), p.max.as_str()),
        (
            "image_features:1x576x32",
            "image_features:8x576x32",
            "image_features:8x576x32"
        )
    );
    let p = profile(&m, GraphKind::Embed, &l).unwrap();
    assert_eq!(
        (p.min.as_str(), p.opt.as_str(), p.max.as_str()),
        ("input_ids:1x1", "input_ids:8x1", "input_ids:8x256")
    );
    // Decoder: prompt max P = 576 + 256 - 1 = 831; past max T = 831 + 256 = 1087;
    // past opt = 576 + 64 + 256/2 = 768. min (1 row, 1 new, 0 past), opt (8, 1, 768),
    // max (8, 831, 1087) with mask = past + new: 1, 769, 1918.
    let p = profile(&m, GraphKind::Decoder, &l).unwrap();
    let kv = |n: usize, past: usize| {
        (0..2)
            .map(|l| {
                format!(
                    "past_key_values.{l}.key:{n}x4x{past}x16,past_key_values.{l}.value:{n}x4x{past}x16"
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        p.min,
        format!(
            "inputs_embeds:1x1x64,attention_mask:1x1,position_ids:1x1,{}",
            kv(1, 0)
        )
    );
    assert_eq!(
        p.opt,
        format!(
            "inputs_embeds:8x1x64,attention_mask:8x769,position_ids:8x1,{}",
            kv(8, 768)
        )
    );
    assert_eq!(
        p.max,
        format!(
            "inputs_embeds:8x831x64,attention_mask:8x1918,position_ids:8x831,{}",
            kv(8, 1087)
        )
    );
}

#[test]
fn llava_7b_decoder_profile_is_capped_by_max_position_embeddings() {
    let m = llava_7b();
    // 32 rows, 1024 text tokens, 4000 new: P = 576 + 1023 = 1599, P + 4000 capped at
    // 4096; past opt = 576 + 64 + 2000 = 2640.
    let p = profile(&m, GraphKind::Decoder, &limits(32, 1024, 4000)).unwrap();
    let entries: Vec<&str> = p.max.split(',').collect();
    // 3 inputs + 32 layers x (key, value), in manifest order.
    assert_eq!(entries.len(), 3 + 64);
    assert_eq!(entries[0], "inputs_embeds:32x1599x4096");
    assert_eq!(entries[1], "attention_mask:32x5695");
    assert_eq!(entries[2], "position_ids:32x1599");
    assert_eq!(entries[3], "past_key_values.0.key:32x32x4096x128");
    assert_eq!(entries[66], "past_key_values.31.value:32x32x4096x128");
    let opt: Vec<&str> = p.opt.split(',').collect();
    assert_eq!(opt[1], "attention_mask:32x2641");
    assert_eq!(opt[65], "past_key_values.31.key:32x32x2640x128");
    let min: Vec<&str> = p.min.split(',').collect();
    assert_eq!(min[66], "past_key_values.31.value:1x32x0x128");
    // Projector of the 7B: CLIP ViT-L hidden 1024.
    let p = profile(&m, GraphKind::Projector, &limits(32, 1024, 4000)).unwrap();
    assert_eq!(p.max, "image_features:32x576x1024");
    // batch 1: min = opt = max rows.
    let p = profile(&m, GraphKind::Vision, &limits(1, 256, 256)).unwrap();
    assert_eq!(p.min, p.max);
}

#[test]
fn unknown_inputs_and_zero_limits_are_errors_naming_them() {
    // The fused flavour's row inputs have no TensorRT shapes.
    let mut m = demo();
    m.decoder.flavour = Flavour::Fused;
    m.graphs = Graphs::exported(&m.decoder);
    let err = profile(&m, GraphKind::Decoder, &limits(1, 256, 256)).unwrap_err();
    assert_eq!(
        err,
        ProfileError::UnknownInput {
            graph: "decoder",
            input: "seqlens_k".into()
        }
    );
    assert!(err.to_string().contains("`seqlens_k`"), "{err}");
    // Inputs are known by their role in the manifest, whatever their names.
    let mut m = demo();
    m.graphs.decoder.cache[1].past_value = "cache.1.v".into();
    let p = profile(&m, GraphKind::Decoder, &limits(1, 256, 256)).unwrap();
    assert!(p.min.ends_with(",cache.1.v:1x4x0x16"), "{}", p.min);
    let err = profile(&demo(), GraphKind::Vision, &limits(0, 256, 256)).unwrap_err();
    assert_eq!(err, ProfileError::Limits("max_batch"));
}

#[test]
fn graphs_are_found_by_file_and_prefixes_follow_the_profile() {
    let m = demo();
    assert_eq!(
        m.graphs
            .kind_of_file(Path::new("/models/demo/decoder.onnx")),
        Some(GraphKind::Decoder)
    );
    assert_eq!(
        m.graphs.kind_of_file(Path::new("vision.onnx")),
        Some(GraphKind::Vision)
    );
    assert_eq!(m.graphs.kind_of_file(Path::new("other.onnx")), None);
    let a = profile(&m, GraphKind::Decoder, &limits(8, 256, 256)).unwrap();
    let b = profile(&m, GraphKind::Decoder, &limits(8, 256, 128)).unwrap();
    let pa = engine_prefix(GraphKind::Decoder, &a);
    assert!(
        pa.starts_with("decoder-") && pa.len() == "decoder-".len() + 8,
        "{pa}"
    );
    assert_eq!(pa, engine_prefix(GraphKind::Decoder, &a));
    assert_ne!(pa, engine_prefix(GraphKind::Decoder, &b));
    // The vision profile does not depend on the answer length: same engine.
    let va = profile(&m, GraphKind::Vision, &limits(8, 256, 256)).unwrap();
    let vb = profile(&m, GraphKind::Vision, &limits(8, 256, 128)).unwrap();
    assert_eq!(
        engine_prefix(GraphKind::Vision, &va),
        engine_prefix(GraphKind::Vision, &vb)
    );
}

fn h100() -> GpuIdentity {
    GpuIdentity {
        name: "NVIDIA H100 80GB HBM3".into(),
        compute_major: 9,
        compute_minor: 0,
    }
}

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn cache_dir_names_model_gpu_and_tensorrt_version() {
    let base = Path::new("/m/trt-cache");
    let dir = cache_dir(base, SHA, &h100(), "10.9.0");
    assert_eq!(
        dir,
        base.join("0123456789ab-nvidia-h100-80gb-hbm3-sm90-trt10.9.0")
    );
    let other_model = cache_dir(base, &SHA.replace('0', "f"), &h100(), "10.9.0");
    let other_gpu = cache_dir(
        base,
        SHA,
        &GpuIdentity {
            name: "NVIDIA A100-SXM4-80GB".into(),
            compute_major: 8,
            compute_minor: 0,
        },
        "10.9.0",
    );
    let other_trt = cache_dir(base, SHA, &h100(), "10.13.0");
    for other in [&other_model, &other_gpu, &other_trt] {
        assert_ne!(&dir, other);
        assert_eq!(other.parent(), Some(base));
    }
    assert_eq!(
        other_gpu.file_name().unwrap(),
        "0123456789ab-nvidia-a100-sxm4-80gb-sm80-trt10.9.0"
    );
    // Whatever a driver reports, the folder name stays one safe path component.
    let odd = GpuIdentity {
        name: "../../ GPU/\\:*".into(),
        compute_major: 12,
        compute_minor: 1,
    };
    let dir = cache_dir(base, "../x", &odd, "10/1");
    assert_eq!(dir.parent(), Some(base));
    assert_eq!(dir.file_name().unwrap(), "x-gpu-sm121-trt10-1");
}

#[test]
fn cache_plan_creates_the_folder_or_says_why_not() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = CachePlan::new(Some(tmp.path()), SHA, Ok(h100()), Ok("10.9.0".into()));
    let dir = plan.dir.clone().expect("a cache folder");
    assert!(dir.is_dir() && dir.is_absolute());
    assert_eq!(plan.off, None);
    assert!(!engine_present(&dir, "decoder-12345678"));
    std::fs::write(
        dir.join("decoder-12345678_2068723788287043730_0_fp16_sm90.engine"),
        b"x",
    )
    .unwrap();
    std::fs::write(dir.join("vision-abcdef01_1_0_sm90.profile"), b"x").unwrap();
    assert!(engine_present(&dir, "decoder-12345678"));
    assert!(!engine_present(&dir, "decoder-1234567"));
    assert!(!engine_present(&dir, "vision-abcdef01"));

    let missing = ProbeError::Load {
        lib: libs::NVINFER_LIB.into(),
        reason: "not found".into(),
    };
    let plan = CachePlan::new(Some(tmp.path()), SHA, Ok(h100()), Err(Some(missing)));
    assert_eq!(plan.dir, None);
    let off = plan.off.unwrap();
    assert!(off.contains("libnvinfer.so.10"), "{off}");
    let plan = CachePlan::new(None, SHA, Ok(h100()), Ok("10.9.0".into()));
    assert_eq!(plan.off.as_deref(), Some("no engine cache folder given"));
}

#[test]
fn build_records_read_as_the_run_prints_them() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = CachePlan::new(Some(tmp.path()), SHA, Ok(h100()), Ok("10.9.0".into()));
    let m = demo();
    let l = limits(1, 256, 256);
    let build = BuildTimer::start(&plan, &m, GraphKind::Decoder, &l).finish();
    assert!(!build.cache_hit);
    let prefix = build.engine_prefix.clone().unwrap();
    let dir = plan.dir.clone().unwrap();
    assert!(build
        .describe(GraphKind::Decoder)
        .starts_with("tensorrt: decoder: engine built in "));
    std::fs::write(dir.join(format!("{prefix}_1_0_sm90.engine")), b"x").unwrap();
    let build = BuildTimer::start(&plan, &m, GraphKind::Decoder, &l).finish();
    assert!(build.cache_hit);
    assert!(build.describe(GraphKind::Decoder).starts_with(&format!(
        "tensorrt: decoder: engine reused from {}",
        dir.display()
    )));
    let json = serde_json::to_value(&build).unwrap();
    assert_eq!(json["cache_hit"], true);
    assert!(json.get("cache_off").is_none());
    let off = CachePlan::new(None, SHA, Err(None), Err(None));
    let build = BuildTimer::start(&off, &m, GraphKind::Vision, &l).finish();
    assert!(build
        .describe(GraphKind::Vision)
        .ends_with("not cached (no engine cache folder given)"));
}

#[test]
fn tensorrt_versions_decode_both_encodings() {
    // NvInferRuntimeBase.h: TensorRT 10 (MAJOR*100+MINOR)*100+PATCH, 8 MAJOR*1000+...
    assert_eq!(decode_trt_version(100900).as_deref(), Some("10.9.0"));
    assert_eq!(decode_trt_version(101302).as_deref(), Some("10.13.2"));
    assert_eq!(decode_trt_version(8601).as_deref(), Some("8.6.1"));
    assert_eq!(decode_trt_version(0), None);
    assert_eq!(decode_trt_version(-1), None);
}

#[test]
fn probes_fail_soft_without_the_libraries() {
    let err = tensorrt_version_from(Path::new("/nonexistent/libnvinfer.so.10")).unwrap_err();
    assert!(matches!(err, ProbeError::Load { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/libnvinfer.so.10"));
}

#[test]
fn tensorrt_version_is_read_through_the_c_api() {
    let tmp = tempfile::tempdir().unwrap();
    let stub = crate::engine::dylib::stub::stub_library(tmp.path());
    assert_eq!(tensorrt_version_from(&stub).unwrap(), "10.9.0");
}
