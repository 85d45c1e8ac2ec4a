#!/usr/bin/env python3
"""Makes the fixtures of tests/data/convert/ (README.md there says what each holds):

    python3 scripts/make_convert_fixtures.py tests/data/convert

- many_pairs.json: 400 items with 1 to 9 instruction/response pairs each, pair keys of
  varied names and orders, written here from a fixed seed (random.Random(1), its own
  generator: the conversion's random.seed(0) is the reference script's);
- varied.llava.json and many_pairs.llava.json: what scripts/convert_reference.py (VLGuard's
  convert_to_llava_format.py) writes for varied.json (hand-written) and many_pairs.json.
"""
import json
import os
import random
import subprocess
import sys

out = sys.argv[1]
gen = random.Random(1)
items = []
for n in range(400):
    pairs = []
    for p in range(gen.randint(1, 9)):
        key = gen.choice(["instruction", "safe_instruction", "unsafe_instruction", "q"])
        pair = {key: f"question {n}.{p} \u00e9\U0001F600", "response": f"answer {n}.{p}"}
        if gen.random() < 0.3:
            pair = dict(reversed(list(pair.items())))
        pairs.append(pair)
    if len(pairs) == 1:
        pairs = [{"instruction": f"only question {n}", "response": f"only answer {n}"}]
    items.append({"id": f"item_{n}", "image": f"cat/{n}.png", "safe": gen.random() < 0.5,
                  "instr-resp": pairs})
with open(os.path.join(out, "many_pairs.json"), "w") as f:
    f.write("[\n" + ",\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n]\n")

here = os.path.dirname(os.path.abspath(__file__))
for name in ["varied", "many_pairs"]:
    subprocess.run([sys.executable, os.path.join(here, "convert_reference.py"),
                    os.path.join(out, f"{name}.json"),
                    os.path.join(out, f"{name}.llava.json")], check=True)
