#!/usr/bin/env bash
# Builds a C plugin into a component: target/plugins/NAME.wasm at the repository root.
#
#   plugins/c-tools/build-plugin.sh NAME SOURCE.c...
#
# Called by plugins/*-c/build.sh. Idempotent, from any directory. What it needs, and installs
# when missing and it runs as root (as in CI):
#   - clang and wasm-ld for wasm32 with wasi-libc: Debian's clang-19 lld-19
#     libclang-rt-19-dev-wasm32 wasi-libc (override: CLANG=/path/to/clang, WASI_SYSROOT=DIR,
#     e.g. a wasi-sdk's);
#   - cargo, to build wsplug-c-tools (this directory) into target/c-tools: the C bindings
#     generator (wit-bindgen's) and the componentizer (wit-component's), as one small tool.
# Steps: bindings from wit/ -> target/c-plugins/NAME/, compile + link a core module, make it a
# component (with the WASI preview 1 adapter only if the module imports WASI).
#
# Outside the repository (a project made by `wsplug new`), these say where things are:
#   WSPLUG_WIT         the contract, wit/wsplug.wit (file or directory)
#   WSPLUG_OUT         the component to write
#   WSPLUG_WORK        a directory for the bindings and objects
#   WSPLUG_TOOLCHAINS  where wsplug-c-tools is built (e.g. ~/.cache/wsplug/toolchains)
# and WSPLUG_WORLD names the world (default `plugin`; `stateful-plugin` for hand-over): the
# bindings are WORLD.h (dashes as underscores), e.g. stateful_plugin.h.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 NAME SOURCE.c..." >&2
  exit 2
fi
NAME=$1
shift
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SOURCES=()
for src in "$@"; do SOURCES+=("$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"); done
WIT=${WSPLUG_WIT:-$ROOT/wit}
WORK=${WSPLUG_WORK:-$ROOT/target/c-plugins/$NAME}
OUT=${WSPLUG_OUT:-$ROOT/target/plugins/$NAME.wasm}
TOOLCHAINS=${WSPLUG_TOOLCHAINS:-$ROOT/target/toolchains}
WORLD=${WSPLUG_WORLD:-plugin}
BINDINGS=${WORLD//-/_}
APT_PACKAGES="clang-19 lld-19 libclang-rt-19-dev-wasm32 wasi-libc"

fail() {
  echo "build-plugin.sh ($NAME): error: $*" >&2
  exit 1
}

# A clang that targets wasm32-wasi and finds wasi-libc (crt1-reactor.o) and wasm-ld.
find_clang() {
  local candidates=("${CLANG:-}" clang-19 clang clang-20 clang-18)
  local sysroot=()
  [ -n "${WASI_SYSROOT:-}" ] && sysroot=(--sysroot="$WASI_SYSROOT")
  for cc in "${candidates[@]}"; do
    [ -n "$cc" ] && command -v "$cc" >/dev/null 2>&1 || continue
    local crt
    crt=$("$cc" --target=wasm32-wasi "${sysroot[@]}" -print-file-name=crt1-reactor.o 2>/dev/null) || continue
    [ -f "$crt" ] || continue
    local ld
    ld=$("$cc" --target=wasm32-wasi -print-prog-name=wasm-ld 2>/dev/null) || continue
    if [ -x "$ld" ] || command -v "$ld" >/dev/null 2>&1; then
      echo "$cc"
      return 0
    fi
  done
  return 1
}

CC_WASM=$(find_clang) || {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "build-plugin.sh: installing the C toolchain for wasm32 with apt-get ($APT_PACKAGES)" >&2
    mkdir -p "$WORK"
    log="$WORK/apt.log"
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    if ! { apt-get update && apt-get install -y --no-install-recommends $APT_PACKAGES; } >"$log" 2>&1; then
      tail -20 "$log" >&2
      fail "apt-get install $APT_PACKAGES failed (log: $log)"
    fi
  fi
  CC_WASM=$(find_clang) || fail "no clang for wasm32-wasi with wasi-libc and wasm-ld found.
  On Debian/Ubuntu, as root: apt-get update && apt-get install $APT_PACKAGES
  Or point CLANG at a clang with wasm32 support and WASI_SYSROOT at a wasi-libc sysroot (wasi-sdk)."
}
SYSROOT=()
[ -n "${WASI_SYSROOT:-}" ] && SYSROOT=(--sysroot="$WASI_SYSROOT")

command -v cargo >/dev/null 2>&1 || fail "cargo not found: wsplug-c-tools (bindings + componentizer) is built with Rust (rustup.rs)."
cargo build --quiet --locked --manifest-path "$HERE/Cargo.toml" --target-dir "$TOOLCHAINS/c-tools" ||
  fail "building wsplug-c-tools ($HERE) failed"
TOOL="$TOOLCHAINS/c-tools/debug/wsplug-c-tools"

mkdir -p "$WORK" "$(dirname "$OUT")"
"$TOOL" bindgen "$WIT" "$WORLD" "$WORK" || fail "generating the C bindings from $WIT failed"

CFLAGS=(--target=wasm32-wasi "${SYSROOT[@]}" -Os -std=c11)
OBJS=()
for src in "${SOURCES[@]}"; do
  obj="$WORK/$(basename "${src%.c}").o"
  "$CC_WASM" "${CFLAGS[@]}" -Wall -Wextra -I"$WORK" -c "$src" -o "$obj" || fail "compiling $src failed"
  OBJS+=("$obj")
done
# The generated bindings: not held to our warnings.
"$CC_WASM" "${CFLAGS[@]}" -w -c "$WORK/$BINDINGS.c" -o "$WORK/$BINDINGS.bindings.o" || fail "compiling the generated bindings failed"
"$CC_WASM" "${CFLAGS[@]}" -mexec-model=reactor "${OBJS[@]}" "$WORK/$BINDINGS.bindings.o" "$WORK/${BINDINGS}_component_type.o" \
  -Wl,--strip-all -o "$WORK/$NAME.core.wasm" || fail "linking $NAME.core.wasm failed"
"$TOOL" componentize "$WORK/$NAME.core.wasm" "$OUT" || fail "making a component of $NAME.core.wasm failed"
echo "$OUT ($(wc -c <"$OUT") bytes)"
