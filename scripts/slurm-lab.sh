#!/usr/bin/env bash
# A Slurm "cluster" of one node, this machine, to try examples/slurm/pool.sbatch on:
#
#   sudo scripts/slurm-lab.sh up DIR     # munged, slurmctld and slurmd, all state in DIR
#   export SLURM_CONF=DIR/slurm.conf     # then sbatch, squeue, sinfo, srun talk to it
#   sudo scripts/slurm-lab.sh down DIR   # cancels its jobs, stops the daemons, removes DIR
#
# Needs Debian's slurm-wlm and munge packages (apt-get install slurm-wlm munge) and
# root. Nothing outside DIR is written or read: a munge key made for the lab, its own
# munged socket, and a slurm.conf whose one node is `localhost` (127.0.0.1) with this
# machine's CPUs, on ports chosen free. The daemons are stopped by the PIDs they
# recorded in DIR; any process left of the lab's jobs (known by SLURM_CONF=DIR/... in
# its environment) is killed too. `up` removes what it made if a step fails.
set -Eeuo pipefail

die() { echo "slurm-lab: $*" >&2; exit 1; }

need() {
    [[ $(id -u) == 0 ]] || die "needs root (Slurm's daemons run as root here): run it with sudo"
    local program
    for program in munged mungekey; do
        command -v "$program" >/dev/null || die "needs $program: apt-get install munge"
    done
    for program in slurmctld slurmd sbatch; do
        command -v "$program" >/dev/null || die "needs $program: apt-get install slurm-wlm"
    done
}

free_port() { # a port no socket uses, below the ephemeral range; at most 100 tried
    # Below the range the kernel hands to outgoing connections: a port above it can be
    # taken by any client socket between this check and the daemon's bind (seen when
    # the lab ran beside the other tests: "Unable to bind listen port").
    local low _high span port tries
    read -r low _high </proc/sys/net/ipv4/ip_local_port_range
    span=$((low - 10100))
    ((span > 0)) || span=30000 # no room below the range: take our chances
    port=$((10000 + RANDOM % span))
    for ((tries = 0; tries < 100; tries++)); do
        if [[ -z $(ss -Htan "sport = :$port" 2>/dev/null) ]] &&
            ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
        port=$((port + 1))
    done
    die "no free port among 100 on 127.0.0.1 from $((port - 100))"
}

# The processes whose environment names this lab's slurm.conf: the daemons (started
# with it) and everything of the lab's jobs (Slurm passes the submitter's environment
# on to them).
lab_processes() {
    local conf="SLURM_CONF=$1/slurm.conf" pid
    for pid in /proc/[0-9]*; do
        pid=${pid#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        if tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ" | grep -qxF "$conf"; then
            echo "$pid"
        fi
    done
}

up() {
    local dir=$1 port_ctld port_d node
    [[ -e $dir/slurm.conf ]] && die "$dir already holds a lab: $0 down $dir first"
    # slurmstepd makes a socket DIR/spool/localhost_JOB.STEP for each step, and a
    # socket's path holds at most 107 bytes; past that every job fails to launch.
    ((${#dir} <= 69)) || die "$dir is ${#dir} characters long; Slurm's sockets under it \
would pass the 107 a socket's path may hold: choose a DIR of at most 69 characters"
    trap 'echo "slurm-lab: setting up failed; removing what was made" >&2; down "$dir"' ERR
    mkdir -p "$dir/state" "$dir/spool"
    # munged refuses a socket folder that others cannot enter.
    chmod 711 "$dir"
    mungekey --create --keyfile="$dir/munge.key"
    munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"

    port_ctld=$(free_port)
    port_d=$(free_port)
    while [[ $port_d == "$port_ctld" ]]; do port_d=$(free_port); done
    # This machine's CPUs as slurmd counts them, under the name localhost.
    node=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]*//' -e 's/ RealMemory=[0-9]*//')
    cat >"$dir/slurm.conf" <<CONF
ClusterName=poollab
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port_ctld
SlurmdPort=$port_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName=localhost NodeAddr=127.0.0.1$node State=UNKNOWN
PartitionName=lab Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld
    slurmd -N localhost

    local waited=0
    until [[ $(sinfo --noheader --format=%T 2>/dev/null) == idle ]]; do
        if ((waited >= 30)); then
            echo "slurm-lab: the node is not idle after 30 s:" >&2
            sinfo >&2 || true
            tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
            false
        fi
        sleep 1
        waited=$((waited + 1))
    done
    trap - ERR
    echo "slurm lab up in $dir (slurmctld on port $port_ctld, slurmd on $port_d)"
    echo "export SLURM_CONF=$dir/slurm.conf"
}

stop_pid_file() { # the daemon whose PID the file holds, TERM then (after 10 s) KILL
    local file=$1 pid i
    [[ -s $file ]] || return 0
    pid=$(<"$file")
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

down() {
    local dir=$1 i pid
    [[ -d $dir ]] || die "no lab in $dir"
    if [[ -s $dir/slurmctld.pid ]] && kill -0 "$(<"$dir/slurmctld.pid")" 2>/dev/null; then
        export SLURM_CONF=$dir/slurm.conf
        scancel --full --signal=KILL --user=root 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            [[ -z $(squeue --noheader 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    stop_pid_file "$dir/slurmd.pid"
    stop_pid_file "$dir/slurmctld.pid"
    stop_pid_file "$dir/munged.pid"
    for pid in $(lab_processes "$dir"); do
        kill -KILL "$pid" 2>/dev/null && echo "slurm-lab: killed $pid, left of the lab's jobs"
    done
    rm -rf "$dir"
    echo "slurm lab in $dir removed"
}

case ${1:-} in
up | down)
    [[ -n ${2:-} ]] || die "usage: $0 $1 DIR"
    need
    "$1" "$(realpath -m "$2")"
    ;;
*) die "usage: $0 up DIR | down DIR" ;;
esac
