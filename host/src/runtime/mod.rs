//! The sandboxed WebAssembly runtime: compiles plugin components once, and runs a handler call
//! in a fresh `Store` and instance per message under the plugin's fuel, wall-clock and memory
//! limits. A call never blocks the async executor: the guest yields at every epoch tick, so
//! heartbeats and other handlers keep running on a 2-core machine.
//!
//! Layout:
//! - [`Runtime`]: the engine (pooling allocator, fuel, epoch ticker) and the linker.
//! - [`Plugin`]: one loaded plugin (manifest + pre-instantiated component); [`Plugin::handle`].
//! - `invocation`: the per-call store data and the host functions the guest imports.
//! - `guest_log`: the guest's stdout and stderr into the host's log.
//! - `error`: [`LoadError`], [`HandlerError`].

mod error;
mod guest_log;
mod invocation;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

pub use self::error::{HandlerError, LimitKind, LoadError};
use self::guest_log::cut;
pub use self::invocation::{Hooks, InProgress, OutputHold};
use self::invocation::{Invocation, OutputPool};
use crate::manifest::Manifest;
use crate::message::{Headers, Message, Output};
use crate::policy::Grants;

/// The bindings generated from `wit/natsplug.wit`.
mod bindings {
    wasmtime::component::bindgen!({
        world: "natsplug:plugin/plugin",
        path: "../wit",
        // `publish` traps when an output's headers or bytes are refused, so a guest cannot
        // ignore the refusal and go on.
        imports: { "natsplug:plugin/host.publish": trappable },
        exports: { default: async },
    });
}

/// How wasmtime's error begins when a lift passes the store's hostcall fuel.
const HOSTCALL_FUEL_EXHAUSTED: &str =
    "too much data is being copied between the host and the guest";

/// The longest redelivery delay a guest's `retry` may ask for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(24 * 60 * 60);

/// How often the epoch advances: the granularity of deadlines and of guest yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Written linear-memory bytes a freed instance slot resets in place and keeps resident for the
/// next instance; pages beyond that are released with madvise. At most the pool's 100 unused
/// warm slots hold such memory, so this bounds it to ~100 MiB (uppercase writes 12 KiB).
const MEMORY_KEEP_RESIDENT: usize = 1 << 20;
/// The same for tables: 64 KiB is 8192 funcref slots (uppercase's two tables use 84).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Settings of the engine, shared by every plugin of a host.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances alive at once, all plugins together (sum of concurrencies). Default: 1000.
    pub max_instances: u32,
    /// Largest memory limit a manifest may ask for. Default: 1 GiB.
    pub max_memory: u64,
    /// Output bytes held for all messages in flight together, all plugins: a handler whose
    /// output would pass it fails with `host-output-limit` and is retried. With the default
    /// per-message budget (16 MiB) it is what bounds a host at full concurrency. Default: 1 GiB.
    pub max_output_bytes: u64,
    /// Where compiled components are cached, keyed by content and engine settings, so a restart
    /// does not recompile them. Default: none (no cache).
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory: 1 << 30,
            max_output_bytes: 1 << 30,
            cache_dir: None,
        }
    }
}

/// The engine and linker shared by every plugin. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<Invocation>>,
    config: RuntimeConfig,
    cache: Option<wasmtime::Cache>,
    output_pool: OutputPool,
}

impl Runtime {
    /// Instances this runtime can hold at once (`runtime.max_instances`).
    pub fn max_instances(&self) -> u32 {
        self.config.max_instances
    }

    /// Builds the engine (pooling allocator sized by `config`) and starts its epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = config.max_instances;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(16))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_core_instances_per_component(64)
            .max_memories_per_component(16)
            .max_tables_per_component(32)
            .max_memory_size(usize::try_from(config.max_memory).unwrap_or(usize::MAX))
            .table_elements(100_000)
            // A freed table is reset by zeroing its used part in place instead of
            // madvise(DONTNEED): no TLB shootdown, and no page fault when the next instance
            // fills it. ~4 us less per call (tests/benches/call.rs, uppercase).
            .table_keep_resident(TABLE_KEEP_RESIDENT);
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            // A freed memory is reset by copying back only the pages the guest wrote, found
            // with the PAGEMAP_SCAN ioctl (Linux 6.7+), instead of madvise(DONTNEED) on all of
            // it: the next instance runs on resident pages. ~10 us less per call. Without the
            // scan, keep_resident would memset the lowest addresses, which a Rust guest barely
            // writes (its stack grows down from 1 MiB), so it stays 0 there.
            pool.pagemap_scan(Enabled::Auto)
                .linear_memory_keep_resident(MEMORY_KEEP_RESIDENT);
        }
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let cache = if let Some(dir) = &config.cache_dir {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            let cache = wasmtime::Cache::new(cache)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot use the compile cache {dir:?}"))?;
            wasm.cache(Some(cache.clone()));
            Some(cache)
        } else {
            None
        };
        let engine = Engine::new(&wasm)
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI to the linker")?;
        bindings::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("cannot add the host interface to the linker")?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            output_pool: OutputPool::new(config.max_output_bytes),
            config,
            cache,
        })
    }

    /// Compile-cache (hits, misses) since this runtime started; `None` without a cache.
    pub fn cache_stats(&self) -> Option<(usize, usize)> {
        self.cache
            .as_ref()
            .map(|c| (c.cache_hits(), c.cache_misses()))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles and checks a plugin from its bytes.
    pub fn load(&self, name: &str, wasm: &[u8], manifest: Manifest) -> Result<Plugin, LoadError> {
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::NotAComponent {
                plugin: name.to_owned(),
                reason: format!("{e:#}"),
            })?;
        self.prepare(name, component, manifest)
    }

    /// Reads `path` (`NAME.wasm`) and the manifest beside it, then loads it as plugin `NAME`.
    pub fn load_file(&self, path: &Path, manifest: Option<Manifest>) -> Result<Plugin, LoadError> {
        let name = plugin_name(path);
        let manifest = match manifest {
            Some(m) => m,
            None => Manifest::beside(path)?,
        };
        let wasm = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load(&name, &wasm, manifest)
    }

    fn prepare(
        &self,
        name: &str,
        component: Component,
        manifest: Manifest,
    ) -> Result<Plugin, LoadError> {
        // The name is the default durable and part of the dead-letter subject.
        crate::policy::refuse_invalid_name("the plugin name", name).map_err(|reason| {
            LoadError::Unsupported {
                plugin: name.to_owned(),
                reason,
            }
        })?;
        // A granted directory that is not there would fail every instance at once.
        if let Some(dir) = manifest.sandbox.dirs.iter().find(|d| !d.host.is_dir()) {
            return Err(LoadError::Unsupported {
                plugin: name.to_owned(),
                reason: format!(
                    "sandbox.dirs: {} is not a directory on this host",
                    dir.host.display()
                ),
            });
        }
        if manifest.limits.memory > self.config.max_memory {
            return Err(LoadError::Unsupported {
                plugin: name.to_owned(),
                reason: format!(
                    "limits.memory = {} bytes is more than this host's maximum of {} bytes",
                    manifest.limits.memory, self.config.max_memory
                ),
            });
        }
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            plugin: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(wrong_world)?;
        let pre = bindings::PluginPre::new(instance_pre).map_err(wrong_world)?;
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                name: name.into(),
                grants: Grants::new(&manifest.publish),
                manifest,
                output_pool: self.output_pool.clone(),
                pre,
                engine: self.engine.clone(),
                warm: std::sync::Mutex::default(),
            }),
        })
    }
}

/// The plugin name for a file: its stem (`uppercase` for `plugins/uppercase.wasm`).
pub fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] from a plain thread (it keeps ticking even
/// when every executor thread is busy) and exits once the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("natsplug-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker: deadlines will not interrupt busy guests");
    }
}

/// What a handler answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Publish these outputs (in order), then ack the input.
    Success(Vec<Output>),
    /// Nak the input; `delay` is the guest's own, else the backoff schedule applies.
    Retry {
        /// Why.
        reason: String,
        /// The guest's delay, if it named one.
        delay: Option<Duration>,
    },
    /// Dead-letter and terminate the input.
    Reject {
        /// Why.
        reason: String,
    },
}

/// One handler call, as [`Plugin::handle_metered`] reports it.
#[derive(Debug)]
pub struct Handled {
    /// What the handler answered, or why it did not.
    pub result: Result<Outcome, HandlerError>,
    /// Fuel consumed.
    pub fuel: u64,
    /// Policy refusals in the call by kind, with their count (a refused `publish` the guest
    /// went on from included), for `natsplug_policy_denials_total`.
    pub denials: Vec<(&'static str, u64)>,
    /// The outputs' bytes in the host-wide pool: hold it until they are published.
    pub held: OutputHold,
}

pub(crate) struct PluginInner {
    pub(crate) name: Arc<str>,
    pub(crate) manifest: Manifest,
    /// The manifest's `[publish]` grants, compiled.
    pub(crate) grants: Grants,
    /// The host-wide bound on pending output bytes.
    pub(crate) output_pool: OutputPool,
    pre: bindings::PluginPre<Invocation>,
    engine: Engine,
    /// Instances kept for reuse (`[instance] reuse` > 1), at most one per concurrent call.
    warm: std::sync::Mutex<Vec<Warm>>,
}

/// An instance kept for its next message, with the messages it has handled.
struct Warm {
    store: Store<Invocation>,
    instance: bindings::Plugin,
    uses: u32,
}

impl PluginInner {
    fn take_warm(&self) -> Option<Warm> {
        // The list is valid even if a holder panicked: pushes and pops are whole.
        self.warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_warm(&self, warm: Warm) {
        self.warm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(warm);
    }
}

/// A loaded plugin: its manifest and its pre-instantiated component. Cheap to clone; messages
/// in flight keep the version they started on.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

enum Failed {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// What its manifest grants, compiled.
    pub fn grants(&self) -> &Grants {
        &self.inner.grants
    }

    /// Runs the handler on one message in a fresh instance, under the manifest's limits.
    pub async fn handle(&self, message: &Message, hooks: Hooks) -> Result<Outcome, HandlerError> {
        self.handle_metered(message, hooks).await.result
    }

    /// [`handle`](Self::handle), also returning what the call cost and refused, and the
    /// output bytes it holds in the host's pool until the caller drops them.
    pub async fn handle_metered(&self, message: &Message, hooks: Hooks) -> Handled {
        let mut handled = Handled {
            result: Ok(Outcome::Success(Vec::new())),
            fuel: 0,
            denials: Vec::new(),
            held: OutputHold::default(),
        };
        handled.result = self.call(message, hooks, &mut handled).await;
        handled
    }

    /// A fresh store for one instance: the sandbox, the memory limiter, the epoch callback.
    fn new_store(&self) -> Result<Store<Invocation>, HandlerError> {
        let plugin = &self.inner;
        let state = Invocation::new(plugin.clone()).map_err(|e| HandlerError::Instantiate {
            plugin: plugin.name.to_string(),
            message: format!("cannot prepare the sandbox: {e:#}"),
        })?;
        let mut store = Store::new(&plugin.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }

    async fn call(
        &self,
        message: &Message,
        hooks: Hooks,
        handled: &mut Handled,
    ) -> Result<Outcome, HandlerError> {
        let plugin = &self.inner;
        let limits = &plugin.manifest.limits;
        let reuse = plugin.manifest.instance.reuse.get();
        // A warm instance (when the manifest opts in), else a fresh store.
        let warm = if reuse > 1 { plugin.take_warm() } else { None };
        let (mut store, warm_instance, uses) = match warm {
            Some(w) => (w.store, Some(w.instance), w.uses),
            None => (self.new_store()?, None, 0),
        };
        store.data_mut().begin(
            message.reply.is_some(),
            hooks,
            Instant::now() + limits.deadline,
        );
        let fuel = if limits.fuel == 0 {
            u64::MAX
        } else {
            limits.fuel
        };
        // Fuel is enabled on the engine, so setting it cannot fail.
        store.set_fuel(fuel).expect("fuel is enabled on the engine");
        // What wasmtime copies out of the guest in one host call or one result (lists and
        // strings, each one separately even when a guest points many at one buffer) is capped
        // by "hostcall fuel", 128 MiB by default: tie it to the plugin's output budget.
        let lift = limits
            .output_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20);
        store.set_hostcall_fuel(usize::try_from(lift).unwrap_or(usize::MAX));
        store.set_epoch_deadline(1);

        let input = wit_message(message);
        let run = async {
            let instance = match warm_instance {
                Some(instance) => instance,
                None => plugin
                    .pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(Failed::Instantiate)?,
            };
            let answer = instance
                .call_handle(&mut store, &input)
                .await
                .map_err(Failed::Call)?;
            Ok((instance, answer))
        };
        // The epoch callback stops a busy guest; the timeout also stops one that is waiting on
        // the host (a sleep, a poll), which the epoch cannot interrupt.
        let result = tokio::time::timeout(limits.deadline, run).await;
        handled.fuel = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let stderr = store.data().stderr.finish();
        store.data().stdout.finish();
        store.data_mut().end();
        let name = || plugin.name.to_string();
        // An instance that trapped or was cut off is never used again.
        let (instance, answer) = match result {
            Err(_elapsed) => {
                return Err(HandlerError::Deadline {
                    plugin: name(),
                    deadline: limits.deadline,
                });
            }
            Ok(Err(failed)) => {
                let state = store.data_mut();
                handled.denials = std::mem::take(&mut state.denials);
                return Err(match state.refused.take() {
                    Some(refused) => refused,
                    None => self.classify(failed, &store, &stderr),
                });
            }
            Ok(Ok(done)) => done,
        };
        let state = store.data_mut();
        let mut all = std::mem::take(&mut state.extra);
        let admitted = match answer {
            Ok(outputs) => outputs
                .into_iter()
                .try_for_each(|output| {
                    all.push(state.admit(wit_output(output))?);
                    Ok(())
                })
                .map(|()| Ok(all)),
            Err(failure) => Ok(Err(failure)),
        };
        handled.denials = std::mem::take(&mut state.denials);
        handled.held = std::mem::take(&mut state.held);
        let outcome = match admitted? {
            Ok(all) => Outcome::Success(all),
            // A reason goes into logs and headers: cut like a log line. A delay is capped.
            Err(bindings::natsplug::plugin::types::Failure::Retry(retry)) => Outcome::Retry {
                reason: cut(&retry.reason, 0).into_owned(),
                delay: retry
                    .delay_ms
                    .map(|ms| Duration::from_millis(ms).min(MAX_RETRY_DELAY)),
            },
            Err(bindings::natsplug::plugin::types::Failure::Reject(reason)) => Outcome::Reject {
                reason: cut(&reason, 0).into_owned(),
            },
        };
        if uses + 1 < reuse {
            plugin.put_warm(Warm {
                store,
                instance,
                uses: uses + 1,
            });
        }
        Ok(outcome)
    }

    fn classify(&self, failed: Failed, store: &Store<Invocation>, stderr: &str) -> HandlerError {
        let plugin = self.inner.name.to_string();
        let limits = &self.inner.manifest.limits;
        if store.data().limiter.exceeded {
            return HandlerError::Memory {
                plugin,
                limit: limits.memory,
            };
        }
        let (error, instantiating) = match failed {
            Failed::Instantiate(e) => (e, true),
            Failed::Call(e) => (e, false),
        };
        // wasmtime refused to copy more out of the guest than the hostcall fuel set from
        // `limits.output_bytes` (its error type is private: its message is what there is).
        if format!("{error:#}").contains(HOSTCALL_FUEL_EXHAUSTED) {
            return HandlerError::Refused {
                plugin,
                denied: crate::policy::Denied::OutputLimit {
                    limit: limits.output_bytes,
                },
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => HandlerError::OutOfFuel {
                plugin,
                fuel: limits.fuel,
            },
            Some(Trap::Interrupt) => HandlerError::Deadline {
                plugin,
                deadline: limits.deadline,
            },
            // Not a trap of the guest's own start-up code: the host could not make the instance
            // (its pool exhausted...).
            None if instantiating => HandlerError::Instantiate {
                plugin,
                message: format!("{error:#}"),
            },
            _ => match panic_message(stderr) {
                Some(message) => HandlerError::Panic { plugin, message },
                None => HandlerError::Trap {
                    plugin,
                    message: match error.downcast_ref::<Trap>() {
                        Some(trap) => trap.to_string(),
                        None => cut(&format!("{error:#}"), 0).into_owned(),
                    },
                },
            },
        }
    }
}

/// The message of a Rust panic from the guest's stderr ("panicked at FILE:LINE:COL:\nMESSAGE").
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")?;
    let text = &stderr[start..];
    let message = text.split_once('\n').map_or(text, |(_, rest)| rest);
    let message = message.lines().next().unwrap_or(message).trim();
    Some(
        if message.is_empty() {
            text.trim()
        } else {
            message
        }
        .to_owned(),
    )
}

fn wit_message(m: &Message) -> bindings::natsplug::plugin::types::Message {
    use bindings::natsplug::plugin::types as wit;
    wit::Message {
        subject: m.subject.clone(),
        reply: m.reply.clone(),
        headers: wit_headers(&m.headers),
        payload: m.payload.to_vec(),
        delivery: m.delivery.as_ref().map(|d| wit::Delivery {
            stream: d.stream.clone(),
            consumer: d.consumer.clone(),
            stream_sequence: d.stream_sequence,
            consumer_sequence: d.consumer_sequence,
            delivered: d.delivered,
            pending: d.pending,
            timestamp_ns: d.timestamp_ns,
        }),
    }
}

fn wit_headers(h: &Headers) -> Vec<bindings::natsplug::plugin::types::Header> {
    h.0.iter()
        .map(|(name, value)| bindings::natsplug::plugin::types::Header {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

pub(crate) fn wit_output(o: bindings::natsplug::plugin::types::Output) -> Output {
    Output {
        subject: o.subject,
        headers: Headers(o.headers.into_iter().map(|h| (h.name, h.value)).collect()),
        payload: o.payload.into(),
    }
}
