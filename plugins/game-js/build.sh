#!/usr/bin/env bash
# Builds the game room in JavaScript into target/plugins/game-js.wasm at the repository root, from
# any directory: the world `timed-attached-plugin` of wit/platform/ (contract 0.2.0), with the SDK of
# plugins/sdk-js (see plugins/tools/build-js.sh; the first run installs the toolchain).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export WSPLUG_WIT="$here/../../wit/platform" WSPLUG_MODULE_ROOT="$here/.."
exec "$here/../tools/build-js.sh" game-js game-js/game.js "$here" timed-attached-plugin
