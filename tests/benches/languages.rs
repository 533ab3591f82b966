//! `uppercase` in Rust, Python, JavaScript, C (components), Go and C (command modules), in one run:
//! the cost of one handler call (mean over many calls, in process) and the end-to-end throughput
//! through a real nats-server (N inputs stored first, then one host pulls, handles, publishes
//! each output with its publish ack and acks the input; msgs/s from the host's start to the
//! last output stored), each with a fresh instance per message and, for components, with
//! instance reuse (a command runs once per instance: no reuse). Prints a Markdown table.
//!
//! `cargo bench -p natsplug-tests --bench languages` (NATSPLUG_BENCH_MESSAGES, default 3000)

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{PluginsDir, TestHost, create_stream, publish_all, stream_count};

async fn run(plugin: &str, reuse: u32, messages: usize) -> f64 {
    let server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out.>"]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        plugin,
        plugin,
        &format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\nconcurrency = 64\n\
             [limits]\nmemory = \"256MiB\"\n[instance]\nisolation = \"{}\"\nmax_invocations = {reuse}\n\
             [publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n",
            if reuse > 1 { "pool" } else { "message" }
        ),
    );
    let payloads: Vec<String> = (0..messages).map(|i| format!("{i:0>64}")).collect();
    publish_all(&js, "in.upper", &payloads).await;
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.runtime.cache = true;
    config.runtime.cache_dir = Some(natsplug_tests::compile_cache_dir());
    // Compile (or load from the cache) before the clock starts.
    natsplug::runtime::Runtime::new(config.runtime.runtime_config())
        .unwrap()
        .load_file(&natsplug_tests::plugin_path(plugin), None)
        .unwrap();
    let started = Instant::now();
    let host = TestHost::start(config);
    while stream_count(&js, "OUT").await < messages as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{plugin} too slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    host.stop().await;
    rate
}

/// Mean wall time of one `handle` call, in µs, over `calls` calls.
async fn per_call(plugin: &str, reuse: u32, calls: u32) -> f64 {
    let runtime = natsplug::runtime::Runtime::new(natsplug::runtime::RuntimeConfig {
        cache_dir: Some(natsplug_tests::compile_cache_dir()),
        ..Default::default()
    })
    .unwrap();
    let manifest = natsplug::manifest::Manifest::parse(
        &format!(
            "[limits]\nmemory = \"256MiB\"\n[instance]\nisolation = \"{}\"\nmax_invocations = {reuse}\n\
             [publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n",
            if reuse > 1 { "pool" } else { "message" }
        ),
        Path::new("bench.toml"),
    )
    .unwrap();
    let plugin = runtime
        .load_file(&natsplug_tests::plugin_path(plugin), Some(manifest))
        .unwrap();
    let msg = natsplug::message::Message::new("in.upper", format!("{:0>64}", 7));
    let hooks = natsplug::runtime::Hooks::default;
    for _ in 0..calls / 10 {
        plugin.handle(&msg, hooks()).await.unwrap();
    }
    let started = Instant::now();
    for _ in 0..calls {
        plugin.handle(&msg, hooks()).await.unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(calls)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let messages = std::env::var("NATSPLUG_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "per call (64 B, in process) and end to end ({messages} messages of 64 B, concurrency 64)"
    );
    println!(
        "| plugin | call, fresh | call, reused | end to end, fresh | end to end, reused | reuse / fresh |"
    );
    println!("|---|---|---|---|---|---|");
    for (language, plugin, calls, reusable) in [
        ("Rust", "uppercase", 20_000, true),
        ("Python", "uppercase-py", 300, true),
        ("JavaScript", "uppercase-js", 500, true),
        ("Go (command)", "uppercase-go", 300, false),
        ("C (component)", "uppercase-component-c", 20_000, true),
        ("C (command)", "uppercase-c", 3_000, false),
    ] {
        let call_fresh = rt.block_on(per_call(plugin, 1, calls));
        let fresh = rt.block_on(run(plugin, 1, messages));
        if reusable {
            let call_reused = rt.block_on(per_call(plugin, 1_000_000, calls * 10));
            let reused = rt.block_on(run(plugin, 1_000_000, messages));
            println!(
                "| {language} | {call_fresh:.1} µs | {call_reused:.1} µs | {fresh:.0} msgs/s | {reused:.0} msgs/s | {:.2}x |",
                reused / fresh
            );
        } else {
            println!("| {language} | {call_fresh:.1} µs | n/a | {fresh:.0} msgs/s | n/a | n/a |");
        }
    }
}
