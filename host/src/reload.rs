//! Hot reload: watches the plugins folder and syncs the registry once the folder has been quiet
//! for [`DEBOUNCE`]. A file still being written (modified within the registry's settle time) is
//! looked at again after another quiet period, and a partial file never loads: it is not a valid
//! component, so the previous version keeps serving until the write completes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::plugins::{Change, Registry};
use crate::shutdown::Shutdown;

/// Quiet time after the last change in the folder before it is synced.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the registry's folder until shutdown.
pub fn watch(
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (events, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The receiver is gone only when the host stops.
        let _ = events.send(event.map(|_| ()));
    })
    .context("cannot create a file watcher")?;
    watcher
        .watch(registry.dir(), RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {:?}", registry.dir()))?;
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        loop {
            tokio::select! {
                event = changes.recv() => match event {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "file watcher error"),
                    None => return,
                },
                _ = shutdown.stopping() => return,
            }
            // Wait for the folder to be quiet, then sync; again while a file is being written.
            loop {
                loop {
                    tokio::select! {
                        _ = changes.recv() => continue,
                        _ = tokio::time::sleep(DEBOUNCE) => break,
                        _ = shutdown.stopping() => return,
                    }
                }
                let results = registry.sync(None, false).await;
                for r in &results {
                    if r.change != Change::Unchanged {
                        tracing::info!(plugin = %r.plugin, change = ?r.change, version = ?r.version, error = ?r.error, "plugins folder synced");
                    }
                }
                if !results.iter().any(|r| r.change == Change::Waiting) {
                    break;
                }
            }
        }
    }))
}
