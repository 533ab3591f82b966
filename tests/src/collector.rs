//! A tiny OTLP/HTTP trace collector for the tests: it listens on a free loopback port, decodes
//! every `POST /v1/traces` (protobuf) and keeps the spans, with ids as lowercase hex and
//! attributes as JSON values.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The `service.name` of its resource.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Its name.
    pub name: String,
    /// Its kind (OTLP numbering: 5 is consumer).
    pub kind: i32,
    /// Its attributes, as a JSON object (strings, integers, booleans, doubles).
    pub attributes: serde_json::Value,
    /// Its status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// Its status message.
    pub status_message: String,
}

/// The OTLP span kind of a consumer span.
pub const KIND_CONSUMER: i32 = 5;
/// The OTLP status code of an error.
pub const STATUS_ERROR: i32 = 2;

/// A collector running on the test's runtime until dropped.
pub struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts listening on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the collector");
        let url = format!("http://{}", listener.local_addr().expect("a local address"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the collector failed");
        });
        Self { url, spans, task }
    }

    /// Its base URL, `http://127.0.0.1:PORT`: what `tracing.otlp_endpoint` takes.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every span received so far, in order.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("not poisoned").clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(spans): State<Arc<Mutex<Vec<Span>>>>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut received = spans.lock().expect("not poisoned");
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(&r.attributes));
        let service = resource
            .as_ref()
            .and_then(|r| r["service.name"].as_str())
            .unwrap_or_default()
            .to_owned();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            let (status_code, status_message) =
                span.status.map(|s| (s.code, s.message)).unwrap_or_default();
            received.push(Span {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                name: span.name,
                kind: span.kind,
                attributes: attributes(&span.attributes),
                status_code,
                status_message,
            });
        }
    }
    (
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn attributes(pairs: &[KeyValue]) -> serde_json::Value {
    pairs
        .iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn value(value: Option<&AnyValue>) -> serde_json::Value {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone().into(),
        Some(any_value::Value::IntValue(i)) => (*i).into(),
        Some(any_value::Value::BoolValue(b)) => (*b).into(),
        Some(any_value::Value::DoubleValue(d)) => (*d).into(),
        other => format!("{other:?}").into(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
