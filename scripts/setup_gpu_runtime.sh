#!/usr/bin/env bash
# Called by `scripts/setup.sh --gpu`: installs the CUDA 13.0 and cuDNN 9 runtime libraries
# that onnxruntime-gpu 1.31.1's CUDA provider loads (libcudart/cublas/cublasLt/nvrtc/
# curand/cufft .so.13/.12/.10, libcudnn*.so.9) from NVIDIA's PyPI wheels into
# .ort/gpu-site, where vlguard-ort preloads them from (no LD_LIBRARY_PATH needed).
# TensorRT 10 (libnvinfer.so.10) is served only by NVIDIA's own package index:
# `scripts/setup.sh --gpu --tensorrt` installs it from there (scripts/setup_tensorrt.sh);
# an existing installation is found on the system library path or with --trt-lib-dir.
# Without it `--ep tensorrt` fails with a clear error and `--ep auto` falls back to CUDA.
set -euo pipefail
lib_dir="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
site="$root/.ort/gpu-site"
stamp="$site/.installed-cu13.0"
if [ ! -f "$stamp" ]; then
  # CUDA 13.0's components, the runtime the H100 driver 580 supports (`~=13.0` would take
  # newer 13.x runtimes); the same pins as `vlguard-ort setup --gpu` (src/setup/mod.rs).
  echo "==> installing the CUDA 13.0 / cuDNN 9 runtime wheels into $site"
  python3 -m pip install --quiet --upgrade --no-deps --only-binary=:all: --target "$site" \
    'nvidia-cuda-runtime==13.0.*' 'nvidia-cublas==13.0.*' 'nvidia-cuda-nvrtc==13.0.*' \
    'nvidia-curand==10.4.0.*' 'nvidia-cufft==12.0.0.*' 'nvidia-cudnn-cu13==9.*' 'nvidia-nvjitlink==13.0.*'
  touch "$stamp"
fi
missing=0
for f in libcudart.so.13 libcublasLt.so.13 libcublas.so.13 libnvrtc.so.13 libcurand.so.10 libcufft.so.12; do
  [ -e "$site/nvidia/cu13/lib/$f" ] || { echo "missing: $site/nvidia/cu13/lib/$f" >&2; missing=1; }
done
[ -e "$site/nvidia/cudnn/lib/libcudnn.so.9" ] || { echo "missing: $site/nvidia/cudnn/lib/libcudnn.so.9" >&2; missing=1; }
[ -e "$lib_dir/libonnxruntime_providers_cuda.so" ] || { echo "missing: $lib_dir/libonnxruntime_providers_cuda.so" >&2; missing=1; }
if [ -e "$site/tensorrt_libs/libnvinfer.so.10" ]; then
  echo "==> TensorRT 10 found in $site/tensorrt_libs: the TensorRT provider can load"
elif ldconfig -p 2>/dev/null | grep -q libnvinfer.so.10; then
  echo "==> TensorRT 10 found on the system library path: the TensorRT provider can load"
else
  echo "note: TensorRT 10 (libnvinfer.so.10) not found: --ep tensorrt will fail clearly, --ep auto uses CUDA" \
    "(scripts/setup.sh --gpu --tensorrt installs it where NVIDIA's index is reachable; --trt-lib-dir DIR uses one)" >&2
fi
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; else echo "note: no nvidia-smi: no NVIDIA driver on this machine" >&2; fi
[ "$missing" = 0 ] && echo "==> GPU runtime ready"
exit "$missing"
