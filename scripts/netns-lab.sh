#!/usr/bin/env bash
# Several machines on one: a lab of network namespaces to try pool by hand.
#
#   sudo scripts/netns-lab.sh up [SERVERS] [RATE]   # default: 3 servers, 1gbit
#   sudo scripts/netns-lab.sh status
#   sudo scripts/netns-lab.sh cut N | mend N        # pull out / plug in server N's cable
#   sudo scripts/netns-lab.sh down
#
# The same shape as the tests' lab (client/src/netlab.rs): a "switch" namespace
# holding a bridge, one namespace per server (10.77.0.10, .11, ...) and one for the
# client (10.77.0.2), each joined to the bridge by a veth pair whose two ends are
# limited to RATE by tc tbf. Nothing is added to the machine's own namespace, so the
# lab cannot reach, or be reached from, the real network. netem delay is added where
# the kernel has it. `up` removes what it made if any step fails.
set -Eeuo pipefail

NAME=pooldemo
SW=$NAME-sw
CLIENT=$NAME-c

die() { echo "netns-lab: $*" >&2; exit 1; }

need() {
    [[ $(id -u) == 0 ]] || die "needs root (network namespaces): run it with sudo"
    command -v ip >/dev/null && command -v tc >/dev/null \
        || die "needs iproute2 (ip, tc): apt-get install iproute2"
}

down() {
    local ns pid
    for ns in $(ip netns list | awk '{print $1}' | grep "^$NAME-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" && echo "removed $ns"
    done
}

limit() { # namespace device rate: tbf on the device's egress, netem under it if possible
    ip netns exec "$1" tc qdisc add dev "$2" root handle 1: tbf rate "$3" burst 128kb latency 10ms
    if [[ $NETEM == yes ]] && ! ip netns exec "$1" tc qdisc add dev "$2" parent 1:1 handle 10: \
        netem delay 50us 2>/dev/null; then
        NETEM=no
        echo "note: this kernel has no netem: the links have no added delay"
    fi
}

up() {
    local servers=${1:-3} rate=${2:-1gbit} i ns addr port
    ip netns list | grep -q "^$SW" && die "a lab is already up: $0 down first"
    # A step that fails leaves nothing behind.
    trap 'echo "netns-lab: setting up failed; removing what was made" >&2; down' ERR
    NETEM=yes
    ip netns add "$SW"
    ip -n "$SW" link set lo up
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 up
    for ((i = 0; i <= servers; i++)); do
        if ((i == servers)); then
            ns=$CLIENT addr=10.77.0.2 port=c
        else
            ns=$NAME-s$i addr=10.77.0.$((10 + i)) port=s$i
        fi
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$SW" link add "$port" type veth peer name eth0 netns "$ns"
        ip -n "$SW" link set "$port" master br0
        ip -n "$SW" link set "$port" up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        limit "$SW" "$port" "$rate"
        limit "$ns" eth0 "$rate"
        echo "$ns: $addr (cable $port, $rate each way)"
    done
    trap - ERR
    cat <<EOF

Start a server in each server namespace (the binaries are in target/release/):
  sudo ip netns exec $NAME-s0 target/release/pool-server --bind 10.77.0.10 --port 7000 --token lab
and run the client in the client namespace:
  sudo ip netns exec $CLIENT env POOL_TOKEN=lab target/release/pool-client examples/loop.toml \\
      --servers 10.77.0.10:7000,10.77.0.11:7000,10.77.0.12:7000
EOF
}

status() {
    local ns
    for ns in $(ip netns list | awk '{print $1}' | grep "^$NAME-" || true); do
        echo "== $ns"
        ip -n "$ns" -brief addr show
        ip netns exec "$ns" tc qdisc show | grep -v noqueue || true
    done
}

cable() { # up|down N
    [[ ${2:-} =~ ^[0-9]+$ ]] || die "which server? e.g. $0 cut 1"
    ip -n "$SW" link set "s$2" "$1"
    echo "server $2's cable: $1"
}

need
case ${1:-} in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    cut) cable down "${2:-}" ;;
    mend) cable up "${2:-}" ;;
    *) die "usage: $0 up [SERVERS] [RATE] | status | cut N | mend N | down" ;;
esac
