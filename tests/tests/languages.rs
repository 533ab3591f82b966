//! Handlers in Python and JavaScript beside Rust: the twins of `uppercase` and `slow` give the
//! same outputs where the languages' own functions agree (Rust's `to_uppercase`, Python's
//! `str.upper()` and JavaScript's `toUpperCase()` each follow their own Unicode version, so
//! outputs are compared on ASCII, common accented Latin and `ß` only), fail the same way (a
//! reject) where they must, in words of their own; end to end through NATS too; and a Python
//! handler of 12 s on a 3 s ack_wait is processed once. Python and JavaScript components take
//! seconds to compile: every test here shares one compile cache under target/.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use natsplug::manifest::Manifest;
use natsplug::message::Message;
use natsplug::message::Output;
use natsplug::runtime::{Hooks, Outcome, Plugin, Runtime};
use natsplug_tests::{
    PluginsDir, TestHost, cached_runtime, compile_cache_dir, consumer_info, jetstream_setup,
    plugin_path, publish_all, stream_count, stream_messages, wait_until,
};

const LANGUAGES: [&str; 3] = ["uppercase", "uppercase-py", "uppercase-js"];
const SLOW: [&str; 3] = ["slow", "slow-py", "slow-js"];

fn load(rt: &Runtime, name: &str, manifest: &str) -> Plugin {
    let manifest = Manifest::parse(manifest, Path::new("test.toml")).unwrap();
    rt.load_file(&plugin_path(name), Some(manifest)).unwrap()
}

/// Inputs on which the three languages' upper-casing agrees, with the output all three give:
/// ASCII, accented Latin of every Unicode version in use (`ß` has the full mapping `SS` in all
/// three, and so has the digraph `ǆ`), an empty payload, and multi-valued headers.
fn agreeing_inputs() -> Vec<(Message, &'static str)> {
    let mut with_headers = Message::new("in.upper", "headers too");
    with_headers.headers.append("trace", "1");
    with_headers.headers.append("trace", "2");
    with_headers.headers.append("x-other", "é");
    vec![
        (Message::new("in.upper", "hello, wasm!"), "HELLO, WASM!"),
        (
            Message::new("in.upper", "ÀÉÎõü straße ǆ çà"),
            "ÀÉÎÕÜ STRASSE Ǆ ÇÀ",
        ),
        (Message::new("in.upper", ""), ""),
        (with_headers, "HEADERS TOO"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_in_rust_python_and_javascript_agrees_where_their_unicode_tables_do() {
    let rt = cached_runtime();
    let manifest =
        "[publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\nmarker = \"m\"\n";
    let plugins: Vec<Plugin> = LANGUAGES
        .iter()
        .map(|name| load(&rt, name, manifest))
        .collect();
    for (input, upper) in agreeing_inputs() {
        let mut headers = input.headers.clone();
        headers.insert("marker", "m");
        let expected = Outcome::Success(vec![Output {
            subject: Some("out.upper".into()),
            headers,
            payload: upper.into(),
        }]);
        for (name, plugin) in LANGUAGES.iter().zip(&plugins) {
            let outcome = plugin.handle(&input, Hooks::default()).await;
            assert_eq!(outcome, Ok(expected.clone()), "{name} on {input:?}");
        }
    }
}

/// Asserts that `outcome` is a reject (the dead-letter path), whatever its words.
fn assert_rejected(outcome: Result<Outcome, natsplug::runtime::HandlerError>, what: &str) {
    match outcome {
        Ok(Outcome::Reject { reason }) => assert!(!reason.is_empty(), "{what}: an empty reason"),
        other => panic!("{what}: not a reject: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_a_reject_in_rust_python_and_javascript() {
    let rt = cached_runtime();
    let manifest = "[publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n";
    for name in LANGUAGES {
        let plugin = load(&rt, name, manifest);
        for payload in [vec![0xff, 0xfe, 0x41], b"ok \xe2\x82".to_vec()] {
            let input = Message::new("in.upper", payload);
            let outcome = plugin.handle(&input, Hooks::default()).await;
            assert_rejected(outcome, &format!("{name} on {input:?}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_in_rust_python_and_javascript_answers_a_number_and_rejects_a_non_number() {
    let rt = cached_runtime();
    let manifest = "[publish]\nallow = [\"out.slow\"]\n[config]\noutput = \"out.slow\"\n";
    for name in SLOW {
        let plugin = load(&rt, name, manifest);
        for (payload, answer) in [
            ("0", "slept 0"),
            (" 0.05\n", "slept 0.05"),
            ("-1", "slept -1"),
        ] {
            let outcome = plugin
                .handle(&Message::new("in.slow", payload), Hooks::default())
                .await;
            let expected = Outcome::Success(vec![Output {
                subject: Some("out.slow".into()),
                headers: Default::default(),
                payload: answer.into(),
            }]);
            assert_eq!(outcome, Ok(expected), "{name} on {payload:?}");
        }
        for payload in ["soon", "", "1 2", "12s"] {
            let outcome = plugin
                .handle(&Message::new("in.slow", payload), Hooks::default())
                .await;
            assert_rejected(outcome, &format!("{name} on {payload:?}"));
        }
    }
}

/// 50 inputs with a multi-valued header, on a payload all three languages upper-case alike: each
/// language's durable gets every one and publishes its exact upper-cased twin, headers kept, each
/// input acked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_inputs_with_headers_get_the_same_uppercase_outputs_in_three_languages_through_nats()
{
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
    config.runtime.cache_dir = Some(compile_cache_dir());
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
    let mut expected: Vec<(String, Vec<String>)> = (0..50)
        .map(|i| {
            let headers = vec!["a".to_owned(), "b".to_owned()];
            (format!("MESSAGE {i}: ÀÉÎ STRASSE"), headers)
        })
        .collect();
    expected.sort();
    for name in LANGUAGES {
        assert_eq!(by_language[&format!("out.{name}")], expected, "{name}");
    }
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
    config.runtime.cache_dir = Some(compile_cache_dir());
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
