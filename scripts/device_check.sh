#!/usr/bin/env bash
# One prepared check for a machine with one NVIDIA GPU and no network (README "GPU"), and
# its rehearsal on a machine without one.
#   scripts/device_check.sh --parts /tmp/chunks [--budget-s 540] [--full-library]
#   scripts/device_check.sh --rehearse [--parts DIR]
# GPU: the parts in --parts DIR (made by scripts/prepare_device_carry.sh and sent by the
# calls of .gpu/plan.json) are checked against their SHA256SUMS and reassembled: the
# onnxruntime-gpu 1.31.1 libraries (the CUDA provider with only its sm_90 code, or the
# whole one with --full-library), the release binary, the Llama-2 tokenizer.model and the
# real test.json; CUDA 13 / cuDNN 9 come from the machine's PyTorch wheels.
# --rehearse: the same stages, in the same order, with the same output layout, on the CPU
# provider: the golden dev bundle as on the GPU, a small random-weight model of the 7B's
# structure in place of the 7B, 8 new tokens in place of 256, batches of at most 4, 2 to
# 6 prompts per run, finished rows kept in the batch
# and busy slots refilled through the device-copy seam on host memory
# (--keep-finished-rows), peak RSS in place of peak GPU memory. With --parts it also
# reassembles the parts and runs the carried binary.
# Stages, most decisive first; a failing stage is named and the next one still runs:
#   libraries, golden fp32-plain / fp16-plain / fp16-fused (agreement N/30 with the
#   reference, each departure with its logit margin), 7B fused export, fused continuous at
#   the largest batch that fits over the whole set, fused continuous at 32, plain export +
#   plain static at 32; then the budget check; then fused static at 32 and TensorRT.
# Output ($OUT, else target/device-{out,rehearsal}): check.log, summary.txt, stages.tsv,
# details.tar.gz (run logs, manifests, journals): 4 files, no folder. Exit 0 when every
# stage passed, 1 otherwise; 3 when parts are missing (the machine went cold: start the
# plan over); 4 when the CUDA provider did not load (run .gpu/plan-fallback.json).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
rehearse=0 parts="" budget="" full=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) rehearse=1; shift ;;
    --parts) parts="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    --full-library) full=1; shift ;;
    *) echo "device_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$rehearse" = 1 ]; then
  mode=rehearsal ep=cpu new_tokens=8 batch_cap=4 budget="${budget:-900}"
  out="${OUT:-$root/target/device-rehearsal}" work="$root/target/device-rehearsal-work"
  replay=(--keep-finished-rows)
else
  mode=gpu ep=cuda new_tokens=256 batch_cap=256 budget="${budget:-540}"
  out="${OUT:-$root/target/device-out}" work=/tmp/vlguard-device
  replay=()
fi
rm -rf "$work"; mkdir -p "$work/logs" "$out"
exec > >(tee "$out/check.log") 2>&1
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
stages="$out/stages.tsv"; printf 'stage\tstatus\tseconds\tgpu_estimate_s\n' > "$stages"
failed=()
# stage NAME GPU_ESTIMATE_S FUNCTION ARGS...: runs it, times it, names a failure, goes on.
# The estimates are H100 seconds from the last GPU run (README "GPU" table: 7B export 47 s,
# plain decoder 935 tok/s at batch 32, ~15 s to load the 7B) with the fused stages capped.
stage() {
  local name=$1 est=$2; shift 2
  echo "== $name"
  local t0 rc; t0=$(date +%s)
  # DEVICE_CHECK_FAIL=NAME fails that stage on purpose (rehearses a broken stage).
  if [ "${DEVICE_CHECK_FAIL:-}" = "$name" ]; then echo "  failure injected (DEVICE_CHECK_FAIL)"; rc=1
  else "$@"; rc=$?; fi
  local dt=$(( $(date +%s) - t0 )) status=ok
  if [ "$rc" != 0 ]; then status="FAILED($rc)"; failed+=("$name"); echo "!! stage $name FAILED (exit $rc); going on"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$dt" "$est" >> "$stages"
}
skip() { printf '%s\t%s\t0\t%s\n' "$1" "$2" "$3" >> "$stages"; echo "== $1: $2"; }

source "$root/scripts/device_check_lib.sh"

echo "device check ($mode): budget ${budget} s, ep $ep, $(date -u +%FT%TZ)"
stage libraries 10 setup_libraries
if [ -z "${bin:-}" ]; then echo "no binary: nothing else can run"; summarize; exit 1; fi
for variant in fp32-plain fp16-plain fp16-fused; do
  stage "golden-$variant" 15 golden "$variant"
done
# A CUDA provider that does not load fails every stage after it: stop and say which plan
# to run instead.
if [ "$mode" = gpu ] && grep -qs "CUDAExecutionProvider" "$work"/logs/golden-fp32-plain-cuda.log \
   && [[ " ${failed[*]} " == *" golden-fp32-plain "* ]]; then
  if [ "$full" = 0 ]; then echo "CUDA-PROVIDER-REJECTED: the sm_90-only library did not load: run .gpu/plan-fallback.json"
  else echo "CUDA-PROVIDER-REJECTED: the full library did not load either (see check.log)"; fi
  summarize; exit 4
fi
stage 7b-export-fused 50 export_7b fused
# Whole set at the largest batch: capped so that the stages after it keep their time.
stage 7b-fused-max-continuous-all 200 run_7b fused max continuous all 135
stage 7b-fused-b32-continuous 45 run_7b fused 32 continuous 128 0
stage 7b-export-plain 50 export_7b plain
stage 7b-plain-b32-static 40 run_7b plain 32 static 64 0
# Budget check: the slower, less decisive stages run only if their estimate fits.
if [ "$(left)" -ge 40 ]; then stage 7b-fused-b32-static 40 run_7b fused 32 static 64 0
else skip 7b-fused-b32-static "skipped (budget: $(left) s left, needs ~40 s)" 40; fi
if ! trt_found; then
  skip tensorrt "not run: no libnvinfer.so.10 on this machine (TensorRT is not carried: not on PyPI)" 60
elif [ "$(left)" -lt 60 ]; then skip tensorrt "skipped (budget: $(left) s left, needs ~60 s)" 60
else stage tensorrt 60 tensorrt_step; fi
summarize
[ "${#failed[@]}" = 0 ]
