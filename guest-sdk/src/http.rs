//! Outbound HTTP, granted by the manifest's `[http] allow` (origins: scheme, host and port):
//! a blocking client over `wasi:http/outgoing-handler`.
//!
//! ```no_run
//! use natsplug_sdk::{http, Message, Output};
//!
//! fn handle(msg: Message) -> natsplug_sdk::Result {
//!     let response = http::get("http://127.0.0.1:8080/price")?;
//!     Ok(vec![Output::to("prices").payload(response.body)])
//! }
//! ```
//!
//! A request to an origin not granted fails with [`HttpError::Denied`]; a response body over
//! `http.max_response_bytes` with [`HttpError::TooLarge`]; a server that does not answer in
//! time with [`HttpError::Timeout`]. With `?`, a denial becomes a reject and any other failure
//! a retry. A response with an error status is a response: check [`Response::status`].

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// Why an HTTP call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The origin is not in `[http] allow`.
    Denied,
    /// A body passed the manifest's limit.
    TooLarge,
    /// The server did not connect or answer in time.
    Timeout,
    /// Not a URL this client sends: `http://` or `https://`, a host, a path.
    InvalidUrl(String),
    /// Anything else the host reports (connection refused, DNS, TLS, protocol).
    Other(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str("HTTP request denied (see [http] allow)"),
            Self::TooLarge => f.write_str("an HTTP body passed the manifest's limit"),
            Self::Timeout => f.write_str("the HTTP server did not answer in time"),
            Self::InvalidUrl(url) => write!(f, "{url:?} is not an http:// or https:// URL"),
            Self::Other(reason) => write!(f, "HTTP request failed: {reason}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    fn from(error: HttpError) -> Self {
        match error {
            HttpError::Denied | HttpError::InvalidUrl(_) => Self::reject(error),
            _ => Self::retry(error),
        }
    }
}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::HttpRequestDenied => Self::Denied,
            ErrorCode::HttpRequestBodySize(_) | ErrorCode::HttpResponseBodySize(_) => {
                Self::TooLarge
            }
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::HttpResponseTimeout
            | ErrorCode::DnsTimeout => Self::Timeout,
            other => Self::Other(format!("{other:?}")),
        }
    }
}

/// A response, read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order; a value is bytes (HTTP does not promise UTF-8).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as UTF-8 text.
    pub fn body_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    send("GET", url, &[], &[])
}

/// `POST url` with `body`.
pub fn post(url: &str, body: &[u8]) -> Result<Response, HttpError> {
    send("POST", url, &[], body)
}

/// Sends a request and reads its whole response.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Response, HttpError> {
    let invalid = || HttpError::InvalidUrl(url.to_owned());
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(invalid()),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(invalid());
    }
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value)
            .map_err(|e| HttpError::Other(format!("header {name:?}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_owned()),
    };
    let rejected = |what: &str| HttpError::Other(format!("the host refused the {what}"));
    request
        .set_method(&method)
        .map_err(|()| rejected("method"))?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| rejected("scheme"))?;
    request
        .set_authority(Some(authority))
        .map_err(|()| rejected("authority"))?;
    request
        .set_path_with_query(Some(&path))
        .map_err(|()| rejected("path"))?;
    let outgoing = request.body().map_err(|()| rejected("body"))?;
    if !body.is_empty() {
        let stream = outgoing.write().map_err(|()| rejected("body"))?;
        for chunk in body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(stream_error)?;
        }
    }
    OutgoingBody::finish(outgoing, None)?;
    let pending = outgoing_handler::handle(request, None)?;
    pending.subscribe().block();
    let response = pending
        .get()
        .ok_or_else(|| HttpError::Other("no response after it was ready".into()))?
        .map_err(|()| HttpError::Other("the response was taken twice".into()))??;
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response.consume().map_err(|()| rejected("response body"))?;
    let mut data = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| rejected("response body"))?;
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(e) => return Err(stream_error(e)),
            }
        }
    }
    drop(IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body: data,
    })
}

/// The HTTP error behind a failed body stream.
fn stream_error(error: StreamError) -> HttpError {
    match error {
        StreamError::Closed => HttpError::Other("the body stream closed".into()),
        StreamError::LastOperationFailed(e) => match wasip2::http::types::http_error_code(&e) {
            Some(code) => code.into(),
            None => {
                // wasmtime-wasi-http 48 hands a body's errors over as text only.
                let text = e.to_debug_string();
                let first = text.lines().next().unwrap_or_default();
                if first.starts_with("HTTP response body size exceeds limit") {
                    HttpError::TooLarge
                } else {
                    HttpError::Other(first.to_owned())
                }
            }
        },
    }
}
