//! The state of one handler call: the data of its fresh `Store` (sandboxed WASI context, memory
//! limiter, deadline, outputs added through `publish`, the byte budgets of its outputs and log)
//! and the host functions the guest imports. It lives exactly as long as one message's call, so
//! nothing carries over to the next message.
//!
//! Every output is admitted here ([`Invocation::admit`]) before the host keeps it: its subject
//! and headers against the plugin's grant ([`crate::policy`]), its bytes against the message's
//! budget (`limits.output_bytes`) and the host-wide pool of pending output bytes. Without the
//! budget, one message that `publish()`ed one 8 MiB buffer 200 times held 1.6 GiB of the host.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::natsplug::plugin::{host, types};
use super::guest_log::{GuestLog, LogBudget, cut};
use super::{HandlerError, PluginInner, wit_output};
use crate::message::Output;
use crate::policy::{self, Denied};

/// Most `publish` calls in one handler call.
const MAX_EXTRA_OUTPUTS: usize = 10_000;

/// Output bytes held for one message against the host-wide pool
/// (`runtime.max_output_bytes`), released when dropped: once its outputs are published.
#[derive(Debug, Default)]
pub struct OutputHold(Option<OwnedSemaphorePermit>);

impl OutputHold {
    /// The bytes held.
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(more),
            None => self.0 = Some(more),
        }
    }
}

/// Called when the guest asks for an ack-progress heartbeat now.
pub type InProgress = Arc<dyn Fn() + Send + Sync>;

/// What the caller of a handler lets the guest reach while it runs.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Sends ack-progress for the message; `None` offline.
    pub in_progress: Option<InProgress>,
}

/// Caps the sum of all linear memories of one instance and records a hit, so a failed growth
/// is reported as the memory limit and not as the trap the guest turns it into.
pub(crate) struct MemoryLimiter {
    limit: u64,
    used: u64,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current) as u64;
        if self.used.saturating_add(growth) > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        self.used += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// The data of one call's `Store`.
pub(crate) struct Invocation {
    pub(crate) plugin: Arc<PluginInner>,
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// `wasi:http`'s context and natsplug's hooks into it (`[http]`).
    pub(crate) http_ctx: wasmtime_wasi_http::WasiHttpCtx,
    pub(crate) http_hooks: crate::capability::http::Hooks,
    /// Capability calls in this call (`capability::MAX_CALLS`), HTTP's included.
    pub(crate) budget: crate::capability::Budget,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Instant,
    pub(crate) stdout: GuestLog,
    pub(crate) stderr: GuestLog,
    /// The log budget stdout, stderr and `log` share; reset for each call.
    log: Arc<LogBudget>,
    /// Whether the input has a reply subject (reply outputs are allowed).
    has_reply: bool,
    /// Whether this is a `handle-batch` call, where `publish` is refused: an output it added
    /// would belong to no input in particular.
    batch: bool,
    hooks: Hooks,
    /// Outputs added through `publish`, in order.
    pub(crate) extra: Vec<Output>,
    /// The bytes of the outputs admitted in this call, held in the host-wide pool; they count
    /// against `limits.output_bytes` too.
    pub(crate) held: OutputHold,
    /// The refusal a host call trapped with, so the call ends with it and not with the trap.
    pub(crate) refused: Option<HandlerError>,
    /// Refusals in this call by kind, for `natsplug_policy_denials_total`.
    pub(crate) denials: Vec<(&'static str, u64)>,
    /// `publish` calls in this call, refused ones included.
    publish_calls: usize,
}

impl Invocation {
    /// The state of a new instance; [`begin`](Self::begin) readies it for each call.
    pub(crate) fn new(plugin: Arc<PluginInner>) -> anyhow::Result<Self> {
        let log = Arc::new(LogBudget::new(plugin.manifest.limits.log_bytes));
        let stdout = GuestLog::stdout(plugin.name.clone(), log.clone());
        let stderr = GuestLog::stderr(plugin.name.clone(), log.clone());
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        let sandbox = &plugin.manifest.sandbox;
        for (key, value) in &sandbox.env {
            wasi.env(key, value);
        }
        for dir in &sandbox.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)?;
        }
        if sandbox.network {
            // wasmtime-wasi denies TCP and UDP unless each is allowed, whatever the addresses.
            wasi.inherit_network()
                .allow_tcp(true)
                .allow_udp(true)
                .allow_ip_name_lookup(true);
        }
        let budget = crate::capability::Budget::default();
        let http_hooks = crate::capability::http::Hooks::new(
            plugin.capabilities.http.clone(),
            plugin.name.clone(),
            plugin.capabilities.services.metrics.clone(),
            budget.clone(),
        );
        Ok(Self {
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks,
            budget,
            limiter: MemoryLimiter {
                limit: plugin.manifest.limits.memory,
                used: 0,
                exceeded: false,
            },
            plugin,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            deadline: Instant::now(),
            stdout,
            stderr,
            log,
            has_reply: false,
            batch: false,
            hooks: Hooks::default(),
            extra: Vec::new(),
            held: OutputHold::default(),
            refused: None,
            denials: Vec::new(),
            publish_calls: 0,
        })
    }

    /// Readies the state for one call: its reply subject, hooks and deadline; no outputs, no
    /// bytes used, a full log budget.
    pub(crate) fn begin(&mut self, has_reply: bool, batch: bool, hooks: Hooks, deadline: Instant) {
        self.has_reply = has_reply;
        self.batch = batch;
        self.hooks = hooks;
        self.deadline = deadline;
        self.extra.clear();
        self.held = OutputHold::default();
        self.refused = None;
        self.denials.clear();
        self.publish_calls = 0;
        self.budget.reset();
        self.http_hooks.deadline = deadline;
        self.log.reset();
    }

    /// Readies the state to admit the answer for the next input of a batch call.
    pub(crate) fn next_answer(&mut self, has_reply: bool) {
        self.has_reply = has_reply;
        self.extra.clear();
        self.held = OutputHold::default();
    }

    /// Ends a call: logs what the log budget dropped and lets go of the caller's hooks (a warm
    /// instance must not keep them until its next message).
    pub(crate) fn end(&mut self) {
        self.log.report(&self.plugin.name);
        self.hooks = Hooks::default();
        for denied in std::mem::take(&mut self.http_hooks.denied) {
            self.count_denial(&denied);
        }
    }

    /// Admits an output the guest asked for, or refuses it: its subject (a reply to a request,
    /// or granted and outside unnamed reserved space), its headers (sendable; server headers
    /// only if granted; `Nats-Msg-Id` left out) and its bytes (the message's budget, then the
    /// host's pool).
    pub(crate) fn admit(&mut self, mut output: Output) -> Result<Output, HandlerError> {
        let grants = &self.plugin.grants;
        let checked = match &output.subject {
            None if self.has_reply => Ok(()),
            None => {
                return Err(HandlerError::NoReplySubject {
                    plugin: self.plugin.name.to_string(),
                });
            }
            Some(subject) => grants.refuse_subject(subject),
        };
        checked
            .and_then(|()| grants.admit_headers(&mut output))
            .map_err(|denied| self.refuse(denied))?;
        self.charge(policy::output_size(&output))?;
        Ok(output)
    }

    /// Counts `bytes` against the message's budget, then takes them from the host-wide pool.
    fn charge(&mut self, bytes: u64) -> Result<(), HandlerError> {
        let limit = self.plugin.manifest.limits.output_bytes;
        if (self.held.bytes() as u64).saturating_add(bytes) > limit {
            return Err(self.refuse(Denied::OutputLimit { limit }));
        }
        let pool = &self.plugin.output_pool;
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| pool.semaphore.clone().try_acquire_many_owned(n).ok());
        match permit {
            Some(permit) => {
                self.held.add(permit);
                Ok(())
            }
            None => Err(HandlerError::OutputPoolFull {
                plugin: self.plugin.name.to_string(),
                limit: pool.limit,
            }),
        }
    }

    /// Counts a refusal by kind.
    pub(crate) fn count_denial(&mut self, denied: &Denied) {
        let kind = denied.kind();
        match self.denials.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => *count += 1,
            None => self.denials.push((kind, 1)),
        }
    }

    /// The error of a refusal, counted.
    fn refuse(&mut self, denied: Denied) -> HandlerError {
        self.count_denial(&denied);
        HandlerError::Refused {
            plugin: self.plugin.name.to_string(),
            denied,
        }
    }
}

/// The host-wide bound on output bytes held for messages in flight, all plugins together.
#[derive(Debug, Clone)]
pub(crate) struct OutputPool {
    semaphore: Arc<Semaphore>,
    pub(crate) limit: u64,
}

impl OutputPool {
    pub(crate) fn new(limit: u64) -> Self {
        let permits = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(permits)),
            limit,
        }
    }
}

impl WasiView for Invocation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Invocation {}

impl host::Host for Invocation {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = &*self.plugin.name;
        let message = cut(&message, 0);
        if !self.log.admit(&message) {
            return;
        }
        match level {
            host::Level::Trace => tracing::trace!(target: "natsplug::guest", plugin, "{message}"),
            host::Level::Debug => tracing::debug!(target: "natsplug::guest", plugin, "{message}"),
            host::Level::Info => tracing::info!(target: "natsplug::guest", plugin, "{message}"),
            host::Level::Warn => tracing::warn!(target: "natsplug::guest", plugin, "{message}"),
            host::Level::Error => tracing::error!(target: "natsplug::guest", plugin, "{message}"),
        }
    }

    fn in_progress(&mut self) {
        if let Some(in_progress) = &self.hooks.in_progress {
            in_progress();
        }
    }

    /// A refused subject is the guest's to handle (the output is not kept); a refused header
    /// or a budget crossed traps, so the call ends with that failure whatever the guest does.
    fn publish(&mut self, output: types::Output) -> wasmtime::Result<Result<(), String>> {
        // Refused calls count too: a guest looping on a refused subject stops here.
        self.publish_calls += 1;
        if self.batch {
            return Ok(Err(
                "publish is not available in handle-batch: return each input's outputs in its result"
                    .to_owned(),
            ));
        }
        if self.publish_calls > MAX_EXTRA_OUTPUTS {
            return Ok(Err(format!(
                "more than {MAX_EXTRA_OUTPUTS} publish calls in one call"
            )));
        }
        match self.admit(wit_output(output)) {
            Ok(output) => {
                self.extra.push(output);
                Ok(Ok(()))
            }
            Err(refused @ HandlerError::Refused { .. }) if refused.is_subject_refusal() => {
                Ok(Err(refused.to_string()))
            }
            Err(HandlerError::NoReplySubject { .. }) => {
                Ok(Err("the message has no reply subject".to_owned()))
            }
            Err(fatal) => {
                let message = fatal.to_string();
                self.refused = Some(fatal);
                Err(wasmtime::Error::msg(message))
            }
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.plugin.manifest.config.get(&key).cloned()
    }
}
