#!/usr/bin/env bash
# Runs the Slurm path for real on this machine: a single-node Slurm from Debian's
# slurm-wlm (installed when missing; root), a two-task job array of the bundled demo model
# on the mini test set (scripts/slurm/submit.sh, CPU, no GPU requested), then the
# dependent merge, and checks that the merged answers are the reference's bytes
# (tests/data/golden-dev/reference). Not part of scripts/test.sh: it starts system daemons.
#
#   scripts/slurm/selftest.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
[ "$(id -u)" = 0 ] || { echo "selftest.sh starts slurmctld/slurmd: run it as root" >&2; exit 1; }
command -v slurmctld >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
host=$(hostname)
marker="# written by vlguard-ort scripts/slurm/selftest.sh"
if [ -f /etc/slurm/slurm.conf ] && ! grep -qxF "$marker" /etc/slurm/slurm.conf; then
  echo "selftest.sh: /etc/slurm/slurm.conf exists and is not this test's: this machine has a Slurm" \
    "of its own; use scripts/slurm/submit.sh there instead" >&2
  exit 1
fi
spool=/var/spool/vlguard-selftest
mkdir -p /etc/slurm "$spool/ctld" "$spool/d" /var/log/slurm /run/munge
[ -f /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
cat > /etc/slurm/slurm.conf <<CONF
$marker
ClusterName=vlguard-selftest
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$spool/ctld
SlurmdSpoolDir=$spool/d
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x munged >/dev/null || su munge -s /bin/sh -c /usr/sbin/munged
start() { # daemon: started unless running; its log's last lines when it fails
  pgrep -x "$1" >/dev/null && return 0
  "/usr/sbin/$1" || { echo "selftest.sh: $1 did not start:" >&2; tail -3 "/var/log/slurm/$1.log" >&2; exit 1; }
}
start slurmctld
start slurmd
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -q idle && break; sleep 1; done
SETUP_SKIP_BUILD=1 scripts/setup.sh >/dev/null
cargo build --release --locked -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bin="${CARGO_TARGET_DIR:-$root/target}/release/vlguard-ort"
"$bin" export --checkpoint models/demo-src/llava-v1.5-tiny \
  --vision-tower models/demo-src/clip-vit-tiny-patch14-336 --out "$work/demo" --dtype fp32 >/dev/null
cd "$work"
VLGUARD_BIN="$bin" VLGUARD_SBATCH_FLAGS="--gres=none --cpus-per-task=1" \
  "$root/scripts/slurm/submit.sh" 2 "$work/demo" --meta "$root/data/mini/test.json" \
  --images "$root/data/mini/test" --out "$work/results" --ep cpu --threads 1
for _ in $(seq 120); do [ -z "$(squeue -h)" ] && break; sleep 2; done
for s in unsafes safe_unsafes safe_safes; do
  cmp "$work/results/$s/demo.json" "$root/tests/data/golden-dev/reference/$s.json"
  echo "$s: the merged shards are the reference's bytes"
done
