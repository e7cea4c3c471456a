#!/usr/bin/env bash
# Builds the echo plugin in Python into target/plugins/echo-python.wasm at the repository root,
# from any directory; the first run installs the toolchain into target/toolchains/
# (see plugins/tools/build-python.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../tools/build-python.sh" echo-python echo "$here"
