#!/usr/bin/env bash
# CPU benchmark (numbers for the README; not a test). Needs jq.
#   scripts/bench.sh [--threads N]
# 1. demo model (tiny, fp32; plain and fused decoder) on the mini test set: all subsets,
#    batch 1 and 4 (fused batch 4: static batches and continuous batching)
# 2. bench-100m (random weights, fp32 and fp16, plain and fused decoder): unsafes,
#    8 samples x 64 tokens, batch 1 and 4
# Prints per-stage seconds, tokens/s and the decoding loop's own overhead from each run
# manifest; preprocessing vs Hugging Face: scripts/bench_preprocess.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v jq >/dev/null || { echo "bench.sh needs jq (apt-get install jq)" >&2; exit 1; }
SETUP_SKIP_BUILD=1 scripts/setup.sh >/dev/null
cargo build --release --locked -q
bin="$root/target/release/vlguard-ort"
work="${BENCH_DIR:-$root/target/bench}"
mkdir -p "$work"
threads=("$@")

report() { # manifest label
  jq -r --arg name "$2" '[$name, .subset, .batch_size, (.batching // "static"), .n_generated, .timings.new_tokens,
    (.timings.tokens_per_s*10|round/10), (.timings.preprocess_s*100|round/100),
    (.timings.vision_s*100|round/100), (.timings.prefill_s*100|round/100),
    (.timings.decode_s*100|round/100), (.timings.total_s*100|round/100),
    (.timings.loop_overhead_pct*100|round/100), .timings.decode_steps,
    (.timings.step_occupancy_pct*10|round/10), (.peak_rss_mb|round)] | @tsv' "$1"
}
echo -e "model\tsubset\tbatch\tbatching\tsamples\tnew_tokens\ttok/s\tpreprocess_s\tvision_s\tprefill_s\tdecode_s\ttotal_s\tloop_overhead_%\tsteps\toccupancy_%\tpeak_rss_mb"

for flavour in plain fused; do
  "$bin" export --checkpoint models/demo-src/llava-v1.5-tiny --vision-tower models/demo-src/clip-vit-tiny-patch14-336 \
    --out "$work/demo-$flavour" --dtype fp32 --decoder "$flavour" --force >/dev/null
  runs=("1 static" "4 static")
  [ "$flavour" = fused ] && runs+=("4 continuous")
  for run in "${runs[@]}"; do
    read -r bs batching <<<"$run"
    out="$work/results-demo-$flavour-b$bs-$batching"
    "$bin" run --model "$work/demo-$flavour" --subset all --meta data/mini/test.json --images data/mini/test \
      --out "$out" --engine demo --ep cpu --batch-size "$bs" --batching "$batching" --fresh "${threads[@]}" >/dev/null 2>&1
    for s in unsafes safe_unsafes safe_safes; do report "$out/$s/demo.run.json" "demo-fp32-$flavour"; done
  done
done

tok="$root/tests/data/llama2-tokenizer/tokenizer.model"
[ -f "$tok" ] || { echo "bench-100m needs $tok" >&2; exit 1; }
ck="$work/bench-100m-src"
mkdir -p "$ck/llava" "$ck/clip"
cp models/bench-100m/config.json "$ck/llava/"
cp models/bench-100m/clip/config.json "$ck/clip/"
cp "$tok" "$ck/llava/tokenizer.model"
for flavour in plain fused; do
for dtype in fp32 fp16; do
  model="$work/bench-100m-$dtype-$flavour"
  /usr/bin/time -f "%M" -o "$work/export-$dtype-$flavour.rss" "$bin" export --checkpoint "$ck/llava" \
    --vision-tower "$ck/clip" --out "$model" --dtype "$dtype" --decoder "$flavour" --random-weights --force >/dev/null
  runs=("1 static" "4 static")
  [ "$flavour" = fused ] && runs+=("4 continuous")
  for run in "${runs[@]}"; do
    read -r bs batching <<<"$run"
    out="$work/results-100m-$dtype-$flavour-b$bs-$batching"
    "$bin" run --model "$model" --subset unsafes --limit 8 --max-new-tokens 64 \
      --meta data/mini/test.json --images data/mini/test --out "$out" \
      --engine bench --ep cpu --batch-size "$bs" --batching "$batching" --fresh "${threads[@]}" >/dev/null 2>&1
    report "$out/unsafes/bench.run.json" "100m-$dtype-$flavour"
  done
done
done
