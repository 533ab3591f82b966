//! Requests to NATS services behind `[request] allow`: `natsplug:plugin/request.send`, what a
//! FastStream handler does with `await broker.request(...)`.
//!
//! The subject must be granted and is never in reserved space, named or not
//! ([`crate::policy::capabilities::refuse_request`]); the headers must be sendable and must not
//! steer the server ([`crate::policy::refuse_request_header`]); the wait is the guest's
//! timeout, else `[request] timeout`, and never past the handler's deadline. The reply comes
//! back on the capabilities connection's own inbox (`_INBOX.natsplug-requests.`), apart from
//! the host's reserved inboxes, so that natsplug service plugins may answer it.

use std::time::Duration;

use async_nats::RequestErrorKind;
use bytes::Bytes;

use super::{Call, Ended, remaining};
use crate::policy::capabilities::refuse_request;
use crate::policy::{Denied, refuse_request_header};
use crate::runtime::Invocation;
use crate::runtime::bindings::natsplug::plugin::request::{self, Reply, RequestError};
use crate::runtime::bindings::natsplug::plugin::types::Header;

impl Invocation {
    /// Checks a request against the grant: the subject, then each header.
    fn refuse_request(&self, subject: &str, headers: &[Header]) -> Result<(), Denied> {
        refuse_request(subject, &self.plugin.capabilities.request_allow)?;
        headers
            .iter()
            .try_for_each(|h| refuse_request_header(&h.name, &h.value))
    }
}

impl request::Host for Invocation {
    async fn send(
        &mut self,
        subject: String,
        headers: Vec<Header>,
        payload: Vec<u8>,
        timeout_ms: Option<u64>,
    ) -> Result<Reply, RequestError> {
        let call = Call::start(self, "request", 1).map_err(RequestError::Denied)?;
        if let Err(denied) = self.refuse_request(&subject, &headers) {
            let reason = denied.to_string();
            call.end(self, Ended::Denied, Some(&denied));
            return Err(RequestError::Denied(reason));
        }
        let capabilities = &self.plugin.capabilities;
        let wanted = timeout_ms.map_or(capabilities.request_timeout, Duration::from_millis);
        let timeout = wanted.min(remaining(self));
        let nats = match capabilities.services.nats() {
            Ok(nats) => nats.clone(),
            Err(reason) => {
                call.end(self, Ended::Error, None);
                return Err(RequestError::Failed(reason));
            }
        };
        let mut map = async_nats::HeaderMap::new();
        for header in &headers {
            map.append(header.name.as_str(), header.value.as_str());
        }
        let sent = if timeout.is_zero() {
            Err(RequestError::Timeout)
        } else {
            let request = async_nats::Request::new()
                .headers(map)
                .payload(Bytes::from(payload))
                .timeout(Some(timeout));
            // async-nats cuts the wait at `timeout`; this one also covers a stalled flush.
            match tokio::time::timeout(timeout, nats.send_request(subject, request)).await {
                Err(_) => Err(RequestError::Timeout),
                Ok(Ok(reply)) => Ok(Reply {
                    headers: reply
                        .headers
                        .iter()
                        .flat_map(|headers| headers.iter())
                        .flat_map(|(name, values)| {
                            values.iter().map(move |value| Header {
                                name: name.to_string(),
                                value: value.as_str().to_owned(),
                            })
                        })
                        .collect(),
                    payload: reply.payload.to_vec(),
                }),
                Ok(Err(e)) => Err(match e.kind() {
                    RequestErrorKind::TimedOut => RequestError::Timeout,
                    RequestErrorKind::NoResponders => RequestError::NoResponders,
                    RequestErrorKind::InvalidSubject
                    | RequestErrorKind::MaxPayloadExceeded
                    | RequestErrorKind::Other => RequestError::Failed(e.to_string()),
                }),
            }
        };
        call.end(self, Ended::of(&sent), None);
        sent
    }
}
