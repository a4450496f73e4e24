#!/usr/bin/env bash
# Installs the third-party WebSocket-to-TCP bridges that `am-node bench relay --compare`
# measures am-relay against, when they are missing:
#   - websocat 1.x (crates.io) with `cargo install` (--locked where it compiles), into
#     ~/.cargo/bin;
#   - websockify (PyPI) with pip, into a venv under ~/.cache/am-bench/websockify-venv
#     (its `websockify` script is then at ~/.cache/am-bench/websockify-venv/bin/websockify,
#     which the bench finds on its own).
# Both builds run at the lowest CPU priority (nice 19): websocat compiles for several minutes.
#
#   scripts/install-bench-tools.sh            (both)
#   scripts/install-bench-tools.sh websocat   (one)
set -euo pipefail

WEBSOCAT_VERSION=${WEBSOCAT_VERSION:-1.14.0}
VENV=${AM_BENCH_VENV:-$HOME/.cache/am-bench/websockify-venv}
want=${1:-all}

if [[ $want == all || $want == websocat ]]; then
    if command -v websocat >/dev/null 2>&1; then
        echo "websocat: already on PATH ($(command -v websocat): $(websocat --version))"
    else
        echo "websocat: installing $WEBSOCAT_VERSION from crates.io (cargo install --locked; several minutes)"
        # Its lock file pins traitobject 0.1.0, which newer compilers reject (E0119); without
        # --locked cargo takes the fixed 0.1.1. --locked first, for a reproducible build where
        # the compiler still takes it.
        nice -n 19 cargo install websocat --locked --version "$WEBSOCAT_VERSION" ||
            nice -n 19 cargo install websocat --version "$WEBSOCAT_VERSION"
    fi
fi

if [[ $want == all || $want == websockify ]]; then
    if command -v websockify >/dev/null 2>&1; then
        echo "websockify: already on PATH ($(command -v websockify))"
    elif [[ -x $VENV/bin/websockify ]]; then
        echo "websockify: already in $VENV"
    else
        echo "websockify: installing from PyPI into the venv $VENV"
        python3 -m venv "$VENV"
        nice -n 19 "$VENV/bin/pip" install --quiet websockify
        echo "websockify: $VENV/bin/websockify"
    fi
fi
