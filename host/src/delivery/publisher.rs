//! The publisher pool: outputs and dead letters go out on their own connections (default 2),
//! never on the consumer's, so a slow handler or a reconnect on one side never fails the other.
//! A stored publish carries a deterministic `Nats-Msg-Id` and is retried with exponential
//! backoff and jitter, bounded; it succeeds only once the stream's publish ack is in.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;

use crate::backoff::Backoff;
use crate::config::{NatsConfig, PublisherConfig};
use crate::connection;
use crate::metrics::Metrics;

/// A publish that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No stream captures the subject (it may be created later: retry the input).
    #[error("no stream captures subject {subject:?}")]
    NoStream {
        /// The subject.
        subject: String,
    },
    /// The message is larger than the server accepts; retrying cannot help.
    #[error("message to {subject:?} is larger than the server's max_payload: {reason}")]
    TooLarge {
        /// The subject.
        subject: String,
        /// The client's message, with the sizes.
        reason: String,
    },
    /// Every attempt failed (timeouts, a broken connection...).
    #[error("publish to {subject:?} failed after {attempts} attempts: {last}")]
    Exhausted {
        /// The subject.
        subject: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

impl PublishError {
    /// Whether retrying the input can never help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

/// What the stream said about a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The stream already had a message with this `Nats-Msg-Id`.
    pub duplicate: bool,
}

struct Connection {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

/// The pool of publisher connections.
pub struct Publisher {
    pool: Vec<Connection>,
    next: AtomicUsize,
    config: PublisherConfig,
    metrics: Arc<Metrics>,
}

impl Publisher {
    /// Opens `config.connections` connections (at least one), named `publisher-N`.
    pub async fn connect(
        nats: &NatsConfig,
        config: &PublisherConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Self::connect_as("publisher", nats, config, metrics).await
    }

    /// Opens `config.connections` connections (at least one), named `ROLE-N`.
    pub async fn connect_as(
        role: &str,
        nats: &NatsConfig,
        config: &PublisherConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut pool = Vec::new();
        for i in 0..config.connections.max(1) {
            let client =
                connection::connect_with(nats, &format!("{role}-{i}"), Some(metrics.clone()))
                    .await?;
            let mut jetstream = jetstream::new(client.clone());
            jetstream.set_timeout(nats.request_timeout);
            pool.push(Connection { client, jetstream });
        }
        Ok(Self {
            pool,
            next: AtomicUsize::new(0),
            config: config.clone(),
            metrics,
        })
    }

    /// Whether every connection of the pool is up.
    pub fn connected(&self) -> bool {
        self.pool.iter().all(|c| connection::is_up(&c.client))
    }

    fn connection(&self) -> &Connection {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        &self.pool[i]
    }

    /// Publishes to a stream and waits for its ack, retrying transient failures with backoff.
    pub async fn store(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
        msg_id: Option<&str>,
    ) -> Result<Stored, PublishError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut message = PublishMessage::build()
                .payload(payload.clone())
                .headers(headers.clone());
            if let Some(id) = msg_id {
                message = message.message_id(id);
            }
            let conn = self.connection();
            self.metrics.publish_attempts.inc();
            let started = std::time::Instant::now();
            let result = match conn
                .jetstream
                .send_publish(subject.to_owned(), message)
                .await
            {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(ack) => {
                    let took = started.elapsed().as_secs_f64();
                    self.metrics.publish_ack_duration.observe(took);
                    if ack.duplicate {
                        self.metrics.deduplicated.inc();
                    }
                    return Ok(Stored {
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => e,
            };
            match error.kind() {
                PublishErrorKind::StreamNotFound => {
                    self.metrics.publish_failures.inc();
                    return Err(PublishError::NoStream {
                        subject: subject.to_owned(),
                    });
                }
                // Over the server's max_payload (seen by the client), or over the stream's own
                // max_msg_size (said by the stream): retrying cannot help.
                _ if error.kind() == PublishErrorKind::MaxPayloadExceeded
                    || exceeds_stream_max(&error) =>
                {
                    self.metrics.publish_failures.inc();
                    return Err(PublishError::TooLarge {
                        subject: subject.to_owned(),
                        reason: error.to_string(),
                    });
                }
                _ if attempt >= self.config.max_attempts => {
                    self.metrics.publish_failures.inc();
                    return Err(PublishError::Exhausted {
                        subject: subject.to_owned(),
                        attempts: attempt,
                        last: error.to_string(),
                    });
                }
                _ => {
                    self.metrics.publish_retries.inc();
                    let delay = self.backoff(attempt);
                    tracing::debug!(
                        messaging.system = "nats",
                        messaging.destination.name = subject,
                        attempt,
                        error = %error,
                        ?delay,
                        "publish failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Publishes without storage (replies, core subjects). At most once, like core NATS.
    pub async fn core(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        self.connection()
            .client
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(|e| PublishError::Exhausted {
                subject: subject.to_owned(),
                attempts: 1,
                last: e.to_string(),
            })
    }

    /// The delay after failed attempt `attempt` (1-based): doubling from `backoff_initial`, capped
    /// at `backoff_max`, with ±50% jitter so many hosts do not retry in step.
    fn backoff(&self, attempt: u32) -> Duration {
        Backoff {
            first: self.config.backoff_initial,
            max: self.config.backoff_max,
            jitter: true,
        }
        .delay(attempt)
    }

    /// Flushes and drains every connection (shutdown).
    pub async fn close(&self) {
        for conn in &self.pool {
            if let Err(e) = conn.client.flush().await {
                tracing::warn!(error = %e, "cannot flush a publisher connection");
            }
            if let Err(e) = conn.client.drain().await {
                tracing::warn!(error = %e, "cannot drain a publisher connection");
            }
        }
    }
}

/// Whether the stream refused the message as larger than its `max_msg_size`.
fn exceeds_stream_max(error: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
}
