//! The state of one handler call: the data of its fresh `Store` (sandboxed WASI context, memory
//! limiter, deadline, outputs added through `publish`, the byte budgets of its outputs and log)
//! and the host functions the guest imports. It lives exactly as long as one message's call, so
//! nothing carries over to the next message.
//!
//! Every output, `publish`ed or returned, goes through the call's [`Admission`] before the host
//! keeps it.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::admission::Admission;
use super::bindings::natsplug::plugin::{host, types};
use super::guest_log::{GuestLog, LogBudget, cut};
use super::{HandlerError, PluginInner, wit_output};
use crate::message::Output;

/// Most `publish` calls in one handler call.
const MAX_EXTRA_OUTPUTS: usize = 10_000;

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

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0,
            exceeded: false,
        }
    }
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
    /// Whether this is a `handle-batch` call, where `publish` is refused: an output it added
    /// would belong to no input in particular.
    batch: bool,
    hooks: Hooks,
    /// Outputs added through `publish`, in order.
    pub(crate) extra: Vec<Output>,
    /// The outputs' admission: their bytes held, the refusals counted.
    pub(crate) admission: Admission,
    /// The refusal a host call trapped with, so the call ends with it and not with the trap.
    pub(crate) refused: Option<HandlerError>,
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
        grant_env_and_dirs(&mut wasi, sandbox)?;
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
        let admission = Admission::new(plugin.clone(), false);
        Ok(Self {
            http_ctx: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks,
            budget,
            limiter: MemoryLimiter::new(plugin.manifest.limits.memory),
            plugin,
            wasi: wasi.build(),
            table: ResourceTable::new(),
            deadline: Instant::now(),
            stdout,
            stderr,
            log,
            batch: false,
            hooks: Hooks::default(),
            extra: Vec::new(),
            admission,
            refused: None,
            publish_calls: 0,
        })
    }

    /// Readies the state for one call: its reply subject, hooks and deadline; no outputs, no
    /// bytes used, a full log budget.
    pub(crate) fn begin(&mut self, has_reply: bool, batch: bool, hooks: Hooks, deadline: Instant) {
        self.batch = batch;
        self.hooks = hooks;
        self.deadline = deadline;
        self.extra.clear();
        self.admission = Admission::new(self.plugin.clone(), has_reply);
        self.refused = None;
        self.publish_calls = 0;
        self.budget.reset();
        self.http_hooks.deadline = deadline;
        self.log.reset();
    }

    /// Readies the state to admit the answer for the next input of a batch call.
    pub(crate) fn next_answer(&mut self, has_reply: bool) {
        self.extra.clear();
        self.admission.has_reply = has_reply;
        self.admission.held = Default::default();
    }

    /// Ends a call: logs what the log budget dropped and lets go of the caller's hooks (a warm
    /// instance must not keep them until its next message).
    pub(crate) fn end(&mut self) {
        self.log.report(&self.plugin.name);
        self.hooks = Hooks::default();
        for denied in std::mem::take(&mut self.http_hooks.denied) {
            self.admission.count_denial(&denied);
        }
    }
}

/// Gives a WASI context the manifest's `sandbox.env` and `sandbox.dirs`, a component's and a
/// command's alike.
pub(crate) fn grant_env_and_dirs(
    wasi: &mut WasiCtxBuilder,
    sandbox: &crate::manifest::Sandbox,
) -> anyhow::Result<()> {
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
    Ok(())
}

impl super::Limited for Invocation {
    fn deadline(&self) -> Instant {
        self.deadline
    }

    fn limiter(&mut self) -> &mut MemoryLimiter {
        &mut self.limiter
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
        match self.admission.admit(wit_output(output)) {
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
