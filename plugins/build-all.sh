#!/usr/bin/env bash
# Builds every example plugin that is not Rust (the Rust ones are built by `cargo build`, through
# host/build.rs): each plugins/*/build.sh installs its toolchain into target/toolchains/ if missing
# and writes target/plugins/<name>.wasm. Reports which languages built and which did not, and why.
#
#   plugins/build-all.sh            # build all; exit 1 if any failed
#   plugins/build-all.sh js python  # only the plugins whose directory ends in -js / -python
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
mkdir -p target/plugins target/build-logs
want=("$@")
ok=() failed=()
for script in plugins/*/build.sh; do
  dir=$(dirname "$script")
  name=$(basename "$dir")
  lang=${name##*-}
  if [[ ${#want[@]} -gt 0 && ! " ${want[*]} " == *" $lang "* ]]; then
    continue
  fi
  log="target/build-logs/$name.log"
  start=$SECONDS
  printf 'build-all: %-14s ... ' "$name"
  if bash "$script" >"$log" 2>&1; then
    printf 'ok (%ds)\n' $((SECONDS - start))
    ok+=("$name")
  else
    printf 'FAILED (%ds): %s\n' $((SECONDS - start)) "$(grep -v '^\s*$' "$log" | tail -n 1)"
    failed+=("$name")
  fi
done
echo "build-all: built ${#ok[@]}: ${ok[*]:-none}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "build-all: FAILED ${#failed[@]}: ${failed[*]} (logs in $root/target/build-logs/)"
  exit 1
fi
