//! The pull side of a JetStream worker: one inbox subscription for the consumer's life, and pull
//! requests sized by the plugin's free handler slots.
//!
//! Every message asked for holds a handler slot from the moment it is requested until it
//! arrives (the slot goes to its message task) or the server says it will not come (a `408`
//! or `409` status with `Nats-Pending-Messages`). So the host never holds a message it has no
//! slot for, and a message never waits in a local buffer while its ack_wait runs out.
//!
//! A slot that frees up is asked for again at once while little is outstanding; with many
//! requests open, free slots are gathered into one request of at least [`Puller::threshold`],
//! which keeps the server's waiting-request list short at high concurrency.
//!
//! Each request has a reply subject of its own (`INBOX.N`, under one `INBOX.*` subscription), so
//! a request the server refuses as a whole (`409 Exceeded MaxWaiting`...) frees exactly its own
//! slots while the other requests stay open.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt as _;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// How long one pull request waits for messages. Short, so a stopping host gives back what it
/// was about to receive quickly.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Silence, past a request's expiry, after which its messages are taken as lost (the connection
/// dropped the request) and its slots are freed.
const LOST_AFTER: Duration = Duration::from_secs(2);
/// How often a forged delivery on the inbox is logged.
const FORGED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the inbox brought.
pub enum Pulled {
    /// A message, with the handler slot it was requested with.
    Message(jetstream::Message, OwnedSemaphorePermit),
    /// A message nobody asked for (after a reset): it has no slot.
    Unrequested(jetstream::Message),
    /// A request ended and freed slots: time to ask again.
    Released,
    /// The consumer is gone (deleted, not there, or no longer a pull consumer): set it up again.
    ConsumerGone(String),
    /// The server refused a request as a whole (e.g. too many waiting requests): nothing it
    /// asked for is coming; wait a little before asking again.
    Refused(String),
    /// The subscription ended (the client closed).
    Closed,
}

/// Pull requests and their replies for one durable consumer.
pub struct Puller {
    client: async_nats::Client,
    context: jetstream::Context,
    request_subject: String,
    inbox: String,
    subscriber: Subscriber,
    /// One permit per message asked for and not yet arrived.
    outstanding: Option<OwnedSemaphorePermit>,
    /// The requests that may still be open: number, size (oldest first). Forgotten once their
    /// expiry has surely passed; a request filled in full gets no status to end it.
    requests: VecDeque<(u64, usize, Instant)>,
    next_request: u64,
    /// The connection's connect count when the requests were sent: a reconnect loses them.
    connects: u64,
    /// When the inbox last heard from the server while something was outstanding.
    last_heard: Instant,
    threshold: usize,
    /// The consumer's own caps on a request.
    max_batch: usize,
    expires: Duration,
    /// The consumer's stream and name: a delivery's ack subject must name both.
    stream: String,
    consumer: String,
    /// When a forged delivery was last logged.
    forged_logged: Option<Instant>,
}

impl Puller {
    /// Subscribes to a fresh inbox for `consumer`'s messages.
    pub async fn new(
        client: async_nats::Client,
        context: jetstream::Context,
        consumer: &PullConsumer,
        concurrency: usize,
    ) -> anyhow::Result<Self> {
        let info = consumer.cached_info();
        let request_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            info.stream_name, info.name
        );
        let max_batch = usize::try_from(info.config.max_batch)
            .ok()
            .filter(|&b| b > 0)
            .unwrap_or(usize::MAX);
        let expires = match info.config.max_expires {
            max if max.is_zero() => PULL_EXPIRES,
            max => max.min(PULL_EXPIRES),
        };
        let inbox = client.new_inbox();
        let subscriber = client.subscribe(format!("{inbox}.*")).await?;
        let connects = connects(&client);
        Ok(Puller {
            client,
            context,
            request_subject,
            inbox,
            subscriber,
            outstanding: None,
            requests: VecDeque::new(),
            next_request: 0,
            connects,
            last_heard: Instant::now(),
            threshold: Self::threshold(concurrency),
            max_batch,
            expires,
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            forged_logged: None,
        })
    }

    /// Whether `message` is a delivery of this consumer: its reply is an ack subject naming
    /// the consumer's stream and name. Anyone who may publish to the inbox could send one with
    /// any reply; the host would run the handler on it and send its ack (or its `+TERM`) to
    /// the forged reply, acking another consumer's message or writing to a KV key.
    fn is_ours(&mut self, message: &jetstream::Message) -> bool {
        let ours = message
            .info()
            .is_ok_and(|info| info.stream == self.stream && info.consumer == self.consumer);
        if !ours
            && self
                .forged_logged
                .is_none_or(|at| at.elapsed() > FORGED_LOG_INTERVAL)
        {
            self.forged_logged = Some(Instant::now());
            tracing::warn!(
                stream = %self.stream,
                consumer = %self.consumer,
                reply = ?message.reply,
                "a message on the pull inbox that is not a delivery of this consumer: dropped, \
                 not acked (logged once a minute)"
            );
        }
        ours
    }

    /// The fewest free slots worth a request while others are outstanding: one for small
    /// concurrencies, an eighth of the slots for large ones.
    pub fn threshold(concurrency: usize) -> usize {
        (concurrency / 8).clamp(1, 64)
    }

    /// How many free slots to wait for before the next request.
    pub fn wanted(&self) -> usize {
        if self.outstanding() == 0 {
            1
        } else {
            self.threshold.min(self.max_batch)
        }
    }

    /// Messages asked for and not yet arrived.
    pub fn outstanding(&self) -> usize {
        self.outstanding
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Asks for as many messages as `slots` holds (at most the consumer's `max_batch`; the rest
    /// go back); the slots stay outstanding until their messages arrive or the request ends.
    pub async fn request(&mut self, mut slots: OwnedSemaphorePermit) -> anyhow::Result<()> {
        if slots.num_permits() > self.max_batch {
            drop(slots.split(slots.num_permits() - self.max_batch));
        }
        self.forget_lost();
        let batch = slots.num_permits();
        let body = format!(
            r#"{{"batch":{batch},"expires":{}}}"#,
            self.expires.as_nanos()
        );
        let number = self.next_request;
        self.next_request += 1;
        self.client
            .publish_with_reply(
                self.request_subject.clone(),
                Subject::from(format!("{}.{number}", self.inbox)),
                body.into(),
            )
            .await?;
        let now = Instant::now();
        if self.outstanding() == 0 {
            self.last_heard = now;
        }
        // A request is over by its expiry; forget those that surely are.
        while self
            .requests
            .front()
            .is_some_and(|&(_, _, sent)| now > sent + self.expires + LOST_AFTER)
        {
            self.requests.pop_front();
        }
        self.requests.push_back((number, batch, now));
        match &mut self.outstanding {
            Some(held) => held.merge(slots),
            None => self.outstanding = Some(slots),
        }
        Ok(())
    }

    /// After a reconnect the server has forgotten the requests (a request it tried to serve
    /// while the inbox had no subscription is dropped without a word): start over.
    fn forget_lost(&mut self) -> bool {
        let now = connects(&self.client);
        if now == self.connects {
            return false;
        }
        self.connects = now;
        if self.outstanding() > 0 {
            tracing::debug!(
                outstanding = self.outstanding(),
                "reconnected: the open pull requests are taken as lost"
            );
        }
        self.reset();
        true
    }

    /// Nothing asked for is expected any more.
    fn reset(&mut self) {
        self.outstanding = None;
        self.requests.clear();
    }

    /// Waits for the next message. Status replies are accounted for here; requests lost with
    /// a dropped connection are detected by a reconnect or by their silence, and their slots
    /// freed. Cancel-safe.
    pub async fn next(&mut self) -> Pulled {
        loop {
            if self.forget_lost() {
                return Pulled::Released;
            }
            let received = if self.outstanding() > 0 {
                let deadline = self.last_heard + self.expires + LOST_AFTER;
                match tokio::time::timeout_at(deadline, self.subscriber.next()).await {
                    Ok(received) => received,
                    Err(_) => {
                        tracing::debug!(
                            outstanding = self.outstanding(),
                            "pull requests unanswered past their expiry: taken as lost"
                        );
                        self.reset();
                        return Pulled::Released;
                    }
                }
            } else {
                self.subscriber.next().await
            };
            let Some(message) = received else {
                return Pulled::Closed;
            };
            self.last_heard = Instant::now();
            match message.status.unwrap_or(StatusCode::OK) {
                StatusCode::OK => {
                    let message = jetstream::Message {
                        message,
                        context: self.context.clone(),
                    };
                    if !self.is_ours(&message) {
                        continue;
                    }
                    let slot = self.outstanding.as_mut().and_then(|held| {
                        if held.num_permits() == 1 {
                            None
                        } else {
                            held.split(1)
                        }
                    });
                    let slot = match slot {
                        Some(slot) => Some(slot),
                        None => self.outstanding.take(),
                    };
                    return match slot {
                        Some(slot) => Pulled::Message(message, slot),
                        None => Pulled::Unrequested(message),
                    };
                }
                StatusCode::IDLE_HEARTBEAT => continue,
                status => {
                    let description = message.description.unwrap_or_default();
                    let pending = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Nats-Pending-Messages"))
                        .and_then(|v| v.as_str().parse::<usize>().ok());
                    // No responders: nothing serves the consumer's pull subject any more.
                    let gone = status == StatusCode::NO_RESPONDERS
                        || description == "Consumer Deleted"
                        || description == "Consumer is push based"
                        || status == StatusCode::NOT_FOUND && description.contains("Consumer");
                    // The request this status ends, by its reply subject `INBOX.N`.
                    let request = message
                        .subject
                        .rsplit('.')
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .and_then(|n| self.requests.iter().position(|&(r, _, _)| r == n))
                        .and_then(|i| self.requests.remove(i));
                    let refused = description.starts_with("Exceeded Max");
                    match (pending, request) {
                        _ if gone => {
                            self.reset();
                            return Pulled::ConsumerGone(format!("{status} {description}"));
                        }
                        // A request ended with this many messages not sent: free their slots.
                        (Some(pending), Some(_)) => {
                            self.release(pending);
                            return Pulled::Released;
                        }
                        // Of a request already given up (after a reset): nothing is held.
                        (Some(_), None) => continue,
                        // Refused as a whole on arrival: nothing of it was sent, free its
                        // slots; the other requests stay open.
                        (None, Some((_, size, _))) if refused => {
                            tracing::debug!(%status, description, size, "pull request refused");
                            self.release(size);
                            return Pulled::Refused(format!("{status} {description}"));
                        }
                        _ => {
                            // Ended without saying what it did not send (a leadership change...):
                            // start over; what still comes is given back.
                            tracing::debug!(%status, description, "pull requests ended");
                            self.reset();
                            return Pulled::Refused(format!("{status} {description}"));
                        }
                    }
                }
            }
        }
    }

    /// Frees `n` outstanding slots.
    fn release(&mut self, n: usize) {
        let Some(held) = &mut self.outstanding else {
            return;
        };
        if n >= held.num_permits() {
            self.outstanding = None;
        } else {
            drop(held.split(n));
        }
    }

    /// Stops asking: waits (at most one request expiry and a little) for the messages already
    /// asked for, handing each to `give_back`, then unsubscribes.
    pub async fn drain(mut self, mut give_back: impl FnMut(jetstream::Message)) {
        let deadline = Instant::now() + self.expires + Duration::from_millis(500);
        while self.outstanding() > 0 {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Ok(Pulled::Message(message, _) | Pulled::Unrequested(message)) => {
                    give_back(message);
                }
                Ok(Pulled::Released | Pulled::Refused(_)) => {}
                Ok(Pulled::ConsumerGone(_) | Pulled::Closed) | Err(_) => break,
            }
        }
        if let Err(e) = self.subscriber.unsubscribe().await {
            tracing::debug!(error = %e, "cannot unsubscribe the pull inbox");
        }
    }
}

/// How many times `client` has connected.
fn connects(client: &async_nats::Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}
