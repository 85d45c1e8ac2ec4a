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

use std::ffi::{c_int, c_void};
use std::time::Instant;

use half::f16;
use ort::memory::{AllocationDevice, Allocator};
use ort::session::Session;
use ort::value::{DynTensor, Tensor, TensorElementType};
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
            copy_rows(src, &mut dst, self.rows, &pairs, None)?;
            kept.push(dst);
        }
        Ok(FixedCache {
            buffers: kept,
            rows: rows.len(),
            capacity: self.capacity,
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
    ) -> Result<(), BackendError> {
        if src.capacity != self.capacity || src.buffers.len() != self.buffers.len() {
            return Err(BackendError(format!(
                "fused cache: cannot copy rows from a cache of capacity {} into one of {}",
                src.capacity, self.capacity
            )));
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
/// host, `cudaMemcpy` between the rows' device addresses on a GPU.
fn copy_rows(
    src: &DynTensor,
    dst: &mut DynTensor,
    src_rows: usize,
    pairs: &[(usize, usize)],
    device: Option<&DeviceCopy>,
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
    let device = device.ok_or_else(|| {
        BackendError("cache rows on a device but no CUDA runtime to copy them".into())
    })?;
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
        let (s, d) = unsafe { (src_base.add(from * bytes), dst_base.add(to * bytes)) };
        device.copy(d.cast(), s.cast(), bytes)?;
    }
    Ok(())
}

fn slice_rows<T: Copy>(src: &[T], dst: &mut [T], per_row: usize, pairs: &[(usize, usize)]) {
    for &(from, to) in pairs {
        dst[to * per_row..(to + 1) * per_row]
            .copy_from_slice(&src[from * per_row..(from + 1) * per_row]);
    }
}

/// Device-to-device copies through the CUDA runtime ONNX Runtime's CUDA provider loads
/// (`libcudart.so.13`): `cudaMemcpy` on the legacy stream, then `cudaDeviceSynchronize`,
/// so a copy is complete before the next session run starts on ONNX Runtime's stream
/// (a run has synchronised its own stream when it returns: its logits are on the host).
pub(super) struct DeviceCopy {
    set_device: unsafe extern "C" fn(c_int) -> c_int,
    memcpy: unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> c_int,
    synchronize: unsafe extern "C" fn() -> c_int,
    device_id: c_int,
    /// Holds the library (never unloaded: see `trt::Lib`).
    _lib: super::trt::Lib,
}

/// cudaMemcpyKind::cudaMemcpyDeviceToDevice (driver_types.h).
const CUDA_MEMCPY_DEVICE_TO_DEVICE: c_int = 3;

impl DeviceCopy {
    pub fn load(cudart: &std::path::Path, device_id: i32) -> Result<DeviceCopy, String> {
        let lib = super::trt::Lib::open(cudart).map_err(|e| e.to_string())?;
        // The symbols with their C prototypes from cuda_runtime_api.h.
        let symbols = || -> Result<_, super::trt::ProbeError> {
            Ok((
                lib.get::<unsafe extern "C" fn(c_int) -> c_int>("cudaSetDevice")?,
                lib.get::<unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> c_int>(
                    "cudaMemcpy",
                )?,
                lib.get::<unsafe extern "C" fn() -> c_int>("cudaDeviceSynchronize")?,
            ))
        };
        let (set_device, memcpy, synchronize) = symbols().map_err(|e| e.to_string())?;
        Ok(DeviceCopy {
            set_device,
            memcpy,
            synchronize,
            device_id,
            _lib: lib,
        })
    }

    fn check(what: &str, code: c_int) -> Result<(), BackendError> {
        match code {
            0 => Ok(()),
            code => Err(BackendError(format!(
                "{what} failed with CUDA error {code}"
            ))),
        }
    }

    fn copy(&self, dst: *mut c_void, src: *const c_void, bytes: usize) -> Result<(), BackendError> {
        // SAFETY: the caller passes device addresses of `bytes` valid bytes each.
        unsafe {
            Self::check("cudaSetDevice", (self.set_device)(self.device_id))?;
            Self::check(
                "cudaMemcpy",
                (self.memcpy)(dst, src, bytes, CUDA_MEMCPY_DEVICE_TO_DEVICE),
            )
        }
    }

    fn finish(&self) -> Result<(), BackendError> {
        // SAFETY: no arguments; waits for the device's pending work.
        Self::check("cudaDeviceSynchronize", unsafe { (self.synchronize)() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_pad_moves_each_rows_tokens_to_the_front() {
        // Two rows of hidden size 1, left-padded to 3: [pad, a, b] and [c, d, e].
        let embeds = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        let mask = [0, 1, 1, 1, 1, 1];
        let (packed, lengths) = right_pad(&embeds, &mask, 2, 3, 1);
        assert_eq!(packed, vec![1.0, 2.0, 0.0, 3.0, 4.0, 5.0]);
        assert_eq!(lengths, vec![2, 3]);
        // A step: the mask covers past + 1, the embeddings only the new position.
        let (packed, lengths) = right_pad(&[7.0, 8.0], &[0, 1, 1, 1, 1, 1, 1, 1], 2, 1, 1);
        assert_eq!(packed, vec![7.0, 8.0]);
        assert_eq!(lengths, vec![3, 4]);
    }

    #[test]
    fn device_copy_without_a_cuda_runtime_says_what_is_missing() {
        let missing = DeviceCopy::load(std::path::Path::new("/nonexistent/libcudart.so.13"), 0);
        let err = missing.err().expect("no such library");
        assert!(err.contains("/nonexistent/libcudart.so.13"), "{err}");
        // A library without the CUDA symbols.
        let libc = DeviceCopy::load(std::path::Path::new("libc.so.6"), 0);
        let err = libc.err().expect("libc has no cudaSetDevice");
        assert!(err.contains("cudaSetDevice"), "{err}");
    }
}
