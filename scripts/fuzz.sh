#!/usr/bin/env bash
# Runs the fuzz tests of tests/fuzz_readers.rs long: ITERS executions per reader (default
# 200000) instead of the few thousand `cargo test` runs. Optimised, but with overflow
# checks and debug assertions kept (an overflow is a finding), in a target folder of its
# own (target/fuzz) so the normal builds are left alone. Each reader prints its executions,
# accepted inputs, peak heap and findings; a finding's input is saved under
# target/fuzz/tmp/fuzz-findings/.
#
#   scripts/fuzz.sh                 # every reader, 200000 executions each, a new seed
#   scripts/fuzz.sh 50000 png jpeg  # two readers (cargo test name filters)
#   VLGUARD_FUZZ_SEED=1234 scripts/fuzz.sh   # repeat a run
#   FUZZ_THREADS=4 scripts/fuzz.sh  # readers side by side (default 2)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
iters="${1:-200000}"
if [ "$#" -gt 0 ]; then shift; fi
seed="${VLGUARD_FUZZ_SEED:-$(date +%s)}"
echo "==> fuzzing with VLGUARD_FUZZ_ITERS=$iters VLGUARD_FUZZ_SEED=$seed"
CARGO_TARGET_DIR="$root/target/fuzz" \
CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true \
VLGUARD_FUZZ_ITERS="$iters" \
VLGUARD_FUZZ_SEED="$seed" \
  cargo test --release --locked --test fuzz_readers -- \
  --nocapture --test-threads "${FUZZ_THREADS:-2}" "$@"
