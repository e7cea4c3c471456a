#!/usr/bin/env bash
# Builds the chat plugin in C into target/plugins/chat-c.wasm at the repository root (from any
# directory; installs the C toolchain with apt when it is missing and this runs as root).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WSPLUG_WORLD=stateful-plugin exec "$HERE/../c-tools/build-plugin.sh" chat-c "$HERE/chat.c"
