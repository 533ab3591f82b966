//! `natsplug dev`: the embedded default. Without a configured server it starts a local
//! `nats-server` with JetStream in a temporary store (the binary from `NATS_SERVER_BIN` or
//! `PATH`), creates the demo streams, runs the host on the plugins folder, publishes a few
//! sample messages and prints what comes out, then keeps running until Ctrl-C.
//!
//! With a build command (`--build`, see [`crate::watch`]) it is a plugin author's loop instead:
//! no samples; it builds the project, creates the streams its manifests subscribe to, prints
//! what the plugins publish, and rebuilds and hot-reloads on every source change.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;

use crate::config::HostConfig;
use crate::manifest::Manifest;
use crate::shutdown::Shutdown;
use crate::watch::Build;

/// The demo streams: (name, subjects).
pub const DEMO_STREAMS: &[(&str, &[&str])] = &[
    ("DEMO_IN", &["demo.in.>"]),
    ("DEMO_OUT", &["demo.out.>"]),
    ("DEAD_LETTERS", &["demo.dead.>", "natsplug.dead.>"]),
    // What the other example plugins consume, so that every one of them loads when `natsplug
    // dev` serves the whole examples folder.
    ("BATCH", &["batch.in.>"]),
    ("TALLY", &["tally.in"]),
];

/// The KV buckets the example plugins are granted (`tally`).
pub const DEMO_BUCKETS: &[&str] = &["tally"];

/// The plugins the samples go to, by file name: what `scripts/demo.sh` builds and serves
/// (`target/plugins/demo`). Served from any other folder, `natsplug dev` loads what is there.
pub const DEMO_PLUGINS: &[&str] = &[
    "uppercase",
    "fanout",
    "flaky",
    "poison",
    "slow",
    "uppercase-py",
    "uppercase-js",
];

/// Sample messages: (subject, payload).
pub const SAMPLES: &[(&str, &str)] = &[
    ("demo.in.uppercase", "hello from natsplug"),
    ("demo.in.fanout", "one message, three outputs"),
    ("demo.in.flaky", "fails twice, then works"),
    ("demo.in.poison", "a message nobody can handle"),
    ("demo.in.slow", "4"),
    ("demo.in.py.uppercase", "hello from python"),
    ("demo.in.js.uppercase", "hello from javascript"),
];

/// A `nats-server` child process with its own store; killed and removed on drop.
pub struct LocalServer {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl LocalServer {
    /// Starts `nats-server -js` on a free loopback port and waits until that port answers with
    /// the server's `INFO` line. If the server exits at once (another process took the port
    /// between our pick and its bind), it tries another port, up to three.
    pub fn start() -> anyhow::Result<Self> {
        let binary = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("nats-server"));
        let store = tempfile::Builder::new().prefix("natsplug-dev-").tempdir()?;
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let name = format!("natsplug-dev-{}-{port}", std::process::id());
            let mut child = Command::new(&binary)
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-n",
                    &name,
                    "-js",
                    "-sd",
                ])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start {binary:?}: run the README's set-up, or set NATS_SERVER_BIN"
                    )
                })?;
            match wait_until_serving(&mut child, port, &name) {
                Ok(()) => {
                    return Ok(Self {
                        child,
                        url: format!("nats://127.0.0.1:{port}"),
                        _store: store,
                    });
                }
                Err(NotServing::Exited(status)) => {
                    tracing::warn!(port, %status, "nats-server exited at start; trying another port");
                }
                Err(NotServing::Silent) => {
                    anyhow::bail!("nats-server did not answer on port {port} within 10s")
                }
            }
        }
        anyhow::bail!("nats-server exited at start on three free ports in a row")
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a started nats-server is not serving.
#[derive(Debug)]
pub enum NotServing {
    /// It exited at start: another process probably took its port.
    Exited(std::process::ExitStatus),
    /// It did not answer within 10 s; it has been killed.
    Silent,
}

impl std::fmt::Display for NotServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(status) => write!(f, "it exited ({status}), the port is probably taken"),
            Self::Silent => f.write_str("no NATS INFO within 10 s"),
        }
    }
}

/// Waits until nats-server `child`, just started on `port` with server name `name` (`-n`),
/// answers there with its `INFO` line naming it: a port that accepts connections may be
/// another process's listener, or another nats-server that took the port first (then `child`
/// exits a moment later, failing to bind). The test harness uses it too.
pub fn wait_until_serving(child: &mut Child, port: u16, name: &str) -> Result<(), NotServing> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotServing::Exited(status));
        }
        if info_line(port).is_some_and(|info| info.contains(&format!("\"server_name\":\"{name}\"")))
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotServing::Silent);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a connection to `port` on 127.0.0.1 gets a NATS server's `INFO` line (not just any
/// listener).
pub fn answers_info(port: u16) -> bool {
    info_line(port).is_some()
}

/// The `INFO` line a NATS server on `port` greets a connection with (at most 64 KiB).
fn info_line(port: u16) -> Option<String> {
    use std::io::BufRead as _;
    use std::io::Read as _;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut line = String::new();
    std::io::BufReader::new(stream.take(64 << 10))
        .read_line(&mut line)
        .ok()?;
    line.starts_with("INFO ").then_some(line)
}

/// Makes the streams the plugins in `dir` need on the development server: the one each
/// manifest subscribes through (unless it binds to one that exists), with the manifest's
/// subjects, and `NAME_OUT` for what it may publish (`[publish] allow`) unless a stream stores
/// those subjects already (outputs are published with acks: without a stream they fail). Returns
/// the publish subjects, to print. A manifest that does not parse is left to the host, which says
/// why it does not load it.
async fn plugin_streams(js: &jetstream::Context, dir: &std::path::Path) -> Vec<String> {
    let mut publish = std::collections::BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    manifests.sort();
    for path in manifests {
        let Ok(manifest) = Manifest::load(&path) else {
            continue;
        };
        let plugin = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_uppercase().replace(['-', '.'], "_"))
            .unwrap_or_default();
        publish.extend(manifest.publish.allow.iter().cloned());
        if let Some(subscribe) = &manifest.subscribe
            && let Some(name) = subscribe.stream.as_deref().filter(|_| !subscribe.bind)
        {
            ensure_stream(js, name, &subscribe.subjects, &path).await;
        }
        if !manifest.publish.allow.is_empty() {
            let name = format!("{plugin}_OUT");
            ensure_stream(js, &name, &manifest.publish.allow, &path).await;
        }
    }
    publish.into_iter().collect()
}

/// Creates the stream `name` on `subjects` for the plugin of `manifest` unless a stream of that
/// name exists or another one stores those subjects already.
async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &[String],
    manifest: &std::path::Path,
) {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::CreateStreamErrorKind;
    if js.get_stream(name).await.is_ok() {
        return;
    }
    let created = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: subjects.to_vec(),
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => println!(
            "natsplug dev: created the stream {name} ({}) for {}",
            subjects.join(", "),
            manifest.display()
        ),
        Err(e)
            if matches!(e.kind(), CreateStreamErrorKind::JetStream(ref js)
                if js.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP) => {}
        Err(e) => println!("natsplug dev: cannot create the stream {name}: {e}"),
    }
}

/// Creates the demo streams and buckets (idempotent).
pub async fn create_demo_streams(js: &jetstream::Context) -> anyhow::Result<()> {
    for (name, subjects) in DEMO_STREAMS {
        js.get_or_create_stream(stream::Config {
            name: (*name).to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot create stream {name}: {e}"))?;
    }
    for bucket in DEMO_BUCKETS {
        if js.get_key_value(*bucket).await.is_err() {
            js.create_key_value(jetstream::kv::Config {
                bucket: (*bucket).to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("cannot create the KV bucket {bucket}: {e}"))?;
        }
    }
    Ok(())
}

/// Runs the demo. With `once`, it exits after the samples' expected outputs were seen (or after
/// `once_timeout`) instead of waiting for Ctrl-C; the exit is an error if any is missing.
pub async fn run(
    mut config: HostConfig,
    shutdown: Shutdown,
    once: Option<Duration>,
    build: Option<Build>,
) -> anyhow::Result<()> {
    let _local = if config.nats.servers.is_empty() {
        let server = LocalServer::start()?;
        println!(
            "natsplug dev: started a local nats-server with JetStream at {}",
            server.url()
        );
        config.nats.servers = vec![server.url().to_owned()];
        Some(server)
    } else {
        None
    };
    let client = crate::connection::connect(&config.nats, "dev").await?;
    let js = jetstream::new(client.clone());
    create_demo_streams(&js).await?;
    // A plugin with a dead-letter subject of its own gets it stored here too.
    config
        .host
        .dead_letter_stream
        .get_or_insert_with(|| "DEAD_LETTERS".to_owned());
    let watched = match &build {
        Some(build) => {
            build.run().await?;
            Some(plugin_streams(&js, &config.host.plugins).await)
        }
        None => None,
    };
    let printed = match &watched {
        Some(subjects) => subjects.iter().map(String::as_str).collect(),
        None => vec!["demo.out.>"],
    };
    let mut subscriptions = Vec::new();
    for subject in printed {
        subscriptions.push(
            client
                .subscribe(subject.to_owned())
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe to {subject}: {e}"))?,
        );
    }
    let mut outputs = futures::stream::select_all(subscriptions);
    let mut dead = Vec::new();
    // The demo's dead letters, and those of a plugin without a dead-letter subject of its own.
    for subject in ["demo.dead.>", "natsplug.dead.>"] {
        dead.push(
            client
                .subscribe(subject)
                .await
                .map_err(|e| anyhow::anyhow!("cannot subscribe to {subject}: {e}"))?,
        );
    }
    let mut dead = futures::stream::select_all(dead);

    let host = tokio::spawn(crate::host::run(config.clone(), shutdown.clone()));
    println!(
        "natsplug dev: serving the plugins in {}",
        config.host.plugins.display()
    );
    if let (Some(build), Some(subjects)) = (&build, &watched) {
        println!(
            "natsplug dev: rebuilding on every change in {} ({}); printing what is published to {}",
            build.dir.display(),
            build.command,
            if subjects.is_empty() {
                "nothing (no [publish] allow)".to_owned()
            } else {
                subjects.join(", ")
            },
        );
        let (js, plugins) = (js.clone(), config.host.plugins.clone());
        crate::watch::watch(build.clone(), shutdown.clone(), move || {
            let (js, plugins) = (js.clone(), plugins.clone());
            async move {
                plugin_streams(&js, &plugins).await;
            }
        })?;
    }
    let samples = if build.is_some() { &[][..] } else { SAMPLES };
    for (subject, payload) in samples {
        js.publish(*subject, payload.as_bytes().to_vec().into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot publish to {subject}: {e}"))?
            .await
            .map_err(|e| anyhow::anyhow!("no publish ack from {subject}: {e}"))?;
        println!("  in   {subject:<22} {payload:?}");
    }
    // uppercase (Rust, Python, JavaScript) 3, fanout 3, flaky 1, slow 1 outputs; poison 1
    // dead letter.
    let expected_outputs = 8;
    let expected_dead = 1;
    let (mut seen_outputs, mut seen_dead) = (0, 0);
    let deadline = once.map(|d| tokio::time::Instant::now() + d);
    let sleep_until = crate::backoff::sleep_until(deadline);
    tokio::pin!(sleep_until);
    let interrupted = crate::shutdown::signal();
    tokio::pin!(interrupted);
    loop {
        if once.is_some() && seen_outputs >= expected_outputs && seen_dead >= expected_dead {
            break;
        }
        tokio::select! {
            Some(m) = outputs.next() => {
                seen_outputs += 1;
                println!("  out  {:<22} {:?}", m.subject.as_str(), String::from_utf8_lossy(&m.payload));
            }
            Some(m) = dead.next() => {
                seen_dead += 1;
                let reason = m.headers.as_ref().and_then(|h| h.get(crate::delivery::settle::header::REASON)).map(|v| v.to_string()).unwrap_or_default();
                println!("  dead {:<22} {:?} ({reason})", m.subject.as_str(), String::from_utf8_lossy(&m.payload));
            }
            _ = &mut sleep_until => break,
            _ = &mut interrupted => break,
        }
    }
    shutdown.stop();
    host.await.context("the host task failed")??;
    if once.is_some() && (seen_outputs < expected_outputs || seen_dead < expected_dead) {
        anyhow::bail!(
            "saw {seen_outputs}/{expected_outputs} outputs and {seen_dead}/{expected_dead} dead letters"
        );
    }
    println!("natsplug dev: {seen_outputs} outputs, {seen_dead} dead letters; stopped");
    Ok(())
}
