//! Ack-progress heartbeats. While a message is in the host's hands (handler, publishing its
//! outputs, settling), a task of its own sends `+WPI` every interval (a fraction of ack_wait), and
//! at once when the guest calls `in-progress`. It does not depend on the guest: a handler that
//! never asks still keeps its message alive, and one that loops is stopped by its own limits.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use tokio::sync::Notify;

use crate::runtime::InProgress;
use prometheus_client::metrics::counter::Counter;

/// A running heartbeat; it stops when dropped.
pub struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    nudge: Arc<Notify>,
}

impl Heartbeat {
    /// Starts sending ack-progress for `acker` every `interval`, counted in `sent`.
    pub fn start(acker: Arc<Acker>, interval: Duration, sent: Counter) -> Self {
        let nudge = Arc::new(Notify::new());
        let task = tokio::spawn({
            let nudge = nudge.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = nudge.notified() => {}
                    }
                    match acker.ack_with(AckKind::Progress).await {
                        Ok(()) => {
                            sent.inc();
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot send ack-progress"),
                    }
                }
            }
        });
        Self { task, nudge }
    }

    /// The hook the guest's `in-progress` calls: a heartbeat right now.
    pub fn in_progress(&self) -> InProgress {
        let nudge = self.nudge.clone();
        Arc::new(move || nudge.notify_one())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
