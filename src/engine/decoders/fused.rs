//! The `fused` decoder graph (ONNX Runtime contrib ops: GroupQueryAttention with rotary
//! inside, SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization) behind the slot
//! seam, for the CPU and CUDA providers.
//!
//! Contract: a [`FixedCache`] holds, per layer, a key and a value buffer
//! `[rows, kv_heads, capacity, head_dim]` allocated once by ONNX Runtime (host or device
//! memory). [`run`] binds each buffer as both `past_key_values.*` and `present.*`, so
//! GroupQueryAttention appends the call's positions in place: nothing is copied per
//! step, and only the logits come back to the host. Rows are addressed by their lengths
//! (`seqlens_k = length - 1`) and prompts are right-padded, so rows of a batch may hold
//! different numbers of tokens, and a slot can take a new prompt while the others go on:
//! the prompt runs on a cache of its own whose rows are then copied into the slots
//! ([`FixedCache::copy_rows_from`]; on a GPU through the CUDA runtime, [`DeviceCopy`],
//! which a CPU run with `--keep-finished-rows` takes too, on host memory). A
//! free slot or a finished row riding along steps a throwaway position 0.

use std::time::Instant;

use half::f16;
use ort::memory::{AllocationDevice, Allocator};
use ort::session::Session;
use ort::value::{DynTensor, Tensor, TensorElementType};
use vlguard_export::manifest::{DecoderGraph, DecoderSpec, FusedRows, GraphKind, Manifest};

use super::{logits_of, row_of, Embedder};
use crate::engine::cuda::{DeviceCopy, DeviceMemory};
use crate::engine::session::{int_tensor, take, to_f32, Graph};
use crate::engine::Error;
use crate::generate::{Counters, Decoder, Prompt};

struct FixedCache {
    buffers: Vec<DynTensor>,
    rows: usize,
    capacity: usize,
    /// The decoder's hidden size (of the embeddings the calls take).
    hidden: usize,
    /// The IO binding of this cache's calls, made at the first call: the buffers and the
    /// logits stay bound, each call rebinds only its three small inputs.
    binding: Option<ort::session::IoBinding>,
}

impl FixedCache {
    /// Uninitialised buffers for `rows` rows of `capacity` positions (never read before
    /// they are written: attention only reads a row's first `length` positions).
    pub fn alloc(
        allocator: &Allocator,
        decoder: &DecoderSpec,
        ty: TensorElementType,
        rows: usize,
        capacity: usize,
    ) -> Result<FixedCache, Error> {
        let shape = [rows, decoder.num_kv_heads, capacity, decoder.head_dim];
        let buffers = (0..2 * decoder.num_layers)
            .map(|_| alloc_tensor(allocator, &shape, ty))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FixedCache {
            buffers,
            rows,
            capacity,
            hidden: decoder.hidden_size,
            binding: None,
        })
    }

    /// A new cache holding only `rows` (ascending) of this one; host memory only.
    pub fn compact(&self, allocator: &Allocator, rows: &[usize]) -> Result<FixedCache, Error> {
        let mut kept = Vec::with_capacity(self.buffers.len());
        for src in &self.buffers {
            let mut shape: Vec<usize> = src.shape().iter().map(|&d| d as usize).collect();
            shape[0] = rows.len();
            let mut dst = alloc_tensor(allocator, &shape, *src.data_type())?;
            let pairs: Vec<(usize, usize)> = rows
                .iter()
                .copied()
                .enumerate()
                .map(|(i, r)| (r, i))
                .collect();
            copy_rows(src, &mut dst, self.rows, &pairs, None)?;
            kept.push(dst);
        }
        Ok(FixedCache {
            buffers: kept,
            rows: rows.len(),
            capacity: self.capacity,
            hidden: self.hidden,
            binding: None,
        })
    }

    /// Copies row `from` of `src` into row `to` of this cache, for each `(from, to)` (the
    /// capacities must match): slices on the host, `device` copies on a GPU.
    pub fn copy_rows_from(
        &mut self,
        src: &FixedCache,
        pairs: &[(usize, usize)],
        device: Option<&DeviceCopy>,
    ) -> Result<(), Error> {
        if src.capacity != self.capacity || src.buffers.len() != self.buffers.len() {
            return Err(Error::CacheCapacity {
                from: src.capacity,
                into: self.capacity,
            });
        }
        for (s, d) in src.buffers.iter().zip(self.buffers.iter_mut()) {
            copy_rows(s, d, src.rows, pairs, device)?;
        }
        if let Some(device) = device {
            device.finish()?;
        }
        Ok(())
    }
}

/// One decoder call on `cache`: `embeds [rows, new_len, H]` (right-padded), `lengths` =
/// tokens in each row after the call. Returns the logits `[rows, V]` and the seconds
/// spent in the session run.
fn run(
    graph: &mut Graph,
    names: &DecoderGraph,
    row_inputs: &FusedRows,
    cache: &mut FixedCache,
    embeds: &[f32],
    lengths: &[usize],
) -> Result<(Vec<f32>, f64), Error> {
    let hidden = cache.hidden;
    let new_len = embeds.len() / hidden / lengths.len().max(1);
    let rows = lengths.len();
    if rows != cache.rows {
        return Err(Error::CacheRows {
            cache: cache.rows,
            call: rows,
        });
    }
    if let Some(&longest) = lengths.iter().max() {
        if longest > cache.capacity {
            return Err(Error::CacheFull {
                positions: longest,
                capacity: cache.capacity,
            });
        }
    }
    let seqlens: Vec<i32> = lengths.iter().map(|&l| l.max(1) as i32 - 1).collect();
    let total_len = lengths.iter().copied().max().unwrap_or(1).max(1) as i32;
    let embeds = graph.float_tensor(embeds, vec![rows, new_len, hidden])?;
    let seqlens = int_tensor(seqlens, vec![rows], "seqlens_k")?;
    let total_len = int_tensor(vec![total_len], Vec::new(), "total_sequence_length")?;
    let failed = graph.failed();
    let session = &mut graph.session;
    let inputs = [
        (names.inputs_embeds.as_str(), &embeds),
        (row_inputs.seqlens_k.as_str(), &seqlens),
        (row_inputs.total_sequence_length.as_str(), &total_len),
    ];
    let binding = bind(session, names, cache, inputs)?;
    let t = Instant::now();
    let mut out = session.run_binding(binding).map_err(failed)?;
    let seconds = t.elapsed().as_secs_f64();
    let logits = take(&mut out, &names.logits, GraphKind::Decoder)?;
    Ok((to_f32(&logits, "logits")?, seconds))
}

/// The cache's binding (made at its first call: buffers as past and present, logits to
/// the host) with this call's `inputs_embeds`, `seqlens_k`, `total_sequence_length`.
fn bind<'c>(
    session: &Session,
    names: &DecoderGraph,
    cache: &'c mut FixedCache,
    inputs: [(&str, &ort::value::DynValue); 3],
) -> Result<&'c ort::session::IoBinding, Error> {
    let failed = |source: ort::Error| Error::Binding {
        graph: GraphKind::Decoder,
        source,
    };
    let FixedCache {
        buffers, binding, ..
    } = cache;
    if binding.is_none() {
        let host = DeviceMemory::host().map_err(failed)?;
        let mut fresh = session.create_binding().map_err(failed)?;
        for (name, value) in names.past().zip(buffers.iter()) {
            fresh.bind_input(name, value).map_err(failed)?;
        }
        fresh
            .bind_output_to_device(names.logits.as_str(), &host)
            .map_err(failed)?;
        for (name, value) in names.present().zip(buffers.iter_mut()) {
            fresh.bind_output(name, value).map_err(failed)?;
        }
        *binding = Some(fresh);
    }
    let bound = binding.as_mut().ok_or(Error::NotOpen)?;
    for (name, value) in inputs {
        bound.bind_input(name, value).map_err(failed)?;
    }
    Ok(bound)
}

/// An uninitialised tensor of the graph's float type from `allocator` (ORT-owned memory,
/// so IO binding can use it as an output).
fn alloc_tensor(
    allocator: &Allocator,
    shape: &[usize],
    ty: TensorElementType,
) -> Result<DynTensor, Error> {
    let result = match ty {
        TensorElementType::Float16 => {
            Tensor::<f16>::new(allocator, shape.to_vec()).map(Tensor::upcast)
        }
        _ => Tensor::<f32>::new(allocator, shape.to_vec()).map(Tensor::upcast),
    };
    result.map_err(|source| Error::CacheAlloc {
        shape: shape.to_vec(),
        source,
    })
}

/// Row copies between two `[rows, ...]` buffers of the same row size: through `device`
/// between the rows' addresses when given (on a GPU; host memory standing in on a CPU run
/// replaying a GPU's scheduling), else slices of host buffers.
fn copy_rows(
    src: &DynTensor,
    dst: &mut DynTensor,
    src_rows: usize,
    pairs: &[(usize, usize)],
    device: Option<&DeviceCopy>,
) -> Result<(), Error> {
    let failed = |source: ort::Error| Error::CacheAccess { source };
    let per_row = src.shape().num_elements() / src_rows.max(1);
    let on_host = src.memory_info().allocation_device() == AllocationDevice::CPU;
    if on_host && device.is_none() {
        if *src.data_type() == TensorElementType::Float16 {
            let (_, s) = src.try_extract_tensor::<f16>().map_err(failed)?;
            let (_, d) = dst.try_extract_tensor_mut::<f16>().map_err(failed)?;
            slice_rows(s, d, per_row, pairs);
        } else {
            let (_, s) = src.try_extract_tensor::<f32>().map_err(failed)?;
            let (_, d) = dst.try_extract_tensor_mut::<f32>().map_err(failed)?;
            slice_rows(s, d, per_row, pairs);
        }
        return Ok(());
    }
    let device = device.ok_or(Error::NoDeviceCopy)?;
    let bytes = per_row
        * match *src.data_type() {
            TensorElementType::Float16 => 2,
            _ => 4,
        };
    let src_base = src.data_ptr().cast::<u8>();
    let dst_base = dst.data_ptr_mut().cast::<u8>();
    for &(from, to) in pairs {
        // SAFETY: both rows lie inside their buffers (row index < rows, `bytes` each) and
        // the buffers are different allocations, so the ranges do not overlap.
        unsafe {
            let (s, d) = (src_base.add(from * bytes), dst_base.add(to * bytes));
            device.copy(d.cast(), s.cast(), bytes)?;
        }
    }
    Ok(())
}

fn slice_rows<T: Copy>(src: &[T], dst: &mut [T], per_row: usize, pairs: &[(usize, usize)]) {
    for &(from, to) in pairs {
        dst[to * per_row..(to + 1) * per_row]
            .copy_from_slice(&src[from * per_row..(from + 1) * per_row]);
    }
}

pub struct FusedDecoder {
    graph: Graph,
    names: DecoderGraph,
    /// The `seqlens_k` and `total_sequence_length` inputs.
    row_inputs: FusedRows,
    spec: DecoderSpec,
    embedder: Embedder,
    /// Where the cache is allocated: the decoder's device.
    allocator: Allocator,
    /// Row copies between device caches (slots refilled on a GPU); `None` on the host.
    device_copy: Option<DeviceCopy>,
    on_device: bool,
    riders: bool,
    cache: Option<FixedCache>,
    /// The cache's physical rows: the slot each holds and its length (tokens in it).
    rows: Vec<(usize, usize)>,
    counters: Counters,
}

impl FusedDecoder {
    /// `on_device`: the graph runs on a GPU (`device_copy` then refills slots; without it
    /// prompts join only an empty batch). `row_inputs`: the manifest's fused row inputs,
    /// which the caller took out of `manifest.graphs.decoder.rows`.
    // One more than clippy's seven: the row inputs come typed from the caller's match on
    // the flavour, so that this constructor cannot be handed a plain graph's names.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        graph: Graph,
        embedder: Embedder,
        manifest: &Manifest,
        row_inputs: &FusedRows,
        allocator: Allocator,
        device_copy: Option<DeviceCopy>,
        on_device: bool,
        riders: bool,
    ) -> FusedDecoder {
        FusedDecoder {
            graph,
            names: manifest.graphs.decoder.clone(),
            row_inputs: row_inputs.clone(),
            spec: manifest.decoder.clone(),
            embedder,
            allocator,
            device_copy,
            on_device,
            riders,
            cache: None,
            rows: Vec::new(),
            counters: Counters::default(),
        }
    }

    fn alloc(&self, rows: usize, capacity: usize) -> Result<FixedCache, Error> {
        FixedCache::alloc(
            &self.allocator,
            &self.spec,
            self.graph.float_type,
            rows,
            capacity,
        )
    }

    /// Runs a call on `cache` (the slot cache when `None`).
    fn run_on(
        &mut self,
        cache: Option<&mut FixedCache>,
        embeds: &[f32],
        lengths: &[usize],
    ) -> Result<Vec<f32>, Error> {
        let cache = match cache {
            Some(cache) => cache,
            None => self.cache.as_mut().ok_or(Error::NotOpen)?,
        };
        let (names, row_inputs) = (&self.names, &self.row_inputs);
        let (logits, seconds) = run(&mut self.graph, names, row_inputs, cache, embeds, lengths)?;
        self.counters.ort_s += seconds;
        Ok(logits)
    }

    fn row_slots(&self) -> Vec<usize> {
        self.rows.iter().map(|&(slot, _)| slot).collect()
    }
}

/// Prompts `[positions, H]` each, right-padded to the longest: `(embeds [rows, len, H],
/// lengths)`.
pub fn right_pad(prompts: &[Vec<f32>], hidden: usize) -> (Vec<f32>, Vec<usize>) {
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len() / hidden).collect();
    let len = lengths.iter().copied().max().unwrap_or(0);
    let mut embeds = vec![0f32; prompts.len() * len * hidden];
    for (row, prompt) in prompts.iter().enumerate() {
        let start = row * len * hidden;
        embeds[start..start + prompt.len()].copy_from_slice(prompt);
    }
    (embeds, lengths)
}

impl Decoder for FusedDecoder {
    type Error = Error;

    fn open(&mut self, slots: usize, capacity: usize) -> Result<(), Error> {
        self.cache = None;
        self.cache = Some(self.alloc(slots, capacity)?);
        self.rows = (0..slots).map(|slot| (slot, 0)).collect();
        Ok(())
    }

    /// Prompts for every row at once (a batch's first fill) run straight into the slot
    /// cache; prompts for some slots run on a cache of their own whose rows are then
    /// copied into the slots.
    fn prefill(&mut self, slots: &[usize], prompts: &[&Prompt]) -> Result<Vec<f32>, Error> {
        let spliced = self.embedder.splice_all(prompts, &mut self.counters)?;
        let (embeds, lengths) = right_pad(&spliced, self.embedder.hidden());
        let row_slots = self.row_slots();
        let targets = slots
            .iter()
            .map(|&slot| row_of(&row_slots, slot))
            .collect::<Result<Vec<_>, _>>()?;
        let logits = if targets.iter().copied().eq(0..self.rows.len()) {
            self.run_on(None, &embeds, &lengths)?
        } else {
            if self.on_device && self.device_copy.is_none() {
                return Err(Error::NoRefillCopy);
            }
            let capacity = self.cache.as_ref().map_or(0, |c| c.capacity);
            let mut joining = self.alloc(slots.len(), capacity)?;
            let logits = self.run_on(Some(&mut joining), &embeds, &lengths)?;
            let pairs: Vec<(usize, usize)> = targets.iter().copied().enumerate().collect();
            if let Some(cache) = self.cache.as_mut() {
                cache.copy_rows_from(&joining, &pairs, self.device_copy.as_ref())?;
            }
            logits
        };
        for (&row, &length) in targets.iter().zip(&lengths) {
            self.rows[row].1 = length;
        }
        Ok(logits)
    }

    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<Vec<f32>, Error> {
        // Free slots and rows riding along step a throwaway position 0.
        let mut ids = Vec::with_capacity(self.rows.len());
        let mut lengths = Vec::with_capacity(self.rows.len());
        for (slot, length) in &mut self.rows {
            match slots.iter().position(|s| s == slot) {
                Some(i) => {
                    *length += 1;
                    ids.push(tokens[i] as i64);
                    lengths.push(*length);
                }
                None => {
                    ids.push(0);
                    lengths.push(1);
                }
            }
        }
        let embeds = self.embedder.embed(&ids, ids.len(), &mut self.counters)?;
        self.counters.step_rows += self.rows.len();
        let logits = self.run_on(None, &embeds, &lengths)?;
        logits_of(&logits, &self.row_slots(), slots)
    }

    /// On the host the cache is compacted to the live rows; on a device (or with riders)
    /// finished rows stay where they are.
    fn retain(&mut self, live: &[usize]) -> Result<(), Error> {
        if self.riders || self.on_device {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&r| live.contains(&self.rows[r].0))
            .collect();
        if keep.len() == self.rows.len() {
            return Ok(());
        }
        if let Some(cache) = &self.cache {
            self.cache = Some(cache.compact(&self.allocator, &keep)?);
        }
        self.rows = keep.iter().map(|&r| self.rows[r]).collect();
        Ok(())
    }

    fn joins_live_batch(&self) -> bool {
        !self.on_device || self.device_copy.is_some()
    }

    fn counters(&self) -> Counters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_padding_puts_each_rows_positions_first() {
        // Hidden size 1: lengths 2 and 3.
        let (embeds, lengths) = right_pad(&[vec![1.0, 2.0], vec![3.0, 4.0, 5.0]], 1);
        assert_eq!(embeds, vec![1.0, 2.0, 0.0, 3.0, 4.0, 5.0]);
        assert_eq!(lengths, vec![2, 3]);
    }
}
