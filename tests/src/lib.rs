//! Shared helpers of the integration tests: where the example plugins are, a real
//! `nats-server` per test ([`nats`]), and a host started on it.
//!
//! Layout:
//! - [`plugins_dir`], [`plugin_path`]: the example plugins, built by `build.rs`.
//! - [`nats`]: start, stop and restart a `nats-server` on a free loopback port.
//! - [`cluster`]: a 3-node JetStream cluster on loopback, for the fleet tests.
//! - [`collector`]: an OTLP/HTTP trace collector that keeps the spans it receives.

pub mod cluster;
pub mod collector;
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

/// The compile cache the tests share: a Python or JavaScript component takes seconds to compile,
/// so each is compiled once per build of the plugins, whichever test loads it first.
pub fn compile_cache_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache")
}

/// A runtime with the default bounds and the shared [`compile_cache_dir`].
pub fn cached_runtime() -> natsplug::runtime::Runtime {
    natsplug::runtime::Runtime::new(natsplug::runtime::RuntimeConfig {
        cache_dir: Some(compile_cache_dir()),
        ..natsplug::runtime::RuntimeConfig::default()
    })
    .expect("runtime")
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

/// A plugins folder of its own for one test: copies of built plugins with test manifests.
pub struct PluginsDir {
    dir: tempfile::TempDir,
}

impl Default for PluginsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginsDir {
    /// An empty folder.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("natsplug-test-plugins-")
                .tempdir()
                .expect("cannot create a plugins dir"),
        }
    }

    /// Adds built plugin `wasm` as `name` with this manifest text.
    pub fn add(&self, name: &str, wasm: &str, manifest: &str) -> &Self {
        std::fs::copy(
            plugin_path(wasm),
            self.dir.path().join(format!("{name}.wasm")),
        )
        .expect("cannot copy plugin");
        std::fs::write(self.dir.path().join(format!("{name}.toml")), manifest)
            .expect("cannot write manifest");
        self
    }

    /// The folder.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// A host running in this process on a test server.
pub struct TestHost {
    shutdown: natsplug::shutdown::Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestHost {
    /// The config a test host uses: the server, the folder, a graceful timeout.
    pub fn config(url: &str, plugins: &std::path::Path) -> natsplug::config::HostConfig {
        let mut config = natsplug::config::HostConfig::default();
        config.nats.servers = vec![url.to_owned()];
        config.host.plugins = plugins.to_owned();
        config.host.graceful_timeout = std::time::Duration::from_secs(10);
        config.publisher.backoff_initial = std::time::Duration::from_millis(50);
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        config.host.id = Some(format!("test-host-{}-{n}", std::process::id()));
        config.runtime.cache = false;
        // As `natsplug dev` does; the tests of an unstored dead-letter subject unset it.
        config.host.dead_letter_stream = Some("NATSPLUG_DEAD".into());
        config
    }

    /// Starts `natsplug::host::run` with this config.
    pub fn start(config: natsplug::config::HostConfig) -> Self {
        init_tracing();
        let shutdown = natsplug::shutdown::Shutdown::new();
        let task = tokio::spawn(natsplug::host::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    /// Begins a graceful stop without waiting for it: from here on the host pulls nothing
    /// new, and gives back what still comes in.
    pub fn begin_stop(&self) {
        self.shutdown.stop();
    }

    /// Stops it gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.stop();
        self.task
            .await
            .expect("host task panicked")
            .expect("host failed");
    }
}

/// Runs the `natsplug` CLI; its stdout if it succeeded.
pub fn try_natsplug_cli(args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(natsplug_bin())
        .args(args)
        .output()
        .expect("cannot run natsplug");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the `natsplug` CLI with these arguments; returns its stdout (panics if it fails).
pub fn natsplug_cli(args: &[&str]) -> String {
    let output = std::process::Command::new(natsplug_bin())
        .args(args)
        .output()
        .expect("cannot run natsplug");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "natsplug {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The version natsplug shows for a plugin: 16 hex digits of SHA-256(wasm, 0, manifest).
pub fn plugin_version(wasm: &[u8], manifest: &str) -> String {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(wasm);
    hash.update([0]);
    hash.update(manifest.as_bytes());
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Replaces a file atomically (write aside, then rename), as deploy tools should.
pub fn replace_file(path: &std::path::Path, contents: &[u8]) {
    let aside = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().expect("a file name").to_string_lossy()
    ));
    std::fs::write(&aside, contents).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

/// The `natsplug` binary (built by the README's test command before the tests).
pub fn natsplug_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATSPLUG_BIN") {
        return PathBuf::from(bin);
    }
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/natsplug");
    assert!(
        bin.exists(),
        "{bin:?} is missing: run `cargo build -p natsplug` first (scripts/test.sh does)"
    );
    bin
}

/// The set-up most tests share: tracing for the test's logs, a nats-server of the test's own,
/// a connection to it and the streams `IN` (`in.>`), `OUT` (`out.>`) and `DEAD` (`dead.>`).
pub async fn jetstream_setup() -> (
    nats::NatsServer,
    async_nats::Client,
    async_nats::jetstream::Context,
) {
    init_tracing();
    let server = nats::NatsServer::start();
    let client = server.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out.>"]).await;
    create_stream(&js, "DEAD", &["dead.>"]).await;
    (server, client, js)
}

/// Creates a file-backed stream.
pub async fn create_stream(js: &async_nats::jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot create stream {name}: {e}"));
}

/// Publishes every payload to `subject` with pipelined publish acks.
pub async fn publish_all(js: &async_nats::jetstream::Context, subject: &str, payloads: &[String]) {
    for chunk in payloads.chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for payload in chunk {
            acks.push(
                js.publish(subject.to_owned(), payload.clone().into())
                    .await
                    .expect("publish"),
            );
        }
        for ack in acks {
            ack.await.expect("publish ack");
        }
    }
}

/// One stored message.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its subject.
    pub subject: String,
    /// Its payload as text.
    pub payload: String,
    /// Its headers.
    pub headers: async_nats::HeaderMap,
    /// When the server stored it.
    pub stored_at: time::OffsetDateTime,
}

impl Stored {
    /// The first value of header `name`, or `<missing>`.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.as_str())
            .unwrap_or("<missing>")
    }
}

/// Every message of a stream (empty if the stream does not exist).
pub async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> Vec<Stored> {
    use futures::StreamExt as _;
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let total = s.info().await.expect("stream info").state.messages as usize;
    if total == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("reader consumer");
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .batch()
            .max_messages(total - out.len())
            .expires(std::time::Duration::from_secs(2))
            .messages()
            .await
            .expect("batch");
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            let stored_at = m.info().expect("info").published;
            out.push(Stored {
                subject: m.subject.to_string(),
                payload: String::from_utf8_lossy(&m.payload).into_owned(),
                headers: m.headers.clone().unwrap_or_default(),
                stored_at,
            });
        }
        assert!(
            out.len() > before,
            "stream {stream} stopped giving messages"
        );
    }
    out
}

/// How many messages a stream holds (0 if it does not exist).
pub async fn stream_count(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// A consumer's state; waits up to 10 s for the host to create the consumer.
pub async fn consumer_info(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> async_nats::jetstream::consumer::Info {
    let stream = js.get_stream(stream).await.expect("stream");
    let started = std::time::Instant::now();
    loop {
        match stream.consumer_info(durable).await {
            Ok(info) => return info,
            Err(e) if started.elapsed() > std::time::Duration::from_secs(10) => {
                panic!("consumer {durable:?} not found: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

/// Waits (20 s at most) until the consumer has acked or termed everything it was delivered, and
/// gives its info: the delivered sequence says how many deliveries there were.
pub async fn settled(
    js: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
) -> async_nats::jetstream::consumer::Info {
    wait_until(
        std::time::Duration::from_secs(20),
        "nothing pending",
        || async {
            let info = consumer_info(js, stream, durable).await;
            info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.consumer_sequence > 0
        },
    )
    .await;
    consumer_info(js, stream, durable).await
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Answers every request on `subject` with `answer`, until the connection closes: a stand-in
/// service. Subscribed (and flushed) when this returns.
pub async fn answer_requests(client: &async_nats::Client, subject: &str, answer: &'static str) {
    use futures::StreamExt as _;
    let mut requests = client
        .subscribe(subject.to_owned())
        .await
        .expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, answer.into()).await;
            }
        }
    });
    client.flush().await.expect("flush");
}

/// A benchmark's `--name N` argument, else `default`.
pub fn bench_arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// A GET on a host's admin listener: (status code, body).
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// A `natsplug run` child process.
pub struct HostProcess {
    child: std::process::Child,
}

impl HostProcess {
    /// Starts `natsplug run` on a server and a plugins folder, with extra arguments.
    pub fn spawn(url: &str, plugins: &std::path::Path, extra: &[&str]) -> Self {
        Self::spawn_logging(url, plugins, extra, std::process::Stdio::null())
    }

    /// [`spawn`](Self::spawn), with its log (stderr) going to `log`.
    pub fn spawn_logging(
        url: &str,
        plugins: &std::path::Path,
        extra: &[&str],
        log: impl Into<std::process::Stdio>,
    ) -> Self {
        let child = std::process::Command::new(natsplug_bin())
            .args(["run", "--log", "warn", "--server", url, "--plugins"])
            .arg(plugins)
            .args(extra)
            .env("NATSPLUG_HOST_DEAD_LETTER_STREAM", "NATSPLUG_DEAD")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start natsplug");
        Self { child }
    }

    /// The peak resident set of the process so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the process's status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM");
        kib * 1024
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// Waits for it to exit, at most `timeout`.
    pub async fn wait(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "natsplug did not exit within {timeout:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
