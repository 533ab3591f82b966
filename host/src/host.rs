//! The host: [`run`] loads the plugins folder, connects the consumer side and the publisher
//! pool, runs one worker per plugin, and on shutdown stops pulling, waits up to
//! `graceful_timeout` for in-flight messages, naks the rest and closes the connections.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::HostConfig;
use crate::consumer::Worker;
use crate::publisher::Publisher;
use crate::runtime::Runtime;
use crate::shutdown::Shutdown;
use crate::{connection, plugins};

/// How long aborted messages get to send their nak after the graceful period.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the host until `shutdown` stops it.
pub async fn run(config: HostConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let host_id = config.host.host_id();
    let runtime = Runtime::new(config.runtime.runtime_config())?;
    let dir = &config.host.plugins;
    let (loaded, _failed) = plugins::load_folder(&runtime, dir)
        .with_context(|| format!("cannot read the plugins folder {dir:?}"))?;
    let client = connection::connect(&config.nats, "consumer").await?;
    let publisher = Arc::new(Publisher::connect(&config.nats, &config.publisher).await?);
    tracing::info!(host = %host_id, plugins = loaded.len(), "host started");

    let tracker = TaskTracker::new();
    let mut versions = Vec::new();
    for plugin in loaded {
        if plugin.manifest().subscribe.is_none() {
            tracing::info!(
                plugin = plugin.name(),
                "no [subscribe] in its manifest: loaded, not subscribed"
            );
            continue;
        }
        let (tx, rx) = watch::channel(plugin);
        versions.push(tx);
        let worker = Worker {
            plugin: rx,
            publisher: publisher.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(worker.run(client.clone()));
    }

    shutdown.stopping().await;
    tracker.close();
    let graceful = config.host.graceful_timeout;
    tracing::info!(
        in_flight = tracker.len(),
        ?graceful,
        "stopping: no more pulls, waiting for in-flight messages"
    );
    if tokio::time::timeout(graceful, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tracker.len(),
            "graceful timeout reached: nak'ing what is left"
        );
        shutdown.abort();
        if tokio::time::timeout(ABORT_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("some messages did not settle after the abort");
        }
    }
    publisher.close().await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "cannot drain the consumer connection");
    }
    drop(versions);
    tracing::info!(host = %host_id, "host stopped");
    Ok(())
}
