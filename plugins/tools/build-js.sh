#!/usr/bin/env bash
# Builds a JavaScript plugin (the directory given) into a WebAssembly component, target/plugins/$NAME.wasm at the
# repository root. Callable from any directory; idempotent. The first run installs the pinned
# componentize-qjs (package-lock.json) into target/toolchains/; later runs reuse it.
# Needs Node.js >= 18 with npm, nothing else (no global installs).
set -euo pipefail

# Usage: build-js.sh NAME SOURCE PLUGIN_DIR [WORLD] (each plugins/*-js/build.sh calls this).
# WORLD is the world of wit/wsplug.wit the plugin implements: `plugin` (the default), or
# `stateful-plugin` for one that also exports `state` (hands its state over on reload).
[ $# -eq 3 ] || [ $# -eq 4 ] || { echo "usage: $0 NAME SOURCE PLUGIN_DIR [WORLD]" >&2; exit 2; }
NAME=$1
SOURCE=$2
here=$(cd "$3" && pwd)
WORLD=${4:-plugin}
root=$(cd "$here/../.." && pwd)
fail() { echo "$NAME: $*" >&2; exit 1; }

for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' not found on PATH: install Node.js 18 or newer (with npm)"
done

# A short digest of stdin, naming a toolchain cache directory.
digest() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-12
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 | cut -c1-12
    else fail "neither 'sha256sum' nor 'shasum' found on PATH: install coreutils"
    fi
}
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || fail "Node.js $(node --version) is too old: componentize-qjs needs 18 or newer"

# The toolchain cache, keyed by the lock file's pins (not the package's name, so that the JS
# plugins share it): a new pin installs afresh beside the old one.
pins=$(grep -v '"name":' "$here/package-lock.json" | digest)
tools="$root/target/toolchains/componentize-qjs-$pins"
cli="$tools/node_modules/componentize-qjs/bin/componentize-qjs"
if [ ! -e "$tools/.installed" ]; then
    echo "$NAME: installing componentize-qjs into ${tools#"$root"/}" >&2
    mkdir -p "$root/target/toolchains"
    tmp=$(mktemp -d "$tools.XXXXXX")
    cp "$here/package.json" "$here/package-lock.json" "$here/.npmrc" "$tmp/"
    # `npm install`, not `npm ci`: componentize-qjs 0.4.5 names optional native bindings for some
    # platforms that were never published at that version, which `npm ci` treats as an error.
    (cd "$tmp" && npm install --no-audit --no-fund --loglevel=error >&2) \
        || { rm -rf "$tmp"; fail "'npm install' failed installing componentize-qjs (see above)"; }
    [ -e "$tmp/node_modules/componentize-qjs/bin/componentize-qjs" ] \
        || { rm -rf "$tmp"; fail "npm installed no componentize-qjs CLI"; }
    touch "$tmp/.installed"
    # Another build may have finished the same install meanwhile: keep the first.
    if [ -e "$tools/.installed" ]; then rm -rf "$tmp"; else rm -rf "$tools" && mv "$tmp" "$tools"; fi
fi
[ -e "$cli" ] || fail "componentize-qjs is missing from $tools: delete that directory and retry"

out="$root/target/plugins/$NAME.wasm"
mkdir -p "$(dirname "$out")"
# --sync: the host runs plain (non-async) component exports. The module root is this directory.
cd "$here"
node "$cli" --wit "$root/wit/wsplug.wit" --world "$WORLD" --sync --js "$SOURCE" -o "$out.tmp" >/dev/null \
    || { rm -f "$out.tmp"; fail "componentize-qjs failed (see above)"; }
mv -f "$out.tmp" "$out"
echo "$NAME: built ${out#"$root"/} ($(wc -c <"$out") bytes)"
