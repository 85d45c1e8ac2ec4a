//! Pillow's BICUBIC resize of an 8-bit RGB image (`libImaging/Resample.c`, Pillow 10.3.0,
//! `Image.resize(size, BICUBIC, reducing_gap=None)`), reimplemented bit for bit.
//!
//! Separable: a horizontal pass over only the source rows the vertical pass will read,
//! then a vertical pass. Each pass computes its filter weights in f64 (Keys cubic,
//! a = -0.5, support 2 * max(scale, 1), weights normalised to sum 1), turns them into
//! fixed point with 22 fractional bits (`PRECISION_BITS = 32 - 8 - 2`, rounding half away
//! from zero), accumulates in i32 starting from 0.5, and clamps the result to 0..=255,
//! so the intermediate image is 8-bit exactly as in Pillow. A pass whose size does not
//! change is skipped, as in Pillow (so an image already at the target size is unchanged).
//! Only the pixels of a requested region (the center crop) are computed.

use super::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Keys' cubic convolution kernel with a = -0.5 (Pillow's `bicubic_filter`).
#[inline]
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point weights of one pass for the output pixels `offset..offset + first.len()`:
/// output pixel `offset + i` reads `len[i]` inputs from `first[i]` with weights
/// `k[i * ksize ..]`.
struct Coeffs {
    offset: usize,
    ksize: usize,
    first: Vec<usize>,
    len: Vec<usize>,
    k: Vec<i32>,
}

impl Coeffs {
    /// First input index and weights of output pixel `xx`.
    #[inline]
    fn at(&self, xx: usize) -> (usize, &[i32]) {
        let i = xx - self.offset;
        (
            self.first[i],
            &self.k[i * self.ksize..i * self.ksize + self.len[i]],
        )
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `0..in_size`,
/// computed only for the output pixels in `wanted` (each pixel's weights depend only on
/// its own index, so this equals slicing Pillow's full table).
fn coeffs(in_size: usize, out_size: usize, wanted: std::ops::Range<usize>) -> Coeffs {
    // Pillow passes the box edges as C floats; (in1 - in0) is computed in float.
    let scale = f64::from(in_size as f32 - 0.0f32) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut first = Vec::with_capacity(wanted.len());
    let mut len = Vec::with_capacity(wanted.len());
    let mut k = vec![0i32; wanted.len() * ksize];
    let mut w = vec![0f64; ksize];
    let offset = wanted.start;
    for xx in wanted {
        let center = 0.0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let n = xmax.clamp(0, ksize as i64) as usize;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            *wx = bicubic(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[(xx - offset) * ksize..(xx - offset) * ksize + n];
        for (kx, &wx) in row.iter_mut().zip(&w) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let f = v * f64::from(1u32 << PRECISION_BITS);
            *kx = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        first.push(xmin as usize);
        len.push(n);
    }
    Coeffs {
        offset,
        ksize,
        first,
        len,
        k,
    }
}

/// Pillow's `clip8`: drop the fraction bits, clamp to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Calls `$f` through a copy compiled for AVX2 when the CPU has it (wider integer
/// vectors; integer arithmetic, so the results are identical either way).
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the running CPU supports AVX2 (checked just above).
                unsafe { avx2::$f($($arg),*) }
            } else {
                $f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*)
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The passes compiled with AVX2 enabled; callers check the CPU first.
    use super::Coeffs;

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal(
        src: &[u8],
        in_w: usize,
        horiz: &Coeffs,
        x0: usize,
        tmp: &mut [u8],
        stride: usize,
    ) {
        // SAFETY: this function only runs on CPUs with AVX2 (its own contract).
        super::horizontal_with(src, in_w, horiz, x0, tmp, stride, |a, k| unsafe {
            dot8(a, k)
        })
    }

    /// `super::dot8` with explicit 256-bit integer multiply-adds.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    unsafe fn dot8(taps: &[i32], weights: &[i32]) -> [i32; 8] {
        use std::arch::x86_64::{
            __m256i, _mm256_add_epi32, _mm256_loadu_si256, _mm256_mullo_epi32,
            _mm256_setzero_si256, _mm256_storeu_si256,
        };
        let mut acc = _mm256_setzero_si256();
        for (a, k) in taps.chunks_exact(8).zip(weights.chunks_exact(8)) {
            // SAFETY: both chunks hold exactly 8 i32 (32 bytes); unaligned loads.
            let (va, vk) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().cast::<__m256i>()),
                    _mm256_loadu_si256(k.as_ptr().cast::<__m256i>()),
                )
            };
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(va, vk));
        }
        let mut out = [0i32; 8];
        // SAFETY: `out` is 32 bytes; unaligned store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast::<__m256i>(), acc) };
        out
    }

    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical(
        tmp: &[u8],
        vert: &Coeffs,
        y0: usize,
        row_first: usize,
        out: &mut [u8],
        stride: usize,
    ) {
        super::vertical(tmp, vert, y0, row_first, out, stride)
    }
}

/// Horizontal pass: every row of `src` (`in_w` RGB pixels) gives one row of `tmp`
/// (`stride` bytes = output columns `x0..` of the resized width).
#[inline(always)]
fn horizontal(src: &[u8], in_w: usize, horiz: &Coeffs, x0: usize, tmp: &mut [u8], stride: usize) {
    horizontal_with(src, in_w, horiz, x0, tmp, stride, dot8);
}

/// Lane-wise sums of `taps[i] * weights[i]` over 8-wide chunks (portable version).
#[inline(always)]
fn dot8(taps: &[i32], weights: &[i32]) -> [i32; 8] {
    let mut acc = [0i32; 8];
    for (a8, k8) in taps.chunks_exact(8).zip(weights.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += a8[l] * k8[l];
        }
    }
    acc
}

#[inline(always)]
fn horizontal_with(
    src: &[u8],
    in_w: usize,
    horiz: &Coeffs,
    x0: usize,
    tmp: &mut [u8],
    stride: usize,
    dot: impl Fn(&[i32], &[i32]) -> [i32; 8],
) {
    // Samples widened once per row to (R, G, B, 0) i32 quadruples, plus one zero pixel so a
    // tap count rounded up to even stays in bounds; each output pixel is then a dot
    // product of two flat i32 slices, two taps (8 lanes) at a time, with the weights
    // repeated 4 times (`expand`). The extra tap has weight 0; integer sums in any order
    // are the same, so this equals Pillow's tap-by-tap sum.
    let out_n = stride / 3;

    let mut expand: Vec<i32> = Vec::new();
    let mut offsets = Vec::with_capacity(out_n + 1);
    for xx in x0..x0 + out_n {
        offsets.push(expand.len());
        let k = horiz.at(xx).1;
        for t in 0..k.len().div_ceil(2) * 2 {
            let w = k.get(t).copied().unwrap_or(0);
            expand.extend_from_slice(&[w, w, w, w]);
        }
    }
    offsets.push(expand.len());
    let mut wide = vec![0i32; (in_w + 1) * 4];
    for (in_row, out_row) in src.chunks_exact(in_w * 3).zip(tmp.chunks_exact_mut(stride)) {
        for (w4, s) in wide.chunks_exact_mut(4).zip(in_row.chunks_exact(3)) {
            w4[0] = i32::from(s[0]);
            w4[1] = i32::from(s[1]);
            w4[2] = i32::from(s[2]);
        }
        for (i, px) in out_row.chunks_exact_mut(3).enumerate() {
            let xx = x0 + i;
            let kw = &expand[offsets[i]..offsets[i + 1]];
            let first = horiz.at(xx).0 * 4;
            let taps = &wide[first..first + kw.len()];
            let acc = dot(taps, kw);
            px[0] = clip8(HALF + acc[0] + acc[4]);
            px[1] = clip8(HALF + acc[1] + acc[5]);
            px[2] = clip8(HALF + acc[2] + acc[6]);
        }
    }
}

/// Vertical pass: output row `y0 + i` of the resized image from the rows of `tmp`
/// (`tmp` row 0 is resized-input row `row_first`), accumulated row-wise.
#[inline(always)]
fn vertical(tmp: &[u8], vert: &Coeffs, y0: usize, row_first: usize, out: &mut [u8], stride: usize) {
    let mut acc = vec![0i32; stride];
    for (i, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let yy = y0 + i;
        acc.fill(HALF);
        let (first, k) = vert.at(yy);
        let first = first - row_first;
        for (dy, &ky) in k.iter().enumerate() {
            let row = &tmp[(first + dy) * stride..(first + dy + 1) * stride];
            for (a, &s) in acc.iter_mut().zip(row) {
                *a += i32::from(s) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
}

/// A rectangle of the resized image: columns `x0..x0 + w`, rows `y0..y0 + h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Region {
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
}

/// Resizes `img` to `out_w` x `out_h` exactly as Pillow's BICUBIC `resize`, but computes
/// only the pixels inside `region` (which must lie within `out_w` x `out_h`). Every output
/// pixel depends only on its own filter taps, so this equals cropping Pillow's full result;
/// it skips the work for the parts a center crop throws away.
pub(super) fn resize_bicubic_region(
    img: &RgbImage,
    out_w: usize,
    out_h: usize,
    region: Region,
) -> RgbImage {
    let (in_w, in_h) = (img.width, img.height);
    let Region { x0, y0, w, h } = region;
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;

    // Horizontal pass (or a plain column crop when the width does not change) over the
    // source rows the vertical pass will read for the requested output rows.
    let vert = need_v.then(|| coeffs(in_h, out_h, y0..y0 + h));
    let (row_first, row_last) = match &vert {
        Some(v) => {
            let (last_first, last_k) = v.at(y0 + h - 1);
            (v.at(y0).0, last_first + last_k.len())
        }
        None => (y0, y0 + h),
    };
    let stride = w * 3;
    let mut tmp = vec![0u8; (row_last - row_first) * stride];
    if need_h {
        let horiz = coeffs(in_w, out_w, x0..x0 + w);
        let src = &img.data[row_first * in_w * 3..row_last * in_w * 3];
        dispatch!(horizontal(src, in_w, &horiz, x0, &mut tmp, stride));
    } else {
        for (y, out_row) in tmp.chunks_exact_mut(stride).enumerate() {
            let start = ((row_first + y) * in_w + x0) * 3;
            out_row.copy_from_slice(&img.data[start..start + stride]);
        }
    }
    let Some(vert) = vert else {
        return RgbImage {
            width: w,
            height: h,
            data: tmp,
        };
    };

    // Vertical pass.
    let mut out = vec![0u8; h * stride];
    dispatch!(vertical(&tmp, &vert, y0, row_first, &mut out, stride));
    RgbImage {
        width: w,
        height: h,
        data: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic noisy test image (xorshift), so every tap weight matters.
    fn noise(width: usize, height: usize) -> RgbImage {
        let mut state = 0x2545_f491_u32;
        let data = (0..width * height * 3)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        RgbImage {
            width,
            height,
            data,
        }
    }

    fn full(w: usize, h: usize) -> Region {
        Region { x0: 0, y0: 0, w, h }
    }

    /// Computing only a region equals cropping the full resize (the claim the center
    /// crop relies on), for down- and up-scaling and one-pass cases.
    #[test]
    fn region_equals_crop_of_full_resize() {
        for &(iw, ih, ow, oh) in &[
            (97, 61, 40, 25),
            (23, 17, 71, 52),
            (50, 40, 50, 77),
            (64, 30, 20, 30),
        ] {
            let img = noise(iw, ih);
            let whole = resize_bicubic_region(&img, ow, oh, full(ow, oh));
            let r = Region {
                x0: 3,
                y0: 5,
                w: ow - 7,
                h: oh - 9,
            };
            let part = resize_bicubic_region(&img, ow, oh, r);
            for y in 0..r.h {
                let a =
                    &whole.data[((r.y0 + y) * ow + r.x0) * 3..((r.y0 + y) * ow + r.x0 + r.w) * 3];
                assert_eq!(
                    &part.data[y * r.w * 3..(y + 1) * r.w * 3],
                    a,
                    "{iw}x{ih}->{ow}x{oh} row {y}"
                );
            }
        }
    }

    /// The AVX2 copies and the portable passes give the same bytes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_passes_equal_portable_passes() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("no AVX2 on this CPU: nothing to compare");
            return;
        }
        let img = noise(131, 77);
        let (ow, oh) = (50, 29);
        let horiz = coeffs(131, ow, 0..ow);
        let vert = coeffs(77, oh, 0..oh);
        let stride = ow * 3;
        let (mut a, mut b) = (vec![0u8; 77 * stride], vec![0u8; 77 * stride]);
        horizontal(&img.data, 131, &horiz, 0, &mut a, stride);
        // SAFETY: AVX2 support checked above.
        unsafe { avx2::horizontal(&img.data, 131, &horiz, 0, &mut b, stride) };
        assert_eq!(a, b);
        let (mut c, mut d) = (vec![0u8; oh * stride], vec![0u8; oh * stride]);
        vertical(&a, &vert, 0, 0, &mut c, stride);
        // SAFETY: AVX2 support checked above.
        unsafe { avx2::vertical(&a, &vert, 0, 0, &mut d, stride) };
        assert_eq!(c, d);
    }

    /// Weights computed for a sub-range equal the same rows of the full table.
    #[test]
    fn coeffs_for_a_range_equal_the_full_table() {
        for &(n_in, n_out) in &[(1411, 336), (45, 504), (300, 1568)] {
            let full = coeffs(n_in, n_out, 0..n_out);
            let part = coeffs(n_in, n_out, n_out / 3..n_out / 3 + 100);
            for xx in n_out / 3..n_out / 3 + 100 {
                assert_eq!(part.at(xx), full.at(xx), "{n_in}->{n_out} at {xx}");
            }
        }
    }

    /// Pillow's kernel values at the knots and the weight normalisation (each output's
    /// fixed-point weights sum to 1.0 within rounding, i.e. 2^22 +- taps).
    #[test]
    fn kernel_and_weights() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(0.5), 0.5625);
        assert_eq!(bicubic(-1.5), -0.0625);
        let c = coeffs(1411, 336, 0..336);
        for i in 0..336 {
            let sum: i32 = c.at(i).1.iter().sum();
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= c.len[i] as i32,
                "{i}: {sum}"
            );
        }
    }
}
