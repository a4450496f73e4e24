#!/usr/bin/env bash
# A tree across real network boundaries: root <- a <- b, each node in its own network
# namespace with its own address, linked by veth pairs, each run as
# `am-node run FILE --node NAME` inside its namespace. The script checks the tree converges,
# partitions the root-a link by taking its veth down, mutates the root (b must not see it) and
# from b (`am-node add` at b, which must wait and run once), restores the link, and checks b
# converges to the root and b's mutation ran exactly once. Every namespace it made is deleted
# on exit, also on failure. Needs root (ip netns). DEPLOYMENT.md's multi-host commands are these,
# with namespaces standing in for hosts.
#
#   scripts/netns-tree.sh [PARTITION_SECONDS]     (default 5; past 30 the mirrors' idle
#                                                  timeout fires and they reconnect)
#   AM_NODE_BIN=target/debug/am-node scripts/netns-tree.sh 3    (as scripts/test.sh runs it)
set -euo pipefail
cd "$(dirname "$0")/.."

partition=${1:-5}
[ "$(id -u)" -eq 0 ] || { echo "netns-tree.sh needs root (ip netns); run it with sudo" >&2; exit 2; }
command -v ip >/dev/null || { echo "netns-tree.sh needs iproute2 (apt-get install iproute2)" >&2; exit 2; }

# AM_NODE_BIN: an am-node already built (scripts/test.sh passes the debug one); else a release build.
if [ -n "${AM_NODE_BIN:-}" ]; then
    bin=$AM_NODE_BIN
else
    cargo build --release --locked -p am-node
    bin=$PWD/target/release/am-node
fi
work=$(mktemp -d /tmp/am-netns.XXXXXX)
tag=am$$
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in root a b; do ip netns del "$tag-$n" 2>/dev/null || true; done
    echo "cleaned up namespaces $tag-{root,a,b}; logs in $work"
}
trap cleanup EXIT

# Namespaces and links: root 10.77.1.1 <-> 10.77.1.2 a 10.77.2.1 <-> 10.77.2.2 b
for n in root a b; do
    ip netns add "$tag-$n"
    ip -n "$tag-$n" link set lo up
done
link() { # NS1 IF1 ADDR1 NS2 IF2 ADDR2
    ip link add "$2" netns "$tag-$1" type veth peer name "$5" netns "$tag-$4"
    ip -n "$tag-$1" addr add "$3/24" dev "$2"
    ip -n "$tag-$4" addr add "$6/24" dev "$5"
    ip -n "$tag-$1" link set "$2" up
    ip -n "$tag-$4" link set "$5" up
}
link root "r-a" 10.77.1.1 a "a-r" 10.77.1.2
link a "a-b" 10.77.2.1 b "b-a" 10.77.2.2

cat >"$work/tree.toml" <<'TOML'
[schemas.demo]
states = [{ name = "A" }, { name = "B" }, { name = "Op", multi = true }]

[[nodes]]
name = "root"
listen = ["tcp://10.77.1.1:7500"]
machines = [{ name = "demo", schema = "demo" }]

[[nodes]]
name = "a"
listen = ["tcp://10.77.2.1:7501"]
machines = [{ name = "demo", upstream = "root" }]

[[nodes]]
name = "b"
listen = ["tcp://10.77.2.2:7502"]
machines = [{ name = "demo", upstream = "a" }]
TOML

declare -A addr=([root]=10.77.1.1:7500 [a]=10.77.2.1:7501 [b]=10.77.2.2:7502)
for n in root a b; do
    ip netns exec "$tag-$n" "$bin" run "$work/tree.toml" --node "$n" --report-ms 0 \
        >"$work/$n.log" 2>&1 &
    pids+=($!)
done

# The node's clock as its own status reports it (asked from inside its namespace).
ticks() {
    ip netns exec "$tag-$1" "$bin" status "tcp://${addr[$1]}" --json 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["sources"][0]["ticks"])' 2>/dev/null ||
        echo down
}
# Waits until b's clock equals the root's; prints how long it took.
converge() { # WHAT TIMEOUT_SECONDS
    local start=$SECONDS
    while [ $((SECONDS - start)) -lt "$2" ]; do
        local r
        r=$(ticks root)
        if [ "$r" != down ] && [ "$(ticks a)" = "$r" ] && [ "$(ticks b)" = "$r" ]; then
            echo "$1: every node at $r after $((SECONDS - start)) s"
            return 0
        fi
        sleep 0.2
    done
    echo "FAILED: $1: root $(ticks root), a $(ticks a), b $(ticks b) after $2 s" >&2
    return 1
}
mutate_root() {
    ip netns exec "$tag-root" "$bin" add "tcp://${addr[root]}/demo" "$@" >/dev/null
}

converge "start" 30
mutate_root A
converge "a mutation at the root" 10

echo "partition: a-r down for ${partition}s"
ip -n "$tag-a" link set a-r down
mutate_root B
mutate_root Op
# A mutation from the far side of the partition: it waits for the link and runs once.
ip netns exec "$tag-b" "$bin" add "tcp://${addr[b]}/demo" Op --timeout 60s >"$work/add-b.log" 2>&1 &
add_b=$!
sleep 1
if [ "$(ticks b)" = "$(ticks root)" ]; then
    echo "FAILED: b saw the root's change across a partitioned link" >&2
    exit 1
fi
echo "during the partition: root $(ticks root), b $(ticks b)"
sleep "$partition"
ip -n "$tag-a" link set a-r up
echo "link restored"
converge "after the partition" 60
wait "$add_b" || { echo "FAILED: b's add across the partition: $(cat "$work/add-b.log")" >&2; exit 1; }
# Op activated twice (once at the root, once from b): tick 3, not 5.
want="[1, 1, 3, 0]"
converge "b's mutation" 30
[ "$(ticks root)" = "$want" ] || { echo "FAILED: root $(ticks root), want $want (b's add ran once)" >&2; exit 1; }
echo "b's add across the partition ran once: root $(ticks root)"
echo "netns tree: ok"
