#!/usr/bin/env bash
# LLaVA-1.5-13B shape with random weights (numbers for the README; not a test).
#   scripts/bench_13b.sh [LAYERS [SAMPLES]]
# The 13B config (liuhaotian/llava-v1.5-13b's: hidden 5120, 40 heads, MLP 13824, vocab 32000;
# CLIP-L/14-336 tower) with LAYERS decoder layers (default 40, the real count), exported fp16
# with the plain and the fused decoder (`--random-weights`), peak RSS and time of each export
# from /usr/bin/time; then SAMPLES (default 2) unsafes prompts of the bundled mini set answered
# on the CPU (8 new tokens each) with each decoder. A full 40-layer export writes 26 GB per
# decoder (one at a time: each model is deleted after its run), and the CPU run needs the
# fp32-widened weights in memory (ONNX Runtime's CPU kernels compute fp16 graphs in fp32):
# about 52 GB for 40 layers. Pass fewer layers on a smaller machine: the export streams one
# tensor at a time, so its peak RSS is the same for any layer count.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
layers="${1:-40}"
samples="${2:-2}"
cargo build --release --locked -q
bin="$root/target/release/vlguard-ort"
work="${BENCH_DIR:-$root/target/bench-13b}"
tok="$root/tests/data/llama2-tokenizer/tokenizer.model"
[ -f "$tok" ] || { echo "bench_13b.sh needs $tok" >&2; exit 1; }
ck="$work/src"
mkdir -p "$ck/llava" "$ck/clip"
sed -e 's/"hidden_size": 4096/"hidden_size": 5120/' \
    -e 's/"intermediate_size": 11008/"intermediate_size": 13824/' \
    -e 's/"num_attention_heads": 32/"num_attention_heads": 40/' \
    -e 's/"num_key_value_heads": 32/"num_key_value_heads": 40/' \
    -e "s/\"num_hidden_layers\": 32/\"num_hidden_layers\": $layers/" \
    -e 's/llava-v1.5-7b/llava-v1.5-13b/; s/7B/13B/g' \
    models/bench-7b/config.json >"$ck/llava/config.json"
cp models/bench-7b/clip/config.json "$ck/clip/"
cp "$tok" "$ck/llava/tokenizer.model"
for flavour in plain fused; do
  model="$work/bench-13b-$flavour"
  rm -rf "$model"
  /usr/bin/time -f "export $flavour: peak RSS %M KB, %e s wall" "$bin" export --checkpoint "$ck/llava" \
    --vision-tower "$ck/clip" --out "$model" --dtype fp16 --decoder "$flavour" --random-weights --force | tail -1
  du -sh "$model"
  out="$work/results-$flavour"
  /usr/bin/time -f "run $flavour: peak RSS %M KB, %e s wall" "$bin" run --model "$model" --subset unsafes \
    --meta data/mini/test.json --images data/mini/test --out "$out" --engine bench-13b --ep cpu \
    --limit "$samples" --max-new-tokens 8 --fresh | tail -1
  jq -c '{n_generated, new_tokens: .timings.new_tokens, tokens_per_s: .timings.tokens_per_s, prefill_s: .timings.prefill_s, decode_s: .timings.decode_s, peak_rss_mb}' \
    "$out/unsafes/bench-13b.run.json"
  rm -rf "$model"
done
