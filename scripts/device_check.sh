#!/usr/bin/env bash
# One prepared check for a machine with one NVIDIA GPU and no network (see README "GPU").
#   scripts/device_check.sh [--ort-gpu DIR] [--budget-s 420]
# Needs: target/release/vlguard-ort built on an x86-64 Linux machine; the onnxruntime-gpu
# 1.31.1 libraries (libonnxruntime.so.1.31.1, libonnxruntime_providers_{shared,cuda}.so)
# in --ort-gpu DIR, or as the zstd parts in .gpu/ that the device tool carries (the
# wheel is 256 MB, over one transfer's limit); CUDA 13 + cuDNN 9 libraries (the nvidia-*
# wheels of a PyTorch cu13x install are found through python3); the Llama-2
# tokenizer.model at .gpu/tokenizer.model (or TOKENIZER_MODEL) for the 7B shape.
# Prints: GPU, golden-bundle agreement of CUDA runs (fp32 and fp16 plain decoder, fp16
# fused decoder) with the reference answers, then for a random-weight LLaVA-1.5-7B fp16
# with the plain and the fused decoder: export time, tokens/s, per-stage seconds, step
# calls and batch occupancy per batch size and batching mode, peak GPU memory; and what
# TensorRT said.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
ort_dir=""
budget=420
while [ $# -gt 0 ]; do
  case "$1" in
    --ort-gpu) ort_dir="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
out="${OUT:-$root/target/device-out}"
mkdir -p "$out"
work=/tmp/vlguard-device
mkdir -p "$work"
bin="${VLGUARD_BIN:-$root/target/release/vlguard-ort}"
[ -x "$bin" ] || [ ! -x "$root/.gpu/bin/vlguard-ort" ] || bin="$root/.gpu/bin/vlguard-ort"
[ -x "$bin" ] || { echo "missing $bin" >&2; exit 1; }

if [ -z "$ort_dir" ]; then
  ort_dir="$work/ort"
  mkdir -p "$ort_dir"
  zstd=zstd; command -v zstd >/dev/null || { zstd=.gpu/p2/zstd; export LD_LIBRARY_PATH=$root/.gpu/p2:${LD_LIBRARY_PATH:-}; }
  if [ ! -f "$ort_dir/libonnxruntime_providers_cuda.so" ]; then
    cat .gpu/p1/cuda.zst.part00 .gpu/p2/cuda.zst.part01 .gpu/p3/cuda.zst.part02 .gpu/p4/cuda.zst.part03 \
      | "$zstd" -d -q -o "$ort_dir/libonnxruntime_providers_cuda.so" || { echo "cannot assemble the CUDA provider" >&2; exit 1; }
    "$zstd" -d -q -f .gpu/p4/libort.zst -o "$ort_dir/libonnxruntime.so.1.31.1"
    cp .gpu/p4/libonnxruntime_providers_shared.so "$ort_dir/"
  fi
fi
export ORT_DYLIB_PATH="$ort_dir/libonnxruntime.so.1.31.1"
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
for d in "$site/nvidia/cu13/lib" "$site/nvidia/cuda_runtime/lib"; do [ -e "$d/libcudart.so.13" ] && export VLGUARD_CUDA_LIB_DIR="$d"; done
[ -d "$site/nvidia/cudnn/lib" ] && export VLGUARD_CUDNN_LIB_DIR="$site/nvidia/cudnn/lib"
export LD_LIBRARY_PATH="${VLGUARD_CUDA_LIB_DIR:-}:${VLGUARD_CUDNN_LIB_DIR:-}:${LD_LIBRARY_PATH:-}"
echo "== GPU"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "CUDA libs: ${VLGUARD_CUDA_LIB_DIR:-?}  cuDNN: ${VLGUARD_CUDNN_LIB_DIR:-?}"

gpu_mem_log() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$1" 2>/dev/null & echo $!; }
peak() { sort -n "$1" | tail -n 1; }
summary() { # manifest
  python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); t = m["timings"]
print(f'  {m["subset"]} batch={m["batch_size"]} {m.get("batching", "static")} samples={m["n_generated"]} new_tokens={t["new_tokens"]} '
      f'tok/s={t["tokens_per_s"]:.1f} preprocess={t["preprocess_s"]:.2f}s vision={t["vision_s"]:.2f}s '
      f'prefill={t["prefill_s"]:.2f}s decode={t["decode_s"]:.2f}s total={t["total_s"]:.2f}s '
      f'load={t["session_load_s"]:.1f}s loop_overhead={t["loop_overhead_pct"]:.2f}% '
      f'steps={t.get("decode_steps")} occupancy={t.get("step_occupancy_pct", 0):.1f}% '
      f'providers={m["execution_providers"]} tensorrt={m.get("tensorrt")}')
PY
}
agree() { # results dir
  python3 - "$1" "$root/tests/data/golden-dev/reference" <<'PY'
import json, sys, os
same = total = 0
diffs = []
for s in ["unsafes", "safe_unsafes", "safe_safes"]:
    ours = json.load(open(os.path.join(sys.argv[1], s, "dev.json")))
    ref = json.load(open(os.path.join(sys.argv[2], s + ".json")))
    margins = {}
    for line in open(os.path.join(sys.argv[1], s, "dev.journal.jsonl")).read().splitlines()[1:]:
        e = json.loads(line); margins[e["image"]] = e.get("min_margin")
    for k, v in ref.items():
        total += 1; same += ours.get(k) == v
        if ours.get(k) != v:
            a, b = ours.get(k) or "", v
            n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            diffs.append(f"{s}/{k}: first difference at char {n}, smallest logit margin of our run {margins.get(k)}")
print(f"  agreement with the reference answers: {same}/{total}")
for d in diffs: print("   ", d)
PY
}

echo "== golden bundle on CUDA (demo model = the dev bundle's checkpoint)"
for variant in fp32-plain fp16-plain fp16-fused; do
  dtype=${variant%-*}; flavour=${variant#*-}
  "$bin" export --checkpoint models/demo-src/llava-v1.5-tiny --vision-tower models/demo-src/clip-vit-tiny-patch14-336 \
    --out "$work/dev-$variant" --dtype "$dtype" --decoder "$flavour" --force > /dev/null || echo "export $variant failed"
  "$bin" run --model "$work/dev-$variant" --engine dev --subset all --meta data/mini/test.json --images data/mini/test \
    --out "$work/res-dev-$variant" --ep cuda --batch-size 8 --fresh > "$work/dev-$variant.log" 2>&1
  echo " $variant (exit $?):"; agree "$work/res-dev-$variant"; summary "$work/res-dev-$variant/unsafes/dev.run.json"
done
echo "== TensorRT provider"
"$bin" run --model "$work/dev-fp16-plain" --engine dev-trt --subset unsafes --limit 2 --meta data/mini/test.json \
  --images data/mini/test --out "$work/res-trt" --ep tensorrt --fresh 2>&1 | tail -n 2

echo "== random-weight LLaVA-1.5-7B, fp16"
if [ "$(left)" -lt 150 ]; then echo "  (budget reached: 7B skipped)"; cp "$work"/*.log "$out"/ 2>/dev/null; exit 0; fi
tok="${TOKENIZER_MODEL:-$root/.gpu/tokenizer.model}"
ck="$work/7b-src"; mkdir -p "$ck/llava" "$ck/clip"
cp models/bench-7b/config.json "$ck/llava/"; cp models/bench-7b/clip/config.json "$ck/clip/"; cp "$tok" "$ck/llava/tokenizer.model"
for flavour in fused plain; do
  t0=$(date +%s)
  timeout "$(( $(left) - 60 ))" "$bin" export --checkpoint "$ck/llava" --vision-tower "$ck/clip" \
    --out "$work/7b-$flavour" --dtype fp16 --decoder "$flavour" --random-weights --force > /dev/null
  echo "  export ($flavour decoder) took $(( $(date +%s) - t0 )) s; $(du -sh "$work/7b-$flavour" | cut -f1) on disk"
done
# The real test.json with the mini set's photos standing in for every image.
python3 - "$root/.gpu/test.json" "$root/data/mini/test" "$work/vlguard" <<'PY'
import json, os, shutil, sys
meta, src, dst = sys.argv[1:]
entries = json.load(open(meta)); imgs = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
for i, e in enumerate(entries):
    p = os.path.join(dst, "test", e["image"]); os.makedirs(os.path.dirname(p), exist_ok=True)
    if not os.path.exists(p): shutil.copy(imgs[i % len(imgs)], p)
shutil.copy(meta, os.path.join(dst, "test.json"))
PY
# flavour batch batching limit: the fused decoder first (the new path), then the plain
# decoder at batch 32 as the same-machine baseline.
for run in "fused 64 continuous 442" "plain 32 static 64" "fused 32 continuous 64" "fused 32 static 64" \
           "fused 8 continuous 16" "fused 1 static 4" "plain 64 static 128"; do
  read -r flavour bs batching limit <<<"$run"
  name="$flavour-b$bs-$batching"
  [ "$(left)" -gt 45 ] || { echo "  (budget reached: $name skipped)"; continue; }
  log="$work/mem-$name.log"; pid=$(gpu_mem_log "$log")
  timeout "$(left)" "$bin" run --model "$work/7b-$flavour" --engine "$name" --subset unsafes --limit "$limit" \
    --meta "$work/vlguard/test.json" --images "$work/vlguard/test" --out "$work/res-7b" --ep cuda \
    --batch-size "$bs" --batching "$batching" --fresh > "$work/7b-$name.log" 2>&1
  rc=$?; kill "$pid" 2>/dev/null
  echo " $name (exit $rc, peak GPU memory $(peak "$log") MiB):"
  [ -f "$work/res-7b/unsafes/$name.run.json" ] && summary "$work/res-7b/unsafes/$name.run.json" || tail -n 3 "$work/7b-$name.log"
done
cp "$work"/*.log "$out"/ 2>/dev/null
echo "== done in $(( $(date +%s) - start )) s"
