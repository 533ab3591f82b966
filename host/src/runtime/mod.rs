//! The sandboxed WebAssembly runtime: compiles plugins (components, or command modules) once, and runs a handler call
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
//! - `admission`: every output's checks against the grant and the byte budgets.
//! - [`command`]: the command contract for plain WASI programs (environment in, output frames
//!   and exit status out) and its runner for preview 1 command modules (Go, C, any
//!   `wasm32-wasip1` program): a plugin file that is a core module is run as a command.
//! - [`componentize`]: unless it carries wit-bindgen's `component-type` section (C on the
//!   component contract): then it is made into a component with the preview-1 adapter.

mod admission;
mod batch;
pub mod command;
pub mod componentize;
mod error;
mod guest_log;
mod invocation;
mod pool;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Linker};
use wasmtime::{
    Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

pub use self::admission::OutputHold;
use self::admission::OutputPool;
pub use self::error::{HandlerError, LimitKind, LoadError};
use self::guest_log::cut;
pub(crate) use self::invocation::Invocation;
pub use self::invocation::{Hooks, InProgress};
pub use self::pool::PoolStats;
use self::pool::{Instance, Pool};
use crate::capability::{Capabilities, Services};
use crate::manifest::Manifest;
use crate::message::{Headers, Message, Output};
use crate::policy::Grants;
use bindings::natsplug::plugin::types as wit;

/// The bindings generated from `guest-sdk/wit/natsplug.wit`.
pub(crate) mod bindings {
    wasmtime::component::bindgen!({
        world: "natsplug:plugin/plugin",
        path: "../guest-sdk/wit",
        imports: {
            // `publish` traps when an output's headers or bytes are refused, so a guest cannot
            // ignore the refusal and go on.
            "natsplug:plugin/host.publish": trappable,
            // Capabilities wait on NATS: the guest waits, the executor does not.
            "natsplug:plugin/request": async,
            "natsplug:plugin/kv": async | trappable,
            "wasi:keyvalue/store": async | trappable,
            "wasi:keyvalue/atomics": async | trappable,
            "wasi:keyvalue/batch": async | trappable,
        },
        with: { "wasi:keyvalue/store.bucket": crate::capability::kv::Bucket },
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
    /// Largest plugin file loaded, in bytes: a larger one is refused unread. Default:
    /// [`DEFAULT_MAX_PLUGIN_BYTES`].
    pub max_plugin_bytes: u64,
    /// Where compiled components are cached, keyed by content and engine settings, so a restart
    /// does not recompile them. Default: none (no cache).
    pub cache_dir: Option<std::path::PathBuf>,
}

/// The default of `runtime.max_plugin_bytes`: 128 MiB, several times the largest plugin of the
/// examples (a Python one, about 19 MB).
pub const DEFAULT_MAX_PLUGIN_BYTES: u64 = 128 << 20;

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory: 1 << 30,
            max_output_bytes: 1 << 30,
            max_plugin_bytes: DEFAULT_MAX_PLUGIN_BYTES,
            cache_dir: None,
        }
    }
}

/// The engine and linker shared by every plugin. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<Invocation>>,
    /// What a command module may import: WASI preview 1.
    command_linker: Arc<wasmtime::Linker<command::Run>>,
    config: RuntimeConfig,
    cache: Option<wasmtime::Cache>,
    output_pool: OutputPool,
    /// What the plugins' capabilities reach (NATS for `[request]` and `[kv]`).
    services: Services,
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
        // Every component may import wasi:http; only `[http]` origins are reachable.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add wasi:http to the linker")?;
        let command_linker = command::linker(&engine)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI preview 1 to the command linker")?;
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            command_linker: Arc::new(command_linker),
            output_pool: OutputPool::new(config.max_output_bytes),
            config,
            cache,
            services: Services::default(),
        })
    }

    /// Gives the plugins loaded from now on `services` for their capabilities (`[request]`,
    /// `[kv]`); without, those calls fail with "no NATS connection".
    pub fn with_services(mut self, services: Services) -> Self {
        self.services = services;
        self
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

    /// Compiles and checks a plugin from its bytes: a `plugin`-world component, or a core
    /// module, which runs as a command ([`command`]).
    pub fn load(&self, name: &str, wasm: &[u8], manifest: Manifest) -> Result<Plugin, LoadError> {
        self.plugin_bound()
            .check(wasm.len() as u64)
            .map_err(|e| LoadError::Unsupported {
                plugin: name.to_owned(),
                reason: format!("the plugin file is {e}"),
            })?;
        let componentized;
        let wasm = if command::is_core_module(wasm) && componentize::has_component_type(wasm) {
            componentized =
                componentize::componentize(wasm).map_err(|e| LoadError::NotAComponent {
                    plugin: name.to_owned(),
                    reason: format!(
                        "a core module with a component-type section, which does not make a \
                         component with the WASI preview-1 adapter: {e:#}"
                    ),
                })?;
            &componentized[..]
        } else {
            wasm
        };
        let code = if command::is_core_module(wasm) {
            let module =
                wasmtime::Module::new(&self.engine, wasm).map_err(|e| LoadError::NotACommand {
                    plugin: name.to_owned(),
                    reason: format!("{e:#}"),
                })?;
            self.command(name, &module, &manifest)?
        } else {
            let component =
                Component::new(&self.engine, wasm).map_err(|e| LoadError::NotAComponent {
                    plugin: name.to_owned(),
                    reason: format!("{e:#}"),
                })?;
            self.component(name, &component, &manifest)?
        };
        self.prepare(name, code, manifest)
    }

    /// Reads `path` (`NAME.wasm`) and the manifest beside it, then loads it as plugin `NAME`.
    pub fn load_file(&self, path: &Path, manifest: Option<Manifest>) -> Result<Plugin, LoadError> {
        let name = plugin_name(path);
        let manifest = match manifest {
            Some(m) => m,
            None => Manifest::beside(path)?,
        };
        let wasm =
            crate::bounded::read(path, self.plugin_bound()).map_err(|source| LoadError::Read {
                path: path.to_owned(),
                source,
            })?;
        self.load(&name, &wasm, manifest)
    }

    /// The largest plugin file this runtime loads (`runtime.max_plugin_bytes`).
    pub fn plugin_bound(&self) -> crate::bounded::Bound {
        crate::bounded::Bound::plugin(self.config.max_plugin_bytes)
    }

    fn prepare(&self, name: &str, code: Code, manifest: Manifest) -> Result<Plugin, LoadError> {
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
        let batcher = match &code {
            Code::Component { batch: Some(_), .. } => {
                manifest.batch.as_ref().map(batch::Batcher::new)
            }
            _ => None,
        };
        Ok(Plugin {
            pool: Arc::new(Pool::new(&manifest)),
            inner: Arc::new(PluginInner {
                name: name.into(),
                grants: Grants::new(&manifest.publish),
                capabilities: Capabilities::new(&manifest, &self.services),
                manifest,
                output_pool: self.output_pool.clone(),
                code,
                batcher,
                engine: self.engine.clone(),
            }),
        })
    }
}

impl Runtime {
    /// Links a `plugin`-world component.
    fn component(
        &self,
        name: &str,
        component: &Component,
        manifest: &Manifest,
    ) -> Result<Code, LoadError> {
        let batch = component.get_export_index(None, "handle-batch");
        if manifest.batch.is_some() && batch.is_none() {
            return Err(LoadError::Unsupported {
                plugin: name.to_owned(),
                reason: "the manifest has a [batch] section, but the component exports no \
                         handle-batch (build it with a natsplug SDK, world batch-plugin)"
                    .into(),
            });
        }
        let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
            plugin: name.to_owned(),
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(wrong_world)?;
        Ok(Code::Component {
            pre: bindings::PluginPre::new(instance_pre).map_err(wrong_world)?,
            batch,
        })
    }

    /// Links a command module, refusing what the command contract cannot give it: warm
    /// instances and batches (`_start` runs once per instance), capabilities (they are
    /// component imports), the network (preview 1 has no sockets), and `sandbox.env` names the
    /// contract sets.
    fn command(
        &self,
        name: &str,
        module: &wasmtime::Module,
        manifest: &Manifest,
    ) -> Result<Code, LoadError> {
        let unsupported = |reason: String| LoadError::Unsupported {
            plugin: name.to_owned(),
            reason: format!("{reason} (the plugin is a command module)"),
        };
        if manifest.instance.isolation != crate::manifest::Isolation::Message {
            return Err(unsupported(
                "[instance] isolation = \"pool\": a command runs once per instance".into(),
            ));
        }
        if manifest.batch.is_some() {
            return Err(unsupported(
                "[batch]: a command handles one message per run".into(),
            ));
        }
        if let Some(section) = manifest.capability_sections().first() {
            return Err(unsupported(format!(
                "[{section}]: capabilities need a natsplug component"
            )));
        }
        if manifest.sandbox.network {
            return Err(unsupported(
                "sandbox.network: WASI preview 1 has no sockets".into(),
            ));
        }
        if let Some(key) = manifest
            .sandbox
            .env
            .keys()
            .find(|k| k.starts_with(command::RESERVED_ENV_PREFIX))
        {
            return Err(unsupported(format!(
                "sandbox.env: {key}: the NATSPLUG_ names are the ones natsplug sets for each message"
            )));
        }
        // The environment is NUL-terminated strings: a NUL would cut a value short.
        if let Some(key) = manifest
            .sandbox
            .env
            .iter()
            .chain(&manifest.config)
            .find_map(|(k, v)| (k.contains('\0') || v.contains('\0')).then_some(k))
        {
            return Err(unsupported(format!(
                "{key:?}: a NUL byte cannot be in an environment variable"
            )));
        }
        let mut names = std::collections::BTreeMap::new();
        for key in manifest.config.keys() {
            if let Some(other) = names.insert(command::config_env_name(key), key) {
                return Err(unsupported(format!(
                    "[config]: {other:?} and {key:?} are both {}",
                    command::config_env_name(key)
                )));
            }
        }
        let program = command::Program::new(&self.command_linker, module).map_err(|reason| {
            LoadError::NotACommand {
                plugin: name.to_owned(),
                reason,
            }
        })?;
        Ok(Code::Command(program))
    }
}

/// What runs a plugin's handler.
pub(crate) enum Code {
    /// A `plugin`-world component, pre-instantiated; `batch` is where it exports
    /// `handle-batch`, if it does.
    Component {
        pre: bindings::PluginPre<Invocation>,
        batch: Option<ComponentExportIndex>,
    },
    /// A command module, run once per message.
    Command(command::Program),
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
    /// Whether the call ran on a warm instance from the pool (else a fresh one).
    pub warm: bool,
}

impl Handled {
    /// A call that has not run yet, or could not: `result`, nothing spent, nothing held.
    pub(crate) fn of(result: Result<Outcome, HandlerError>) -> Self {
        Self {
            result,
            fuel: 0,
            denials: Vec::new(),
            held: OutputHold::default(),
            warm: false,
        }
    }
}

pub(crate) struct PluginInner {
    pub(crate) name: Arc<str>,
    pub(crate) manifest: Manifest,
    /// The manifest's `[publish]` grants, compiled.
    pub(crate) grants: Grants,
    /// Its `[request]`, `[kv]` and `[http]` grants, compiled, and its opened buckets.
    pub(crate) capabilities: Capabilities,
    /// The host-wide bound on pending output bytes.
    pub(crate) output_pool: OutputPool,
    code: Code,
    /// Gathers inputs into `handle-batch` calls, under `[batch]`.
    batcher: Option<batch::Batcher>,
    engine: Engine,
}

/// The `handle-batch` export: one result per input, in order.
type HandleBatch = wasmtime::component::TypedFunc<
    (Vec<wit::Message>,),
    (Vec<Result<Vec<wit::Output>, wit::Failure>>,),
>;

/// What an instance exports to the host.
pub(crate) struct Exports {
    plugin: bindings::Plugin,
    batch: Option<HandleBatch>,
}

/// A loaded plugin: its manifest and its pre-instantiated component. Cheap to clone; messages
/// in flight keep the version they started on.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
    /// This version's warm instances (`[instance] isolation = "pool"`). Beside `inner`, not in
    /// it: a parked instance's store holds `inner`, so a pool inside it would keep a replaced
    /// version, and its instances, alive for good.
    pool: Arc<Pool>,
}

/// A plugin version that is not kept alive by this handle: whether it is gone (its messages
/// done, its pool's instances dropped).
#[derive(Debug, Clone)]
pub struct PluginRef(std::sync::Weak<PluginInner>);

impl PluginRef {
    /// Whether the version has been dropped.
    pub fn is_dropped(&self) -> bool {
        self.0.strong_count() == 0
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// How a guest run failed: making the instance, or in the call.
pub(crate) enum Failed {
    Instantiate(wasmtime::Error),
    Call(wasmtime::Error),
}

/// What one call into the guest asks.
enum Call<'a> {
    One(&'a wit::Message),
    Batch(Vec<wit::Message>),
}

/// What the guest answered a [`Call`].
enum Answer {
    One(Result<Vec<wit::Output>, wit::Failure>),
    Batch(Vec<Result<Vec<wit::Output>, wit::Failure>>),
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the plugin is: a `plugin`-world component, or a WASI command module (the command
    /// contract).
    pub fn kind(&self) -> &'static str {
        match self.inner.code {
            Code::Component { .. } => "a natsplug:plugin/plugin component",
            Code::Command(_) => "a WASI preview-1 command (the command contract)",
        }
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.inner.manifest
    }

    /// What its manifest grants, compiled.
    pub fn grants(&self) -> &Grants {
        &self.inner.grants
    }

    /// How this version's calls got their instances.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// A handle that does not keep this version alive.
    pub fn downgrade(&self) -> PluginRef {
        PluginRef(Arc::downgrade(&self.inner))
    }

    /// Opens what its capabilities need before it serves (each `[kv]` bucket, created if the
    /// grant says so): a missing bucket is a load error, not a failure of every message.
    pub async fn open_capabilities(&self) -> Result<(), LoadError> {
        self.inner
            .capabilities
            .open()
            .await
            .map_err(|reason| LoadError::Unsupported {
                plugin: self.inner.name.to_string(),
                reason,
            })
    }

    /// Whether the component exports `handle-batch`.
    pub fn exports_batch(&self) -> bool {
        matches!(self.inner.code, Code::Component { batch: Some(_), .. })
    }

    /// Whether the plugin is a command module (the command contract).
    pub fn is_command(&self) -> bool {
        matches!(self.inner.code, Code::Command(_))
    }

    /// Runs the handler on one message under the manifest's limits: in a fresh instance, a
    /// warm one (`[instance]`), or in a batch call with other inputs (`[batch]`).
    pub async fn handle(&self, message: &Message, hooks: Hooks) -> Result<Outcome, HandlerError> {
        self.handle_metered(message, hooks).await.result
    }

    /// [`handle`](Self::handle), also returning what the call cost and refused, and the
    /// output bytes it holds in the host's pool until the caller drops them.
    pub async fn handle_metered(&self, message: &Message, hooks: Hooks) -> Handled {
        match &self.inner.batcher {
            Some(batcher) => batcher.submit(self, message.clone(), hooks).await,
            None => self.handle_one(message, hooks).await,
        }
    }

    /// One `handle` call, for one message.
    async fn handle_one(&self, message: &Message, hooks: Hooks) -> Handled {
        let mut handled = Handled::of(Ok(Outcome::Success(Vec::new())));
        if let Code::Command(program) = &self.inner.code {
            handled.result = program.run(&self.inner, message, &mut handled).await;
            return handled;
        }
        let input = wit_message(message);
        let ran = self
            .run(
                Call::One(&input),
                message.reply.is_some(),
                hooks,
                1,
                &mut handled,
            )
            .await;
        handled.result = ran.and_then(|(mut instance, answer)| {
            let Answer::One(answer) = answer else {
                unreachable!("a handle call answers once")
            };
            let outcome = self.admit(&mut instance, answer, &mut handled)?;
            self.pool.park(instance);
            Ok(outcome)
        });
        handled
    }

    /// One `handle-batch` call for `inputs`, each answered on its own. When the call fails as
    /// a whole (a trap, a limit, an answer of the wrong length), each input runs alone with
    /// `handle`, so a poison input fails by itself and not its batch.
    pub(crate) async fn handle_batch(&self, inputs: &[(Message, Hooks)]) -> Vec<Handled> {
        let hooks: Vec<InProgress> = inputs
            .iter()
            .filter_map(|(_, h)| h.in_progress.clone())
            .collect();
        let all = Hooks {
            in_progress: Some(Arc::new(move || hooks.iter().for_each(|h| h()))),
        };
        let mut whole = Handled::of(Ok(Outcome::Success(Vec::new())));
        let call = Call::Batch(inputs.iter().map(|(m, _)| wit_message(m)).collect());
        let count = u64::try_from(inputs.len()).unwrap_or(u64::MAX);
        let failed = match self.run(call, false, all, count, &mut whole).await {
            Ok((mut instance, Answer::Batch(answers))) if answers.len() == inputs.len() => {
                let share = whole.fuel / count.max(1);
                let mut kept = true;
                let handled = answers
                    .into_iter()
                    .zip(inputs)
                    .map(|(answer, (message, _))| {
                        let mut handled = Handled {
                            fuel: share,
                            warm: whole.warm,
                            ..Handled::of(Ok(Outcome::Success(Vec::new())))
                        };
                        instance
                            .store
                            .data_mut()
                            .next_answer(message.reply.is_some());
                        handled.result = self.admit(&mut instance, answer, &mut handled);
                        kept &= handled.result.is_ok();
                        handled
                    })
                    .collect();
                if kept {
                    self.pool.park(instance);
                }
                return handled;
            }
            Ok((_, Answer::Batch(answers))) => format!(
                "handle-batch answered {} results for {} inputs",
                answers.len(),
                inputs.len()
            ),
            Ok((_, Answer::One(_))) => unreachable!("a batch call answers a list"),
            Err(e) => e.to_string(),
        };
        tracing::warn!(plugin = %self.inner.name, inputs = inputs.len(), error = %failed, "the batch call failed; each of its inputs runs alone");
        futures::future::join_all(
            inputs
                .iter()
                .map(|(message, hooks)| self.handle_one(message, hooks.clone())),
        )
        .await
    }

    /// A fresh store for one instance: the sandbox, the memory limiter, the epoch callback.
    fn new_store(&self) -> Result<Store<Invocation>, HandlerError> {
        let plugin = &self.inner;
        let state = Invocation::new(plugin.clone()).map_err(|e| HandlerError::Instantiate {
            plugin: plugin.name.to_string(),
            message: format!("cannot prepare the sandbox: {e:#}"),
        })?;
        Ok(limited_store(&plugin.engine, state))
    }

    /// Makes the instance's exports, looking up `handle-batch` when the component has it.
    async fn instantiate(&self, store: &mut Store<Invocation>) -> wasmtime::Result<Exports> {
        let Code::Component { pre, batch } = &self.inner.code else {
            return Err(wasmtime::Error::msg(
                "a command module has no component exports",
            ));
        };
        let instance = pre.instance_pre().instantiate_async(&mut *store).await?;
        let plugin = bindings::Plugin::new(&mut *store, &instance)?;
        let batch = match batch {
            Some(index) => Some(instance.get_typed_func(&mut *store, index)?),
            None => None,
        };
        Ok(Exports { plugin, batch })
    }

    /// Runs `call` on a warm instance or a fresh one under the manifest's limits (fuel times
    /// `fuel_scale`, one deadline), and gives the instance back with the answer, ready for
    /// [`admit`](Self::admit). A failed call drops its instance.
    async fn run(
        &self,
        call: Call<'_>,
        has_reply: bool,
        hooks: Hooks,
        fuel_scale: u64,
        handled: &mut Handled,
    ) -> Result<(Instance, Answer), HandlerError> {
        let plugin = &self.inner;
        let limits = &plugin.manifest.limits;
        let taken = self.pool.take();
        handled.warm = taken.is_some();
        let mut instance = match taken {
            Some(warm) => warm,
            None => Instance {
                store: self.new_store()?,
                exports: None,
                uses: 0,
            },
        };
        let store = &mut instance.store;
        store.data_mut().begin(
            has_reply,
            matches!(call, Call::Batch(_)),
            hooks,
            Instant::now() + limits.deadline,
        );
        let fuel = if limits.fuel == 0 {
            u64::MAX
        } else {
            limits.fuel.saturating_mul(fuel_scale)
        };
        // Fuel is enabled on the engine, so setting it cannot fail.
        store.set_fuel(fuel).expect("fuel is enabled on the engine");
        // What wasmtime copies out of the guest in one host call or one result (lists and
        // strings, each one separately even when a guest points many at one buffer) is capped
        // by "hostcall fuel", 128 MiB by default: tie it to the plugin's output budget. A
        // batch gets it for each input, but never more than twice what the host-wide output
        // pool could ever admit: a guest whose answers point many times at one buffer must not
        // make the host copy 4096 budgets' worth before any of it is admitted.
        let lift = hostcall_budget(limits.output_bytes, fuel_scale, plugin.output_pool.limit);
        store.set_hostcall_fuel(usize::try_from(lift).unwrap_or(usize::MAX));
        store.set_epoch_deadline(1);

        let exports = instance.exports.take();
        let run = async {
            let exports = match exports {
                Some(exports) => exports,
                None => self.instantiate(store).await.map_err(Failed::Instantiate)?,
            };
            let answer = match call {
                Call::One(input) => Answer::One(
                    exports
                        .plugin
                        .call_handle(&mut *store, input)
                        .await
                        .map_err(Failed::Call)?,
                ),
                Call::Batch(inputs) => {
                    let Some(batch) = exports.batch else {
                        return Err(Failed::Call(wasmtime::Error::msg(
                            "the component exports no handle-batch",
                        )));
                    };
                    let (answers,) = batch
                        .call_async(&mut *store, (inputs,))
                        .await
                        .map_err(Failed::Call)?;
                    Answer::Batch(answers)
                }
            };
            Ok((exports, answer))
        };
        // The epoch callback stops a busy guest; the timeout also stops one that is waiting on
        // the host (a sleep, a poll), which the epoch cannot interrupt.
        let result = tokio::time::timeout(limits.deadline, run).await;
        handled.fuel = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let stderr = store.data().stderr.finish();
        store.data().stdout.finish();
        store.data_mut().end();
        // An instance that trapped or was cut off is never used again.
        match result {
            Err(_elapsed) => {
                // What was refused before the deadline is counted all the same.
                handled.denials = std::mem::take(&mut store.data_mut().admission.denials);
                Err(HandlerError::Deadline {
                    plugin: plugin.name.to_string(),
                    deadline: limits.deadline,
                })
            }
            Ok(Err(failed)) => {
                let state = store.data_mut();
                handled.denials = std::mem::take(&mut state.admission.denials);
                Err(match state.refused.take() {
                    Some(refused) => refused,
                    None => plugin.classify(failed, state.limiter.exceeded, &stderr),
                })
            }
            Ok(Ok((exports, answer))) => {
                instance.exports = Some(exports);
                Ok((instance, answer))
            }
        }
    }

    /// Admits the outputs of one answer (those `publish`ed first, then those returned) and
    /// turns it into an [`Outcome`]; moves the call's refusals and held bytes to `handled`.
    fn admit(
        &self,
        instance: &mut Instance,
        answer: Result<Vec<wit::Output>, wit::Failure>,
        handled: &mut Handled,
    ) -> Result<Outcome, HandlerError> {
        let state = instance.store.data_mut();
        let mut all = std::mem::take(&mut state.extra);
        let admitted = match answer {
            Ok(outputs) => outputs
                .into_iter()
                .try_for_each(|output| {
                    all.push(state.admission.admit(wit_output(output))?);
                    Ok(())
                })
                .map(|()| Ok(all)),
            Err(failure) => Ok(Err(failure)),
        };
        handled
            .denials
            .extend(std::mem::take(&mut state.admission.denials));
        handled.held = std::mem::take(&mut state.admission.held);
        Ok(match admitted? {
            Ok(all) => Outcome::Success(all),
            // A reason goes into logs and headers: cut like a log line. A delay is capped.
            Err(wit::Failure::Retry(retry)) => Outcome::Retry {
                reason: cut(&retry.reason, 0).into_owned(),
                delay: retry
                    .delay_ms
                    .map(|ms| Duration::from_millis(ms).min(MAX_RETRY_DELAY)),
            },
            Err(wit::Failure::Reject(reason)) => Outcome::Reject {
                reason: cut(&reason, 0).into_owned(),
            },
        })
    }
}

impl PluginInner {
    /// What a failed call or run was: a limit, a refusal, a panic, a trap.
    pub(crate) fn classify(
        &self,
        failed: Failed,
        memory_exceeded: bool,
        stderr: &str,
    ) -> HandlerError {
        let plugin = self.name.to_string();
        let limits = &self.manifest.limits;
        if memory_exceeded {
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
            // The host could not make the instance (its pool exhausted): not the guest's fault.
            // Anything else while instantiating ran the guest's own start-up code (a start
            // function that exits or calls WASI wrongly) and is its failure, like a trap: a
            // host fault is retried forever and never dead-lettered.
            None if instantiating
                && error
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some() =>
            {
                HandlerError::Instantiate {
                    plugin,
                    message: format!("{error:#}"),
                }
            }
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

/// The store data of a guest run under a plugin's limits.
pub(crate) trait Limited: Send + 'static {
    /// When the call must end.
    fn deadline(&self) -> Instant;
    /// Its memory limiter.
    fn limiter(&mut self) -> &mut invocation::MemoryLimiter;
}

/// A store for `data` with the memory limiter and the epoch callback (interrupt past the
/// deadline, else yield to the executor at every tick).
pub(crate) fn limited_store<T: Limited>(engine: &Engine, data: T) -> Store<T> {
    let mut store = Store::new(engine, data);
    store.limiter(|data| data.limiter());
    store.epoch_deadline_callback(|ctx| {
        if Instant::now() >= ctx.data().deadline() {
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// The bytes wasmtime may copy out of the guest in one call of `inputs` inputs: twice the
/// output budget of each, at most twice the host-wide output pool (a batch's answers can never
/// all be admitted past it), plus 1 MiB for everything else.
fn hostcall_budget(output_bytes: u64, inputs: u64, pool_limit: u64) -> u64 {
    let one = output_bytes.saturating_mul(2);
    one.saturating_mul(inputs)
        .min(one.max(pool_limit.saturating_mul(2)))
        .saturating_add(1 << 20)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::hostcall_budget;

    #[test]
    fn one_call_gets_twice_its_output_budget() {
        assert_eq!(
            hostcall_budget(16 << 20, 1, 1 << 30),
            (32 << 20) + (1 << 20)
        );
        assert_eq!(
            hostcall_budget(16 << 20, 4, 1 << 30),
            (128 << 20) + (1 << 20)
        );
        // 4096 inputs of 16 MiB: capped at twice the 1 GiB pool, not 128 GiB.
        assert_eq!(
            hostcall_budget(16 << 20, 4096, 1 << 30),
            (2 << 30) + (1 << 20)
        );
    }

    proptest! {
        /// However many inputs, a call never gets more than one input's budget or twice the
        /// pool, whichever is larger, and never less than one input's budget.
        #[test]
        fn a_batch_never_widens_the_copy_budget_past_the_pool(
            output_bytes in 0u64..(2 << 30),
            inputs in 1u64..10_000,
            pool in 0u64..(4 << 30),
        ) {
            let budget = hostcall_budget(output_bytes, inputs, pool);
            let one = output_bytes * 2 + (1 << 20);
            prop_assert!(budget >= one);
            prop_assert!(budget <= one.max(pool * 2 + (1 << 20)));
        }
    }
}
