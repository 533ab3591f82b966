//! `natsplug new NAME`: a new plugin project with a handler, a manifest and a test that builds
//! the component and runs it through the real runtime with `natsplug call`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The languages `natsplug new` scaffolds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with natsplug-sdk (wasm32-wasip2).
    Rust,
}

/// Where the Rust SDK is: this checkout's `guest-sdk/` (natsplug-sdk is not on crates.io yet).
pub fn sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk")
}

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
    let files: Vec<(PathBuf, String)> = match lang {
        Lang::Rust => rust_files(name),
    };
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

fn rust_files(name: &str) -> Vec<(PathBuf, String)> {
    let sdk = sdk_path();
    let sdk = std::fs::canonicalize(&sdk).unwrap_or(sdk);
    let file = name.replace('-', "_");
    let fill = |template: &str| {
        template
            .replace("{name}", name)
            .replace("{file}", &file)
            .replace("{sdk}", &sdk.display().to_string())
    };
    vec![
        (PathBuf::from("Cargo.toml"), fill(RUST_CARGO)),
        (PathBuf::from("src/lib.rs"), fill(RUST_LIB)),
        (PathBuf::from(format!("{name}.toml")), fill(MANIFEST)),
        (PathBuf::from("tests/call.rs"), fill(RUST_TEST)),
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
natsplug-sdk = { path = "{sdk}" }
"#;

const RUST_LIB: &str = r#"//! The `{name}` natsplug plugin: answers every message with its payload upper-cased, to the
//! subject named by the `output` config value.
use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let text = msg.payload_str().map_err(Error::reject)?;
    let subject = config("output").ok_or_else(|| Error::reject("no `output` in [config]"))?;
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
//! `natsplug call` (the binary from NATSPLUG_BIN, else `natsplug` on PATH).
use std::path::Path;
use std::process::Command;

#[test]
fn upper_cases_the_payload_in_the_real_runtime() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/natsplug-test");
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
