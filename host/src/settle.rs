//! What becomes of an input once its handler has answered: [`decide`] maps the answer (or the
//! limit it hit) and the delivery count to a [`Decision`] under the plugin's policy. It is a
//! pure function; the consumer carries the decision out (publish then ack, nak with a delay, or
//! dead-letter then term) and says what it did as a [`Settled`] (a span's `outcome`). Dead
//! letters carry headers saying why ([`dead_letter_headers`]).

use std::time::Duration;

use crate::manifest::{LimitAction, Manifest};
use crate::message::{Headers, Message, Output};
use crate::runtime::{HandlerError, LimitKind, Outcome};

/// Header names on dead-lettered messages.
pub mod header {
    /// The plugin that gave up on the message.
    pub const PLUGIN: &str = "Natsplug-Plugin";
    /// Why, in words.
    pub const REASON: &str = "Natsplug-Reason";
    /// The kind: reject, fuel, deadline, memory, panic, trap, retries-exhausted, publish...
    pub const KIND: &str = "Natsplug-Error-Kind";
    /// Deliveries so far.
    pub const DELIVERED: &str = "Natsplug-Delivered";
    /// The input's stream.
    pub const STREAM: &str = "Natsplug-Stream";
    /// The input's stream sequence.
    pub const SEQUENCE: &str = "Natsplug-Sequence";
    /// The input's subject.
    pub const SUBJECT: &str = "Natsplug-Subject";
    /// Set when the input was too large to dead-letter whole: its payload size. The original
    /// is still in its stream at `Natsplug-Stream` / `Natsplug-Sequence`.
    pub const PAYLOAD_OMITTED: &str = "Natsplug-Payload-Omitted";
}

/// What the host does with an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Publish these outputs, wait for every publish ack, then ack the input.
    Publish(Vec<Output>),
    /// Nak the input; the server redelivers it after the delay.
    Nak {
        /// How long the server waits before redelivering.
        delay: Duration,
        /// Why.
        reason: String,
    },
    /// Publish the input to the dead-letter subject, then terminate it.
    DeadLetter {
        /// The kind, for the `Natsplug-Error-Kind` header.
        kind: String,
        /// Why.
        reason: String,
    },
}

/// What the consumer did with an input in the end; a failure keeps its kind and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Outputs stored, input acked.
    Acked,
    /// A core NATS message's outputs published (there is nothing to ack).
    Published,
    /// Nak'ed: the server delivers it again (the handler asked, or its outputs, or its dead
    /// letter, were not stored).
    Retried {
        /// `retry`, `publish`, `dead-letter`, or the limit hit (`deadline`...).
        kind: String,
        /// Why.
        reason: String,
    },
    /// Published to the dead-letter subject (or, for a core message, at least tried), then
    /// terminated.
    DeadLettered {
        /// As in the `Natsplug-Error-Kind` header.
        kind: String,
        /// Why.
        reason: String,
    },
    /// A core NATS message that failed; it is not redelivered, a requester gets the error.
    Failed {
        /// As in the `Natsplug-Error-Kind` header of the error reply.
        kind: String,
        /// Why.
        reason: String,
    },
    /// Still in a handler at the end of the graceful period: nak'ed for another host.
    GivenBack,
}

impl Settled {
    /// The outcome's name: acked, published, retried, dead-lettered, failed, given-back.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Acked => "acked",
            Self::Published => "published",
            Self::Retried { .. } => "retried",
            Self::DeadLettered { .. } => "dead-lettered",
            Self::Failed { .. } => "failed",
            Self::GivenBack => "given-back",
        }
    }

    /// The kind and reason of a failure; none when the input was handled.
    pub fn failure(&self) -> Option<(&str, &str)> {
        match self {
            Self::Acked | Self::Published => None,
            Self::Retried { kind, reason }
            | Self::DeadLettered { kind, reason }
            | Self::Failed { kind, reason } => Some((kind, reason)),
            Self::GivenBack => Some((
                "shutdown",
                "still in a handler at the end of the graceful period",
            )),
        }
    }
}

/// Decides what becomes of an input after delivery number `delivered` (1-based).
pub fn decide(
    result: Result<Outcome, HandlerError>,
    delivered: u64,
    manifest: &Manifest,
) -> Decision {
    let retry = |reason: String, delay: Option<Duration>| {
        if is_last_delivery(delivered, manifest) {
            Decision::DeadLetter {
                kind: "retries-exhausted".into(),
                reason: format!("gave up after {delivered} deliveries: {reason}"),
            }
        } else {
            Decision::Nak {
                delay: delay.unwrap_or_else(|| manifest.retry.delay_for(delivered)),
                reason,
            }
        }
    };
    match result {
        Ok(Outcome::Success(outputs)) => Decision::Publish(outputs),
        Ok(Outcome::Retry { reason, delay }) => retry(reason, delay),
        Ok(Outcome::Reject { reason }) => Decision::DeadLetter {
            kind: "reject".into(),
            reason,
        },
        Err(error) => {
            let policy = &manifest.retry;
            let action = match error.limit() {
                LimitKind::Fuel => policy.on_fuel,
                LimitKind::Deadline => policy.on_deadline,
                LimitKind::Memory => policy.on_memory,
                LimitKind::Trap => policy.on_trap,
            };
            match action {
                LimitAction::Retry => retry(error.to_string(), None),
                LimitAction::DeadLetter => Decision::DeadLetter {
                    kind: error.kind().into(),
                    reason: error.to_string(),
                },
            }
        }
    }
}

/// Whether the server will not deliver the message again after this delivery.
pub fn is_last_delivery(delivered: u64, manifest: &Manifest) -> bool {
    let max = manifest.subscribe.as_ref().map_or(5, |s| s.max_deliver);
    max > 0 && delivered >= max as u64
}

/// `text` as a header value: one line.
pub fn header_value(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}

/// The headers of `input`'s dead letter: `keep` (its own headers, or none) plus the
/// `Natsplug-*` headers saying why. The input's `Nats-*` headers are left out: the dead-letter
/// stream would act on them (`Nats-Expected-Stream: IN` would make the store fail every time,
/// `Nats-Rollup` would purge earlier dead letters). So are its `Natsplug-*` headers, in any
/// case: a sender must not forge why its message was dead-lettered.
pub fn dead_letter_headers(
    plugin: &str,
    keep: &Headers,
    input: &Message,
    kind: &str,
    reason: &str,
) -> async_nats::HeaderMap {
    use crate::policy::headers::{is_the_hosts, steers_the_server};
    let kept = keep
        .0
        .iter()
        .filter(|(name, _)| !is_the_hosts(name) && !steers_the_server(name));
    let mut headers = Headers(kept.cloned().collect()).to_nats();
    headers.insert(header::PLUGIN, plugin);
    headers.insert(header::KIND, kind);
    headers.insert(header::REASON, header_value(reason).as_str());
    headers.insert(header::SUBJECT, input.subject.as_str());
    let delivered = input.delivered();
    headers.insert(header::DELIVERED, delivered.to_string().as_str());
    if let Some(d) = &input.delivery {
        headers.insert(header::STREAM, d.stream.as_str());
        headers.insert(header::SEQUENCE, d.stream_sequence.to_string().as_str());
    }
    headers
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn manifest(extra: &str) -> Manifest {
        Manifest::parse(
            &format!("[subscribe]\nstream = \"S\"\nsubjects = [\"s\"]\nmax_deliver = 3\n{extra}"),
            Path::new("m.toml"),
        )
        .unwrap()
    }

    fn nak(secs: f64, reason: &str) -> Decision {
        Decision::Nak {
            delay: Duration::from_secs_f64(secs),
            reason: reason.into(),
        }
    }

    #[test]
    fn retries_follow_the_backoff_then_dead_letter_on_the_last_delivery() {
        let m = manifest("[retry]\nbackoff = [\"1s\", \"7s\"]\n");
        let retry = || {
            Ok(Outcome::Retry {
                reason: "busy".into(),
                delay: None,
            })
        };
        assert_eq!(decide(retry(), 1, &m), nak(1.0, "busy"));
        assert_eq!(decide(retry(), 2, &m), nak(7.0, "busy"));
        assert_eq!(
            decide(retry(), 3, &m),
            Decision::DeadLetter {
                kind: "retries-exhausted".into(),
                reason: "gave up after 3 deliveries: busy".into()
            }
        );
        let own = Ok(Outcome::Retry {
            reason: "x".into(),
            delay: Some(Duration::from_millis(42)),
        });
        assert_eq!(decide(own, 1, &m), nak(0.042, "x"));
    }

    #[test]
    fn limits_follow_the_policy() {
        let m = manifest("");
        let fuel = Err(HandlerError::OutOfFuel {
            plugin: "p".into(),
            fuel: 9,
        });
        assert!(matches!(decide(fuel, 1, &m), Decision::DeadLetter { kind, .. } if kind == "fuel"));
        let deadline = || {
            Err(HandlerError::Deadline {
                plugin: "p".into(),
                deadline: Duration::from_secs(1),
            })
        };
        assert_eq!(
            decide(deadline(), 1, &m),
            nak(1.0, "plugin \"p\" passed its deadline of 1s")
        );
        assert!(
            matches!(decide(deadline(), 3, &m), Decision::DeadLetter { kind, .. } if kind == "retries-exhausted")
        );
        let m = manifest("[retry]\non_trap = \"retry\"\n");
        let panic = Err(HandlerError::Panic {
            plugin: "p".into(),
            message: "boom".into(),
        });
        assert_eq!(
            decide(panic, 1, &m),
            nak(1.0, "plugin \"p\" panicked: boom")
        );
    }

    #[test]
    fn a_dead_letter_keeps_none_of_the_inputs_server_or_host_headers() {
        let mut input = Message::new("in.x", "p");
        for (name, value) in [
            ("keep", "yes"),
            ("Nats-Expected-Stream", "OTHER"),
            ("nats-rollup", "all"),
            ("natsplug-reason", "forged"),
            ("Natsplug-Payload-Omitted", "0"),
        ] {
            input.headers.append(name, value);
        }
        let headers = dead_letter_headers("p", &input.headers, &input, "reject", "real");
        let mut names: Vec<String> = headers.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "Natsplug-Delivered",
                "Natsplug-Error-Kind",
                "Natsplug-Plugin",
                "Natsplug-Reason",
                "Natsplug-Subject",
                "keep"
            ]
        );
        assert_eq!(headers.get(header::REASON).unwrap().as_str(), "real");
    }

    #[test]
    fn reject_dead_letters_at_once() {
        let m = manifest("");
        assert_eq!(
            decide(
                Ok(Outcome::Reject {
                    reason: "bad".into()
                }),
                1,
                &m
            ),
            Decision::DeadLetter {
                kind: "reject".into(),
                reason: "bad".into()
            }
        );
    }
}
