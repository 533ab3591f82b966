//! Outbound HTTP behind `[http] allow`: `wasi:http/outgoing-handler` from `wasmtime-wasi-http`,
//! with natsplug's hooks ([`Hooks`]) deciding what goes out.
//!
//! A request goes out only to an origin (scheme, host, port) the manifest lists exactly
//! ([`crate::policy::capabilities::refuse_origin`]); anything else fails at the call with
//! `HTTP-request-denied` and a log line naming the origin. Its body is cut at
//! `http.max_request_bytes` (`HTTP-request-body-size`), the response's at
//! `http.max_response_bytes` (`HTTP-response-body-size` on the response when its declared
//! length is over; when an undeclared one passes it, the body read fails: wasmtime-wasi-http
//! 48 gives that error to the guest without its error code, only its text). The
//! connect, first-byte and between-bytes waits are the manifest's, the guest's if shorter, and
//! never past the handler's deadline: a server that stalls ends in a timeout the guest sees,
//! or in the deadline, never in a hung handler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use tokio::sync::Semaphore;

use super::{Budget, Ended};
use crate::manifest::HttpGrant;
use crate::metrics::Metrics;
use crate::policy::capabilities::refuse_origin;
use crate::policy::{Denied, Origin};
use crate::runtime::Invocation;

/// `[http]`, compiled once per plugin version.
#[derive(Debug)]
pub(crate) struct Grant {
    allow: Vec<Origin>,
    max_request_bytes: u64,
    max_response_bytes: u64,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
}

impl Grant {
    pub(crate) fn new(grant: &HttpGrant) -> Self {
        Self {
            // The manifest's origins were checked when it was parsed.
            allow: grant
                .allow
                .iter()
                .filter_map(|o| Origin::parse(o).ok())
                .collect(),
            max_request_bytes: grant.max_request_bytes,
            max_response_bytes: grant.max_response_bytes,
            connect_timeout: grant.connect_timeout,
            first_byte_timeout: grant.first_byte_timeout,
        }
    }
}

/// HTTP requests one instance may have open at once: sent and not yet answered, or answered
/// with a response or body the guest still holds. wasmtime-wasi-http sends each in a task of
/// its own, so without it a guest could start thousands without waiting for one.
pub const MAX_OPEN: usize = 16;

/// The state `wasmtime-wasi-http` asks natsplug about, one per instance.
pub(crate) struct Hooks {
    grant: Arc<Grant>,
    plugin: Arc<str>,
    metrics: Option<Arc<Metrics>>,
    /// The handler's deadline, set for each call.
    pub(crate) deadline: Instant,
    /// The handler call's capability calls, shared with the other capabilities.
    budget: Budget,
    /// A permit per open request, held by its response's body.
    open: Arc<Semaphore>,
    /// Refused requests in this call, for `natsplug_policy_denials_total`.
    pub(crate) denied: Vec<Denied>,
}

impl Hooks {
    pub(crate) fn new(
        grant: Arc<Grant>,
        plugin: Arc<str>,
        metrics: Option<Arc<Metrics>>,
        budget: Budget,
    ) -> Self {
        Self {
            grant,
            plugin,
            metrics,
            deadline: Instant::now(),
            budget,
            open: Arc::new(Semaphore::new(MAX_OPEN)),
            denied: Vec::new(),
        }
    }

    /// HTTP requests open now (see [`MAX_OPEN`]).
    pub(crate) fn open(&self) -> usize {
        MAX_OPEN - self.open.available_permits()
    }

    fn count(&self, ended: Ended, took: Duration) {
        count(self.metrics.as_deref(), &self.plugin, ended, took);
    }
}

fn count(metrics: Option<&Metrics>, plugin: &str, ended: Ended, took: Duration) {
    if let Some(metrics) = metrics {
        metrics.capability(plugin, "http", ended.label(), took);
    }
}

/// A body cut at `max` bytes: reading past it fails with `too_long(max)`.
fn limited(body: WasiBody, max: u64, too_long: fn(Option<u64>) -> Error) -> WasiBody {
    let max_usize = usize::try_from(max).unwrap_or(usize::MAX);
    http_body_util::Limited::new(body, max_usize)
        .map_err(move |e| match e.downcast::<Error>() {
            Ok(inner) => *inner,
            Err(_) => too_long(Some(max)),
        })
        .boxed_unsync()
}

/// The shorter of two waits, where the guest's may be absent.
fn shorter(ours: Duration, guests: Option<Duration>) -> Duration {
    guests.map_or(ours, |g| g.min(ours))
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        drop(fut);
        let refused = |error: Error| -> Sent { Box::new(std::future::ready(Err(error))) };
        if self.budget.spend(1).is_err() {
            self.count(Ended::Error, Duration::ZERO);
            return refused(Error::ConnectionLimitReached);
        }
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            tracing::warn!(plugin = %self.plugin, capability = "http", "more than {MAX_OPEN} HTTP requests open at once");
            self.count(Ended::Error, Duration::ZERO);
            return refused(Error::ConnectionLimitReached);
        };
        if let Err(denied) = refuse_origin(request.uri(), &self.grant.allow) {
            tracing::warn!(plugin = %self.plugin, capability = "http", kind = denied.kind(), "{denied}");
            self.denied.push(denied);
            self.count(Ended::Denied, Duration::ZERO);
            return refused(Error::HttpRequestDenied);
        }
        let grant = &self.grant;
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = declared.filter(|n| *n > grant.max_request_bytes) {
            self.count(Ended::Error, Duration::ZERO);
            return refused(Error::HttpRequestBodySize(Some(length)));
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        let options = RequestOptions {
            connect_timeout: Some(
                shorter(
                    grant.connect_timeout,
                    options.and_then(|o| o.connect_timeout),
                )
                .min(left),
            ),
            first_byte_timeout: Some(
                shorter(
                    grant.first_byte_timeout,
                    options.and_then(|o| o.first_byte_timeout),
                )
                .min(left),
            ),
            between_bytes_timeout: Some(
                shorter(
                    grant.first_byte_timeout,
                    options.and_then(|o| o.between_bytes_timeout),
                )
                .min(left),
            ),
        };
        let request =
            request.map(|body| limited(body, grant.max_request_bytes, Error::HttpRequestBodySize));
        let max_response = grant.max_response_bytes;
        let metrics = self.metrics.clone();
        let plugin = self.plugin.clone();
        Box::new(async move {
            let started = Instant::now();
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options))
                .await
                .and_then(|(response, io)| {
                    // A declared length over the limit fails here, as a typed error the guest
                    // sees on its response; an undeclared one fails its body read when it
                    // passes the limit.
                    let declared = response
                        .headers()
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                    match declared.filter(|n| *n > max_response) {
                        Some(length) => Err(Error::HttpResponseBodySize(Some(length))),
                        None => Ok((response, io)),
                    }
                });
            let ended = Ended::of(&sent);
            count(metrics.as_deref(), &plugin, ended, started.elapsed());
            let (response, io) = sent?;
            // The permit goes with the body: the request is open until the guest drops it.
            let response = response.map(|body| {
                limited(
                    body.boxed_unsync(),
                    max_response,
                    Error::HttpResponseBodySize,
                )
                .map_frame(move |frame| {
                    let _held = &permit;
                    frame
                })
                .boxed_unsync()
            });
            Ok((response, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

impl WasiHttpView for Invocation {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}
