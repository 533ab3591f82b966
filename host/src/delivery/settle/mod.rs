//! What becomes of an input, decided and carried out in one place. Every input ends in one of
//! three states:
//!
//! - **acked, with every output stored** (publish acks in) first;
//! - **dead-lettered**: its dead letter stored (cut to fit if it must be), then terminated;
//! - **back on the server** for another delivery (nak'ed, or left to its ack_wait).
//!
//! [`decide`] maps the handler's answer and the delivery count to a [`Decision`]; a [`Settler`]
//! carries it out (publish then ack, nak with a delay, dead-letter then term) and says what it
//! did as a [`Settled`] (a span's `outcome`). A core NATS message has nothing to ack: its
//! outputs are published, and a failure is answered to its requester.
//!
//! Nothing here relies on the server giving up silently: the host counts deliveries against
//! the plugin's [`DeliveryLimit`], and a dead letter that could not be stored is tried again
//! until it is.

mod dead_letter;
mod decide;

use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;

pub use dead_letter::{CUT_MARKER, DeadLetter, ensure_stored, header, header_value};
pub use decide::{Decision, DeliveryLimit, Settled, decide};

use crate::backoff::Backoff;
use crate::delivery::publisher::{PublishError, Publisher};
use crate::manifest::AckMode;
use crate::message::{Message, Output};
use crate::metrics::PluginMetrics;
use crate::policy;
use crate::runtime::Plugin;
use crate::shutdown::Shutdown;

/// The nak delay of a message given back: longer than [`crate::delivery::pull::PULL_EXPIRES`],
/// so its redelivery goes to another pull request, not back into one being drained.
pub const GIVE_BACK_DELAY: Duration = Duration::from_secs(2);
/// The dead-letter kind of a message delivered past its limit.
pub const DELIVERY_LIMIT: &str = "delivery-limit";
/// The dead-letter kind of a message a bound consumer's server gave up on.
pub const MAX_DELIVERIES: &str = "max-deliveries";
/// The dead-letter kind of a message this host gave back on its last allowed delivery.
pub const GIVEN_BACK: &str = "given-back";
/// Tries at a confirmed ack.
const CONFIRM_ATTEMPTS: u32 = 3;
/// Longest wait between tries to store a dead letter on a last delivery.
const MAX_DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);

/// Carries out decisions for one plugin version's inputs.
pub struct Settler<'a> {
    /// The version the input was handled by.
    pub plugin: &'a Plugin,
    /// Where outputs and dead letters go.
    pub publisher: &'a Publisher,
    /// The plugin's metrics.
    pub metrics: &'a PluginMetrics,
    /// The deliveries the input gets.
    pub limit: DeliveryLimit,
    /// The host's shutdown: a dead letter tried again on a last delivery gives up at its end.
    pub shutdown: &'a Shutdown,
}

impl Settler<'_> {
    /// Carries out `decision` for a JetStream input.
    pub async fn jetstream(&self, input: &Message, acker: &Acker, decision: Decision) -> Settled {
        let delivered = input.delivered();
        let manifest = self.plugin.manifest();
        match decision {
            Decision::Publish(outputs) => match self.publish_outputs(input, &outputs).await {
                Ok(()) => {
                    self.metrics.acked.inc();
                    let confirmed =
                        manifest.subscribe.as_ref().map(|s| s.ack) == Some(AckMode::Confirmed);
                    // A lost ack on the last delivery would bring it back past its limit, to be
                    // dead-lettered though its outputs are stored: that one is confirmed.
                    if confirmed || self.limit.is_last(delivered) {
                        self.confirm(acker).await;
                    } else {
                        send(acker, AckKind::Ack).await;
                    }
                    Settled::Acked
                }
                Err(e) if e.is_permanent() || self.limit.is_last(delivered) => {
                    self.dead_letter_and_term(input, acker, "publish", &e.to_string())
                        .await
                }
                Err(e) => {
                    let delay = manifest.retry.delay_for(delivered);
                    tracing::warn!(error = %e, ?delay, "outputs not stored; the input is nak'ed, not acked");
                    self.metrics.retried.inc();
                    nak(acker, delay).await;
                    Settled::Retried {
                        kind: "publish".into(),
                        reason: e.to_string(),
                    }
                }
            },
            Decision::Nak { delay, reason } => {
                tracing::info!(%reason, ?delay, "retry");
                self.metrics.retried.inc();
                nak(acker, delay).await;
                Settled::Retried {
                    kind: "retry".into(),
                    reason,
                }
            }
            Decision::HostFault {
                delay,
                kind,
                reason,
            } => {
                tracing::warn!(%reason, ?delay, "the host could not run the handler; nak'ed for later");
                self.metrics.host_fault(&kind);
                nak(acker, delay).await;
                Settled::Retried { kind, reason }
            }
            Decision::DeadLetter { kind, reason } => {
                self.dead_letter_and_term(input, acker, &kind, &reason)
                    .await
            }
        }
    }

    /// Acks and waits for the server to confirm it, trying a few times.
    async fn confirm(&self, acker: &Acker) {
        for attempt in 1..=CONFIRM_ATTEMPTS {
            match acker.double_ack().await {
                Ok(()) => return,
                Err(e) if attempt == CONFIRM_ATTEMPTS => {
                    tracing::warn!(error = %e, "ack not confirmed; a redelivery will find its outputs deduplicated");
                }
                Err(e) => tracing::debug!(error = %e, attempt, "ack not confirmed; again"),
            }
        }
    }

    /// Stores the dead letter of `input`, then terminates it. One that cannot be stored is
    /// nak'ed before its last delivery (the next one runs the handler again). On the last one
    /// it is tried again here, the caller's heartbeat keeping the input alive, until it is
    /// stored, keeping its kind and reason; if the host must stop first, it is nak'ed (a
    /// created consumer's input comes back past its limit and is dead-lettered on arrival).
    pub async fn dead_letter_and_term(
        &self,
        input: &Message,
        acker: &Acker,
        kind: &str,
        reason: &str,
    ) -> Settled {
        let delivered = input.delivered();
        let last = self.limit.is_last(delivered) || self.limit.is_past(delivered);
        let stored = if last {
            self.store_until(input, kind, reason, self.shutdown.aborting())
                .await
        } else {
            self.store_once(input, kind, reason).await
        };
        match stored {
            Ok(()) => {
                send(acker, AckKind::Term).await;
                Settled::DeadLettered {
                    kind: kind.to_owned(),
                    reason: reason.to_owned(),
                }
            }
            Err(error) => {
                tracing::error!(error = %error, kind, reason, "cannot store the dead letter; nak'ed to try again");
                nak(acker, self.plugin.manifest().retry.delay_for(delivered)).await;
                Settled::Retried {
                    kind: "dead-letter".into(),
                    reason: format!("{kind}: {reason}; the dead letter was not stored: {error}"),
                }
            }
        }
    }

    /// Stores the dead letter of an input the server no longer delivers (there is nothing to
    /// ack), trying again with backoff until it is stored or the host stops.
    pub async fn store_dead_letter(&self, input: &Message, kind: &str, reason: &str) {
        // A failure is logged on every try; the host is stopping.
        let _ = self
            .store_until(input, kind, reason, self.shutdown.stopping())
            .await;
    }

    /// Stores the dead letter of `input` once, counted and logged.
    async fn store_once(
        &self,
        input: &Message,
        kind: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        self.dead_letter(input, kind, reason).await?;
        tracing::warn!(kind, reason, "dead-lettered");
        self.metrics.dead_letter(kind);
        Ok(())
    }

    /// [`store_once`](Self::store_once), tried again with backoff until it succeeds or
    /// `give_up` fires (the last error then).
    async fn store_until(
        &self,
        input: &Message,
        kind: &str,
        reason: &str,
        give_up: impl Future<Output = ()>,
    ) -> Result<(), PublishError> {
        let mut give_up = std::pin::pin!(give_up);
        let mut tries = 0;
        loop {
            tries += 1;
            let e = match self.store_once(input, kind, reason).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let delay = Backoff {
                first: Duration::from_millis(100),
                max: MAX_DEAD_LETTER_RETRY,
                jitter: true,
            }
            .delay(tries);
            tracing::error!(error = %e, kind, reason, ?delay, tries, "cannot store the dead letter; trying again");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut give_up => return Err(e),
            }
        }
    }

    /// Naks an input this host will not handle (pulled while it stops, beyond its free slots,
    /// cut short at the end of the graceful period). On its last allowed delivery a nak would
    /// spend it without a handler run, so it is dead-lettered (kind `given-back`) instead; past
    /// its limit it is dead-lettered as on any arrival.
    pub async fn give_back(&self, input: &Message, acker: &Acker, why: &str) -> Settled {
        let delivered = input.delivered();
        if self.limit.is_past(delivered) {
            let reason = format!(
                "{why}, delivered {delivered} times, past max_deliver {}",
                self.limit.max_deliver
            );
            return self
                .dead_letter_and_term(input, acker, DELIVERY_LIMIT, &reason)
                .await;
        }
        if self.limit.is_last(delivered) {
            let reason = format!("{why}, on its last allowed delivery");
            return self
                .dead_letter_and_term(input, acker, GIVEN_BACK, &reason)
                .await;
        }
        nak(acker, GIVE_BACK_DELAY).await;
        Settled::GivenBack
    }

    /// Carries out `decision` for a core NATS input and answers a failure to its requester.
    pub async fn core(&self, input: &Message, decision: Decision) -> Settled {
        let settled = match decision {
            Decision::Publish(outputs) => match self.publish_outputs(input, &outputs).await {
                Ok(()) => {
                    self.metrics.acked.inc();
                    Settled::Published
                }
                Err(e) => Settled::Failed {
                    kind: "publish".into(),
                    reason: e.to_string(),
                },
            },
            Decision::Nak { reason, .. } => Settled::Failed {
                kind: "retry".into(),
                reason: format!("{reason} (core NATS messages are not redelivered)"),
            },
            Decision::HostFault { kind, reason, .. } => {
                self.metrics.host_fault(&kind);
                Settled::Failed { kind, reason }
            }
            Decision::DeadLetter { kind, reason } => {
                match self.dead_letter(input, &kind, &reason).await {
                    Ok(()) => {
                        self.metrics.dead_letter(&kind);
                        Settled::DeadLettered { kind, reason }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot store the dead letter");
                        Settled::Failed { kind, reason }
                    }
                }
            }
        };
        if let Some((kind, reason)) = settled.failure() {
            tracing::warn!(kind, reason, "core message failed");
            // A requester gets the failure at once instead of waiting for its timeout.
            if let Some(reply) = self.reply_to(input) {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(header::KIND, kind);
                headers.insert(header::REASON, header_value(reason).as_str());
                if let Err(e) = self
                    .publisher
                    .core(reply, headers, bytes::Bytes::new())
                    .await
                {
                    tracing::warn!(error = %e, "cannot send the error reply");
                }
            }
        }
        settled
    }

    /// Stores the dead letter of `input`, cut to fit if the server finds it too large.
    async fn dead_letter(
        &self,
        input: &Message,
        kind: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        let subject = self
            .plugin
            .manifest()
            .publish
            .dead_letter_subject(self.plugin.name());
        let mut letter = DeadLetter::new(self.plugin.name(), input, kind, reason);
        let id = letter.msg_id();
        loop {
            let stored = self
                .publisher
                .store(&subject, letter.headers(), letter.payload(), id.as_deref())
                .await;
            match stored {
                // The original stays in its stream at the sequence the headers name.
                Err(PublishError::TooLarge { .. }) if letter.cut() => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The reply subject of `input` if the host may answer there. A refused one (reserved
    /// space, outside `publish.reply_allow`, not a subject) is counted, logged at most once per
    /// plugin per interval, and the answer dropped: a requester must not make the host publish
    /// with its own credentials where the requester chose.
    fn reply_to<'m>(&self, input: &'m Message) -> Option<&'m str> {
        let reply = input.reply.as_deref()?;
        match policy::refuse_reply(reply, &self.plugin.grants().reply_allow) {
            Ok(()) => Some(reply),
            Err(denied) => {
                if self.metrics.denied(denied.kind(), 1) {
                    tracing::warn!(plugin = self.plugin.name(), error = %denied, "a reply dropped (logged once per plugin per minute)");
                }
                None
            }
        }
    }

    /// Publishes every output of `input` at once and waits for all of them. The outputs'
    /// `traceparent` is already set ([`crate::traces::MessageSpan::stamp`]).
    async fn publish_outputs(
        &self,
        input: &Message,
        outputs: &[Output],
    ) -> Result<(), PublishError> {
        let ids = MsgIds::of(input);
        match outputs {
            [] => Ok(()),
            // The common case, without the allocation and the moves of a join.
            [output] => self.publish_output(input, ids.of_output(0), output).await,
            outputs => {
                let publishes = outputs.iter().enumerate().map(|(index, output)| {
                    self.publish_output(input, ids.of_output(index), output)
                });
                futures::future::try_join_all(publishes).await.map(drop)
            }
        }
    }

    /// Publishes one output of `input`: its reply, a core subject, or stored under `id`.
    async fn publish_output(
        &self,
        input: &Message,
        id: String,
        output: &Output,
    ) -> Result<(), PublishError> {
        let headers = output.headers.to_nats();
        let payload = output.payload.clone();
        match output.subject.as_deref() {
            // The runtime only lets a reply through when the input has a reply subject; it goes
            // out only where the host may answer.
            None => match self.reply_to(input) {
                Some(reply) => self.publisher.core(reply, headers, payload).await,
                None => Ok(()),
            },
            Some(subject) if self.plugin.grants().is_core(subject) => {
                self.publisher.core(subject, headers, payload).await
            }
            Some(subject) => self
                .publisher
                .store(subject, headers, payload, Some(&id))
                .await
                .map(drop),
        }
    }
}

/// The `Nats-Msg-Id`s of an input's stored outputs, `BASE:INDEX`. A JetStream input's base
/// names its stream, its consumer and its stream sequence, so a redelivered input whose
/// outputs were stored publishes no duplicates, whatever host or plugin file handles it. A
/// core input's base is random, made once: the publisher's retries after a lost publish ack
/// reuse it.
pub struct MsgIds(String);

impl MsgIds {
    /// The ids of `input`'s outputs.
    pub fn of(input: &Message) -> Self {
        Self(match &input.delivery {
            Some(d) => format!("{}:{}:{}", d.stream, d.consumer, d.stream_sequence),
            None => format!("natsplug-core:{:032x}", rand::random::<u128>()),
        })
    }

    /// The id of output number `index`.
    pub fn of_output(&self, index: usize) -> String {
        format!("{}:{index}", self.0)
    }
}

/// Naks; a zero delay is a plain nak.
pub async fn nak(acker: &Acker, delay: Duration) {
    let delay = (!delay.is_zero()).then_some(delay);
    send(acker, AckKind::Nak(delay)).await;
}

/// Sends an ack of any kind; a failure is logged, not fatal (the server will redeliver).
pub async fn send(acker: &Acker, kind: AckKind) {
    if let Err(e) = acker.ack_with(kind).await {
        tracing::warn!(error = %e, ?kind, "cannot send ack");
    }
}
