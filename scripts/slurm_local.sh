#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and the tests of `bench.py slurm` (harness/slurm.py).
#
#   scripts/slurm_local.sh start   # munged (as the munge user), slurmctld, slurmd; waits until the node is idle
#   scripts/slurm_local.sh stop    # stops every daemon it started, by the pid it recorded; nothing else
#   scripts/slurm_local.sh status
#
# Needs root and the Debian packages slurm-wlm and munge (installed here with apt-get when missing and root).
# Configuration (short on purpose): SlurmUser=root, select/cons_tres, proctrack/linuxproc, task/none, no
# accounting, one node with CPUs=2 at 127.0.0.1, one partition `debug`. Everything it writes (state, spool,
# logs, pid files, the munge socket) lives in $KB_SLURM_DIR (default /tmp/kb-slurm); the configuration is
# /etc/slurm/slurm.conf, where sbatch/sinfo look by default (an existing file that this script did not write is
# left alone, and start fails). Measured here: start about 5-20 s.
set -euo pipefail
DIR=${KB_SLURM_DIR:-/tmp/kb-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by kbench scripts/slurm_local.sh"
NODE=$(hostname -s)

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

install_packages() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed (apt-get install slurm-wlm munge)"
  echo "installing slurm-wlm munge"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: not touching a real cluster's configuration"
  fi
  mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
  cat > "$CONF" <<EOF
$MARK
ClusterName=kbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || die "needs root (the daemons run as root and munge)"
  install_packages
  write_conf
  mkdir -p "$DIR/munge"
  chown munge:munge "$DIR/munge"
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  if ! alive "$DIR/munge/munged.pid"; then
    runuser -u munge -- /usr/sbin/munged --socket="$DIR/munge/munge.socket" --pid-file="$DIR/munge/munged.pid" \
      --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" --force
  fi
  alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -f "$CONF"
  alive "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 60); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    case "$state" in idle|mix|alloc) echo "slurm_local.sh: cluster up (node $NODE $state, partition debug, $DIR)"; return 0;; esac
    sleep 0.5
  done
  echo "--- slurmctld.log"; tail -20 "$DIR/slurmctld.log" 2>/dev/null || true
  echo "--- slurmd.log"; tail -20 "$DIR/slurmd.log" 2>/dev/null || true
  die "the node did not become idle within 30 s (state: ${state:-none})"
}

stop() {
  local pidfile pid
  for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      echo "slurm_local.sh: stopped $(basename "$pidfile" .pid) (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  for pidfile in "$DIR/munge/munged.pid" "$DIR/slurmctld.pid" "$DIR/slurmd.pid"; do
    if alive "$pidfile"; then echo "$(basename "$pidfile" .pid): running (pid $(cat "$pidfile"))"
    else echo "$(basename "$pidfile" .pid): not running"; fi
  done
  sinfo 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
