//! The host's shutdown signal. `stop` begins a graceful shutdown: workers stop pulling and
//! in-flight messages go on (heartbeats included). `abort` ends it: whatever is still in a
//! handler is nak'ed at once so another host picks it up. Every long-lived task selects on it.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal with two stages: stop, then abort.
#[derive(Clone, Default, Debug)]
pub struct Shutdown {
    stop: CancellationToken,
    abort: CancellationToken,
}

impl Shutdown {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the graceful shutdown.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Whether the graceful shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Resolves once the graceful shutdown has begun.
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Ends the graceful period: in-flight work gives up its messages (implies stop).
    pub fn abort(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }

    /// Resolves once the graceful period is over.
    pub async fn aborting(&self) {
        self.abort.cancelled().await;
    }
}

/// Resolves on the first SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                }
                return;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the host")
            }
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
