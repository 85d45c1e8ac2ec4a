//! Thumbnails for the browse page: each image read and decoded as `run` reads it
//! (`preprocess::image_under`, `read_image`, the libjpeg-turbo / png decoders), shrunk with
//! Pillow's BICUBIC filter so its longer side is at most `max_side` (never enlarged), and
//! encoded as a baseline-compatible JPEG by mozjpeg's encoder (the `mozjpeg-sys` library
//! the decoder already links: progressive scans, optimised Huffman tables, trellis
//! quantisation, 4:2:0 chroma), then carried in the page as a `data:` URL.
//!
//! An image that cannot be read or decoded has no thumbnail; the reason comes back with
//! its path for the page and the exit code. Images are made in parallel (rayon), each
//! once however many rows show it.

use std::collections::BTreeMap;
use std::ffi::{c_int, CStr};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use base64::Engine as _;
use mozjpeg_sys::{
    boolean, jpeg_common_struct, jpeg_compress_struct, jpeg_create_compress, jpeg_destination_mgr,
    jpeg_destroy_compress, jpeg_error_mgr, jpeg_finish_compress, jpeg_set_defaults,
    jpeg_set_quality, jpeg_start_compress, jpeg_std_error, jpeg_write_scanlines, J_COLOR_SPACE,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::preprocess::{self, RgbImage};

/// How thumbnails are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThumbSpec {
    /// Longest side in pixels.
    pub max_side: usize,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
}

/// One thumbnail as the page carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Thumb {
    pub width: usize,
    pub height: usize,
    /// `data:image/jpeg;base64,...`
    pub src: String,
}

/// The size that fits `width` x `height` into `max_side` keeping the aspect ratio (rounded,
/// at least one pixel); the image's own size when it already fits.
pub fn fit(width: usize, height: usize, max_side: usize) -> (usize, usize) {
    let long = width.max(height);
    if long <= max_side {
        return (width, height);
    }
    let scale =
        |side: usize| ((side as f64 * max_side as f64 / long as f64).round() as usize).max(1);
    (scale(width), scale(height))
}

/// The thumbnail of `root/image`, or why there is none.
pub fn thumbnail(root: &Path, image: &str, spec: ThumbSpec) -> Result<Thumb, String> {
    let path = preprocess::image_under(root, image).map_err(|e| e.to_string())?;
    let img = preprocess::decode_rgb(&path).map_err(|e| e.to_string())?;
    let (width, height) = fit(img.width, img.height, spec.max_side);
    let small = if (width, height) == (img.width, img.height) {
        img
    } else {
        preprocess::resize_bicubic(&img, width, height)
    };
    let jpeg = encode_jpeg(&small, spec.quality)
        .map_err(|reason| format!("cannot encode a thumbnail of {}: {reason}", path.display()))?;
    Ok(Thumb {
        width,
        height,
        src: format!(
            "data:image/jpeg;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(jpeg)
        ),
    })
}

/// Thumbnails of `images` (made once each, in parallel) keyed by image, and
/// `(image, reason)` for each that could not be made.
pub fn thumbnails(
    root: &Path,
    images: &[&str],
    spec: ThumbSpec,
) -> (BTreeMap<String, Thumb>, Vec<(String, String)>) {
    let made: Vec<(String, Result<Thumb, String>)> = images
        .par_iter()
        .map(|&image| (image.to_owned(), thumbnail(root, image, spec)))
        .collect();
    let mut thumbs = BTreeMap::new();
    let mut failed = Vec::new();
    for (image, result) in made {
        match result {
            Ok(thumb) => {
                thumbs.insert(image, thumb);
            }
            Err(reason) => failed.push((image, reason)),
        }
    }
    (thumbs, failed)
}

/// Why libjpeg gave up; carried through the unwind as its payload.
struct EncodeFailure(String);

/// `error_exit` must not return to libjpeg: unwind to the `catch_unwind` in
/// [`encode_jpeg`] (the C code is built with unwind tables, as for the decoder).
unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let buf = [0u8; 80];
    // SAFETY: `err` is valid while libjpeg runs; format_message writes a NUL-terminated
    // string of at most JMSG_LENGTH_MAX (80) bytes into `buf`.
    unsafe {
        if let Some(fmt) = (*cinfo.err).format_message {
            fmt(cinfo, &buf);
        }
    }
    let msg = CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "libjpeg error".into());
    panic::resume_unwind(Box::new(EncodeFailure(msg)));
}

/// Encoder warnings (none are expected for plain RGB input) are not printed.
unsafe extern "C-unwind" fn ignore_message(_cinfo: &mut jpeg_common_struct, _level: c_int) {}

/// libjpeg's destination manager writing into a `Vec` (the manager first, so libjpeg's
/// `cinfo.dest` pointer is also a pointer to this struct).
#[repr(C)]
struct VecDest {
    mgr: jpeg_destination_mgr,
    buf: Vec<u8>,
    /// Bytes written, set when libjpeg terminates the destination.
    len: usize,
}

/// A thumbnail is a few kilobytes: one start buffer usually holds it.
const START_BUFFER: usize = 16 << 10;

/// SAFETY (all three callbacks): `cinfo.dest` points at the `mgr` field of the live,
/// boxed `VecDest` of the [`Encoder`] that runs this compression.
unsafe fn vec_dest(cinfo: &mut jpeg_compress_struct) -> &mut VecDest {
    unsafe { &mut *cinfo.dest.cast::<VecDest>() }
}

unsafe extern "C-unwind" fn init_destination(cinfo: &mut jpeg_compress_struct) {
    let dest = unsafe { vec_dest(cinfo) };
    dest.buf.resize(START_BUFFER, 0);
    dest.mgr.next_output_byte = dest.buf.as_mut_ptr();
    dest.mgr.free_in_buffer = dest.buf.len();
}

/// Called when the buffer is full (libjpeg's contract: all of it is data): double it.
unsafe extern "C-unwind" fn empty_output_buffer(cinfo: &mut jpeg_compress_struct) -> boolean {
    let dest = unsafe { vec_dest(cinfo) };
    let used = dest.buf.len();
    dest.buf.resize(used * 2, 0);
    // SAFETY: `used` is within the resized buffer.
    dest.mgr.next_output_byte = unsafe { dest.buf.as_mut_ptr().add(used) };
    dest.mgr.free_in_buffer = used;
    1
}

unsafe extern "C-unwind" fn term_destination(cinfo: &mut jpeg_compress_struct) {
    let dest = unsafe { vec_dest(cinfo) };
    dest.len = dest.buf.len() - dest.mgr.free_in_buffer;
}

/// libjpeg state; boxed so the pointers libjpeg keeps (`err`, `dest`) stay put.
struct Encoder {
    cinfo: jpeg_compress_struct,
    err: jpeg_error_mgr,
    dest: VecDest,
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_compress; destroy is valid in any state, also
        // after an error unwound out of libjpeg.
        unsafe { jpeg_destroy_compress(&mut self.cinfo) };
    }
}

/// `img` as JPEG bytes at `quality` (mozjpeg's defaults otherwise).
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    if img.width == 0 || img.height == 0 || img.data.len() != img.width * img.height * 3 {
        return Err(format!("not an RGB image of {}x{}", img.width, img.height));
    }
    let mut enc = Box::new(Encoder {
        // SAFETY: plain C structs for which all-zero is the "not yet initialised" state
        // that jpeg_std_error and jpeg_create_compress fill in.
        cinfo: unsafe { std::mem::zeroed() },
        err: unsafe { std::mem::zeroed() },
        dest: VecDest {
            mgr: jpeg_destination_mgr {
                next_output_byte: std::ptr::null_mut(),
                free_in_buffer: 0,
                init_destination: Some(init_destination),
                empty_output_buffer: Some(empty_output_buffer),
                term_destination: Some(term_destination),
            },
            buf: Vec::new(),
            len: 0,
        },
    });
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let e = &mut *enc;
        // SAFETY: the standard libjpeg compression sequence on boxed (address-stable)
        // structs; each row pointer points into `img.data`, which outlives the calls.
        unsafe {
            e.cinfo.common.err = jpeg_std_error(&mut e.err);
            e.err.error_exit = Some(error_exit);
            e.err.emit_message = Some(ignore_message);
            jpeg_create_compress(&mut e.cinfo);
            e.cinfo.dest = &mut e.dest.mgr;
            e.cinfo.image_width = img.width as u32;
            e.cinfo.image_height = img.height as u32;
            e.cinfo.input_components = 3;
            e.cinfo.in_color_space = J_COLOR_SPACE::JCS_RGB;
            jpeg_set_defaults(&mut e.cinfo);
            jpeg_set_quality(&mut e.cinfo, c_int::from(quality.clamp(1, 100)), 1);
            jpeg_start_compress(&mut e.cinfo, 1);
            for row in img.data.chunks_exact(img.width * 3) {
                let ptr = row.as_ptr();
                jpeg_write_scanlines(&mut e.cinfo, &ptr, 1);
            }
            jpeg_finish_compress(&mut e.cinfo);
        }
    }));
    let mut bytes = std::mem::take(&mut enc.dest.buf);
    bytes.truncate(enc.dest.len);
    drop(enc);
    match result {
        Ok(()) => Ok(bytes),
        Err(payload) => Err(match payload.downcast::<EncodeFailure>() {
            Ok(failure) => failure.0,
            Err(_) => "libjpeg failed".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_the_longer_side_and_never_grow() {
        assert_eq!(fit(1500, 1000, 160), (160, 107));
        assert_eq!(fit(500, 1500, 160), (53, 160));
        assert_eq!(fit(100, 60, 160), (100, 60));
        assert_eq!(fit(5000, 3, 160), (160, 1));
    }

    #[test]
    fn an_encoded_thumbnail_decodes_to_its_size_and_colours() {
        // Left half red, right half blue: after JPEG, each half keeps its colour.
        let (w, h) = (64, 32);
        let data = (0..w * h)
            .flat_map(|i| {
                if i % w < w / 2 {
                    [220, 30, 30]
                } else {
                    [30, 30, 220]
                }
            })
            .collect();
        let img = RgbImage {
            width: w,
            height: h,
            data,
        };
        let jpeg = encode_jpeg(&img, 80).expect("encodes");
        assert!(jpeg.starts_with(b"\xFF\xD8\xFF"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.jpg");
        std::fs::write(&path, &jpeg).expect("write");
        let back = preprocess::decode_rgb(&path).expect("decodes");
        assert_eq!((back.width, back.height), (w, h));
        let px = |x: usize, y: usize| &back.data[(y * w + x) * 3..(y * w + x) * 3 + 3];
        for (x, want) in [(8, [220u8, 30, 30]), (56, [30, 30, 220])] {
            let got = px(x, 16);
            assert!(
                got.iter().zip(want).all(|(a, b)| a.abs_diff(b) <= 12),
                "pixel {x}: {got:?}, want about {want:?}"
            );
        }
        let bad = RgbImage {
            width: 2,
            height: 2,
            data: vec![0; 3],
        };
        assert!(encode_jpeg(&bad, 80).is_err());
    }
}
