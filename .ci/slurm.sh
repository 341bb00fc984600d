#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for tests/test_slurm.py (CI runs as root).
#
#   eval "$(bash .ci/slurm.sh start)"   # install Debian's packages if missing, start the daemons, wait for the node
#   bash .ci/slurm.sh stop     # stop what `start` started (by pid file) and delete the state directory
#
# Clients find the cluster with SLURM_CONF=$CSRAE_SLURM_DIR/slurm.conf (default /tmp/csrae-slurm);
# `start` prints that line. Daemons: munged (authentication, a fresh key), a MariaDB server on a unix
# socket only (no TCP), slurmdbd (accounting), slurmctld, slurmd. Accounting is real so that `sacct`
# works: submitit polls job states with sacct, and without accounting it logs a warning at every poll
# and cannot tell that a job died without writing its result. SLURM's daemons have no bind-address
# setting; they listen on their ports (6817-6819) and accept only requests signed with the munge key.
set -euo pipefail

DIR=${CSRAE_SLURM_DIR:-/tmp/csrae-slurm}
MYSQL_SOCK=/run/mysqld/mysqld.sock   # the client library's default socket: slurmdbd finds it unconfigured

log() { echo "slurm.sh: $*" >&2; }

stop_pidfile() {  # stop_pidfile NAME FILE: SIGTERM the daemon whose pid is in FILE, wait for it to exit
    local name=$1 file=$2 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        log "stopped $name ($pid)"
    fi
    rm -f "$file"
}

install_packages() {
    local missing=()
    for cmd in munged slurmctld slurmd slurmdbd sinfo mariadbd; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing slurmctld slurmd slurmdbd slurm-client munge mariadb-server (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurmdbd slurm-client munge mariadb-server \
        >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "error: $what did not come up within ${seconds}s; logs in $DIR"
    tail -n 20 "$DIR"/*.log "$DIR"/*/*.log >&2 2>/dev/null || true
    return 1
}

start() {
    if [ "$(id -u)" != 0 ]; then echo "slurm.sh: error: needs root (CI runs as root)" >&2; exit 2; fi
    install_packages
    stop >/dev/null 2>&1 || true
    mkdir -p "$DIR"/{state,spool,munge,mysql}
    chmod 755 "$DIR"

    # munge: a fresh key for this cluster only.
    chown munge:munge "$DIR/munge"
    chmod 700 "$DIR/munge"
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chown munge:munge "$DIR/munge/munge.key"
    chmod 400 "$DIR/munge/munge.key"
    mkdir -p /run/munge
    chown munge:munge /run/munge
    MUNGE_SOCKET=/run/munge/munge.socket.2   # munge's default: the SLURM plugins look there
    runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed" --force
    cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
    wait_for 10 munged bash -c "munge -n | unmunge"

    # MariaDB for slurmdbd: unix socket only; root logs in through the socket (no password anywhere).
    chown mysql:mysql "$DIR/mysql"
    mkdir -p /run/mysqld
    chown mysql:mysql /run/mysqld
    mariadb-install-db --user=mysql --datadir="$DIR/mysql/data" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/mysql-install.log" 2>&1
    (mariadbd --user=mysql --datadir="$DIR/mysql/data" --socket="$MYSQL_SOCK" --skip-networking \
        --pid-file="$DIR/mysql/mysqld.pid" --log-error="$DIR/mysql/mysqld.log" >/dev/null 2>&1 &)
    wait_for 30 mariadb mariadb --socket="$MYSQL_SOCK" -e "select 1"

    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/slurmdbd.log
EOF
    chmod 600 "$DIR/slurmdbd.conf"
    # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF.
    SLURM_CONF="$DIR/slurm.conf" slurmdbd

    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)   # MB the jobs may ask for
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=csrae
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$DIR/slurm.conf"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF" -N localhost
    wait_for 60 "the node" bash -c "sinfo -h -N -o '%t' | grep -qx idle"
    wait_for 30 sacct sacct -n -X
    log "up: $(sinfo -h -o '%P %D node(s) %c CPUs %t'), accounting via slurmdbd"
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
    stop_pidfile slurmd "$DIR/slurmd.pid"
    stop_pidfile slurmctld "$DIR/slurmctld.pid"
    stop_pidfile slurmdbd "$DIR/slurmdbd.pid"
    stop_pidfile mariadbd "$DIR/mysql/mysqld.pid"
    stop_pidfile munged "$DIR/munged.pid"
    rm -rf "$DIR"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
