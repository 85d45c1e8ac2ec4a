#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for scripts/device_check.sh on a GPU machine that has no
# network and accepts at most ~64 MiB per transfer: the three onnxruntime-gpu 1.31.1
# libraries it needs, zstd-compressed and split into parts that each fit one transfer
# (p1..p4), a zstd binary with its libraries (in p2), the stripped release binary, the
# Llama-2 tokenizer.model and the real test.json (for the 7B shape and its prompts).
#   scripts/prepare_device_carry.sh
# Then send p1..p4 one per call, each copied to /tmp/chunks there, and run the check with
# .gpu/bin, .gpu/tokenizer.model and .gpu/test.json carried (see README "GPU").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -f data/VLGuard/test.json ] || { echo "prepare_device_carry.sh: data/VLGuard/test.json is missing: run vlguard-ort fetch dataset first" >&2; exit 1; }
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" onnxruntime-gpu==1.31.1
(cd "$tmp" && python3 -m zipfile -e onnxruntime_gpu-*.whl x)
capi="$tmp/x/onnxruntime/capi"
mkdir -p .gpu/p1 .gpu/p2 .gpu/p3 .gpu/p4 .gpu/bin
zstd -19 -T0 --long=27 -q -c "$capi/libonnxruntime_providers_cuda.so" > "$tmp/cuda.zst"
split -b 47000000 -d "$tmp/cuda.zst" "$tmp/cuda.zst.part"
mv "$tmp/cuda.zst.part00" .gpu/p1/; mv "$tmp/cuda.zst.part01" .gpu/p2/
mv "$tmp/cuda.zst.part02" .gpu/p3/; mv "$tmp/cuda.zst.part03" .gpu/p4/
zstd -19 -q -f "$capi/libonnxruntime.so.1.31.1" -o .gpu/p4/libort.zst
cp "$capi/libonnxruntime_providers_shared.so" .gpu/p4/
cp "$(command -v zstd)" .gpu/p2/
for lib in $(ldd "$(command -v zstd)" | awk '/=>/ {print $3}' | grep -v 'libc.so'); do cp -L "$lib" .gpu/p2/; done
cargo build --release --locked -q
strip -o .gpu/bin/vlguard-ort target/release/vlguard-ort
cp tests/data/llama2-tokenizer/tokenizer.model data/VLGuard/test.json .gpu/
du -sh .gpu/*
