//! The manifest's `graphs` block: each graph's file and the name of each of its tensors
//! by role, as onnxruntime-genai's `genai_config.json` names them (STYLE.md practice 16).
//!
//! The exporter writes it ([`Graphs::exported`]: the names its graph builders give), the
//! runtime checks every session against it (each graph has exactly these inputs and
//! outputs, [`Graphs::inputs`] / [`Graphs::outputs`]) and reads each tensor by its field.
//! Adding a tensor to a graph means a field here, its builder and the one reader that
//! feeds or takes it; no list position anywhere.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{names, DecoderSpec, Flavour, GraphKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graphs {
    pub vision: VisionGraph,
    pub projector: ProjectorGraph,
    pub embed: EmbedGraph,
    pub decoder: DecoderGraph,
}

/// The CLIP tower: `pixel_values [B, 3, S, S]` (fp32) -> `image_features [B, N, Hv]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionGraph {
    pub file: String,
    pub pixel_values: String,
    pub image_features: String,
}

/// The multimodal projector: `image_features [B, N, Hv]` -> `image_embeds [B, N, H]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectorGraph {
    pub file: String,
    pub image_features: String,
    pub image_embeds: String,
}

/// The token embedding: `input_ids [B, T]` (int64) -> `inputs_embeds [B, T, H]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedGraph {
    pub file: String,
    pub input_ids: String,
    pub inputs_embeds: String,
}

/// The Llama decoder: embeddings, where each row's tokens lie (by flavour) and the cache
/// in; logits and the updated cache out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecoderGraph {
    pub file: String,
    /// `[B, T, H]`: this call's positions, prompt or one step.
    pub inputs_embeds: String,
    /// How the graph learns each row's positions; which tensors depends on the flavour.
    pub rows: RowInputs,
    /// Per layer, in layer order: the cache fed in and the cache that comes out. An
    /// explicit list rather than a `%d` pattern: every name here is a name the session
    /// is checked against, and one entry per layer makes a past without its present
    /// unwritable.
    pub cache: Vec<LayerCache>,
    /// `[B, V]` fp32: the last position's logits of each row.
    pub logits: String,
}

/// The decoder inputs that place each row's tokens, one variant per [`Flavour`]
/// (`{"plain": {...}}` or `{"fused": {...}}` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowInputs {
    Plain(PlainRows),
    Fused(FusedRows),
}

/// Left-padded rows: `attention_mask [B, past + T]` (0 on padding) and
/// `position_ids [B, T]` (int64 both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlainRows {
    pub attention_mask: String,
    pub position_ids: String,
}

/// Right-padded rows in a preallocated cache: `seqlens_k [B]` (tokens in the row after
/// the call, minus one) and `total_sequence_length` (the largest `seqlens_k + 1`, a
/// scalar), int32 both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusedRows {
    pub seqlens_k: String,
    pub total_sequence_length: String,
}

/// One layer's cache tensors, `[B, kv_heads, positions, head_dim]` each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCache {
    pub past_key: String,
    pub past_value: String,
    pub present_key: String,
    pub present_value: String,
}

impl RowInputs {
    pub fn flavour(&self) -> Flavour {
        match self {
            RowInputs::Plain(_) => Flavour::Plain,
            RowInputs::Fused(_) => Flavour::Fused,
        }
    }

    /// The two names in the graph's order.
    fn names(&self) -> [&str; 2] {
        match self {
            RowInputs::Plain(r) => [&r.attention_mask, &r.position_ids],
            RowInputs::Fused(r) => [&r.seqlens_k, &r.total_sequence_length],
        }
    }
}

impl DecoderGraph {
    /// The cache inputs, key then value per layer: the order the runtime keeps its cache
    /// buffers in.
    pub fn past(&self) -> impl Iterator<Item = &str> {
        self.cache
            .iter()
            .flat_map(|l| [l.past_key.as_str(), l.past_value.as_str()])
    }

    /// The cache outputs, key then value per layer (matching [`DecoderGraph::past`]).
    pub fn present(&self) -> impl Iterator<Item = &str> {
        self.cache
            .iter()
            .flat_map(|l| [l.present_key.as_str(), l.present_value.as_str()])
    }
}

impl Graphs {
    /// The graphs as the exporter writes them: its file names and the names its graph
    /// builders give each tensor, for a decoder of `decoder`'s flavour and layers.
    pub fn exported(decoder: &DecoderSpec) -> Graphs {
        let rows = match decoder.flavour {
            Flavour::Plain => RowInputs::Plain(PlainRows {
                attention_mask: names::ATTENTION_MASK.into(),
                position_ids: names::POSITION_IDS.into(),
            }),
            Flavour::Fused => RowInputs::Fused(FusedRows {
                seqlens_k: names::SEQLENS_K.into(),
                total_sequence_length: names::TOTAL_SEQUENCE_LENGTH.into(),
            }),
        };
        Graphs {
            vision: VisionGraph {
                file: crate::VISION_FILE.into(),
                pixel_values: names::PIXEL_VALUES.into(),
                image_features: names::IMAGE_FEATURES.into(),
            },
            projector: ProjectorGraph {
                file: crate::PROJECTOR_FILE.into(),
                image_features: names::IMAGE_FEATURES.into(),
                image_embeds: names::PROJECTOR_OUT.into(),
            },
            embed: EmbedGraph {
                file: crate::EMBED_FILE.into(),
                input_ids: names::INPUT_IDS.into(),
                inputs_embeds: names::INPUTS_EMBEDS.into(),
            },
            decoder: DecoderGraph {
                file: crate::DECODER_FILE.into(),
                inputs_embeds: names::INPUTS_EMBEDS.into(),
                rows,
                cache: (0..decoder.num_layers)
                    .map(|layer| LayerCache {
                        past_key: names::past_key(layer),
                        past_value: names::past_value(layer),
                        present_key: names::present_key(layer),
                        present_value: names::present_value(layer),
                    })
                    .collect(),
                logits: names::LOGITS.into(),
            },
        }
    }

    /// The file of graph `kind`, relative to the model folder.
    pub fn file(&self, kind: GraphKind) -> &str {
        match kind {
            GraphKind::Vision => &self.vision.file,
            GraphKind::Projector => &self.projector.file,
            GraphKind::Embed => &self.embed.file,
            GraphKind::Decoder => &self.decoder.file,
        }
    }

    /// Every input of graph `kind`, in the order the graph declares them (the contract a
    /// session is checked against, and the order of TensorRT's profile shapes).
    pub fn inputs(&self, kind: GraphKind) -> Vec<&str> {
        match kind {
            GraphKind::Vision => vec![&self.vision.pixel_values],
            GraphKind::Projector => vec![&self.projector.image_features],
            GraphKind::Embed => vec![&self.embed.input_ids],
            GraphKind::Decoder => {
                let d = &self.decoder;
                let mut inputs = vec![d.inputs_embeds.as_str()];
                inputs.extend(d.rows.names());
                inputs.extend(d.past());
                inputs
            }
        }
    }

    /// Every output of graph `kind`, in the order the graph declares them.
    pub fn outputs(&self, kind: GraphKind) -> Vec<&str> {
        match kind {
            GraphKind::Vision => vec![&self.vision.image_features],
            GraphKind::Projector => vec![&self.projector.image_embeds],
            GraphKind::Embed => vec![&self.embed.inputs_embeds],
            GraphKind::Decoder => {
                let mut outputs = vec![self.decoder.logits.as_str()];
                outputs.extend(self.decoder.present());
                outputs
            }
        }
    }

    /// The graph whose `file` has the file name of `path`.
    pub fn kind_of_file(&self, path: &Path) -> Option<GraphKind> {
        let file = path.file_name()?;
        GraphKind::ALL
            .into_iter()
            .find(|&k| Path::new(self.file(k)).file_name() == Some(file))
    }
}
