//! Tensor bytes to graph weights: element conversion between the stored dtype and the
//! graph's (fp32 / fp16, round to nearest even), the blocked transpose of Linear weights,
//! and the seeded random weights of `--random-weights`.

use std::io::Write;

use crate::onnx::ElemType;
use crate::pickle::StorageDtype;

/// One element of `dtype` (little-endian bytes `b`) as f32.
pub(crate) fn elem_to_f32(dtype: StorageDtype, b: &[u8]) -> f32 {
    let b8 = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        a
    };
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        StorageDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        StorageDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        StorageDtype::F64 => f64::from_le_bytes(b8(b)) as f32,
        StorageDtype::I64 => i64::from_le_bytes(b8(b)) as f32,
        StorageDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        StorageDtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
        StorageDtype::I8 => b[0] as i8 as f32,
        StorageDtype::U8 | StorageDtype::Bool => b[0] as f32,
    }
}

/// Converts one element of `dtype` (`src`) to `target` (`dst`, exactly its size).
/// fp16 -> fp16 and f32 -> f32 copy bits; other pairs go through f32 (round to nearest even).
fn convert_elem(dtype: StorageDtype, target: ElemType, src: &[u8], dst: &mut [u8]) {
    match (dtype, target) {
        (StorageDtype::F16, ElemType::F16) | (StorageDtype::F32, ElemType::F32) => {
            dst.copy_from_slice(src)
        }
        (_, ElemType::F16) => {
            dst.copy_from_slice(&half::f16::from_f32(elem_to_f32(dtype, src)).to_le_bytes())
        }
        _ => dst.copy_from_slice(&elem_to_f32(dtype, src).to_le_bytes()),
    }
}

/// Writes `raw` (elements of `dtype`, row-major `shape`) as `target`, transposing a 2-D
/// tensor when asked. Transposition goes by blocks of 64 output rows (contiguous reads of
/// each input row, about `64 * rows` elements buffered), so memory stays near the size of
/// the input tensor.
pub fn convert_into(
    raw: &[u8],
    dtype: StorageDtype,
    shape: &[usize],
    transpose: bool,
    target: ElemType,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let (es, ts) = (dtype.size(), target.size());
    if !transpose {
        let mut chunk = vec![0u8; 16384 * ts];
        for block in raw.chunks(16384 * es) {
            let n = block.len() / es;
            for k in 0..n {
                convert_elem(
                    dtype,
                    target,
                    &block[k * es..][..es],
                    &mut chunk[k * ts..][..ts],
                );
            }
            w.write_all(&chunk[..n * ts])?;
        }
        return Ok(());
    }
    let (rows, cols) = (shape[0], shape[1]);
    const BLOCK: usize = 64;
    let mut block = vec![0u8; BLOCK.min(cols) * rows * ts];
    for c0 in (0..cols).step_by(BLOCK) {
        let c1 = (c0 + BLOCK).min(cols);
        for r in 0..rows {
            let row = &raw[(r * cols + c0) * es..(r * cols + c1) * es];
            for (k, src) in row.chunks_exact(es).enumerate() {
                // output element (c0 + k, r) of the [cols, rows] result
                convert_elem(dtype, target, src, &mut block[(k * rows + r) * ts..][..ts]);
            }
        }
        w.write_all(&block[..(c1 - c0) * rows * ts])?;
    }
    Ok(())
}

/// Deterministic weights for `--random-weights`: a per-tensor SplitMix64 stream seeded by
/// the tensor name, uniform in [-a, a] with a = 0.02 * sqrt(3) (std 0.02, Llama's
/// initializer_range); norm weights are 1. Generated and written in chunks.
pub fn random_into(
    key: &str,
    numel: usize,
    target: ElemType,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let is_norm_weight = key.ends_with("norm.weight")
        || key.contains("layer_norm")
        || key.contains("layrnorm")
        || key.contains("layernorm");
    let is_norm_bias = is_norm_weight && key.ends_with(".bias");
    let mut state: u64 = key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let amplitude = 0.02f32 * 3f32.sqrt();
    let mut chunk: Vec<u8> = Vec::with_capacity(1 << 16);
    for _ in 0..numel {
        let v = if is_norm_bias {
            0.0
        } else if is_norm_weight {
            1.0
        } else {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (unit * 2.0 - 1.0) * amplitude
        };
        match target {
            ElemType::F16 => chunk.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            _ => chunk.extend_from_slice(&v.to_le_bytes()),
        }
        if chunk.len() >= (1 << 16) - 8 {
            w.write_all(&chunk)?;
            chunk.clear();
        }
    }
    w.write_all(&chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_convert() {
        // [[1, 2, 3], [4, 5, 6]] as f32 -> transposed f16 [[1, 4], [2, 5], [3, 6]]
        let raw: Vec<u8> = [1f32, 2., 3., 4., 5., 6.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut out = Vec::new();
        convert_into(
            &raw,
            StorageDtype::F32,
            &[2, 3],
            true,
            ElemType::F16,
            &mut out,
        )
        .unwrap();
        let vals: Vec<f32> = out
            .chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert_eq!(vals, [1., 4., 2., 5., 3., 6.]);
    }

    /// A transposed 130 x 70 tensor (more than one 64-column block, a partial last block)
    /// equals the naive element-by-element transpose.
    #[test]
    fn blocked_transpose_matches_naive() {
        let (rows, cols) = (130usize, 70usize);
        let vals: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        convert_into(
            &raw,
            StorageDtype::F32,
            &[rows, cols],
            true,
            ElemType::F32,
            &mut out,
        )
        .unwrap();
        let got: Vec<f32> = out
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for c in 0..cols {
            for r in 0..rows {
                assert_eq!(got[c * rows + r], vals[r * cols + c]);
            }
        }
    }

    #[test]
    fn bf16_to_f32() {
        // bf16 0x3fc0 = 1.5 (sign 0, exponent 127, mantissa .1b)
        let mut out = Vec::new();
        convert_into(
            &[0xc0, 0x3f],
            StorageDtype::BF16,
            &[1],
            false,
            ElemType::F32,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, 1.5f32.to_le_bytes());
    }

    #[test]
    fn random_is_seeded_and_bounded() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        random_into(
            "model.layers.0.mlp.up_proj.weight",
            1000,
            ElemType::F32,
            &mut a,
        )
        .unwrap();
        random_into(
            "model.layers.0.mlp.up_proj.weight",
            1000,
            ElemType::F32,
            &mut b,
        )
        .unwrap();
        assert_eq!(a, b);
        let vals: Vec<f32> = a
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert!(vals.iter().all(|v| v.abs() <= 0.0347));
        let mean = vals.iter().sum::<f32>() / 1000.0;
        assert!(mean.abs() < 0.003, "{mean}");
        let mut n = Vec::new();
        random_into("model.norm.weight", 4, ElemType::F32, &mut n).unwrap();
        assert_eq!(
            n,
            [1f32; 4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
    }
}
