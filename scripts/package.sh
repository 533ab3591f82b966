#!/usr/bin/env bash
# Builds the release tarball: target/package/natsplug-VERSION-ARCH-linux.tar.gz, holding
#   natsplug-VERSION/bin/natsplug              the host (the SDKs and the WIT are inside it too)
#   natsplug-VERSION/share/natsplug/wit/       the WIT contract   (natsplug wit --dir)
#   natsplug-VERSION/share/natsplug/sdk/LANG/  the SDK packages   (natsplug sdk LANG DIR)
#   natsplug-VERSION/README.md
# The Containerfile copies the same layout. NATSPLUG_PACKAGE_BIN packages an already built
# binary instead of running a release build. Prints the tarball's path on its last line.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
bin="${NATSPLUG_PACKAGE_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --release -p natsplug --bin natsplug
  bin="$root/target/release/natsplug"
fi
out="$root/target/package"
name="natsplug-$version"
stage="$out/stage/$name"
rm -rf "$out/stage" && mkdir -p "$stage/bin" "$stage/share/natsplug/sdk"
install -m 0755 "$bin" "$stage/bin/natsplug"
# What the binary embeds, written by the binary itself: the tarball cannot drift from it.
"$stage/bin/natsplug" wit --dir "$stage/share/natsplug/wit" >/dev/null
for lang in rust python js go c; do
  "$stage/bin/natsplug" sdk "$lang" "$stage/share/natsplug/sdk/$lang" >/dev/null
done
cp README.md "$stage/README.md"
tarball="$out/$name-$(uname -m)-linux.tar.gz"
tar -C "$out/stage" -czf "$tarball" "$name"
echo "$tarball"
