#!/usr/bin/env bash
# The chain as deployed, am-node against redis, in one run on the same CPUs: a chain of
# separate redis-server processes (root + HOPS chained replicas, `replicaof`, no persistence)
# started by scripts/compare-redis.py and timed by `am-node bench redis-chain` (SET at the root,
# keyspace notification at each depth: the same Rust client that times am-node's chain),
# then `am-node bench chain --processes` with the same hops. Both print a row per depth
# (depth 0: a second client of the root), p50/p99/max from the write sent to the change seen.
# A benchmark, not a test: figures vary with what else runs on the machine.
#
#   scripts/compare-redis.sh [--hops 3] [--flips 2000] [--pin CPUS]
#   AM_NODE_BIN=target/release/am-node scripts/compare-redis.sh --pin 0
#
# --pin CPUS runs everything (both clients, every server and node) on CPUS: redis under
# `taskset -c CPUS`, am-node with its own --pin. Without it, nothing is pinned. Installs
# redis-server and redis-tools with apt-get when redis-server is missing (needs root then).
set -euo pipefail
cd "$(dirname "$0")/.."

hops=3
flips=2000
pin=
while [ $# -gt 0 ]; do
    case $1 in
        --hops) hops=$2; shift 2 ;;
        --flips) flips=$2; shift 2 ;;
        --pin) pin=$2; shift 2 ;;
        *) echo "unknown argument $1; use --hops N, --flips N, --pin CPUS" >&2; exit 2 ;;
    esac
done
[[ $hops =~ ^[0-9]+$ ]] && [ "$hops" -ge 1 ] && [ "$hops" -le 16 ] \
    || { echo "--hops must be 1 to 16" >&2; exit 2; }
[[ $flips =~ ^[0-9]+$ ]] && [ "$flips" -ge 1 ] || { echo "--flips must be a positive number" >&2; exit 2; }

if ! command -v redis-server >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "redis-server is missing and installing it needs root: run this as root, or" \
             "install it first (apt-get install redis-server redis-tools)" >&2
        exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools >&2
fi
command -v python3 >/dev/null || { echo "compare-redis.sh needs python3 (3.11)" >&2; exit 2; }

# AM_NODE_BIN: an am-node already built; else a release build.
if [ -n "${AM_NODE_BIN:-}" ]; then
    bin=$AM_NODE_BIN
else
    cargo build --release --locked -p am-node >&2
    bin=$PWD/target/release/am-node
fi

redis=(python3 scripts/compare-redis.py --hops "$hops" --flips "$flips" --timer "$bin")
am=("$bin" bench chain --processes --hops "$hops" --iterations "$flips")
if [ -n "$pin" ]; then
    redis=(taskset -c "$pin" "${redis[@]}")
    am+=(--pin "$pin")
fi

echo "== redis: ${redis[*]}"
"${redis[@]}"
echo
echo "== am-node: ${am[*]}"
"${am[@]}" 2> >(tr '\r' '\n' | grep -v '^chain --processes:' >&2)
