#!/usr/bin/env python3
"""Packs the device check's parts into the fewest calls and writes the plans (called by
scripts/prepare_device_carry.sh, which documents the layout).

    scripts/device_plan.py --cache .gpu/cache --common DIR --room BYTES --tree BYTES

For each plan (.gpu/plan.json: the sm_90-only CUDA provider cuda.zst; .gpu/plan-fallback.json:
the whole one, cudafull.zst) the compressed provider is split so that every call carries
about the same bytes, the last call also carrying the common files (binary, libraries,
tokenizer, test.json, zstd). Call k's files go to .gpu/<c|f>k/; every call folder also
holds the plan's SHA256SUMS, so each call can say which parts /tmp/chunks holds so far.
Writes [{"carry": [...], "command": "..."}] per plan and prints each call's size.
"""
import argparse
import hashlib
import json
import math
import os
import shutil

LIMIT = 60 * 1024 * 1024  # what a call may carry with the tree (the tool allows 64 MiB)
COMMAND_LIMIT = 2000


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split(lib, sizes, dirs):
    """Writes lib's consecutive byte ranges of `sizes` as <name>.partNN into `dirs`."""
    names = []
    with open(lib, "rb") as f:
        for k, (size, d) in enumerate(zip(sizes, dirs)):
            name = f"{os.path.basename(lib)}.part{k:02d}"
            with open(os.path.join(d, name), "wb") as out:
                out.write(f.read(size))
            names.append(name)
    return names


def commands(prefix, n, sums, full):
    """The shell command of each call (run in the repository root there)."""
    out = []
    for k in range(1, n + 1):
        fresh = "rm -rf /tmp/chunks; " if k == 1 else ""
        copy = f"{fresh}mkdir -p /tmp/chunks && cp .gpu/{prefix}{k}/* /tmp/chunks/"
        if k < n:
            out.append(
                f"{copy} && cd /tmp/chunks && echo 'call {k} of {n}: parts held so far:' && "
                f"sha256sum -c --ignore-missing {sums} && echo \"still to come: $(for f in "
                f"$(cut -c67- {sums}); do [ -e $f ] || printf '%s ' $f; done)\"")
        else:
            # The fallback follows a failed first attempt inside the same 15 minutes of
            # device time: its check gets a shorter budget (stages past the budget check
            # are skipped first).
            flag = " --full-library --budget-s 400" if full else ""
            out.append(f"{copy} && scripts/device_check.sh --parts /tmp/chunks{flag}")
    return out


def plan(args, lib_name, prefix, sums_name, full, assembled):
    lib = os.path.join(args.cache, lib_name)
    common = sorted(os.listdir(args.common))
    common_bytes = sum(os.path.getsize(os.path.join(args.common, f)) for f in common)
    lib_bytes = os.path.getsize(lib)
    slack = 64 * 1024  # the sums files
    n = math.ceil((lib_bytes + common_bytes + slack) / args.room)
    share = math.ceil((lib_bytes + common_bytes) / n)
    sizes = [share] * (n - 1) + [lib_bytes - share * (n - 1)]
    if sizes[-1] < 0 or sizes[-1] + common_bytes + slack > args.room:
        sizes = [args.room - slack] * (n - 1) + [lib_bytes - (args.room - slack) * (n - 1)]
    dirs = [os.path.join(".gpu", f"{prefix}{k}") for k in range(1, n + 1)]
    for d in dirs:
        os.makedirs(d)
    parts = split(lib, sizes, dirs)
    for f in common:
        shutil.copy(os.path.join(args.common, f), dirs[-1])
    lines = [f"{sha256(os.path.join(d, p))}  {p}" for d, p in zip(dirs, parts)]
    lines += [f"{sha256(os.path.join(args.common, f))}  {f}" for f in common]
    for d in dirs:
        with open(os.path.join(d, sums_name), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(d, "ASSEMBLED.sha256"), "w") as f:
            f.write(assembled)
    calls = [{"carry": [d], "command": c} for d, c in zip(dirs, commands(prefix, n, sums_name, full))]
    report = []
    for k, (d, call) in enumerate(zip(dirs, calls), 1):
        carry = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        total = carry + args.tree
        assert total < LIMIT, f"{d}: {total} bytes travel"
        assert len(call["command"]) <= COMMAND_LIMIT, f"{d}: command of {len(call['command'])} chars"
        report.append(f"  call {k}: carry {d} {carry / 2**20:5.1f} MiB + tree {args.tree / 2**20:.1f} MiB"
                      f" = {total / 2**20:5.1f} MiB; command {len(call['command'])} chars")
    return calls, report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--common", required=True)
    ap.add_argument("--room", type=int, required=True)
    ap.add_argument("--tree", type=int, required=True)
    args = ap.parse_args()
    assembled = "".join(f"{sha256(os.path.join(args.cache, n))}  {n}\n" for n in ("cuda.zst", "cudafull.zst"))
    lines = []
    for out, lib, prefix, sums, full in (("plan.json", "cuda.zst", "c", "SHA256SUMS", False),
                                         ("plan-fallback.json", "cudafull.zst", "f", "SHA256SUMS.full", True)):
        calls, report = plan(args, lib, prefix, sums, full, assembled)
        with open(os.path.join(".gpu", out), "w") as f:
            json.dump(calls, f, indent=2)
            f.write("\n")
        lines += [f".gpu/{out}: {len(calls)} calls ({lib} {os.path.getsize(os.path.join(args.cache, lib)) / 1e6:.1f} MB)"] + report
    text = "\n".join(lines) + "\n"
    with open(os.path.join(".gpu", "plan.txt"), "w") as f:
        f.write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
