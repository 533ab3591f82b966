//! The sandboxed runtime, without NATS: every example plugin through the real wasmtime engine,
//! each limit with its exact error, bad plugins and manifests, and isolation between messages.

use std::path::Path;
use std::time::{Duration, Instant};

use natsplug::manifest::Manifest;
use natsplug::message::{Headers, Message, Output};
use natsplug::policy::Denied;
use natsplug::runtime::{HandlerError, Hooks, LoadError, Outcome, Plugin, Runtime, RuntimeConfig};
use natsplug_tests::{cached_runtime, plugin_path};

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime")
}

fn load(rt: &Runtime, name: &str) -> Plugin {
    rt.load_file(&plugin_path(name), None)
        .expect("plugin loads")
}

fn load_with(rt: &Runtime, name: &str, manifest: &str) -> Plugin {
    let manifest = Manifest::parse(manifest, Path::new("test.toml")).expect("manifest");
    rt.load_file(&plugin_path(name), Some(manifest))
        .expect("plugin loads")
}

fn out(subject: &str, headers: &[(&str, &str)], payload: &str) -> Output {
    Output {
        subject: Some(subject.to_owned()),
        headers: Headers(
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        payload: payload.as_bytes().to_vec().into(),
    }
}

async fn handle(plugin: &Plugin, message: &Message) -> Result<Outcome, HandlerError> {
    plugin.handle(message, Hooks::default()).await
}

#[tokio::test]
async fn uppercase_upper_cases_and_keeps_headers() {
    let rt = runtime();
    let plugin = load(&rt, "uppercase");
    let mut msg = Message::new("demo.in.uppercase", "Hello, wasm! é");
    msg.headers.append("trace", "1");
    msg.headers.append("trace", "2");
    let outcome = handle(&plugin, &msg).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Success(vec![out(
            "demo.out.uppercase",
            &[("trace", "1"), ("trace", "2")],
            "HELLO, WASM! É"
        )])
    );
}

#[tokio::test]
async fn uppercase_rejects_invalid_utf8() {
    let rt = runtime();
    let plugin = load(&rt, "uppercase");
    let outcome = handle(&plugin, &Message::new("x", vec![0xff, 0xfe]))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Reject { reason } if reason.contains("invalid utf-8")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn fanout_returns_one_output_per_subject_and_host_publish_adds_one() {
    let rt = runtime();
    let plugin = load(&rt, "fanout");
    let outcome = handle(&plugin, &Message::new("demo.in.fanout", "x"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Success(vec![
            out("demo.out.fanout.a", &[("fanout-index", "0")], "x"),
            out("demo.out.fanout.b", &[("fanout-index", "1")], "x"),
            out("demo.out.fanout.c", &[("fanout-index", "2")], "x"),
        ])
    );

    // An extra output through the host's `publish`, to an allowed subject, comes first.
    let mut msg = Message::new("demo.in.fanout", "y");
    msg.headers.append("publish-to", "demo.out.fanout.extra");
    let Outcome::Success(outputs) = handle(&plugin, &msg).await.unwrap() else {
        panic!("fanout failed")
    };
    assert_eq!(outputs.len(), 4);
    assert_eq!(outputs[0], out("demo.out.fanout.extra", &[], "y"));
}

#[tokio::test]
async fn publish_to_a_forbidden_subject_is_refused_to_the_guest() {
    let rt = runtime();
    let plugin = load(&rt, "fanout");
    let mut msg = Message::new("demo.in.fanout", "y");
    msg.headers.append("publish-to", "secret.place");
    let outcome = handle(&plugin, &msg).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Reject {
            reason: "plugin \"fanout\": may not publish to \"secret.place\" (not in its publish.allow list)"
                .into()
        }
    );
}

#[tokio::test]
async fn returned_output_to_a_forbidden_subject_is_a_typed_error() {
    let rt = runtime();
    let plugin = load_with(&rt, "uppercase", "[config]\noutput = \"not.allowed\"\n");
    let err = handle(&plugin, &Message::new("x", "a")).await.unwrap_err();
    assert_eq!(
        err,
        HandlerError::Refused {
            plugin: "uppercase".into(),
            denied: Denied::NotGranted {
                subject: "not.allowed".into()
            }
        }
    );
}

#[tokio::test]
async fn slow_sleeps_then_answers_and_replies_to_requests() {
    let rt = runtime();
    let plugin = load_with(&rt, "slow", "[limits]\ndeadline = \"5s\"\n");
    let mut msg = Message::new("demo.in.slow", "0.3");
    msg.reply = Some("_INBOX.1".into());
    let started = Instant::now();
    let outcome = handle(&plugin, &msg).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        outcome,
        Outcome::Success(vec![Output {
            subject: None,
            headers: Headers::default(),
            payload: "slept 0.3".into()
        }])
    );
}

#[tokio::test]
async fn a_reply_without_a_request_is_a_typed_error() {
    let rt = runtime();
    let plugin = load(&rt, "probe");
    let err = handle(&plugin, &Message::new("p", "reply"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HandlerError::NoReplySubject {
            plugin: "probe".into()
        }
    );
    let mut request = Message::new("p", "reply");
    request.reply = Some("_INBOX.x".into());
    let ok = handle(&plugin, &request).await.unwrap();
    assert_eq!(
        ok,
        Outcome::Success(vec![Output {
            subject: None,
            headers: Headers::default(),
            payload: "pong".into()
        }])
    );
}

#[tokio::test]
async fn flaky_retries_until_its_delivery_count_then_succeeds() {
    let rt = runtime();
    let plugin = load_with(
        &rt,
        "flaky",
        "[publish]\nallow = [\"flaky.done\"]\n[config]\nsucceed-at = \"3\"\nretry-delay-ms = \"250\"\n",
    );
    let mut msg = Message::new("f", "");
    for delivered in 1..=3u64 {
        msg.delivery = Some(natsplug::message::Delivery {
            stream: "S".into(),
            consumer: "C".into(),
            stream_sequence: 7,
            consumer_sequence: delivered,
            delivered,
            pending: 0,
            timestamp_ns: 0,
        });
        let outcome = handle(&plugin, &msg).await.unwrap();
        if delivered < 3 {
            assert_eq!(
                outcome,
                Outcome::Retry {
                    reason: format!("attempt {delivered} of 3"),
                    delay: Some(Duration::from_millis(250))
                }
            );
        } else {
            assert_eq!(
                outcome,
                Outcome::Success(vec![out("flaky.done", &[], "ok after 3")])
            );
        }
    }
}

#[tokio::test]
async fn poison_rejects() {
    let rt = runtime();
    let plugin = load(&rt, "poison");
    let outcome = handle(&plugin, &Message::new("demo.in.poison", "bad"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Reject {
            reason: "poison message on demo.in.poison: bad".into()
        }
    );
}

#[tokio::test]
async fn spin_is_stopped_by_fuel() {
    let rt = runtime();
    let plugin = load_with(&rt, "spin", "[limits]\nfuel = 50000000\n");
    let err = handle(&plugin, &Message::new("x", "")).await.unwrap_err();
    assert_eq!(
        err,
        HandlerError::OutOfFuel {
            plugin: "spin".into(),
            fuel: 50_000_000
        }
    );
}

#[tokio::test]
async fn spin_is_stopped_by_the_deadline() {
    let rt = runtime();
    let plugin = load_with(&rt, "spin", "[limits]\nfuel = 0\ndeadline = \"300ms\"\n");
    let started = Instant::now();
    let err = handle(&plugin, &Message::new("x", "")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err,
        HandlerError::Deadline {
            plugin: "spin".into(),
            deadline: Duration::from_millis(300)
        }
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

#[tokio::test]
async fn a_sleeping_guest_is_stopped_by_the_deadline() {
    let rt = runtime();
    let plugin = load_with(&rt, "slow", "[limits]\ndeadline = \"200ms\"\n");
    let err = handle(&plugin, &Message::new("x", "30")).await.unwrap_err();
    assert_eq!(
        err,
        HandlerError::Deadline {
            plugin: "slow".into(),
            deadline: Duration::from_millis(200)
        }
    );
}

#[tokio::test]
async fn hog_is_stopped_at_its_memory_limit() {
    let rt = runtime();
    let plugin = load(&rt, "hog");
    let err = handle(&plugin, &Message::new("x", "")).await.unwrap_err();
    assert_eq!(
        err,
        HandlerError::Memory {
            plugin: "hog".into(),
            limit: 32 << 20
        }
    );
}

#[tokio::test]
async fn a_guest_panic_is_reported_with_its_message() {
    let rt = runtime();
    let plugin = load(&rt, "panic");
    let err = handle(&plugin, &Message::new("a.b", "")).await.unwrap_err();
    assert_eq!(
        err,
        HandlerError::Panic {
            plugin: "panic".into(),
            message: "boom on a.b".into()
        }
    );
}

#[tokio::test]
async fn the_runtime_keeps_serving_after_every_kind_of_failure() {
    let rt = runtime();
    let upper = load(&rt, "uppercase");
    let spin = load_with(&rt, "spin", "[limits]\nfuel = 1000000\n");
    for plugin in ["hog", "panic"].map(|n| load(&rt, n)).iter().chain([&spin]) {
        assert!(handle(plugin, &Message::new("x", "")).await.is_err());
        let ok = handle(&upper, &Message::new("x", "ok")).await.unwrap();
        assert_eq!(
            ok,
            Outcome::Success(vec![out("demo.out.uppercase", &[], "OK")])
        );
    }
}

#[tokio::test]
async fn a_long_guest_does_not_block_other_handlers_on_the_same_thread() {
    // One executor thread: while `spin` burns CPU, `uppercase` calls finish. Its deadline is
    // far beyond their worst case on a loaded machine (a CI run once took more than 3 s for
    // five calls, each yielding a tick to spin): it is stopped by hand once they are done, and
    // `spin_is_stopped_by_the_deadline` tests the deadline.
    let rt = runtime();
    let spin = load_with(&rt, "spin", "[limits]\nfuel = 0\ndeadline = \"120s\"\n");
    let upper = load(&rt, "uppercase");
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let spinner =
                tokio::task::spawn_local(
                    async move { handle(&spin, &Message::new("x", "")).await },
                );
            tokio::task::yield_now().await;
            for _ in 0..5 {
                let r = handle(&upper, &Message::new("x", "a")).await.unwrap();
                assert!(matches!(r, Outcome::Success(_)));
            }
            assert!(
                !spinner.is_finished(),
                "uppercase calls waited for spin to finish"
            );
            // Dropped at its next epoch yield.
            spinner.abort();
            assert!(spinner.await.unwrap_err().is_cancelled());
        })
        .await;
}

#[tokio::test]
async fn a_second_message_sees_none_of_the_first_ones_state() {
    let rt = runtime();
    let plugin = load(&rt, "counter");
    for _ in 0..5 {
        let outcome = handle(&plugin, &Message::new("x", "")).await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Success(vec![out("counter.out", &[], "1")])
        );
    }
}

#[test]
fn an_invalid_component_is_a_typed_load_error() {
    let rt = runtime();
    let err = rt
        .load("junk", b"\0asm not really", Manifest::default())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::NotAComponent { plugin, .. } if plugin == "junk"),
        "{err}"
    );
    // A core module runs as a command (tests/tests/commands.rs), so it needs `_start`.
    let err = rt
        .load("core", b"\0asm\x01\0\0\0", Manifest::default())
        .unwrap_err();
    assert!(
        matches!(&err, LoadError::NotACommand { plugin, reason } if plugin == "core" && reason.contains("`_start`")),
        "{err}"
    );
}

#[test]
fn a_component_of_another_world_is_a_typed_load_error() {
    let rt = runtime();
    // A component that exports nothing: no `handle`. The components here are written as
    // bytes (from `wasm-tools parse`): the host is built without wasmtime's text format.
    let empty = b"\0asm\x0d\0\x01\0"; // (component)
    let err = rt.load("empty", empty, Manifest::default()).unwrap_err();
    assert!(
        matches!(&err, LoadError::WrongWorld { plugin, reason } if plugin == "empty" && reason.contains("handle")),
        "{err}"
    );
    // A component that imports something the host does not offer.
    // (component (import "acme:db/query@1.0.0" (instance (export "run" (func)))))
    let db = b"\0asm\x0d\0\x01\0\x07\x10\x01\x42\x02\x01\x40\x00\x01\x00\x04\x00\x03run\x01\x00\
               \x0a\x18\x01\x00\x13acme:db/query@1.0.0\x05\x00";
    let err = rt.load("db", db, Manifest::default()).unwrap_err();
    assert!(
        matches!(&err, LoadError::WrongWorld { reason, .. } if reason.contains("acme:db/query")),
        "{err}"
    );
}

#[test]
fn a_bad_manifest_is_a_typed_load_error_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("uppercase.wasm");
    std::fs::copy(plugin_path("uppercase"), &wasm).unwrap();
    std::fs::write(
        dir.path().join("uppercase.toml"),
        "[limits]\nfuel = \"lots\"\n",
    )
    .unwrap();
    let err = runtime().load_file(&wasm, None).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::Manifest(_)));
    assert!(
        text.contains("uppercase.toml") && text.contains("line 2") && text.contains("fuel"),
        "{text}"
    );
}

#[test]
fn a_memory_limit_above_the_hosts_maximum_is_refused() {
    let rt = Runtime::new(RuntimeConfig {
        max_memory: 64 << 20,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let manifest = Manifest::parse("[limits]\nmemory = \"1GiB\"\n", Path::new("m.toml")).unwrap();
    let err = rt
        .load_file(&plugin_path("uppercase"), Some(manifest))
        .unwrap_err();
    assert!(matches!(err, LoadError::Unsupported { .. }), "{err}");
}

#[tokio::test]
async fn the_sandbox_shows_no_env_and_no_files_unless_granted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "s3cr3t").unwrap();
    let host_file = dir.path().join("secret.txt");
    let rt = runtime();
    // SAFETY of the test: the host process has environment variables (PATH at least).
    assert!(std::env::vars().count() > 0);

    let closed = load(&rt, "probe");
    let probe = |plugin: Plugin, payload: String| async move {
        match handle(&plugin, &Message::new("p", payload)).await.unwrap() {
            Outcome::Success(outputs) => String::from_utf8(outputs[0].payload.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(probe(closed.clone(), "env".into()).await, "env:[]");
    let read_host = format!("read:{}", host_file.display());
    assert_eq!(
        probe(closed.clone(), read_host.clone()).await,
        "error:NotFound"
    );
    assert_eq!(
        probe(closed, "read:/etc/hostname".into()).await,
        "error:NotFound"
    );

    let granted = load_with(
        &rt,
        "probe",
        &format!(
            "[publish]\nallow = [\"probe.out\"]\n[sandbox]\nenv = {{ REGION = \"eu\" }}\n\
             dirs = [{{ host = \"{}\", guest = \"/data\" }}]\n",
            dir.path().display()
        ),
    );
    assert_eq!(
        probe(granted.clone(), "env".into()).await,
        "env:[REGION=eu]"
    );
    assert_eq!(
        probe(granted.clone(), "read:/data/secret.txt".into()).await,
        "read:s3cr3t"
    );
    assert_eq!(probe(granted, read_host).await, "error:NotFound");
}

#[test]
fn a_second_runtime_loads_compiled_components_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..RuntimeConfig::default()
    };
    let first = Runtime::new(config.clone()).unwrap();
    load(&first, "uppercase");
    assert_eq!(first.cache_stats(), Some((0, 1)), "compiled once");
    let second = Runtime::new(config).unwrap();
    let plugin = load(&second, "uppercase");
    assert_eq!(second.cache_stats(), Some((1, 0)), "served from the cache");
    let outcome = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(handle(&plugin, &Message::new("x", "cached")))
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Success(vec![out("demo.out.uppercase", &[], "CACHED")])
    );
    assert_eq!(runtime().cache_stats(), None);
}

/// The counter's answer: how many messages its instance has handled.
async fn count(plugin: &Plugin) -> String {
    match handle(plugin, &Message::new("x", "")).await {
        Ok(Outcome::Success(outputs)) => String::from_utf8(outputs[0].payload.to_vec()).unwrap(),
        other => panic!("counter: {other:?}"),
    }
}

const POOLED: &str = "[publish]\nallow = [\"counter.out\"]\n[instance]\nisolation = \"pool\"\n";

#[tokio::test]
async fn a_fresh_instance_for_every_message_by_default() {
    let rt = runtime();
    let plugin = load_with(&rt, "counter", "[publish]\nallow = [\"counter.out\"]\n");
    for _ in 0..3 {
        assert_eq!(count(&plugin).await, "1");
    }
    let stats = plugin.pool_stats();
    assert_eq!((stats.warm, stats.fresh, stats.idle), (0, 3, 0));
}

#[tokio::test]
async fn a_pooled_instance_serves_max_invocations_messages_then_retires() {
    let rt = runtime();
    let plugin = load_with(&rt, "counter", &format!("{POOLED}max_invocations = 3\n"));
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(count(&plugin).await);
    }
    assert_eq!(seen, ["1", "2", "3", "1", "2", "3", "1"]);
    let stats = plugin.pool_stats();
    assert_eq!((stats.warm, stats.fresh, stats.idle), (4, 3, 1));
}

#[tokio::test]
async fn a_call_never_waits_for_a_pooled_instance_and_the_pool_keeps_at_most_pool_size() {
    let rt = runtime();
    let plugin = load_with(
        &rt,
        "slow",
        "[publish]\nallow = [\"slow.done\"]\n[instance]\nisolation = \"pool\"\npool_size = 2\n",
    );
    let nap = Message::new("x", "0.1");
    // Three calls at once, each sleeping: three fresh instances (none waits for another), of
    // which two are parked when they end; the third is dropped.
    let started = Instant::now();
    let answers = futures::future::join_all((0..3).map(|_| handle(&plugin, &nap))).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "{:?}: they ran at once",
        started.elapsed()
    );
    let stats = plugin.pool_stats();
    assert_eq!((stats.warm, stats.fresh, stats.idle), (0, 3, 2));
    handle(&plugin, &nap).await.unwrap();
    let stats = plugin.pool_stats();
    assert_eq!((stats.warm, stats.fresh, stats.idle), (1, 3, 2));
}

#[tokio::test]
async fn an_instance_idle_past_max_idle_is_dropped_not_taken() {
    let rt = runtime();
    let plugin = load_with(&rt, "counter", &format!("{POOLED}max_idle = \"100ms\"\n"));
    assert_eq!(count(&plugin).await, "1");
    assert_eq!(count(&plugin).await, "2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count(&plugin).await,
        "1",
        "a fresh instance after the idle time"
    );
}

#[tokio::test]
async fn a_new_version_never_serves_from_the_old_versions_pool() {
    let rt = runtime();
    let old = load_with(&rt, "counter", POOLED);
    assert_eq!(count(&old).await, "1");
    assert_eq!(count(&old).await, "2");
    let new = load_with(&rt, "counter", POOLED);
    assert_eq!(count(&new).await, "1");
    assert_eq!(
        count(&old).await,
        "3",
        "the old version's message keeps its own pool"
    );
    assert_eq!(count(&new).await, "2");
}

#[tokio::test]
async fn a_replaced_version_is_dropped_with_its_pooled_instances() {
    let rt = runtime();
    let old = load_with(&rt, "counter", POOLED);
    assert_eq!(count(&old).await, "1");
    assert_eq!(old.pool_stats().idle, 1);
    let gone = old.downgrade();
    drop(old);
    // A parked instance's store refers to its version: the pool must not keep it alive.
    assert!(gone.is_dropped());
}

#[tokio::test]
async fn a_pooled_instance_gets_its_whole_fuel_budget_for_every_message() {
    let rt = runtime();
    // About 7k fuel a call: without a reset, the budget would run out within a few calls.
    let plugin = load_with(&rt, "counter", &format!("{POOLED}[limits]\nfuel = 50000\n"));
    for n in 1..=20 {
        let outcome = handle(&plugin, &Message::new("x", "")).await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Success(vec![out("counter.out", &[], &n.to_string())])
        );
    }
}

#[tokio::test]
async fn an_instance_that_traps_or_hits_a_limit_is_never_parked() {
    let rt = runtime();
    // Running out of fuel is a trap. Calling a trapped instance again fails at its entry with
    // another error than OutOfFuel, so three OutOfFuel errors mean three fresh instances.
    let plugin = load_with(
        &rt,
        "spin",
        "[instance]\nisolation = \"pool\"\n[limits]\nfuel = 1000000\n",
    );
    for _ in 0..3 {
        let err = handle(&plugin, &Message::new("x", "")).await.unwrap_err();
        assert_eq!(
            err,
            HandlerError::OutOfFuel {
                plugin: "spin".into(),
                fuel: 1_000_000
            }
        );
    }
    let stats = plugin.pool_stats();
    assert_eq!((stats.warm, stats.fresh, stats.idle), (0, 3, 0));
    // A deadline hit and a refused output: not parked either.
    let slow = load_with(
        &rt,
        "slow",
        "[instance]\nisolation = \"pool\"\n[limits]\ndeadline = \"100ms\"\n",
    );
    for _ in 0..2 {
        let err = handle(&slow, &Message::new("x", "1")).await.unwrap_err();
        assert!(matches!(err, HandlerError::Deadline { .. }), "{err:?}");
    }
    assert_eq!(slow.pool_stats().idle, 0);
    let refused = load_with(&rt, "counter", "[instance]\nisolation = \"pool\"\n");
    for _ in 0..2 {
        let err = handle(&refused, &Message::new("x", "")).await.unwrap_err();
        assert!(matches!(err, HandlerError::Refused { .. }), "{err:?}");
    }
    let stats = refused.pool_stats();
    assert_eq!((stats.warm, stats.fresh, stats.idle), (0, 2, 0));
}

#[test]
fn the_old_reuse_setting_is_refused_with_a_hint() {
    let err = Manifest::parse("[instance]\nreuse = 3\n", Path::new("m.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("instance.reuse is gone") && err.contains("isolation = \"pool\""),
        "{err}"
    );
}

/// One message for the batch plugins; its payload says how it ends.
fn batch_input(payload: &str) -> Message {
    Message::new("batch.in", payload.to_owned())
}

/// What a batch answer is, in short: `OUT:PAYLOAD:SIZE`, `retry`, `reject`, or the error kind.
fn batch_answer(result: &Result<Outcome, HandlerError>) -> String {
    match result {
        Ok(Outcome::Success(outputs)) => {
            let [o] = outputs.as_slice() else {
                panic!("{outputs:?}")
            };
            assert_eq!(o.subject.as_deref(), Some("batch.out"));
            format!(
                "OUT:{}:{}",
                String::from_utf8_lossy(&o.payload),
                o.headers.get("batch-size").unwrap_or("-")
            )
        }
        Ok(Outcome::Retry { delay, .. }) => {
            assert_eq!(*delay, Some(Duration::from_millis(50)));
            "retry".into()
        }
        Ok(Outcome::Reject { reason }) => {
            assert_eq!(reason, "asked to");
            "reject".into()
        }
        Err(e) => e.kind().to_owned(),
    }
}

const BATCH: &str = "[publish]\nallow = [\"batch.out\"]\n[batch]\nmax = 4\nmax_wait = \"200ms\"\n";

#[tokio::test]
async fn a_batch_answers_each_input_on_its_own_in_every_language() {
    let rt = cached_runtime();
    for name in ["batch", "batch-py", "batch-js"] {
        let plugin = load_with(&rt, name, BATCH);
        assert!(plugin.exports_batch(), "{name}");
        let inputs = ["a", "retry", "b", "reject", "c", "d"].map(batch_input);
        // All six at once: a full batch of 4 starts at once, the other 2 after max_wait.
        let answers: Vec<String> =
            futures::future::join_all(inputs.iter().map(|m| handle(&plugin, m)))
                .await
                .iter()
                .map(batch_answer)
                .collect();
        assert_eq!(
            answers,
            [
                "OUT:A:4", "retry", "OUT:B:4", "reject", "OUT:C:2", "OUT:D:2"
            ],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_crash_in_a_batch_fails_only_its_own_input() {
    let rt = cached_runtime();
    for name in ["batch", "batch-py", "batch-js"] {
        let plugin = load_with(&rt, name, BATCH);
        let inputs = ["a", "crash", "reject", "b"].map(batch_input);
        let answers: Vec<String> =
            futures::future::join_all(inputs.iter().map(|m| handle(&plugin, m)))
                .await
                .iter()
                .map(batch_answer)
                .collect();
        // The batch call trapped; each input then ran alone, in a batch of one.
        assert_eq!(answers, ["OUT:A:1", "panic", "reject", "OUT:B:1"], "{name}");
    }
}

#[tokio::test]
async fn a_per_message_handler_runs_in_batches_too() {
    let rt = cached_runtime();
    for name in ["uppercase", "uppercase-py", "uppercase-js"] {
        let plugin = load_with(
            &rt,
            name,
            "[publish]\nallow = [\"demo.out.>\"]\n[config]\noutput = \"demo.out.x\"\n\
             [batch]\nmax = 3\nmax_wait = \"200ms\"\n",
        );
        let inputs = ["x", "y", "z"].map(|p| Message::new("in", p));
        let started = Instant::now();
        let answers = futures::future::join_all(inputs.iter().map(|m| handle(&plugin, m))).await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{name}: a full batch does not wait"
        );
        for (answer, want) in answers.into_iter().zip(["X", "Y", "Z"]) {
            assert_eq!(
                answer.unwrap(),
                Outcome::Success(vec![out("demo.out.x", &[], want)]),
                "{name}"
            );
        }
    }
}

#[tokio::test]
async fn every_answer_of_a_batch_passes_the_same_checks_as_a_single_one() {
    let rt = runtime();
    // The probe is a per-message handler: the SDK runs it on each input of the batch call.
    let plugin = load_with(
        &rt,
        "probe",
        "[publish]\nallow = [\">\"]\n[batch]\nmax = 7\nmax_wait = \"500ms\"\n",
    );
    let payloads = [
        "to:$JS.API.STREAM.DELETE.ORDERS",
        "to:natsplug.control.h1.list",
        "to:a b",
        "header:Nats-Rollup=all",
        "header:bad name=x",
        "publish:1:10",
        "to:out.ok",
    ];
    let inputs = payloads.map(|p| Message::new("p", p));
    let answers: Vec<String> = futures::future::join_all(inputs.iter().map(|m| handle(&plugin, m)))
        .await
        .into_iter()
        .map(|answer| match answer {
            Ok(Outcome::Success(outputs)) => {
                format!("OUT:{}", outputs[0].subject.as_deref().unwrap())
            }
            Ok(Outcome::Reject { reason }) => format!("reject:{reason}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => e.kind().to_owned(),
        })
        .collect();
    assert_eq!(
        answers,
        [
            "reserved-subject",
            "reserved-subject",
            "invalid-subject",
            "forbidden-header",
            "invalid-header",
            // `publish` is refused inside a batch call; the probe rejects on a refusal.
            "reject:publish 0 refused: publish is not available in handle-batch: return each \
             input's outputs in its result",
            "OUT:out.ok",
        ]
    );
}

#[tokio::test]
async fn a_batch_manifest_needs_a_component_that_exports_handle_batch() {
    let rt = runtime();
    let err = rt
        .load(
            "plain",
            b"\0asm\x0d\0\x01\0", // (component), as bytes: no text format in the host
            Manifest::parse(BATCH, Path::new("m.toml")).unwrap(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("exports no handle-batch"), "{err}");
}

/// The probe's answer to `payload` (the payload of its one output).
async fn probe(plugin: &Plugin, payload: &str) -> String {
    match handle(plugin, &Message::new("p", payload.to_owned())).await {
        Ok(Outcome::Success(outputs)) => String::from_utf8(outputs[0].payload.to_vec()).unwrap(),
        other => panic!("{payload}: {other:?}"),
    }
}

#[tokio::test]
async fn the_sandbox_refuses_writes_sockets_and_env_that_were_not_granted() {
    let read_only = tempfile::tempdir().unwrap();
    let writable = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rt = runtime();
    let manifest = |network: bool| {
        format!(
            "[publish]\nallow = [\"probe.out\"]\n[sandbox]\nnetwork = {network}\n\
             env = {{ REGION = \"eu\" }}\ndirs = [{{ host = \"{}\", guest = \"/ro\" }}, \
             {{ host = \"{}\", guest = \"/rw\", writable = true }}]\n",
            read_only.path().display(),
            writable.path().display()
        )
    };
    let closed = load_with(&rt, "probe", &manifest(false));

    assert_eq!(
        probe(&closed, "write:/ro/new.txt").await,
        "error:PermissionDenied"
    );
    assert!(!read_only.path().join("new.txt").exists());
    assert_eq!(probe(&closed, "write:/rw/new.txt").await, "wrote");
    assert_eq!(
        std::fs::read_to_string(writable.path().join("new.txt")).unwrap(),
        "written by probe"
    );
    assert_eq!(
        probe(&closed, "write:/elsewhere.txt").await,
        "error:NotFound"
    );

    let connect = format!("connect:127.0.0.1:{port}");
    assert_eq!(probe(&closed, &connect).await, "error:PermissionDenied");
    let open = load_with(&rt, "probe", &manifest(true));
    assert_eq!(probe(&open, &connect).await, "connected");

    assert_eq!(probe(&closed, "getenv:HOME").await, "error:NotPresent");
    assert_eq!(probe(&closed, "getenv:PATH").await, "error:NotPresent");
    assert_eq!(probe(&closed, "getenv:REGION").await, "env:eu");
}

#[tokio::test]
async fn outputs_to_reserved_space_need_a_grant_that_names_it() {
    let rt = runtime();
    let wide = load_with(&rt, "probe", "[publish]\nallow = [\">\", \"*.>\"]\n");
    for reserved in [
        "$JS.API.STREAM.DELETE.IN",
        "$KV.orders.k",
        "$SYS.REQ.SERVER.PING",
        "natsplug.control.h1.reload",
        "_INBOX.natsplug.x.1",
    ] {
        let err = handle(&wide, &Message::new("p", format!("to:{reserved}")))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "reserved-subject", "{reserved}: {err}");
    }
    let err = handle(&wide, &Message::new("p", "to:out.*"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "wildcard-subject");
    let named = load_with(&rt, "probe", "[publish]\nallow = [\"$KV.orders.>\"]\n");
    let outcome = handle(&named, &Message::new("p", "to:$KV.orders.k"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Success(vec![out("$KV.orders.k", &[], "to")])
    );
}

#[tokio::test]
async fn output_bytes_are_bounded_per_message_and_for_the_host() {
    let rt = runtime();
    let plugin = load_with(
        &rt,
        "probe",
        "[publish]\nallow = [\"probe.out\"]\n[limits]\noutput_bytes = \"1MiB\"\n",
    );
    // 600 kB fits; a second one crosses the budget, and the guest cannot go on past it.
    let one = handle(&plugin, &Message::new("p", "publish:1:600000"))
        .await
        .unwrap();
    assert!(matches!(one, Outcome::Success(ref o) if o.len() == 2));
    let err = handle(&plugin, &Message::new("p", "publish:2:600000"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        HandlerError::Refused {
            plugin: "probe".into(),
            denied: Denied::OutputLimit { limit: 1 << 20 }
        }
    );

    // One output far past the budget is refused while wasmtime copies it out of the guest
    // (its hostcall fuel is tied to the budget), before the host holds it.
    let err = handle(&plugin, &Message::new("p", "publish:1:4000000"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "output-limit", "{err}");

    // The host's pool, shared by every message in flight: held until the caller lets go.
    let small = Runtime::new(RuntimeConfig {
        max_output_bytes: 1_000_000,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = small
        .load_file(
            &plugin_path("probe"),
            Some(Manifest::parse("[publish]\nallow = [\"probe.out\"]\n", Path::new("m")).unwrap()),
        )
        .unwrap();
    let first = plugin
        .handle_metered(&Message::new("p", "publish:1:600000"), Hooks::default())
        .await;
    assert!(first.result.is_ok());
    assert!(first.held.bytes() > 600_000);
    let second = plugin
        .handle_metered(&Message::new("p", "publish:1:600000"), Hooks::default())
        .await;
    assert_eq!(
        second.result.unwrap_err(),
        HandlerError::OutputPoolFull {
            plugin: "probe".into(),
            limit: 1_000_000
        }
    );
    drop(first);
    let third = plugin
        .handle_metered(&Message::new("p", "publish:1:600000"), Hooks::default())
        .await;
    assert!(third.result.is_ok(), "released: {:?}", third.result);
}

#[tokio::test]
async fn headers_are_checked_before_anything_is_kept() {
    let rt = runtime();
    let plugin = load(&rt, "probe");
    for (payload, kind) in [
        ("header:Nats-Rollup=all", "forbidden-header"),
        ("header:Nats-TTL=1s", "forbidden-header"),
        ("header:a b=v", "invalid-header"),
        ("header:a:b=v", "invalid-header"),
        ("header:\u{e9}=v", "invalid-header"),
        ("header:ok=a\nb", "invalid-header"),
        ("header:=v", "invalid-header"),
    ] {
        let err = handle(&plugin, &Message::new("p", payload))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{payload:?}: {err}");
    }
    let granted = load_with(
        &rt,
        "probe",
        "[publish]\nallow = [\"probe.out\"]\nheaders = [\"Nats-TTL\"]\n",
    );
    let outcome = handle(&granted, &Message::new("p", "header:Nats-TTL=1s"))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Success(vec![out("probe.out", &[("Nats-TTL", "1s")], "header")])
    );
    let copied = handle(&plugin, &Message::new("p", "header:Nats-Msg-Id=x"))
        .await
        .unwrap();
    assert_eq!(
        copied,
        Outcome::Success(vec![out("probe.out", &[], "header")])
    );
}

/// A fixed amount of work, not a wall time: three seconds of computing gave 8.4 billion units
/// on a loaded CI machine and more than 10 on a quiet one.
#[tokio::test]
async fn a_handler_computing_past_the_old_fuel_budget_runs_to_completion_under_the_default_limits()
{
    let rt = runtime();
    let plugin = load_with(&rt, "probe", "[publish]\nallow = [\"probe.out\"]\n");
    let handled = plugin
        .handle_metered(&Message::new("p", "rounds:200000"), Hooks::default())
        .await;
    match handled.result {
        Ok(Outcome::Success(outputs)) => {
            assert_eq!(outputs[0].payload, "computed 200000 rounds");
        }
        other => panic!("{other:?}"),
    }
    // The old default budget, 10,000,000,000 units, would have stopped it part-way.
    assert!(handled.fuel > 10_000_000_000, "{} units", handled.fuel);
}
