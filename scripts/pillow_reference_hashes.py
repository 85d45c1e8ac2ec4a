#!/usr/bin/env python3
"""Expected values for tests/preprocess_golden.rs, from the reference stack itself.

Run (development only; needs Pillow 10.3.0, numpy, transformers 4.37.2, no torch):
    pip install pillow==10.3.0 numpy transformers==4.37.2
    python3 scripts/pillow_reference_hashes.py [REPO_DIR]   # default: this checkout

The golden bundle's images and CLIP checkpoint are the repository's data/mini/test and
models/demo-src; its manifest (image order) is tests/data/golden-dev/manifest.json.

For each golden image (manifest.json image_notes order) it prints one line:
    image  W H  sha256(Image.open(p).convert('RGB') bytes, HWC)
           RW RH  sha256(resized+center-cropped uint8 HWC, as CLIPImageProcessor does it)
           sha256(CLIPImageProcessor pixel_values[0], float32 little-endian CHW)
"""
import hashlib
import json
import os
import sys

import numpy as np
import PIL
from PIL import Image
from transformers import CLIPImageProcessor
from transformers.image_transforms import center_crop, get_resize_output_image_size

assert PIL.__version__ == "10.3.0", PIL.__version__

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
manifest = json.load(open(os.path.join(root, "tests", "data", "golden-dev", "manifest.json")))
proc = CLIPImageProcessor.from_pretrained(
    os.path.join(root, "models", "demo-src", "clip-vit-tiny-patch14-336"))
short = proc.size["shortest_edge"]
crop = (proc.crop_size["height"], proc.crop_size["width"])


def sha(b):
    return hashlib.sha256(b).hexdigest()


for rel in manifest["image_notes"]:
    path = os.path.join(root, "data", "mini", "test", rel)
    rgb = Image.open(path).convert("RGB")
    arr = np.asarray(rgb)
    # The processor's resize: PIL resize to (long = int(short * long / short)), BICUBIC,
    # reducing_gap=None; then the processor's own center_crop.
    h, w = get_resize_output_image_size(arr, short, default_to_square=False)
    resized = rgb.resize((w, h), resample=proc.resample, reducing_gap=None)
    cropped = center_crop(np.asarray(resized), crop)
    pv = proc.preprocess(rgb, return_tensors="np")["pixel_values"][0]
    assert pv.dtype == np.float32 and pv.shape == (3,) + crop
    print(rel, rgb.width, rgb.height, sha(arr.tobytes()), w, h,
          sha(np.ascontiguousarray(cropped).tobytes()), sha(pv.astype("<f4").tobytes()))
