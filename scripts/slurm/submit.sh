#!/usr/bin/env bash
# Submits the evaluation as a Slurm job array of N GPU shards, then the merge as a job
# that starts only when every shard has succeeded (afterok).
#
#   scripts/slurm/submit.sh N MODEL_DIR [run flags ...]
#
# The engine name is the model folder's name unless the run flags give --engine; the
# merge uses the same --meta / --out / --limit as the shards when they are given.
# VLGUARD_SBATCH_FLAGS adds sbatch options to every job (e.g. a partition, or
# "--gres=none --cpus-per-task=1" on a cluster without GPUs for a dry run).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
n="${1:?usage: submit.sh N MODEL_DIR [run flags ...]}"
model="${2:?usage: submit.sh N MODEL_DIR [run flags ...]}"
shift 2
engine="$(basename "$(cd "$model" && pwd)")"
merge_flags=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --engine) engine="${args[$((i + 1))]}" ;;
    --meta | --out | --limit) merge_flags+=("${args[$i]}" "${args[$((i + 1))]}") ;;
  esac
done
bin="${VLGUARD_BIN:-target/release/vlguard-ort}"
read -r -a extra <<<"${VLGUARD_SBATCH_FLAGS:-}"
array=$(sbatch --parsable "${extra[@]}" --array="0-$((n - 1))" "$here/vlguard-array.sbatch" "$model" "$@")
echo "shards: job array $array ($n tasks)"
merge=$(sbatch --parsable "${extra[@]}" --dependency="afterok:${array%%;*}" --job-name=vlguard-merge \
  --output=vlguard-merge-%j.out \
  --wrap "$bin merge --engine $engine --subset ${VLGUARD_SUBSET:-all} ${merge_flags[*]}")
echo "merge: job $merge (after every shard succeeded)"
