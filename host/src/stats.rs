//! Per-plugin counters, kept by the consumer side and read by the control plane (`natsplug
//! list`) and the metrics endpoint. Plain atomics: cheap on the hot path, read without locks.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// What happened to one plugin's messages on this host.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Messages in a handler or being settled right now.
    pub in_flight: AtomicI64,
    /// Inputs whose outputs were stored and that were acked.
    pub processed: AtomicU64,
    /// Inputs nak'ed for a retry.
    pub retried: AtomicU64,
    /// Inputs dead-lettered and terminated.
    pub dead_lettered: AtomicU64,
    /// Deliveries with a delivery count above 1.
    pub redelivered: AtomicU64,
    /// Ack-progress heartbeats sent.
    pub heartbeats: AtomicU64,
}

impl PluginStats {
    /// Adds one to a counter.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            processed: self.processed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
        }
    }

    /// Marks a message in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

/// Counts one message in flight while alive.
pub struct InFlight<'a>(&'a PluginStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The counters at one moment, as the control plane reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Messages in flight.
    pub in_flight: u64,
    /// Inputs acked after their outputs were stored.
    pub processed: u64,
    /// Inputs nak'ed for a retry.
    pub retried: u64,
    /// Inputs dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries with a delivery count above 1.
    pub redelivered: u64,
    /// Ack-progress heartbeats sent.
    pub heartbeats: u64,
}
