#!/usr/bin/env bash
# Builds the chat plugin in JavaScript into target/plugins/chat-js.wasm at the repository root,
# from any directory; the first run installs the toolchain into target/toolchains/
# (see plugins/tools/build-js.sh). It implements the world `stateful-plugin`: it exports `state`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../tools/build-js.sh" chat-js chat.js "$here" stateful-plugin
