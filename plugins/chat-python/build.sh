#!/usr/bin/env bash
# Builds the chat plugin in Python into target/plugins/chat-python.wasm at the repository root,
# from any directory; the first run installs the toolchain into target/toolchains/
# (see plugins/tools/build-python.sh). It implements the world `stateful-plugin`: it exports `state`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../tools/build-python.sh" chat-python chat "$here" stateful-plugin
