#!/usr/bin/env bash
# The README's first command: set-up, build the host and the example plugins, then run
# `natsplug dev` (a local nats-server with JetStream when none is configured, the demo streams,
# sample messages and their outputs). Runs until Ctrl-C; extra arguments go to `natsplug dev`
# (e.g. `--once 60s` to exit once the samples are through, `--server nats://...`).
#
# The host is built in the dev profile, whose dependencies are optimised (Cargo.toml): the same
# build the tests use, so the demo after the tests (or the tests after the demo) compiles
# nothing twice. The plugins are built meanwhile: the host's build leaves a core idle for most
# of its long tail (cranelift, then wasmtime, each one crate on one core).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
log="$root/target/demo-plugins.log"
mkdir -p target
(scripts/build-plugins.sh && scripts/build-guests.sh) >"$log" 2>&1 &
plugins_build=$!
cargo build -p natsplug --bin natsplug
if ! wait "$plugins_build"; then
  cat "$log" >&2
  exit 1
fi
exec target/debug/natsplug dev --plugins "$(tail -n 1 "$log")" "$@"
