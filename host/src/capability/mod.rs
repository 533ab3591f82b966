//! Capabilities: what a handler may do besides turning its message into outputs, each off
//! unless the plugin's manifest grants it. A handler may send requests to NATS services
//! (`[request]`, [`request`]), read and write NATS KV buckets through the standard
//! `wasi:keyvalue` interfaces and natsplug's revisions (`[kv]`, [`kv`]), and call HTTP origins
//! through `wasi:http/outgoing-handler` (`[http]`, [`http`]).
//!
//! Every call is checked against the grant by [`crate::policy::capabilities`] (a refusal is a
//! typed error the guest sees, counted in `natsplug_policy_denials_total`), is cut at what is
//! left of the handler's deadline, and is counted by result in `natsplug_capability_calls_total`
//! and timed in `natsplug_capability_duration_seconds`. The guest waits; the executor does not,
//! so the message's heartbeats go on while a capability call is out (`delivery::heartbeat`).
//!
//! Layout:
//! - here: [`Services`] (the NATS connection and the metrics a runtime's capabilities use),
//!   [`Capabilities`] (one plugin version's grants, compiled, and its opened buckets), and
//!   [`Call`] (one call's accounting).
//! - [`request`], [`kv`], [`http`]: the host functions of each capability.

pub mod http;
pub mod kv;
pub mod request;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::policy::{Denied, Pattern};
use crate::runtime::Invocation;

/// Capability calls one handler call may make, all capabilities together: a guest looping on
/// requests or KV writes stops here instead of flooding the server for its whole deadline.
pub const MAX_CALLS: u32 = 10_000;

/// What the capabilities of a runtime's plugins reach: a NATS connection (none offline,
/// unless `natsplug call --server`), and where calls are counted. Cheap to clone.
#[derive(Clone, Default)]
pub struct Services {
    nats: Option<async_nats::Client>,
    pub(crate) metrics: Option<Arc<Metrics>>,
}

impl Services {
    /// Capabilities over `nats` (a connection of its own: a slow service never holds up the
    /// consumer's pulls and acks), counted in `metrics`.
    pub fn new(nats: async_nats::Client, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            nats: Some(nats),
            metrics,
        }
    }

    /// The NATS connection, or why there is none.
    pub(crate) fn nats(&self) -> Result<&async_nats::Client, String> {
        self.nats.as_ref().ok_or_else(|| {
            "natsplug has no NATS connection here (natsplug call: pass --server URL)".to_owned()
        })
    }
}

/// One plugin version's grants, compiled once at load, and the buckets it has opened.
pub(crate) struct Capabilities {
    pub(crate) services: Services,
    /// `[request] allow`.
    pub(crate) request_allow: Vec<Pattern>,
    /// `[request] timeout`.
    pub(crate) request_timeout: Duration,
    /// `[kv] buckets`, by name.
    pub(crate) buckets: BTreeMap<String, kv::Granted>,
    /// `[http]`.
    pub(crate) http: Arc<http::Grant>,
}

impl Capabilities {
    pub(crate) fn new(manifest: &Manifest, services: &Services) -> Self {
        Self {
            services: services.clone(),
            request_allow: manifest
                .request
                .allow
                .iter()
                .map(|p| Pattern::parse(p))
                .collect(),
            request_timeout: manifest.request.timeout,
            buckets: manifest
                .kv
                .buckets
                .iter()
                .map(|(name, grant)| (name.clone(), kv::Granted::new(name, grant)))
                .collect(),
            http: Arc::new(http::Grant::new(&manifest.http)),
        }
    }

    /// Opens every granted bucket now (creating those the manifest says to create), so that a
    /// missing one fails the plugin's load with a clear error instead of every message.
    /// Without a NATS connection there is nothing to check.
    pub(crate) async fn open(&self) -> Result<(), String> {
        let Ok(nats) = self.services.nats() else {
            return Ok(());
        };
        for granted in self.buckets.values() {
            granted.store(nats).await?;
        }
        Ok(())
    }
}

/// The capability calls of one handler call, all capabilities together (HTTP's hooks count in
/// the same budget). Shared by the instance's state and its HTTP hooks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Budget(Arc<AtomicU32>);

impl Budget {
    /// Counts `calls` more; an error once the handler call's budget is spent.
    pub(crate) fn spend(&self, calls: u32) -> Result<(), String> {
        let before = self.0.fetch_add(calls, Ordering::Relaxed);
        if before.saturating_add(calls) > MAX_CALLS {
            return Err(format!(
                "more than {MAX_CALLS} capability calls in one handler call"
            ));
        }
        Ok(())
    }

    /// A fresh budget, for the next handler call.
    pub(crate) fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// How one capability call ended, for its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    Error,
    Denied,
}

impl Ended {
    /// `Ok` or `Error`, as the call's result is.
    pub(crate) fn of<T, E>(result: &Result<T, E>) -> Self {
        if result.is_ok() {
            Self::Ok
        } else {
            Self::Error
        }
    }

    /// The `result` label of `natsplug_capability_calls_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Denied => "denied",
        }
    }
}

/// One capability call in progress: started by [`Call::start`] (which counts it against
/// [`MAX_CALLS`]), ended by [`Call::end`] (which counts it in the metrics).
pub(crate) struct Call {
    capability: &'static str,
    started: Instant,
}

impl Call {
    /// Starts a call of `capability` that counts as `calls` calls (a batch of keys counts
    /// each), or refuses it when the handler call's budget is spent.
    pub(crate) fn start(
        state: &mut Invocation,
        capability: &'static str,
        calls: u32,
    ) -> Result<Self, String> {
        state.budget.spend(calls)?;
        Ok(Self {
            capability,
            started: Instant::now(),
        })
    }

    /// Ends the call: counts it by result; a denial is also counted as a policy refusal.
    pub(crate) fn end(self, state: &mut Invocation, result: Ended, denied: Option<&Denied>) {
        if let Some(denied) = denied {
            state.admission.count_denial(denied);
            tracing::warn!(plugin = %state.plugin.name, capability = self.capability, kind = denied.kind(), "{denied}");
        }
        if let Some(metrics) = &state.plugin.capabilities.services.metrics {
            metrics.capability(
                &state.plugin.name,
                self.capability,
                result.label(),
                self.started.elapsed(),
            );
        }
    }
}

/// What is left of the handler's deadline (zero once it has passed).
pub(crate) fn remaining(state: &Invocation) -> Duration {
    state.deadline.saturating_duration_since(Instant::now())
}
