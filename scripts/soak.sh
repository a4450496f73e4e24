#!/usr/bin/env bash
# A long soak of real am-node processes: a four-node chain under load from the root and the
# leaf, interior nodes killed (SIGKILL) and restarted at least 20 times, their links cut,
# stalled, delayed and reset through `am-node fault-proxy`; then every node must
# equal the root, and the root must have run each mutation the leaf saw Executed exactly once.
#
#   scripts/soak.sh [SECONDS] [extra scripts/soak.py flags]     (default: 300 s)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
shift || true
cargo build --release --locked -p am-node
exec python3 scripts/soak.py --binary target/release/am-node --seconds "$seconds" "$@"
