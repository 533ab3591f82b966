//! Requests to NATS services, granted by the manifest's `[request] allow`: send a request and
//! wait for its reply, as a FastStream handler does with `await broker.request(...)`:
//!
//! ```no_run
//! use natsplug_sdk::{request::Request, Message, Output};
//!
//! fn handle(msg: Message) -> natsplug_sdk::Result {
//!     let reply = Request::to("pricing.quote").payload(msg.payload).send()?;
//!     Ok(vec![Output::to("quotes").payload(reply.payload)])
//! }
//! ```
//!
//! The wait is the request's timeout (else the manifest's `request.timeout`), never past the
//! handler's deadline; the host's heartbeats keep the input alive meanwhile. With `?`, a denied
//! request becomes a reject, any other failure a retry.

use std::fmt;
use std::time::Duration;

use crate::Headers;
use crate::bindings::natsplug::plugin::request as wit;

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not granted by `[request] allow`, in reserved space, or not a valid subject or header.
    Denied(String),
    /// No reply in time.
    Timeout,
    /// No service listens on the subject.
    NoResponders,
    /// It could not be sent (a payload over the server's limit, no connection).
    Failed(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied(reason) => write!(f, "request denied: {reason}"),
            Self::Timeout => f.write_str("the request timed out"),
            Self::NoResponders => f.write_str("no service answers the request's subject"),
            Self::Failed(reason) => write!(f, "the request failed: {reason}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl From<RequestError> for crate::Error {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::Denied(_) => Self::reject(error),
            _ => Self::retry(error),
        }
    }
}

/// The reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Its headers.
    pub headers: Headers,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }
}

/// A request to build and [`send`](Request::send).
#[derive(Debug, Clone)]
pub struct Request {
    subject: String,
    headers: Headers,
    payload: Vec<u8>,
    timeout: Option<Duration>,
}

impl Request {
    /// A request to `subject`, empty.
    pub fn to(subject: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            headers: Headers::new(),
            payload: Vec::new(),
            timeout: None,
        }
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    /// How long to wait for the reply (capped by the handler's deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends it and waits for the reply.
    pub fn send(self) -> Result<Reply, RequestError> {
        let timeout_ms = self
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let reply = wit::send(
            &self.subject,
            &self.headers.into_wit(),
            &self.payload,
            timeout_ms,
        )
        .map_err(|e| match e {
            wit::RequestError::Denied(reason) => RequestError::Denied(reason),
            wit::RequestError::Timeout => RequestError::Timeout,
            wit::RequestError::NoResponders => RequestError::NoResponders,
            wit::RequestError::Failed(reason) => RequestError::Failed(reason),
        })?;
        Ok(Reply {
            headers: Headers::from_wit(reply.headers),
            payload: reply.payload,
        })
    }
}

/// Sends `payload` to `subject` and waits for the reply (the manifest's timeout).
pub fn request(subject: &str, payload: impl Into<Vec<u8>>) -> Result<Reply, RequestError> {
    Request::to(subject).payload(payload).send()
}
