#!/usr/bin/env bash
# One command for a newcomer: set up ONNX Runtime and the release binary, export the
# bundled tiny LLaVA-1.5 checkpoint, and run the main job on the bundled mini test set:
#   vlguard-ort run --subset unsafes
# Extra arguments go to `vlguard-ort run` (e.g. --subset all --batch-size 4).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
bin="${CARGO_TARGET_DIR:-$root/target}/release/vlguard-ort"
if [ ! -f models/demo/manifest.json ]; then
  echo "==> exporting the demo model (models/demo-src -> models/demo)"
  "$bin" export --checkpoint models/demo-src/llava-v1.5-tiny \
    --vision-tower models/demo-src/clip-vit-tiny-patch14-336 --out models/demo --dtype fp32 --force
fi
subset_given=0
for arg in "$@"; do case "$arg" in --subset|--subset=*) subset_given=1 ;; esac; done
extra=()
[ "$subset_given" = 1 ] || extra+=(--subset unsafes)
echo "==> vlguard-ort run ${extra[*]} $*"
"$bin" run --model models/demo --meta data/mini/test.json --images data/mini/test \
  --out results --ep cpu "${extra[@]}" "$@"
