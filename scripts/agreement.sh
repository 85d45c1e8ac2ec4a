#!/usr/bin/env bash
# Agreement with the reference, every export flavour (numbers for the README; not a test).
#   scripts/agreement.sh [--batch-size N] [other `run` flags]
# Exports the bundled demo model (models/demo-src: the golden bundle `dev`'s checkpoint) as
# fp32/fp16 x plain/fused, runs all three subsets of the bundled mini test set (the bundle's
# 30 samples) on the CPU, and counts the answers byte-identical to the reference's
# (tests/data/golden-dev/reference/{subset}.json, written by the original VLGuard_eval.py code
# path in fp32). Needs jq.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
command -v jq >/dev/null || { echo "agreement.sh needs jq (apt-get install jq)" >&2; exit 1; }
SETUP_SKIP_BUILD=1 scripts/setup.sh >/dev/null
cargo build --release --locked -q
bin="${CARGO_TARGET_DIR:-$root/target}/release/vlguard-ort"
work="${AGREEMENT_DIR:-$root/target/agreement}"
mkdir -p "$work"
run_flags=("$@")
[ ${#run_flags[@]} -gt 0 ] || run_flags=(--batch-size 1)
subsets=(unsafes safe_unsafes safe_safes)

notes=()
echo -e "dtype\tdecoder\tidentical"
for dtype in fp32 fp16; do
  for flavour in plain fused; do
    model="$work/demo-$dtype-$flavour"
    "$bin" export --checkpoint models/demo-src/llava-v1.5-tiny \
      --vision-tower models/demo-src/clip-vit-tiny-patch14-336 \
      --out "$model" --dtype "$dtype" --decoder "$flavour" --force >/dev/null
    out="$work/results-$dtype-$flavour"
    "$bin" run --model "$model" --subset all --meta data/mini/test.json --images data/mini/test \
      --out "$out" --engine demo --ep cpu --fresh "${run_flags[@]}" >/dev/null 2>&1 ||
      { echo "$dtype $flavour: run failed (see $out)" >&2; exit 1; }
    same=0 total=0 departures=()
    for s in "${subsets[@]}"; do
      # One line per answer: identical or not, and where the first differing character is.
      while IFS=$'\t' read -r key verdict at; do
        total=$((total + 1))
        if [ "$verdict" = same ]; then same=$((same + 1)); else departures+=("$s/$key@$at"); fi
      done < <(jq -r --slurpfile ref "tests/data/golden-dev/reference/$s.json" '
        . as $ours | $ref[0] | to_entries[] | .key as $k | .value as $want | ($ours[$k] // "") as $got |
        if $got == $want then [$k, "same", ""]
        else [$k, "differs",
          ([range(0; [($got|length), ($want|length)] | min)] | map(select($got[.:.+1] != $want[.:.+1]))
           | first // ([($got|length), ($want|length)] | min) | tostring)]
        end | @tsv' "$out/$s/demo.json")
    done
    echo -e "$dtype\t$flavour\t$same/$total"
    for d in "${departures[@]}"; do notes+=("$dtype $flavour departs: $d"); done
  done
done
# Where each differing answer first leaves the reference's text (subset/image@character).
if [ ${#notes[@]} -gt 0 ]; then printf '%s\n' "${notes[@]}"; fi
