#!/usr/bin/env bash
# Sets up vlguard-ort on this machine: the ONNX Runtime shared library from the official
# PyPI wheel (kept in .ort/lib, git-ignored, found by the binary with no environment
# variable) and the release binary. Safe and fast to re-run.
#
#   scripts/setup.sh          CPU: onnxruntime==1.31.1
#   scripts/setup.sh --gpu    CUDA + TensorRT: onnxruntime-gpu==1.31.1 and the CUDA 13 /
#                             cuDNN 9 runtime wheels (TensorRT 10 must come from NVIDIA)
set -euo pipefail
ORT_VERSION=1.31.1
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
gpu=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

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

if [ "${SETUP_SKIP_BUILD:-0}" = 1 ]; then exit 0; fi
echo "==> building the release binary"
cargo build --release --locked
echo "==> ready: $root/target/release/vlguard-ort"
