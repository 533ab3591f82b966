//! Handlers in Python and JavaScript beside Rust: the same `uppercase` in the three languages
//! answers byte for byte the same, in the runtime and end to end through NATS, and a Python
//! handler of 12 s on a 3 s ack_wait is processed once. Python and JavaScript components take
//! seconds to compile: every test here shares one compile cache under target/.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use natsplug::manifest::Manifest;
use natsplug::message::Message;
use natsplug::runtime::{Hooks, Plugin, Runtime, RuntimeConfig};
use natsplug_tests::{
    PluginsDir, TestHost, consumer_info, jetstream_setup, plugin_path, publish_all, stream_count,
    stream_messages, wait_until,
};

const LANGUAGES: [&str; 3] = ["uppercase", "uppercase-py", "uppercase-js"];

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-compile-cache")
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: Some(cache_dir()),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn load(rt: &Runtime, name: &str, manifest: &str) -> Plugin {
    let manifest = Manifest::parse(manifest, Path::new("test.toml")).unwrap();
    rt.load_file(&plugin_path(name), Some(manifest)).unwrap()
}

/// The inputs every language gets: ASCII, accents, an empty payload, invalid UTF-8, and
/// multi-valued headers.
fn inputs() -> Vec<Message> {
    let mut with_headers = Message::new("in.upper", "headers too");
    with_headers.headers.append("trace", "1");
    with_headers.headers.append("trace", "2");
    with_headers.headers.append("x-other", "é");
    vec![
        Message::new("in.upper", "hello, wasm!"),
        Message::new("in.upper", "ÀÉÎõü straße ǆ"),
        Message::new("in.upper", ""),
        Message::new("in.upper", vec![0xff, 0xfe, 0x41]),
        with_headers,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_answers_byte_for_byte_the_same_in_rust_python_and_javascript() {
    let rt = runtime();
    let manifest =
        "[publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\nmarker = \"m\"\n";
    let plugins: Vec<Plugin> = LANGUAGES
        .iter()
        .map(|name| load(&rt, name, manifest))
        .collect();
    for input in inputs() {
        let rust = plugins[0].handle(&input, Hooks::default()).await;
        for (name, plugin) in LANGUAGES.iter().zip(&plugins).skip(1) {
            let other = plugin.handle(&input, Hooks::default()).await;
            assert_eq!(other, rust, "{name} differs from Rust on {input:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_outputs_are_identical_end_to_end_through_nats() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    for name in LANGUAGES {
        // Three durables on the same subject: every language gets every input.
        plugins.add(
            name,
            name,
            &format!(
                "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\n[limits]\nmemory = \"256MiB\"\n\
                 [publish]\nallow = [\"out.{name}\"]\n[config]\noutput = \"out.{name}\"\n"
            ),
        );
    }
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.runtime.cache = true;
    config.runtime.cache_dir = Some(cache_dir());
    let host = TestHost::start(config);
    let payloads: Vec<String> = (0..50)
        .map(|i| format!("Message {i}: ÀÉÎ straße"))
        .collect();
    for payload in &payloads {
        let mut headers = async_nats::HeaderMap::new();
        headers.append("trace", "a");
        headers.append("trace", "b");
        js.publish_with_headers("in.upper", headers, payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    wait_until(Duration::from_secs(180), "150 outputs", || async {
        stream_count(&js, "OUT").await >= 150
    })
    .await;
    host.stop().await;

    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 150);
    let mut by_language: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for m in &outputs {
        let headers: Vec<String> = m.headers.get_all("trace").map(|v| v.to_string()).collect();
        by_language
            .entry(m.subject.clone())
            .or_default()
            .push((m.payload.clone(), headers));
    }
    for list in by_language.values_mut() {
        list.sort();
    }
    let rust = &by_language["out.uppercase"];
    assert_eq!(rust.len(), 50);
    assert_eq!(rust[0].1, vec!["a", "b"]);
    assert_eq!(&by_language["out.uppercase-py"], rust);
    assert_eq!(&by_language["out.uppercase-js"], rust);
    for name in LANGUAGES {
        let info = consumer_info(&js, "IN", name).await;
        assert_eq!(
            (info.num_pending, info.num_ack_pending, info.num_redelivered),
            (0, 0, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twelve_second_python_handler_on_a_three_second_ack_wait_runs_once() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "slow-py",
        "slow-py",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\nack_wait = \"3s\"\n\
         [limits]\ndeadline = \"60s\"\nmemory = \"256MiB\"\n\
         [publish]\nallow = [\"out.slow\"]\n[config]\noutput = \"out.slow\"\n",
    );
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.runtime.cache = true;
    config.runtime.cache_dir = Some(cache_dir());
    let host = TestHost::start(config);
    publish_all(&js, "in.slow", &["12".to_owned()]).await;
    wait_until(Duration::from_secs(120), "the output", || async {
        stream_count(&js, "OUT").await == 1
    })
    .await;
    wait_until(Duration::from_secs(5), "the ack", || async {
        consumer_info(&js, "IN", "slow-py").await.num_ack_pending == 0
    })
    .await;
    host.stop().await;
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].payload, "slept 12");
    let info = consumer_info(&js, "IN", "slow-py").await;
    assert_eq!(info.delivered.consumer_sequence, 1, "delivered once");
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0)
    );
}
