//! The decision: [`decide`] maps a handler's answer (or the limit it hit) and the delivery
//! count to a [`Decision`] under the plugin's policy and its [`DeliveryLimit`]. A pure function;
//! [`super`] carries it out and says what it did as a [`Settled`].

use std::time::Duration;

use crate::manifest::{LimitAction, Manifest};
use crate::message::Output;
use crate::runtime::{HandlerError, LimitKind, Outcome};

/// How many deliveries an input gets, and who counts them.
///
/// A consumer the host creates has no server-side limit (`max_deliver = -1`): the host counts,
/// so an input whose last delivery could not be settled (its dead letter not stored, its host
/// killed, a panic in the host) comes back and is dead-lettered on arrival. A bound consumer's
/// limit is its own (read from its info) and the server enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLimit {
    /// Deliveries allowed; 0 or less is no limit.
    pub max_deliver: i64,
    /// Whether the server gives up after `max_deliver` (a bound consumer), or the host does.
    pub server_enforced: bool,
}

impl DeliveryLimit {
    /// The host-owned limit of a consumer the host creates from `manifest`.
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            max_deliver: manifest.subscribe.as_ref().map_or(5, |s| s.max_deliver),
            server_enforced: false,
        }
    }

    /// Whether a nak after delivery `delivered` (1-based) gets no handler run again: it is the
    /// last one allowed.
    pub fn is_last(&self, delivered: u64) -> bool {
        self.max_deliver > 0 && delivered >= self.max_deliver.unsigned_abs()
    }

    /// Whether delivery `delivered` is past the limit: the last allowed one ended unsettled.
    pub fn is_past(&self, delivered: u64) -> bool {
        self.max_deliver > 0 && delivered > self.max_deliver.unsigned_abs()
    }
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
    /// The host could not run the handler (no instance to be had, a full output pool): not the
    /// guest's failure, so never a dead letter. Nak'ed for later; on the last allowed delivery
    /// the handler is tried again here after the delay instead.
    HostFault {
        /// How long to wait before the next try.
        delay: Duration,
        /// The kind (`instantiate`, `host-output-limit`).
        kind: String,
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

/// What the host did with an input in the end; a failure keeps its kind and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Outputs stored, input acked.
    Acked,
    /// A core NATS message's outputs published (there is nothing to ack).
    Published,
    /// Nak'ed: the server delivers it again (the handler asked, or its outputs, or its dead
    /// letter, were not stored, or the host could not run it).
    Retried {
        /// `retry`, `publish`, `dead-letter`, `instantiate`, or the limit hit (`deadline`...).
        kind: String,
        /// Why.
        reason: String,
    },
    /// Its dead letter stored, then terminated.
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
    /// Nak'ed for another host: pulled while this one stopped, or still in a handler at the end
    /// of the graceful period.
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
            Self::GivenBack => Some(("shutdown", "given back to the server for another host")),
        }
    }
}

/// Decides what becomes of an input after delivery number `delivered` (1-based).
pub fn decide(
    result: Result<Outcome, HandlerError>,
    delivered: u64,
    limit: DeliveryLimit,
    manifest: &Manifest,
) -> Decision {
    let retry = |reason: String, delay: Option<Duration>| {
        if limit.is_last(delivered) {
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
        Err(error) if error.is_host_fault() => Decision::HostFault {
            delay: manifest.retry.delay_for(delivered).max(HOST_FAULT_DELAY),
            kind: error.kind().into(),
            reason: error.to_string(),
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

/// The least wait before an input the host could not run is tried again.
const HOST_FAULT_DELAY: Duration = Duration::from_millis(100);

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

    fn limit(m: &Manifest) -> DeliveryLimit {
        DeliveryLimit::of(m)
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
        assert_eq!(decide(retry(), 1, limit(&m), &m), nak(1.0, "busy"));
        assert_eq!(decide(retry(), 2, limit(&m), &m), nak(7.0, "busy"));
        assert_eq!(
            decide(retry(), 3, limit(&m), &m),
            Decision::DeadLetter {
                kind: "retries-exhausted".into(),
                reason: "gave up after 3 deliveries: busy".into()
            }
        );
        let own = Ok(Outcome::Retry {
            reason: "x".into(),
            delay: Some(Duration::from_millis(42)),
        });
        assert_eq!(decide(own, 1, limit(&m), &m), nak(0.042, "x"));
    }

    #[test]
    fn limits_follow_the_policy() {
        let m = manifest("");
        let fuel = Err(HandlerError::OutOfFuel {
            plugin: "p".into(),
            fuel: 9,
        });
        assert!(
            matches!(decide(fuel, 1, limit(&m), &m), Decision::DeadLetter { kind, .. } if kind == "fuel")
        );
        let deadline = || {
            Err(HandlerError::Deadline {
                plugin: "p".into(),
                deadline: Duration::from_secs(1),
            })
        };
        assert_eq!(
            decide(deadline(), 1, limit(&m), &m),
            nak(1.0, "plugin \"p\" passed its deadline of 1s")
        );
        assert!(
            matches!(decide(deadline(), 3, limit(&m), &m), Decision::DeadLetter { kind, .. } if kind == "retries-exhausted")
        );
        let m = manifest("[retry]\non_trap = \"retry\"\n");
        let panic = Err(HandlerError::Panic {
            plugin: "p".into(),
            message: "boom".into(),
        });
        assert_eq!(
            decide(panic, 1, limit(&m), &m),
            nak(1.0, "plugin \"p\" panicked: boom")
        );
    }

    #[test]
    fn host_faults_are_never_dead_lettered() {
        let m = manifest("");
        for delivered in [1, 3, 9] {
            let full = Err(HandlerError::Instantiate {
                plugin: "p".into(),
                message: "pool".into(),
            });
            assert!(
                matches!(decide(full, delivered, limit(&m), &m), Decision::HostFault { kind, .. } if kind == "instantiate")
            );
        }
    }

    #[test]
    fn the_limit_counts_from_one() {
        let host = DeliveryLimit::of(&manifest(""));
        assert!(!host.is_last(2) && host.is_last(3) && !host.is_past(3) && host.is_past(4));
        let none = DeliveryLimit {
            max_deliver: -1,
            server_enforced: false,
        };
        assert!(!none.is_last(u64::MAX) && !none.is_past(u64::MAX));
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
                limit(&m),
                &m
            ),
            Decision::DeadLetter {
                kind: "reject".into(),
                reason: "bad".into()
            }
        );
    }
}
