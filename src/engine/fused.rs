//! The `fused` decoder flavour's cache and calls (see `vlguard_export::manifest::Flavour`).
//!
//! Contract: a [`FixedCache`] holds, per layer, a key and a value buffer
//! `[rows, kv_heads, capacity, head_dim]` allocated once by ONNX Runtime (host or device
//! memory). [`run`] binds each buffer as both `past_key_values.*` and `present.*`, so
//! GroupQueryAttention appends the call's positions in place: nothing is copied per
//! step, and only the logits come back to the host. Rows are addressed by their lengths
//! (`seqlens_k = length - 1`), so rows of a batch may hold different numbers of tokens,
//! and a row (a slot) can be refilled with a new prompt while the others go on
//! ([`FixedCache::copy_rows_from`]).

use std::time::Instant;

use half::f16;
use ort::memory::{AllocationDevice, Allocator};
use ort::session::Session;
use ort::value::{
    DynTensor, PrimitiveTensorElementType, Shape, Tensor, TensorElementType, TensorRefMut,
};
use vlguard_export::manifest::{DecoderSpec, GraphSpec};

use crate::generate::BackendError;

pub(super) struct FixedCache {
    buffers: Vec<DynTensor>,
    pub rows: usize,
    pub capacity: usize,
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
    ) -> Result<FixedCache, BackendError> {
        let shape = [rows, decoder.num_kv_heads, capacity, decoder.head_dim];
        let buffers = (0..2 * decoder.num_layers)
            .map(|_| alloc_tensor(allocator, &shape, ty))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FixedCache {
            buffers,
            rows,
            capacity,
            binding: None,
        })
    }

    /// A new cache holding only `rows` (ascending) of this one; host memory only.
    pub fn compact(
        &self,
        allocator: &Allocator,
        rows: &[usize],
    ) -> Result<FixedCache, BackendError> {
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
            copy_rows(src, &mut dst, self.rows, &pairs)?;
            kept.push(dst);
        }
        Ok(FixedCache {
            buffers: kept,
            rows: rows.len(),
            capacity: self.capacity,
            binding: None,
        })
    }

    /// Copies row `from` of `src` into row `to` of this cache, for each `(from, to)`, on
    /// whichever device the buffers live (the capacities must match).
    pub fn copy_rows_from(
        &mut self,
        src: &FixedCache,
        pairs: &[(usize, usize)],
    ) -> Result<(), BackendError> {
        if src.capacity != self.capacity || src.buffers.len() != self.buffers.len() {
            return Err(BackendError(format!(
                "fused cache: cannot copy rows from a cache of capacity {} into one of {}",
                src.capacity, self.capacity
            )));
        }
        for (s, d) in src.buffers.iter().zip(self.buffers.iter_mut()) {
            copy_rows(s, d, src.rows, pairs)?;
        }
        Ok(())
    }
}

/// Moves each row's real positions (mask 1, in order) to the front of the row: the
/// fused graph's prompt calls are right-padded. Returns the packed embeddings and each
/// row's length.
pub(super) fn right_pad(
    embeds: &[f32],
    mask: &[i64],
    rows: usize,
    new_len: usize,
    hidden: usize,
) -> (Vec<f32>, Vec<usize>) {
    let total = mask.len() / rows.max(1);
    let mut packed = vec![0f32; embeds.len()];
    let mut lengths = Vec::with_capacity(rows);
    for row in 0..rows {
        let mut at = row * new_len;
        // Only the call's own positions (the mask's last `new_len`) carry embeddings.
        let mask_row = &mask[row * total + total - new_len..(row + 1) * total];
        for (p, &m) in mask_row.iter().enumerate() {
            if m != 0 {
                let from = (row * new_len + p) * hidden;
                packed[at * hidden..(at + 1) * hidden]
                    .copy_from_slice(&embeds[from..from + hidden]);
                at += 1;
            }
        }
        lengths.push(
            mask[row * total..(row + 1) * total]
                .iter()
                .filter(|&&m| m != 0)
                .count(),
        );
    }
    (packed, lengths)
}

/// One decoder call on `cache`: `embeds [rows, new_len, H]` (right-padded), `lengths` =
/// tokens in each row after the call. Returns the logits `[rows, V]` and the seconds
/// spent in the session run.
#[allow(clippy::too_many_arguments)] // one call's full description; grouping adds nothing
pub(super) fn run(
    session: &mut Session,
    names: &GraphSpec,
    ty: TensorElementType,
    hidden: usize,
    cache: &mut FixedCache,
    embeds: &[f32],
    lengths: &[usize],
    new_len: usize,
) -> Result<(Vec<f32>, f64), BackendError> {
    let rows = lengths.len();
    if rows != cache.rows {
        return Err(BackendError(format!(
            "decoder: cache holds {} rows, call has {rows}",
            cache.rows
        )));
    }
    if let Some(&longest) = lengths.iter().max() {
        if longest > cache.capacity {
            return Err(BackendError(format!(
                "fused decoder: {longest} positions do not fit the cache's {} (prompt + max new tokens)",
                cache.capacity
            )));
        }
    }
    let seqlens: Vec<i32> = lengths.iter().map(|&l| l.max(1) as i32 - 1).collect();
    let total_len = lengths.iter().copied().max().unwrap_or(1).max(1) as i32;
    let embeds = super::float_tensor(embeds, vec![rows, new_len, hidden], ty)?;
    let seqlens = Tensor::from_array((vec![rows], seqlens))
        .map_err(|e| BackendError(format!("seqlens_k: {e}")))?
        .into_dyn();
    let total_len = Tensor::from_array((Vec::<usize>::new(), vec![total_len]))
        .map_err(|e| BackendError(format!("total_sequence_length: {e}")))?
        .into_dyn();
    let binding = bind(session, names, cache, [&embeds, &seqlens, &total_len])
        .map_err(|e| BackendError(format!("decoder IO binding: {e}")))?;
    let t = Instant::now();
    let mut out = session
        .run_binding(binding)
        .map_err(|e| BackendError(format!("decoder graph: {e}")))?;
    let seconds = t.elapsed().as_secs_f64();
    let logits = super::take(&mut out, &names.outputs[0], "decoder")?;
    Ok((super::to_f32(&logits, "logits")?, seconds))
}

/// The cache's binding (made at its first call: buffers as past and present, logits to
/// the host) with this call's `inputs_embeds`, `seqlens_k`, `total_sequence_length`.
fn bind<'c>(
    session: &Session,
    names: &GraphSpec,
    cache: &'c mut FixedCache,
    inputs: [&ort::value::DynValue; 3],
) -> Result<&'c ort::session::IoBinding, String> {
    let failed = |e: ort::Error| e.to_string();
    let FixedCache {
        buffers, binding, ..
    } = cache;
    if binding.is_none() {
        let host = super::DeviceMemory::host()?;
        let mut fresh = session.create_binding().map_err(failed)?;
        for (name, value) in names.inputs[3..].iter().zip(buffers.iter()) {
            fresh.bind_input(name.as_str(), value).map_err(failed)?;
        }
        fresh
            .bind_output_to_device(names.outputs[0].as_str(), &host)
            .map_err(failed)?;
        for (name, value) in names.outputs[1..].iter().zip(buffers.iter_mut()) {
            fresh.bind_output(name.as_str(), value).map_err(failed)?;
        }
        *binding = Some(fresh);
    }
    let bound = binding.as_mut().ok_or("no binding")?;
    for (name, value) in names.inputs[..3].iter().zip(inputs) {
        bound.bind_input(name.as_str(), value).map_err(failed)?;
    }
    Ok(bound)
}

/// An uninitialised tensor of the graph's float type from `allocator` (ORT-owned memory,
/// so IO binding can use it as an output).
fn alloc_tensor(
    allocator: &Allocator,
    shape: &[usize],
    ty: TensorElementType,
) -> Result<DynTensor, BackendError> {
    let result = match ty {
        TensorElementType::Float16 => {
            Tensor::<f16>::new(allocator, shape.to_vec()).map(Tensor::upcast)
        }
        _ => Tensor::<f32>::new(allocator, shape.to_vec()).map(Tensor::upcast),
    };
    result.map_err(|e| BackendError(format!("cannot allocate the decoder cache {shape:?}: {e}")))
}

/// Row copies between two `[rows, ...]` buffers of the same row size: slices on the
/// host, ONNX Runtime copies of raw row views on a device.
fn copy_rows(
    src: &DynTensor,
    dst: &mut DynTensor,
    src_rows: usize,
    pairs: &[(usize, usize)],
) -> Result<(), BackendError> {
    let failed = |e: ort::Error| BackendError(format!("cannot copy cache rows: {e}"));
    let per_row = src.shape().num_elements() / src_rows.max(1);
    if src.memory_info().allocation_device() == AllocationDevice::CPU {
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
    match *src.data_type() {
        TensorElementType::Float16 => device_rows::<f16>(src, dst, per_row, pairs).map_err(failed),
        _ => device_rows::<f32>(src, dst, per_row, pairs).map_err(failed),
    }
}

fn slice_rows<T: Copy>(src: &[T], dst: &mut [T], per_row: usize, pairs: &[(usize, usize)]) {
    for &(from, to) in pairs {
        dst[to * per_row..(to + 1) * per_row]
            .copy_from_slice(&src[from * per_row..(from + 1) * per_row]);
    }
}

/// Device rows: a row of a `[rows, ...]` buffer is contiguous, so each copy is one ONNX
/// Runtime tensor copy between two raw views of `per_row` elements.
fn device_rows<T>(
    src: &DynTensor,
    dst: &mut DynTensor,
    per_row: usize,
    pairs: &[(usize, usize)],
) -> ort::Result<()>
where
    T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static,
{
    let info = src.memory_info().clone();
    let src_base = src.data_ptr().cast::<T>();
    let dst_base = dst.data_ptr_mut().cast::<T>();
    for &(from, to) in pairs {
        // SAFETY: both pointers stay inside their buffers (row < rows, per_row elements
        // each), the buffers outlive the views, and source and target rows never overlap
        // (different buffers).
        unsafe {
            let shape = Shape::new([per_row as i64]);
            let s = TensorRefMut::<T>::from_raw(
                info.clone(),
                src_base.add(from * per_row).cast_mut().cast(),
                shape.clone(),
            )?;
            let d = TensorRefMut::<T>::from_raw(
                info.clone(),
                dst_base.add(to * per_row).cast(),
                shape,
            )?;
            s.copy_into(d)?;
        }
    }
    Ok(())
}
