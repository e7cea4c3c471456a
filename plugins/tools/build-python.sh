#!/usr/bin/env bash
# Builds a Python plugin (the directory given) into a WebAssembly component, target/plugins/$NAME.wasm at the
# repository root. Callable from any directory; idempotent. The first run creates a virtual
# environment in target/toolchains/ and installs the pinned componentize-py (requirements.txt)
# into it; later runs reuse it. Needs Python >= 3.9 with its venv module, nothing else.
#
# Outside the repository (a project made by `wsplug new`), these say where things are:
#   WSPLUG_WIT         the contract, wit/wsplug.wit (file or directory)
#   WSPLUG_OUT         the component to write
#   WSPLUG_TOOLCHAINS  the toolchain cache (e.g. ~/.cache/wsplug/toolchains)
set -euo pipefail

# Usage: build-python.sh NAME MODULE PLUGIN_DIR [WORLD] (each plugins/*-python/build.sh calls this).
# WORLD is the world of wit/wsplug.wit the plugin implements: `plugin` (the default), or
# `stateful-plugin` for one that also exports `state` (hands its state over on reload).
[ $# -eq 3 ] || [ $# -eq 4 ] || { echo "usage: $0 NAME MODULE PLUGIN_DIR [WORLD]" >&2; exit 2; }
NAME=$1
MODULE=$2
here=$(cd "$3" && pwd)
WORLD=${4:-plugin}
# The repository, for a plugin of plugins/ (not used when the three variables above are set).
root=$(cd "$here/../.." && pwd)
wit=${WSPLUG_WIT:-$root/wit/wsplug.wit}
out=${WSPLUG_OUT:-$root/target/plugins/$NAME.wasm}
toolchains=${WSPLUG_TOOLCHAINS:-$root/target/toolchains}
fail() { echo "$NAME: $*" >&2; exit 1; }

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || fail "'$python' not found on PATH: install Python 3.9 or newer (or set PYTHON)"

# A short digest of stdin, naming a toolchain cache directory.
digest() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -c1-12
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 | cut -c1-12
    else fail "neither 'sha256sum' nor 'shasum' found on PATH: install coreutils"
    fi
}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1 \
    || fail "'$python' is not a working Python 3.9 or newer, which componentize-py needs (set PYTHON to one)"

# The toolchain cache, keyed by the pins: a new pin installs afresh beside the old one.
venv="$toolchains/componentize-py-$(grep -v '^#' "$here/requirements.txt" | digest)"
cli="$venv/bin/componentize-py"
if [ ! -e "$venv/.installed" ]; then
    echo "$NAME: installing componentize-py into $venv" >&2
    mkdir -p "$toolchains"
    # A venv cannot be moved once made: made in place, under a lock when flock(1) is there.
    exec 9>"$venv.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    if [ ! -e "$venv/.installed" ]; then
        rm -rf "$venv"
        "$python" -m venv "$venv" \
            || fail "'$python -m venv' failed: install Python's venv module (Debian: apt-get install python3-venv)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2 \
            || fail "'pip install' failed installing componentize-py (see above)"
        [ -x "$cli" ] || fail "pip installed no componentize-py CLI"
        touch "$venv/.installed"
    fi
    exec 9>&-
fi
[ -x "$cli" ] || fail "componentize-py is missing from $venv: delete that directory and retry"

mkdir -p "$(dirname "$out")"
# The app is module $MODULE, built from a fresh copy of this directory's sources under target/:
# componentize-py writes __pycache__ next to them, and would pack a stale one into the component.
# It generates the `wit_world` bindings itself.
stage="$toolchains/stage/$NAME-$(echo "$here" | digest)"
rm -rf "$stage"
mkdir -p "$stage"
cp "$here"/*.py "$stage/"
cd "$stage"
"$cli" --quiet -d "$wit" -w "$WORLD" componentize "$MODULE" -o "$out.tmp" \
    || { rm -f "$out.tmp"; fail "componentize-py failed (see above)"; }
mv -f "$out.tmp" "$out"
echo "$NAME: built $out ($(wc -c <"$out") bytes)"
