#!/usr/bin/env bash
# The README's first command: set-up, build the host and the example plugins, then run
# `natsplug dev` (a local nats-server with JetStream when none is configured, the demo streams,
# sample messages and their outputs). Runs until Ctrl-C; extra arguments go to `natsplug dev`
# (e.g. `--once 60s` to exit once the samples are through, `--server nats://...`).
#
# The host is built in the dev profile, whose dependencies are optimised (Cargo.toml): the same
# build the tests use, so the demo after the tests (or the tests after the demo) compiles
# nothing twice. The plugins are built meanwhile: the host's build leaves a core idle for most
# of its long tail (cranelift, then wasmtime, each one crate on one core). Only the plugins the
# samples go to are built and served (target/plugins/demo), not the tests' other examples.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
# natsplug::dev::DEMO_PLUGINS (host/src/dev.rs); tests/tests/process.rs checks they agree.
rust_plugins=(uppercase fanout flaky poison slow)
guest_plugins=(uppercase-py uppercase-js)
log="$root/target/demo-plugins.log"
demo="$root/target/plugins/demo"
mkdir -p target
# The demo's folder: copies from the build's folders (a temporary name, then a rename: the host
# watches it).
build_demo_plugins() {
  local rust_dist guest_dist dist name ext
  rust_dist="$(scripts/build-plugins.sh "${rust_plugins[@]}" | tail -n 1)"
  guest_dist="$(scripts/build-guests.sh "${guest_plugins[@]}" | tail -n 1)"
  mkdir -p "$demo"
  for name in "${rust_plugins[@]}" "${guest_plugins[@]}"; do
    case "$name" in
      *-py | *-js) dist="$guest_dist" ;;
      *) dist="$rust_dist" ;;
    esac
    for ext in toml wasm; do
      cp "$dist/$name.$ext" "$demo/.$name.$ext.tmp" && mv "$demo/.$name.$ext.tmp" "$demo/$name.$ext"
    done
  done
}
build_demo_plugins >"$log" 2>&1 &
plugins_build=$!
cargo build -p natsplug --bin natsplug
if ! wait "$plugins_build"; then
  cat "$log" >&2
  exit 1
fi
exec target/debug/natsplug dev --plugins "$demo" "$@"
