#!/usr/bin/env bash
# Submits the evaluation as a Slurm job array of N GPU shards, then the merge as a job that
# starts only when every shard has succeeded (afterok); after a failure, finishes the run.
#
#   scripts/slurm/submit.sh N MODEL_DIR [run flags ...]
#   scripts/slurm/submit.sh --resume JOB
#
# N MODEL_DIR: array task K-1 runs `vlguard-ort run --model MODEL_DIR --shard K/N` followed
# by the run flags exactly as given (--subset all is added when they have no --subset; they
# may not hold --model or --shard, which are set here). The merge uses the same --engine
# (default: the model folder's name), --subset, --meta, --out and --limit, written
# `--flag value` or `--flag=value`. The submission is recorded in ./vlguard-submit-JOB.sh,
# beside the logs: vlguard-JOB_I.out per task (a requeued attempt appends after a header
# line naming it), vlguard-merge-M.out per merge job.
#
# --resume JOB (run from the folder submit.sh ran in): reads that record; refuses while a
# task of the run is still queued or running; asks `vlguard-ort merge --status` which
# shards are incomplete or not started according to their journals; resubmits exactly
# those (array indexes K-1, each running `--shard K/N`, never `auto`; --fresh is dropped so
# that they resume); cancels the merge left pending on the earlier tasks (Slurm never
# releases an afterok on a failed task) and submits a new one that depends on the new
# tasks only (afterok:NEWJOB). With nothing pending it submits the merge alone.
#
# Environment: VLGUARD_BIN (default target/release/vlguard-ort), VLGUARD_SBATCH_FLAGS
# (sbatch options for every job: a partition, an account, or "--gres=none
# --cpus-per-task=1" on a cluster without GPUs); both are recorded for --resume.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: submit.sh N MODEL_DIR [run flags ...]  |  submit.sh --resume JOB"
die() { echo "submit.sh: $*" >&2; exit 2; }

# shellcheck source=../run_flags.sh
source "$here/../run_flags.sh"

# Appends `name=(values...)` (or `name=value`), shell-quoted, to the record.
record() {
  local name=$1
  shift
  if [ "${1-}" = "(" ]; then
    shift
    printf '%s=(' "$name"
    (($# == 0)) || printf '%q ' "$@"
    printf ')\n'
  else
    printf '%s=%q\n' "$name" "$1"
  fi >>"$record_file"
}

# The shards of array indexes SPEC (e.g. 0-7 or 1,4) as one array job; prints its id.
submit_array() {
  sbatch --parsable --chdir="$workdir" "${sbatch_flags[@]}" --array="$1" \
    "$here/vlguard-array.sbatch" "$n" "$model" "${run_flags[@]}" | cut -d';' -f1
}

# The merge, after DEPENDENCY (empty: none); prints its id.
submit_merge() {
  local dependency=()
  [ -z "$1" ] || dependency=(--dependency="$1")
  sbatch --parsable --chdir="$workdir" "${sbatch_flags[@]}" "${dependency[@]}" \
    --job-name="vlguard-merge-$first" "$here/vlguard-merge.sbatch" \
    "$bin" merge --engine "$engine" "${merge_flags[@]}" | cut -d';' -f1
}

submit() {
  n=$1 model=$2
  shift 2
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive whole number, got \`$n\`"
  [ -d "$model" ] || die "model folder $model does not exist"
  # The name `run` gives the files: the real folder's name (symlinks resolved, as run does).
  engine="$(basename "$(cd "$model" && pwd -P)")"
  run_flags=("$@")
  parse_run_flags submit.sh --model --shard
  bin="${VLGUARD_BIN:-target/release/vlguard-ort}"
  [ -x "$bin" ] || die "no vlguard-ort binary at $bin (build it, or set VLGUARD_BIN)"
  bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  read -r -a sbatch_flags <<<"${VLGUARD_SBATCH_FLAGS:-}"
  workdir=$PWD
  first=$(submit_array "0-$((n - 1))")
  record_file="$workdir/vlguard-submit-$first.sh"
  echo "# scripts/slurm/submit.sh's record of job $first, read by submit.sh --resume $first" >"$record_file"
  record workdir "$workdir"
  record n "$n"
  record model "$model"
  record engine "$engine"
  record bin "$bin"
  record sbatch_flags "(" "${sbatch_flags[@]}"
  record run_flags "(" "${run_flags[@]}"
  record merge_flags "(" "${merge_flags[@]}"
  record first "$first"
  echo "arrays=($first)" >>"$record_file"
  echo "shards: job array $first ($n tasks, logs vlguard-${first}_I.out); record $record_file"
  merge=$(submit_merge "afterok:$first")
  echo "merge: job $merge (after every shard succeeded); if a task fails: $0 --resume $first"
}

resume() {
  [[ "$1" =~ ^[0-9]+$ ]] || die "--resume takes the array's job id (a number), got \`$1\`"
  record_file="$PWD/vlguard-submit-$1.sh"
  [ -f "$record_file" ] || die "no record $record_file: run --resume from the folder submit.sh ran in"
  # shellcheck source=/dev/null
  source "$record_file"
  local queued
  queued=$(squeue -h -o %F | sort -u | grep -xF -f <(printf '%s\n' "${arrays[@]}") || true)
  [ -z "$queued" ] || die "job(s) $(echo $queued) of this run still have tasks queued or running" \
    "(squeue -j $(echo $queued | tr ' ' ,)): wait for them, or scancel them, then resume"
  local status pending=() flags=() flag
  status=$(cd "$workdir" && "$bin" merge --status --shards "$n" --engine "$engine" "${merge_flags[@]}")
  echo "$status"
  read -r -a pending <<<"$(sed -n 's/^pending: //p' <<<"$status")"
  for flag in "${run_flags[@]}"; do [ "$flag" = --fresh ] || flags+=("$flag"); done
  run_flags=("${flags[@]}")
  scancel --state=PENDING --name="vlguard-merge-$first" || true
  if [ "${pending[*]}" = none ]; then
    echo "merge: job $(submit_merge "") (every shard is complete)"
    return
  fi
  local indexes=() k
  for k in "${pending[@]}"; do indexes+=($((k - 1))); done
  local spec array
  spec=$(IFS=,; echo "${indexes[*]}")
  array=$(submit_array "$spec")
  echo "arrays+=($array)" >>"$record_file"
  echo "shards ${pending[*]} of $n: job array $array (indexes $spec, logs vlguard-${array}_I.out)"
  echo "merge: job $(submit_merge "afterok:$array") (after those tasks succeeded)"
}

case "${1-}" in
  --resume) resume "${2:?$usage}" ;;
  --resume=*) resume "${1#*=}" ;;
  "" | -h | --help) echo "$usage" >&2; exit 2 ;;
  *) (($# >= 2)) || die "$usage"; submit "$@" ;;
esac
