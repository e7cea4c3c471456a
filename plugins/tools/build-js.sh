#!/usr/bin/env bash
# Builds a JavaScript or TypeScript plugin (the directory given) into a WebAssembly component,
# target/plugins/$NAME.wasm at the repository root. Callable from any directory; idempotent. The
# first run installs the pinned componentize-qjs (package-lock.json; and TypeScript, for a .ts
# SOURCE) into target/toolchains/; later runs reuse it.
# Needs Node.js >= 18 with npm, nothing else (no global installs).
#
# Outside the repository (a project made by `wsplug new`), these say where things are:
#   WSPLUG_WIT         the contract, wit/wsplug.wit (file or directory)
#   WSPLUG_OUT         the component to write
#   WSPLUG_TOOLCHAINS  the toolchain cache (e.g. ~/.cache/wsplug/toolchains)
# and WSPLUG_MODULE_ROOT, when set, is the directory the JavaScript's imports may reach (SOURCE is
# then relative to it): a plugin of plugins/ that imports the SDK as ../sdk-js/wsplug.js.
set -euo pipefail

# Usage: build-js.sh NAME SOURCE PLUGIN_DIR [WORLD] (each plugins/*-js/build.sh calls this).
# WORLD is the world of wit/wsplug.wit the plugin implements: `plugin` (the default), or
# `stateful-plugin` for one that also exports `state` (hands its state over on reload).
[ $# -eq 3 ] || [ $# -eq 4 ] || { echo "usage: $0 NAME SOURCE PLUGIN_DIR [WORLD]" >&2; exit 2; }
NAME=$1
SOURCE=$2
here=$(cd "$3" && pwd)
WORLD=${4:-plugin}
# The repository, for a plugin of plugins/ (not used when the three variables above are set).
root=$(cd "$here/../.." && pwd)
wit=${WSPLUG_WIT:-$root/wit/wsplug.wit}
out=${WSPLUG_OUT:-$root/target/plugins/$NAME.wasm}
toolchains=${WSPLUG_TOOLCHAINS:-$root/target/toolchains}
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
tools="$toolchains/componentize-qjs-$pins"
cli="$tools/node_modules/componentize-qjs/bin/componentize-qjs"
if [ ! -e "$tools/.installed" ]; then
    echo "$NAME: installing componentize-qjs into $tools" >&2
    mkdir -p "$toolchains"
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

mkdir -p "$(dirname "$out")"
cd "$here"
js=$SOURCE
case $SOURCE in
*.ts)
    # TypeScript: type-checked (strict, see tsconfig.json) and compiled to JavaScript under
    # build/js/, beside a copy of the SDK's wsplug.js, which the compiled module imports.
    tsc="$tools/node_modules/typescript/bin/tsc"
    [ -e "$tsc" ] || fail "TypeScript is missing from $tools: add \"typescript\" to package.json's devDependencies"
    rm -rf build/js
    node "$tsc" -p tsconfig.json --outDir build/js || fail "TypeScript: the type check failed (see above)"
    for lib in *.js; do [ -e "$lib" ] && cp "$lib" build/js/; done
    js="build/js/${SOURCE%.ts}.js"
    ;;
esac
# --sync: the host runs plain (non-async) component exports. The module root is this directory
# unless WSPLUG_MODULE_ROOT says otherwise.
cd "${WSPLUG_MODULE_ROOT:-$here}"
node "$cli" --wit "$wit" --world "$WORLD" --sync --module-root . --js "$js" -o "$out.tmp" >/dev/null \
    || { rm -f "$out.tmp"; fail "componentize-qjs failed (see above)"; }
mv -f "$out.tmp" "$out"
echo "$NAME: built $out ($(wc -c <"$out") bytes)"
