#!/usr/bin/env bash
# Builds the echo plugin in Go into target/plugins/echo-go.wasm at the repository root (from any
# directory, idempotent), with the Go SDK: see plugins/tools/build-go.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../tools/build-go.sh" echo-go "$here"
