#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the `slurm` tests (and for trying the SLURM
# profile by hand): munge, MariaDB + slurmdbd (so `sacct` is real), slurmctld, slurmd, bound to
# 127.0.0.1, with 4 fake GPUs (GRES backed by /dev/null) so multi-GPU requests are really scheduled.
#
#   tests/slurm/cluster.sh up       install (Debian, as root) if needed, configure, start, wait until idle
#   tests/slurm/cluster.sh down     stop only the daemons this script started
#   tests/slurm/cluster.sh env      print `export SLURM_CONF=...` for a shell
#   tests/slurm/cluster.sh status
#
# Idempotent: `up` on a running cluster only checks it. Everything lives under $HMSA_SLURM_DIR
# (default /tmp/hmsa-slurm); the config is passed through SLURM_CONF so /etc/slurm is never touched.
# Exit status 3 means "cannot be installed here" (not root and no SLURM): the tests skip with that reason.
set -euo pipefail

DIR="${HMSA_SLURM_DIR:-/tmp/hmsa-slurm}"
CONF="$DIR/etc/slurm.conf"
NODE="$(hostname -s)"
CPUS="${HMSA_SLURM_CPUS:-8}"  # advertised CPUs (config_overrides): lets several tasks share 2 real cores
MEM_MB="${HMSA_SLURM_MEM_MB:-16000}"
DB_PORT="${HMSA_SLURM_DB_PORT:-3307}"  # the private MariaDB's port (multinode.sh runs its own on another)
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
export SLURM_CONF="$CONF"

say() { echo "cluster.sh: $*" >&2; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        say "SLURM is not installed and cannot be installed here (needs root and apt-get): ${PACKAGES[*]}"
        exit 3
    fi
    say "installing ${PACKAGES[*]} (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    say "timed out after ${limit}s waiting for $what (logs: $DIR/log)"
    exit 1
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# started NAME: remember that this script started NAME, so `down` stops only what it started.
started() { echo "$1" >>"$DIR/started"; }

# The slurm.conf lines both test clusters share: process tracking without cgroups, scheduling and
# memory accounting that let many small jobs run at once and start at once.
scheduling_conf() {
    cat <<'EOF'
# No cgroups on this machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
# DefMemPerCPU: without it every job takes the node's whole memory and jobs run one at a time.
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# Schedule at once instead of every few seconds.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=2,bf_interval=1
# Keep finished jobs visible to scontrol for an hour.
MinJobAge=3600
ReturnToService=2
EOF
}

# slurmdbd.conf for the private MariaDB; DBD_PORT (optional) moves slurmdbd off its default port.
write_slurmdbd_conf() {
    {
        printf '%s\n' AuthType=auth/munge DbdHost=localhost DbdAddr=127.0.0.1
        [[ -z ${DBD_PORT:-} ]] || echo "DbdPort=$DBD_PORT"
        cat <<EOF
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=hmsa-test
StorageLoc=slurm_acct_db
EOF
    } >"$DIR/etc/slurmdbd.conf"
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

write_configs() {
    mkdir -p "$DIR"/{etc,state,spool,log,run,gpu,mysql}
    # Fake GPUs: gres.conf needs device files; symlinks to /dev/null are accepted (plain files are not).
    for i in 0 1 2 3; do ln -sfn /dev/null "$DIR/gpu/nvidia$i"; done
    # The node name must resolve to loopback.
    getent hosts "$NODE" >/dev/null || echo "127.0.0.1 $NODE" >>/etc/hosts
    cat >"$CONF" <<EOF
# Written by tests/slurm/cluster.sh: a one-node test cluster on 127.0.0.1.
ClusterName=hmsa
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=10
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$(scheduling_conf)
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/gpu/nvidia[0-3]
EOF
    write_slurmdbd_conf
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    [[ -f /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
    started munged
    wait_for 20 munged sh -c 'munge -n </dev/null | unmunge'
}

# A private MariaDB instance (own datadir, port $DB_PORT, loopback) for slurmdbd's accounting.
start_mariadb() {
    local sock="$DIR/run/mysqld.sock"
    if alive "$DIR/run/mysqld.pid"; then return 0; fi
    if [[ ! -d $DIR/mysql/mysql ]]; then
        chown mysql:mysql "$DIR/mysql"
        mariadb-install-db --user=mysql --datadir="$DIR/mysql" --auth-root-authentication-method=socket \
            >"$DIR/log/mariadb-install.log" 2>&1
    fi
    # mariadbd runs as user mysql: it must be able to write its socket, pid and log.
    touch "$DIR/log/mariadb.log"
    chown mysql:mysql "$DIR/log/mariadb.log"
    chmod 1777 "$DIR/run"
    mariadbd --user=mysql --datadir="$DIR/mysql" --socket="$sock" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --pid-file="$DIR/run/mysqld.pid" --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M \
        --skip-name-resolve &
    disown
    started mariadb
    wait_for 60 mariadb mariadb --socket="$sock" -e "select 1"
    mariadb --socket="$sock" <<'EOF'
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'hmsa-test';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'hmsa-test';
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

# slurmdbd (with CLUSTER registered in accounting) and slurmctld, each started unless running.
start_controller() {
    local cluster=$1
    if ! alive "$DIR/run/slurmdbd.pid"; then
        slurmdbd
        started slurmdbd
    fi
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -n list cluster format=cluster | grep -qw "$cluster" || sacctmgr -i add cluster "$cluster" >/dev/null
    if ! alive "$DIR/run/slurmctld.pid"; then
        slurmctld
        started slurmctld
    fi
    wait_for 60 slurmctld scontrol ping
}

# Wait until node NAME has registered and is idle; a node left down (a test, a crash) comes back
# when told to.
node_ready() {
    local name=$1
    wait_for 60 "node $name to register" sh -c "sinfo -h -n $name -o %t | grep -qv -e unk -e '^$'"
    scontrol update nodename="$name" state=resume >/dev/null 2>&1 || true
    wait_for 60 "node $name idle" sh -c "sinfo -h -n $name -o %t | grep -q -e idle -e mix -e alloc"
}

start_slurm() {
    start_controller hmsa
    if ! alive "$DIR/run/slurmd.pid"; then
        slurmd
        started slurmd
    fi
    node_ready "$NODE"
    # sacct must work: submitit reads job states from it.
    wait_for 30 sacct sacct -n -X -S now-1minutes
}

up() {
    install_packages
    mkdir -p "$DIR"
    write_configs
    start_munge
    start_mariadb
    start_slurm
    say "up: $NODE, $CPUS CPUs, 4 fake GPUs, partition debug (SLURM_CONF=$CONF)"
}

stop_pid() {
    local name=$1 pidfile=$2
    local pid
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
    say "stopped $name"
}

down() {
    [[ -f $DIR/started ]] || { say "nothing started by this script"; return 0; }
    # Cancel what is left so no job outlives the cluster.
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    local started_list
    started_list="$(tac "$DIR/started")"
    for name in $started_list; do
        case $name in
            slurmd | slurmctld | slurmdbd) stop_pid "$name" "$DIR/run/$name.pid" ;;
            mariadb) stop_pid mariadb "$DIR/run/mysqld.pid" ;;
            munged) stop_pid munged /run/munge/munged.pid ;;
        esac
    done
    rm -f "$DIR/started"
}

# Sourced by multinode.sh for its helpers (install, munge, MariaDB, pid files): no command then.
[[ ${BASH_SOURCE[0]} == "$0" ]] || return 0

case "${1:-}" in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    status) scontrol ping && sinfo && squeue ;;
    *) echo "usage: $0 up|down|env|status" >&2; exit 2 ;;
esac
