#!/usr/bin/env bash
# Builds the Rust crates under plugins/ for wasm32-wasip2 and lays them out as a plugins folder:
# target/plugins/dist/NAME.wasm beside NAME.toml (the crate's manifest). With NAME arguments,
# only those crates (the demo's); without, every one (the tests', through tests/build.rs).
# Prints the folder's path on its last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/target/plugins"
dist="$target/dist"
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for manifest in "$root"/plugins/*/Cargo.toml; do
    names+=("$(basename "$(dirname "$manifest")")")
  done
fi
packages=()
for name in "${names[@]}"; do
  if [ ! -f "$root/plugins/$name/Cargo.toml" ]; then
    echo "build-plugins: no Rust plugin plugins/$name" >&2
    exit 1
  fi
  packages+=(-p "$name")
done
CARGO_TARGET_DIR="$target" "${CARGO:-cargo}" build --quiet --manifest-path "$root/Cargo.toml" \
  --profile plugin --target wasm32-wasip2 "${packages[@]}"
mkdir -p "$dist"
for name in "${names[@]}"; do
  dir="$root/plugins/$name"
  wasm="$target/wasm32-wasip2/plugin/${name//-/_}.wasm"
  # Copy to a temporary name then rename, so a watcher never sees a half-written file.
  cp "$wasm" "$dist/.$name.wasm.tmp" && mv "$dist/.$name.wasm.tmp" "$dist/$name.wasm"
  if [ -f "$dir/$name.toml" ]; then cp "$dir/$name.toml" "$dist/$name.toml"; fi
done
echo "$dist"
