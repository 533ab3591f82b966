//! Metrics, health, traces and logs against a real nats-server: exact counts per plugin and
//! outcome after known inputs, readiness through the host's life, trace context on outputs,
//! spans exported over OTLP that continue the input's trace, and JSON logs carrying the message
//! context.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use natsplug_tests::collector::{self, Collector};
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    PluginsDir, TestHost, admin_get as get, consumer_info, create_stream, free_addr,
    jetstream_setup, publish_all, sample, stream_count, stream_messages, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome_exactly() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    let sub = |s: &str, extra: &str| {
        format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.{s}\"]\n{extra}\n[publish]\nallow = [\"out.{s}\"]\n\
             dead_letter = \"dead.{s}\"\n"
        )
    };
    plugins
        .add("uppercase", "uppercase", &format!("{}[config]\noutput = \"out.uppercase\"\n", sub("uppercase", "")))
        .add(
            "flaky",
            "flaky",
            &format!("{}[retry]\nbackoff = [\"200ms\"]\n[config]\noutput = \"out.flaky\"\nsucceed-at = \"2\"\n", sub("flaky", "")),
        )
        .add("poison", "poison", &sub("poison", ""))
        .add("spin", "spin", &format!("{}[limits]\nfuel = 100000000\n", sub("spin", "")))
        .add(
            "slow",
            "slow",
            &format!(
                "{}[config]\noutput = \"out.slow\"\n",
                sub("slow", "ack_wait = \"3s\"\nheartbeat = \"800ms\"")
            ),
        );
    let admin = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.admin.listen = Some(admin);
    let host = TestHost::start(config);

    let mut traced = async_nats::HeaderMap::new();
    traced.insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    js.publish_with_headers("in.uppercase", traced, "traced".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_all(
        &js,
        "in.uppercase",
        &(1..5).map(|i| format!("u{i}")).collect::<Vec<_>>(),
    )
    .await;
    publish_all(&js, "in.flaky", &["f".to_owned()]).await;
    publish_all(&js, "in.poison", &["p".to_owned()]).await;
    publish_all(&js, "in.spin", &["s".to_owned()]).await;
    publish_all(&js, "in.slow", &["2".to_owned()]).await;

    wait_until(
        Duration::from_secs(30),
        "7 outputs and 2 dead letters",
        || async { stream_count(&js, "OUT").await == 7 && stream_count(&js, "DEAD").await == 2 },
    )
    .await;
    for plugin in ["uppercase", "flaky", "poison", "spin", "slow"] {
        wait_until(Duration::from_secs(10), "settled", || async {
            consumer_info(&js, "IN", plugin).await.num_ack_pending == 0
        })
        .await;
    }
    let (status, text) = get(admin, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    for (series, value) in [
        (
            r#"natsplug_messages_total{plugin="uppercase",outcome="acked"}"#,
            5.0,
        ),
        (
            r#"natsplug_messages_total{plugin="flaky",outcome="retried"}"#,
            1.0,
        ),
        (
            r#"natsplug_messages_total{plugin="flaky",outcome="acked"}"#,
            1.0,
        ),
        (
            r#"natsplug_messages_total{plugin="poison",outcome="dead_lettered"}"#,
            1.0,
        ),
        (
            r#"natsplug_messages_total{plugin="spin",outcome="dead_lettered"}"#,
            1.0,
        ),
        (
            r#"natsplug_messages_total{plugin="slow",outcome="acked"}"#,
            1.0,
        ),
        (
            r#"natsplug_dead_letters_total{plugin="poison",kind="reject"}"#,
            1.0,
        ),
        (
            r#"natsplug_dead_letters_total{plugin="spin",kind="fuel"}"#,
            1.0,
        ),
        (
            r#"natsplug_limit_hits_total{plugin="spin",kind="fuel"}"#,
            1.0,
        ),
        (r#"natsplug_redeliveries_total{plugin="flaky"}"#, 1.0),
        (r#"natsplug_heartbeats_total{plugin="slow"}"#, 2.0),
        (r#"natsplug_heartbeats_total{plugin="uppercase"}"#, 0.0),
        (
            r#"natsplug_handler_duration_seconds_count{plugin="uppercase"}"#,
            5.0,
        ),
        (
            r#"natsplug_handler_duration_seconds_count{plugin="flaky"}"#,
            2.0,
        ),
        (r#"natsplug_in_flight_messages{plugin="slow"}"#, 0.0),
        // A fresh instance for every call, the default.
        (
            r#"natsplug_instances_total{plugin="uppercase",kind="fresh"}"#,
            5.0,
        ),
        // 5 + 1 + 1 outputs and 2 dead letters, each stored on the first attempt.
        ("natsplug_publish_attempts_total", 9.0),
        ("natsplug_publish_retries_total", 0.0),
        ("natsplug_publish_failures_total", 0.0),
        ("natsplug_outputs_deduplicated_total", 0.0),
        (
            r#"natsplug_plugin_reloads_total{plugin="uppercase",result="loaded"}"#,
            1.0,
        ),
        (r#"natsplug_connection_up{role="consumer"}"#, 1.0),
        (r#"natsplug_connection_up{role="publisher-0"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(
        text.contains(r#"natsplug_plugin_info{plugin="uppercase",version=""#),
        "{text}"
    );
    // spin burned exactly its budget; uppercase burned some for each of its 5 calls.
    assert_eq!(
        sample(&text, r#"natsplug_fuel_consumed_total{plugin="spin"}"#),
        Some(100_000_000.0)
    );
    let upper_fuel = sample(&text, r#"natsplug_fuel_consumed_total{plugin="uppercase"}"#).unwrap();
    assert!(
        upper_fuel > 5.0 * 1_000.0 && upper_fuel < 5.0 * 1_000_000.0,
        "{upper_fuel}"
    );
    let (status, body) = get(admin, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // The trace context went from the input to its output.
    let outputs = stream_messages(&js, "OUT").await;
    let traced = outputs.iter().find(|m| m.payload == "TRACED").unwrap();
    assert_eq!(
        traced.headers.get("traceparent").unwrap().as_str(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_spans_continue_the_input_trace_and_name_the_outcome() {
    let (server, client, js) = jetstream_setup().await;
    let collector = Collector::start().await;
    let plugins = PluginsDir::new();
    plugins
        .add(
            "uppercase",
            "uppercase",
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.uppercase\"]\n[publish]\n\
             allow = [\"out.uppercase\"]\n[config]\noutput = \"out.uppercase\"\n",
        )
        .add(
            "poison",
            "poison",
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.poison\"]\n[publish]\n\
             dead_letter = \"dead.poison\"\n",
        )
        .add(
            "shout",
            "uppercase",
            "[subscribe]\nsubjects = [\"core.shout\"]\n[publish]\nallow = [\"core.shouted\"]\n\
             core = [\"core.shouted\"]\n[config]\noutput = \"core.shouted\"\n",
        );
    let admin = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.admin.listen = Some(admin);
    config.tracing.otlp_endpoint = Some(collector.url().to_owned());
    config.tracing.service_name = "orders-host".into();
    let host = TestHost::start(config);
    wait_until(Duration::from_secs(20), "ready", || async {
        get(admin, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;

    // A traced input and a plain one to uppercase (sequences 1 and 2), one to poison (3), and a
    // traced core NATS message to shout, whose output we listen for.
    let (trace, parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut traced = async_nats::HeaderMap::new();
    traced.insert("traceparent", format!("00-{trace}-{parent}-01").as_str());
    js.publish_with_headers("in.uppercase", traced, "traced".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish_all(&js, "in.uppercase", &["plain".to_owned()]).await;
    publish_all(&js, "in.poison", &["p".to_owned()]).await;
    let (core_trace, core_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut shouted = client.subscribe("core.shouted").await.unwrap();
    client.flush().await.unwrap();
    let mut core_traced = async_nats::HeaderMap::new();
    core_traced.insert(
        "traceparent",
        format!("00-{core_trace}-{core_parent}-01").as_str(),
    );
    client
        .publish_with_headers("core.shout", core_traced, "core".into())
        .await
        .unwrap();
    let core_output = tokio::time::timeout(Duration::from_secs(10), shouted.next())
        .await
        .expect("the core output in time")
        .expect("a core output");
    assert_eq!(core_output.payload, "CORE");

    wait_until(
        Duration::from_secs(20),
        "2 outputs and 1 dead letter",
        || async { stream_count(&js, "OUT").await == 2 && stream_count(&js, "DEAD").await == 1 },
    )
    .await;
    for plugin in ["uppercase", "poison"] {
        wait_until(Duration::from_secs(10), "settled", || async {
            consumer_info(&js, "IN", plugin).await.num_ack_pending == 0
        })
        .await;
    }
    // Stopping the host exports the spans it still holds.
    host.stop().await;

    let spans = collector.spans();
    assert_eq!(spans.len(), 4, "{spans:#?}");
    for span in &spans {
        assert_eq!(span.name, "natsplug.handle");
        assert_eq!(span.kind, collector::KIND_CONSUMER);
        assert_eq!(span.service, "orders-host");
    }
    let outputs = stream_messages(&js, "OUT").await;
    let traceparent_of = |payload: &str| {
        let output = outputs.iter().find(|m| m.payload == payload).unwrap();
        output
            .headers
            .get("traceparent")
            .unwrap()
            .as_str()
            .to_owned()
    };

    // The traced input's span continues its trace, and its output names that span as parent.
    let span = spans.iter().find(|s| s.trace_id == trace).unwrap();
    assert_eq!(span.parent_span_id, parent);
    assert_eq!(
        span.attributes,
        serde_json::json!({
            "plugin": "uppercase",
            "messaging.system": "nats",
            "messaging.destination.name": "in.uppercase",
            "stream": "IN",
            "sequence": 1,
            "delivered": 1,
            "outcome": "acked",
        })
    );
    assert_eq!((span.status_code, span.status_message.as_str()), (0, ""));
    assert_eq!(
        traceparent_of("TRACED"),
        format!("00-{trace}-{}-01", span.span_id)
    );

    // The plain input's span starts a trace of its own, which its output carries on.
    let plain = spans
        .iter()
        .find(|s| s.attributes["sequence"] == 2)
        .unwrap();
    assert_eq!(plain.parent_span_id, "");
    assert_ne!(plain.trace_id, trace);
    assert_eq!(plain.attributes["outcome"], "acked");
    assert_eq!(
        traceparent_of("PLAIN"),
        format!("00-{}-{}-01", plain.trace_id, plain.span_id)
    );

    // The rejected input's span is an error, named for what became of it.
    let poison = spans
        .iter()
        .find(|s| s.attributes["plugin"] == "poison")
        .unwrap();
    assert_eq!(poison.parent_span_id, "");
    assert_eq!(
        poison.attributes,
        serde_json::json!({
            "plugin": "poison",
            "messaging.system": "nats",
            "messaging.destination.name": "in.poison",
            "stream": "IN",
            "sequence": 3,
            "delivered": 1,
            "outcome": "dead-lettered",
            "error.type": "reject",
        })
    );
    assert_eq!(
        (poison.status_code, poison.status_message.as_str()),
        (collector::STATUS_ERROR, "poison message on in.poison: p")
    );

    // A core NATS message gets a span too, without JetStream's attributes.
    let core = spans.iter().find(|s| s.trace_id == core_trace).unwrap();
    assert_eq!(core.parent_span_id, core_parent);
    assert_eq!(
        core.attributes,
        serde_json::json!({
            "plugin": "shout",
            "messaging.system": "nats",
            "messaging.destination.name": "core.shout",
            "outcome": "published",
        })
    );
    assert_eq!(
        core_output
            .headers
            .unwrap()
            .get("traceparent")
            .unwrap()
            .as_str(),
        format!("00-{core_trace}-{}-01", core.span_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_connection_and_drops_at_shutdown() {
    natsplug_tests::init_tracing();
    let mut server = NatsServer::start();
    let js = jetstream::new(server.connect().await);
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out.>"]).await;
    server.stop();
    let plugins = PluginsDir::new();
    plugins.add(
        "slow",
        "slow",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\n[publish]\nallow = [\"out.slow\"]\n[config]\noutput = \"out.slow\"\n",
    );
    let admin = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.admin.listen = Some(admin);
    config.nats.reconnect_delay = Duration::from_millis(200);
    let host = TestHost::start(config);

    wait_until(Duration::from_secs(10), "the admin listener", || async {
        get(admin, "/healthz").await.is_some()
    })
    .await;
    let (status, body) = get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not connected"), "{body}");

    server.restart();
    wait_until(Duration::from_secs(20), "ready", || async {
        get(admin, "/readyz").await.is_some_and(|(s, _)| s == 200)
    })
    .await;
    assert_eq!(get(admin, "/readyz").await.unwrap().1, "ready\n");

    // A 3 s handler in flight keeps the host in its graceful period after the stop. In flight
    // means its handler runs: a message the server counts as delivered but the host has not
    // started yet is given back at the stop, unhandled (a loaded run saw that).
    let js = jetstream::new(server.connect().await);
    publish_all(&js, "in.slow", &["3".to_owned()]).await;
    wait_for_metric(admin, r#"natsplug_in_flight_messages{plugin="slow"}"#, 1.0).await;
    let stopping = tokio::spawn(host.stop());
    wait_until(Duration::from_secs(5), "not ready", || async {
        get(admin, "/readyz")
            .await
            .is_some_and(|(s, b)| s == 503 && b.contains("shutting down"))
    })
    .await;
    assert_eq!(
        stream_count(&js, "OUT").await,
        0,
        "the handler is still running"
    );
    stopping.await.unwrap();
    assert_eq!(
        stream_count(&js, "OUT").await,
        1,
        "it finished before the host stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_and_carry_the_message_context() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "slow",
        "slow",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\n[publish]\nallow = [\"out.slow\"]\n[config]\noutput = \"out.slow\"\n",
    );
    publish_all(&js, "in.slow", &["0.1".to_owned()]).await;
    let child = std::process::Command::new(natsplug_tests::natsplug_bin())
        .args([
            "run",
            "--log-format",
            "json",
            "--log",
            "info",
            "--server",
            &server.url(),
            "--plugins",
        ])
        .arg(plugins.path())
        .env("NATSPLUG_HOST_DEAD_LETTER_STREAM", "NATSPLUG_DEAD")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(15), "the output", || async {
        stream_count(&js, "OUT").await == 1
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stderr)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3);
    // The guest's own log line, with the plugin and the message it was handling.
    let guest = lines
        .iter()
        .find(|l| l["message"] == "sleeping 0.1 s")
        .expect("the guest's log line");
    assert_eq!(guest["target"], "natsplug::guest");
    assert_eq!(guest["plugin"], "slow");
    assert_eq!(guest["level"], "INFO");
    let span = &guest["span"];
    assert_eq!(span["name"], "message");
    assert_eq!(span["messaging.destination.name"], "in.slow");
    assert_eq!(span["stream"], "IN");
    assert_eq!(span["sequence"], 1);
    assert_eq!(span["delivered"], 1);
    assert_eq!(span["messaging.system"], "nats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_plugin_counts_its_warm_and_fresh_calls() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "pooled",
        "uppercase",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.pooled\"]\nconcurrency = 1\n\
         [instance]\nisolation = \"pool\"\n\
         [publish]\nallow = [\"out.pooled\"]\n[config]\noutput = \"out.pooled\"\n",
    );
    let admin = free_addr();
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.admin.listen = Some(admin);
    let host = TestHost::start(config);
    publish_all(&js, "in.pooled", &["a".into(), "b".into(), "c".into()]).await;
    wait_until(Duration::from_secs(30), "3 outputs", || async {
        stream_count(&js, "OUT").await == 3
    })
    .await;
    // One message at a time: the first makes an instance, the next two take it warm.
    let text = wait_for_metric(
        admin,
        r#"natsplug_instances_total{plugin="pooled",kind="warm"}"#,
        2.0,
    )
    .await;
    assert_eq!(
        sample(
            &text,
            r#"natsplug_instances_total{plugin="pooled",kind="fresh"}"#
        ),
        Some(1.0),
        "{text}"
    );
    host.stop().await;
}

/// Scrapes `/metrics` until `series` has `value`; the scrape.
async fn wait_for_metric(admin: std::net::SocketAddr, series: &str, value: f64) -> String {
    wait_until(Duration::from_secs(10), series, || async move {
        let (_, text) = get(admin, "/metrics").await.unwrap_or_default();
        sample(&text, series) == Some(value)
    })
    .await;
    get(admin, "/metrics").await.expect("scrape").1
}
