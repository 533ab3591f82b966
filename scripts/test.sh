#!/usr/bin/env bash
# The README's test command: set-up, then every test: the guest SDKs' unit tests, and the
# workspace's (unit tests, the runtime against the real plugins in Rust, Python, JavaScript, Go
# and C, and the engine against a real nats-server per test).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
packages=(-p natsplug -p natsplug-sdk -p natsplug-tests -p natsplug-bench)
# Some tests run the `natsplug` binary as a separate process (kill -9, SIGTERM). It is built in
# the same invocation as the tests: built alone, its dependencies resolve without the tests'
# dev-dependency features, and 34 crates, wasmtime among them, would be compiled twice.
cargo build --quiet "${packages[@]}" --bin natsplug --tests
# The guest SDKs' own unit tests (Python, JavaScript and Go), then the workspace.
python3 -m unittest discover -s guest-sdk/python/tests
node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/natsplug.test.mjs
(cd guest-sdk/go && "$GO" test ./...)
cargo test "${packages[@]}" "$@"
