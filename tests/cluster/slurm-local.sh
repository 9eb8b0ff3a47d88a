#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests marked `slurm` (tests/cluster/test_slurm.py).
#
#   tests/cluster/slurm-local.sh start [--wipe]   install what is missing, start the daemons, wait for an idle node
#   tests/cluster/slurm-local.sh stop [--wipe]    cancel the jobs, stop the daemons (by pid); --wipe: forget all state
#   tests/cluster/slurm-local.sh status           each daemon and the node; exit 0 only when the cluster takes jobs
#   tests/cluster/slurm-local.sh env              the line that points SLURM's commands at it (eval "$(... env)")
#
# Debian bookworm's SLURM 22.05 (slurmctld, slurmd, slurm-client, slurmdbd) with munge and MariaDB for accounting:
# without slurmdbd `sacct` fails, submitit reads every job state as UNKNOWN and waits forever for a cancelled job.
# No systemd and no cgroups: proctrack/linuxproc, task/none (so memory limits are not enforced). Runs as root (re-runs
# itself with sudo when it can). Everything it writes lives under $LLMLAB_SLURM_DIR (default /var/tmp/llmlab-slurm):
# the configs (etc/), spool, logs, pid files and the accounting database (munged's socket is the default one). SLURM's commands find the
# cluster through SLURM_CONF=$LLMLAB_SLURM_DIR/etc/slurm.conf; nothing under /etc is changed. Ports: $LLMLAB_SLURM_PORT
# (default 6817) for slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB (127.0.0.1 only).
set -euo pipefail

STATE=${LLMLAB_SLURM_DIR:-/var/tmp/llmlab-slurm}
PORT=${LLMLAB_SLURM_PORT:-6817}
CLUSTER=llmlab
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; stopped in reverse
export SLURM_CONF="$STATE/etc/slurm.conf"

say() { echo "slurm-local: $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            exec sudo -E "$0" "$@"
        fi
        die "needs root (it installs packages and runs munged and mariadbd as their own users)"
    fi
}

# ------------------------------------------------------------------------------------------------------- packages

install_missing() {
    local missing=() cmd
    for cmd in slurmctld slurmd sinfo slurmdbd munged mariadbd mariadb-install-db; do
        command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get: install ${PACKAGES[*]} (SLURM 22.05)"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d keeps the packages' init scripts from starting system-wide daemons; this script starts its own.
    local policy=/usr/sbin/policy-rc.d created=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    [ "$created" = 1 ] && rm -f "$policy"
    return 0
}

# ------------------------------------------------------------------------------------------------- pids, liveness

pidfile() {
    case $1 in
        munged) echo "$STATE/munge/munged.pid" ;;
        mariadbd) echo "$STATE/mysql-run/mariadbd.pid" ;;
        *) echo "$STATE/run/$1.pid" ;;
    esac
}

# The pid of a running daemon, from its pid file, if that process is still the daemon (not a reused pid).
daemon_pid() {
    local file pid
    file=$(pidfile "$1")
    [ -s "$file" ] || return 1
    pid=$(tr -dc '0-9' <"$file")
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm")" = "$1" ] || return 1
    echo "$pid"
}

running() { daemon_pid "$1" >/dev/null; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll COMMAND every 0.5 s
    local seconds=$1 what=$2
    shift 2
    local end=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.5
    done
}

# -------------------------------------------------------------------------------------------------------- configs

write_configs() {
    local host node mem cpus line
    mkdir -p "$STATE"/{etc,run,log,spool/ctld,spool/d}
    chmod 755 "$STATE"
    # The node as slurmd sees it: real CPUs and topology, RealMemory a little under the machine's.
    line=$(slurmd -C | head -1)
    host=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$line")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$line")
    mem=$((mem * 95 / 100))
    node=$(sed "s/RealMemory=[0-9]*/RealMemory=$mem/" <<<"$line")
    cat >"$STATE/etc/slurm.conf" <<EOF
# Written by tests/cluster/slurm-local.sh: a one-node test cluster (no systemd, no cgroups).
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Credentials of a requeued job expire after 10 s (default 120 s): a requeued job starts again ~15 s later.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobRequeue=1
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT + 2))
JobCompType=jobcomp/none
SlurmctldTimeout=60
SlurmdTimeout=120
MinJobAge=300
KillWait=30
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=long Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF
    cat >"$STATE/etc/slurmdbd.conf" <<EOF
# Written by tests/cluster/slurm-local.sh: accounting in the MariaDB under $STATE/mysql.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=llmlab
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$STATE/etc/slurmdbd.conf"
}

# ---------------------------------------------------------------------------------------------------------- start

start_munged() {
    install -d -o munge -g munge -m 755 "$STATE/munge"  # munged wants its socket's directory searchable by all
    local key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
        install -d -o munge -g munge -m 700 /etc/munge
        runuser -u munge -- mungekey --create --keyfile="$key"
    fi
    # The default socket (/run/munge): SLURM 22.05 ignores AuthInfo=socket= for its connections to slurmdbd.
    install -d -o munge -g munge -m 755 /run/munge
    runuser -u munge -- munged --pid-file="$(pidfile munged)" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed" --key-file="$key"
    wait_for 20 munged munge -n || die "munged did not start ($STATE/munge/munged.log)"
}

sql() { mariadb --no-defaults --socket="$STATE/mysql-run/mysqld.sock" -u root -e "$1"; }

start_mariadbd() {
    install -d -o mysql -g mysql -m 750 "$STATE/mysql" "$STATE/mysql-run"
    if [ ! -d "$STATE/mysql/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$STATE/mysql" --user=mysql --skip-test-db \
            --auth-root-authentication-method=socket >"$STATE/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed ($STATE/log/mariadb-install.log)"
    fi
    # --user: mariadbd refuses to run as root. The socket is for this script; slurmdbd uses TCP on 127.0.0.1.
    setsid mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" --socket="$STATE/mysql-run/mysqld.sock" \
        --pid-file="$(pidfile mariadbd)" --port=$((PORT + 3)) --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$STATE/log/mariadbd.log" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$STATE/log/mariadbd.log" 2>&1 &
    wait_for 60 mariadbd sql "SELECT 1" || die "mariadbd did not start ($STATE/log/mariadbd.log)"
    wait_for 10 "mariadbd pid" running mariadbd || die "mariadbd wrote no pid file ($STATE/log/mariadbd.log)"
    sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'llmlab';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    slurmdbd || die "slurmdbd did not start ($STATE/log/slurmdbd.log)"
    # Listening once `sacctmgr` gets an answer (it creates the tables on first start).
    wait_for 60 slurmdbd sacctmgr -i -n list cluster || die "slurmdbd does not answer ($STATE/log/slurmdbd.log)"
}

start_slurmctld() {
    slurmctld || die "slurmctld did not start ($STATE/log/slurmctld.log)"
    wait_for 30 slurmctld scontrol ping || die "slurmctld does not answer ($STATE/log/slurmctld.log)"
}

start_slurmd() {
    slurmd || die "slurmd did not start ($STATE/log/slurmd.log)"
}

node_state() { sinfo -h -N -o %T 2>/dev/null | head -1; }

node_ready() { case $(node_state) in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

start() {
    install_missing
    local d any=0
    for d in "${DAEMONS[@]}"; do running "$d" && any=1; done
    [ "$any" = 1 ] || write_configs  # a running cluster keeps the config it started with
    for d in "${DAEMONS[@]}"; do
        if running "$d"; then
            say "$d already running (pid $(daemon_pid "$d"))"
        elif [ "$d" = munged ] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            say "munged: using the one already running (not ours: stop leaves it alone)"
        else
            "start_$d"
            say "$d started (pid $(daemon_pid "$d" || echo '?'))"
        fi
    done
    # The cluster registers itself in the accounting database when slurmctld first reaches slurmdbd.
    wait_for 30 "cluster registration" sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER" ||
        say "warning: cluster $CLUSTER not (yet) registered in accounting"
    if ! node_ready; then
        scontrol update nodename="$(sinfo -h -N -o %N | head -1)" state=resume >/dev/null 2>&1 || true
    fi
    wait_for 60 "an idle node" node_ready || die "node is $(node_state) ($STATE/log/slurmd.log, slurmctld.log)"
    say "up: node $(sinfo -h -N -o '%N %T, %c CPUs, %m MB' | head -1); partitions $(sinfo -h -o %P | tr '\n' ' ')"
    say "use it with: export SLURM_CONF=$SLURM_CONF"
}

# ----------------------------------------------------------------------------------------------------------- stop

stop_daemon() {
    local pid
    pid=$(daemon_pid "$1") || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    local end=$((SECONDS + 30))
    while [ -e "/proc/$pid" ] && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if [ -e "/proc/$pid" ]; then
        say "$1 (pid $pid) ignores SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    say "$1 stopped (pid $pid)"
}

stop() {
    if running slurmctld; then  # no job outlives its cluster
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            wait_for 45 "jobs to end" sh -c '[ -z "$(squeue -h -t R,CG -o %A 2>/dev/null)" ]' ||
                say "warning: jobs still running"
        fi
    fi
    local i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop_daemon "${DAEMONS[i]}"; done
}

wipe() {
    local d
    for d in "${DAEMONS[@]}"; do running "$d" && die "$d still runs; not wiping"; done
    # Spool and accounting go together: job ids restart at 1 with an empty spool, and old accounting rows under the
    # same ids would confuse sacct (and submitit, which reads job states from it).
    rm -rf "$STATE/spool" "$STATE/mysql" "$STATE/mysql-run" "$STATE/log" "$STATE/run" "$STATE/etc"
    say "wiped $STATE (spool, accounting database, logs, configs)"
}

# --------------------------------------------------------------------------------------------------------- status

status() {
    local d ok=0
    for d in "${DAEMONS[@]}"; do
        if running "$d"; then echo "$d: running (pid $(daemon_pid "$d"))"; else echo "$d: stopped"; ok=3; fi
    done
    if [ -f "$SLURM_CONF" ] && running slurmctld; then
        echo "node: $(sinfo -h -N -o "%N %T" 2>/dev/null | head -1)"
        node_ready || ok=3
    fi
    echo "SLURM_CONF=$SLURM_CONF"
    return $ok
}

# ----------------------------------------------------------------------------------------------------------- main

cmd=${1:-}
shift || true
wipe_too=0
for arg in "$@"; do
    case $arg in
        --wipe) wipe_too=1 ;;
        *) usage ;;
    esac
done
case $cmd in
    start)
        need_root start "$@"
        if [ "$wipe_too" = 1 ]; then stop && wipe; fi
        start
        ;;
    stop)
        need_root stop "$@"
        stop
        if [ "$wipe_too" = 1 ]; then wipe; fi
        ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) usage ;;
esac
