#!/usr/bin/env bash
# Builds {{name}}.wasm (a WebAssembly component) from src/lib.rs, from any directory. Needs Rust
# (rustup); adds the wasm32-wasip2 target on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v cargo >/dev/null 2>&1 || { echo "build.sh: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
wasm="${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release/{{crate}}.wasm"
# Removed first, so that a stale component is never taken for this build's (cargo rebuilds it).
rm -f "$wasm"
cargo build --release --target wasm32-wasip2
[ -e "$wasm" ] || {
  echo "build.sh: cargo wrote no $wasm: is crate-type = [\"cdylib\"] in Cargo.toml's [lib]?" >&2
  exit 1
}
cp "$wasm" {{name}}.wasm
echo "built {{name}}.wasm ($(wc -c <{{name}}.wasm) bytes)"
