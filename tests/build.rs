//! Builds the example plugins (Rust for wasm32-wasip2, Python and JavaScript components) once
//! per build of the tests, through the same scripts the demo uses, and tells the tests where
//! the plugins folder is.
use std::path::Path;
use std::process::Command;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = Path::new(&manifest_dir)
        .parent()
        .expect("tests/ has a parent");
    for watched in ["plugins", "guest-sdk", "scripts/build-plugins.sh"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let output = Command::new("bash")
        .arg(root.join("scripts/build-plugins.sh"))
        // The outer build's settings are for the host target, not for the guests.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .output()
        .expect("cannot run scripts/build-plugins.sh");
    if !output.status.success() {
        panic!(
            "building the example plugins failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dist = stdout
        .lines()
        .last()
        .expect("the script prints the folder")
        .trim();
    println!("cargo:rustc-env=NATSPLUG_PLUGINS_DIR={dist}");

    // The Python and JavaScript plugins, with the toolchains scripts/setup.sh installs. Without
    // them the build goes on and the language tests say what is missing.
    let guests = Command::new("bash")
        .arg(root.join("scripts/build-guests.sh"))
        .output()
        .expect("cannot run scripts/build-guests.sh");
    if !guests.status.success() {
        println!(
            "cargo:warning=Python/JavaScript plugins not built (run scripts/setup.sh): {}",
            String::from_utf8_lossy(&guests.stderr).trim()
        );
    }
}
