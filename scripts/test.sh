#!/usr/bin/env bash
# The README's test command: set-up, then every test of the workspace (unit tests, the runtime
# against the real plugins, and the engine against a real nats-server per test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
# Some tests run the `natsplug` binary as a separate process (kill -9, SIGTERM).
cargo build --quiet -p natsplug --bin natsplug
cargo test -p natsplug -p natsplug-sdk -p natsplug-tests "$@"
