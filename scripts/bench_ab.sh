#!/usr/bin/env bash
# Two builds of vlguard-ort on the same model folders, runs alternated (A, B, A, B, ...):
# tokens/s, per-stage seconds, loop overhead and step calls from each run's manifest.
#   scripts/bench_ab.sh A_BIN B_BIN [REPS]
# e.g. a binary built from an older commit against target/release/vlguard-ort. Each build
# exports its own copy of the models (the demo model, fp32 fused, and bench-100m, random
# weights, fp32 plain and fused) into target/bench_ab/{A,B}, so a build reads the manifest
# format it writes; the graphs themselves are the same bytes when the exporter is unchanged.
set -euo pipefail
a="${1:?usage: bench_ab.sh A_BIN B_BIN [REPS]}"
b="${2:?usage: bench_ab.sh A_BIN B_BIN [REPS]}"
reps="${3:-2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work=target/bench_ab
rm -rf "$work"; mkdir -p "$work/src/llava" "$work/src/clip"
cp models/bench-100m/config.json "$work/src/llava/"
cp models/bench-100m/clip/config.json "$work/src/clip/"
cp tests/data/llama2-tokenizer/tokenizer.model "$work/src/llava/"
export_models() { # bin dir
  local bin=$1 dir=$2
  for flavour in plain fused; do
    "$bin" export --checkpoint "$work/src/llava" --vision-tower "$work/src/clip" --out "$dir/100m-$flavour" \
      --dtype fp32 --decoder "$flavour" --random-weights --force >/dev/null
  done
  "$bin" export --checkpoint models/demo-src/llava-v1.5-tiny --vision-tower models/demo-src/clip-vit-tiny-patch14-336 \
    --out "$dir/demo-fused" --dtype fp32 --decoder fused --force >/dev/null
}
export_models "$a" "$work/A"
export_models "$b" "$work/B"
run() { # bin model args...
  local bin=$1 model=$2; shift 2
  local out="$work/out"; rm -rf "$out"
  "$bin" run --model "$model" --meta data/mini/test.json --images data/mini/test --out "$out" \
    --engine e --ep cpu --fresh "$@" >/dev/null 2>&1
  python3 - "$out" <<'PY'
import glob, json, sys
tot = dict(prefill=0, decode=0, tokens=0, loop=0, gen=0, steps=0)
for m in sorted(glob.glob(sys.argv[1] + "/*/e.run.json")):
    t = json.load(open(m))["timings"]
    gen = t["prefill_s"] + t["decode_s"] + t["embed_s"]
    tot["prefill"] += t["prefill_s"]; tot["decode"] += t["decode_s"]; tot["tokens"] += t["new_tokens"]
    tot["steps"] += t["decode_steps"]; tot["loop"] += t["loop_overhead_pct"] * gen / 100; tot["gen"] += gen
tps = tot["tokens"] / max(tot["prefill"] + tot["decode"], 1e-9)
print("%.1f\t%.2f\t%.2f\t%.1f%%\t%d" % (tps, tot["prefill"], tot["decode"], 100 * tot["loop"] / max(tot["gen"], 1e-9), tot["steps"]))
PY
}
short=(--subset unsafes --limit 4 --max-new-tokens 64)
configs=(
  "demo-fused-b4-continuous|demo-fused|--subset all --batch-size 4 --batching continuous"
  "100m-plain-b4-static|100m-plain|${short[*]} --batch-size 4 --batching static"
  "100m-fused-b4-static|100m-fused|${short[*]} --batch-size 4 --batching static"
  "100m-fused-b1-static|100m-fused|${short[*]} --batch-size 1 --batching static"
)
echo -e "config\tbuild\trep\ttok/s\tprefill_s\tdecode_s\tloop\tsteps"
for c in "${configs[@]}"; do
  IFS='|' read -r label model args <<<"$c"
  for ((rep = 1; rep <= reps; rep++)); do
    for which in A B; do
      bin=$a; [ "$which" = B ] && bin=$b
      # shellcheck disable=SC2086
      echo -e "$label\t$which\t$rep\t$(run "$bin" "$work/$which/$model" $args)"
    done
  done
done
