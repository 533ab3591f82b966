//! The plugins folder and what the host serves from it. Every `NAME.wasm` (with `NAME.toml`
//! beside it as its manifest) is a plugin. [`Registry::sync`] brings the served set in line with
//! the folder: new files are loaded, changed ones replaced, removed ones unloaded.
//!
//! A new version is compiled and checked off the hot path (a blocking thread); if it fails, the
//! old version keeps serving and the error is kept for `natsplug list`. If it passes, new
//! messages go to it while messages already in a handler finish on the old one. A manifest
//! change that touches the subscription restarts the plugin's worker on the new settings, which
//! updates the durable consumer in place; in-flight messages are not affected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bounded::Bound;
use crate::delivery::consumer::Worker;
use crate::delivery::cores::Cores;
use crate::delivery::publisher::Publisher;
use crate::manifest::{Manifest, Subscribe};
use crate::metrics::{Metrics, PluginMetrics, ResultLabels, StatsSnapshot, VersionLabels};
use crate::runtime::{Plugin, Runtime};
use crate::shutdown::Shutdown;
use crate::traces::Traces;

/// A file modified more recently than this is still being written: it is looked at again later.
pub const SETTLE_TIME: Duration = Duration::from_millis(250);

/// The `*.wasm` files of a folder, smallest first (a 80 KB Rust plugin is served before a 19 MB
/// Python one has compiled), then by name. Hidden files (a copy in progress) are skipped.
pub fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "wasm")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX);
    files.sort_by_cached_key(|p| (size(p), p.clone()));
    Ok(files)
}

/// What one plugin looks like to `natsplug list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Plugin name (the file stem).
    pub name: String,
    /// The served version: 16 hex digits of the SHA-256 of the component and its manifest.
    pub version: Option<String>,
    /// When the served version was loaded (RFC 3339).
    pub loaded_at: Option<String>,
    /// Whether it has a running subscription.
    pub subscribed: bool,
    /// Its counters on this host.
    #[serde(flatten)]
    pub stats: StatsSnapshot,
    /// The last load error, if the file on disk could not be loaded.
    pub error: Option<String>,
}

/// What a sync did to one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// A new plugin is served.
    Loaded,
    /// A new version replaced the served one.
    Replaced,
    /// The file has not changed.
    Unchanged,
    /// The file is gone; its worker stops once its in-flight messages are done.
    Removed,
    /// The file could not be loaded; the previous version (if any) keeps serving.
    Failed,
    /// The file is still being written; it is looked at again shortly.
    Waiting,
}

/// The result of a sync for one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    /// Plugin name.
    pub plugin: String,
    /// What happened.
    pub change: Change,
    /// The version served afterwards.
    pub version: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

#[derive(Default)]
struct Entry {
    /// The served plugin; its receivers are the worker and its message tasks.
    current: Option<watch::Sender<Plugin>>,
    version: Option<String>,
    loaded_at: Option<SystemTime>,
    subscribe: Option<Subscribe>,
    /// Cancelled to retire the running worker.
    retire: Option<CancellationToken>,
    /// The stamp that failed to load, so an unchanged broken file is not recompiled every sync.
    failed_stamp: Option<String>,
    error: Option<String>,
    metrics: Option<PluginMetrics>,
    /// Set by the worker while its subscription is in place.
    bound: Arc<std::sync::atomic::AtomicBool>,
    /// Set by the worker while it cannot serve the plugin, and why.
    unserved: Arc<std::sync::Mutex<Option<String>>>,
}

/// The plugins a host serves, and their workers.
pub struct Registry {
    runtime: Runtime,
    dir: PathBuf,
    client: async_nats::Client,
    publisher: Arc<Publisher>,
    shutdown: Shutdown,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// The trace exporter every worker uses; none unless [`with_traces`](Self::with_traces).
    traces: Traces,
    /// Where JetStream shards run; none unless [`with_cores`](Self::with_cores).
    cores: Option<Arc<Cores>>,
    /// Why the bucket's mirror left versions out of the folder; empty unless
    /// [`with_mirror_refusals`](Self::with_mirror_refusals).
    refusals: crate::source::Refusals,
    /// Where dead letters no stream captures go; none unless
    /// [`with_dead_letter_stream`](Self::with_dead_letter_stream).
    dead_letter_stream: Option<String>,
    /// Serializes syncs; held while compiling.
    syncing: Mutex<()>,
    /// The plugins; held only briefly, so `list` never waits for a compile.
    entries: std::sync::Mutex<BTreeMap<String, Entry>>,
}

impl Registry {
    /// A registry serving `dir`; nothing is loaded until [`sync`](Self::sync).
    pub fn new(
        runtime: Runtime,
        dir: PathBuf,
        client: async_nats::Client,
        publisher: Arc<Publisher>,
        shutdown: Shutdown,
        tracker: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            runtime,
            dir,
            client,
            publisher,
            shutdown,
            tracker,
            metrics,
            traces: Traces::default(),
            cores: None,
            dead_letter_stream: None,
            refusals: crate::source::Refusals::default(),
            syncing: Mutex::default(),
            entries: std::sync::Mutex::default(),
        }
    }

    /// Makes every worker started from now on run its JetStream shards on `cores`.
    pub fn with_cores(mut self, cores: Arc<Cores>) -> Self {
        self.cores = Some(cores);
        self
    }

    /// Makes every worker started from now on store dead letters that no stream captures in
    /// `stream`, created if need be (`host.dead_letter_stream`).
    pub fn with_dead_letter_stream(mut self, stream: Option<String>) -> Self {
        self.dead_letter_stream = stream;
        self
    }

    /// Makes `list` show why the bucket's mirror left a plugin's current version out of the
    /// folder (with `host.bucket`).
    pub fn with_mirror_refusals(mut self, refusals: crate::source::Refusals) -> Self {
        self.refusals = refusals;
        self
    }

    /// Makes every worker started from now on trace its messages with `traces`.
    pub fn with_traces(mut self, traces: Traces) -> Self {
        self.traces = traces;
        self
    }

    /// The folder served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Brings the served plugins in line with the folder (all, or the one named `only`). With
    /// `force`, a file that failed before is tried again even if it has not changed.
    pub async fn sync(&self, only: Option<&str>, force: bool) -> Vec<ReloadResult> {
        let _syncing = self.syncing.lock().await;
        let files = match wasm_files(&self.dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the plugins folder");
                return Vec::new();
            }
        };
        let mut results = Vec::new();
        let mut present = Vec::new();
        for path in files {
            let name = crate::runtime::plugin_name(&path);
            present.push(name.clone());
            if only.is_some_and(|o| o != name) {
                continue;
            }
            results.push(self.sync_one(&name, &path, force).await);
        }
        let mut entries = self.entries();
        let gone: Vec<String> = entries
            .keys()
            .filter(|name| !present.contains(name) && only.is_none_or(|o| o == name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(entry) = entries.remove(&name) {
                if let Some(retire) = entry.retire {
                    retire.cancel();
                }
                self.count_reload(&name, Change::Removed, entry.version.as_deref(), None);
                tracing::info!(plugin = %name, "plugin removed: its worker stops after its in-flight messages");
                results.push(ReloadResult {
                    plugin: name,
                    change: Change::Removed,
                    version: None,
                    error: None,
                });
            }
        }
        // Each message in a handler holds an instance: more handlers than instances means host
        // faults (nak'ed inputs) under load, not lost ones, but worth saying.
        let concurrency: usize = entries
            .values()
            .filter_map(|e| e.subscribe.as_ref())
            .map(|s| s.concurrency.get())
            .sum();
        let instances = self.runtime.max_instances();
        if concurrency > instances as usize {
            tracing::warn!(
                concurrency,
                max_instances = instances,
                "the plugins' concurrency adds up to more than runtime.max_instances: under load some inputs will wait for an instance (nak'ed, counted in natsplug_host_faults_total)"
            );
        }
        results
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // The map stays consistent if a holder panicked: every update is a single assignment.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn sync_one(&self, name: &str, path: &Path, force: bool) -> ReloadResult {
        let result = |change, entry: &Entry| ReloadResult {
            plugin: name.to_owned(),
            change,
            version: entry.version.clone(),
            error: entry.error.clone(),
        };
        let manifest_path = path.with_extension("toml");
        let read = if [path, manifest_path.as_path()]
            .iter()
            .any(|p| recently_modified(p))
        {
            None
        } else {
            // Both within their bounds: a file past one is refused from its size, unread.
            let cannot = |path: &Path, e| format!("cannot read {}: {e}", path.display());
            Some((
                crate::bounded::read(path, self.runtime.plugin_bound())
                    .map_err(|e| cannot(path, e)),
                crate::bounded::read_text_if_present(&manifest_path, Bound::MANIFEST)
                    .map_err(|e| cannot(&manifest_path, e)),
            ))
        };
        let (wasm, manifest_text, stamp) = {
            let mut entries = self.entries();
            let entry = entries.entry(name.to_owned()).or_default();
            let (wasm, manifest_text) = match read {
                None => return result(Change::Waiting, entry),
                Some((Ok(wasm), Ok(manifest))) => (wasm, manifest),
                Some((Err(error), _) | (_, Err(error))) => {
                    // Said once, not at every look at the folder.
                    if entry.error.as_ref() != Some(&error) {
                        tracing::error!(plugin = name, %error, "plugin not loaded; the previous version keeps serving");
                        self.count_reload(name, Change::Failed, None, None);
                    }
                    entry.error = Some(error);
                    return result(Change::Failed, entry);
                }
            };
            let stamp = version_of(&wasm, manifest_text.as_deref());
            if entry.version.as_deref() == Some(stamp.as_str()) {
                // The served version is back (after a broken file): nothing is wrong with it.
                entry.failed_stamp = None;
                entry.error = None;
                return result(Change::Unchanged, entry);
            }
            if !force && entry.failed_stamp.as_deref() == Some(stamp.as_str()) {
                return result(Change::Failed, entry);
            }
            (wasm, manifest_text, stamp)
        };
        let compiled = self
            .compile(name, wasm, manifest_text, &manifest_path)
            .await;
        let mut entries = self.entries();
        let entry = entries.entry(name.to_owned()).or_default();
        match compiled {
            Ok(plugin) => {
                let change = if entry.current.is_some() {
                    Change::Replaced
                } else {
                    Change::Loaded
                };
                tracing::info!(plugin = name, version = %stamp, ?change, "plugin served");
                self.serve(entry, plugin);
                self.count_reload(name, change, entry.version.as_deref(), Some(&stamp));
                entry.version = Some(stamp);
                entry.loaded_at = Some(SystemTime::now());
                entry.failed_stamp = None;
                entry.error = None;
                result(change, entry)
            }
            Err(error) => {
                tracing::error!(plugin = name, file = %path.display(), %error, "plugin not loaded; the previous version keeps serving");
                entry.failed_stamp = Some(stamp);
                entry.error = Some(error);
                self.count_reload(name, Change::Failed, None, None);
                result(Change::Failed, entry)
            }
        }
    }

    /// Compiles and checks a plugin on a blocking thread (a large component takes seconds).
    async fn compile(
        &self,
        name: &str,
        wasm: Vec<u8>,
        manifest_text: Option<String>,
        manifest_path: &Path,
    ) -> Result<Plugin, String> {
        let manifest = match manifest_text {
            Some(text) => Manifest::parse(&text, manifest_path).map_err(|e| e.to_string())?,
            None => Manifest::default(),
        };
        let runtime = self.runtime.clone();
        let name = name.to_owned();
        let plugin = tokio::task::spawn_blocking(move || runtime.load(&name, &wasm, manifest))
            .await
            .map_err(|e| format!("the compile task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        plugin
            .open_capabilities()
            .await
            .map_err(|e| e.to_string())?;
        Ok(plugin)
    }

    /// Makes `plugin` the served version of `entry`.
    fn serve(&self, entry: &mut Entry, plugin: Plugin) {
        let name = plugin.name().to_owned();
        let subscribe = plugin.manifest().subscribe.clone();
        if let Some(current) = &entry.current
            && entry.subscribe == subscribe
        {
            // Same subscription: new messages take the new version; in-flight ones keep theirs.
            current.send_replace(plugin);
            return;
        }
        if let Some(retire) = entry.retire.take() {
            retire.cancel();
        }
        let (sender, receiver) = watch::channel(plugin);
        if subscribe.is_some() {
            let retire = CancellationToken::new();
            let worker = Worker {
                plugin: receiver,
                publisher: self.publisher.clone(),
                shutdown: self.shutdown.clone(),
                retire: retire.clone(),
                tracker: self.tracker.clone(),
                metrics: entry
                    .metrics
                    .get_or_insert_with(|| self.metrics.plugin(&name))
                    .clone(),
                bound: {
                    entry.bound = Arc::default();
                    entry.bound.clone()
                },
                unserved: {
                    entry.unserved = Arc::default();
                    entry.unserved.clone()
                },
                dead_letter_stream: self.dead_letter_stream.clone(),
                traces: self.traces.clone(),
                cores: self.cores.clone(),
                long_handlers: None,
            };
            self.tracker.spawn(worker.run(self.client.clone()));
            entry.retire = Some(retire);
        }
        entry.current = Some(sender);
        entry.subscribe = subscribe;
    }

    /// Counts a load in `natsplug_plugin_reloads_total` and moves `natsplug_plugin_info` from
    /// the old version to the new one.
    fn count_reload(&self, name: &str, change: Change, old: Option<&str>, new: Option<&str>) {
        let result = serde_json::to_value(change)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.metrics
            .reloads
            .get_or_create(&ResultLabels {
                plugin: name.to_owned(),
                result,
            })
            .inc();
        let info = |version: &str| VersionLabels {
            plugin: name.to_owned(),
            version: version.to_owned(),
        };
        if let Some(new) = new {
            if let Some(old) = old {
                self.metrics.plugin_info.remove(&info(old));
            }
            self.metrics.plugin_info.get_or_create(&info(new)).set(1);
        } else if change == Change::Removed
            && let Some(old) = old
        {
            self.metrics.plugin_info.remove(&info(old));
        }
    }

    /// Every plugin, served or failed, with its counters. A plugin whose current version in
    /// the bucket was not mirrored shows why, before any error of the version in the folder.
    pub fn list(&self) -> Vec<PluginInfo> {
        let mut refusals = self.refusals.get();
        let mut list: Vec<PluginInfo> = self
            .entries()
            .iter()
            .map(|(name, entry)| PluginInfo {
                name: name.clone(),
                version: entry.version.clone(),
                loaded_at: entry.loaded_at.map(rfc3339),
                subscribed: entry.retire.is_some(),
                stats: entry
                    .metrics
                    .as_ref()
                    .map(PluginMetrics::snapshot)
                    .unwrap_or_default(),
                error: refusals
                    .remove(name)
                    .or_else(|| entry.error.clone())
                    .or_else(|| {
                        entry
                            .unserved
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()
                    }),
            })
            .collect();
        // Plugins never in the folder: their first version was refused.
        list.extend(refusals.into_iter().map(|(name, error)| PluginInfo {
            name,
            version: None,
            loaded_at: None,
            subscribed: false,
            stats: StatsSnapshot::default(),
            error: Some(error),
        }));
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The subscribed plugins whose subscription is not in place (yet).
    pub fn unbound(&self) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|(_, e)| {
                e.retire.is_some() && !e.bound.load(std::sync::atomic::Ordering::Relaxed)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

fn recently_modified(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < SETTLE_TIME)
}

/// A plugin's version, as `natsplug list` and `natsplug validate` show it and the reload
/// metrics count it: 16 hex digits of the SHA-256 of the component and its manifest, so a
/// changed manifest is a new version too.
pub fn version_of(wasm: &[u8], manifest: Option<&str>) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(wasm);
    hash.update([0]);
    hash.update(manifest.unwrap_or_default().as_bytes());
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
