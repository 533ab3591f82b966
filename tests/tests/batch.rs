//! Batch calls against a real nats-server: the inputs of one `handle-batch` call are settled
//! each on its own result (outputs stored then acked, retried, dead-lettered), in the three
//! languages, and their heartbeats keep them alive through a batch longer than `ack_wait`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use natsplug_tests::{
    PluginsDir, TestHost, create_stream, jetstream_setup, publish_all, stream_messages, wait_until,
};

/// Waits until the consumer is there (a Python or JavaScript component takes seconds to
/// compile in a debug build) and has settled everything it was delivered.
async fn settled(js: &jetstream::Context, durable: &str) -> jetstream::consumer::Info {
    wait_until(Duration::from_secs(120), "the consumer", || async {
        js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(durable, "IN")
            .await
            .is_ok()
    })
    .await;
    natsplug_tests::settled(js, "IN", durable).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_mixed_outcomes_settles_each_input_on_its_own_in_every_language() {
    let (server, _client, js) = jetstream_setup().await;
    create_stream(&js, "BATCH_OUT", &["batch.out"]).await;
    let plugins = PluginsDir::new();
    let languages = [("batch", "rs"), ("batch-py", "py"), ("batch-js", "js")];
    for (wasm, lang) in languages {
        // Concurrency 8 is one shard, whose first pull asks for 8: the first batch is exactly
        // the stream's first 8 messages.
        plugins.add(
            &format!("batch-{lang}"),
            wasm,
            &format!(
                "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.batch.{lang}\"]\nconcurrency = 8\n\
                 max_deliver = 2\n[batch]\nmax = 8\nmax_wait = \"500ms\"\n\
                 [publish]\nallow = [\"batch.out\"]\ndead_letter = \"dead.batch.{lang}\"\n"
            ),
        );
        let mut payloads: Vec<String> = (1..=6).map(|i| format!("ok{i}-{lang}")).collect();
        payloads.extend(["reject", "retry", "crash"].map(String::from));
        publish_all(&js, &format!("in.batch.{lang}"), &payloads).await;
    }
    let mut config = TestHost::config(&server.url(), plugins.path());
    // The compile cache the language tests share: two components that take seconds each.
    config.runtime.cache = true;
    config.runtime.cache_dir = Some(natsplug_tests::compile_cache_dir());
    let host = TestHost::start(config);

    for (_, lang) in languages {
        let info = settled(&js, &format!("batch-{lang}")).await;
        // Nine inputs and one redelivery: the retry's (its second delivery is its last).
        assert_eq!(info.delivered.consumer_sequence, 10, "{lang}");
    }
    let outputs = stream_messages(&js, "BATCH_OUT").await;
    let mut by_lang: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for o in &outputs {
        let lang = o.payload.rsplit('-').next().unwrap().to_lowercase();
        by_lang
            .entry(lang)
            .or_default()
            .push((o.payload.clone(), o.header("batch-size").to_owned()));
    }
    for (_, lang) in languages {
        let want: Vec<(String, String)> = (1..=6)
            .map(|i| (format!("OK{i}-{}", lang.to_uppercase()), "8".to_owned()))
            .collect();
        // Each input's outputs go out on their own, so the stream's order is the settling's.
        let mut got = by_lang.remove(lang).unwrap_or_default();
        got.sort();
        assert_eq!(got, want, "{lang}: one call of 8");
    }
    assert!(by_lang.is_empty(), "{by_lang:?}");

    let dead = stream_messages(&js, "DEAD").await;
    for (_, lang) in languages {
        let mut ends: Vec<(String, String, String)> = dead
            .iter()
            .filter(|d| d.subject == format!("dead.batch.{lang}"))
            .map(|d| {
                (
                    d.payload.clone(),
                    d.header("Natsplug-Error-Kind").to_owned(),
                    d.header("Natsplug-Delivered").to_owned(),
                )
            })
            .collect();
        ends.sort();
        let end = |p: &str, k: &str, d: &str| (p.to_owned(), k.to_owned(), d.to_owned());
        assert_eq!(
            ends,
            [
                // Its batch call trapped; alone, it panicked again: dead-lettered by itself.
                end("crash", "panic", "1"),
                end("reject", "reject", "1"),
                end("retry", "retries-exhausted", "2"),
            ],
            "{lang}"
        );
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_every_input_of_a_batch_longer_than_ack_wait_alive() {
    let (server, _client, js) = jetstream_setup().await;
    let plugins = PluginsDir::new();
    // A per-message handler in batches of 3: one call sleeps 3 × 1 s, past the 2 s ack_wait.
    plugins.add(
        "nap",
        "slow",
        "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.nap\"]\nack_wait = \"2s\"\nconcurrency = 3\n\
         [batch]\nmax = 3\nmax_wait = \"500ms\"\n\
         [publish]\nallow = [\"out.nap\"]\n[config]\noutput = \"out.nap\"\n",
    );
    publish_all(&js, "in.nap", &["1".into(), "1".into(), "1".into()]).await;
    let started = std::time::Instant::now();
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));

    let info = settled(&js, "nap").await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "one call for the three"
    );
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "no input was redelivered"
    );
    let outputs = stream_messages(&js, "OUT").await;
    assert_eq!(
        outputs
            .iter()
            .map(|o| o.payload.as_str())
            .collect::<Vec<_>>(),
        ["slept 1", "slept 1", "slept 1"]
    );
    host.stop().await;
}
