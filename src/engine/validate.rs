//! Every manifest field that shapes a tensor, an allocation or a preprocessing step,
//! checked before any sample runs: against sane bounds ([`bounds`], no graph needed), and
//! against the dimensions the graphs themselves declare ([`against_graphs`]). A tampered
//! or hand-edited manifest (`decoder.hidden_size` doubled, `preprocess.crop_size` 100000,
//! `image_std` of zeros) is one error naming the field, never a panic, a 30 GB allocation
//! or silently wrong answers.

use std::collections::BTreeMap;

use ort::session::Session;
use ort::value::ValueType;
use vlguard_export::manifest::{GraphKind, Manifest};

/// One field that cannot be right.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The field's path in manifest.json, e.g. `decoder.hidden_size`.
    pub field: &'static str,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.message)
    }
}

use vlguard_export::limits::{
    MAX_CONTEXT, MAX_HEADS, MAX_HIDDEN, MAX_IMAGE_SIDE, MAX_LAYERS, MAX_VOCAB,
};

/// The exporter's bounds ([`vlguard_export::limits`]), for a manifest field.
fn in_range(problems: &mut Vec<Problem>, field: &'static str, value: usize, max: usize) {
    if let Err((field, message)) = vlguard_export::limits::check(field, value, max) {
        problems.push(Problem { field, message });
    }
}

fn positive(problems: &mut Vec<Problem>, field: &'static str, value: f64) {
    if !(value.is_finite() && value > 0.0) {
        problems.push(Problem {
            field,
            message: format!("is {value}; it must be a positive finite number"),
        });
    }
}

/// The bounds of every shaping field, and the relations between fields.
pub fn bounds(m: &Manifest) -> Vec<Problem> {
    let mut p = Vec::new();
    let (v, d, pre) = (&m.vision, &m.decoder, &m.preprocess);
    in_range(&mut p, "vision.image_size", v.image_size, MAX_IMAGE_SIDE);
    in_range(&mut p, "vision.patch_size", v.patch_size, MAX_IMAGE_SIDE);
    in_range(&mut p, "vision.hidden_size", v.hidden_size, MAX_HIDDEN);
    // In u128: a tampered image_size of 2^64 - 1 must be a problem, not an overflow.
    let side = (v.image_size / v.patch_size.max(1)) as u128;
    if v.num_tokens as u128 != side * side {
        p.push(Problem {
            field: "vision.num_tokens",
            message: format!(
                "is {}; an image of {} with patches of {} has {} patch tokens",
                v.num_tokens,
                v.image_size,
                v.patch_size,
                side * side
            ),
        });
    }
    in_range(&mut p, "decoder.hidden_size", d.hidden_size, MAX_HIDDEN);
    in_range(&mut p, "decoder.num_layers", d.num_layers, MAX_LAYERS);
    in_range(&mut p, "decoder.num_heads", d.num_heads, MAX_HEADS);
    in_range(&mut p, "decoder.num_kv_heads", d.num_kv_heads, MAX_HEADS);
    in_range(&mut p, "decoder.vocab_size", d.vocab_size, MAX_VOCAB);
    in_range(
        &mut p,
        "decoder.max_position_embeddings",
        d.max_position_embeddings,
        MAX_CONTEXT,
    );
    if d.num_heads as u128 * d.head_dim as u128 != d.hidden_size as u128 {
        p.push(Problem {
            field: "decoder.head_dim",
            message: format!(
                "is {}; {} heads of it do not make the hidden size {}",
                d.head_dim, d.num_heads, d.hidden_size
            ),
        });
    }
    if d.num_kv_heads == 0 || d.num_heads % d.num_kv_heads != 0 {
        p.push(Problem {
            field: "decoder.num_kv_heads",
            message: format!(
                "is {}; it must divide num_heads {}",
                d.num_kv_heads, d.num_heads
            ),
        });
    }
    positive(&mut p, "decoder.rope_theta", d.rope_theta);
    positive(&mut p, "decoder.rms_norm_eps", d.rms_norm_eps);
    if pre.crop_size != v.image_size {
        p.push(Problem {
            field: "preprocess.crop_size",
            message: format!(
                "is {}; the vision tower takes {}",
                pre.crop_size, v.image_size
            ),
        });
    }
    in_range(
        &mut p,
        "preprocess.shortest_edge",
        pre.shortest_edge,
        MAX_IMAGE_SIDE,
    );
    positive(&mut p, "preprocess.rescale_factor", pre.rescale_factor);
    for (field, values) in [
        ("preprocess.image_std", pre.image_std),
        ("preprocess.image_mean", pre.image_mean),
    ] {
        let bad_std = field.ends_with("std") && values.iter().any(|s| s.abs() < 1e-6);
        if values.iter().any(|x| !x.is_finite()) || bad_std {
            p.push(Problem {
                field,
                message: format!("is {values:?}; it must be finite (and a std non-zero)"),
            });
        }
    }
    graph_roles(&mut p, m);
    for (field, id) in [
        ("tokenizer.bos_id", m.tokenizer.bos_id),
        ("tokenizer.eos_id", m.tokenizer.eos_id),
        ("tokenizer.unk_id", m.tokenizer.unk_id),
    ] {
        if id as usize >= d.vocab_size {
            p.push(Problem {
                field,
                message: format!("is {id}, outside the vocabulary of {}", d.vocab_size),
            });
        }
    }
    p
}

/// The decoder graph's roles against the decoder's shape: row inputs of its flavour and
/// one cache entry per layer.
fn graph_roles(p: &mut Vec<Problem>, m: &Manifest) {
    let (d, g) = (&m.decoder, &m.graphs.decoder);
    if g.rows.flavour() != d.flavour {
        p.push(Problem {
            field: "graphs.decoder.rows",
            message: format!(
                "names the inputs of a {} decoder, but `decoder.flavour` is {}",
                g.rows.flavour().as_str(),
                d.flavour.as_str()
            ),
        });
    }
    if g.cache.len() != d.num_layers {
        p.push(Problem {
            field: "graphs.decoder.cache",
            message: format!(
                "names the cache of {} layers, but `decoder.num_layers` is {}",
                g.cache.len(),
                d.num_layers
            ),
        });
    }
}

/// A graph's declared inputs and outputs: name -> dimensions (-1 where dynamic).
pub type Declared = BTreeMap<String, Vec<i64>>;

pub fn declared(session: &Session) -> Declared {
    let dims = |t: &ValueType| match t {
        ValueType::Tensor { shape, .. } => shape.to_vec(),
        _ => Vec::new(),
    };
    let inputs = session.inputs().iter().map(|o| (o.name(), o.dtype()));
    let outputs = session.outputs().iter().map(|o| (o.name(), o.dtype()));
    inputs
        .chain(outputs)
        .map(|(name, ty)| (name.to_string(), dims(ty)))
        .collect()
}

/// The fields that must equal a static dimension a graph declares: which tensor (by its
/// role in the manifest) and which axis.
pub fn against_graphs(m: &Manifest, graphs: &BTreeMap<GraphKind, Declared>) -> Vec<Problem> {
    use GraphKind::*;
    let (v, d, g) = (&m.vision, &m.decoder, &m.graphs);
    let first_past = g.decoder.past().next().unwrap_or_default();
    let expected: [(&'static str, usize, GraphKind, &str, usize); 12] = [
        (
            "vision.image_size",
            v.image_size,
            Vision,
            &g.vision.pixel_values,
            2,
        ),
        (
            "vision.image_size",
            v.image_size,
            Vision,
            &g.vision.pixel_values,
            3,
        ),
        (
            "vision.num_tokens",
            v.num_tokens,
            Vision,
            &g.vision.image_features,
            1,
        ),
        (
            "vision.hidden_size",
            v.hidden_size,
            Vision,
            &g.vision.image_features,
            2,
        ),
        (
            "projector.input_size",
            m.projector.input_size,
            Projector,
            &g.projector.image_features,
            2,
        ),
        (
            "projector.output_size",
            m.projector.output_size,
            Projector,
            &g.projector.image_embeds,
            2,
        ),
        (
            "decoder.hidden_size",
            d.hidden_size,
            Projector,
            &g.projector.image_embeds,
            2,
        ),
        (
            "decoder.hidden_size",
            d.hidden_size,
            Embed,
            &g.embed.inputs_embeds,
            2,
        ),
        (
            "decoder.hidden_size",
            d.hidden_size,
            Decoder,
            &g.decoder.inputs_embeds,
            2,
        ),
        (
            "decoder.vocab_size",
            d.vocab_size,
            Decoder,
            &g.decoder.logits,
            1,
        ),
        (
            "decoder.num_kv_heads",
            d.num_kv_heads,
            Decoder,
            first_past,
            1,
        ),
        ("decoder.head_dim", d.head_dim, Decoder, first_past, 3),
    ];
    let mut problems = Vec::new();
    for (field, value, kind, tensor, axis) in expected {
        let Some(dims) = graphs.get(&kind).and_then(|io| io.get(tensor)) else {
            continue;
        };
        let declared = dims.get(axis).copied().unwrap_or(-1);
        if declared >= 0 && declared as usize != value {
            problems.push(Problem {
                field,
                message: format!(
                    "is {value}, but graph {kind} declares {declared} for axis {axis} of `{tensor}`"
                ),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::test_manifests::demo;

    #[test]
    fn an_exported_manifest_passes() {
        assert_eq!(bounds(&demo()), vec![]);
    }

    #[test]
    fn tampered_fields_are_named() {
        type Tamper = fn(&mut Manifest);
        let cases: [(&str, Tamper); 9] = [
            ("decoder.head_dim", |m| m.decoder.hidden_size *= 2),
            ("preprocess.crop_size", |m| m.preprocess.crop_size = 100_000),
            ("preprocess.shortest_edge", |m| {
                m.preprocess.shortest_edge = 100_000
            }),
            ("preprocess.image_std", |m| {
                m.preprocess.image_std = [0.0; 3]
            }),
            ("decoder.vocab_size", |m| {
                m.decoder.vocab_size = 2_000_000_000
            }),
            ("decoder.num_kv_heads", |m| m.decoder.num_kv_heads = 3),
            ("tokenizer.eos_id", |m| m.tokenizer.eos_id = 999_999),
            // A plain graph's mask and positions named for a fused decoder.
            ("graphs.decoder.rows", |m| {
                m.decoder.flavour = vlguard_export::manifest::Flavour::Fused
            }),
            ("graphs.decoder.cache", |m| {
                m.graphs.decoder.cache.pop();
            }),
        ];
        for (field, tamper) in cases {
            let mut m = demo();
            tamper(&mut m);
            let problems = bounds(&m);
            assert!(
                problems.iter().any(|p| p.field == field),
                "{field}: {problems:?}"
            );
        }
    }

    #[test]
    fn graph_dimensions_must_match() {
        let m = demo();
        let mut graphs = BTreeMap::new();
        let vision: Declared = [
            (m.graphs.vision.pixel_values.clone(), vec![-1, 3, 336, 336]),
            (m.graphs.vision.image_features.clone(), vec![-1, 576, 32]),
        ]
        .into_iter()
        .collect();
        graphs.insert(GraphKind::Vision, vision);
        assert_eq!(against_graphs(&m, &graphs), vec![]);
        let mut small = m.clone();
        small.vision.image_size = 224;
        let problems = against_graphs(&small, &graphs);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0]
            .to_string()
            .contains("`vision.image_size` is 224, but graph vision declares 336"));
    }
}
