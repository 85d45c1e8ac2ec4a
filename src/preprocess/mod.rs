//! Image decoding and CLIP preprocessing, Pillow-exact.
//!
//! Contract: [`pixel_values`] returns `[3, crop, crop]` float32 CHW, bit-identical to
//! `CLIPImageProcessor.preprocess(Image.open(path).convert('RGB'))["pixel_values"][0]`
//! of transformers 4.37.2 with Pillow 10.3.0 (checked on every golden image by
//! `tests/preprocess_golden.rs`). Steps (REFERENCE.md "Image preprocessing"):
//! 1. [`decode_rgb`]: Pillow's `Image.open(path).convert('RGB')` for JPEG (libjpeg-turbo
//!    decoder, see `jpeg.rs`) and PNG (see `png.rs`); the format is sniffed from the
//!    content like Pillow does, EXIF orientation is not applied, alpha is dropped.
//! 2. Resize so the short side is `shortest_edge`, the long side
//!    `int(shortest_edge * long / short)`, with Pillow's BICUBIC (`resample.rs`).
//! 3. Center crop `top = (H - crop) // 2`, `left = (W - crop) // 2` (transformers
//!    `center_crop`, zero padding included when the image is smaller than the crop);
//!    only the cropped pixels of the resized image are computed (same values).
//! 4. `(x * rescale_factor)` in f64 rounded to f32, then `(x - mean) / std` in f32.
//!
//! Errors: unreadable, truncated, corrupt or unsupported files give [`Error`]; no input
//! makes this module panic or abort. A file is read only when it is a regular file (after
//! following symlinks: a FIFO would hang, a device such as `/dev/zero` never ends), no
//! larger than the size cap, and starts like a JPEG or a PNG (sniffed from its first bytes,
//! before the rest is read).

mod jpeg;
mod png;
mod resample;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use vlguard_export::manifest::PreprocessSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read image {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("cannot identify image file {path} (only JPEG and PNG are supported)")]
    UnknownFormat { path: PathBuf },
    #[error("image path `{image}` is refused: {reason}")]
    Path { image: String, reason: String },
    #[error("image {path} is not a regular file ({kind})")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("image {path} has {size} bytes, over the limit of {limit} (raise it with --max-image-bytes)")]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot preprocess image {path}: {reason}")]
    Preprocess { path: PathBuf, reason: String },
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B (`HWC`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Pillow's decompression-bomb limit: `Image.MAX_IMAGE_PIXELS * 2` pixels is an error.
const MAX_PIXELS: usize = 2 * 89_478_485;

fn check_pixel_count(width: usize, height: usize) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("empty image {width}x{height}"));
    }
    match width.checked_mul(height) {
        Some(n) if n <= MAX_PIXELS => Ok(()),
        _ => Err(format!(
            "image size {width}x{height} exceeds the limit of {MAX_PIXELS} pixels \
             (Pillow's decompression bomb check)"
        )),
    }
}

/// `L -> RGB` (`Convert.c:l2rgb`): the gray value in all three channels.
fn gray_to_rgb(width: usize, height: usize, gray: &[u8]) -> RgbImage {
    let mut data = Vec::with_capacity(gray.len() * 3);
    for &v in gray {
        data.extend_from_slice(&[v, v, v]);
    }
    RgbImage {
        width,
        height,
        data,
    }
}

/// The default cap on an image file's size: VLGuard's largest image is a few MB, a
/// 50-megapixel JPEG stays under 30 MB.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 64 << 20;

/// The bytes of an image file, refused before they are read when the file is not a
/// regular file, is larger than `max_bytes`, or does not start like a JPEG or a PNG.
pub fn read_image(path: &Path, max_bytes: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    // `metadata` follows symlinks: what would be opened is what is checked.
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
            kind: vlguard_export::files::kind(&meta.file_type()),
        });
    }
    if meta.len() > max_bytes {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            limit: max_bytes,
        });
    }
    let file = std::fs::File::open(path).map_err(io)?;
    // A file that grows after the check is still read no further than the cap.
    let mut reader = file.take(max_bytes + 1);
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    if sniff(&head[..got]).is_none() {
        return Err(Error::UnknownFormat {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    bytes.extend_from_slice(&head[..got]);
    reader.read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            limit: max_bytes,
        });
    }
    Ok(bytes)
}

/// Decodes an image file like Pillow's `Image.open(path).convert('RGB')`.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, Error> {
    let bytes = read_image(path, DEFAULT_MAX_IMAGE_BYTES)?;
    decode_bytes(&bytes, path)
}

/// [`decode_rgb`] on bytes already read (`path` only names them in errors): the entry
/// point of the decoders alone, for the fuzz tests.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<RgbImage, Error> {
    decode_rgb_bytes(bytes).map_err(|e| e.at(path))
}

/// Where decoding failed, before the path is attached.
enum DecodeError {
    Unknown,
    Bad(String),
}

impl DecodeError {
    fn at(self, path: &Path) -> Error {
        let path = path.to_path_buf();
        match self {
            DecodeError::Unknown => Error::UnknownFormat { path },
            DecodeError::Bad(reason) => Error::Decode { path, reason },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
}

/// The format of a file from its first bytes (Pillow's `_accept` checks).
fn sniff(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"\xFF\xD8\xFF") {
        Some(Format::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else {
        None
    }
}

/// Sniffs the format from the first bytes and decodes.
fn decode_rgb_bytes(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    match sniff(bytes) {
        Some(Format::Jpeg) => jpeg::decode(bytes).map_err(DecodeError::Bad),
        Some(Format::Png) => png::decode(bytes).map_err(DecodeError::Bad),
        None => Err(DecodeError::Unknown),
    }
}

/// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
/// becomes `shortest_edge`, the long side `int(shortest_edge * long / short)` (float
/// division, then truncation). Returns `(width, height)`.
pub fn resize_output_size(width: usize, height: usize, shortest_edge: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (shortest_edge as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (shortest_edge, new_long)
    } else {
        (new_long, shortest_edge)
    }
}

/// Steps 2 and 3: Pillow BICUBIC resize, then transformers' `center_crop` (with its zero
/// padding when the resized image is smaller than the crop). Returns the crop as
/// `crop x crop` HWC bytes. Only the cropped pixels of the resized image are computed.
pub fn resize_and_crop(img: &RgbImage, spec: &PreprocessSpec) -> Result<RgbImage, String> {
    if spec.resample != 3 {
        return Err(format!(
            "resample filter {} is not supported (only 3 = BICUBIC)",
            spec.resample
        ));
    }
    // transformers infers the channel axis from the array shape: an image 1 or 3 pixels
    // high is taken as channels-first and processed as garbage; refuse it instead.
    if img.height == 1 || img.height == 3 {
        return Err(format!(
            "image height {} is read as a channel axis by transformers; not supported",
            img.height
        ));
    }
    let (w, h) = resize_output_size(img.width, img.height, spec.shortest_edge);
    let crop = spec.crop_size;
    if w == 0 || h == 0 || crop == 0 {
        return Err(format!("resized size {w}x{h} or crop {crop} is empty"));
    }
    // Only the cropped part of the resize target is ever allocated, so an extreme aspect
    // ratio (a huge target) costs nothing extra; just keep the arithmetic in range.
    if w.checked_mul(h).is_none() {
        return Err(format!("resize target {w}x{h} is too large"));
    }
    let (ys, yd) = crop_span(h, crop)?;
    let (xs, xd) = crop_span(w, crop)?;
    let region = resample::Region {
        x0: xs.start,
        y0: ys.start,
        w: xs.len(),
        h: ys.len(),
    };
    let part = resample::resize_bicubic_region(img, w, h, region);
    if (xs.len(), ys.len()) == (crop, crop) {
        return Ok(part);
    }
    // Zero padding around the resized image.
    let mut data = vec![0u8; crop * crop * 3];
    for (y, row) in part.data.chunks_exact(part.width * 3).enumerate() {
        let d = ((yd + y) * crop + xd) * 3;
        data[d..d + row.len()].copy_from_slice(row);
    }
    Ok(RgbImage {
        width: crop,
        height: crop,
        data,
    })
}

/// transformers 4.37.2 `center_crop` along one axis of length `n`: the source range of
/// the resized image that lands in the crop, and where it lands (after zero padding).
fn crop_span(n: usize, crop: usize) -> Result<(std::ops::Range<usize>, usize), String> {
    let (n_i, c) = (n as i64, crop as i64);
    // Python floor division on a possibly negative difference.
    let start = (n_i - c).div_euclid(2);
    let padded = c.max(n_i);
    let pad = (padded - n_i) / 2;
    let (lo, hi) = ((start + pad).max(0), (start + pad + c).min(padded));
    if hi - lo != c {
        return Err(format!(
            "transformers' center_crop of a side of {n} to {crop} gives {}, not {crop}",
            hi - lo
        ));
    }
    // Padded coordinates lo..hi hold source pixels pad..pad + n.
    let src_lo = (lo - pad).max(0);
    let src_hi = (hi - pad).min(n_i);
    let dst = (src_lo + pad - lo) as usize;
    Ok((src_lo as usize..src_hi as usize, dst))
}

/// Pillow's BICUBIC resize of the whole image to `width` x `height` (`Image.resize`,
/// `reducing_gap=None`): step 2 without the crop, for thumbnails (`browse`).
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let whole = resample::Region {
        x0: 0,
        y0: 0,
        w: width,
        h: height,
    };
    resample::resize_bicubic_region(img, width, height, whole)
}

/// Step 4 on a `crop x crop` image: per channel a 256-entry table of
/// `((v * rescale_factor) as f32 - mean) / std` (numpy: uint8 * float -> f64, astype
/// f32, then f32 arithmetic), written out channel-first.
pub fn normalize_chw(img: &RgbImage, spec: &PreprocessSpec) -> Vec<f32> {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = (v as f64 * spec.rescale_factor) as f32;
            *out = (x - spec.image_mean[c]) / spec.image_std[c];
        }
    }
    let plane = img.width * img.height;
    let mut out = vec![0f32; 3 * plane];
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        r[i] = lut[0][usize::from(px[0])];
        g[i] = lut[1][usize::from(px[1])];
        b[i] = lut[2][usize::from(px[2])];
    }
    out
}

/// A preprocessed image and the sha256 of its file's bytes (what a resumed run checks).
#[derive(Debug, Clone)]
pub struct Pixels {
    pub values: Vec<f32>,
    pub sha256: String,
}

/// Reads (at most `max_bytes`), decodes and preprocesses one image into `[3, crop, crop]`
/// CHW float32.
pub fn load(path: &Path, spec: &PreprocessSpec, max_bytes: u64) -> Result<Pixels, Error> {
    let bytes = read_image(path, max_bytes)?;
    let sha256 = crate::util::sha256_hex(&bytes);
    let img = decode_rgb_bytes(&bytes).map_err(|e| e.at(path))?;
    drop(bytes);
    let cropped = resize_and_crop(&img, spec).map_err(|reason| Error::Preprocess {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(Pixels {
        values: normalize_chw(&cropped, spec),
        sha256,
    })
}

/// `root/image` for an `image` path of test.json, which must stay under `root`: an
/// absolute path or one with a `..` component is refused (test.json is data, not a
/// licence to read any file).
pub fn image_under(root: &Path, image: &str) -> Result<PathBuf, Error> {
    use std::path::Component;
    let rel = Path::new(image);
    let refuse = |reason: &str| Error::Path {
        image: image.to_string(),
        reason: reason.to_string(),
    };
    if image.is_empty() {
        return Err(refuse("the path is empty"));
    }
    for component in rel.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(refuse("a `..` component leaves the image folder")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(refuse("an absolute path leaves the image folder"))
            }
        }
    }
    Ok(root.join(rel))
}

/// Decodes and preprocesses one image into `[3, crop, crop]` CHW float32.
pub fn pixel_values(path: &Path, spec: &PreprocessSpec) -> Result<Vec<f32>, Error> {
    let img = decode_rgb(path)?;
    let cropped = resize_and_crop(&img, spec).map_err(|reason| Error::Preprocess {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(normalize_chw(&cropped, spec))
}

/// [`pixel_values`] for many images in parallel (rayon's pool); results in input order.
pub fn pixel_values_batch(
    paths: &[PathBuf],
    spec: &PreprocessSpec,
) -> Vec<Result<Vec<f32>, Error>> {
    paths.par_iter().map(|p| pixel_values(p, spec)).collect()
}
