//! JPEG decoding exactly as Pillow 10.3.0 does it (`JpegImagePlugin` + `JpegDecode.c`).
//!
//! Input: the file's bytes. Output: an [`RgbImage`] equal byte for byte to
//! `Image.open(path).convert('RGB')`, or a [`Decoded`] error reason.
//!
//! How: libjpeg-turbo's decoder (mozjpeg's copy, built from source by `mozjpeg-sys`; its
//! SIMD code when `nasm` was there at build time, else its C code, which decode the same
//! bytes) run with Pillow's settings: default DCT method (ISLOW), fancy upsampling, no
//! scaling, no draft mode; arithmetic-coded files too. Pillow picks the mode from the component count (1 -> L, 3 -> RGB, 4 ->
//! CMYK), asks libjpeg for that output colour space, treats CMYK as Adobe-inverted
//! (`CMYK;I`) and converts CMYK with `Convert.c:cmyk2rgb`. libjpeg errors unwind out of
//! the C code (built with `-fexceptions`) as a Rust unwind caught here and returned as
//! `Err`; a file that ends before the last scanline is an error, as in Pillow
//! ("image file is truncated"). Other libjpeg warnings are ignored, as Pillow ignores them.

use std::ffi::{c_int, c_ulong, CStr};
use std::panic::{self, AssertUnwindSafe};

use mozjpeg_sys::{
    jpeg_common_struct, jpeg_create_decompress, jpeg_decompress_struct, jpeg_destroy_decompress,
    jpeg_error_mgr, jpeg_mem_src, jpeg_read_header, jpeg_read_scanlines, jpeg_start_decompress,
    jpeg_std_error, JWRN_JPEG_EOF, J_COLOR_SPACE,
};

use super::{check_pixel_count, gray_to_rgb, RgbImage};

/// Why libjpeg gave up; carried through the unwind as its payload.
struct JpegFailure(String);

/// `error_exit` must not return to libjpeg: unwind to the `catch_unwind` in [`decode`].
/// `resume_unwind` skips the panic hook, so nothing is printed.
unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    let msg = format_message(cinfo);
    panic::resume_unwind(Box::new(JpegFailure(msg)));
}

/// Warnings (level -1) and trace messages: only "premature end of data" matters, because
/// Pillow refuses a truncated file; everything else is ignored like Pillow's `output()`.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, msg_level: c_int) {
    // SAFETY: `err` points at the error manager owned by the live `Decoder`.
    let code = unsafe { (*cinfo.err).msg_code };
    if msg_level < 0 && code == JWRN_JPEG_EOF as c_int {
        panic::resume_unwind(Box::new(JpegFailure(
            "image file is truncated (premature end of JPEG data)".into(),
        )));
    }
}

fn format_message(cinfo: &mut jpeg_common_struct) -> String {
    let buf = [0u8; 80];
    // SAFETY: `err` is valid while libjpeg runs; format_message writes a NUL-terminated
    // string of at most JMSG_LENGTH_MAX (80) bytes into `buf`.
    unsafe {
        if let Some(fmt) = (*cinfo.err).format_message {
            fmt(cinfo, &buf);
        }
    }
    CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "libjpeg error".into())
}

/// libjpeg state; boxed so the pointers libjpeg keeps (cinfo.err) stay put.
struct Decoder {
    cinfo: jpeg_decompress_struct,
    err: jpeg_error_mgr,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: created by jpeg_create_decompress; destroy is valid in any state,
        // including after an error unwound out of libjpeg.
        unsafe { jpeg_destroy_decompress(&mut self.cinfo) };
    }
}

/// Decodes a JPEG held in `data` like `Image.open(...).convert('RGB')`.
pub(super) fn decode(data: &[u8]) -> Result<RgbImage, String> {
    // SAFETY: both structs are plain C data for which all-zero is a valid "not yet
    // initialised" state; jpeg_std_error and jpeg_create_decompress fill them in.
    let mut dec: Box<Decoder> = Box::new(unsafe { std::mem::zeroed() });
    let result = panic::catch_unwind(AssertUnwindSafe(|| -> Result<RgbImage, String> {
        let d = &mut *dec;
        // SAFETY: standard libjpeg set-up sequence on boxed (address-stable) structs;
        // `data` outlives every libjpeg call (all happen inside this closure).
        unsafe {
            d.cinfo.common.err = jpeg_std_error(&mut d.err);
            d.err.error_exit = Some(error_exit);
            d.err.emit_message = Some(emit_message);
            jpeg_create_decompress(&mut d.cinfo);
            jpeg_mem_src(&mut d.cinfo, data.as_ptr(), data.len() as c_ulong);
            jpeg_read_header(&mut d.cinfo, 1);
        }
        let cinfo = &mut d.cinfo;
        let (width, height) = (cinfo.image_width as usize, cinfo.image_height as usize);
        check_pixel_count(width, height)?;
        // JpegImagePlugin: mode from the layer count; the decoder is asked for that mode
        // ("L", "RGB", or "CMYK;I" which libjpeg sees as JCS_CMYK).
        let (out_space, channels) = match cinfo.num_components {
            1 => (J_COLOR_SPACE::JCS_GRAYSCALE, 1),
            3 => (J_COLOR_SPACE::JCS_RGB, 3),
            4 => (J_COLOR_SPACE::JCS_CMYK, 4),
            n => return Err(format!("cannot handle {n}-layer images")),
        };
        cinfo.out_color_space = out_space;
        // SAFETY: header read; output settings are Pillow's (libjpeg defaults otherwise).
        unsafe { jpeg_start_decompress(cinfo) };
        if cinfo.output_width as usize != width
            || cinfo.output_height as usize != height
            || cinfo.output_components as usize != channels
        {
            return Err("unexpected libjpeg output geometry".into());
        }
        let stride = width * channels;
        let mut raw = vec![0u8; stride * height];
        let mut rows: Vec<*mut u8> = raw
            .chunks_exact_mut(stride)
            .map(|r| r.as_mut_ptr())
            .collect();
        while (cinfo.output_scanline as usize) < height {
            let done = cinfo.output_scanline as usize;
            // SAFETY: `rows[done..]` are distinct rows of `raw`, each `stride` bytes long,
            // and libjpeg writes at most `height - done` of them.
            let n = unsafe {
                jpeg_read_scanlines(cinfo, rows[done..].as_mut_ptr(), (height - done) as u32)
            };
            if n == 0 {
                return Err("image file is truncated".into());
            }
        }
        Ok(match channels {
            1 => gray_to_rgb(width, height, &raw),
            3 => RgbImage {
                width,
                height,
                data: raw,
            },
            _ => cmyk_inverted_to_rgb(width, height, &raw),
        })
    }));
    drop(dec);
    match result {
        Ok(r) => r,
        Err(payload) => Err(match payload.downcast::<JpegFailure>() {
            Ok(f) => f.0,
            Err(_) => "libjpeg failed".into(),
        }),
    }
}

/// Pillow's `MULDIV255(a, b)`: a * b / 255 rounded, in integers.
#[inline]
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// Unpack `CMYK;I` (every sample inverted, Adobe convention), then `Convert.c:cmyk2rgb`:
/// `nk = 255 - k; out = clip8(nk - muldiv255(c, nk))`.
fn cmyk_inverted_to_rgb(width: usize, height: usize, raw: &[u8]) -> RgbImage {
    let mut data = Vec::with_capacity(width * height * 3);
    for px in raw.chunks_exact(4) {
        let [c, m, y, k] = [255 - px[0], 255 - px[1], 255 - px[2], 255 - px[3]];
        let nk = 255 - i32::from(k);
        for v in [c, m, y] {
            data.push((nk - muldiv255(i32::from(v), nk)).clamp(0, 255) as u8);
        }
    }
    RgbImage {
        width,
        height,
        data,
    }
}
