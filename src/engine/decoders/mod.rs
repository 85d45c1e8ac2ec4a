//! The two decoder graph flavours behind [`crate::generate::Decoder`], each owning how its
//! graph wants its inputs:
//! - [`plain::PlainDecoder`]: left-padded rows with an attention mask and position ids,
//!   a cache that grows by one `Concat` per step (a graph input and output), finished
//!   rows dropped by copying the kept rows; prompts join only an empty batch.
//! - [`fused::FusedDecoder`]: right-padded rows with per-row lengths (`seqlens_k`), a cache
//!   preallocated per slot and updated in place; prompts join free slots at any time.
//!
//! Both splice a prompt the same way ([`Embedder`]): the text ids (without the image slot)
//! through the `embed` graph, the image's projected embeddings in the slot's place, as
//! LLaVA's `prepare_inputs_labels_for_multimodal` does.

pub mod fused;
pub mod plain;

use std::time::Instant;

use ort::session::SessionInputValue;
use vlguard_export::manifest::{GraphKind, Manifest};

use super::session::{int_tensor, take, to_f32, Graph};
use super::Error;
use crate::generate::{Counters, Prompt};

/// The `embed` graph and the splice of a prompt.
pub struct Embedder {
    graph: Graph,
    input: String,
    output: String,
    hidden: usize,
    image_token_id: i64,
}

impl Embedder {
    pub fn new(graph: Graph, manifest: &Manifest) -> Embedder {
        Embedder {
            graph,
            input: manifest.graphs.embed.input_ids.clone(),
            output: manifest.graphs.embed.inputs_embeds.clone(),
            hidden: manifest.decoder.hidden_size,
            image_token_id: manifest.tokenizer.image_token_id,
        }
    }

    /// `input_ids [rows, T]` -> `[rows, T, H]`; its session time is added to `counters`.
    pub fn embed(
        &mut self,
        ids: &[i64],
        rows: usize,
        counters: &mut Counters,
    ) -> Result<Vec<f32>, Error> {
        let len = ids.len() / rows.max(1);
        let input = int_tensor(ids.to_vec(), vec![rows, len], "embed input")?;
        let failed = self.graph.failed();
        let t = Instant::now();
        let mut out = self
            .graph
            .session
            .run(vec![(self.input.as_str(), SessionInputValue::from(input))])
            .map_err(failed)?;
        let value = take(&mut out, &self.output, GraphKind::Embed)?;
        counters.ort_s += t.elapsed().as_secs_f64();
        to_f32(&value, "embed output")
    }

    /// Each prompt's input embeddings `[positions, H]`, timed into `counters.splice_s`.
    pub fn splice_all(
        &mut self,
        prompts: &[&Prompt],
        counters: &mut Counters,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let t = Instant::now();
        let spliced = prompts
            .iter()
            .map(|p| self.splice(p, counters))
            .collect::<Result<Vec<_>, _>>();
        counters.splice_s += t.elapsed().as_secs_f64();
        spliced
    }

    /// The prompt's input embeddings `[positions, H]`: text embeddings with the image's
    /// `image_tokens` rows where the image slot was.
    fn splice(&mut self, prompt: &Prompt, counters: &mut Counters) -> Result<Vec<f32>, Error> {
        let hidden = self.hidden;
        if prompt.image_embeds.len() != prompt.image_tokens * hidden {
            return Err(Error::ImageEmbeds {
                found: prompt.image_embeds.len(),
                tokens: prompt.image_tokens,
                hidden,
            });
        }
        let slot = crate::prompt::image_slot(&prompt.ids, self.image_token_id)?;
        let text: Vec<i64> = prompt
            .ids
            .iter()
            .copied()
            .filter(|&id| id != self.image_token_id)
            .collect();
        let text_embeds = self.embed(&text, 1, counters)?;
        let mut spliced = Vec::with_capacity(text_embeds.len() + prompt.image_embeds.len());
        spliced.extend_from_slice(&text_embeds[..slot * hidden]);
        spliced.extend_from_slice(&prompt.image_embeds);
        spliced.extend_from_slice(&text_embeds[slot * hidden..]);
        Ok(spliced)
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }
}

/// The logits rows of `slots`, in that order, out of `[rows, V]` logits of the physical
/// rows whose slots are `row_slots`.
fn logits_of(logits: &[f32], row_slots: &[usize], slots: &[usize]) -> Result<Vec<f32>, Error> {
    let vocab = logits.len() / row_slots.len().max(1);
    let mut out = Vec::with_capacity(slots.len() * vocab);
    for &slot in slots {
        let row = row_of(row_slots, slot)?;
        out.extend_from_slice(&logits[row * vocab..(row + 1) * vocab]);
    }
    Ok(out)
}

/// The physical row holding `slot`.
fn row_of(row_slots: &[usize], slot: usize) -> Result<usize, Error> {
    row_slots
        .iter()
        .position(|&s| s == slot)
        .ok_or(Error::NoRow { slot })
}
