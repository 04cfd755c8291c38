#!/usr/bin/env bash
# A real multi-node SLURM cluster on this machine, for the `multinode` tests and for trying a
# multi-node recipe by hand before queueing on a real cluster: slurmctld + slurmdbd (own MariaDB) in
# this namespace, and N `slurmd` nodes (default 2), each in its own network and UTS namespace with its
# own hostname, spool and log. The nodes reach the controller and each other over veth pairs on a
# bridge with a private /24 that exists only inside this machine. The file system is shared by all
# nodes, as a cluster's shared home is.
#
#   tests/slurm/multinode.sh up       install (Debian, as root) if needed, configure, start, wait until idle
#   tests/slurm/multinode.sh down     stop what `up` started; remove its namespaces, links, /etc/hosts lines
#   tests/slurm/multinode.sh env      print `export SLURM_CONF=...` for a shell
#   tests/slurm/multinode.sh status
#
# It coexists with the one-node cluster (tests/slurm/cluster.sh): its own directory, ClusterName,
# ports, MariaDB and subnet; the one `munged` is shared. Everything it creates is named hmsamn*/hmsa-mn*.
# Debian's slurmd is not built to run several daemons per host (no -N), which is why each node has
# its own namespaces; it is started with nsenter + unshare, not `ip netns exec`, which remounts /sys
# and hides /sys/fs/cgroup from slurmd.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HMSA_SLURM_DIR="${HMSA_MN_DIR:-/tmp/hmsa-slurm-mn}"
export HMSA_SLURM_DB_PORT="${HMSA_MN_DB_PORT:-3308}"
export HMSA_SLURM_CPUS="${HMSA_MN_CPUS:-4}"  # per node (config_overrides): 2 real cores serve all nodes
export HMSA_SLURM_MEM_MB="${HMSA_MN_MEM_MB:-8000}"
# shellcheck source=tests/slurm/cluster.sh
source "$HERE/cluster.sh"  # DIR, CONF, NODE, say, wait_for, alive, started, install, munge, MariaDB, stop_pid

NODES="${HMSA_MN_NODES:-2}"
SUBNET="${HMSA_MN_SUBNET:-10.218.16}"  # a /24 used only on the bridge below
BRIDGE=hmsamn-br0
CTLD_ADDR="$SUBNET.1"
CTLD_PORT=6917 SLURMD_PORT=6918 DBD_PORT=6919  # not the defaults (6817-6819) the one-node cluster uses
HOSTS_TAG="# hmsa-multinode $DIR"             # marks our /etc/hosts lines so `down` removes only them
say() { echo "multinode.sh: $*" >&2; }

node_name() { echo "hmsa-mn$1"; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
netns() { echo "hmsamn-cn$1"; }

write_mn_configs() {
    mkdir -p "$DIR"/{etc,state,spool,log,run,gpu,mysql}
    for i in 0 1 2 3; do ln -sfn /dev/null "$DIR/gpu/nvidia$i"; done
    local i nodes=() node_lines="" gres_lines=""
    for i in $(seq "$NODES"); do
        nodes+=("$(node_name "$i")")
        mkdir -p "$DIR/spool/$(node_name "$i")"
        node_lines+="NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:4 State=UNKNOWN"$'\n'
        gres_lines+="NodeName=$(node_name "$i") Name=gpu File=$DIR/gpu/nvidia[0-3]"$'\n'
    done
    local all
    all="$(IFS=,; echo "${nodes[*]}")"
    cat >"$CONF" <<EOF
# Written by tests/slurm/multinode.sh: $NODES nodes in network namespaces, controller on $CTLD_ADDR.
ClusterName=hmsamn
# slurmctld refuses a controller name that is not this host's own; the address is the bridge's.
SlurmctldHost=$NODE($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=10
# No CommunicationParameters=NoCtldInAddrAny/NoInAddrAny (the one-node cluster's): they bind to the
# address this host's name resolves to, 127.0.0.1, which no node can reach from its namespace.
StateSaveLocation=$DIR/state
# %n: every node (one slurmd per namespace, same file system) keeps its own spool, pid file and log.
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
$(scheduling_conf)
# A node that stops answering is marked DOWN (and its jobs requeued) after this many seconds.
SlurmdTimeout=20
# SIGTERM to SIGKILL when a job is requeued or cancelled (default 30 s): submitit ignores SIGTERM, so
# every requeue of a test job would otherwise wait the whole 30 s on its non-zero ranks.
KillWait=10
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
GresTypes=gpu
$node_lines
PartitionName=debug Nodes=$all Default=YES MaxTime=INFINITE State=UP
EOF
    printf 'AutoDetect=off\n%s' "$gres_lines" >"$DIR/etc/gres.conf"
    write_slurmdbd_conf
}

install_network_tools() {
    if command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        say "ip/nsenter/unshare are missing and cannot be installed here (needs root and apt-get)"
        exit 3
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 util-linux >/dev/null
}

# The bridge (controller side) and one namespace + veth pair per node. Each piece is created only if
# missing and recorded in $DIR/started, so `down` removes exactly these.
make_network() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        if ! ip link add "$BRIDGE" type bridge 2>/dev/null; then
            say "cannot create network devices here (needs CAP_NET_ADMIN): no multi-node cluster"
            exit 3
        fi
        started "link:$BRIDGE"
        ip addr add "$CTLD_ADDR/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    local i ns
    for i in $(seq "$NODES"); do
        ns="$(netns "$i")"
        if [[ ! -e /var/run/netns/$ns ]]; then
            ip netns add "$ns"
            started "netns:$ns"
        fi
        if ! ip link show "hmsamn-v$i" >/dev/null 2>&1; then
            ip link add "hmsamn-v$i" type veth peer name "hmsamn-p$i"
            started "link:hmsamn-v$i"  # deleting one end deletes its peer, wherever it is
            ip link set "hmsamn-p$i" netns "$ns"
            ip -n "$ns" link set "hmsamn-p$i" name eth0
            ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
        fi
        ip link set "hmsamn-v$i" master "$BRIDGE" up
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
    # Every name must resolve in every namespace: they all read this machine's /etc/hosts.
    for i in $(seq "$NODES"); do
        grep -qF "$(node_addr "$i") $(node_name "$i") $HOSTS_TAG" /etc/hosts \
            || echo "$(node_addr "$i") $(node_name "$i") $HOSTS_TAG" >>/etc/hosts
    done
}

# slurmd of node I, inside its namespaces: it finds its NodeName from the hostname it is given.
start_node() {
    local i=$1 name
    name="$(node_name "$i")"
    if alive "$DIR/run/slurmd-$name.pid"; then return 0; fi
    nsenter --net="/var/run/netns/$(netns "$i")" unshare --uts \
        sh -c "hostname $name && exec slurmd" </dev/null
    started "slurmd:$name"
}

start_mn_slurm() {
    start_controller hmsamn
    local i
    for i in $(seq "$NODES"); do start_node "$i"; done
    for i in $(seq "$NODES"); do node_ready "$(node_name "$i")"; done
    wait_for 30 sacct sacct -n -X -S now-1minutes
}

mn_up() {
    install_packages
    install_network_tools
    mkdir -p "$DIR"
    write_mn_configs
    make_network
    start_munge
    start_mariadb
    start_mn_slurm
    say "up: $NODES nodes ($(node_name 1)..$(node_name "$NODES")), $CPUS CPUs + 4 fake GPUs each, partition debug (SLURM_CONF=$CONF)"
}

# Another test cluster (the one-node one) may be using the munged this script started.
munge_in_use_elsewhere() {
    local pidfile
    for pidfile in /tmp/hmsa-slurm*/run/slurmctld.pid; do
        [[ $pidfile == "$DIR/run/slurmctld.pid" ]] && continue
        alive "$pidfile" && return 0
    done
    return 1
}

mn_down() {
    [[ -f $DIR/started ]] || { say "nothing started by this script"; return 0; }
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    local entry
    for entry in $(tac "$DIR/started"); do
        case $entry in
            slurmd:*) stop_pid "$entry" "$DIR/run/slurmd-${entry#slurmd:}.pid" ;;
            slurmctld | slurmdbd) stop_pid "$entry" "$DIR/run/$entry.pid" ;;
            mariadb) stop_pid mariadb "$DIR/run/mysqld.pid" ;;
            munged)
                if munge_in_use_elsewhere; then say "left munged running: the one-node cluster uses it"
                else stop_pid munged /run/munge/munged.pid; fi ;;
            netns:*) ip netns delete "${entry#netns:}" 2>/dev/null || true ;;
            link:*) ip link delete "${entry#link:}" 2>/dev/null || true ;;
        esac
    done
    if grep -qF "$HOSTS_TAG" /etc/hosts; then
        # Rewrite in place: /etc/hosts may be a bind mount that a rename would not replace.
        local kept
        kept="$(grep -vF "$HOSTS_TAG" /etc/hosts)"
        printf '%s\n' "$kept" >/etc/hosts
    fi
    rm -f "$DIR/started"
    say "down"
}

case "${1:-}" in
    up) mn_up ;;
    down) mn_down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    # The pid file first: with the bridge gone, the controller's address would be routed off this machine.
    status) alive "$DIR/run/slurmctld.pid" && scontrol ping && sinfo -N && squeue ;;
    *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
