#!/usr/bin/env bash
# Builds the Python and JavaScript plugins into components, and the Go and C plugins into WASI
# preview-1 command modules, and lays them out beside the Rust ones:
# plugins/python/NAME/app.py -> target/plugins/dist/NAME-py.wasm (+ NAME-py.toml, from NAME.toml)
# plugins/js/NAME/app.js     -> target/plugins/dist/NAME-js.wasm (+ NAME-js.toml)
# plugins/go/NAME/main.go    -> target/plugins/dist/NAME-go.wasm (+ NAME-go.toml)
# plugins/c/NAME/NAME.c      -> target/plugins/dist/NAME-c.wasm  (+ NAME-c.toml)
# Python uses componentize-py, JavaScript componentize-js (through guest-sdk/js/componentize.mjs),
# Go its standard toolchain (GOOS=wasip1), C clang with wasi-libc; scripts/setup.sh installs them.
# A build takes 0.3-10 s, so a plugin is rebuilt only when its inputs change: a stamp keeps the
# hash of its folder, the guest SDK, the WIT, the toolchain version and this script. With
# NAME-py / NAME-js / NAME-go / NAME-c arguments, only those (the demo's); without, every one.
# Prints the dist folder on its last line.
# NATSPLUG_GUESTS_DIST overrides the dist folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
dist="${NATSPLUG_GUESTS_DIST:-$root/target/plugins/dist}"
work="$root/target/guests"
componentize_py="${COMPONENTIZE_PY:-$root/.tools/venv/bin/componentize-py}"
node_modules="${GUEST_NODE_MODULES:-$root/.tools/node/node_modules}"
export GUEST_NODE_MODULES="$node_modules"
go="${GO:-$root/.tools/venv/bin/go}"
wasi_cc="${WASI_CC:-/usr/bin/clang-19}"
# Go's caches under .tools, as scripts/setup.sh sets them, when this runs without it.
export GOPATH="${GOPATH:-$root/.tools/go}" GOCACHE="${GOCACHE:-$root/.tools/go-cache}"
export GOFLAGS="${GOFLAGS:--modcacherw}" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

if [ ! -x "$componentize_py" ] || [ ! -d "$node_modules/@bytecodealliance/componentize-js" ] ||
  [ ! -x "$go" ] || [ ! -x "$wasi_cc" ] || [ ! -d /usr/lib/wasm32-wasi ]; then
  echo "build-guests: the guest toolchains are missing; run scripts/setup.sh first" >&2
  exit 1
fi
py_toolchain="$("$componentize_py" --version)"
js_toolchain="componentize-js $(node -p "require('$node_modules/@bytecodealliance/componentize-js/package.json').version") node $(node --version)"
go_toolchain="$("$go" version)"
c_toolchain="$("$wasi_cc" --version | head -n1), wasi-libc $(dpkg-query -W -f='${Version}' wasi-libc 2>/dev/null || echo unknown)"

# The hash of every file under the given paths (names and contents; not docs, tests or the
# manifests, which are copied on every run).
inputs_hash() {
  find "$@" -type f ! -name '*.pyc' ! -name '*.md' ! -name '*.toml' ! -path '*/__pycache__/*' ! -path '*/node_modules/*' \
    ! -path '*/test/*' ! -path '*/tests/*' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# Copies $1 to $2 through a temporary name then a rename, so a watcher never sees a half-written
# file; leaves $2 alone when it already has the same bytes.
install_file() {
  if ! cmp -s "$1" "$2"; then
    local tmp
    tmp="$(dirname "$2")/.$(basename "$2").tmp"
    cp "$1" "$tmp" && mv "$tmp" "$2"
  fi
}

mkdir -p "$dist" "$work"
wanted=("$@")
for name in "${wanted[@]}"; do
  case "$name" in
    *-py) [ -d "plugins/python/${name%-py}" ] || { echo "build-guests: no plugins/python/${name%-py}" >&2; exit 1; } ;;
    *-js) [ -d "plugins/js/${name%-js}" ] || { echo "build-guests: no plugins/js/${name%-js}" >&2; exit 1; } ;;
    *-go) [ -d "plugins/go/${name%-go}" ] || { echo "build-guests: no plugins/go/${name%-go}" >&2; exit 1; } ;;
    *-c) [ -d "plugins/c/${name%-c}" ] || { echo "build-guests: no plugins/c/${name%-c}" >&2; exit 1; } ;;
    *) echo "build-guests: $name is not NAME-py, NAME-js, NAME-go or NAME-c" >&2; exit 1 ;;
  esac
done
# wanted NAME: true when NAME was asked for, or nothing was.
wanted() {
  [ ${#wanted[@]} -eq 0 ] && return 0
  local w
  for w in "${wanted[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}
built=0
skipped=0
# build LANG SUFFIX APP_FILE SDK_DIR TOOLCHAIN: every plugins/LANG/NAME/APP_FILE.
build() {
  local lang="$1" suffix="$2" app="$3" sdk="$4" toolchain="$5" dir name out stamp hash tmp app_file
  for dir in "$root/plugins/$lang"/*/; do
    # C's source is named for its folder: plugins/c/NAME/NAME.c.
    [ "$app" = NAME.c ] && app_file="$(basename "$dir").c" || app_file="$app"
    [ -f "$dir/$app_file" ] || continue
    name="$(basename "$dir")-$suffix"
    wanted "$name" || continue
    out="$work/$name.wasm"
    stamp="$work/$name.stamp"
    # The manifest's [http] decides whether a JS build enables fetch, so it is an input too.
    hash="$( (echo "$toolchain"; grep -h '^\s*\[\s*http' "$dir"/*.toml 2>/dev/null || true
      inputs_hash "${dir#"$root/"}" $sdk guest-sdk/wit scripts/build-guests.sh) | sha256sum | cut -d' ' -f1)"
    if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
      skipped=$((skipped + 1))
    else
      echo "build-guests: building $name ($toolchain)" >&2
      tmp="$work/.$name.wasm.tmp"
      rm -f "$tmp"
      case "$suffix" in
        py)
          # From a copy: componentize-py's pre-init writes __pycache__ beside the sources.
          rm -rf "$work/src/$name" && mkdir -p "$work/src/$name"
          mkdir "$work/src/$name/sdk" && cp -R "$sdk/natsplug" "$work/src/$name/sdk/"
          cp -R "$dir" "$work/src/$name/app"
          env -u VIRTUAL_ENV "$componentize_py" --quiet -d guest-sdk/wit -w batch-plugin componentize \
            -p "$work/src/$name/sdk" -p "$work/src/$name/app" "${app%.py}" -o "$tmp" ;;
        js) node guest-sdk/js/componentize.mjs "$dir/$app" "$tmp" ;;
        # -trimpath: no build-machine paths in the module (panics name files by module path).
        go) (cd "$dir" && GOOS=wasip1 GOARCH=wasm "$go" build -trimpath -o "$tmp" .) ;;
        # A C file that includes natsplug.h is a component (the C SDK, a reactor: natsplug
        # makes it a component on load); any other is a command.
        c) if grep -q '#include "natsplug.h"' "$dir/$app_file"; then
             "$wasi_cc" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
               -Iguest-sdk/c -Iguest-sdk/c/bindings -o "$tmp" "$dir/$app_file" guest-sdk/c/natsplug.c \
               guest-sdk/c/bindings/plugin.c guest-sdk/c/bindings/plugin_component_type.o
           else
             "$wasi_cc" --target=wasm32-wasi -O2 -Wall -Wextra -Werror -o "$tmp" "$dir/$app_file"
           fi ;;
      esac
      mv "$tmp" "$out"
      echo "$hash" >"$stamp"
      built=$((built + 1))
    fi
    # The manifest first, so the component is never there without it.
    if [ -f "$dir/$(basename "$dir").toml" ]; then
      install_file "$dir/$(basename "$dir").toml" "$dist/$name.toml"
    fi
    install_file "$out" "$dist/$name.wasm"
  done
}

build python py app.py guest-sdk/python "$py_toolchain"
build js js app.js guest-sdk/js "$js_toolchain"
build go go main.go guest-sdk/go "$go_toolchain"
build c c NAME.c guest-sdk/c "$c_toolchain"
echo "build-guests: $built built, $skipped unchanged" >&2
echo "$dist"
