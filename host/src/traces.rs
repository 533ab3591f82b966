//! Traces: the W3C trace context through a message, and one span per handled message exported
//! over OTLP/HTTP.
//!
//! The trace context (`traceparent`, `tracestate`) is read and written by OpenTelemetry's
//! [`TraceContextPropagator`]; an output always gets it in the propagator's canonical form,
//! never an input's bytes. Without an exporter (`tracing.otlp_endpoint` unset) no span is made:
//! an input's trace context goes on to every output the handler gave none, so a trace still
//! follows a message through a chain of plugins. With one, each handled message is a span
//! `natsplug.handle` (kind consumer) whose parent is the input's trace context (a new trace when
//! it has none, or a malformed one); it carries the plugin, the subject, the stream, the
//! sequence, the delivery count and the outcome, with an error status when the message was not
//! handled; and every output's `traceparent` names this span as its parent.
//!
//! The SDK batches spans on a thread of its own (every 5 s, or `OTEL_BSP_SCHEDULE_DELAY`) and
//! posts them as OTLP protobuf through [`Post`]: `opentelemetry-http`'s hyper client, each
//! request run on the host's runtime; plain `http://` only, to a collector or agent nearby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::TracingConfig;
use crate::delivery::settle::Settled;
use crate::message::{Headers, Message, Output};

/// The W3C trace context headers: the parent span, and the vendors' own state.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The name of every message's span.
pub const SPAN_NAME: &str = "natsplug.handle";
/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The host's trace exporter, or none. Cheap to clone; every worker holds one.
#[derive(Clone, Default)]
pub struct Traces {
    exporter: Option<Arc<Exporter>>,
}

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Traces {
    /// The exporter `config` asks for, or none when it names no endpoint. Runs inside the
    /// host's runtime: export requests are spawned on it.
    pub fn start(config: &TracingConfig) -> anyhow::Result<Self> {
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(Self::default());
        };
        let url = traces_url(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(Post {
                client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
                runtime: tokio::runtime::Handle::current(),
                url: url.clone(),
                failing: Arc::default(),
            })
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the OTLP exporter for {url:?}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("natsplug")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        tracing::info!(
            endpoint = %url,
            service = %config.service_name,
            "exporting traces over OTLP/HTTP"
        );
        Ok(Self {
            exporter: Some(Arc::new(Exporter { provider, tracer })),
        })
    }

    /// Starts the span of `input`, handled by `plugin`. Without an exporter it costs nothing.
    pub fn message(&self, plugin: &str, input: &Message) -> MessageSpan {
        let Some(exporter) = &self.exporter else {
            return MessageSpan { span: None };
        };
        let parent = trace_context(&input.headers);
        let mut attributes = vec![
            KeyValue::new("plugin", plugin.to_owned()),
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("messaging.destination.name", input.subject.clone()),
        ];
        if let Some(d) = &input.delivery {
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            attributes.extend([
                KeyValue::new("stream", d.stream.clone()),
                KeyValue::new("sequence", int(d.stream_sequence)),
                KeyValue::new("delivered", int(d.delivered)),
            ]);
        }
        let span = exporter
            .tracer
            .span_builder(SPAN_NAME)
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&exporter.tracer, &parent);
        let context = span.span_context().clone();
        MessageSpan {
            span: Some((span, context)),
        }
    }

    /// Exports what is left and stops the exporter. Call it once, at the end, while the
    /// runtime still runs (the export requests need it).
    pub async fn shutdown(self) {
        let Some(exporter) = self.exporter else {
            return;
        };
        // Blocking: it waits for the SDK's thread, whose requests run on this runtime.
        let stopped = tokio::task::spawn_blocking(move || exporter.provider.shutdown()).await;
        match stopped {
            Ok(Ok(())) => tracing::debug!("trace exporter stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the trace exporter did not stop cleanly"),
            Err(e) => tracing::warn!(error = %e, "the trace exporter's shutdown failed"),
        }
    }
}

/// The span of one message, from before its handler runs until it is settled. Without an
/// exporter it is empty.
pub struct MessageSpan {
    /// The span, and its context: the parent its outputs name.
    span: Option<(opentelemetry_sdk::trace::Span, SpanContext)>,
}

impl MessageSpan {
    /// Sets the trace context of the outputs of `input`: this span as their parent, replacing
    /// what the handler set (usually a copy of the input's); without an exporter, the input's
    /// own (when it has a valid one) on every output the handler gave no `traceparent`.
    pub fn stamp(&self, input: &Message, outputs: &mut [Output]) {
        let (context, replace) = match &self.span {
            Some((_, own)) => (Context::new().with_remote_span_context(own.clone()), true),
            None => (trace_context(&input.headers), false),
        };
        if !context.span().span_context().is_valid() {
            return;
        }
        let propagator = TraceContextPropagator::new();
        for headers in outputs.iter_mut().map(|o| &mut o.headers) {
            if !replace && headers.get(TRACEPARENT).is_some() {
                continue;
            }
            headers
                .0
                .retain(|(name, _)| name != TRACEPARENT && name != TRACESTATE);
            propagator.inject_context(&context, &mut OutputHeaders(headers));
        }
    }

    /// Ends the span with what became of the message: its `outcome`, and for a failure an
    /// error status with the reason and `error.type` with the kind.
    pub fn end(self, settled: &Settled) {
        let Some((mut span, _)) = self.span else {
            return;
        };
        span.set_attribute(KeyValue::new("outcome", settled.name()));
        if let Some((kind, reason)) = settled.failure() {
            span.set_attribute(KeyValue::new("error.type", kind.to_owned()));
            span.set_status(Status::error(reason.to_owned()));
        }
        span.end();
    }
}

/// The OTLP/HTTP traces URL of a collector: `/v1/traces` appended to `endpoint` unless it ends
/// with it already.
fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let base = endpoint.trim_end_matches('/');
    let url = if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("tracing.otlp_endpoint {endpoint:?} is not a URL: {e}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.host().is_some_and(|h| !h.is_empty()),
        "tracing.otlp_endpoint {endpoint:?} is not an http:// URL (TLS is not supported: \
         send to a collector nearby)"
    );
    Ok(url)
}

/// The trace context `headers` carry, as a remote parent; an empty context when they carry
/// none, or a malformed one.
fn trace_context(headers: &Headers) -> Context {
    TraceContextPropagator::new().extract_with_context(&Context::new(), &InputHeaders(headers))
}

/// An input's headers, read by the propagator. A `tracestate` with a byte outside W3C's
/// printable ASCII (0x20-0x7e) is not shown to it: opentelemetry 0.33's `TraceState` checks a
/// value for `,` and `=` only, so it would carry CR, LF or any other byte of anyone's input
/// onto every output (a header the protocol cannot carry: the output would be refused).
struct InputHeaders<'a>(&'a Headers);

impl Extractor for InputHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .filter(|value| key != TRACESTATE || value.bytes().all(|b| (0x20..=0x7e).contains(&b)))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// An output's headers, written by the propagator; an empty `tracestate` is left out.
struct OutputHeaders<'a>(&'a mut Headers);

impl Injector for OutputHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key, value);
        }
    }
}

/// The exporter's HTTP client: `opentelemetry-http`'s hyper client (its own timeout, a bounded
/// answer), each request run on the host's runtime. The SDK calls it from its own thread, which
/// has no runtime; that thread only waits for the task. A failing collector is logged once
/// (WARN), and again when it answers (INFO).
#[derive(Debug)]
struct Post {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
    url: String,
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl HttpClient for Post {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let result = self
            .runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .unwrap_or_else(|e| Err(e.into()));
        let failure = match &result {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("the collector answered {}", response.status())),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!(endpoint = %self.url, "trace export works again");
            }
            None => {}
            Some(error) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                    endpoint = %self.url,
                    %error,
                    "cannot export traces; spans are dropped until the collector answers"
                );
            }
            Some(_) => {}
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Headers;
    use proptest::prelude::*;

    const INPUT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const STATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

    /// The headers of `outputs` empty outputs after `stamp` without an exporter, for an input
    /// with these headers.
    fn stamped(input_headers: &[(&str, &str)], outputs: Vec<Headers>) -> Vec<Headers> {
        let traces = Traces::start(&TracingConfig::default()).unwrap();
        let mut input = Message::new("in", "x");
        for (name, value) in input_headers {
            input.headers.append(*name, *value);
        }
        let span = traces.message("p", &input);
        let mut outputs: Vec<Output> = outputs
            .into_iter()
            .map(|headers| Output {
                subject: Some("out".into()),
                headers,
                payload: Bytes::new(),
            })
            .collect();
        span.stamp(&input, &mut outputs);
        span.end(&Settled::Acked);
        outputs.into_iter().map(|o| o.headers).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
        )
    }

    #[test]
    fn without_an_exporter_the_input_trace_context_goes_on() {
        // A handler's own traceparent is kept (and gets no tracestate of the input's); a
        // tracestate the handler set alone gives way to the input's trace context.
        let own = "00-11111111111111111111111111111111-2222222222222222-01";
        let outputs = stamped(
            &[(TRACEPARENT, INPUT), (TRACESTATE, STATE)],
            vec![
                headers(&[("k", "v")]),
                headers(&[(TRACEPARENT, own)]),
                headers(&[(TRACESTATE, "mine=1")]),
            ],
        );
        let inherited = headers(&[(TRACEPARENT, INPUT), (TRACESTATE, STATE)]);
        assert_eq!(
            outputs,
            [
                headers(&[("k", "v"), (TRACEPARENT, INPUT), (TRACESTATE, STATE)]),
                headers(&[(TRACEPARENT, own)]),
                inherited,
            ]
        );
        // No tracestate on the input: none on the outputs (not an empty one).
        let outputs = stamped(&[(TRACEPARENT, INPUT)], vec![Headers::default()]);
        assert_eq!(outputs, [headers(&[(TRACEPARENT, INPUT)])]);
    }

    #[test]
    fn outputs_get_the_canonical_form_of_what_the_propagator_accepts() {
        let canonical = |traceparent: &str| {
            let outputs = stamped(&[(TRACEPARENT, traceparent)], vec![Headers::default()]);
            outputs[0].get(TRACEPARENT).map(str::to_owned)
        };
        // Unsampled stays unsampled.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(canonical(unsampled).as_deref(), Some(unsampled));
        // A later version with an extra field, flags beyond "sampled": version 00, sampled.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra";
        assert_eq!(canonical(later).as_deref(), Some(INPUT));
        // The propagator reads ids as numbers: a 31-digit trace id is that number, written
        // back in 32 digits. Lenient on input, never on output.
        let short = "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01";
        assert_eq!(
            canonical(short).as_deref(),
            Some("00-04bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01")
        );
    }

    #[test]
    fn a_malformed_trace_context_reaches_no_output() {
        for text in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nNats-Msg-Id: x",
        ] {
            let outputs = stamped(
                &[(TRACEPARENT, text), (TRACESTATE, STATE)],
                vec![headers(&[("k", "v")])],
            );
            assert_eq!(outputs, [headers(&[("k", "v")])], "{text:?}");
        }
        // A valid parent with a tracestate that is refused (bytes the protocol cannot carry,
        // by natsplug; a malformed list, by the propagator): the parent goes on alone.
        for state in [
            "a=b\r\nNats-Msg-Id: x",
            "a=\u{7f}",
            "caf\u{e9}=1",
            "no-equals",
            "k=v=w",
        ] {
            let outputs = stamped(
                &[(TRACEPARENT, INPUT), (TRACESTATE, state)],
                vec![Headers::default()],
            );
            assert_eq!(outputs, [headers(&[(TRACEPARENT, INPUT)])], "{state:?}");
        }
    }

    proptest! {
        /// Whatever an input's trace headers hold, nothing panics and an output carries either
        /// no trace context or a canonical `traceparent` and a `tracestate` of printable ASCII
        /// (nothing the NATS protocol cannot carry, no second header smuggled in).
        #[test]
        fn any_input_trace_context_gives_a_canonical_one_or_none(
            traceparent in prop_oneof![
                any::<String>(),
                "[0-9a-fA-F+-]{0,70}",
                Just(INPUT.to_owned()),
            ],
            state in prop_oneof![any::<String>(), "[a-z0-9=,@*/ _-]{0,80}"],
        ) {
            let outputs = stamped(
                &[(TRACEPARENT, &traceparent), (TRACESTATE, &state)],
                vec![Headers::default()],
            );
            let out = &outputs[0];
            match out.get(TRACEPARENT) {
                None => prop_assert!(out.0.is_empty()),
                Some(parent) => {
                    let parts: Vec<&str> = parent.split('-').collect();
                    prop_assert_eq!(parts.len(), 4);
                    prop_assert_eq!(parts[0], "00");
                    let lower_hex = |s: &str, n: usize| {
                        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    };
                    prop_assert!(lower_hex(parts[1], 32) && lower_hex(parts[2], 16));
                    prop_assert!(parts[3] == "00" || parts[3] == "01");
                    if let Some(state) = out.get(TRACESTATE) {
                        prop_assert!(state.bytes().all(|b| (0x20..0x7f).contains(&b)));
                    }
                }
            }
        }
    }

    #[test]
    fn endpoints_become_the_traces_url() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector/v1/traces").unwrap(),
            "http://collector/v1/traces"
        );
        assert_eq!(
            traces_url("http://[::1]:4318").unwrap(),
            "http://[::1]:4318/v1/traces"
        );
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "not a url",
        ] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
