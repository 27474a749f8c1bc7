#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the `--launcher slurm` tests (tests/engine/test_slurm.py).
#
#   bash tools/slurm_local_cluster.sh [start|stop|status]     (start is the default; every action is idempotent)
#
# start: installs the Debian packages slurm-wlm and munge if missing, creates a munge key and starts munged,
# writes /etc/slurm/slurm.conf for one node (this host, all its CPUs, partition `debug`), starts slurmctld and
# slurmd directly (no systemd needed), and waits until the node is idle. Needs root (or sudo) and apt-get.
# Works in containers without systemd or cgroups: processes are tracked through /proc, tasks are not bound.
# Check it with: srun -N1 -n2 hostname
# The recommended slurm-wlm-plugins (30 packages: HDF5, IPMI, ROCm SMI, ...) are not installed; without its
# PMIx library slurmctld and slurmd log "can not load PMIx library" at start, which is harmless (MpiDefault=none).
set -euo pipefail

ACTION=${1:-start}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_PID=/run/munge/munged.pid
START_TIMEOUT=${SLURM_START_TIMEOUT:-60}

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "slurm_local_cluster.sh: run as root (or install sudo)" >&2; exit 1; }
  SUDO="sudo"
fi

log() { echo "[slurm_local_cluster] $*"; }

# The pid in a pid file, if that process is alive.
running_pid() {
  local file=$1 pid
  [ -r "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [ -n "$pid" ] && $SUDO kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun >/dev/null \
      && command -v munged >/dev/null; then
    return
  fi
  log "installing slurm-wlm and munge"
  local started=$SECONDS
  $SUDO apt-get update -qq
  # Services are not started by the packages here (no init system); this script starts the daemons itself.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  log "installed in $((SECONDS - started)) s"
}

start_munge() {
  $SUDO mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if ! $SUDO test -s "$MUNGE_KEY"; then
    log "creating $MUNGE_KEY"
    $SUDO dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  $SUDO chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
  $SUDO chmod 0700 /etc/munge /var/lib/munge /var/log/munge
  $SUDO chmod 0755 /run/munge
  $SUDO chmod 0400 "$MUNGE_KEY"
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  log "starting munged"
  $SUDO rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  $SUDO runuser -u munge -- /usr/sbin/munged
  local i
  for i in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "munged does not answer; its log:" >&2
  $SUDO tail -n 30 /var/log/munge/munged.log >&2 || true
  exit 1
}

write_config() {
  local host cpus mem_mb conf
  host=$(hostname -s)
  # At least 2 CPUs, so that `srun -n2` runs on a one-core machine too (slurmd accepts it: config_overrides).
  cpus=$(nproc)
  [ "$cpus" -ge 2 ] || cpus=2
  # Tasks need the node's name to resolve (srun, and the master address of `--launcher slurm`).
  if ! getent hosts "$host" >/dev/null; then
    log "adding '127.0.0.1 $host' to /etc/hosts"
    echo "127.0.0.1 $host" | $SUDO tee -a /etc/hosts >/dev/null
  fi
  # A little below the machine's memory: slurmd drains a node that has less than RealMemory.
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  conf=$(cat <<EOF
# Written by tools/slurm_local_cluster.sh: one node on this machine, for tests.
ClusterName=rmtrain-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No cgroups or systemd in containers: track processes through /proc, do not bind tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Trust the node line below rather than the hardware slurmd detects (sockets/cores differ in VMs).
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=60
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
)
  $SUDO mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
  if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$conf" ]; then
    return 1  # unchanged
  fi
  log "writing $CONF"
  printf '%s\n' "$conf" | $SUDO tee "$CONF" >/dev/null
  return 0
}

# Stop the named daemons (slurmd, slurmctld, munged) through their pid files.
stop_daemons() {
  local name file pid i
  for name in "$@"; do
    case $name in
      slurmd) file=$SLURMD_PID ;;
      slurmctld) file=$CTLD_PID ;;
      munged) file=$MUNGE_PID ;;
    esac
    if pid=$(running_pid "$file"); then
      log "stopping $name (pid $pid)"
      $SUDO kill "$pid"
      for i in $(seq 50); do
        $SUDO kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      $SUDO kill -9 "$pid" 2>/dev/null || true
    fi
    $SUDO rm -f "$file"
  done
}

print_logs() {
  local file
  for file in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
    echo "----- $file (last 40 lines)" >&2
    $SUDO tail -n 40 "$file" >&2 2>/dev/null || echo "(missing)" >&2
  done
}

node_state() {
  sinfo -h -N -o '%T' 2>/dev/null | head -n 1
}

start() {
  install_packages
  start_munge
  if write_config; then
    stop_daemons slurmd slurmctld  # a new configuration: restart whatever ran with the old one
  fi
  if ! running_pid "$CTLD_PID" >/dev/null; then
    log "starting slurmctld"
    $SUDO rm -f "$CTLD_PID"
    # -i: ignore job state saved by an earlier run of this script that the new node may not match.
    $SUDO slurmctld -i || { print_logs; exit 1; }
  fi
  if ! running_pid "$SLURMD_PID" >/dev/null; then
    log "starting slurmd"
    $SUDO rm -f "$SLURMD_PID"
    $SUDO slurmd || { print_logs; exit 1; }
  fi

  local deadline=$((SECONDS + START_TIMEOUT)) state="" resumed=0
  while [ $SECONDS -lt $deadline ]; do
    state=$(node_state || true)
    case "$state" in
      idle|mixed|allocated) break ;;
      *drain*|*down*|*fail*)
        if [ $resumed -eq 0 ]; then
          log "node is $state: resuming it"
          $SUDO scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    sleep 1
  done
  case "$state" in
    idle|mixed|allocated) ;;
    *)
      echo "slurm_local_cluster.sh: the node is not idle after ${START_TIMEOUT} s (state: '${state:-none}')" >&2
      sinfo -N -l >&2 || true
      scontrol show node >&2 || true
      print_logs
      exit 1 ;;
  esac
  sinfo
}

status() {
  for name in munged slurmctld slurmd; do
    case $name in
      munged) munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && echo "munged: running" || echo "munged: not running" ;;
      slurmctld) pid=$(running_pid "$CTLD_PID") && echo "slurmctld: running (pid $pid)" || echo "slurmctld: not running" ;;
      slurmd) pid=$(running_pid "$SLURMD_PID") && echo "slurmd: running (pid $pid)" || echo "slurmd: not running" ;;
    esac
  done
  if command -v sinfo >/dev/null; then
    sinfo || true
    squeue || true
  fi
}

case "$ACTION" in
  start) start ;;
  stop) stop_daemons slurmd slurmctld munged ;;
  status) status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
