//! Write natsplug message handlers in Rust.
//!
//! A plugin is one function and one macro line. The host (natsplug) calls the function once per
//! message in a sandboxed instance (fresh, or warm under `[instance]`), keeps the JetStream message alive with heartbeats while
//! it runs, and turns the answer into an ack, a retry or a dead-letter:
//!
//! ```no_run
//! use natsplug_sdk::{handler, log, Error, Message, Output};
//!
//! handler!(handle);
//!
//! fn handle(msg: Message) -> natsplug_sdk::Result {
//!     let text = msg.payload_str().map_err(Error::reject)?;
//!     log::info(&format!("upper-casing {} bytes", text.len()));
//!     let subject = natsplug_sdk::config("output").unwrap_or_else(|| "out".into());
//!     Ok(vec![Output::to(subject).payload(text.to_uppercase())])
//! }
//! ```
//!
//! - `Ok(outputs)`: the host publishes every output (awaiting the publish acks), then acks the
//!   input. An output made with [`Output::reply`] answers a request.
//! - `Err(Error::retry(..))` / [`Error::retry_after`]: the input is nak'ed and comes back later.
//! - `Err(Error::reject(..))`: the input goes to the plugin's dead-letter subject and is terminated.
//!
//! Build with `cargo build --release --target wasm32-wasip2` and try it offline with
//! `natsplug call target/wasm32-wasip2/release/NAME.wasm --subject S --payload TEXT`.
//!
//! Layout:
//! - [`Message`], [`Headers`], [`Delivery`]: what the handler receives.
//! - [`Output`]: what it publishes. [`Error`]: how it fails.
//! - [`log`], [`in_progress`], [`publish`], [`config`]: the functions the host offers.
//! - [`kv`], [`request`], [`http`]: capabilities, each refused unless the manifest grants it
//!   (`[kv] buckets`, `[request] allow`, `[http] allow`).
//! - [`handler!`]: exports a function as the plugin's handler; [`batch_handler!`] exports one
//!   that takes a batch of messages (under the manifest's `[batch]`) and answers each.
#![deny(missing_docs)]

use std::fmt;
use std::time::Duration;

/// The bindings generated from the WIT contract. Not part of the stable API.
#[doc(hidden)]
#[allow(missing_docs, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "natsplug:plugin/batch-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin",
        default_bindings_module: "natsplug_sdk::bindings",
        // wasi:keyvalue is generated here too; wasi:http comes from the `wasip2` crate.
        generate_all,
    });
}

pub mod http;
pub mod kv;
pub mod request;

use bindings::natsplug::plugin::{host, types};

/// What a handler returns: the outputs to publish, or why it failed.
pub type Result<T = Vec<Output>, E = Error> = std::result::Result<T, E>;

/// Message headers. NATS headers are multi-valued: a name may appear several times, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The first value of `name` (names compare case-sensitively, as NATS does).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Adds a value for `name`, keeping the ones already there.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Sets `name` to this one value, removing the others.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
    }

    /// Every (name, value) pair, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many header lines there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn from_wit(headers: Vec<types::Header>) -> Self {
        Self(headers.into_iter().map(|h| (h.name, h.value)).collect())
    }

    fn into_wit(self) -> Vec<types::Header> {
        self.0
            .into_iter()
            .map(|(name, value)| types::Header { name, value })
            .collect()
    }
}

/// JetStream facts about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The stream that stored the message.
    pub stream: String,
    /// The durable consumer that delivered it.
    pub consumer: String,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// The delivery's sequence in the consumer.
    pub consumer_sequence: u64,
    /// How many times this message has been delivered: 1 on the first delivery.
    pub delivered: u64,
    /// Messages still pending on the consumer after this one.
    pub pending: u64,
    /// When the stream stored the message, in nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
}

/// An incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// The reply subject of a request, if any.
    pub reply: Option<String>,
    /// Its headers.
    pub headers: Headers,
    /// Its payload.
    pub payload: Vec<u8>,
    /// JetStream facts; `None` for a core NATS message.
    pub delivery: Option<Delivery>,
}

impl Message {
    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> std::result::Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.payload)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// How many times this message has been delivered (1 for core NATS messages).
    pub fn delivered(&self) -> u64 {
        self.delivery.as_ref().map_or(1, |d| d.delivered)
    }

    #[doc(hidden)]
    pub fn from_wit(m: types::Message) -> Self {
        Self {
            subject: m.subject,
            reply: m.reply,
            headers: Headers::from_wit(m.headers),
            payload: m.payload,
            delivery: m.delivery.map(|d| Delivery {
                stream: d.stream,
                consumer: d.consumer,
                stream_sequence: d.stream_sequence,
                consumer_sequence: d.consumer_sequence,
                delivered: d.delivered,
                pending: d.pending,
                timestamp_ns: d.timestamp_ns,
            }),
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Where to publish; `None` answers the input's request.
    pub subject: Option<String>,
    /// Its headers.
    pub headers: Headers,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Output {
    /// An output to `subject`, with an empty payload and no headers.
    pub fn to(subject: impl Into<String>) -> Self {
        Self {
            subject: Some(subject.into()),
            ..Self::default()
        }
    }

    /// The reply to the input's request.
    pub fn reply() -> Self {
        Self::default()
    }

    /// Sets the payload.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Adds a header value.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.append(name, value);
        self
    }

    fn into_wit(self) -> types::Output {
        types::Output {
            subject: self.subject,
            headers: self.headers.into_wit(),
            payload: self.payload,
        }
    }
}

/// Why a handler did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Transient: nak the input so it is delivered again.
    Retry {
        /// Why; logged and counted by the host.
        reason: String,
        /// How long to wait; `None` lets the plugin's backoff schedule decide.
        after: Option<Duration>,
    },
    /// Permanent: dead-letter the input and terminate it.
    Reject {
        /// Why; sent in the dead-letter message's headers.
        reason: String,
    },
}

impl Error {
    /// A retry after the plugin's backoff delay. Takes anything printable, so
    /// `.map_err(Error::retry)` works on any error.
    pub fn retry(reason: impl fmt::Display) -> Self {
        Self::Retry {
            reason: reason.to_string(),
            after: None,
        }
    }

    /// A retry after `delay`.
    pub fn retry_after(reason: impl fmt::Display, delay: Duration) -> Self {
        Self::Retry {
            reason: reason.to_string(),
            after: Some(delay),
        }
    }

    /// A permanent failure: the message goes to the dead-letter subject.
    pub fn reject(reason: impl fmt::Display) -> Self {
        Self::Reject {
            reason: reason.to_string(),
        }
    }

    fn into_wit(self) -> types::Failure {
        match self {
            Self::Retry { reason, after } => types::Failure::Retry(types::Retry {
                reason,
                delay_ms: after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }),
            Self::Reject { reason } => types::Failure::Reject(reason),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retry { reason, .. } => write!(f, "retry: {reason}"),
            Self::Reject { reason } => write!(f, "reject: {reason}"),
        }
    }
}

/// Structured logging to the host's log, tagged with the plugin and the message being handled.
pub mod log {
    use super::host;

    /// Logs at TRACE.
    pub fn trace(message: &str) {
        host::log(host::Level::Trace, message);
    }
    /// Logs at DEBUG.
    pub fn debug(message: &str) {
        host::log(host::Level::Debug, message);
    }
    /// Logs at INFO.
    pub fn info(message: &str) {
        host::log(host::Level::Info, message);
    }
    /// Logs at WARN.
    pub fn warn(message: &str) {
        host::log(host::Level::Warn, message);
    }
    /// Logs at ERROR.
    pub fn error(message: &str) {
        host::log(host::Level::Error, message);
    }
}

/// Tells the server right now that the message is still being worked on. The host already sends
/// these heartbeats on its own while a handler runs; this is for being explicit.
pub fn in_progress() {
    host::in_progress();
}

/// The publish was refused; the reason says why (e.g. a subject the manifest does not allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishError(pub String);

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PublishError {}

/// Adds an output besides the ones the handler returns. It is published with them, and only if
/// the handler succeeds; a subject the manifest does not allow is refused at once.
pub fn publish(output: Output) -> Result<(), PublishError> {
    host::publish(&output.into_wit()).map_err(PublishError)
}

/// A value from the `[config]` table of the plugin's manifest.
pub fn config(key: &str) -> Option<String> {
    host::config(key)
}

#[doc(hidden)]
pub fn __dispatch(
    message: types::Message,
    handler: impl FnOnce(Message) -> Result,
) -> std::result::Result<Vec<types::Output>, types::Failure> {
    answer(handler(Message::from_wit(message)))
}

#[doc(hidden)]
pub fn __dispatch_each(
    messages: Vec<types::Message>,
    mut handler: impl FnMut(Message) -> Result,
) -> Vec<std::result::Result<Vec<types::Output>, types::Failure>> {
    messages
        .into_iter()
        .map(|m| __dispatch(m, &mut handler))
        .collect()
}

#[doc(hidden)]
pub fn __dispatch_batch(
    messages: Vec<types::Message>,
    handler: impl FnOnce(Vec<Message>) -> Vec<Result>,
) -> Vec<std::result::Result<Vec<types::Output>, types::Failure>> {
    let count = messages.len();
    let results = handler(messages.into_iter().map(Message::from_wit).collect());
    // One result per message is the contract; a handler that breaks it fails the call, and
    // the host then runs each message alone.
    assert_eq!(
        results.len(),
        count,
        "a batch handler returns one result per message"
    );
    results.into_iter().map(answer).collect()
}

#[doc(hidden)]
pub fn __dispatch_one(
    message: types::Message,
    handler: impl FnOnce(Vec<Message>) -> Vec<Result>,
) -> std::result::Result<Vec<types::Output>, types::Failure> {
    __dispatch_batch(vec![message], handler)
        .pop()
        .expect("one result for one message")
}

fn answer(result: Result) -> std::result::Result<Vec<types::Output>, types::Failure> {
    result
        .map(|outputs| outputs.into_iter().map(Output::into_wit).collect())
        .map_err(Error::into_wit)
}

/// Exports `$handler`, a `fn(Message) -> natsplug_sdk::Result`, as the plugin's handler.
///
/// ```no_run
/// natsplug_sdk::handler!(handle);
/// fn handle(_msg: natsplug_sdk::Message) -> natsplug_sdk::Result {
///     Ok(vec![])
/// }
/// ```
///
/// Under a manifest's `[batch]` the host hands it several messages in one call, and it runs
/// on each in turn.
#[macro_export]
macro_rules! handler {
    ($handler:path) => {
        $crate::__export!(
            |message| $crate::__dispatch(message, $handler),
            |messages| $crate::__dispatch_each(messages, $handler)
        );
    };
}

/// Exports `$handler`, a `fn(Vec<Message>) -> Vec<natsplug_sdk::Result>` returning one result
/// per message, in order, as the plugin's batch handler: the host calls it with up to
/// `[batch] max` messages, and settles each message on its own result. A single message
/// (without `[batch]`) comes as a batch of one.
///
/// ```no_run
/// natsplug_sdk::batch_handler!(handle);
/// fn handle(msgs: Vec<natsplug_sdk::Message>) -> Vec<natsplug_sdk::Result> {
///     msgs.into_iter().map(|_| Ok(vec![])).collect()
/// }
/// ```
#[macro_export]
macro_rules! batch_handler {
    ($handler:path) => {
        $crate::__export!(
            |message| $crate::__dispatch_one(message, $handler),
            |messages| $crate::__dispatch_batch(messages, $handler)
        );
    };
}

/// The component's two exports, `handle` and `handle-batch`, from one closure each.
#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($one:expr, $batch:expr) => {
        struct __NatsplugPlugin;

        impl $crate::bindings::Guest for __NatsplugPlugin {
            fn handle(
                message: $crate::bindings::Message,
            ) -> ::core::result::Result<
                ::std::vec::Vec<$crate::bindings::Output>,
                $crate::bindings::Failure,
            > {
                ($one)(message)
            }

            fn handle_batch(
                messages: ::std::vec::Vec<$crate::bindings::Message>,
            ) -> ::std::vec::Vec<
                ::core::result::Result<
                    ::std::vec::Vec<$crate::bindings::Output>,
                    $crate::bindings::Failure,
                >,
            > {
                ($batch)(messages)
            }
        }

        $crate::bindings::__export_plugin!(__NatsplugPlugin with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_every_value_in_order() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("b", "2");
        h.append("a", "3");
        assert_eq!(h.get("a"), Some("1"));
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), vec!["1", "3"]);
        h.insert("a", "4");
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![("b", "2"), ("a", "4")]);
    }

    #[test]
    fn errors_map_to_the_contract() {
        let e = Error::retry_after("busy", Duration::from_millis(1500)).into_wit();
        assert!(
            matches!(e, types::Failure::Retry(types::Retry { ref reason, delay_ms: Some(1500) }) if reason == "busy")
        );
        let e = Error::reject(42).into_wit();
        assert!(matches!(e, types::Failure::Reject(ref r) if r == "42"));
    }
}
