//! Nothing stranded: every input ends acked with its outputs stored, dead-lettered (stored, then
//! termed), or back on the server. Each test drives one way an input used to end elsewhere (a
//! panic in the host, a dead letter too large or with nowhere to go, a dead-letter stream that
//! refuses, a bound consumer's own limits, a host that cannot make an instance, a renamed
//! plugin file, a lost publish ack) and asserts where it ended, by the consumer's delivered
//! sequence and the stored messages.

use std::time::Duration;

use async_nats::jetstream::{self, stream::DiscardPolicy};
use natsplug_tests::nats::NatsServer;
use natsplug_tests::{
    PluginsDir, TestHost, consumer_info, create_stream, init_tracing, jetstream_setup, publish_all,
    settled, stream_count, stream_messages, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_handling_path_ends_as_a_dead_letter_not_stranded() {
    let (server, _client, js) = jetstream_setup().await;
    // The host panics after the handler ran, before it settles: a host bug.
    natsplug::delivery::faults::panic_on("in.boom");
    let plugins = PluginsDir::new();
    plugins.add(
        "boom",
        "uppercase",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.boom\"]\nmax_deliver = 2\n\
         [publish]\nallow = [\"out.boom\"]\ndead_letter = \"dead.boom\"\n[config]\noutput = \"out.boom\"\n",
    );
    publish_all(&js, "in.boom", &["boom".into()]).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let info = settled(&js, "IN", "boom").await;
    // Two deliveries panicked (each nak'ed); the third, past the limit, is dead-lettered on
    // arrival without running anything.
    assert_eq!(info.delivered.consumer_sequence, 3);
    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].subject.as_str(), dead[0].payload.as_str()),
        ("dead.boom", "boom")
    );
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "delivery-limit");
    assert_eq!(
        dead[0].header("Natsplug-Reason"),
        "delivered 3 times, past max_deliver 2: an earlier delivery ended unsettled"
    );
    assert_eq!(dead[0].header("Natsplug-Delivered"), "3");
    assert_eq!(stream_count(&js, "OUT").await, 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_reason_larger_than_max_payload_is_cut_to_fit_and_stored() {
    init_tracing();
    let server = NatsServer::start_with_config("max_payload: 2048\n");
    let client = server.connect().await;
    let js = jetstream::new(client);
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "DEAD", &["dead.>"]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        "poison",
        "poison",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.poison\"]\nmax_deliver = 1\n\
         [publish]\ndead_letter = \"dead.poison\"\n",
    );
    // The reason repeats the payload: it alone is too large for a 2 KiB message with headers.
    let payload = "x".repeat(1950);
    publish_all(&js, "in.poison", std::slice::from_ref(&payload)).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let info = settled(&js, "IN", "poison").await;
    assert_eq!(info.delivered.consumer_sequence, 1);
    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, "", "the payload is left in its stream");
    assert_eq!(dead[0].header("Natsplug-Payload-Omitted"), "1950");
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "reject");
    assert_eq!(dead[0].header("Natsplug-Sequence"), "1");
    let reason = dead[0].header("Natsplug-Reason");
    let expected = format!("poison message on in.poison: {payload}");
    assert_eq!(
        reason,
        format!(
            "{}{}",
            &expected[..1024],
            natsplug::delivery::settle::CUT_MARKER
        )
    );
    host.stop().await;

    // A stream's own max_msg_size, said by the stream rather than the client: cut further.
    js.create_stream(jetstream::stream::Config {
        name: "SMALL".into(),
        subjects: vec!["small.>".into()],
        max_message_size: 512,
        ..Default::default()
    })
    .await
    .unwrap();
    plugins.add(
        "tight",
        "poison",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.tight\"]\nmax_deliver = 1\n\
         [publish]\ndead_letter = \"small.tight\"\n",
    );
    let payload = "y".repeat(600);
    publish_all(&js, "in.tight", std::slice::from_ref(&payload)).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    let info = settled(&js, "IN", "tight").await;
    assert_eq!(info.delivered.consumer_sequence, 1);
    let dead = stream_messages(&js, "SMALL").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("Natsplug-Payload-Omitted"), "600");
    let reason = dead[0].header("Natsplug-Reason");
    let expected = format!("poison message on in.tight: {payload}");
    assert_eq!(
        reason,
        format!(
            "{}{}",
            &expected[..64],
            natsplug::delivery::settle::CUT_MARKER
        )
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_whose_dead_letters_no_stream_stores_is_not_served_until_one_does() {
    let (server, client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    // The default dead-letter subject, natsplug.dead.poison: no stream captures it.
    plugins.add(
        "poison",
        "poison",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.poison\"]\n",
    );
    publish_all(&js, "in.poison", &["p".into()]).await;
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.host.dead_letter_stream = None;
    let host_id = config.host.id.clone().unwrap();
    let host = TestHost::start(config);

    // The control plane answers once the host is up.
    let list = || async {
        match client
            .request(format!("natsplug.control.{host_id}.list"), "".into())
            .await
        {
            Ok(listed) => String::from_utf8_lossy(&listed.payload).into_owned(),
            Err(_) => String::new(),
        }
    };
    wait_until(Duration::from_secs(10), "list says why", || async {
        list()
            .await
            .contains("not served: no stream captures the dead-letter subject")
    })
    .await;
    // Nothing was pulled: the input waits on the server, never termed unstored.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stream = js.get_stream("IN").await.unwrap();
    assert!(
        stream.consumer_info("poison").await.is_err(),
        "no consumer yet"
    );
    assert_eq!(stream_count(&js, "IN").await, 1);

    let wasm = plugins.path().join("poison.wasm");
    let wasm = wasm.to_str().unwrap();
    let url = server.url();
    let validate = || {
        std::process::Command::new(natsplug_tests::natsplug_bin())
            .args(["validate", wasm, "--server", &url])
            .output()
            .unwrap()
    };
    let refused = validate();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("error: no stream captures the dead-letter subject \"natsplug.dead.poison\""),
        "{said}"
    );

    create_stream(&js, "GRAVE", &["natsplug.dead.>"]).await;
    let accepted = validate();
    let said = String::from_utf8_lossy(&accepted.stdout);
    assert!(accepted.status.success(), "{said}");
    assert!(
        said.contains(
            "ok: dead letters on \"natsplug.dead.poison\" are stored in stream \"GRAVE\""
        ),
        "{said}"
    );
    let info = settled(&js, "IN", "poison").await;
    assert_eq!(info.delivered.consumer_sequence, 1);
    let dead = stream_messages(&js, "GRAVE").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].subject.as_str(), dead[0].payload.as_str()),
        ("natsplug.dead.poison", "p")
    );
    let listed = list().await;
    assert!(
        listed.contains("poison") && !listed.contains("not served"),
        "{listed}"
    );
    host.stop().await;

    // With host.dead_letter_stream, the host makes the stream itself.
    let (server, _client, js) = jetstream_setup().await;
    publish_all(&js, "in.poison", &["q".into()]).await;
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.host.dead_letter_stream = Some("DLQ".into());
    let host = TestHost::start(config);
    settled(&js, "IN", "poison").await;
    let dead = stream_messages(&js, "DLQ").await;
    assert_eq!((dead.len(), dead[0].payload.as_str()), (1, "q"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_refused_on_the_last_delivery_is_stored_once_the_stream_accepts() {
    let (server, _client, js) = jetstream_setup().await;
    // A full dead-letter stream that refuses new messages.
    let mut config = jetstream::stream::Config {
        name: "FULL".into(),
        subjects: vec!["full.>".into()],
        max_messages: 1,
        discard: DiscardPolicy::New,
        ..Default::default()
    };
    js.create_stream(config.clone()).await.unwrap();
    publish_all(&js, "full.earlier", &["earlier".into()]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        "poison",
        "poison",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.poison\"]\nmax_deliver = 1\n\
         [publish]\ndead_letter = \"full.poison\"\n",
    );
    publish_all(&js, "in.poison", &["refused".into()]).await;
    let mut host_config = TestHost::config(&server.url(), plugins.path());
    host_config.publisher.max_attempts = 2;
    let host = TestHost::start(host_config);

    wait_until(Duration::from_secs(10), "the handler ran", || async {
        consumer_info(&js, "IN", "poison")
            .await
            .delivered
            .consumer_sequence
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = consumer_info(&js, "IN", "poison").await;
    assert_eq!(
        (info.num_ack_pending, stream_count(&js, "FULL").await),
        (1, 1),
        "still held"
    );

    config.max_messages = 10;
    js.update_stream(config).await.unwrap();
    let info = settled(&js, "IN", "poison").await;
    assert_eq!(info.delivered.consumer_sequence, 1, "never redelivered");
    let dead = stream_messages(&js, "FULL").await;
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[1].payload, "refused");
    assert_eq!(dead[1].header("Natsplug-Error-Kind"), "reject");
    assert_eq!(
        dead[1].header("Natsplug-Reason"),
        "poison message on in.poison: refused"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_consumer_settles_by_its_own_ack_wait_and_max_deliver() {
    let (server, _client, js) = jetstream_setup().await;
    let stream = js.get_stream("IN").await.unwrap();
    let bound = |name: &str, subject: &str, max_deliver: i64| jetstream::consumer::pull::Config {
        durable_name: Some(name.into()),
        filter_subject: subject.into(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(2),
        max_deliver,
        ..Default::default()
    };
    stream
        .create_consumer(bound("long", "in.slow", 5))
        .await
        .unwrap();
    stream
        .create_consumer(bound("tries", "in.flaky", 2))
        .await
        .unwrap();
    let plugins = PluginsDir::new();
    // The manifests say 60 s and 5 deliveries; the consumers say 2 s and 2.
    plugins
        .add(
            "slow",
            "slow",
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\ndurable = \"long\"\nbind = true\n\
             ack_wait = \"60s\"\n[publish]\nallow = [\"out.slow\"]\ndead_letter = \"dead.slow\"\n\
             [config]\noutput = \"out.slow\"\n",
        )
        .add(
            "flaky",
            "flaky",
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.flaky\"]\ndurable = \"tries\"\nbind = true\n\
             max_deliver = 5\n[publish]\nallow = [\"out.flaky\"]\ndead_letter = \"dead.flaky\"\n\
             [retry]\nbackoff = [\"100ms\"]\n[config]\noutput = \"out.flaky\"\nsucceed-at = \"4\"\n",
        );
    publish_all(&js, "in.slow", &["5".into()]).await;
    publish_all(&js, "in.flaky", &["f".into()]).await;
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let info = settled(&js, "IN", "long").await;
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "a 5 s handler on a 2 s ack_wait ran once"
    );
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].payload, "slept 5");

    let info = settled(&js, "IN", "tries").await;
    assert_eq!(info.delivered.consumer_sequence, 2);
    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].subject, "dead.flaky");
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "retries-exhausted");
    assert_eq!(dead[0].header("Natsplug-Delivered"), "2");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_make_an_instance_naks_and_never_dead_letters() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    let manifest = |max_deliver: u32| {
        format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\nconcurrency = 3\n\
             max_deliver = {max_deliver}\n[publish]\nallow = [\"out.slow\"]\ndead_letter = \"dead.slow\"\n\
             [retry]\nbackoff = [\"200ms\"]\n[config]\noutput = \"out.slow\"\n"
        )
    };
    plugins.add("slow", "slow", &manifest(5));
    publish_all(&js, "in.slow", &["1".into(), "1".into(), "1".into()]).await;
    let mut config = TestHost::config(&server.url(), plugins.path());
    // One instance for the whole host, three messages at once.
    config.runtime.max_instances = 1;
    let host = TestHost::start(config.clone());
    let info = settled(&js, "IN", "slow").await;
    assert_eq!(stream_count(&js, "OUT").await, 3);
    assert_eq!(stream_count(&js, "DEAD").await, 0);
    assert!(
        info.delivered.consumer_sequence > 3,
        "some were nak'ed: {}",
        info.delivered.consumer_sequence
    );
    host.stop().await;

    // On its only allowed delivery, an input waits for an instance instead of a nak.
    let (server, _client, js) = jetstream_setup().await;
    plugins.add("slow", "slow", &manifest(1));
    publish_all(&js, "in.slow", &["1".into(), "1".into(), "1".into()]).await;
    config.nats.servers = vec![server.url()];
    let host = TestHost::start(config);
    let info = settled(&js, "IN", "slow").await;
    assert_eq!(info.delivered.consumer_sequence, 3, "each delivered once");
    assert_eq!(stream_count(&js, "OUT").await, 3);
    assert_eq!(stream_count(&js, "DEAD").await, 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_plugin_file_keeps_its_dedup_ids() {
    let (server, _client, js) = jetstream_setup().await;
    let manifest = "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.upper\"]\ndurable = \"UP\"\n\
                    [publish]\nallow = [\"out.upper\"]\n[config]\noutput = \"out.upper\"\n";
    publish_all(&js, "in.upper", &["once".into()]).await;
    let first = PluginsDir::new();
    first.add("first", "uppercase", manifest);
    let host = TestHost::start(TestHost::config(&server.url(), first.path()));
    settled(&js, "IN", "UP").await;
    host.stop().await;
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].header("Nats-Msg-Id"), "IN:UP:1:0");

    // The same input again, on the same durable, under another file name.
    js.get_stream("IN")
        .await
        .unwrap()
        .delete_consumer("UP")
        .await
        .unwrap();
    let second = PluginsDir::new();
    second.add("second", "uppercase", manifest);
    let host = TestHost::start(TestHost::config(&server.url(), second.path()));
    let info = settled(&js, "IN", "UP").await;
    host.stop().await;
    assert_eq!(info.delivered.consumer_sequence, 1);
    assert_eq!(
        stream_count(&js, "OUT").await,
        1,
        "the second output was deduplicated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_inputs_output_is_stored_once_across_publish_retries_after_lost_acks() {
    let (server, client, js) = jetstream_setup().await;
    // A stream that stores but never acks: every publish ack is lost.
    js.create_stream(jetstream::stream::Config {
        name: "SILENT".into(),
        subjects: vec!["silent.>".into()],
        no_ack: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let plugins = PluginsDir::new();
    plugins.add(
        "upper",
        "uppercase",
        "[subscribe]\nsubjects = [\"svc.upper\"]\n[publish]\nallow = [\"silent.out\"]\n\
         [config]\noutput = \"silent.out\"\n",
    );
    let mut config = TestHost::config(&server.url(), plugins.path());
    config.nats.request_timeout = Duration::from_millis(300);
    config.publisher.max_attempts = 3;
    let host = TestHost::start(config);
    wait_until(Duration::from_secs(10), "the subscription", || async {
        client.request("svc.upper", "ping".into()).await.is_ok()
    })
    .await;

    // The requester hears of the failure once every attempt's ack was lost.
    let answer = client
        .request("svc.upper", "stored once".into())
        .await
        .unwrap();
    let headers = answer.headers.unwrap();
    assert_eq!(
        headers.get("Natsplug-Error-Kind").unwrap().as_str(),
        "publish"
    );
    let stored = stream_messages(&js, "SILENT").await;
    let ours: Vec<_> = stored
        .iter()
        .filter(|m| m.payload == "STORED ONCE")
        .collect();
    assert_eq!(ours.len(), 1, "three attempts, one message");
    assert!(ours[0].header("Nats-Msg-Id").starts_with("natsplug-core:"));
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_consumers_input_whose_host_died_on_its_last_delivery_is_dead_lettered_from_the_stream()
 {
    let (server, _client, js) = jetstream_setup().await;
    let stream = js.get_stream("IN").await.unwrap();
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("once".into()),
            filter_subject: "in.slow".into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(3),
            max_deliver: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let plugins = PluginsDir::new();
    plugins.add(
        "slow",
        "slow",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.slow\"]\ndurable = \"once\"\nbind = true\n\
         [publish]\nallow = [\"out.slow\"]\ndead_letter = \"dead.slow\"\n[config]\noutput = \"out.slow\"\n",
    );
    let mut doomed = natsplug_tests::HostProcess::spawn(&server.url(), plugins.path(), &[]);
    publish_all(&js, "in.slow", &["30".into()]).await;
    wait_until(Duration::from_secs(10), "the handler in flight", || async {
        consumer_info(&js, "IN", "once").await.num_ack_pending == 1
    })
    .await;
    // A second host, watching; then the first dies on the input's only delivery.
    let watcher = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    doomed.kill();

    wait_until(Duration::from_secs(15), "the dead letter", || async {
        stream_count(&js, "DEAD").await == 1
    })
    .await;
    let dead = stream_messages(&js, "DEAD").await;
    assert_eq!(
        (dead[0].subject.as_str(), dead[0].payload.as_str()),
        ("dead.slow", "30")
    );
    assert_eq!(dead[0].header("Natsplug-Error-Kind"), "max-deliveries");
    assert_eq!(dead[0].header("Natsplug-Delivered"), "1");
    assert_eq!(dead[0].header("Natsplug-Sequence"), "1");
    let info = consumer_info(&js, "IN", "once").await;
    assert_eq!(info.delivered.consumer_sequence, 1);
    assert_eq!(stream_count(&js, "OUT").await, 0);
    watcher.stop().await;
}
