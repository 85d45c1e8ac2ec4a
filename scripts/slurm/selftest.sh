#!/usr/bin/env bash
# Runs the Slurm path for real on this machine: a single-node Slurm from Debian's
# slurm-wlm (installed when missing, after `apt-get update`), then
# scripts/slurm/recovery_check.sh on it: the documented submit.sh example (3 CPU tasks of
# the bundled demo model on the mini test set), one task made to fail, the recovery with
# `submit.sh --resume`, merged files byte-identical to an unsharded run, and score,
# leaderboard and browse on them.
#
#   sudo scripts/slurm/selftest.sh          # root: it starts system daemons
#
# Opt-in, not part of scripts/test.sh (`VLGUARD_SLURM_SELFTEST=1 cargo test --test
# slurm_scripts` runs it too). It refuses a machine whose /etc/slurm/slurm.conf it did not
# write. Afterwards it stops the daemons it started (munged, slurmctld, slurmd; by the pid
# each wrote) and removes what it set up: slurm.conf, its spool and log folders, and the
# munge key when it made it. The installed packages stay. VLGUARD_BIN: the binary to use
# (default: built here with cargo, release).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
[ "$(id -u)" = 0 ] || { echo "selftest.sh starts slurmctld/slurmd: run it as root" >&2; exit 1; }
if ! command -v slurmctld >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
fi
host=$(hostname)
marker="# written by vlguard-ort scripts/slurm/selftest.sh"
if [ -f /etc/slurm/slurm.conf ] && ! grep -qxF "$marker" /etc/slurm/slurm.conf; then
  echo "selftest.sh: /etc/slurm/slurm.conf exists and is not this test's: this machine has a Slurm" \
    "of its own; use scripts/slurm/submit.sh there instead" >&2
  exit 1
fi
spool=/var/spool/vlguard-selftest
logs=/var/log/vlguard-selftest
started=()
made_key=0
cleanup() {
  local pidfile pid
  for pidfile in "${started[@]}"; do
    pid=$(cat "$pidfile" 2>/dev/null) && kill "$pid" 2>/dev/null || true
  done
  sleep 1
  rm -f /etc/slurm/slurm.conf
  rm -rf "$spool" "$logs" "${work:-}"
  ((!made_key)) || rm -f /etc/munge/munge.key
  echo "selftest.sh: stopped the daemons it started, removed slurm.conf, $spool, $logs$(
    ((!made_key)) || echo ', the munge key')"
}
trap cleanup EXIT
mkdir -p /etc/slurm "$spool/ctld" "$spool/d" "$logs" /run/munge
if [ ! -f /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  made_key=1
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
cat >/etc/slurm/slurm.conf <<CONF
$marker
ClusterName=vlguard-selftest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
SlurmctldPidFile=$spool/slurmctld.pid
SlurmdPidFile=$spool/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
if ! pgrep -x munged >/dev/null; then
  su munge -s /bin/sh -c /usr/sbin/munged
  started+=(/run/munge/munged.pid)
fi
start() { # daemon: refused when one runs already (not ours); its log's last lines when it fails
  if pgrep -x "$1" >/dev/null; then
    echo "selftest.sh: a $1 runs already on this machine; stop it first" >&2
    exit 1
  fi
  "/usr/sbin/$1" || { echo "selftest.sh: $1 did not start:" >&2; tail -3 "$logs/$1.log" >&2; exit 1; }
  started+=("$spool/$1.pid")
}
start slurmctld
start slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
sinfo -h -o %T | grep -q idle || { echo "selftest.sh: the node never became idle" >&2; exit 1; }
if [ -z "${VLGUARD_BIN:-}" ]; then
  SETUP_SKIP_BUILD=1 scripts/setup.sh >/dev/null
  cargo build --release --locked -q
  VLGUARD_BIN="${CARGO_TARGET_DIR:-$root/target}/release/vlguard-ort"
fi
export VLGUARD_BIN
work=$(mktemp -d)
"$VLGUARD_BIN" export --checkpoint models/demo-src/llava-v1.5-tiny \
  --vision-tower models/demo-src/clip-vit-tiny-patch14-336 --out "$work/demo" --dtype fp32 >/dev/null
sinfo -V
VLGUARD_SBATCH_FLAGS="--gres=none --cpus-per-task=1" scripts/slurm/recovery_check.sh "$work/demo"
