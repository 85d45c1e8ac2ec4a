//! The graph-building stage: the four graphs written into the staging folder from the
//! configs and weights, and the manifest sections that describe them (graph specs with
//! their input and output names, vision and decoder dimensions).

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{ClipVisionConfig, LlavaConfig};
use crate::error::ExportError;
use crate::graphs::{self, Probes, Weights};
use crate::layout::Source;
use crate::manifest::{DecoderSpec, Flavour, GraphKind, Graphs, VisionSpec};
use crate::pipeline::{ExportOptions, DECODER_FILE, EMBED_FILE, PROJECTOR_FILE, VISION_FILE};

/// Writes the four graphs into `dir`; their specs and weight bytes per file.
pub(super) fn build_graphs(
    dir: &Path,
    src: &Source,
    emitted: usize,
    opts: &ExportOptions,
    w_llava: &Weights,
    w_clip: &Weights,
) -> Result<(Graphs, BTreeMap<String, u64>), ExportError> {
    let (llava, dtype) = (&src.llava, opts.dtype);
    let vision = graphs::build_vision(dir, VISION_FILE, &src.clip, llava, emitted, dtype, w_clip)?;
    let projector = graphs::build_projector(dir, PROJECTOR_FILE, llava, dtype, w_llava)?;
    let embed = graphs::build_embed(dir, EMBED_FILE, llava, dtype, w_llava)?;
    let decoder = match opts.flavour {
        Flavour::Plain => {
            graphs::build_decoder(dir, DECODER_FILE, llava, dtype, w_llava, Probes::Off)?
        }
        Flavour::Fused => {
            graphs::build_fused_decoder(dir, DECODER_FILE, llava, dtype, w_llava, Probes::Off)?
        }
    };
    let weight_bytes = [
        (VISION_FILE, vision.weight_bytes),
        (PROJECTOR_FILE, projector.weight_bytes),
        (EMBED_FILE, embed.weight_bytes),
        (DECODER_FILE, decoder.weight_bytes),
    ]
    .into_iter()
    .map(|(f, b)| (f.to_string(), b))
    .collect();
    let graphs = Graphs::exported(&decoder_spec(llava, opts.flavour));
    // The manifest names the tensors the builders declared, in their order.
    for (kind, built) in [
        (GraphKind::Vision, &vision),
        (GraphKind::Projector, &projector),
        (GraphKind::Embed, &embed),
        (GraphKind::Decoder, &decoder),
    ] {
        debug_assert_eq!(graphs.inputs(kind), built.inputs, "{kind} inputs");
        debug_assert_eq!(graphs.outputs(kind), built.outputs, "{kind} outputs");
    }
    Ok((graphs, weight_bytes))
}

pub(super) fn vision_spec(
    clip: &ClipVisionConfig,
    llava: &LlavaConfig,
    emitted: usize,
) -> VisionSpec {
    VisionSpec {
        image_size: clip.image_size,
        patch_size: clip.patch_size,
        num_tokens: if llava.select_feature_keeps_cls {
            clip.num_positions()
        } else {
            clip.num_positions() - 1
        },
        hidden_size: clip.hidden_size,
        num_heads: clip.num_heads,
        intermediate_size: clip.intermediate_size,
        num_layers: clip.num_layers,
        select_layer: llava.select_layer,
        layers_emitted: emitted,
        layer_norm_eps: clip.layer_norm_eps,
        hidden_act: clip.hidden_act.clone(),
    }
}

pub(super) fn decoder_spec(llava: &LlavaConfig, flavour: Flavour) -> DecoderSpec {
    let l = &llava.llama;
    DecoderSpec {
        hidden_size: l.hidden_size,
        num_layers: l.num_layers,
        num_heads: l.num_heads,
        num_kv_heads: l.num_kv_heads,
        head_dim: l.head_dim,
        intermediate_size: l.intermediate_size,
        vocab_size: l.vocab_size,
        max_position_embeddings: l.max_position_embeddings,
        rope_theta: l.rope_theta,
        rms_norm_eps: l.rms_norm_eps,
        flavour,
    }
}
