#!/usr/bin/env python3
"""Writes the small images in tests/fixtures/preprocess/ and prints their expected values.

Run (development only): pip install pillow==10.3.0 numpy transformers==4.37.2
    python3 scripts/make_preprocess_fixtures.py
PNGs are written by hand (zlib + struct) to reach every bit depth / colour type that
Pillow opens differently; JPEGs by Pillow 10.3.0 itself (subsamplings, progressive, odd
sizes, restart markers, CMYK; one arithmetic-coded copy by jpegtran). Deterministic: same bytes on every run. Then for each file
it prints `name sha256(Image.open(p).convert('RGB') HWC bytes) sha256(pixel_values f32 LE)`
from Pillow 10.3.0 + transformers 4.37.2 CLIPImageProcessor (the defaults of
openai/clip-vit-large-patch14-336), which tests/preprocess_fixtures.rs pins.
"""
import hashlib
import os
import struct
import subprocess
import zlib

import numpy as np
import PIL
from PIL import Image
from transformers import CLIPImageProcessor

assert PIL.__version__ == "10.3.0", PIL.__version__
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "preprocess")
os.makedirs(OUT, exist_ok=True)
W, H = 37, 23
rng = np.random.default_rng(7)


def chunk(kind, data):
    c = struct.pack(">I", len(data)) + kind + data
    return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(name, rows, depth, ctype, extra=b""):
    """rows: list of packed row bytes (no filter byte)."""
    raw = b"".join(b"\x00" + r for r in rows)
    data = (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, depth, ctype, 0, 0, 0))
            + extra + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    open(os.path.join(OUT, name), "wb").write(data)


def pack_bits(vals, bits):
    out, acc, n = bytearray(), 0, 0
    for v in vals:
        acc = (acc << bits) | int(v)
        n += bits
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def u16rows(arr):
    return [arr[y].astype(">u2").tobytes() for y in range(H)]


# 16-bit gray: a mix of values below 256 (kept) and above (clipped to 255 by Pillow).
g16 = rng.integers(0, 65536, (H, W), dtype=np.uint32)
g16[:, ::3] = rng.integers(0, 256, (H, (W + 2) // 3))
write_png("gray16.png", u16rows(g16), 16, 0)
write_png("rgb16.png", u16rows(rng.integers(0, 65536, (H, W * 3))), 16, 2)
write_png("rgba16.png", u16rows(rng.integers(0, 65536, (H, W * 4))), 16, 6)
write_png("la16.png", u16rows(rng.integers(0, 65536, (H, W * 2))), 16, 4)
for bits in (1, 2, 4):
    vals = rng.integers(0, 1 << bits, (H, W))
    write_png(f"gray{bits}.png", [pack_bits(vals[y], bits) for y in range(H)], bits, 0)
# 4-bit palette with only 5 PLTE entries: indices 5..15 are outside the palette.
vals = rng.integers(0, 16, (H, W))
plte = bytes(rng.integers(0, 256, 15, dtype=np.uint8))
write_png("p4_short_palette.png", [pack_bits(vals[y], 4) for y in range(H)], 4, 3,
          chunk(b"PLTE", plte))
vals = rng.integers(0, 256, (H, W), dtype=np.uint8)
plte = bytes(rng.integers(0, 256, 768, dtype=np.uint8))
write_png("p8_trns.png", [vals[y].tobytes() for y in range(H)], 8, 3,
          chunk(b"PLTE", plte) + chunk(b"tRNS", bytes(range(0, 256, 2))))
write_png("gray8_trns.png", [vals[y].tobytes() for y in range(H)], 8, 0,
          chunk(b"tRNS", b"\x00\x10"))
rgba = rng.integers(0, 256, (H, W * 4), dtype=np.uint8)
write_png("rgba8.png", [rgba[y].tobytes() for y in range(H)], 8, 6)

# JPEGs from a smooth colour image (so chroma upsampling matters), odd size.
yy, xx = np.mgrid[0:H, 0:W]
base = np.stack([(xx * 7) % 256, (yy * 11) % 256, ((xx + yy) * 5) % 256], -1).astype(np.uint8)
noisy = np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
img = Image.fromarray(noisy, "RGB")
img.save(os.path.join(OUT, "q85_420.jpg"), quality=85, subsampling=2)
img.save(os.path.join(OUT, "q85_422.jpg"), quality=85, subsampling=1)
img.save(os.path.join(OUT, "q85_444_progressive.jpg"), quality=85, subsampling=0,
         progressive=True)
img.save(os.path.join(OUT, "q70_420_restart.jpg"), quality=70, subsampling=2,
         restart_marker_blocks=2)
img.convert("CMYK").save(os.path.join(OUT, "cmyk.jpg"), quality=90)
img.convert("L").save(os.path.join(OUT, "gray.jpg"), quality=90)
# Arithmetic-coded JPEG (Pillow's libjpeg-turbo decodes it): lossless transcode of
# q85_420.jpg with libjpeg-turbo's jpegtran (apt-get install libjpeg-turbo-progs).
subprocess.run(["jpegtran", "-arithmetic", "-outfile", os.path.join(OUT, "arith_420.jpg"),
                os.path.join(OUT, "q85_420.jpg")], check=True)

# The real CLIP-336 preprocessor config (mean/std/rescale/BICUBIC are the defaults).
proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
for name in sorted(os.listdir(OUT)):
    rgb = Image.open(os.path.join(OUT, name)).convert("RGB")
    pv = proc.preprocess(rgb, return_tensors="np")["pixel_values"][0].astype("<f4")
    print(name, hashlib.sha256(np.asarray(rgb).tobytes()).hexdigest(),
          hashlib.sha256(pv.tobytes()).hexdigest())

# transformers' center_crop zero-pads an image smaller than the crop; with an odd gap it
# returns one row/column short (printed shape), which the Rust side refuses.
for short in (300, 301):
    p = CLIPImageProcessor(size={"shortest_edge": short},
                           crop_size={"height": 336, "width": 336})
    rgb = Image.open(os.path.join(OUT, "q85_420.jpg")).convert("RGB")
    pv = p.preprocess(rgb, return_tensors="np")["pixel_values"][0].astype("<f4")
    print(f"shortest_edge={short} q85_420.jpg", pv.shape, hashlib.sha256(pv.tobytes()).hexdigest())
