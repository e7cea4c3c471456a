#!/usr/bin/env bash
# Builds the topics test plugin in JavaScript into target/plugins/pubsub-js.wasm at the repository
# root, from any directory: the world `topics-plugin` of wit/platform/ (contract 0.2.0), with the
# SDK of plugins/sdk-js (see plugins/tools/build-js.sh; the first run installs the toolchain).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export WSPLUG_WIT="$here/../../wit/platform" WSPLUG_MODULE_ROOT="$here/.."
exec "$here/../tools/build-js.sh" pubsub-js pubsub-js/pubsub.js "$here" topics-plugin
