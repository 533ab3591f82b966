//! The host: [`run`] connects the consumer side and the publisher pool, serves the plugins
//! folder (watching it for changes), answers the control plane, and on shutdown stops pulling,
//! waits up to `graceful_timeout` for in-flight messages, naks the rest, closes the
//! connections and flushes the trace exporter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::capability::Services;
use crate::config::HostConfig;
use crate::delivery::cores::Cores;
use crate::delivery::publisher::Publisher;
use crate::metrics::Metrics;
use crate::plugins::{Change, Registry, SETTLE_TIME};
use crate::runtime::Runtime;
use crate::shutdown::Shutdown;
use crate::traces::Traces;
use crate::{connection, control, reload, source};

/// How long aborted messages get to send their nak after the graceful period.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Runs the host until `shutdown` stops it.
pub async fn run(config: HostConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let traces = Traces::start(&config.tracing)?;
    let result = serve(config, shutdown, traces.clone()).await;
    // Whatever the end, the spans so far are exported while the runtime still runs.
    traces.shutdown().await;
    result
}

async fn serve(config: HostConfig, shutdown: Shutdown, traces: Traces) -> anyhow::Result<()> {
    let host_id = config.host.host_id();
    let metrics = Arc::new(Metrics::new());
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        client: OnceLock::new(),
        cores: OnceLock::new(),
        registry: OnceLock::new(),
        loaded: AtomicBool::new(false),
        shutdown: shutdown.clone(),
    });
    // The admin listener answers (not ready) before anything else is up, and until the end.
    let admin_stop = CancellationToken::new();
    let admin_task = match config.admin.listen {
        Some(addr) => Some(admin::serve(addr, admin.clone(), admin_stop.clone()).await?),
        None => None,
    };
    anyhow::ensure!(
        config.host.bucket.is_some() || config.host.plugins.is_dir(),
        "the plugins folder {:?} does not exist",
        config.host.plugins
    );
    let client = connection::connect_with(&config.nats, "consumer", Some(metrics.clone())).await?;
    // With a bucket, its current versions go into the folder before anything loads, and every
    // later change follows.
    let (mirror, refusals) = match &config.host.bucket {
        None => (None, source::Refusals::default()),
        Some(bucket) => {
            let js = async_nats::jetstream::new(client.clone());
            let store = source::open(&js, bucket, true).await?;
            let mut mirror = source::Mirror::new(
                store,
                config.host.plugins.clone(),
                crate::bounded::Bound::plugin(config.runtime.max_plugin_bytes),
                host_id.clone(),
            );
            mirror.sync_all().await?;
            let refusals = mirror.refusals();
            (Some(tokio::spawn(mirror.run(shutdown.clone()))), refusals)
        }
    };
    // Capabilities (`[request]`, `[kv]`) on a connection of their own: a guest waiting on a
    // slow service never holds up the consumer's pulls, heartbeats and acks.
    let capabilities = connection::connect_with(
        &config.nats,
        connection::CAPABILITIES,
        Some(metrics.clone()),
    )
    .await?;
    let runtime = Runtime::new(config.runtime.runtime_config())?
        .with_services(Services::new(capabilities.clone(), Some(metrics.clone())));
    let _ = admin.client.set(client.clone());
    let publisher =
        Arc::new(Publisher::connect(&config.nats, &config.publisher, metrics.clone()).await?);
    // One core thread per runtime worker thread, for the JetStream shards.
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    let cores =
        Arc::new(Cores::start(threads, &config.nats, &config.publisher, metrics.clone()).await?);
    let _ = admin.cores.set(cores.clone());
    let tracker = TaskTracker::new();
    let registry = Arc::new(
        Registry::new(
            runtime,
            config.host.plugins.clone(),
            client.clone(),
            publisher.clone(),
            shutdown.clone(),
            tracker.clone(),
            metrics.clone(),
        )
        .with_traces(traces)
        .with_cores(cores.clone())
        .with_dead_letter_stream(config.host.dead_letter_stream.clone())
        .with_mirror_refusals(refusals),
    );
    let _ = admin.registry.set(registry.clone());
    // Files still being written are looked at again until they settle.
    while registry
        .sync(None, false)
        .await
        .iter()
        .any(|r| r.change == Change::Waiting)
    {
        tokio::time::sleep(SETTLE_TIME).await;
    }
    admin.loaded.store(true, Ordering::Relaxed);
    let watcher = reload::watch(registry.clone(), shutdown.clone())?;
    let control = control::serve(
        client.clone(),
        host_id.clone(),
        registry.clone(),
        shutdown.clone(),
    )
    .await?;
    let plugins = registry.list();
    tracing::info!(host = %host_id, plugins = plugins.len(), failed = plugins.iter().filter(|p| p.error.is_some()).count(), "host started");

    shutdown.stopping().await;
    tracker.close();
    let graceful = config.host.graceful_timeout;
    tracing::info!(
        tasks = tracker.len(),
        ?graceful,
        "stopping: no more pulls, waiting for in-flight messages"
    );
    if tokio::time::timeout(graceful, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tracker.len(),
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
    let _ = tokio::join!(watcher, control);
    if let Some(mirror) = mirror {
        let _ = mirror.await;
    }
    publisher.close().await;
    cores.close().await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "cannot drain the consumer connection");
    }
    if let Err(e) = capabilities.drain().await {
        tracing::warn!(error = %e, "cannot drain the capabilities connection");
    }
    admin_stop.cancel();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    tracing::info!(host = %host_id, "host stopped");
    Ok(())
}
