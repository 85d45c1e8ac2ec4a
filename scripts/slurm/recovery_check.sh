#!/usr/bin/env bash
# The documented Slurm example, run through a failed task and its recovery on the Slurm
# that is on PATH (a real one: scripts/slurm/selftest.sh; the stand-in of
# tests/fixtures/fake-slurm: tests/slurm_scripts.rs), in a folder whose path has a space:
#
#   1. the `scripts/slurm/submit.sh 8 models/llava15-7b-mixed --subset all ...` line of
#      README.md and docs/clusters.md (one line, the same in both), with 3 tasks for 8
#      and --ep cpu for cuda, on a copy of MODEL_DIR under that name and the mini test
#      set as data/VLGuard; one image of shard 2's range is moved
#      away first, so task 2 fails (a sample without an answer: exit 1) and the merge is
#      left waiting on it for ever;
#   2. `merge --status` names shard 2 incomplete; the image is put back;
#      `submit.sh --resume JOB` resubmits shard 2 alone and a merge after it;
#   3. the merged files are byte-identical to an unsharded run of the same flags, and
#      `score` (no --subset), `leaderboard` (one row, with provider and date, no shard
#      rows) and `browse` work on them; each attempt's log is there, a requeued task's
#      (`scontrol requeue`) appended to its first.
#
#   VLGUARD_BIN=target/release/vlguard-ort scripts/slurm/recovery_check.sh MODEL_DIR
#
# VLGUARD_SBATCH_FLAGS is passed on to submit.sh; VLGUARD_CHECK_TIMEOUT (seconds, default
# 300) bounds each wait for the queue. Prints `ok: ...` per check; exit 1 at the first
# that fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
model_src="$(cd "${1:?usage: recovery_check.sh MODEL_DIR}" && pwd)"
bin="${VLGUARD_BIN:?set VLGUARD_BIN to the vlguard-ort binary}"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
export VLGUARD_BIN="$bin"
fail() { echo "recovery_check.sh: FAILED: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
work="$(mktemp -d "${TMPDIR:-/tmp}/vlguard slurm.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p models data/VLGuard
cp -r "$model_src" models/llava15-7b-mixed
cp "$root/data/mini/test.json" data/VLGuard/test.json
cp -r "$root/data/mini/test" data/VLGuard/test
engine=llava15-7b-mixed

# Waits until nothing in the queue can still run: every job left (if any) waits on a
# dependency that can never be satisfied.
settle() {
  local left
  for _ in $(seq "${VLGUARD_CHECK_TIMEOUT:-300}"); do
    left=$(squeue -h -o '%i %j %T %r' | grep -v 'DependencyNeverSatisfied$' || true)
    [ -z "$left" ] && return 0
    sleep 1
  done
  fail "the queue did not settle: $left"
}

example=$(cat "$root/README.md" "$root/docs/clusters.md" | grep -E '^scripts/slurm/submit\.sh [0-9]+ ' | sort -u)
[ "$(grep -c . <<<"$example")" = 1 ] ||
  fail "README.md and docs/clusters.md must show one submit.sh example (the same line): $example"
read -r -a words <<<"${example%%#*}"
[ "${words[2]}" = "models/$engine" ] || fail "the documented example's model is not models/$engine"
flags=("${words[@]:3}")
for i in "${!flags[@]}"; do [ "${flags[$i]}" = cuda ] && flags[$i]=cpu; done
echo "docs:   $example"
echo "runs:   scripts/slurm/submit.sh 3 models/$engine ${flags[*]}"

"$bin" run --model "models/$engine" "${flags[@]}" --out unsharded >unsharded.log 2>&1 ||
  fail "the unsharded run failed: $(tail -3 unsharded.log)"
n_unsafes=$(grep -c '^    "' "unsharded/unsafes/$engine.json")
[ "$n_unsafes" = 10 ] || fail "expected 10 unsafes samples in the mini set, got $n_unsafes"
# Shard 2 of 3 answers samples 4 to 6 (contiguous ranges, 1-based K): the 4th's image goes.
image=$(sed -n 's/^    "\([^"]*\)": .*/\1/p' "unsharded/unsafes/$engine.json" | sed -n 4p)
mv "data/VLGuard/test/$image" aside

"$root/scripts/slurm/submit.sh" 3 "models/$engine" "${flags[@]}" | tee submit.log
job=$(sed -n 's/^shards: job array \([0-9]*\).*/\1/p' submit.log)
[ -n "$job" ] || fail "submit.sh printed no job id"
settle
[ ! -e "results/unsafes/$engine.json" ] || fail "the merge ran although task 2 failed"
squeue -h -o '%j %r' | grep -qx "vlguard-merge-$job DependencyNeverSatisfied" ||
  fail "the merge is not waiting on the failed task: $(squeue -h -o '%i %j %T %r')"
ok "task 2 failed (image $image moved away); the merge waits for ever (DependencyNeverSatisfied)"
status=$("$bin" merge --status --engine "$engine" --subset all)
echo "$status"
grep -qx "shard 2/3: incomplete (unsafes 2/3 (1 failed), safe_unsafes 3/3, safe_safes 3/3)" \
  <<<"$status" || fail "merge --status does not name shard 2 incomplete"
grep -qx "pending: 2" <<<"$status" || fail "merge --status does not plan shard 2 alone"
ok "merge --status: shard 2 incomplete, shards 1 and 3 complete"

mv aside "data/VLGuard/test/$image"
"$root/scripts/slurm/submit.sh" --resume "$job" | tee resume.log
again=$(sed -n 's/^shards 2 of 3: job array \([0-9]*\) (indexes 1,.*/\1/p' resume.log)
[ -n "$again" ] || fail "--resume did not resubmit shard 2 alone (array index 1)"
settle
[ -z "$(squeue -h -o %i)" ] || fail "jobs left in the queue: $(squeue -h -o '%i %j %T %r')"
ok "--resume: shard 2 resubmitted as job $again, the old merge cancelled, the new one ran"

for s in unsafes safe_unsafes safe_safes; do
  cmp "results/$s/$engine.json" "unsharded/$s/$engine.json" || fail "$s differs from the unsharded run"
done
ok "merged files byte-identical to the unsharded run (unsafes, safe_unsafes, safe_safes)"
grep -q "^== vlguard-array.sbatch: shard 2/3, job ${job}_1, attempt 1" "vlguard-${job}_1.out" &&
  grep -q "sample $image failed" "vlguard-${job}_1.out" &&
  grep -q "^== vlguard-array.sbatch: shard 2/3, job ${again}_1, attempt 1" "vlguard-${again}_1.out" ||
  fail "the logs of the failed attempt and the resubmission are not both there"
ok "logs kept: vlguard-${job}_1.out (the failure) and vlguard-${again}_1.out (the rerun)"
# A requeue (what Slurm does after a node failure or preemption) runs the task again under
# the same job id: its log gains the new attempt instead of losing the first.
scontrol requeue "${again}_1"
settle
grep -q "^== vlguard-array.sbatch: shard 2/3, job ${again}_1, attempt 2" "vlguard-${again}_1.out" &&
  grep -q "^== vlguard-array.sbatch: shard 2/3, job ${again}_1, attempt 1" "vlguard-${again}_1.out" ||
  fail "the requeued task's log does not hold both attempts: $(grep '^==' "vlguard-${again}_1.out")"
ok "requeued: vlguard-${again}_1.out holds attempts 1 and 2"

scored=$("$bin" score "results/unsafes/$engine.json") || fail "score on the merged file failed"
[ "$scored" = "$("$bin" score "unsharded/unsafes/$engine.json")" ] || fail "score differs"
ok "score without --subset on the merged file: $(head -1 <<<"$scored")"
board=$("$bin" leaderboard results)
echo "$board"
! grep -q 'shard-' <<<"$board" || fail "the leaderboard lists shard files beside the merged one"
[ "$(grep -c "| $engine " <<<"$board")" = 1 ] || fail "the leaderboard has no single $engine row"
grep "| $engine " <<<"$board" | grep -q "| CPU | 20[0-9-]* |" ||
  fail "the merged row has no provider or date"
ok "leaderboard: one $engine row with provider and date, no shard rows"
"$bin" browse results --engine "$engine" >browse.log 2>&1 || fail "browse failed: $(tail -3 browse.log)"
[ -s "results/browse/$engine.html" ] || fail "browse wrote no page"
ok "browse: results/browse/$engine.html"
