#!/usr/bin/env bash
# Local services for the multi-process tests: Debian Open MPI and a one-node Slurm cluster
# (munge + slurmctld + slurmd on localhost), for root on a Debian 12 machine without systemd;
# also netcdf-bin (nccopy, ncdump: the conversion `hpcdiff data inspect` advises is tested).
#
#   scripts/ci_services.sh install   apt-install the packages (no-op when already installed)
#   scripts/ci_services.sh start     install, then start munged, slurmctld, slurmd (idempotent)
#   scripts/ci_services.sh stop      stop slurmd and slurmctld (munged is left running)
#   scripts/ci_services.sh status    exit 0 when the cluster answers, 1 otherwise
#   scripts/ci_services.sh env       print the `export SLURM_CONF=...` clients need
#   scripts/ci_services.sh munge     start only munged (also used by scripts/ci_cluster.sh)
#
# Slurm's files live in $HPCDIFF_SLURM_DIR (default /var/tmp/hpcdiff-slurm), never in /etc/slurm,
# and its daemons listen on non-default ports, so a site's real Slurm is not touched. Clients
# (srun, sbatch, sinfo) need SLURM_CONF=$HPCDIFF_SLURM_DIR/slurm.conf.
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client openmpi-bin netcdf-bin)
SLURM_DIR=${HPCDIFF_SLURM_DIR:-/var/tmp/hpcdiff-slurm}
export SLURM_CONF=$SLURM_DIR/slurm.conf
CTLD_PID=$SLURM_DIR/slurmctld.pid
SLURMD_PID=$SLURM_DIR/slurmd.pid

log() { echo "ci_services: $*" >&2; }

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || echo "$pkg"
    done
}

install() {
    local missing
    missing=$(missing_packages | tr "\n" " ")
    [ -z "${missing// /}" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        log "missing packages ($missing) and not root: install them with apt-get"; exit 1
    fi
    log "installing $missing"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends $missing >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends \
             $missing >/dev/null; }
}

write_config() {
    local cpus
    cpus=$(nproc)
    [ "$cpus" -lt 4 ] && cpus=4  # config_overrides: allow 2-rank jobs even on 1-2 cores
    mkdir -p "$SLURM_DIR/state" "$SLURM_DIR/spool" "$SLURM_DIR/log"
    cat >"$SLURM_CONF.tmp" <<EOF
# Written by hpcdiff scripts/ci_services.sh: one-node test cluster on localhost.
ClusterName=hpcdiff-ci
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
NodeName=localhost CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
        sleep 0.1
    done
}

node_idle() { sinfo -h -N -o %t | grep -qx "idle"; }
node_up() { sinfo -h -N -o %t | grep -qxE "idle|mix|alloc|comp"; }
munge_works() { munge -n | unmunge; }

start_munge() {
    munge_works >/dev/null 2>&1 && return 0
    [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 \
        && chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    wait_for 10 munged munge_works
}

start() {
    install
    [ "$(id -u)" = 0 ] || { log "start needs root (slurmd runs jobs as any user)"; exit 1; }
    start_munge
    if status; then return 0; fi
    stop
    write_config
    slurmctld -c -f "$SLURM_CONF"
    wait_for 20 "slurmctld (see $SLURM_DIR/log)" scontrol ping
    slurmd -N localhost -f "$SLURM_CONF"
    wait_for 30 "node localhost idle (see $SLURM_DIR/log)" node_idle
    log "one-node Slurm up (SLURM_CONF=$SLURM_CONF)"
}

stop_daemon() {  # stop_daemon PIDFILE: TERM, then wait for the pid to go away
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_for 20 "pid $pid to exit" bash -c "! kill -0 $pid 2>/dev/null \
            || grep -q '^State:.*Z' /proc/$pid/status"
    fi
    rm -f "$1"
}

stop() {
    stop_daemon "$SLURMD_PID"
    stop_daemon "$CTLD_PID"
}

status() {
    [ -f "$SLURM_CONF" ] && alive "$CTLD_PID" && alive "$SLURMD_PID" \
        && scontrol ping >/dev/null 2>&1 && node_up
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    munge) start_munge ;;
    *) echo "usage: $0 {install|start|stop|status|env|munge}" >&2; exit 2 ;;
esac
