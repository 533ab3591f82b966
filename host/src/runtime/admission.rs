//! Admission: every output a guest asks for, whatever its contract (a component's `publish`
//! and results, a command's output frames), is checked here before the host keeps it: its
//! subject against the plugin's grant and reserved space ([`crate::policy`]), its headers
//! (sendable, server headers only if granted), and its bytes against the message's budget
//! (`limits.output_bytes`) and the host-wide pool of pending output bytes. Without the budget,
//! one message that `publish()`ed one 8 MiB buffer 200 times held 1.6 GiB of the host.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{HandlerError, PluginInner};
use crate::message::Output;
use crate::policy::{self, Denied};

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

    /// Takes up to `bytes` of what this holds into a hold of their own.
    fn split_off(&mut self, bytes: usize) -> Self {
        let bytes = bytes.min(self.bytes());
        Self(self.0.as_mut().and_then(|held| held.split(bytes)))
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

    /// Takes `bytes` more from the pool into `hold`; false, taking nothing, if it has not them.
    pub(crate) fn take(&self, hold: &mut OutputHold, bytes: usize) -> bool {
        let permit = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.semaphore.clone().try_acquire_many_owned(n).ok());
        permit.map(|permit| hold.add(permit)).is_some()
    }
}

/// The admission of one answer's outputs: what was admitted holds bytes, what was refused is
/// counted by kind.
pub(crate) struct Admission {
    plugin: Arc<PluginInner>,
    /// Whether the input has a reply subject (reply outputs are allowed).
    pub(crate) has_reply: bool,
    /// The bytes of the outputs admitted so far, held in the host-wide pool; they count
    /// against `limits.output_bytes` too.
    pub(crate) held: OutputHold,
    /// Refusals by kind, for `natsplug_policy_denials_total`.
    pub(crate) denials: Vec<(&'static str, u64)>,
    /// Pool bytes already held for this answer (a command's standard output, being read),
    /// spent before the pool's own.
    prepaid: OutputHold,
}

impl Admission {
    pub(crate) fn new(plugin: Arc<PluginInner>, has_reply: bool) -> Self {
        Self {
            plugin,
            has_reply,
            held: OutputHold::default(),
            denials: Vec::new(),
            prepaid: OutputHold::default(),
        }
    }

    /// Spends `hold` before the pool: the bytes that held the answer's text hold its outputs
    /// as they are read from it, so one answer is never counted twice.
    pub(crate) fn prepaid(mut self, hold: OutputHold) -> Self {
        self.prepaid = hold;
        self
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
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        let prepaid = self.prepaid.split_off(bytes);
        let rest = bytes - prepaid.bytes();
        if let Some(prepaid) = prepaid.0 {
            self.held.add(prepaid);
        }
        if rest > 0 && !pool.take(&mut self.held, rest) {
            return Err(HandlerError::OutputPoolFull {
                plugin: self.plugin.name.to_string(),
                limit: pool.limit,
            });
        }
        Ok(())
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
    pub(crate) fn refuse(&mut self, denied: Denied) -> HandlerError {
        self.count_denial(&denied);
        HandlerError::Refused {
            plugin: self.plugin.name.to_string(),
            denied,
        }
    }
}
