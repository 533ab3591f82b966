//! The admin HTTP listener (off unless `admin.listen` is set): `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (connected, every subscription bound,
//! plugins loaded, and not shutting down — so a Kubernetes rollout stops sending work first).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::plugins::Registry;
use crate::shutdown::Shutdown;

/// What the admin endpoints look at; filled in as the host starts.
pub struct Admin {
    /// The host's metrics.
    pub metrics: Arc<Metrics>,
    /// The consumer connection, once created.
    pub client: OnceLock<async_nats::Client>,
    /// The core threads' connections, once connected.
    pub cores: OnceLock<Arc<crate::delivery::cores::Cores>>,
    /// The plugins, once created.
    pub registry: OnceLock<Arc<Registry>>,
    /// Set once the first sync of the plugins folder is done.
    pub loaded: AtomicBool,
    /// The host's shutdown signal: not ready once it stops.
    pub shutdown: Shutdown,
}

impl Admin {
    /// Why the host is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        if self.shutdown.is_stopping() {
            return Some("shutting down".into());
        }
        match self.client.get() {
            Some(c) if crate::connection::is_up(c) => {}
            _ => return Some("not connected to NATS".into()),
        }
        if self.cores.get().is_some_and(|cores| !cores.connected()) {
            return Some("a core thread's connection to NATS is down".into());
        }
        if !self.loaded.load(Ordering::Relaxed) {
            return Some("plugins not loaded yet".into());
        }
        let registry = self.registry.get()?;
        let unbound = registry.unbound();
        (!unbound.is_empty()).then(|| format!("subscriptions not bound: {}", unbound.join(", ")))
    }
}

/// Serves the admin endpoints on `addr` until `stop` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    admin: Arc<Admin>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the admin endpoints"))?;
    tracing::info!(%addr, "admin endpoints: /metrics /healthz /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(admin);
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the admin listener failed");
        }
    }))
}

async fn metrics(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        admin.metrics.encode(),
    )
}

async fn ready(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    match admin.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
