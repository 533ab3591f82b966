//! Core threads: one per worker thread of the host's runtime, each running a current-thread
//! tokio runtime with its own consumer connection and its own publisher connection. A plugin's
//! JetStream shards run on them (consecutive cores from a rotating start), so a message is
//! pulled, handled, published and acked on one thread, and no wake-up crosses threads on its
//! way. Everything else (core NATS subscriptions, the admin endpoints, reloads, and handlers
//! that run long) stays on the host's multi-thread runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;

use crate::config::{NatsConfig, PublisherConfig};
use crate::connection;
use crate::delivery::publisher::Publisher;
use crate::metrics::Metrics;

/// How long closing a core waits for its connections to flush.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a core's runtime keeps running after its consumer connection is asked to drain.
const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// The host's core threads. Dropping them stops the threads (without flushing: see
/// [`close`](Cores::close)).
pub struct Cores {
    cores: Vec<Core>,
    /// The first core of the next plugin's shards, so that small plugins spread.
    next: AtomicUsize,
    /// The host's multi-thread runtime, where a handler that runs long goes.
    main: tokio::runtime::Handle,
}

/// One core thread and what runs on it.
pub struct Core {
    /// Spawns onto this core's runtime.
    pub handle: tokio::runtime::Handle,
    /// The consumer connection of the shards on this core (role `core-N`).
    pub client: async_nats::Client,
    /// The publisher of the shards on this core (one connection, role `core-N-publisher-0`).
    pub publisher: Arc<Publisher>,
    /// Taken by [`Cores::close`].
    stop: std::sync::Mutex<Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl Cores {
    /// Starts `count` core threads (at least one) and connects each.
    pub async fn start(
        count: usize,
        nats: &NatsConfig,
        publisher: &PublisherConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut cores = Vec::new();
        for n in 0..count.max(1) {
            let (handle_tx, handle_rx) = oneshot::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("natsplug-core-{n}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    // Drives every task spawned on this core until the host closes it.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })
                .context("cannot start a core thread")?;
            let handle = handle_rx
                .await
                .context("a core thread ended at start")?
                .context("cannot build a core's runtime")?;
            let role = format!("core-{n}");
            let (nats, publisher, metrics) = (nats.clone(), publisher.clone(), metrics.clone());
            // Connected from the core's runtime, so their connection tasks run on it.
            let (client, publisher) = handle
                .spawn(async move {
                    let client =
                        connection::connect_with(&nats, &role, Some(metrics.clone())).await?;
                    let one = PublisherConfig {
                        connections: 1,
                        ..publisher
                    };
                    let publisher =
                        Publisher::connect_as(&format!("{role}-publisher"), &nats, &one, metrics)
                            .await?;
                    anyhow::Ok((client, Arc::new(publisher)))
                })
                .await
                .context("a core's connections panicked")??;
            cores.push(Core {
                handle,
                client,
                publisher,
                stop: std::sync::Mutex::new(Some((stop, thread))),
            });
        }
        Ok(Self {
            cores,
            next: AtomicUsize::new(0),
            main: tokio::runtime::Handle::current(),
        })
    }

    /// The core of a plugin's first shard: the next one in turn.
    pub fn first(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.cores.len()
    }

    /// The host's multi-thread runtime.
    pub fn main(&self) -> &tokio::runtime::Handle {
        &self.main
    }

    /// Whether every core's connections are up.
    pub fn connected(&self) -> bool {
        self.cores
            .iter()
            .all(|core| connection::is_up(&core.client) && core.publisher.connected())
    }

    /// How many cores there are.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Core number `n` (modulo their count).
    pub fn get(&self, n: usize) -> &Core {
        &self.cores[n % self.cores.len()]
    }

    /// Flushes and drains every core's connections (each within [`CLOSE_TIMEOUT`]), then stops
    /// its thread. Call it once the shards are done.
    pub async fn close(&self) {
        for core in &self.cores {
            let closing = async {
                core.publisher.close().await;
                if let Err(e) = core.client.flush().await {
                    tracing::warn!(error = %e, "cannot flush a core's consumer connection");
                }
                if let Err(e) = core.client.drain().await {
                    tracing::warn!(error = %e, "cannot drain a core's consumer connection");
                }
                // Everything is flushed; `drain` only queues its unsubscribes, which the core's
                // runtime, still running, writes in a moment. (async-nats tells a drain's end
                // only as an event, and the connection state stays `Connected`.)
                tokio::time::sleep(DRAIN_GRACE).await;
            };
            if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
                tracing::warn!("a core's connections did not close in time");
            }
            if let Some((stop, thread)) = core.take_stop() {
                let _ = stop.send(());
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        for core in &self.cores {
            if let Some((stop, _)) = core.take_stop() {
                let _ = stop.send(());
            }
        }
    }
}

impl Core {
    fn take_stop(&self) -> Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
