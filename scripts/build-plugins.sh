#!/usr/bin/env bash
# Builds every Rust crate under plugins/ for wasm32-wasip2 and lays them out as a plugins folder:
# target/plugins/dist/NAME.wasm beside NAME.toml (the crate's manifest). Used by the demo and,
# through tests/build.rs, by the tests. Prints the folder's path on its last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="$root/target/plugins"
dist="$target/dist"
packages=()
for manifest in "$root"/plugins/*/Cargo.toml; do
  packages+=(-p "$(basename "$(dirname "$manifest")")")
done
CARGO_TARGET_DIR="$target" "${CARGO:-cargo}" build --quiet --manifest-path "$root/Cargo.toml" \
  --profile plugin --target wasm32-wasip2 "${packages[@]}"
mkdir -p "$dist"
for dir in "$root"/plugins/*/; do
  [ -f "$dir/Cargo.toml" ] || continue # plugins/python and plugins/js: scripts/build-guests.sh
  name="$(basename "$dir")"
  wasm="$target/wasm32-wasip2/plugin/${name//-/_}.wasm"
  # Copy to a temporary name then rename, so a watcher never sees a half-written file.
  cp "$wasm" "$dist/.$name.wasm.tmp" && mv "$dist/.$name.wasm.tmp" "$dist/$name.wasm"
  if [ -f "$dir/$name.toml" ]; then cp "$dir/$name.toml" "$dist/$name.toml"; fi
done
echo "$dist"
