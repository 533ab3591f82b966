//! Capabilities against a real nats-server and a loopback HTTP server the test starts: a
//! handler counts keys in NATS KV by compare-and-swap (a conflict turns into a retry), asks a
//! service plugin over a request and publishes its answer, and fetches from an allowed HTTP
//! origin; and everything a grant does not cover is refused with a typed error, counted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use natsplug::capability::Services;
use natsplug::manifest::Manifest;
use natsplug::message::Message;
use natsplug::metrics::Metrics;
use natsplug::runtime::{HandlerError, Hooks, Outcome, Plugin, Runtime, RuntimeConfig};
use natsplug_tests::{
    PluginsDir, TestHost, create_stream, jetstream_setup, natsplug_cli, plugin_path,
    stream_messages, wait_until,
};

fn cached_config(url: &str, plugins: &Path) -> natsplug::config::HostConfig {
    let mut config = TestHost::config(url, plugins);
    config.runtime.cache = true;
    config.runtime.cache_dir = Some(natsplug_tests::compile_cache_dir());
    config
}

/// A loopback HTTP server: `/price` answers `42`, `/big` 3 MiB (`/chunked` too, without a
/// length), `/slow/MS` waits MS ms then answers `late`.
async fn http_server() -> SocketAddr {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/price", get(|| async { "42" }))
        .route("/big", get(|| async { vec![b'b'; 3 << 20] }))
        // The same without a declared length: 48 chunks of 64 KiB.
        .route(
            "/chunked",
            get(|| async {
                let chunks = (0..48).map(|_| Ok::<_, std::io::Error>(vec![b'c'; 64 << 10]));
                axum::body::Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        .route(
            "/slow/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "late"
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn publish_with(
    js: &jetstream::Context,
    subject: &str,
    payload: &str,
    header: Option<(&str, &str)>,
) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some((name, value)) = header {
        headers.insert(name, value);
    }
    js.publish_with_headers(subject.to_owned(), headers, payload.to_owned().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn settled(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> jetstream::consumer::Info {
    wait_until(Duration::from_secs(120), "the consumer", || async {
        js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(durable, stream)
            .await
            .is_ok()
    })
    .await;
    natsplug_tests::settled(js, stream, durable).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_counts_each_input_once_and_a_compare_and_swap_conflict_is_retried_in_every_language() {
    let (server, _client, js) = jetstream_setup().await;
    create_stream(&js, "TALLY_OUT", &["tally.out"]).await;
    let plugins = PluginsDir::new();
    let languages = [("tally", "rs"), ("tally-py", "py"), ("tally-js", "js")];
    for (wasm, lang) in languages {
        // Rust's bucket is created by the host at load; the others exist beforehand.
        let grant = if lang == "rs" {
            format!("tally_{lang} = {{ access = \"read-write\", create = true, history = 5 }}")
        } else {
            js.create_key_value(kv::Config {
                bucket: format!("tally_{lang}"),
                ..Default::default()
            })
            .await
            .unwrap();
            format!("tally_{lang} = \"read-write\"")
        };
        plugins.add(
            &format!("tally-{lang}"),
            wasm,
            &format!(
                "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.tally.{lang}\"]\nconcurrency = 1\n\
                 [publish]\nallow = [\"tally.out\"]\n[kv]\nbuckets = {{ {grant} }}\n\
                 [config]\nbucket = \"tally_{lang}\"\n"
            ),
        );
        // Five counts of `a`; the third meets a rival writer (who sets 100) between its read
        // and its write, so its compare-and-swap conflicts and it is retried.
        for i in 1..=5 {
            let rival = (i == 3).then_some(("tally-rival", "100"));
            publish_with(&js, &format!("in.tally.{lang}"), "a", rival).await;
        }
    }
    let host = TestHost::start(cached_config(&server.url(), plugins.path()));

    for (_, lang) in languages {
        let info = settled(&js, "IN", &format!("tally-{lang}")).await;
        // Five inputs, and the conflicted one delivered again.
        assert_eq!(info.delivered.consumer_sequence, 6, "{lang}");
        let bucket = js.get_key_value(format!("tally_{lang}")).await.unwrap();
        let entry = bucket.entry("a").await.unwrap().unwrap();
        // 1, 2, the rival's 100, then 101, 102, 103: six revisions.
        assert_eq!(&entry.value[..], b"103", "{lang}");
        assert_eq!(entry.revision, 6, "{lang}");
    }
    let outputs = stream_messages(&js, "TALLY_OUT").await;
    assert_eq!(outputs.len(), 15, "{outputs:?}");
    let got: BTreeSet<(String, String)> = outputs
        .iter()
        .map(|o| (o.payload.clone(), o.header("revision").to_owned()))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("1", "1"),
        ("2", "2"),
        ("101", "4"),
        ("102", "5"),
        ("103", "6"),
    ]
    .iter()
    .map(|(p, r)| ((*p).to_owned(), (*r).to_owned()))
    .collect();
    assert_eq!(got, want);
    for o in &outputs {
        assert_eq!(o.header("key"), "a");
    }
    // Each count appears once per language: three of each.
    for (payload, _) in &want {
        assert_eq!(
            outputs.iter().filter(|o| &o.payload == payload).count(),
            3,
            "{payload}"
        );
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_requests_a_service_plugin_and_publishes_its_answer_in_every_language() {
    let (server, client, js) = jetstream_setup().await;
    create_stream(&js, "QUOTES", &["quote.out"]).await;
    let plugins = PluginsDir::new();
    plugins.add(
        "pricing",
        "pricing",
        "[subscribe]\nsubjects = [\"pricing.quote\"]\nqueue_group = \"pricing\"\n",
    );
    let languages = [
        ("quote-rs", "rust"),
        ("quote-py", "python"),
        ("quote-js", "js"),
    ];
    for (wasm, _) in languages {
        plugins.add(
            wasm,
            wasm,
            &format!(
                "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.{wasm}\"]\n\
                 [publish]\nallow = [\"quote.out\"]\n[request]\nallow = [\"pricing.quote\"]\n"
            ),
        );
    }
    let host = TestHost::start(cached_config(&server.url(), plugins.path()));
    wait_until(Duration::from_secs(60), "the pricing service", || async {
        client.request("pricing.quote", "x".into()).await.is_ok()
    })
    .await;
    for (wasm, _) in languages {
        for item in ["apple", "kiwi"] {
            publish_with(&js, &format!("in.{wasm}"), item, None).await;
        }
    }
    for (wasm, _) in languages {
        let info = settled(&js, "IN", wasm).await;
        assert_eq!(
            info.delivered.consumer_sequence, 2,
            "{wasm}: each input once"
        );
    }
    let outputs = stream_messages(&js, "QUOTES").await;
    let got: BTreeSet<(String, String, String)> = outputs
        .iter()
        .map(|o| {
            (
                o.header("quoted-by").to_owned(),
                o.payload.clone(),
                o.header("priced-by").to_owned(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = languages
        .iter()
        .flat_map(|(_, by)| {
            [("apple=500"), ("kiwi=400")]
                .map(|p| ((*by).to_owned(), p.to_owned(), "pricing".to_owned()))
        })
        .collect();
    assert_eq!(outputs.len(), 6);
    assert_eq!(got, want);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_fetches_from_an_allowed_origin_and_a_30s_wait_is_kept_alive_by_heartbeats() {
    let (server, _client, js) = jetstream_setup().await;
    create_stream(&js, "FETCHED", &["fetch.out"]).await;
    let http = http_server().await;
    let plugins = PluginsDir::new();
    // ack_wait 3 s, a 30 s wait on the HTTP server: only heartbeats keep the input alive.
    plugins.add(
        "fetch",
        "fetch",
        &format!(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\"in.fetch\"]\nack_wait = \"3s\"\n\
             [limits]\ndeadline = \"45s\"\n[publish]\nallow = [\"fetch.out\"]\n\
             [http]\nallow = [\"http://{http}\"]\nfirst_byte_timeout = \"40s\"\n\
             [config]\norigin = \"http://{http}\"\n"
        ),
    );
    for path in ["price", "slow/30000"] {
        publish_with(&js, "in.fetch", path, None).await;
    }
    let started = Instant::now();
    let host = TestHost::start(TestHost::config(&server.url(), plugins.path()));
    wait_until(Duration::from_secs(60), "two outputs", || async {
        natsplug_tests::stream_count(&js, "FETCHED").await == 2
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(30));
    let info = natsplug_tests::settled(&js, "IN", "fetch").await;
    // Two inputs, each delivered once: the 30 s one was never redelivered.
    assert_eq!(info.delivered.consumer_sequence, 2);
    let mut got: Vec<(String, String)> = stream_messages(&js, "FETCHED")
        .await
        .iter()
        .map(|o| (o.payload.clone(), o.header("http-status").to_owned()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("42".to_owned(), "200".to_owned()),
            ("late".to_owned(), "200".to_owned())
        ]
    );
    host.stop().await;
}

/// The probe plugin under a manifest granting one request subject, one read-only bucket and
/// one HTTP origin, on a runtime whose capabilities reach `url`.
async fn probe(url: &str, manifest: &str) -> (Plugin, Arc<Metrics>) {
    let client = async_nats::connect(url).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let runtime = Runtime::new(RuntimeConfig::default())
        .unwrap()
        .with_services(Services::new(client, Some(metrics.clone())));
    let manifest = Manifest::parse(manifest, Path::new("probe.toml")).unwrap();
    let plugin = runtime
        .load_file(&plugin_path("probe"), Some(manifest))
        .unwrap();
    plugin.open_capabilities().await.unwrap();
    (plugin, metrics)
}

/// What the probe answered `request`: its output's payload.
async fn ask(plugin: &Plugin, request: &str) -> String {
    match plugin
        .handle(&Message::new("probe", request.to_owned()), Hooks::default())
        .await
    {
        Ok(Outcome::Success(outputs)) => String::from_utf8_lossy(&outputs[0].payload).into_owned(),
        other => panic!("{request}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_no_grant_covers_fails_with_a_typed_error_and_is_counted() {
    let (server, client, js) = jetstream_setup().await;
    let http = http_server().await;
    let ro = js
        .create_key_value(kv::Config {
            bucket: "ro".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    ro.put("k", "v".into()).await.unwrap();
    js.create_key_value(kv::Config {
        bucket: "secret".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The pricing service, answered by hand.
    natsplug_tests::answer_requests(&client, "pricing.quote", "quoted").await;
    let (plugin, metrics) = probe(
        &server.url(),
        &format!(
            "[publish]\nallow = [\"probe.out\"]\n[request]\nallow = [\"pricing.quote\"]\n\
             [kv]\nbuckets = {{ ro = \"read\" }}\n\
             [http]\nallow = [\"http://{http}\"]\nmax_response_bytes = \"1MiB\"\n"
        ),
    )
    .await;

    // What is granted works.
    assert_eq!(ask(&plugin, "request:pricing.quote").await, "reply:quoted");
    assert_eq!(ask(&plugin, "kv-get:ro:k").await, "got:v");
    assert_eq!(
        ask(&plugin, &format!("http:http://{http}/price")).await,
        "status:200 bytes:2"
    );

    // A bucket not granted, a write to a read-only one, a key that is not a key.
    assert_eq!(ask(&plugin, "kv-open:secret").await, "error:AccessDenied");
    assert_eq!(ask(&plugin, "kv-set:ro:k").await, "error:AccessDenied");
    assert_eq!(&ro.get("k").await.unwrap().unwrap()[..], b"v");
    let bad_key = ask(&plugin, "kv-get:ro:a.>").await;
    assert!(
        bad_key.starts_with("error:Other(") && bad_key.contains("not a valid key"),
        "{bad_key}"
    );
    // A subject not granted; the reserved space; a header that steers the server.
    let denied = ask(&plugin, "request:users.1").await;
    assert!(denied.contains("not in its request.allow list"), "{denied}");
    let reserved = ask(&plugin, "request:$JS.API.STREAM.DELETE.IN").await;
    assert!(reserved.contains("reserved space ($JS.)"), "{reserved}");
    let steering = ask(&plugin, "request-header:Nats-Expected-Stream=IN").await;
    assert!(
        steering.starts_with("error:Denied(") && steering.contains("steers the server"),
        "{steering}"
    );
    // Header names and values the protocol cannot carry: refused before async-nats sees them.
    for header in ["bad name=x", "X-Split=a\r\nb", "caf\u{e9}=x"] {
        let refused = ask(&plugin, &format!("request-header:{header}")).await;
        assert!(
            refused.starts_with("error:Denied(") && refused.contains("is invalid"),
            "{header:?}: {refused}"
        );
    }
    // A payload over the server's max_payload (1 MiB): a typed failure, not a dropped
    // connection: the next request goes through.
    let oversize = ask(&plugin, &format!("request-bytes:{}", 2 << 20)).await;
    assert!(oversize.starts_with("error:Failed("), "{oversize}");
    assert_eq!(ask(&plugin, "request:pricing.quote").await, "reply:quoted");
    // An origin not granted, and a response over the limit.
    let other = free_port_origin();
    assert_eq!(
        ask(&plugin, &format!("http:{other}/")).await,
        "error:Denied"
    );
    assert_eq!(
        ask(&plugin, &format!("http:http://{http}/big")).await,
        "error:TooLarge"
    );
    assert_eq!(
        ask(&plugin, &format!("http:http://{http}/chunked")).await,
        "error:TooLarge"
    );
    assert!(
        js.get_stream("IN").await.is_ok(),
        "the stream is still there"
    );
    // Floods: one batch of 1,001 keys; 20 HTTP requests started at once, of which 16 are open
    // together at most (the rest refused at once, not queued).
    let many = ask(&plugin, "kv-get-many:ro:1001").await;
    assert!(
        many.contains("1001 keys in one call; at most 1000"),
        "{many}"
    );
    assert_eq!(ask(&plugin, "kv-get-many:ro:1000").await, "got:1000");
    assert_eq!(
        ask(&plugin, &format!("http-flood:20:http://{http}/slow/500")).await,
        "answered:16 refused:4"
    );

    let text = metrics.encode();
    // Each KV probe opens its bucket first: five opens of `ro`, one read and a get-many of
    // 1,000 went through.
    for (capability, result, count) in [
        ("kv", "ok", 7.0),
        ("kv", "denied", 3.0),
        ("request", "ok", 2.0),
        ("request", "denied", 6.0),
        ("request", "error", 1.0),
        // The price, the chunked response whose head came (its body failed later), and 16 of
        // the flood; 4 refused and the response over its declared limit.
        ("http", "ok", 18.0),
        ("http", "error", 5.0),
        ("http", "denied", 1.0),
    ] {
        let series = format!(
            "natsplug_capability_calls_total{{plugin=\"probe\",capability=\"{capability}\",result=\"{result}\"}}"
        );
        assert_eq!(
            natsplug_tests::sample(&text, &series),
            Some(count),
            "{series}\n{text}"
        );
    }
}

/// An origin on a loopback port nothing listens on.
fn free_port_origin() -> String {
    format!("http://{}", natsplug_tests::free_addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http_server_ends_in_the_deadline_and_a_missing_bucket_fails_the_load() {
    let (server, _client, _js) = jetstream_setup().await;
    let http = http_server().await;
    let (plugin, _) = probe(
        &server.url(),
        &format!(
            "[limits]\ndeadline = \"2s\"\n[publish]\nallow = [\"probe.out\"]\n\
             [http]\nallow = [\"http://{http}\"]\nfirst_byte_timeout = \"60s\"\n"
        ),
    )
    .await;
    let started = Instant::now();
    let result = plugin
        .handle(
            &Message::new("probe", format!("http:http://{http}/slow/60000")),
            Hooks::default(),
        )
        .await;
    let took = started.elapsed();
    // The wait is cut at the deadline: the guest sees a timeout just before it, or the call
    // ends at it; never a handler hung for the server's 60 s.
    match &result {
        Ok(Outcome::Success(outputs)) => {
            assert_eq!(&outputs[0].payload[..], b"error:Timeout")
        }
        Err(HandlerError::Deadline { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(4), "{took:?}");

    let missing = Manifest::parse(
        "[kv]\nbuckets = { nowhere = \"read\" }\n",
        Path::new("probe.toml"),
    )
    .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let runtime = Runtime::new(RuntimeConfig::default())
        .unwrap()
        .with_services(Services::new(client, None));
    let plugin = runtime
        .load_file(&plugin_path("probe"), Some(missing))
        .unwrap();
    let error = plugin.open_capabilities().await.unwrap_err().to_string();
    assert!(
        error.contains("kv bucket \"nowhere\" cannot be opened"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natsplug_call_runs_a_kv_handler_against_a_server() {
    let (server, _client, js) = jetstream_setup().await;
    js.create_key_value(kv::Config {
        bucket: "tally".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let wasm = plugin_path("tally");
    let wasm = wasm.to_str().unwrap();
    let url = server.url();
    let args = [
        "call",
        wasm,
        "--server",
        &url,
        "--subject",
        "tally.in",
        "--payload",
        "pear",
    ];
    let first = natsplug_cli(&args);
    let second = natsplug_cli(&args);
    assert!(first.contains("\"payload\":\"1\""), "{first}");
    assert!(second.contains("\"payload\":\"2\""), "{second}");
    let bucket = js.get_key_value("tally").await.unwrap();
    assert_eq!(&bucket.get("pear").await.unwrap().unwrap()[..], b"2");
    // Without --server, the KV call fails and the handler asks for a retry.
    let offline = std::process::Command::new(natsplug_tests::natsplug_bin())
        .args(["call", wasm, "--subject", "tally.in", "--payload", "pear"])
        .output()
        .unwrap();
    assert_eq!(offline.status.code(), Some(2), "{offline:?}");
}
