#!/usr/bin/env bash
# Builds the echo plugin in C into target/plugins/echo-c.wasm at the repository root (from any
# directory; installs the C toolchain with apt when it is missing and this runs as root).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$HERE/../c-tools/build-plugin.sh" echo-c "$HERE/echo.c"
