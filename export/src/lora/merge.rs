//! The LoRA merge arithmetic: `W' = round(f32(W) + (B @ A) * scale)` into the dtype `W` is
//! stored in, one weight at a time (see the `lora` module contract for why each step is
//! what PEFT computes, bit for bit).

use super::LoraDelta;
use crate::checkpoint::{self, CheckpointError, TensorInfo};
use crate::pickle::StorageDtype;

/// Merges `delta` into `raw`, the bytes of weight `w` as stored (see the module contract).
pub fn merge_into(
    raw: &mut [u8],
    w: &TensorInfo,
    delta: &LoraDelta,
) -> Result<(), CheckpointError> {
    let (out, inp) = (w.shape[0] as usize, w.shape[1] as usize);
    let a = to_f32(&checkpoint::read_raw(&delta.a)?, delta.a.dtype);
    let b = to_f32(&checkpoint::read_raw(&delta.b)?, delta.b.dtype);
    let rank = b.len() / out.max(1);
    let es = w.dtype.size();
    let mut acc = vec![0f32; ROWS * inp];
    for (i0, rows) in raw.chunks_mut(ROWS * inp * es).enumerate() {
        let n = rows.len() / (inp * es);
        let first = i0 * ROWS;
        ba_rows(
            &mut acc[..n * inp],
            &b[first * rank..(first + n) * rank],
            &a,
            inp,
        );
        for (bytes, d) in rows.chunks_exact_mut(es).zip(&acc) {
            let merged = checkpoint::elem_to_f32(w.dtype, bytes) + d * delta.scale;
            store(w.dtype, merged, bytes);
        }
    }
    Ok(())
}

fn to_f32(raw: &[u8], dtype: StorageDtype) -> Vec<f32> {
    raw.chunks_exact(dtype.size())
        .map(|b| checkpoint::elem_to_f32(dtype, b))
        .collect()
}

/// Writes `v` rounded to nearest even into one element of `dtype` (a weight type).
fn store(dtype: StorageDtype, v: f32, dst: &mut [u8]) {
    match dtype {
        StorageDtype::F16 => dst.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        StorageDtype::BF16 => dst.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
        _ => dst.copy_from_slice(&v.to_le_bytes()),
    }
}

/// Rows of `B @ A` computed together: each column of `A` is loaded once for all of them.
const ROWS: usize = 4;
/// Columns per tile: `ROWS` x `COLS` accumulators stay in registers across the rank.
const COLS: usize = 16;

/// `acc[r, j] = sum_k b_rows[r, k] * a[k, j]` for up to [`ROWS`] rows, each element one
/// fused multiply-add per k in order from zero (the order fixes the rounding; tiling only
/// changes which elements are computed side by side).
fn ba_rows(acc: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above), the one feature the function enables.
        unsafe { ba_rows_fma(acc, b_rows, a, inp) };
        return;
    }
    ba_rows_portable(acc, b_rows, a, inp);
}

/// [`ba_rows_portable`] compiled with the FMA instructions, so `mul_add` is one vectorised
/// instruction instead of a libm call per element (a 7B adapter of rank 128 is ~10^12 of them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn ba_rows_fma(acc: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize) {
    ba_rows_portable(acc, b_rows, a, inp);
}

#[inline(always)]
fn ba_rows_portable(acc: &mut [f32], b_rows: &[f32], a: &[f32], inp: usize) {
    let rows = acc.len() / inp;
    let mut j0 = 0;
    while j0 < inp {
        let width = COLS.min(inp - j0);
        let tile = if rows == ROWS && width == COLS {
            full_tile(b_rows, a, inp, j0)
        } else {
            edge_tile(b_rows, a, inp, j0, rows, width)
        };
        for (r, t) in tile.iter().enumerate().take(rows) {
            acc[r * inp + j0..r * inp + j0 + width].copy_from_slice(&t[..width]);
        }
        j0 += width;
    }
}

/// A whole tile: constant bounds, so the accumulators live in registers.
#[inline(always)]
fn full_tile(b_rows: &[f32], a: &[f32], inp: usize, j0: usize) -> [[f32; COLS]; ROWS] {
    let rank = b_rows.len() / ROWS;
    let mut tile = [[0f32; COLS]; ROWS];
    for k in 0..rank {
        let a_k: &[f32; COLS] = a[k * inp + j0..k * inp + j0 + COLS]
            .try_into()
            .expect("a full tile is COLS wide");
        for (r, t) in tile.iter_mut().enumerate() {
            let bk = b_rows[r * rank + k];
            for j in 0..COLS {
                t[j] = bk.mul_add(a_k[j], t[j]);
            }
        }
    }
    tile
}

/// A tile at the right or bottom edge: fewer rows or columns, same order of sums.
fn edge_tile(
    b_rows: &[f32],
    a: &[f32],
    inp: usize,
    j0: usize,
    rows: usize,
    width: usize,
) -> [[f32; COLS]; ROWS] {
    let rank = b_rows.len() / rows;
    let mut tile = [[0f32; COLS]; ROWS];
    for k in 0..rank {
        let a_k = &a[k * inp + j0..k * inp + j0 + width];
        for (r, t) in tile.iter_mut().enumerate().take(rows) {
            let bk = b_rows[r * rank + k];
            for (s, &x) in t.iter_mut().zip(a_k) {
                *s = bk.mul_add(x, *s);
            }
        }
    }
    tile
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sequential fused multiply-adds: after -1 * 1, the step (1 + 2^-23) * (1 - 2^-23) - 1
    /// keeps -2^-46 where a separate multiply would round the product to 1 and give 0.
    #[test]
    fn products_are_fused() {
        let e = f32::EPSILON;
        let mut acc = vec![0.0f32; 1];
        ba_rows(&mut acc, &[-1.0, 1.0 + e], &[1.0, 1.0 - e], 1);
        assert_eq!(acc[0], -(e * e));
    }

    /// The tiled kernel equals one sequential fused sum per element, for shapes with
    /// partial row and column tiles.
    #[test]
    fn tiles_sum_in_rank_order() {
        for rows in [3, ROWS] {
            tiles_match(rows);
        }
    }

    fn tiles_match(rows: usize) {
        let (rank, inp) = (5, 37);
        let val = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 317.0;
        let a: Vec<f32> = (0..rank * inp).map(val).collect();
        let b: Vec<f32> = (0..rows * rank).map(|i| val(i + 13)).collect();
        let mut acc = vec![0f32; rows * inp];
        ba_rows(&mut acc, &b, &a, inp);
        for r in 0..rows {
            for j in 0..inp {
                let mut s = 0f32;
                for k in 0..rank {
                    s = b[r * rank + k].mul_add(a[k * inp + j], s);
                }
                assert_eq!(acc[r * inp + j].to_bits(), s.to_bits(), "({r}, {j})");
            }
        }
    }
}
