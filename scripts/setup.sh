#!/usr/bin/env bash
# Sets up vlguard-ort on this machine: nasm (for libjpeg-turbo's SIMD JPEG decoding; from
# apt when run as root), the ONNX Runtime shared library from the official PyPI wheel
# (kept in .ort/lib, git-ignored, found by the binary with no environment variable) and
# the release binary. Safe and fast to re-run. It fetches with pip (so pip's own settings,
# mirrors and proxies apply) into the checkout's .ort, which has the layout of the folder
# `vlguard-ort setup` fills for an installed binary (lib/, gpu-site/).
#
#   scripts/setup.sh          CPU: onnxruntime==1.31.1
#   scripts/setup.sh --gpu    CUDA + TensorRT: onnxruntime-gpu==1.31.1 and the CUDA 13 /
#                             cuDNN 9 runtime wheels
#   scripts/setup.sh --gpu --tensorrt
#                             and TensorRT 10 from NVIDIA's own index (pypi.nvidia.com),
#                             where it is reachable; otherwise it says what to do
set -euo pipefail
ORT_VERSION=1.31.1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
gpu=0
tensorrt=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --tensorrt) tensorrt=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if [ "$tensorrt" = 1 ] && [ "$gpu" = 0 ]; then
  echo "setup.sh: --tensorrt goes with --gpu (the TensorRT provider is in onnxruntime-gpu)" >&2
  exit 2
fi

# JPEG decoding (mozjpeg-sys, libjpeg-turbo) assembles its SIMD code with nasm when nasm is
# on PATH as its build script runs; without it the C fallback is built: identical pixels,
# about 2x slower decoding. Cargo does not rerun that build script when nasm appears later,
# so a build made without nasm is rebuilt (that crate only) once nasm is there.
if ! command -v nasm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing nasm (SIMD JPEG decoding)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nasm >/dev/null) \
    || echo "setup.sh: warning: apt-get could not install nasm" >&2
fi
if command -v nasm >/dev/null 2>&1; then
  target_dir="${CARGO_TARGET_DIR:-$root/target}"
  for profile in release debug; do
    if grep -qs "NASM not installed" "$target_dir/$profile"/build/mozjpeg-sys-*/output; then
      echo "==> rebuilding mozjpeg-sys ($profile) with nasm"
      if [ "$profile" = release ]; then cargo clean --quiet -p mozjpeg-sys --release; else cargo clean --quiet -p mozjpeg-sys; fi
    fi
  done
else
  echo "setup.sh: warning: nasm is not installed (e.g. apt-get install nasm): JPEG decoding will use" \
    "libjpeg-turbo's C code, about 2x slower than its SIMD code (same pixels)" >&2
fi

lib_dir="$root/.ort/lib"
wheel_dir="$root/.ort/wheels"
mkdir -p "$lib_dir" "$wheel_dir"
package=onnxruntime
[ "$gpu" = 1 ] && package=onnxruntime-gpu
stamp="$lib_dir/.installed-$package-$ORT_VERSION"

if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || { echo "setup.sh: python3 (for pip) is needed to fetch the ONNX Runtime wheel" >&2; exit 1; }
  echo "==> fetching $package==$ORT_VERSION from PyPI"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheel_dir" "$package==$ORT_VERSION"
  wheel=$(ls "$wheel_dir"/"${package//-/_}"-"$ORT_VERSION"-*.whl | head -n 1)
  rm -f "$lib_dir"/libonnxruntime*.so* "$lib_dir"/.installed-*
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m zipfile -e "$wheel" "$tmp"
  cp "$tmp"/onnxruntime/capi/libonnxruntime*.so* "$lib_dir"/
  touch "$stamp"
fi
echo "==> ONNX Runtime: $(ls "$lib_dir"/libonnxruntime.so.* | head -n 1)"

if [ "$gpu" = 1 ]; then
  "$root/scripts/setup_gpu_runtime.sh" "$lib_dir"
fi
if [ "$tensorrt" = 1 ]; then
  "$root/scripts/setup_tensorrt.sh" "$root/.ort/gpu-site"
fi

if [ "${SETUP_SKIP_BUILD:-0}" = 1 ]; then exit 0; fi
echo "==> building the release binary"
cargo build --release --locked
echo "==> ready: ${CARGO_TARGET_DIR:-$root/target}/release/vlguard-ort"
