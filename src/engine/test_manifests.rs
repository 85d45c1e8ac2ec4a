//! Manifests as the exporter writes them, for the engine's unit tests.

use std::collections::BTreeMap;

use vlguard_export::manifest::{
    DecoderSpec, Dtype, Flavour, Graphs, Manifest, PreprocessSpec, ProjectorSpec, SourceSpec,
    TokenizerSpec, VisionSpec,
};

/// A manifest as the exporter writes it (graph files and tensor names from
/// `vlguard_export`), with the given vision hidden size and decoder shape.
pub fn manifest(vision_hidden: usize, decoder: DecoderSpec) -> Manifest {
    Manifest {
        format_version: vlguard_export::manifest::FORMAT_VERSION,
        exporter_version: "test".into(),
        dtype: Dtype::Fp16,
        vision: VisionSpec {
            image_size: 336,
            patch_size: 14,
            num_tokens: 576,
            hidden_size: vision_hidden,
            num_heads: 4,
            intermediate_size: 4 * vision_hidden,
            num_layers: 3,
            select_layer: -2,
            layers_emitted: 2,
            layer_norm_eps: 1e-5,
            hidden_act: "quick_gelu".into(),
        },
        projector: ProjectorSpec {
            kind: "mlp2x_gelu".into(),
            input_size: vision_hidden,
            output_size: decoder.hidden_size,
        },
        preprocess: PreprocessSpec::default(),
        tokenizer: TokenizerSpec {
            file: "tokenizer.json".into(),
            bos_id: 1,
            eos_id: 2,
            unk_id: 0,
            image_token_id: -200,
            template: "llava_v1".into(),
        },
        graphs: Graphs::exported(&decoder),
        decoder,
        files: BTreeMap::new(),
        source: SourceSpec {
            checkpoint: "c".into(),
            vision_tower: "v".into(),
            files: BTreeMap::new(),
        },
    }
}

/// models/demo-src: llava-v1.5-tiny/config.json (hidden 64, 2 layers, 4 heads, 4 kv
/// heads -> head_dim 16, max_position_embeddings 4096) and the tiny CLIP tower
/// (hidden 32, 336/14 -> 576 tokens).
pub fn demo() -> Manifest {
    manifest(
        32,
        DecoderSpec {
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 16,
            intermediate_size: 128,
            vocab_size: 1200,
            max_position_embeddings: 4096,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            flavour: Flavour::Plain,
        },
    )
}

/// liuhaotian/llava-v1.5-7b's config.json (models/bench-7b/config.json): hidden 4096,
/// 32 layers, 32 heads and kv heads -> head_dim 128, max_position_embeddings 4096;
/// CLIP ViT-L/14-336: hidden 1024, 576 tokens.
pub fn llava_7b() -> Manifest {
    manifest(
        1024,
        DecoderSpec {
            hidden_size: 4096,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            intermediate_size: 11008,
            vocab_size: 32000,
            max_position_embeddings: 4096,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            flavour: Flavour::Plain,
        },
    )
}
