//! Where a fleet's plugins come from: a NATS Object Store bucket (`host.bucket`). `natsplug
//! push` stores a plugin version, its component and manifest named by their content hash (the
//! version `natsplug list` shows), and makes it the current one; `natsplug rollout` and
//! `natsplug rollback` move the current pointer among the stored versions. A host mirrors each
//! plugin's current version into its plugins folder ([`Mirror`]), so the folder's watcher
//! hot-swaps it with the same zero-loss swap as a local change, and a version that fails to
//! load leaves the old one serving (`natsplug list` says why).
//!
//! Whoever can write the bucket controls what a host reads from it: every object is read within
//! a bound ([`crate::bounded`]): a component within `runtime.max_plugin_bytes`, a manifest within
//! 1 MiB, a pointer or history within 64 KiB, and a plugin name a host would not load is not
//! written to the folder. A refused version is not mirrored; the one in the folder keeps
//! serving, `natsplug list` says why ([`Refusals`]), and the mirror tries it again (after 1 s,
//! doubling to a minute), so a failure that passes heals without a new change in the bucket.
//!
//! The bucket, for a plugin NAME:
//! - `NAME/VERSION.wasm` and `NAME/VERSION.toml`: each stored version, the last [`HISTORY`];
//! - `NAME/history`: those versions, oldest first, one per line;
//! - `NAME/current`: the version hosts serve (deleted: the plugin is removed from every host);
//! - `NAME/current@HOST_ID`: a version pinned on one host (a canary), served there instead;
//!   a rollout to all hosts removes the pins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store::ObjectStore};
use futures::StreamExt as _;

use crate::backoff::Backoff;
use crate::bounded::Bound;
use crate::plugins::version_of;
use crate::shutdown::Shutdown;

/// Versions of a plugin a bucket keeps; older ones are deleted at push.
pub const HISTORY: usize = 10;

/// Opens the bucket, creating it (R1, file storage) when `create` and missing.
pub async fn open(
    js: &jetstream::Context,
    bucket: &str,
    create: bool,
) -> anyhow::Result<ObjectStore> {
    match js.get_object_store(bucket).await {
        Ok(store) => Ok(store),
        Err(_) if create => js
            .create_object_store(jetstream::object_store::Config {
                bucket: bucket.to_owned(),
                description: Some("natsplug plugins".into()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the plugins bucket {bucket:?}")),
        Err(e) => Err(e).with_context(|| format!("cannot open the plugins bucket {bucket:?}")),
    }
}

/// The largest pointer (`current`, a pin) or `history` object a host reads: a few versions.
const POINTER: Bound = Bound {
    bytes: 64 << 10,
    setting: "the pointer bound",
};

/// The longest a host waits for one object (or the bucket's listing): an object whose chunks
/// never come would otherwise stop the mirror for good.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads object `name`, refused from its stated size if that is past `bound` (and cut just
/// past it if it gives more), so whoever can write the bucket cannot fill a host's memory.
/// Links are refused, not followed: a link reads another object or another bucket with the
/// host's permissions, and a link to itself was followed for ever.
async fn read(store: &ObjectStore, name: &str, bound: Bound) -> anyhow::Result<Option<Vec<u8>>> {
    let read = async {
        let info = match store.info(name).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == jetstream::object_store::InfoErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(anyhow::Error::new(e)),
        };
        if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
            anyhow::bail!("a link; a host reads no links");
        }
        let object = match store.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(anyhow::Error::new(e)),
        };
        // Replaced between the two looks (by a link, say): read at its next change.
        if object.info.name != info.name || object.info.nuid != info.nuid {
            anyhow::bail!("replaced while it was read");
        }
        let size = object.info.size as u64;
        Ok(Some(crate::bounded::read_async(object, size, bound).await?))
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {READ_TIMEOUT:?}")))
        .with_context(|| format!("cannot read {name:?}"))
}

async fn write(store: &ObjectStore, name: &str, mut bytes: &[u8]) -> anyhow::Result<()> {
    store
        .put(name, &mut bytes)
        .await
        .with_context(|| format!("cannot store {name:?}"))?;
    Ok(())
}

async fn history(store: &ObjectStore, plugin: &str) -> anyhow::Result<Vec<String>> {
    let text = read(store, &format!("{plugin}/history"), POINTER)
        .await?
        .unwrap_or_default();
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect())
}

/// The version a plugin's hosts serve, if it has one.
pub async fn current(store: &ObjectStore, plugin: &str) -> anyhow::Result<Option<String>> {
    Ok(read(store, &format!("{plugin}/current"), POINTER)
        .await?
        .map(|v| String::from_utf8_lossy(&v).trim().to_owned()))
}

/// The version host `host_id` serves: its pin, else the plugin's current one.
pub async fn current_on(
    store: &ObjectStore,
    plugin: &str,
    host_id: &str,
) -> anyhow::Result<Option<String>> {
    match read(store, &pin(plugin, host_id), POINTER).await? {
        Some(v) => Ok(Some(String::from_utf8_lossy(&v).trim().to_owned())),
        None => current(store, plugin).await,
    }
}

fn pin(plugin: &str, host_id: &str) -> String {
    format!("{plugin}/current@{host_id}")
}

/// The name of every object in the bucket. An entry whose metadata does not decode is left
/// out (whoever writes the bucket can write any), not a failed listing, which would have kept
/// every host of the fleet from starting.
async fn names(store: &ObjectStore) -> anyhow::Result<Vec<String>> {
    let list = async {
        let mut list = store.list().await?;
        let mut names = Vec::new();
        let mut skipped = 0;
        while let Some(info) = list.next().await {
            match info {
                Ok(info) => names.push(info.name),
                Err(e) if skipped < MAX_SKIPPED => {
                    skipped += 1;
                    tracing::warn!(error = %e, "an entry of the plugins bucket left out");
                }
                Err(e) => return Err(anyhow::Error::new(e)),
            }
        }
        Ok(names)
    };
    tokio::time::timeout(READ_TIMEOUT, list)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no end in {READ_TIMEOUT:?}")))
        .context("cannot list the plugins bucket")
}

/// Entries of a listing left out before the listing itself fails.
const MAX_SKIPPED: usize = 1000;

/// Removes every host's pin of `plugin`.
async fn unpin_all(store: &ObjectStore, plugin: &str) -> anyhow::Result<()> {
    let prefix = format!("{plugin}/current@");
    let pins = names(store)
        .await?
        .into_iter()
        .filter(|n| n.starts_with(&prefix));
    for name in pins {
        store
            .delete(&name)
            .await
            .with_context(|| format!("cannot delete {name:?}"))?;
    }
    Ok(())
}

/// Stores a version of `plugin` (checked by the caller: it loads) and rolls it out (see
/// [`rollout`]: to every host, or pinned on `host_id`); returns its version. Storing a version
/// again keeps one copy.
pub async fn push(
    store: &ObjectStore,
    plugin: &str,
    wasm: &[u8],
    manifest: Option<&str>,
    host_id: Option<&str>,
) -> anyhow::Result<String> {
    crate::policy::refuse_invalid_name("the plugin name", plugin).map_err(anyhow::Error::msg)?;
    let version = version_of(wasm, manifest);
    // The manifest first: a host that sees the component finds its manifest already there.
    if let Some(manifest) = manifest {
        write(
            store,
            &format!("{plugin}/{version}.toml"),
            manifest.as_bytes(),
        )
        .await?;
    }
    write(store, &format!("{plugin}/{version}.wasm"), wasm).await?;
    let mut versions = history(store, plugin).await?;
    versions.retain(|v| v != &version);
    versions.push(version.clone());
    while versions.len() > HISTORY {
        let old = versions.remove(0);
        for ext in ["wasm", "toml"] {
            let _ = store.delete(format!("{plugin}/{old}.{ext}")).await;
        }
    }
    write(
        store,
        &format!("{plugin}/history"),
        versions.join("\n").as_bytes(),
    )
    .await?;
    rollout(store, plugin, &version, host_id).await?;
    Ok(version)
}

/// Makes a stored `version` of `plugin` the one every host serves (removing the hosts' pins),
/// or pins it on `host_id` alone.
pub async fn rollout(
    store: &ObjectStore,
    plugin: &str,
    version: &str,
    host_id: Option<&str>,
) -> anyhow::Result<()> {
    let versions = history(store, plugin).await?;
    anyhow::ensure!(
        versions.iter().any(|v| v == version),
        "{plugin} has no stored version {version:?} (stored: {})",
        versions.join(", ")
    );
    match host_id {
        Some(host) => write(store, &pin(plugin, host), version.as_bytes()).await,
        None => {
            write(store, &format!("{plugin}/current"), version.as_bytes()).await?;
            unpin_all(store, plugin).await
        }
    }
}

/// Removes the pin of `plugin` on `host_id`: the host serves the fleet's version again.
pub async fn unpin(store: &ObjectStore, plugin: &str, host_id: &str) -> anyhow::Result<()> {
    store
        .delete(pin(plugin, host_id))
        .await
        .with_context(|| format!("{plugin} has no pin on {host_id:?}"))
}

/// Makes the version stored before the current one current again; returns it.
pub async fn rollback(store: &ObjectStore, plugin: &str) -> anyhow::Result<String> {
    let versions = history(store, plugin).await?;
    let now = current(store, plugin)
        .await?
        .context("the plugin has no current version")?;
    let at = versions
        .iter()
        .position(|v| v == &now)
        .context("the current version is not in the history")?;
    let previous = at
        .checked_sub(1)
        .map(|i| versions[i].clone())
        .with_context(|| format!("{plugin} has no version before {now}"))?;
    rollout(store, plugin, &previous, None).await?;
    Ok(previous)
}

/// A file written beside its place in the folder, moved in by [`put`](Self::put) with a
/// rename, so the folder's watcher never sees half a file (dropped unput, it is removed). The
/// temporary file is new (a random hidden name, created exclusively): a link planted in the
/// folder under a name the host would write through is never followed.
struct Staged {
    file: tempfile::NamedTempFile,
    path: PathBuf,
}

impl Staged {
    fn write(path: &Path, bytes: &[u8]) -> std::io::Result<Self> {
        use std::io::Write as _;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut file = tempfile::Builder::new()
            .prefix(".natsplug-")
            .suffix(".tmp")
            .tempfile_in(dir)?;
        file.write_all(bytes)?;
        file.flush()?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    fn put(self) -> std::io::Result<()> {
        self.file.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The plugin a bucket object belongs to, if it is a pointer: `PLUGIN/current` or a pin
/// `PLUGIN/current@HOST_ID`.
fn plugin_of(object: &str) -> Option<&str> {
    let (plugin, pointer) = object.split_once('/')?;
    (pointer == "current" || pointer.starts_with("current@")).then_some(plugin)
}

/// Why the mirror left a plugin's current version out of the folder, by plugin: what `natsplug
/// list` shows for it until a later version is mirrored. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Refusals(Arc<std::sync::Mutex<BTreeMap<String, String>>>);

impl Refusals {
    /// Every plugin's refusal.
    pub fn get(&self) -> BTreeMap<String, String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // One insert or remove at a time: consistent if a holder panicked.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A host's copy of the bucket in its plugins folder.
pub struct Mirror {
    store: ObjectStore,
    dir: PathBuf,
    /// Components past it are not read (`runtime.max_plugin_bytes`).
    bound: Bound,
    host_id: String,
    /// The version written last, by plugin.
    served: BTreeMap<String, String>,
    refusals: Refusals,
    /// When each refused plugin is tried again, and how many times in a row it failed: a
    /// failure that passes (a lost connection, a pointer stored before its version's objects
    /// arrived) heals without a later change in the bucket.
    retries: BTreeMap<String, Retry>,
}

/// The next try of a refused plugin.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: tokio::time::Instant,
    failures: u32,
}

/// How a refused plugin is tried again: soon after a first failure, once a minute after many.
const RETRY: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: true,
};

impl Mirror {
    /// A mirror of `store` into `dir` for host `host_id`; nothing is written until
    /// [`sync_all`](Self::sync_all).
    pub fn new(store: ObjectStore, dir: PathBuf, bound: Bound, host_id: String) -> Self {
        Self {
            store,
            dir,
            bound,
            host_id,
            served: BTreeMap::new(),
            refusals: Refusals::default(),
            retries: BTreeMap::new(),
        }
    }

    /// What the mirror refused, for `natsplug list`.
    pub fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// Mirrors every plugin's current version into the folder once: what a host does before it
    /// loads.
    pub async fn sync_all(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // A plugin's pointer and its pins name it once.
        let plugins: std::collections::BTreeSet<String> = names(&self.store)
            .await?
            .iter()
            .filter_map(|n| plugin_of(n).map(str::to_owned))
            .collect();
        for plugin in plugins {
            self.sync(&plugin).await;
        }
        Ok(())
    }

    /// Follows the bucket until shutdown: every change of a plugin's current version is
    /// mirrored into the folder, where the folder's watcher picks it up.
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            let mut watch = match self.store.watch().await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the plugins bucket; trying again");
                    tokio::select! {
                        () = shutdown.stopping() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            // What changed while no watch was open.
            if let Err(e) = self.sync_all().await {
                tracing::warn!(error = format!("{e:#}"), "cannot mirror the plugins bucket");
            }
            loop {
                let retry = self.retries.values().map(|r| r.at).min();
                let event = tokio::select! {
                    () = shutdown.stopping() => return,
                    event = watch.next() => event,
                    () = crate::backoff::sleep_until(retry) => {
                        self.retry_due().await;
                        continue;
                    }
                };
                match event {
                    Some(Ok(info)) => {
                        if let Some(plugin) = plugin_of(&info.name) {
                            self.sync(plugin).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the plugins bucket's watch failed; watching again");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// Brings the folder in line with `plugin`'s current version, or says why not: in the log
    /// and, until a later version is mirrored, in `natsplug list`. The version in the folder
    /// keeps serving.
    /// A refusal is logged when it is new or its reason changed, not at every try.
    async fn sync(&mut self, plugin: &str) {
        match self.sync_one(plugin).await {
            Ok(()) => {
                self.refusals.lock().remove(plugin);
                self.retries.remove(plugin);
            }
            Err(e) => {
                let error = format!("cannot mirror from the bucket: {e:#}");
                let failures = self.retries.get(plugin).map_or(0, |r| r.failures) + 1;
                let at = tokio::time::Instant::now() + RETRY.delay(failures);
                self.retries
                    .insert(plugin.to_owned(), Retry { at, failures });
                let before = self
                    .refusals
                    .lock()
                    .insert(plugin.to_owned(), error.clone());
                if before.as_ref() != Some(&error) {
                    tracing::error!(plugin, %error, "the bucket's version is not served");
                }
            }
        }
    }

    /// Tries again every refused plugin whose time has come.
    async fn retry_due(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(plugin, _)| plugin.clone())
            .collect();
        for plugin in due {
            self.sync(&plugin).await;
        }
    }

    async fn sync_one(&mut self, plugin: &str) -> anyhow::Result<()> {
        let wasm_path = self.dir.join(format!("{plugin}.wasm"));
        let toml_path = self.dir.join(format!("{plugin}.toml"));
        let Some(version) = current_on(&self.store, plugin, &self.host_id).await? else {
            if self.served.remove(plugin).is_some() {
                let _ = std::fs::remove_file(&wasm_path);
                let _ = std::fs::remove_file(&toml_path);
                tracing::info!(plugin, "plugin removed from the bucket");
            }
            return Ok(());
        };
        if self.served.get(plugin) == Some(&version) {
            return Ok(());
        }
        // The name becomes a file name in the folder: only what a host would load.
        crate::policy::refuse_invalid_name("the plugin name", plugin)
            .map_err(anyhow::Error::msg)?;
        // Both read before either is written: a refused component leaves the folder as it was.
        let wasm = read(&self.store, &format!("{plugin}/{version}.wasm"), self.bound)
            .await?
            .with_context(|| format!("{plugin}: version {version} has no component"))?;
        let manifest = read(
            &self.store,
            &format!("{plugin}/{version}.toml"),
            Bound::MANIFEST,
        )
        .await?;
        // Both written beside their places before either moves in: a write that fails (a full
        // disk) leaves the folder as it was, not a new manifest beside the old component.
        let manifest = manifest
            .map(|m| Staged::write(&toml_path, &m))
            .transpose()?;
        let wasm = Staged::write(&wasm_path, &wasm)?;
        match manifest {
            Some(manifest) => manifest.put()?,
            None => {
                let _ = std::fs::remove_file(&toml_path);
            }
        }
        wasm.put()?;
        tracing::info!(plugin, %version, "plugin version mirrored from the bucket");
        self.served.insert(plugin.to_owned(), version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link planted under the temporary name the mirror once used is never written through.
    #[test]
    fn install_writes_through_no_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "mine").unwrap();
        for planted in [".up.wasm.tmp", ".natsplug-.tmp"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(planted)).unwrap();
        }
        let path = dir.path().join("up.wasm");
        Staged::write(&path, b"component").unwrap().put().unwrap();
        Staged::write(&path, b"component 2").unwrap().put().unwrap();
        // Written but never put (the other file of the pair failed): gone without a trace.
        drop(Staged::write(&dir.path().join("up.toml"), b"manifest").unwrap());
        assert_eq!(std::fs::read(&victim).unwrap(), b"mine");
        assert_eq!(std::fs::read(&path).unwrap(), b"component 2");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".natsplug-.tmp", ".up.wasm.tmp", "up.wasm", "victim"]
        );
    }
}
