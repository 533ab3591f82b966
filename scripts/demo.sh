#!/usr/bin/env bash
# The README's first command: set-up, build the host and the example plugins, then run
# `natsplug dev` (a local nats-server with JetStream when none is configured, the demo streams,
# sample messages and their outputs). Runs until Ctrl-C; extra arguments go to `natsplug dev`
# (e.g. `--once 60s` to exit once the samples are through, `--server nats://...`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
cargo build --release -p natsplug --bin natsplug
plugins="$(scripts/build-plugins.sh | tail -n 1)"
scripts/build-guests.sh >/dev/null
exec target/release/natsplug dev --plugins "$plugins" "$@"
