//! The state of one handler call: the data of its fresh `Store` (sandboxed WASI context, memory
//! limiter, deadline, outputs added through `publish`) and the host functions the guest imports.
//! It lives exactly as long as one message's call, so nothing carries over to the next message.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::natsplug::plugin::{host, types};
use super::guest_log::GuestLog;
use super::{PluginInner, wit_output};
use crate::message::{Output, subject_matches};

/// Most outputs one call may add through `publish`.
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
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) deadline: Instant,
    pub(crate) stdout: GuestLog,
    pub(crate) stderr: GuestLog,
    /// Whether the input has a reply subject (reply outputs are allowed).
    has_reply: bool,
    hooks: Hooks,
    /// Outputs added through `publish`, in order.
    pub(crate) extra: Vec<Output>,
}

impl Invocation {
    /// The state of a new instance; [`begin`](Self::begin) readies it for each call.
    pub(crate) fn new(plugin: Arc<PluginInner>) -> anyhow::Result<Self> {
        let stdout = GuestLog::stdout(plugin.name.clone());
        let stderr = GuestLog::stderr(plugin.name.clone());
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
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        Ok(Self {
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
            has_reply: false,
            hooks: Hooks::default(),
            extra: Vec::new(),
        })
    }

    /// Readies the state for one call: its reply subject, hooks and deadline; no outputs yet.
    pub(crate) fn begin(&mut self, has_reply: bool, hooks: Hooks, deadline: Instant) {
        self.has_reply = has_reply;
        self.hooks = hooks;
        self.deadline = deadline;
        self.extra.clear();
    }

    /// Checks that an output may be published: an allowed subject, or a reply to a request.
    pub(crate) fn check(&self, output: &Output) -> Result<(), super::HandlerError> {
        let plugin = || self.plugin.name.to_string();
        match &output.subject {
            None if self.has_reply => Ok(()),
            None => Err(super::HandlerError::NoReplySubject { plugin: plugin() }),
            Some(subject) => {
                let valid = !subject.is_empty()
                    && subject.split('.').all(|t| {
                        !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace)
                    });
                let allowed = self
                    .plugin
                    .manifest
                    .publish
                    .allow
                    .iter()
                    .any(|pattern| subject_matches(pattern, subject));
                if valid && allowed {
                    Ok(())
                } else {
                    Err(super::HandlerError::ForbiddenSubject {
                        plugin: plugin(),
                        subject: subject.clone(),
                    })
                }
            }
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

    fn publish(&mut self, output: types::Output) -> Result<(), String> {
        let output = wit_output(output);
        self.check(&output).map_err(|e| e.to_string())?;
        if self.extra.len() >= MAX_EXTRA_OUTPUTS {
            return Err(format!("more than {MAX_EXTRA_OUTPUTS} outputs in one call"));
        }
        self.extra.push(output);
        Ok(())
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.plugin.manifest.config.get(&key).cloned()
    }
}
