//! The host's own message types: what a handler receives ([`Message`]) and what it asks to
//! publish ([`Output`]), independent of the generated WIT bindings and of async-nats, so the
//! runtime, the engine and the offline `call` command share one vocabulary.

use serde::Serialize;

/// Headers in order; a name may appear several times (NATS headers are multi-valued).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Adds a value, keeping the ones already there.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Sets `name` to this one value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        self.0.retain(|(n, _)| *n != name);
        self.0.push((name, value.into()));
    }

    /// Converts to async-nats headers, leaving out any the protocol cannot carry (async-nats
    /// panics on them; outputs are checked before, see [`crate::policy::headers`]).
    pub fn to_nats(&self) -> async_nats::HeaderMap {
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in &self.0 {
            if let (Ok(name), Ok(value)) = (
                name.parse::<async_nats::HeaderName>(),
                value.parse::<async_nats::HeaderValue>(),
            ) {
                map.append(name, value);
            }
        }
        map
    }

    /// Converts from async-nats headers (order of names is the map's, values keep their order).
    pub fn from_nats(map: Option<&async_nats::HeaderMap>) -> Self {
        let mut headers = Self::default();
        if let Some(map) = map {
            for (name, values) in map.iter() {
                for value in values {
                    headers.append(name.to_string(), value.as_str());
                }
            }
        }
        headers
    }
}

/// JetStream facts about a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The stream that stored the message.
    pub stream: String,
    /// The consumer that delivered it.
    pub consumer: String,
    /// Sequence in the stream.
    pub stream_sequence: u64,
    /// Sequence in the consumer.
    pub consumer_sequence: u64,
    /// Delivery count, 1 on the first delivery.
    pub delivered: u64,
    /// Messages pending on the consumer after this one.
    pub pending: u64,
    /// Store time, nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
}

/// An incoming message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Subject it was published to.
    pub subject: String,
    /// Reply subject of a request.
    pub reply: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Payload.
    pub payload: bytes::Bytes,
    /// JetStream facts; `None` for core NATS.
    pub delivery: Option<Delivery>,
}

impl Message {
    /// How many times JetStream has delivered it, this time included; 1 for core NATS.
    pub fn delivered(&self) -> u64 {
        self.delivery.as_ref().map_or(1, |d| d.delivered)
    }

    /// A core NATS message with no headers.
    pub fn new(subject: impl Into<String>, payload: impl Into<bytes::Bytes>) -> Self {
        Self {
            subject: subject.into(),
            reply: None,
            headers: Headers::default(),
            payload: payload.into(),
            delivery: None,
        }
    }
}

/// A message a handler asks the host to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    /// Destination subject; `None` means the reply to the input's request.
    pub subject: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Payload.
    #[serde(serialize_with = "serialize_payload")]
    pub payload: bytes::Bytes,
}

/// Payloads print as text when they are UTF-8, as an array of bytes otherwise.
fn serialize_payload<S: serde::Serializer>(
    payload: &bytes::Bytes,
    s: S,
) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(payload) {
        Ok(text) => s.serialize_str(text),
        Err(_) => s.collect_seq(payload.iter()),
    }
}
