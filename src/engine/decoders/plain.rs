//! The `plain` decoder graph (standard ONNX ops, any provider) behind the slot seam.
//!
//! Contract: prompts are left-padded to the batch's longest (attention mask 0 on the
//! padding, position ids counting real tokens only, as HF computes `cumsum(mask) - 1`);
//! each step appends one position to every row's mask. The cache is the graph's
//! `present.*` of the last call, fed back as `past_key_values.*` (on a GPU it stays in
//! device memory through IO binding; only the logits come to the host). Finished rows are
//! dropped from the cache (a copy of the kept rows) unless they ride along
//! (`riders`: a GPU, where a step costs the same for any number of rows, or the
//! `--keep-finished-rows` replay on the CPU). Prompts join only an empty batch: a row
//! cannot be added to a left-padded cache in flight, which is what the fused flavour is
//! for.

use std::time::Instant;

use half::f16;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor};
use vlguard_export::manifest::{DecoderGraph, GraphKind, Manifest, PlainRows};

use super::{logits_of, Embedder};
use crate::engine::cuda::DeviceMemory;
use crate::engine::session::{int_tensor, take, to_f32, Graph};
use crate::engine::Error;
use crate::generate::{Counters, Decoder, Prompt};

pub struct PlainDecoder {
    graph: Graph,
    names: DecoderGraph,
    /// The attention mask and position ids inputs.
    row_inputs: PlainRows,
    embedder: Embedder,
    /// Set when the decoder runs on a GPU: the cache stays in device memory.
    device: Option<DeviceMemory>,
    riders: bool,
    /// Cache shape per layer: kv heads, head dim, layers.
    kv_heads: usize,
    head_dim: usize,
    layers: usize,
    /// The batch's physical rows, in cache order.
    rows: Vec<Row>,
    /// `present.*` of the last call, in manifest order (key, value per layer).
    cache: Vec<DynValue>,
    counters: Counters,
}

/// One row of the batch: the slot it answers for, its attention mask so far (padding
/// included), the position of its next token.
struct Row {
    slot: usize,
    mask: Vec<i64>,
    next_position: i64,
}

impl PlainDecoder {
    pub fn new(
        graph: Graph,
        embedder: Embedder,
        manifest: &Manifest,
        row_inputs: &PlainRows,
        device: Option<DeviceMemory>,
        riders: bool,
    ) -> PlainDecoder {
        let d = &manifest.decoder;
        PlainDecoder {
            graph,
            names: manifest.graphs.decoder.clone(),
            row_inputs: row_inputs.clone(),
            embedder,
            device,
            riders,
            kv_heads: d.num_kv_heads,
            head_dim: d.head_dim,
            layers: d.num_layers,
            rows: Vec::new(),
            cache: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// One graph call over every row: `embeds [rows, new, H]`, the rows' masks (past +
    /// new positions) and positions. Returns the last position's logits `[rows, V]`.
    fn run(&mut self, embeds: &[f32], positions: Vec<i64>, new: usize) -> Result<Vec<f32>, Error> {
        let rows = self.rows.len();
        let hidden = self.embedder.hidden();
        let total = self.rows.first().map_or(0, |r| r.mask.len());
        let mask: Vec<i64> = self
            .rows
            .iter()
            .flat_map(|r| r.mask.iter().copied())
            .collect();
        let embeds = self.graph.float_tensor(embeds, vec![rows, new, hidden])?;
        let mask = int_tensor(mask, vec![rows, total], "attention_mask")?;
        let positions = int_tensor(positions, vec![rows, new], "position_ids")?;
        if self.cache.is_empty() {
            self.cache = self.empty_cache(rows)?;
        }
        let names = &self.names;
        let mut inputs: Vec<(&str, SessionInputValue)> = Vec::with_capacity(3 + self.cache.len());
        inputs.push((names.inputs_embeds.as_str(), embeds.into()));
        inputs.push((self.row_inputs.attention_mask.as_str(), mask.into()));
        inputs.push((self.row_inputs.position_ids.as_str(), positions.into()));
        for (name, value) in names.past().zip(&self.cache) {
            inputs.push((name, value.into()));
        }
        let failed = self.graph.failed();
        let t = Instant::now();
        // Device-resident cache: inputs bound as they are (the past already lives on the
        // device), present.* allocated there, only the logits copied to the host.
        let binding = match &self.device {
            None => None,
            Some(memory) => Some(bind(&self.graph, names, &inputs, memory).map_err(|source| {
                Error::Binding {
                    graph: GraphKind::Decoder,
                    source,
                }
            })?),
        };
        let mut out = match &binding {
            None => self.graph.session.run(inputs),
            Some(binding) => self.graph.session.run_binding(binding),
        }
        .map_err(failed)?;
        self.counters.ort_s += t.elapsed().as_secs_f64();
        let logits = take(&mut out, &names.logits, GraphKind::Decoder)?;
        let mut cache = Vec::with_capacity(2 * self.layers);
        for name in names.present() {
            cache.push(take(&mut out, name, GraphKind::Decoder)?);
        }
        drop(out);
        self.cache = cache;
        to_f32(&logits, "logits")
    }

    fn empty_cache(&self, rows: usize) -> Result<Vec<DynValue>, Error> {
        (0..2 * self.layers)
            .map(|_| {
                self.graph
                    .float_tensor(&[], vec![rows, self.kv_heads, 0, self.head_dim])
            })
            .collect()
    }

    fn row_slots(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.slot).collect()
    }
}

/// The call's IO binding on a GPU: `present.*` into device memory, logits to the host.
fn bind(
    graph: &Graph,
    names: &DecoderGraph,
    inputs: &[(&str, SessionInputValue)],
    memory: &DeviceMemory,
) -> ort::Result<ort::session::IoBinding> {
    let mut binding = graph.session.create_binding()?;
    for (name, value) in inputs {
        match value {
            SessionInputValue::Owned(v) => binding.bind_input(*name, v)?,
            SessionInputValue::View(v) => binding.bind_input(*name, &**v)?,
            SessionInputValue::ViewMut(v) => binding.bind_input(*name, &**v)?,
        }
    }
    binding.bind_output_to_device(names.logits.as_str(), &memory.host)?;
    for name in names.present() {
        binding.bind_output_to_device(name, &memory.device)?;
    }
    Ok(binding)
}

/// Prompts `[positions, H]` each, left-padded to the longest: `(embeds [rows, len, H],
/// masks, positions [rows, len], len)`; a padded position gets mask 0 and position 1
/// (HF's `position_ids.masked_fill_(attention_mask == 0, 1)`).
pub fn left_pad(prompts: &[Vec<f32>], hidden: usize) -> (Vec<f32>, Vec<Vec<i64>>, Vec<i64>, usize) {
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len() / hidden).collect();
    let len = lengths.iter().copied().max().unwrap_or(0);
    let mut embeds = vec![0f32; prompts.len() * len * hidden];
    let mut masks = Vec::with_capacity(prompts.len());
    let mut positions = vec![1i64; prompts.len() * len];
    for (row, prompt) in prompts.iter().enumerate() {
        let pad = len - lengths[row];
        let start = (row * len + pad) * hidden;
        embeds[start..start + prompt.len()].copy_from_slice(prompt);
        let mut mask = vec![0i64; len];
        for p in 0..lengths[row] {
            mask[pad + p] = 1;
            positions[row * len + pad + p] = p as i64;
        }
        masks.push(mask);
    }
    (embeds, masks, positions, len)
}

impl Decoder for PlainDecoder {
    type Error = Error;

    fn open(&mut self, _slots: usize, _capacity: usize) -> Result<(), Error> {
        // The cache grows with each call: nothing to size.
        self.rows.clear();
        self.cache.clear();
        Ok(())
    }

    fn prefill(&mut self, slots: &[usize], prompts: &[&Prompt]) -> Result<Vec<f32>, Error> {
        if !self.rows.is_empty() {
            return Err(Error::JoinLiveBatch);
        }
        let spliced = self.embedder.splice_all(prompts, &mut self.counters)?;
        let (embeds, masks, positions, len) = left_pad(&spliced, self.embedder.hidden());
        self.rows = slots
            .iter()
            .zip(masks)
            .map(|(&slot, mask)| {
                let real = mask.iter().sum::<i64>();
                Row {
                    slot,
                    mask,
                    next_position: real,
                }
            })
            .collect();
        self.cache.clear();
        let logits = self.run(&embeds, positions, len)?;
        logits_of(&logits, &self.row_slots(), slots)
    }

    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, Error> {
        // Rows riding along get any token (their outputs are ignored).
        let ids: Vec<i64> = self
            .rows
            .iter()
            .map(|row| {
                slots
                    .iter()
                    .position(|&s| s == row.slot)
                    .map_or(0, |i| tokens[i] as i64)
            })
            .collect();
        let embeds = self.embedder.embed(&ids, ids.len(), &mut self.counters)?;
        let mut positions = Vec::with_capacity(self.rows.len());
        for row in &mut self.rows {
            row.mask.push(1);
            positions.push(row.next_position);
            row.next_position += 1;
        }
        self.counters.step_rows += self.rows.len();
        let logits = self.run(&embeds, positions, 1)?;
        logits_of(&logits, &self.row_slots(), slots)
    }

    fn retain(&mut self, live: &[usize]) -> Result<(), Error> {
        if self.riders {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&r| live.contains(&self.rows[r].slot))
            .collect();
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        let mut kept = Vec::with_capacity(self.cache.len());
        for value in &self.cache {
            kept.push(select_rows(value, &keep)?);
        }
        self.cache = kept;
        self.rows = std::mem::take(&mut self.rows)
            .into_iter()
            .enumerate()
            .filter(|(r, _)| keep.contains(r))
            .map(|(_, row)| row)
            .collect();
        Ok(())
    }

    fn joins_live_batch(&self) -> bool {
        false
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

/// Copies the given batch rows of a `[B, ...]` float tensor.
fn select_rows(value: &DynValue, rows: &[usize]) -> Result<DynValue, Error> {
    fn gather<T: Copy>(shape: &[i64], data: &[T], rows: &[usize]) -> (Vec<usize>, Vec<T>) {
        let batch = shape[0].max(1) as usize;
        let per_row = data.len() / batch;
        let mut out = Vec::with_capacity(per_row * rows.len());
        for &r in rows {
            out.extend_from_slice(&data[r * per_row..(r + 1) * per_row]);
        }
        let mut new_shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        new_shape[0] = rows.len();
        (new_shape, out)
    }
    let built = if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
        let (shape, data) = gather(shape, data, rows);
        Tensor::from_array((shape, data)).map(|t| t.into_dyn())
    } else if let Ok((shape, data)) = value.try_extract_tensor::<f16>() {
        let (shape, data) = gather(shape, data, rows);
        Tensor::from_array((shape, data)).map(|t| t.into_dyn())
    } else {
        return Err(Error::ElementType {
            tensor: "cache tensor",
        });
    };
    built.map_err(|source| Error::CacheRebuild { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_masks_and_positions_follow_hf() {
        // Hidden size 1; lengths 4 and 6.
        let prompts = vec![
            vec![1.0, 2.0, 3.0, 4.0],
            vec![5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
        ];
        let (embeds, masks, positions, len) = left_pad(&prompts, 1);
        assert_eq!(len, 6);
        assert_eq!(
            embeds,
            vec![0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
        );
        assert_eq!(masks, vec![vec![0, 0, 1, 1, 1, 1], vec![1; 6]]);
        assert_eq!(positions, vec![1, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]);
    }
}
