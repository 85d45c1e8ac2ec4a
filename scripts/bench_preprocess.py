#!/usr/bin/env python3
"""Throughput of the reference preprocessing (benchmark only, not used by the project).

    pip install transformers==4.37.2 pillow==10.3.0 numpy     # no torch needed
    python3 scripts/bench_preprocess.py [REPEATS]              # default 10

Runs exactly what the reference does per image, `CLIPImageProcessor.preprocess(
Image.open(path).convert('RGB'))` (one process, one image at a time, as in
VLGuard_eval.py), over the 20 golden images REPEATS times and prints images/s.
Compare with `cargo run --release --example bench_preprocess -- REPEATS 2`.
"""
import json
import os
import sys
import time

from PIL import Image
from transformers import CLIPImageProcessor

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 10
# The golden bundle: its manifest in tests/data, its images and checkpoint in the repo's
# data/mini and models/demo-src (tests/data/README.md).
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
manifest = os.path.join(root, "tests", "data", "golden-dev", "manifest.json")
images = [os.path.join(root, "data", "mini", "test", rel)
          for rel in json.load(open(manifest))["image_notes"]]
proc = CLIPImageProcessor.from_pretrained(
    os.path.join(root, "models", "demo-src", "clip-vit-tiny-patch14-336"))


def one(path):
    return proc.preprocess(Image.open(path).convert("RGB"), return_tensors="np")["pixel_values"]


for p in images:  # warm-up (imports, page cache)
    one(p)
t = time.perf_counter()
for _ in range(repeats):
    for p in images:
        one(p)
secs = time.perf_counter() - t
n = repeats * len(images)
print(f"python CLIPImageProcessor: {n} images ({len(images)} x {repeats}) in {secs:.3f} s "
      f"= {n / secs:.1f} images/s")
