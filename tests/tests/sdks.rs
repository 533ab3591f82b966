//! The Python and JavaScript guest SDKs inside real components: the sdk-check plugins
//! (plugins/python/sdk-check, plugins/js/sdk-check) run one SDK feature per message, named by
//! the message's `check` header, and every test asserts the exact outcome in both languages
//! through `natsplug::runtime`: outputs (subjects, payloads, headers), a retry and its delay, a
//! reject and its reason, log lines and heartbeats reaching the host, refused capabilities, and
//! an uncaught exception as the runtime's panic, after which the plugin handles the next message.
//! The SDKs' own unit tests (guest-sdk/*/tests) run on stand-in bindings; these prove the real
//! ones. Components compile through the compile cache the language tests share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use natsplug::manifest::Manifest;
use natsplug::message::{Delivery, Headers, Message, Output};
use natsplug::runtime::{HandlerError, Hooks, Outcome, Plugin, Runtime};
use natsplug_tests::{cached_runtime, plugin_path};
use tracing::instrument::WithSubscriber;
use tracing_subscriber::layer::SubscriberExt;

/// What differs between the two SDKs' answers; everything else is the same in both.
struct Lang {
    /// The built component, `sdk-check-py` or `sdk-check-js`.
    plugin: &'static str,
    /// The `echoed-by` header the echo check adds.
    echoed_by: &'static str,
    /// The reject reason of `msg.text()` on the payload `ff fe 41`.
    invalid_utf8: &'static str,
    /// The reject reason of the check `nope` (the language's own quoting: `repr`, JSON).
    unknown_check: &'static str,
    /// The panic message of the uncaught exception `crash boom`.
    crash: &'static str,
    /// The `denied` check's lines: the typed errors of an ungranted request, bucket, publish.
    denied: [&'static str; 3],
}

const PYTHON: Lang = Lang {
    plugin: "sdk-check-py",
    echoed_by: "python",
    invalid_utf8: "payload is not UTF-8: invalid start byte at byte 0",
    unknown_check: "unknown check 'nope'",
    crash: "RuntimeError: boom",
    denied: [
        "request RequestDenied",
        "kv AccessDenied",
        "publish PublishError",
    ],
};

const JAVASCRIPT: Lang = Lang {
    plugin: "sdk-check-js",
    echoed_by: "js",
    invalid_utf8: "payload is not UTF-8: TextDecoder.decode: Decoding failed.",
    unknown_check: r#"unknown check "nope""#,
    crash: "Error: boom",
    denied: ["request denied", "kv access-denied", "publish PublishError"],
};

const LANGS: [Lang; 2] = [PYTHON, JAVASCRIPT];

/// The plugin with its own manifest (sdk-check.toml, copied beside the component), plus `extra`
/// TOML appended to it.
fn load(rt: &Runtime, lang: &Lang, extra: &str) -> Plugin {
    let path = plugin_path(lang.plugin);
    let own = std::fs::read_to_string(path.with_extension("toml")).unwrap();
    let manifest = Manifest::parse(&format!("{own}\n{extra}"), &path.with_extension("toml"))
        .unwrap_or_else(|e| panic!("{}: {e}", lang.plugin));
    rt.load_file(&path, Some(manifest))
        .unwrap_or_else(|e| panic!("{}: {e}", lang.plugin))
}

/// A message for the check `check`, with this payload.
fn check(check: &str, payload: impl Into<bytes::Bytes>) -> Message {
    let mut message = Message::new("sdk.check", payload);
    message.headers.append("check", check);
    message
}

fn output(subject: &str, payload: &str, headers: &[(&str, &str)]) -> Output {
    Output {
        subject: Some(subject.to_owned()),
        headers: Headers(
            headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        payload: payload.to_owned().into(),
    }
}

fn reject(reason: &str) -> Result<Outcome, HandlerError> {
    Ok(Outcome::Reject {
        reason: reason.to_owned(),
    })
}

/// Runs `test` on each language's plugin, loaded with `extra` appended to its manifest.
async fn each_language(extra: &str, test: impl AsyncFn(&Lang, &Plugin)) {
    let rt = cached_runtime();
    for lang in &LANGS {
        let plugin = load(&rt, lang, extra);
        test(lang, &plugin).await;
    }
}

async fn handle(plugin: &Plugin, message: &Message) -> Result<Outcome, HandlerError> {
    plugin.handle(message, Hooks::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_returns_the_text_with_the_input_headers_and_one_added() {
    each_language("", async |lang, plugin| {
        let mut message = check("echo", "héllo ✓");
        message.headers.append("trace", "1");
        message.headers.append("trace", "2");
        let expected = output(
            "sdk.check.out",
            "héllo ✓",
            &[
                ("check", "echo"),
                ("trace", "1"),
                ("trace", "2"),
                ("echoed-by", lang.echoed_by),
            ],
        );
        assert_eq!(
            handle(plugin, &message).await,
            Ok(Outcome::Success(vec![expected])),
            "{}",
            lang.plugin
        );
        // An empty payload is empty text.
        let expected = output(
            "sdk.check.out",
            "",
            &[("check", "echo"), ("echoed-by", lang.echoed_by)],
        );
        assert_eq!(
            handle(plugin, &check("echo", "")).await,
            Ok(Outcome::Success(vec![expected])),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_of_invalid_utf8_rejects_in_each_languages_words() {
    each_language("", async |lang, plugin| {
        let message = check("echo", vec![0xff, 0xfe, 0x41]);
        assert_eq!(
            handle(plugin, &message).await,
            reject(lang.invalid_utf8),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_shows_its_subject_reply_delivery_count_and_every_header_value() {
    each_language("", async |lang, plugin| {
        let mut message = check("meta", "12345");
        message.subject = "sdk.check.py.meta".into();
        message.reply = Some("_INBOX.r1".into());
        message.headers.append("trace", "a");
        message.headers.append("other", "x");
        message.headers.append("trace", "b");
        message.delivery = Some(Delivery {
            stream: "S".into(),
            consumer: "c".into(),
            stream_sequence: 7,
            consumer_sequence: 9,
            delivered: 3,
            pending: 0,
            timestamp_ns: 1,
        });
        let expected = output(
            "sdk.check.out",
            "",
            &[
                ("subject", "sdk.check.py.meta"),
                ("reply", "_INBOX.r1"),
                ("delivered", "3"),
                ("traces", "a,b"),
                ("bytes", "5"),
            ],
        );
        assert_eq!(
            handle(plugin, &message).await,
            Ok(Outcome::Success(vec![expected])),
            "{}",
            lang.plugin
        );
        // Core NATS: no reply, delivered once, no trace.
        let expected = output(
            "sdk.check.out",
            "",
            &[
                ("subject", "sdk.check"),
                ("delivered", "1"),
                ("traces", ""),
                ("bytes", "0"),
            ],
        );
        assert_eq!(
            handle(plugin, &check("meta", "")).await,
            Ok(Outcome::Success(vec![expected])),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reads_the_manifest_and_falls_back_to_the_default() {
    each_language("", async |lang, plugin| {
        for (key, value) in [
            ("greeting", "hello from the manifest"),
            ("missing", "<unset>"),
        ] {
            assert_eq!(
                handle(plugin, &check("config", key)).await,
                Ok(Outcome::Success(vec![output("sdk.check.out", value, &[])])),
                "{} {key}",
                lang.plugin
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_answers_the_request_and_rejects_without_a_reply_subject() {
    each_language("", async |lang, plugin| {
        let mut request = check("reply", vec![0u8, 1, 2, 0xff]);
        request.reply = Some("_INBOX.q".into());
        let answer = Output {
            subject: None,
            headers: Headers::default(),
            payload: vec![0u8, 1, 2, 0xff].into(),
        };
        assert_eq!(
            handle(plugin, &request).await,
            Ok(Outcome::Success(vec![answer])),
            "{}",
            lang.plugin
        );
        assert_eq!(
            handle(plugin, &check("reply", "x")).await,
            reject("no reply subject to answer"),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_carries_its_delay_or_none_for_the_backoff() {
    each_language("", async |lang, plugin| {
        assert_eq!(
            handle(plugin, &check("retry", "250")).await,
            Ok(Outcome::Retry {
                reason: "asked to retry in 250 ms".into(),
                delay: Some(Duration::from_millis(250)),
            }),
            "{}",
            lang.plugin
        );
        assert_eq!(
            handle(plugin, &check("retry-backoff", "")).await,
            Ok(Outcome::Retry {
                reason: "asked to retry on the backoff".into(),
                delay: None,
            }),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_carries_its_reason_and_an_unknown_check_rejects() {
    each_language("", async |lang, plugin| {
        assert_eq!(
            handle(plugin, &check("reject", "bad input: ✗")).await,
            reject("bad input: ✗"),
            "{}",
            lang.plugin
        );
        assert_eq!(
            handle(plugin, &check("nope", "")).await,
            reject(lang.unknown_check),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_outputs_come_back_in_order_after_the_published_one() {
    each_language("", async |lang, plugin| {
        let expected = vec![
            output("sdk.check.out.published", "published", &[]),
            output("sdk.check.out.1", "1", &[]),
            output("sdk.check.out.2", "2", &[]),
            output("sdk.check.out.3", "3", &[]),
        ];
        assert_eq!(
            handle(plugin, &check("many", "3")).await,
            Ok(Outcome::Success(expected)),
            "{}",
            lang.plugin
        );
        // No outputs returned: the published one alone.
        assert_eq!(
            handle(plugin, &check("many", "0")).await,
            Ok(Outcome::Success(vec![output(
                "sdk.check.out.published",
                "published",
                &[]
            )])),
            "{}",
            lang.plugin
        );
    })
    .await;
}

/// The guest's `log` lines the host logs (target `natsplug::guest`, not its stderr): level and
/// message.
#[derive(Clone, Default)]
struct GuestLogs(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl GuestLogs {
    fn take(&self) -> Vec<(tracing::Level, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for GuestLogs {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        #[derive(Default)]
        struct Fields {
            message: String,
            stderr: bool,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.message = format!("{value:?}"),
                    "stream" => self.stderr = true,
                    _ => {}
                }
            }
        }
        if event.metadata().target() != "natsplug::guest" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if !fields.stderr {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((*event.metadata().level(), fields.message));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_reach_the_host_log_at_their_level() {
    each_language("", async |lang, plugin| {
        let logs = GuestLogs::default();
        let subscriber = tracing_subscriber::registry().with(logs.clone());
        let outcome = handle(plugin, &check("log", "checking ✓"))
            .with_subscriber(subscriber)
            .await;
        assert_eq!(outcome, Ok(Outcome::Success(vec![])), "{}", lang.plugin);
        assert_eq!(
            logs.take(),
            vec![
                (tracing::Level::INFO, "checking ✓".to_owned()),
                (tracing::Level::WARN, "checking ✓, warned".to_owned()),
            ],
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_calls_the_hosts_heartbeat_each_time() {
    each_language("", async |lang, plugin| {
        let beats = Arc::new(AtomicUsize::new(0));
        let counter = beats.clone();
        let hooks = Hooks {
            in_progress: Some(Arc::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            })),
        };
        let outcome = plugin.handle(&check("progress", ""), hooks).await;
        assert_eq!(outcome, Ok(Outcome::Success(vec![])), "{}", lang.plugin);
        assert_eq!(beats.load(Ordering::SeqCst), 2, "{}", lang.plugin);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_capabilities_raise_the_sdks_typed_errors_and_the_handler_goes_on() {
    each_language("", async |lang, plugin| {
        let expected = lang
            .denied
            .iter()
            .map(|line| output("sdk.check.out", line, &[]))
            .collect();
        assert_eq!(
            handle(plugin, &check("denied", "")).await,
            Ok(Outcome::Success(expected)),
            "{}",
            lang.plugin
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_waits_inside_the_component_then_answers() {
    each_language("", async |lang, plugin| {
        let started = Instant::now();
        assert_eq!(
            handle(plugin, &check("sleep", "200")).await,
            Ok(Outcome::Success(vec![output(
                "sdk.check.out",
                "slept",
                &[]
            )])),
            "{}",
            lang.plugin
        );
        let slept = started.elapsed();
        assert!(
            slept >= Duration::from_millis(200),
            "{}: {slept:?}",
            lang.plugin
        );
    })
    .await;
}

/// An uncaught exception and `Panic` are the runtime's panic, with the SDK's message; the next
/// message on the same plugin is handled normally, on a fresh instance and from a pool alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_is_a_panic_and_the_next_message_is_handled() {
    for extra in ["", "[instance]\nisolation = \"pool\"\n"] {
        each_language(extra, async |lang, plugin| {
            let panic = |message: &str| {
                Err(HandlerError::Panic {
                    plugin: lang.plugin.to_owned(),
                    message: message.to_owned(),
                })
            };
            let echo = |text: &str| {
                Ok(Outcome::Success(vec![output(
                    "sdk.check.out",
                    text,
                    &[("check", "echo"), ("echoed-by", lang.echoed_by)],
                )]))
            };
            assert_eq!(
                handle(plugin, &check("echo", "before")).await,
                echo("before")
            );
            assert_eq!(
                handle(plugin, &check("crash", "boom")).await,
                panic(lang.crash),
                "{} {extra}",
                lang.plugin
            );
            assert_eq!(handle(plugin, &check("echo", "after")).await, echo("after"));
            assert_eq!(
                handle(plugin, &check("panic", "exactly this")).await,
                panic("exactly this"),
                "{} {extra}",
                lang.plugin
            );
            assert_eq!(
                handle(plugin, &check("echo", "again")).await,
                echo("again"),
                "{} {extra}",
                lang.plugin
            );
        })
        .await;
    }
}
