#!/usr/bin/env bash
# A multi-node test cluster on one machine: N "nodes" as Linux network namespaces, each with its
# own address, hostname and /etc/hosts, joined by a bridge; a second Slurm (slurmctld on node1,
# one slurmd per node) beside the one-node Slurm of scripts/ci_services.sh. Root only.
#
#   scripts/ci_cluster.sh up N        create nodes node1..nodeN and start Slurm (idempotent;
#                                     a failed start is torn down again)
#   scripts/ci_cluster.sh down        stop everything `up` started and delete the namespaces
#   scripts/ci_cluster.sh status      exit 0 when the cluster is up with every node idle
#   scripts/ci_cluster.sh exec NODE CMD...   run CMD on NODE (its network, hostname and hosts)
#   scripts/ci_cluster.sh rsh NODE CMD...    the same with CMD as one shell string: the rsh-style
#                                     agent of mpirun (plm_rsh_agent) and mpiexec (-launcher-exec)
#   scripts/ci_cluster.sh kill NODE   SIGKILL every process running on NODE but its slurmd (a node
#                                     failure as its jobs see it; Slurm keeps the node)
#   scripts/ci_cluster.sh env         print the `export SLURM_CONF=...` clients need
#
# Every node resolves every node's name (/etc/netns/hpcdiff-nodeI/hosts); its own name is also
# 127.0.1.1, as on a default Debian install. Addresses: 10.216.16.I for nodeI and 10.216.16.254 for the bridge in the root namespace (the
# "login node" that submits jobs), one private /24 with no route anywhere else. Namespaces have
# no default route, so nothing started inside can reach beyond this subnet.
set -eEuo pipefail

DIR=${HPCDIFF_CLUSTER_DIR:-/var/tmp/hpcdiff-cluster}
NET=10.216.16
BRIDGE=hpcdiff-br0
CTLD_PORT=16917  # scripts/ci_services.sh uses 16817/16818
SLURMD_PORT=16918
export SLURM_CONF=$DIR/slurm.conf

log() { echo "ci_cluster: $*" >&2; }
ns_of() { echo "hpcdiff-$1"; }  # node name -> namespace name
nodes() { [ -f "$DIR/nodes" ] && cat "$DIR/nodes" || true; }
holder_pid() { cat "$DIR/$1.holder.pid" 2>/dev/null; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
        sleep 0.1
    done
}

# Run a command inside a node: its network namespace plus the UTS and mount namespaces of the
# node's holder process (hostname, /etc/hosts, /sys with cgroups), in the caller's directory.
node_exec() {
    local node=$1 pid
    shift
    pid=$(holder_pid "$node") || { log "no node $node (is the cluster up?)"; return 1; }
    # chdir after entering: a directory opened outside would stay on the root namespace's mount
    # (rename() from an absolute path to a relative one then fails with EXDEV)
    exec nsenter -t "$pid" -n -u -m -r -- sh -c 'cd "$0" && exec "$@"' "$PWD" "$@"
}

write_hosts() {  # write_hosts N I: the hosts file of node I
    local n=$1 me=$2 i
    echo "127.0.0.1 localhost"
    # As Debian's installer writes it: the node's own name is a loopback alias, so gloo (which
    # binds what the host name resolves to) needs hpcdiff's interface choice to work here.
    echo "127.0.1.1 node$me"
    echo "$NET.254 login"
    for i in $(seq 1 "$n"); do echo "$NET.$i node$i"; done
}

# The holder: a process that owns the node's UTS and mount namespaces. `ip netns exec` gives it a
# fresh /sys without cgroups (slurmd needs them) and binds /etc/netns/NS/hosts over /etc/hosts.
start_holder() {
    local node=$1 ns
    ns=$(ns_of "$node")
    local mounts
    mounts=$(awk '$3 == "cgroup" || $3 == "cgroup2" {print $3, $2, $4}' /proc/self/mounts)
    setsid ip netns exec "$ns" unshare --uts sh -c '
        hostname "$1"; pidfile=$2; shift 2
        mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
        while read -r type path opts; do
            mkdir -p "$path" && mount -t "$type" -o "$opts" "$type" "$path"
        done <<EOF
$*
EOF
        echo $$ >"$pidfile"
        exec sleep infinity' holder "$node" "$DIR/$node.holder.pid" "$mounts" \
        </dev/null >/dev/null 2>&1 &
    disown  # it outlives this script; `down` kills it
    wait_for 10 "node $node" test -s "$DIR/$node.holder.pid"
}

make_node() {  # make_node I
    local i=$1 node=node$1 ns veth
    ns=$(ns_of "$node")
    veth=hpcd-v$i
    ip netns add "$ns"
    mkdir -p "/etc/netns/$ns"
    write_hosts "$(nodes)" "$i" >"/etc/netns/$ns/hosts"
    ip link add "$veth" type veth peer name hpcnet0 netns "$ns"
    ip link set "$veth" master "$BRIDGE" up
    ip -n "$ns" addr add "$NET.$i/24" dev hpcnet0
    ip -n "$ns" link set hpcnet0 up
    ip -n "$ns" link set lo up
    start_holder "$node"
}

write_slurm_conf() {
    local n=$1 i
    mkdir -p "$DIR/state" "$DIR/log"
    for i in $(seq 1 "$n"); do mkdir -p "$DIR/spool/node$i"; done
    {
        cat <<EOF
# Written by hpcdiff scripts/ci_cluster.sh: $n nodes in network namespaces on one machine.
ClusterName=hpcdiff-mn
SlurmctldHost=node1($NET.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=30
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
EOF
        for i in $(seq 1 "$n"); do echo "NodeName=node$i NodeAddr=$NET.$i CPUs=4 State=UNKNOWN"; done
        echo "PartitionName=mn Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP"
    } >"$SLURM_CONF.tmp"
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
}

idle_nodes() { sinfo -h -N -o "%N %t" 2>/dev/null | awk '$2 == "idle"' | sort -u | wc -l; }
all_idle() { [ "$(idle_nodes)" -eq "$1" ]; }

start_slurm() {
    local n=$1 i
    (node_exec node1 slurmctld -c -f "$SLURM_CONF") || return 1
    wait_for 20 "slurmctld (see $DIR/log)" scontrol ping
    for i in $(seq 1 "$n"); do
        (node_exec "node$i" slurmd -N "node$i" -f "$SLURM_CONF") || return 1
    done
    wait_for 60 "$n idle nodes (see $DIR/log)" all_idle "$n"
}

up() {
    local n=${1:-2}
    [ "$(id -u)" = 0 ] || { log "up needs root (namespaces, slurmd)"; exit 1; }
    [[ "$n" =~ ^[1-9]$ ]] || { log "N must be 1..9, got '$n'"; exit 2; }
    if [ "$(nodes)" = "$n" ] && status; then return 0; fi
    down
    "$(dirname "$0")/ci_services.sh" install  # munge, slurm, Open MPI packages
    "$(dirname "$0")/ci_services.sh" munge    # the machine's munged, shared by every node
    trap 'log "start failed: tearing down"; down' ERR
    mkdir -p "$DIR"
    echo "$n" >"$DIR/nodes"
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.254/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in $(seq 1 "$n"); do make_node "$i"; done
    write_slurm_conf "$n"
    start_slurm "$n"
    trap - ERR
    log "$n nodes up (node1..node$n = $NET.1..$n; SLURM_CONF=$SLURM_CONF)"
}

stop_pidfile() {  # TERM the pid in a file and wait for it to go (a zombie counts as gone)
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_for 20 "pid $pid to exit" bash -c "! kill -0 $pid 2>/dev/null \
            || grep -q '^State:.*Z' /proc/$pid/status" || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

down() {
    local ns pid i
    for f in "$DIR"/slurmd.*.pid; do [ -e "$f" ] && stop_pidfile "$f"; done
    stop_pidfile "$DIR/slurmctld.pid"
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^hpcdiff-node[0-9]+$/ {print $1}'); do
        # whatever still runs on the node: job steps, test processes, the holder
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
        rm -rf "/etc/netns/$ns"
    done
    for i in $(seq 1 9); do ip link del "hpcd-v$i" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f "$DIR"/*.holder.pid "$DIR/nodes"
    rmdir /etc/netns 2>/dev/null || true
}

kill_node() {
    local node=$1 keep pid
    keep=" $(holder_pid "$node") $(cat "$DIR/slurmd.$node.pid" 2>/dev/null) "
    [ "$keep" != "   " ] || { log "no node $node (is the cluster up?)"; return 1; }
    for pid in $(ip netns pids "$(ns_of "$node")"); do
        [[ "$keep" == *" $pid "* ]] || kill -KILL "$pid" 2>/dev/null || true
    done
}

status() {
    local n
    n=$(nodes)
    [ -n "$n" ] && [ -f "$SLURM_CONF" ] || return 1
    for i in $(seq 1 "$n"); do kill -0 "$(holder_pid "node$i")" 2>/dev/null || return 1; done
    scontrol ping >/dev/null 2>&1 && all_idle "$n"
}

case "${1:-}" in
    up) up "${2:-2}" ;;
    down) down ;;
    status) status ;;
    exec) shift; node_exec "$@" ;;
    rsh)  # mpirun/mpiexec call `AGENT [options] HOST COMMAND...`; drop options such as -x
        shift
        while [[ "${1:-}" == -* ]]; do shift; done
        host=$1
        shift
        node_exec "$host" sh -c "$*"
        ;;
    kill) kill_node "$2" ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 {up N|down|status|exec NODE CMD...|rsh NODE CMD...|kill NODE|env}" >&2; exit 2 ;;
esac
