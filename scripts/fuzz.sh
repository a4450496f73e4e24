#!/usr/bin/env bash
# Runs each cargo-fuzz target for a while on the nightly toolchain, seeded from fuzz/seeds.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Installs cargo-fuzz when missing. A crash leaves its input in fuzz/artifacts/<target>/: fix
# the bug, copy the input into fuzz/seeds/<target>/ so the test suite replays it, run again.
# (A `structured` input is arbitrary's raw bytes, which only the fuzz crate can turn back into
# a message: save the message it built, encoded, in fuzz/seeds/message/ instead.)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
# frames, message, handshake: raw bytes; structured: messages built with `arbitrary` at and
# past each decoding limit (deep arguments, long lists, long names).
[ ${#targets[@]} -gt 0 ] || targets=(frames message handshake structured)

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    echo "== $target: ${seconds}s"
    log="fuzz/target/$target.log"
    mkdir -p fuzz/target
    # The first folder collects what the fuzzer finds; the seeds stay as committed.
    status=0
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec|SUMMARY)' "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "!! $target failed (exit $status); inputs that crashed are in fuzz/artifacts/$target, the log in $log" >&2
        exit "$status"
    fi
done
