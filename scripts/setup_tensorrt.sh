#!/usr/bin/env bash
# Called by `scripts/setup.sh --gpu --tensorrt`: installs TensorRT 10 for CUDA 13
# (libnvinfer.so.10 with its plugin and ONNX-parser libraries) into .ort/gpu-site/tensorrt_libs,
# where vlguard-ort preloads it from before the TensorRT provider starts (no LD_LIBRARY_PATH).
#
# PyPI holds only a stub for it (`tensorrt-cu13-libs`, 15 kB, whose build step downloads the
# real wheel from NVIDIA's own index), so this asks NVIDIA's index, https://pypi.nvidia.com
# (or $TRT_INDEX_URL), directly. Where that index cannot be reached it changes nothing and
# says what to do instead: NVIDIA's containers ship TensorRT under the system library path
# (found with no flag), and an existing installation is used with --trt-lib-dir DIR or
# VLGUARD_TRT_LIB_DIR=DIR.
set -euo pipefail
site="$1"
index="${TRT_INDEX_URL:-https://pypi.nvidia.com}"
spec="${TRT_PACKAGE:-tensorrt-cu13-libs>=10,<11}"
libs="$site/tensorrt_libs"
if [ -e "$libs/libnvinfer.so.10" ]; then
  echo "==> TensorRT 10: $libs"
  exit 0
fi

advice() {
  cat >&2 <<EOF
setup.sh: TensorRT 10 was not installed: $1
  The CUDA provider does not need it (--ep cuda, and --ep auto falls back to CUDA). To use
  TensorRT, one of:
  - run where $index is reachable and rerun: scripts/setup.sh --gpu --tensorrt
  - download the wheel elsewhere (pip download --no-deps --extra-index-url $index
    '$spec'), copy it here and: python3 -m pip install --no-deps --target $site WHEEL
  - NVIDIA's containers (nvcr.io/nvidia/tensorrt, .../pytorch) ship TensorRT under the
    system library path: nothing to set there
  - an existing installation: run with --trt-lib-dir DIR (or VLGUARD_TRT_LIB_DIR=DIR), DIR
    holding libnvinfer.so.10 (pip puts it in site-packages/tensorrt_libs, NVIDIA's Debian
    packages in /usr/lib/x86_64-linux-gnu)
EOF
}

# Reachability first: pip would otherwise fall back to PyPI's stub, whose build step then
# fails after its own timeouts with a less helpful message.
if ! python3 - "$index" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/tensorrt-cu13-libs/", timeout=15)
except Exception as e:
    print(f"  {e}", file=sys.stderr)
    sys.exit(1)
PY
then
  advice "NVIDIA's package index $index cannot be reached from this machine"
  exit 1
fi

echo "==> installing $spec from $index into $site (about 1 GB)"
if ! python3 -m pip install --quiet --no-deps --only-binary=:all: --target "$site" \
  --index-url "$index" "$spec"; then
  advice "pip could not install '$spec' from $index"
  exit 1
fi
if [ ! -e "$libs/libnvinfer.so.10" ]; then
  found=$(find "$site" -name libnvinfer.so.10 -print -quit)
  advice "the wheel installed, but not as expected: libnvinfer.so.10 is at ${found:-no path under $site}"
  exit 1
fi
echo "==> TensorRT 10: $libs"
