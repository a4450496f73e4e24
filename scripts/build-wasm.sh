#!/usr/bin/env bash
# Builds the WebAssembly module pages load (the am-web crate) into target/wasm/am.wasm, which
# am-relay serves as /am.wasm.
#
# With rustup's wasm32-unknown-unknown target installed, that is used. Otherwise (rustup cannot
# download the target on every machine) Debian's rustc-web (a rustc with the wasm32 targets),
# rust-web-src (the standard library's source) and lld (wasm-ld) build the standard library
# from source; the script installs them when missing and it runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-unknown-unknown
OUT=target/wasm
mkdir -p "$OUT"

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  cargo build -p am-web --profile wasm --target "$TARGET" --target-dir "$OUT" "$@"
else
  DEBIAN_RUSTC=/usr/bin/rustc
  STD_SRC=/usr/lib/rustlib/src/rust/library
  have_debian_route() {
    [ -x "$DEBIAN_RUSTC" ] && "$DEBIAN_RUSTC" --print target-list 2>/dev/null | grep -qx "$TARGET" &&
      [ -d "$STD_SRC" ] && command -v wasm-ld >/dev/null 2>&1
  }
  if ! have_debian_route; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing rustc-web, rust-web-src and lld to build the wasm module..." >&2
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web rust-web-src lld >/dev/null
    fi
    if ! have_debian_route; then
      echo "cannot build for $TARGET: run 'rustup target add $TARGET', or install Debian's" >&2
      echo "rustc-web, rust-web-src and lld (sudo apt-get install rustc-web rust-web-src lld)" >&2
      exit 1
    fi
  fi
  # The standard library is built from source with the same rustc (RUSTC_BOOTSTRAP lets a
  # stable toolchain take -Zbuild-std).
  RUSTC="$DEBIAN_RUSTC" RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld \
    cargo build -p am-web --profile wasm --target "$TARGET" --target-dir "$OUT" \
    -Zbuild-std=std,panic_abort "$@"
fi
cp "$OUT/$TARGET/wasm/am_web.wasm" "$OUT/am.wasm"
echo "built $OUT/am.wasm ($(wc -c <"$OUT/am.wasm") bytes)" >&2
