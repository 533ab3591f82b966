//! Handlers in Python, JavaScript, Go and C beside Rust: the twins of `uppercase` and `slow`
//! give the same outputs where the languages' own functions agree, fail the same way (a reject)
//! where they must, in words of their own; end to end through NATS too; and a Python and a Go
//! handler of 12 s on a 3 s ack_wait are each processed once.
//!
//! Where the languages agree: Rust's `to_uppercase`, Python's `str.upper()` and JavaScript's
//! `toUpperCase()` use Unicode's full case mapping (`ß` is `SS`), each of its own Unicode
//! version; Go's `strings.ToUpper` uses the simple mapping, one character for one (`ß` stays
//! `ß`), and wasi-libc's `towupper` (musl's table) maps `ß` to the capital `ẞ`. So all six handlers (C in both contracts) are
//! compared on ASCII, common accented Latin and `ǆ`, and on `ß` each gives its own library's
//! answer. Go and C are command handlers, whose output frames carry
//! headers as a JSON object: one entry per name, names in the object's order. So outputs are
//! compared with headers grouped by name (the values of a name in their order), which is what
//! every language must agree on. Python and JavaScript components take seconds to compile, Go
//! modules a second: every test here shares one compile cache under target/.

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

const LANGUAGES: [&str; 6] = [
    "uppercase",
    "uppercase-py",
    "uppercase-js",
    "uppercase-go",
    "uppercase-c",
    "uppercase-component-c",
];
const SLOW: [&str; 4] = ["slow", "slow-py", "slow-js", "slow-go"];

fn load(rt: &Runtime, name: &str, manifest: &str) -> Plugin {
    let manifest = Manifest::parse(manifest, Path::new("test.toml")).unwrap();
    rt.load_file(&plugin_path(name), Some(manifest)).unwrap()
}

/// Inputs on which all six handlers' upper-casing agrees, with the output they give: ASCII,
/// accented Latin of every Unicode version in use, the digraph `ǆ` (whose simple and full
/// mappings are both `Ǆ`), an empty payload, and multi-valued headers.
fn agreeing_inputs() -> Vec<(Message, &'static str)> {
    let mut with_headers = Message::new("in.upper", "headers too");
    with_headers.headers.append("trace", "1");
    with_headers.headers.append("x-other", "é");
    with_headers.headers.append("trace", "2");
    vec![
        (Message::new("in.upper", "hello, wasm!"), "HELLO, WASM!"),
        (Message::new("in.upper", "ÀÉÎõü ǆ çà"), "ÀÉÎÕÜ Ǆ ÇÀ"),
        (Message::new("in.upper", ""), ""),
        (with_headers, "HEADERS TOO"),
    ]
}

/// `outcome` with each output's headers grouped by name, the values of a name in their order:
/// what a component and a command handler (headers as a JSON object) can both be held to.
fn grouped(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Success(outputs) => Outcome::Success(
            outputs
                .into_iter()
                .map(|mut output| {
                    output.headers.0.sort_by(|a, b| a.0.cmp(&b.0));
                    output
                })
                .collect(),
        ),
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_in_every_language_agrees_where_their_case_mappings_do() {
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
        let expected = grouped(Outcome::Success(vec![Output {
            subject: Some("out.upper".into()),
            headers,
            payload: upper.into(),
        }]));
        for (name, plugin) in LANGUAGES.iter().zip(&plugins) {
            let outcome = plugin.handle(&input, Hooks::default()).await;
            assert_eq!(
                outcome.map(grouped),
                Ok(expected.clone()),
                "{name} on {input:?}"
            );
        }
    }
    // `ß`, where each library has its own answer.
    let input = Message::new("in.upper", "straße");
    for (name, plugin) in LANGUAGES.iter().zip(&plugins) {
        let upper = match *name {
            "uppercase-go" => "STRAßE",
            "uppercase-c" | "uppercase-component-c" => "STRAẞE",
            _ => "STRASSE",
        };
        let expected = Outcome::Success(vec![Output {
            subject: Some("out.upper".into()),
            headers: natsplug::message::Headers(vec![("marker".into(), "m".into())]),
            payload: upper.into(),
        }]);
        let outcome = plugin.handle(&input, Hooks::default()).await;
        assert_eq!(outcome, Ok(expected), "{name}");
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
async fn invalid_utf8_is_a_reject_in_every_language() {
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
async fn slow_in_every_language_answers_a_number_and_rejects_a_non_number() {
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

/// 50 inputs with a multi-valued header, on a payload all six handlers upper-case alike: each
/// language's durable gets every one and publishes its exact upper-cased twin, headers kept, each
/// input acked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_inputs_with_headers_get_the_same_uppercase_outputs_in_every_language_through_nats() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    for name in LANGUAGES {
        // A durable per language on the same subject: every language gets every input.
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
    let payloads: Vec<String> = (0..50).map(|i| format!("Message {i}: ÀÉÎ ǆ çà")).collect();
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
    let total = 50 * LANGUAGES.len();
    wait_until(Duration::from_secs(180), "every output", || async {
        stream_count(&js, "OUT").await >= total as u64
    })
    .await;
    host.stop().await;

    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), total);
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
            (format!("MESSAGE {i}: ÀÉÎ Ǆ ÇÀ"), headers)
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

/// The long-handler case in the languages that are not Rust (whose twin runs in engine.rs): one
/// host, a durable per language on the same subject, one 12 s message on a 3 s ack_wait. Each
/// language processes it once: heartbeats keep it from redelivery while the handler sleeps,
/// in a component (Python) as in a command's `time.Sleep` (Go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twelve_second_handler_on_a_three_second_ack_wait_runs_once_in_python_and_go() {
    const LONG: [&str; 2] = ["slow-py", "slow-go"];
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    for name in LONG {
        plugins.add(
            name,
            name,
            &format!(
                "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\nack_wait = \"3s\"\n\
                 [limits]\ndeadline = \"60s\"\nmemory = \"256MiB\"\n\
                 [publish]\nallow = [\"out.{name}\"]\n[config]\noutput = \"out.{name}\"\n"
            ),
        );
    }
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.runtime.cache = true;
    config.runtime.cache_dir = Some(compile_cache_dir());
    let host = TestHost::start(config);
    publish_all(&js, "in.slow", &["12".to_owned()]).await;
    wait_until(Duration::from_secs(120), "the outputs", || async {
        stream_count(&js, "OUT").await == LONG.len() as u64
    })
    .await;
    for name in LONG {
        wait_until(Duration::from_secs(5), "the ack", || async {
            consumer_info(&js, "IN", name).await.num_ack_pending == 0
        })
        .await;
    }
    host.stop().await;
    let mut outputs: Vec<(String, String)> = stream_messages(&js, "OUT")
        .await
        .into_iter()
        .map(|m| (m.subject, m.payload))
        .collect();
    outputs.sort();
    let mut expected: Vec<(String, String)> = LONG
        .iter()
        .map(|name| (format!("out.{name}"), "slept 12".to_owned()))
        .collect();
    expected.sort();
    assert_eq!(outputs, expected);
    for name in LONG {
        let info = consumer_info(&js, "IN", name).await;
        assert_eq!(
            info.delivered.consumer_sequence, 1,
            "{name}: delivered once"
        );
        assert_eq!(
            (info.num_pending, info.num_ack_pending, info.num_redelivered),
            (0, 0, 0),
            "{name}"
        );
    }
}
