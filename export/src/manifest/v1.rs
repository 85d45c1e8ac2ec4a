//! Format version 1's `graphs` block, read so that model folders exported before tensors
//! were named by role keep loading (their graph files are byte-identical to a fresh
//! export's; only the manifest's layout changed).
//!
//! Version 1 listed each graph's tensor names in the graph's order, and that order was
//! one fixed contract for every version-1 export: one input and one output for the
//! vision, projector and embed graphs; for the decoder `inputs_embeds`, the flavour's two
//! row inputs (mask then positions, or `seqlens_k` then `total_sequence_length`), then a
//! key and a value per layer, and `logits` followed by the same per layer. Reading a list
//! of another length is refused; the names themselves are checked against each session
//! as any manifest's are.

use serde::Deserialize;

use super::graphs::{
    DecoderGraph, EmbedGraph, FusedRows, LayerCache, PlainRows, ProjectorGraph, RowInputs,
    VisionGraph,
};
use super::{DecoderSpec, Flavour, Manifest, FORMAT_VERSION};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Graphs {
    vision: GraphSpec,
    projector: GraphSpec,
    embed: GraphSpec,
    decoder: GraphSpec,
}

/// One graph file and its tensor names, in the order the graph declares them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct GraphSpec {
    file: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl GraphSpec {
    /// The single input and output of a one-in, one-out graph.
    fn one_to_one(self, graph: &str) -> Result<(String, String, String), String> {
        match (
            <[String; 1]>::try_from(self.inputs),
            <[String; 1]>::try_from(self.outputs),
        ) {
            (Ok([input]), Ok([output])) => Ok((self.file, input, output)),
            _ => Err(format!("graph {graph} must list one input and one output")),
        }
    }
}

impl Manifest<Graphs> {
    /// The same manifest with its graphs named by role (and the current format version,
    /// so that writing it back gives a valid current manifest).
    pub fn into_roles(self) -> Result<Manifest, String> {
        let graphs = self.graphs.into_roles(&self.decoder)?;
        Ok(Manifest {
            format_version: FORMAT_VERSION,
            exporter_version: self.exporter_version,
            dtype: self.dtype,
            vision: self.vision,
            projector: self.projector,
            decoder: self.decoder,
            preprocess: self.preprocess,
            tokenizer: self.tokenizer,
            graphs,
            files: self.files,
            source: self.source,
        })
    }
}

impl Graphs {
    fn into_roles(self, decoder: &DecoderSpec) -> Result<super::Graphs, String> {
        let (file, pixel_values, image_features) = self.vision.one_to_one("vision")?;
        let vision = VisionGraph {
            file,
            pixel_values,
            image_features,
        };
        let (file, image_features, image_embeds) = self.projector.one_to_one("projector")?;
        let projector = ProjectorGraph {
            file,
            image_features,
            image_embeds,
        };
        let (file, input_ids, inputs_embeds) = self.embed.one_to_one("embed")?;
        let embed = EmbedGraph {
            file,
            input_ids,
            inputs_embeds,
        };
        Ok(super::Graphs {
            vision,
            projector,
            embed,
            decoder: decoder_roles(self.decoder, decoder)?,
        })
    }
}

/// The decoder's lists in version 1's order, by role.
fn decoder_roles(spec: GraphSpec, decoder: &DecoderSpec) -> Result<DecoderGraph, String> {
    let layers = decoder.num_layers;
    let wrong = || {
        format!(
            "graph decoder must list 3 + 2 x {layers} inputs and 1 + 2 x {layers} outputs \
             for decoder.num_layers {layers}"
        )
    };
    let mut inputs = spec.inputs.into_iter();
    let mut outputs = spec.outputs.into_iter();
    let (Some(inputs_embeds), Some(second), Some(third), Some(logits)) =
        (inputs.next(), inputs.next(), inputs.next(), outputs.next())
    else {
        return Err(wrong());
    };
    let (past, present): (Vec<String>, Vec<String>) = (inputs.collect(), outputs.collect());
    if past.len() != 2 * layers || present.len() != 2 * layers {
        return Err(wrong());
    }
    let rows = match decoder.flavour {
        Flavour::Plain => RowInputs::Plain(PlainRows {
            attention_mask: second,
            position_ids: third,
        }),
        Flavour::Fused => RowInputs::Fused(FusedRows {
            seqlens_k: second,
            total_sequence_length: third,
        }),
    };
    let mut past = past.into_iter();
    let mut present = present.into_iter();
    let mut cache = Vec::with_capacity(layers);
    while let (Some(past_key), Some(past_value), Some(present_key), Some(present_value)) =
        (past.next(), past.next(), present.next(), present.next())
    {
        cache.push(LayerCache {
            past_key,
            past_value,
            present_key,
            present_value,
        });
    }
    Ok(DecoderGraph {
        file: spec.file,
        inputs_embeds,
        rows,
        cache,
        logits,
    })
}
