//! PNG decoding exactly as Pillow 10.3.0 does `Image.open(path).convert('RGB')`.
//!
//! Input: the file's bytes. Output: an [`RgbImage`] or an error reason.
//!
//! The `png` crate decodes the raw samples (no transformations: no gamma, no tRNS
//! expansion, no 16 -> 8 scaling); the mode rules are Pillow's (`PngImagePlugin._MODES`,
//! `Unpack.c`, `Convert.c`):
//! - gray 1 bit is mode `1` (0 or 255); gray 2/4 bits is `L;2`/`L;4` (value * 85 / * 17);
//! - gray 16 bits is `I;16`, and `convert('RGB')` CLIPS: `v = high byte == 0 ? low : 255`;
//! - RGB / RGBA / gray+alpha 16 bits keep the HIGH byte of each sample;
//! - alpha (RGBA, LA, palette tRNS) is dropped, never composited; tRNS is ignored;
//! - palette indices past the PLTE entries read as black (Pillow's zeroed palette).

use std::io::Cursor;

use png::{BitDepth, ColorType, Transformations};

use super::{check_pixel_count, gray_to_rgb, RgbImage};

/// Decodes a PNG held in `data` like `Image.open(...).convert('RGB')`.
pub(super) fn decode(data: &[u8]) -> Result<RgbImage, String> {
    let mut decoder = png::Decoder::new(Cursor::new(data));
    decoder.set_transformations(Transformations::IDENTITY);
    // Our own pixel-count guard (Pillow's decompression-bomb limit) replaces the crate's
    // 64 MiB default allocation limit, which large but legal photos exceed.
    decoder.set_limits(png::Limits { bytes: usize::MAX });
    let mut reader = decoder.read_info().map_err(|e| e.to_string())?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    check_pixel_count(width, height)?;
    let palette: Vec<u8> = reader
        .info()
        .palette
        .as_ref()
        .map(|p| p.to_vec())
        .unwrap_or_default();
    let (color_type, bit_depth) = reader.output_color_type();
    let line = reader
        .output_line_size(width as u32)
        .ok_or_else(|| "image too large".to_string())?;
    // Deflate expands at most 1032:1 (zlib's documented limit) and every row carries a
    // filter byte, so a file of `data.len()` bytes cannot hold more than this: a header
    // that asks for more is truncated or forged, refused before its buffer is allocated
    // (a 60-byte file could otherwise claim 1.3 GB).
    if (line + 1).saturating_mul(height) > data.len().saturating_mul(1032) {
        return Err(format!(
            "image file is truncated: {} bytes cannot hold a {width}x{height} image",
            data.len()
        ));
    }
    let raw = Raw {
        width,
        height,
        line,
        color_type,
        bit_depth,
        palette,
    };
    let buf = read_rows(&mut reader, &raw)?;
    raw.to_rgb(&buf)
}

/// Every row of the image `raw` describes, deinterlaced, `raw.line` bytes each.
fn read_rows(reader: &mut png::Reader<Cursor<&[u8]>>, raw: &Raw) -> Result<Vec<u8>, String> {
    let (width, height, line) = (raw.width, raw.height, raw.line);
    let bits_per_pixel = raw.color_type.samples() as u8 * raw.bit_depth as u8;
    let interlaced = reader.info().interlaced;
    let mut buf = vec![0u8; line * height];
    // Row by row, stopping after the last row: like Pillow, accept a file whose chunks
    // after the image data (IEND) are cut; `next_frame` would insist on reading them.
    for y in 0..row_count(width, height, interlaced) {
        let row = reader
            .next_interlaced_row()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "image file is truncated".to_string())?;
        match row.interlace() {
            png::InterlaceInfo::Adam7(info) => {
                png::expand_interlaced_row(&mut buf, line, row.data(), info, bits_per_pixel)
            }
            // Not interlaced: the rows come in order, one per image row.
            png::InterlaceInfo::Null(_) => {
                buf[y * line..(y + 1) * line].copy_from_slice(row.data())
            }
        }
    }
    Ok(buf)
}

/// Decoded samples and what they mean.
struct Raw {
    width: usize,
    height: usize,
    line: usize,
    color_type: ColorType,
    bit_depth: BitDepth,
    palette: Vec<u8>,
}

impl Raw {
    /// The samples in `buf` as Pillow's `convert('RGB')` gives them.
    fn to_rgb(&self, buf: &[u8]) -> Result<RgbImage, String> {
        let (width, height, palette) = (self.width, self.height, &self.palette);
        let rows = buf.chunks_exact(self.line).take(height);
        let mut rgb = Vec::with_capacity(width * height * 3);
        match (self.color_type, self.bit_depth) {
            (ColorType::Grayscale, BitDepth::Sixteen) => {
                // I;16 -> RGB (Convert.c I16_RGB): values above 255 clip to 255.
                for row in rows {
                    for s in row[..width * 2].chunks_exact(2) {
                        let v = if s[0] == 0 { s[1] } else { 255 };
                        rgb.extend_from_slice(&[v, v, v]);
                    }
                }
            }
            (ColorType::Grayscale, BitDepth::Eight) => {
                let mut gray = Vec::with_capacity(width * height);
                for row in rows {
                    gray.extend_from_slice(&row[..width]);
                }
                return Ok(gray_to_rgb(width, height, &gray));
            }
            (ColorType::Grayscale, depth) => {
                // "1" (bit2rgb: 0 / 255), "L;2" (* 0x55), "L;4" (* 0x11).
                let bits = depth as usize;
                let scale = match depth {
                    BitDepth::One => 255,
                    BitDepth::Two => 0x55,
                    _ => 0x11,
                };
                for row in rows {
                    for x in 0..width {
                        let v = packed_sample(row, x, bits) * scale;
                        rgb.extend_from_slice(&[v, v, v]);
                    }
                }
            }
            (ColorType::Indexed, depth) => {
                let bits = depth as usize;
                if bits > 8 {
                    return Err("invalid palette bit depth".into());
                }
                let mut lut = [0u8; 256 * 3];
                let n = palette.len().min(lut.len());
                lut[..n].copy_from_slice(&palette[..n]);
                for row in rows {
                    for x in 0..width {
                        let i = usize::from(packed_sample(row, x, bits)) * 3;
                        rgb.extend_from_slice(&lut[i..i + 3]);
                    }
                }
            }
            (color, depth) => {
                // Byte-aligned colour types: keep the R, G, B (or L) samples, high byte only.
                let bytes_per_sample = if depth == BitDepth::Sixteen { 2 } else { 1 };
                let (samples, gray) = match color {
                    ColorType::Rgb => (3, false),
                    ColorType::Rgba => (4, false),
                    ColorType::GrayscaleAlpha => (2, true),
                    _ => return Err(format!("unsupported PNG colour type {color:?}")),
                };
                let step = samples * bytes_per_sample;
                for row in rows {
                    for px in row[..width * step].chunks_exact(step) {
                        if gray {
                            rgb.extend_from_slice(&[px[0], px[0], px[0]]);
                        } else {
                            rgb.extend_from_slice(&[
                                px[0],
                                px[bytes_per_sample],
                                px[2 * bytes_per_sample],
                            ]);
                        }
                    }
                }
            }
        }
        Ok(RgbImage {
            width,
            height,
            data: rgb,
        })
    }
}

/// Rows the decoder yields: `height`, or the rows of the non-empty Adam7 passes.
fn row_count(width: usize, height: usize, interlaced: bool) -> usize {
    if !interlaced {
        return height;
    }
    // (x0, y0, dx, dy) of the seven Adam7 passes.
    const PASSES: [(usize, usize, usize, usize); 7] = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ];
    PASSES
        .iter()
        .filter(|&&(x0, _, _, _)| width > x0)
        .map(|&(_, y0, _, dy)| height.saturating_sub(y0).div_ceil(dy))
        .sum()
}

/// The `x`-th `bits`-wide sample of a packed row (most significant bits first).
#[inline]
fn packed_sample(row: &[u8], x: usize, bits: usize) -> u8 {
    let bit = x * bits;
    let byte = row[bit / 8];
    let shift = 8 - bits - bit % 8;
    (byte >> shift) & ((1u16 << bits) - 1) as u8
}
