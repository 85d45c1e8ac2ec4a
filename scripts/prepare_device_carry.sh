#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for scripts/device_check.sh on a GPU machine that has no
# network and takes at most 64 MiB per call (tracked + untracked-not-ignored files +
# carried paths), and writes the calls to make as .gpu/plan.json (README "GPU"):
#   scripts/prepare_device_carry.sh [--keep-sm 90]
# What travels, zstd -19 --long=27: onnxruntime-gpu 1.31.1's CUDA provider with the cubins
# of every other architecture zeroed in place (scripts/strip_fatbin.py: 284 MB -> ~52 MB),
# libonnxruntime.so, the providers_shared / providers_tensorrt libraries, the stripped
# release binary, a zstd binary with its libraries, the Llama-2 tokenizer.model, the real
# test.json, SHA256SUMS of every part and ASSEMBLED.sha256 of the reassembled provider.
# The parts are packed into the fewest calls whose tree + carry stays under 60 MiB: the
# first call empties /tmp/chunks there, each call copies its folder .gpu/cN into it and
# lists what it holds, the last runs the check, which verifies every sha256 and says
# "COLD" (exit 3) when the machine was given back in between: then start over at call 1.
# .gpu/plan-fallback.json: the same with the whole CUDA provider (zstd -12), for when the check says
# CUDA-PROVIDER-REJECTED (exit 4). Downloads and compressions are kept in .gpu/cache.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
keep_sm=90
[ "${1:-}" = --keep-sm ] && keep_sm="$2"
[ -f data/VLGuard/test.json ] || { echo "prepare_device_carry.sh: data/VLGuard/test.json is missing: run vlguard-ort fetch dataset first" >&2; exit 1; }
git check-ignore -q .gpu/x || { echo "prepare_device_carry.sh: .gpu/ is not git-ignored (see .gitignore)" >&2; exit 1; }
for tool in zstd python3 sha256sum; do command -v "$tool" >/dev/null || { echo "prepare_device_carry.sh: needs $tool" >&2; exit 1; }; done
cache=.gpu/cache
mkdir -p "$cache"
rm -rf .gpu/c[0-9]* .gpu/f[0-9]* .gpu/stage

# 1. The wheel's libraries.
if [ ! -f "$cache/libonnxruntime_providers_cuda.so" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$cache" onnxruntime-gpu==1.31.1
  python3 - "$cache" <<'PY'
import glob, os, sys, zipfile
cache = sys.argv[1]
with zipfile.ZipFile(glob.glob(os.path.join(cache, "onnxruntime_gpu-1.31.1-*.whl"))[0]) as z:
    for name in ("libonnxruntime.so.1.31.1", "libonnxruntime_providers_cuda.so",
                 "libonnxruntime_providers_shared.so", "libonnxruntime_providers_tensorrt.so"):
        with open(os.path.join(cache, name), "wb") as f:
            f.write(z.read("onnxruntime/capi/" + name))
PY
  rm -f "$cache"/onnxruntime_gpu-*.whl
fi
squeeze() { # level in out: zstd --long=27, once
  [ -f "$3" ] && ! [ "$2" -nt "$3" ] && return 0
  zstd "-$1" -T0 --long=27 -q -f "$2" -o "$3.tmp" && mv "$3.tmp" "$3"
}
if [ ! -f "$cache/cuda-sm$keep_sm.so" ]; then
  cp "$cache/libonnxruntime_providers_cuda.so" "$cache/cuda-sm$keep_sm.so.tmp"
  python3 scripts/strip_fatbin.py "$cache/cuda-sm$keep_sm.so.tmp" --keep-sm "$keep_sm"
  mv "$cache/cuda-sm$keep_sm.so.tmp" "$cache/cuda-sm$keep_sm.so"
fi
squeeze 19 "$cache/cuda-sm$keep_sm.so" "$cache/cuda.zst"
# The fallback at level 12: -19 takes minutes more on 218 MB of cubins for a few percent.
squeeze 12 "$cache/libonnxruntime_providers_cuda.so" "$cache/cudafull.zst"
squeeze 19 "$cache/libonnxruntime.so.1.31.1" "$cache/libort.zst"

# 2. The files every final call carries.
common=.gpu/stage/common
mkdir -p "$common"
cargo build --release --locked -q
strip -o "$cache/vlguard-ort" target/release/vlguard-ort
zstd -19 -T0 -q -f "$cache/vlguard-ort" -o "$common/vlguard-ort.zst"
cp "$cache/libort.zst" "$cache/libonnxruntime_providers_shared.so" "$cache/libonnxruntime_providers_tensorrt.so" "$common/"
cp tests/data/llama2-tokenizer/tokenizer.model data/VLGuard/test.json "$common/"
cp "$(command -v zstd)" "$common/zstd"
for lib in $(ldd "$(command -v zstd)" | awk '/=>/ {print $3}' | grep -v -e 'libc\.so' -e 'libm\.so'); do cp -L "$lib" "$common/"; done

# 3. What travels anyway: tracked + untracked-not-ignored files (shared/ included).
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
limit=$(( 60 * 1024 * 1024 ))
room=$(( limit - tree - 256 * 1024 ))  # 256 KiB for the sums and slack
echo "tree that travels with every call: $(( tree / 1024 )) KiB; room for carried parts: $(( room / 1024 )) KiB per call"
[ "$room" -gt $(( 8 * 1024 * 1024 )) ] || { echo "prepare_device_carry.sh: the tree leaves no room to carry parts" >&2; exit 1; }

python3 scripts/device_plan.py --cache "$cache" --common "$common" --room "$room" --tree "$tree"
rm -rf .gpu/stage
du -sh .gpu/c* .gpu/f* 2>/dev/null
