//! Shared helpers of the integration tests: where the example plugins are, a real
//! `nats-server` per test ([`nats`]), and a host started on it.
//!
//! Layout:
//! - [`plugins_dir`], [`plugin_path`]: the example plugins, built by `build.rs`.
//! - [`nats`]: start, stop and restart a `nats-server` on a free loopback port.

pub mod nats;

use std::path::PathBuf;

/// The folder of built example plugins (`NAME.wasm` + `NAME.toml`).
pub fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("NATSPLUG_PLUGINS_DIR"))
}

/// The built example plugin `name`.
pub fn plugin_path(name: &str) -> PathBuf {
    plugins_dir().join(format!("{name}.wasm"))
}

/// Turns on test logging once (RUST_LOG decides; default warn).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
