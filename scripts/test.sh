#!/usr/bin/env bash
# Runs the whole test suite: unit, integration, property and process tests of every package,
# doc tests, each benchmark once in test mode, the JavaScript client's tests (node --test), and
# the browser tests in headless Chromium. Builds the WebAssembly module those run on
# (scripts/build-wasm.sh) and installs what the suite needs that a fresh machine lacks
# (Chromium, and the wasm toolchain when rustup has no wasm target, from Debian's packages).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
if ! command -v node >/dev/null 2>&1; then
  echo "node is missing: install Node.js 20 or later (the JavaScript client's tests need it)" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the browser test..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing: sudo apt-get install chromium (the browser test needs it)" >&2
    exit 1
  fi
fi
if ! command -v tmux >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing tmux for the REPL's terminal test..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux >/dev/null
  else
    echo "tmux is missing: sudo apt-get install tmux (the REPL's terminal test needs it)" >&2
    exit 1
  fi
fi
# The browser tests and the REPL's terminal test must run here, never skip.
export AM_REQUIRE_BROWSER=1
export AM_REQUIRE_TMUX=1

# The page's module: the JavaScript tests and the browser tests load it.
scripts/build-wasm.sh --locked

cargo test --workspace --locked
cargo test --workspace --locked --benches
node --test relay/web/test/

# The multi-host proof of DEPLOYMENT.md: its commands across network namespaces. They need root
# and a kernel that lets this machine make them; elsewhere it is said and skipped.
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && ip netns add "am-probe-$$" 2>/dev/null; then
  ip netns del "am-probe-$$"
  cargo build --locked -p am-node
  AM_NODE_BIN="$PWD/target/debug/am-node" scripts/netns-tree.sh 3
else
  echo "skipping scripts/netns-tree.sh: it needs root and network namespaces (ip netns)" >&2
fi
