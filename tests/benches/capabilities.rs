//! What one capability call costs a handler: the `probe` plugin (Rust, a fresh instance per
//! message) doing one KV get, one request or one HTTP GET, against a local nats-server and a
//! loopback HTTP server, beside the same operation done natively in the same run (async-nats's
//! `Store::get` and `Client::request`; an HTTP/1.1 GET on a new connection, as
//! wasmtime-wasi-http makes one per request), and a probe call that uses no capability.
//!
//! `cargo bench -p natsplug-tests --bench capabilities [-- --calls N --rounds R]`
//! Prints the median of R rounds of N calls each, and the spread.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use async_nats::jetstream::{self, kv};
use natsplug::capability::Services;
use natsplug::manifest::Manifest;
use natsplug::message::Message;
use natsplug::runtime::{Hooks, Outcome, Plugin, Runtime, RuntimeConfig};
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{bench_arg, plugin_path};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Per-call microseconds of `rounds` rounds of `calls` calls: (median, min, max).
async fn measure<F, Fut>(calls: usize, rounds: usize, mut call: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..calls / 10 {
        call().await;
    }
    let mut per_call: Vec<f64> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..calls {
            call().await;
        }
        per_call.push(started.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    per_call.sort_by(f64::total_cmp);
    (per_call[rounds / 2], per_call[0], per_call[rounds - 1])
}

async fn probe(plugin: &Plugin, request: &str) {
    match plugin
        .handle(&Message::new("probe", request.to_owned()), Hooks::default())
        .await
    {
        Ok(Outcome::Success(outputs)) => {
            let answer = String::from_utf8_lossy(&outputs[0].payload);
            assert!(!answer.starts_with("error"), "{request}: {answer}");
        }
        other => panic!("{request}: {other:?}"),
    }
}

async fn native_get(addr: SocketAddr) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /price HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(response.ends_with(b"42"));
}

fn main() {
    let calls = bench_arg("--calls", 2000);
    let rounds = bench_arg("--rounds", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = NatsServer::start();
        let client = server.connect().await;
        let js = jetstream::new(client.clone());
        let bucket = js
            .create_key_value(kv::Config {
                bucket: "ro".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        bucket.put("k", "v".into()).await.unwrap();
        natsplug_tests::answer_requests(&client, "pricing.quote", "quoted").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/price", axum::routing::get(|| async { "42" }));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let runtime = Runtime::new(RuntimeConfig::default())
            .unwrap()
            .with_services(Services::new(server.connect().await, None));
        let manifest = Manifest::parse(
            &format!(
                "[publish]\nallow = [\"probe.out\"]\n[request]\nallow = [\"pricing.quote\"]\n\
                 [kv]\nbuckets = {{ ro = \"read\" }}\n[http]\nallow = [\"http://{http}\"]\n"
            ),
            Path::new("bench.toml"),
        )
        .unwrap();
        let plugin = runtime
            .load_file(&plugin_path("probe"), Some(manifest))
            .unwrap();
        plugin.open_capabilities().await.unwrap();

        println!("capability costs: {rounds} rounds of {calls} calls, median per call (min-max), µs");
        println!("| call | natsplug (probe, fresh instance) | native | natsplug - native |");
        println!("|---|---:|---:|---:|");
        let (none, lo, hi) = measure(calls, rounds, || probe(&plugin, "to:probe.out")).await;
        println!("| no capability | {none:.1} ({lo:.1}-{hi:.1}) | | |");
        let rows: [(&str, &str); 3] = [
            ("kv open + get", "kv-get:ro:k"),
            ("request", "request:pricing.quote"),
            ("http GET", &format!("http:http://{http}/price")),
        ];
        for (name, request) in rows {
            let (ours, lo, hi) = measure(calls, rounds, || probe(&plugin, request)).await;
            let (native, nlo, nhi) = match name {
                "kv open + get" => {
                    measure(calls, rounds, || async {
                        bucket.get("k").await.unwrap();
                    })
                    .await
                }
                "request" => {
                    measure(calls, rounds, || async {
                        client.request("pricing.quote", "probe".into()).await.unwrap();
                    })
                    .await
                }
                _ => measure(calls, rounds, || native_get(http)).await,
            };
            println!(
                "| {name} | {ours:.1} ({lo:.1}-{hi:.1}) | {native:.1} ({nlo:.1}-{nhi:.1}) | {:.1} |",
                ours - native
            );
        }
    });
}
