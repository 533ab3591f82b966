//! The JetStream engine against a real nats-server per test: throughput with exact counts, a
//! consumer deleted under the host, the long-handler timeout scenario, retries with their
//! delays, dead letters, a missing output stream, server restarts, request-reply, and a message
//! that arrives while its host stops.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    PluginsDir, TestHost, consumer_info, create_stream, jetstream_setup, publish_all, stream_count,
    stream_messages, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uppercase_ten_thousand_messages_exactly_once() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.upper"]
        concurrency = 64
        [publish]
        allow = ["out.upper"]
        [config]
        output = "out.upper"
        "#,
    );
    let payloads: Vec<String> = (0..10_000).map(|i| format!("message number {i}")).collect();
    publish_all(&js, "in.upper", &payloads).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    wait_until(Duration::from_secs(120), "10,000 outputs", || async {
        stream_count(&js, "OUT").await >= 10_000
    })
    .await;
    wait_until(Duration::from_secs(10), "all acks", || async {
        let info = consumer_info(&js, "IN", "uppercase").await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    host.stop().await;

    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 10_000);
    let got: BTreeSet<String> = outputs.iter().map(|m| m.payload.clone()).collect();
    let want: BTreeSet<String> = payloads.iter().map(|p| p.to_uppercase()).collect();
    assert_eq!(got, want);
    assert!(outputs.iter().all(|m| m.subject == "out.upper"));
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0)
    );
    assert_eq!(info.delivered.stream_sequence, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_set_up_again_and_nothing_is_lost_or_doubled() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    // Confirmed acks here; the other tests use the default plain ones.
    plugins.add(
        "uppercase",
        "uppercase",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.upper"]
        concurrency = 8
        ack = "confirmed"
        [publish]
        allow = ["out.upper"]
        [config]
        output = "out.upper"
        "#,
    );
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    let first: Vec<String> = (0..20).map(|i| format!("first {i}")).collect();
    publish_all(&js, "in.upper", &first).await;
    wait_until(Duration::from_secs(30), "20 outputs", || async {
        stream_count(&js, "OUT").await == 20
    })
    .await;

    // The server ends the host's open pull requests with "409 Consumer Deleted"; the host sets
    // the consumer up again, which starts over from the first input: their outputs are stored
    // already, so the server drops them as duplicates.
    let stream = js.get_stream("IN").await.unwrap();
    assert!(stream.delete_consumer("uppercase").await.unwrap().success);
    let second: Vec<String> = (0..20).map(|i| format!("second {i}")).collect();
    publish_all(&js, "in.upper", &second).await;
    wait_until(
        Duration::from_secs(30),
        "the new consumer drained",
        || async {
            match stream.consumer_info("uppercase").await {
                Ok(info) => {
                    info.delivered.stream_sequence == 40
                        && info.num_pending == 0
                        && info.num_ack_pending == 0
                }
                Err(_) => false,
            }
        },
    )
    .await;
    host.stop().await;

    let outputs = stream_messages(&js, "OUT").await;
    let got: BTreeSet<String> = outputs.iter().map(|m| m.payload.clone()).collect();
    let want: BTreeSet<String> = first
        .iter()
        .chain(&second)
        .map(|p| p.to_uppercase())
        .collect();
    assert_eq!(outputs.len(), 40);
    assert_eq!(got, want);
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_redelivered),
        (40, 0)
    );
}

/// `uppercase` bound to a durable `config` creates on `IN` (filter `in.upper`), with
/// `concurrency` handler slots.
async fn bound_uppercase(
    js: &jetstream::Context,
    config: jetstream::consumer::pull::Config,
    concurrency: usize,
) -> PluginsDir {
    let durable = config.durable_name.clone().unwrap();
    js.get_stream("IN")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: "in.upper".into(),
            ..config
        })
        .await
        .unwrap();
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        &format!(
            r#"
            [subscribe]
            stream = "IN"
            subjects = ["in.upper"]
            durable = "{durable}"
            bind = true
            concurrency = {concurrency}
            [publish]
            allow = ["out.upper"]
            [config]
            output = "out.upper"
            "#
        ),
    );
    plugins
}

/// Waits until every one of `payloads` has its output and is acked, stops `host`, then checks
/// that each input was delivered once (consumer sequence = inputs) and handled once.
async fn each_input_handled_once(
    js: &jetstream::Context,
    host: TestHost,
    durable: &str,
    payloads: &[String],
) {
    let n = payloads.len() as u64;
    wait_until(
        Duration::from_secs(30),
        "every output, all acked",
        || async {
            let info = consumer_info(js, "IN", durable).await;
            stream_count(js, "OUT").await == n && info.num_ack_pending == 0 && info.num_pending == 0
        },
    )
    .await;
    host.stop().await;

    let outputs = stream_messages(js, "OUT").await;
    assert_eq!(outputs.len(), payloads.len());
    let got: BTreeSet<String> = outputs.iter().map(|m| m.payload.clone()).collect();
    let want: BTreeSet<String> = payloads.iter().map(|p| p.to_uppercase()).collect();
    assert_eq!(got, want);
    let info = consumer_info(js, "IN", durable).await;
    assert_eq!(
        (
            info.ack_floor.stream_sequence,
            info.delivered.consumer_sequence
        ),
        (n, n)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_the_server_refuses_lose_nothing() {
    let (server, _client, js) = jetstream_setup().await;
    // One waiting pull request at most: a second one, while the first waits for messages, is
    // refused with "409 Exceeded MaxWaiting".
    let config = jetstream::consumer::pull::Config {
        durable_name: Some("tight".into()),
        max_waiting: 1,
        ..Default::default()
    };
    let plugins = bound_uppercase(&js, config, 16).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    wait_until(
        Duration::from_secs(10),
        "a waiting pull request",
        || async { consumer_info(&js, "IN", "tight").await.num_waiting == 1 },
    )
    .await;
    // One at a time, so freed slots are asked for while the first request still waits.
    let payloads: Vec<String> = (0..30).map(|i| format!("one by one {i}")).collect();
    for payload in &payloads {
        publish_all(&js, "in.upper", std::slice::from_ref(payload)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A refusal frees only the refused request's slots: the first request's messages are
    // handled when they come, none is given back and delivered again (30 deliveries in all).
    each_input_handled_once(&js, host, "tight", &payloads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_requests_stay_within_a_bound_consumers_max_batch() {
    let (server, _client, js) = jetstream_setup().await;
    // The consumer takes at most 2 messages per pull request; a larger one would be refused
    // with "409 Exceeded MaxRequestBatch", every time.
    let config = jetstream::consumer::pull::Config {
        durable_name: Some("small".into()),
        max_batch: 2,
        ..Default::default()
    };
    let plugins = bound_uppercase(&js, config, 16).await;
    let payloads: Vec<String> = (0..50).map(|i| format!("small batches {i}")).collect();
    publish_all(&js, "in.upper", &payloads).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    each_input_handled_once(&js, host, "small", &payloads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_second_handlers_on_a_three_second_ack_wait_are_never_redelivered() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "slow",
        "slow",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.slow"]
        ack_wait = "3s"
        concurrency = 4
        [limits]
        deadline = "60s"
        [publish]
        allow = ["out.slow"]
        [config]
        output = "out.slow"
        "#,
    );
    // 8 queued for 4 slots: the second four wait 12 s on the server, not in a local buffer
    // where their ack_wait would run out.
    let payloads: Vec<String> = (0..8).map(|_| "12".to_owned()).collect();
    publish_all(&js, "in.slow", &payloads).await;
    let started = Instant::now();
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    // While the first four run, the other four are still pending on the server.
    wait_until(Duration::from_secs(10), "four in flight", || async {
        consumer_info(&js, "IN", "slow").await.num_ack_pending == 4
    })
    .await;
    let info = consumer_info(&js, "IN", "slow").await;
    assert_eq!((info.num_ack_pending, info.num_pending), (4, 4));

    wait_until(Duration::from_secs(60), "8 outputs", || async {
        stream_count(&js, "OUT").await >= 8
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(24));
    wait_until(Duration::from_secs(5), "acks", || async {
        consumer_info(&js, "IN", "slow").await.num_ack_pending == 0
    })
    .await;
    host.stop().await;

    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 8);
    assert!(outputs.iter().all(|m| m.payload == "slept 12"));
    let info = consumer_info(&js, "IN", "slow").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0)
    );
    // Exactly 8 deliveries for 8 messages: not one redelivery.
    assert_eq!(info.delivered.consumer_sequence, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_is_naked_with_the_configured_delays_then_succeeds() {
    let (server, client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "flaky",
        "flaky",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.flaky"]
        max_deliver = 5
        [retry]
        backoff = ["700ms", "1500ms"]
        [publish]
        allow = ["out.flaky"]
        [config]
        output = "out.flaky"
        succeed-at = "3"
        "#,
    );
    // The server's NAK advisories carry its own timestamps.
    let mut naks = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED.IN.flaky")
        .await
        .unwrap();
    publish_all(&js, "in.flaky", &["x".to_owned()]).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let mut nak_times = Vec::new();
    for _ in 0..2 {
        let advisory =
            tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut naks))
                .await
                .expect("a NAK advisory")
                .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
        let at = time::OffsetDateTime::parse(
            json["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            json["deliveries"].as_u64(),
            Some(nak_times.len() as u64 + 1)
        );
        nak_times.push(at);
    }
    wait_until(Duration::from_secs(10), "the output", || async {
        stream_count(&js, "OUT").await == 1
    })
    .await;
    host.stop().await;

    let out = stream_messages(&js, "OUT").await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, "ok after 3");
    // Second delivery came 700 ms after the first nak; the third 1500 ms after the second.
    let first_gap = (nak_times[1] - nak_times[0]).unsigned_abs();
    let second_gap = (out[0].stored_at - nak_times[1]).unsigned_abs();
    assert!(
        first_gap >= Duration::from_millis(700) && first_gap < Duration::from_millis(1300),
        "{first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_millis(1500) && second_gap < Duration::from_millis(2100),
        "{second_gap:?}"
    );
    let info = consumer_info(&js, "IN", "flaky").await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

/// A host serving `plugin` (`uppercase` on `in.{plugin}`, one slot, a 60 s ack_wait) that
/// began to stop just after sending a pull request, with `payload` published into that request
/// (open for its `expires`, 1 s), then stopped. Returns its server once the message was
/// delivered to that host: on a machine too busy to publish within the second, the request
/// expires first and the message is never delivered, so that attempt runs again on a new server.
async fn a_message_came_as_its_host_stopped(
    plugin: &str,
    max_deliver: u32,
    payload: &str,
) -> (NatsServer, jetstream::Context, PluginsDir) {
    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        let (server, client, js) = jetstream_setup().await;
        let plugins = PluginsDir::new();
        plugins.add(
            plugin,
            "uppercase",
            &format!(
                "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.{plugin}\"]\nconcurrency = 1\n\
                 ack_wait = \"60s\"\nmax_deliver = {max_deliver}\n[publish]\n\
                 allow = [\"out.{plugin}\"]\ndead_letter = \"dead.{plugin}\"\n\
                 [config]\noutput = \"out.{plugin}\"\n"
            ),
        );
        let mut requests = client
            .subscribe(format!("$JS.API.CONSUMER.MSG.NEXT.IN.{plugin}"))
            .await
            .unwrap();
        client.flush().await.unwrap();
        let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
        tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut requests),
        )
        .await
        .expect("a pull request within 10 s")
        .expect("the request subscription is open");
        let asked = Instant::now();
        host.begin_stop();
        publish_all(&js, &format!("in.{plugin}"), &[payload.to_owned()]).await;
        let published = asked.elapsed();
        host.stop().await;
        if consumer_info(&js, "IN", plugin)
            .await
            .delivered
            .consumer_sequence
            == 1
        {
            return (server, js, plugins);
        }
        eprintln!("published {published:?} after the pull request, which expired first; again");
    }
    panic!("{ATTEMPTS} attempts: each pull request expired before the message was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_pulled_while_the_host_stops_is_given_back_and_the_next_host_handles_it() {
    let (server, js, plugins) = a_message_came_as_its_host_stopped("again", 5, "given back").await;
    // Delivered once, into the stopping host's open request, and given back: not handled.
    assert_eq!(stream_count(&js, "OUT").await, 0);
    assert_eq!(stream_count(&js, "DEAD").await, 0);
    let info = consumer_info(&js, "IN", "again").await;
    assert_eq!(info.delivered.consumer_sequence, 1);

    let next = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    wait_until(Duration::from_secs(15), "the output", || async {
        stream_count(&js, "OUT").await == 1
    })
    .await;
    wait_until(Duration::from_secs(10), "the ack", || async {
        consumer_info(&js, "IN", "again").await.num_ack_pending == 0
    })
    .await;
    next.stop().await;
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(
        (outputs[0].subject.as_str(), outputs[0].payload.as_str()),
        ("out.again", "GIVEN BACK")
    );
    let info = consumer_info(&js, "IN", "again").await;
    assert_eq!(info.delivered.consumer_sequence, 2, "the second delivery");
    assert_eq!(info.delivered.stream_sequence, 1);
    assert_eq!(
        (info.num_pending, info.num_ack_pending, info.num_redelivered),
        (0, 0, 0)
    );
    assert_eq!(stream_count(&js, "DEAD").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_pulled_while_the_host_stops_on_its_last_delivery_is_dead_lettered() {
    let (_server, js, _plugins) = a_message_came_as_its_host_stopped("last", 1, "one chance").await;
    // A nak would strand it: with max_deliver = 1 the server never delivers it again.
    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].subject.as_str(), dead[0].payload.as_str()),
        ("dead.last", "one chance")
    );
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "given-back");
    assert_eq!(
        dead[0].header("Natsplug-Reason"),
        "pulled while this host stopped, on its last allowed delivery"
    );
    assert_eq!(dead[0].header("Natsplug-Delivered"), "1");
    assert_eq!(dead[0].header("Natsplug-Sequence"), "1");
    assert_eq!(stream_count(&js, "OUT").await, 0);
    let info = consumer_info(&js, "IN", "last").await;
    assert_eq!(info.delivered.consumer_sequence, 1);
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "terminated, not left pending"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_every_limit_hit_go_to_dead_letter_while_others_keep_working() {
    let (server, client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    let manifest = |subject: &str, limits: &str| {
        format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.{subject}\"]\n[publish]\n\
             dead_letter = \"dead.{subject}\"\n[limits]\n{limits}\n"
        )
    };
    plugins
        .add("poison", "poison", &manifest("poison", ""))
        .add("spin", "spin", &manifest("spin", "fuel = 200000000"))
        .add("hog", "hog", &manifest("hog", "memory = \"16MiB\""))
        .add("panic", "panic", &manifest("panic", ""))
        .add(
            "uppercase",
            "uppercase",
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\n[publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n",
        );
    let mut terms = client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>")
        .await
        .unwrap();
    for subject in ["poison", "spin", "hog", "panic"] {
        publish_all(
            &js,
            &format!("in.{subject}"),
            &[format!("payload for {subject}")],
        )
        .await;
    }
    let upper: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
    publish_all(&js, "in.upper", &upper).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    wait_until(
        Duration::from_secs(30),
        "4 dead letters and 200 outputs",
        || async { stream_count(&js, "DEAD").await == 4 && stream_count(&js, "OUT").await == 200 },
    )
    .await;
    let mut termed = BTreeSet::new();
    while termed.len() < 4 {
        let advisory = tokio::time::timeout(
            Duration::from_secs(10),
            futures::StreamExt::next(&mut terms),
        )
        .await
        .expect("a TERM advisory")
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
        termed.insert(json["consumer"].as_str().unwrap().to_owned());
    }
    host.stop().await;
    assert_eq!(
        termed,
        BTreeSet::from(["hog", "panic", "poison", "spin"].map(String::from))
    );

    let dead = stream_messages(&js, "DEAD").await;
    let by_plugin = |p: &str| {
        dead.iter()
            .find(|m| m.header("Natsplug-Plugin") == p)
            .unwrap()
    };
    for (plugin, kind, reason) in [
        (
            "poison",
            "reject",
            "poison message on in.poison: payload for poison",
        ),
        (
            "spin",
            "fuel",
            "plugin \"spin\" ran out of fuel after 200000000 units",
        ),
        (
            "hog",
            "memory",
            "plugin \"hog\" tried to grow its memory past the limit of 16777216 bytes",
        ),
        (
            "panic",
            "panic",
            "plugin \"panic\" panicked: boom on in.panic",
        ),
    ] {
        let m = by_plugin(plugin);
        assert_eq!(m.subject, format!("dead.{plugin}"));
        assert_eq!(m.payload, format!("payload for {plugin}"));
        assert_eq!(m.header("Natsplug-Error-Kind"), kind);
        assert_eq!(m.header("Natsplug-Reason"), reason);
        assert_eq!(m.header("Natsplug-Delivered"), "1");
        assert_eq!(m.header("Natsplug-Stream"), "IN");
        assert_eq!(m.header("Natsplug-Subject"), format!("in.{plugin}"));
        let sequence: u64 = m.header("Natsplug-Sequence").parse().unwrap();
        assert!((1..=4).contains(&sequence));
        let info = consumer_info(&js, "IN", plugin).await;
        assert_eq!(
            (info.num_pending, info.num_ack_pending, info.num_redelivered),
            (0, 0, 0)
        );
    }
    let outputs = stream_messages(&js, "OUT").await;
    let got: BTreeSet<String> = outputs.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(got, upper.iter().map(|u| u.to_uppercase()).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_output_stream_keeps_inputs_unacked_until_it_exists() {
    natsplug_tests::init_tracing();
    let server = NatsServer::start();
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    create_stream(&js, "IN", &["in.>"]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.upper"]
        max_deliver = 100
        [retry]
        backoff = ["300ms"]
        [publish]
        allow = ["late.upper"]
        [config]
        output = "late.upper"
        "#,
    );
    let payloads: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
    publish_all(&js, "in.upper", &payloads).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    // No stream captures late.upper: nothing may be acked, and the inputs come back.
    wait_until(Duration::from_secs(10), "redeliveries", || async {
        consumer_info(&js, "IN", "uppercase").await.num_redelivered == 5
    })
    .await;
    let info = consumer_info(&js, "IN", "uppercase").await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "an input was acked without its output"
    );

    create_stream(&js, "LATE", &["late.>"]).await;
    wait_until(Duration::from_secs(10), "5 outputs and 5 acks", || async {
        let info = consumer_info(&js, "IN", "uppercase").await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    host.stop().await;
    let outputs = stream_messages(&js, "LATE").await;
    let got: Vec<String> = outputs
        .iter()
        .map(|m| m.payload.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(got, vec!["M0", "M1", "M2", "M3", "M4"]);
    assert_eq!(outputs.len(), 5, "every output stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_output_is_dead_lettered_not_retried_forever() {
    natsplug_tests::init_tracing();
    let server = NatsServer::start_with_config("max_payload: 2048\n");
    let client = server.connect().await;
    let js = jetstream::new(client.clone());
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out.>"]).await;
    create_stream(&js, "DEAD", &["dead.>"]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        "fanout",
        "fanout",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.fan\"]\n[publish]\nallow = [\"out.>\"]\n\
         dead_letter = \"dead.fan\"\n[config]\nsubjects = \"out.a\"\n",
    );
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    // An input of 1,950 bytes + 82 bytes of headers fits in 2,048; its output also carries
    // `fanout-index` and `Nats-Msg-Id` headers, 2,077 bytes: over the server's max_payload.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    js.publish_with_headers("in.fan", headers.clone(), vec![b'x'; 1_950].into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish_with_headers("in.fan", headers, b"small".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(15),
        "1 output and 1 dead letter",
        || async { stream_count(&js, "OUT").await == 1 && stream_count(&js, "DEAD").await == 1 },
    )
    .await;
    host.stop().await;
    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "publish");
    assert!(
        dead[0].header("Natsplug-Reason").contains("max_payload"),
        "{:?}",
        dead[0].headers
    );
    let out = stream_messages(&js, "OUT").await;
    assert_eq!(out[0].payload, "small");
    // The trace context went on to the output.
    assert_eq!(
        out[0].header("traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let info = consumer_info(&js, "IN", "fanout").await;
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_under_load_loses_nothing() {
    let (mut server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins.add(
        "uppercase",
        "uppercase",
        r#"
        [subscribe]
        stream = "IN"
        subjects = ["in.upper"]
        ack_wait = "2s"
        concurrency = 16
        max_deliver = -1
        [publish]
        allow = ["out.upper"]
        [config]
        output = "out.upper"
        "#,
    );
    let payloads: Vec<String> = (0..3_000).map(|i| format!("r{i}")).collect();
    publish_all(&js, "in.upper", &payloads).await;
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.nats.reconnect_delay = Duration::from_millis(200);
    let host = TestHost::start(config);
    wait_until(Duration::from_secs(60), "some outputs", || async {
        stream_count(&js, "OUT").await >= 300
    })
    .await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    let client = server.connect().await;
    let js = jetstream::new(client);
    wait_until(Duration::from_secs(120), "all inputs acked", || async {
        let Ok(stream) = js.get_stream("IN").await else {
            return false;
        };
        let Ok(info) = stream.consumer_info("uppercase").await else {
            return false;
        };
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    host.stop().await;
    let outputs = stream_messages(&js, "OUT").await;
    let got: BTreeSet<String> = outputs.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(got.len(), 3_000, "every input has its output");
    assert_eq!(outputs.len(), 3_000, "no output stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_request_gets_the_handlers_reply_and_failures_answer_at_once() {
    let (server, client, _js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    plugins
        .add(
            "slow",
            "slow",
            "[subscribe]\nsubjects = [\"svc.sleep\"]\nqueue_group = \"sleepers\"\n",
        )
        .add(
            "poison",
            "poison",
            "[subscribe]\nsubjects = [\"svc.poison\"]\n[publish]\ndead_letter = \"dead.svc\"\n",
        );
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    // Wait for the subscriptions (a busy machine running the suite can take seconds).
    wait_until(Duration::from_secs(60), "the service", || async {
        client.request("svc.sleep", "0".into()).await.is_ok()
    })
    .await;
    let reply = client.request("svc.sleep", "0.2".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"slept 0.2");

    let started = Instant::now();
    let reply = client.request("svc.poison", "bad".into()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(reply.payload.is_empty());
    let headers = reply.headers.unwrap();
    assert_eq!(
        headers.get("Natsplug-Error-Kind").unwrap().as_str(),
        "reject"
    );
    assert_eq!(
        headers.get("Natsplug-Reason").unwrap().as_str(),
        "poison message on svc.poison: bad"
    );
    host.stop().await;
}
