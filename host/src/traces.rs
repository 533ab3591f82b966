//! Traces: the W3C trace context through a message, and one span per handled message exported
//! over OTLP/HTTP.
//!
//! Without an exporter (`tracing.otlp_endpoint` unset) nothing is made: an input's
//! `traceparent` goes on to its outputs unchanged, so a trace still follows a message through a
//! chain of plugins. With one, each handled message is a span `natsplug.handle` (kind consumer)
//! whose parent is the input's `traceparent` (a new trace when it has none, or a malformed one);
//! it carries the plugin, the subject, the stream, the sequence, the delivery count and the
//! outcome, with an error status when the message was not handled; and every output's
//! `traceparent` names this span as its parent.
//!
//! The SDK batches spans on a thread of its own (every 5 s, or `OTEL_BSP_SCHEDULE_DELAY`) and
//! posts them as OTLP protobuf through [`Post`], a small HTTP/1.1 client that runs each request
//! on the host's runtime: plain `http://` only, to a collector or agent nearby.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::TracingConfig;
use crate::delivery::settle::Settled;
use crate::message::{Message, Output};

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The name of every message's span.
pub const SPAN_NAME: &str = "natsplug.handle";
/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a collector's answer that is read (it is a small protobuf message).
const MAX_ANSWER: usize = 64 * 1024;

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
        let parent = match input.headers.get(TRACEPARENT).and_then(parse_traceparent) {
            Some(remote) => Context::new().with_remote_span_context(remote),
            None => Context::new(),
        };
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
        let traceparent = format_traceparent(span.span_context());
        MessageSpan {
            span: Some((span, traceparent)),
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
    /// The span and the `traceparent` its outputs carry.
    span: Option<(opentelemetry_sdk::trace::Span, String)>,
}

impl MessageSpan {
    /// Sets the `traceparent` of the outputs of `input`: this span as their parent, replacing
    /// what the handler set (usually a copy of the input's); without an exporter, the input's
    /// own on every output the handler gave none.
    pub fn stamp(&self, input: &Message, outputs: &mut [Output]) {
        let (traceparent, replace) = match &self.span {
            Some((_, own)) => (own.as_str(), true),
            // Only a well-formed one (55 bytes) is copied: an input's header is anyone's.
            None => match input.headers.get(TRACEPARENT) {
                Some(input) if parse_traceparent(input).is_some() => (input, false),
                _ => return,
            },
        };
        for headers in outputs.iter_mut().map(|o| &mut o.headers) {
            if replace {
                headers.insert(TRACEPARENT, traceparent);
            } else if headers.get(TRACEPARENT).is_none() {
                headers.append(TRACEPARENT, traceparent);
            }
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

/// A W3C `traceparent` (`VERSION-TRACEID-PARENTID-FLAGS`, lowercase hex) as the context of a
/// remote parent; none when it is malformed or names the invalid all-zero ids.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = text.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; a later version may add more after them.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// The `traceparent` naming `context` as the parent.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The exporter's HTTP client: one HTTP/1.1 POST per export, run on the host's runtime. The
/// SDK calls it from its own thread, which has no runtime; that thread only waits for the task.
/// A failing collector is logged once (WARN), and again when it answers (INFO).
#[derive(Debug)]
struct Post {
    runtime: tokio::runtime::Handle,
    url: String,
    failing: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl HttpClient for Post {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let result = self
            .runtime
            .spawn(async move {
                match tokio::time::timeout(EXPORT_TIMEOUT, post(request)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}").into()),
                }
            })
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

/// Where to connect for `authority`: its host, without the brackets of an IPv6 literal (the
/// resolver takes `::1`, not `[::1]`), and its port, 80 when it names none.
fn socket_target(authority: &http::uri::Authority) -> (&str, u16) {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (host, authority.port_u16().unwrap_or(80))
}

async fn post(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let (mut parts, body) = request.into_parts();
    let authority = parts
        .uri
        .authority()
        .ok_or("the endpoint has no host")?
        .clone();
    let stream = tokio::net::TcpStream::connect(socket_target(&authority)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // This connection-level API sends the URI as given: the path, and the host as a header.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()?;
    parts
        .headers
        .insert(http::header::HOST, authority.as_str().parse()?);
    let exchange = async move {
        let response = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
        Ok(Response::from_parts(parts, body))
        // `sender` drops here, which ends the connection.
    };
    let (answer, _) = tokio::join!(exchange, connection);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Headers;

    const INPUT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_parses_and_formats_back() {
        let context = parse_traceparent(INPUT).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(format_traceparent(&context), INPUT);
        // Unsampled; a later version with an extra field; flags beyond "sampled" are dropped.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            format_traceparent(&parse_traceparent(unsampled).unwrap()),
            unsampled
        );
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-extra";
        assert_eq!(
            format_traceparent(&parse_traceparent(later).unwrap()),
            INPUT
        );
    }

    #[test]
    fn malformed_traceparents_are_none() {
        for text in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert_eq!(parse_traceparent(text), None, "{text:?}");
        }
    }

    #[test]
    fn without_an_exporter_the_input_traceparent_goes_on() {
        let traces = Traces::start(&TracingConfig::default()).unwrap();
        let mut input = Message::new("in", "x");
        input.headers.append(TRACEPARENT, INPUT);
        let span = traces.message("p", &input);
        // A handler's own traceparent is kept.
        let own = "00-11111111111111111111111111111111-2222222222222222-01";
        let output = Output {
            subject: Some("out".into()),
            headers: Headers::default(),
            payload: bytes::Bytes::new(),
        };
        let mut outputs = vec![output.clone(), output];
        outputs[1].headers.append(TRACEPARENT, own);
        span.stamp(&input, &mut outputs);
        assert_eq!(outputs[0].headers.0, [(TRACEPARENT.into(), INPUT.into())]);
        assert_eq!(outputs[1].headers.0, [(TRACEPARENT.into(), own.into())]);
        span.end(&Settled::Acked);
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

    #[test]
    fn an_endpoint_connects_to_its_address_an_ipv6_literal_without_brackets() {
        use std::net::{SocketAddr, ToSocketAddrs as _};
        let target = |url: &str| {
            let uri: http::Uri = url.parse().unwrap();
            let (host, port) = socket_target(uri.authority().unwrap());
            (host.to_owned(), port)
        };
        assert_eq!(
            target("http://[::1]:4318/v1/traces"),
            ("::1".to_owned(), 4318)
        );
        assert_eq!(
            target("http://127.0.0.1/v1/traces"),
            ("127.0.0.1".to_owned(), 80)
        );
        assert_eq!(
            target("http://collector:4318/v1/traces"),
            ("collector".to_owned(), 4318)
        );
        // The target is an IP literal, which resolves without a lookup.
        let addrs: Vec<SocketAddr> = ("::1", 4318).to_socket_addrs().unwrap().collect();
        assert_eq!(addrs, ["[::1]:4318".parse::<SocketAddr>().unwrap()]);
    }
}
