//! The warm instances of one plugin version (`[instance] isolation = "pool"`): instances
//! parked after a call that ended well, taken by the next message.
//!
//! The rules, after wasmCloud's warm set (`wash-runtime`'s `wasmcloud_nats/warm.rs`):
//! - a message takes the most recently parked instance (LIFO: its caches are the warmest), or
//!   gets a fresh one when none is idle: it never waits for one;
//! - an instance is parked only after a call that ended with an answer the host kept (never
//!   after a trap, a limit hit or a refused output), and only while it has served fewer than
//!   `max_invocations` messages and the pool holds fewer than `pool` idle instances;
//! - an instance idle for longer than `max_idle` is dropped, not taken;
//! - the pool belongs to one loaded version: a new version starts with an empty pool, and the
//!   old one is dropped with the last message that still runs on it.
//!
//! Fuel, the deadline, the log budget, outputs and hooks are set afresh for every call
//! ([`super::invocation::Invocation::begin`]), so a warm instance shares only what the guest
//! left in its own memory.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::Store;

use super::Exports;
use super::invocation::Invocation;
use crate::manifest::{Isolation, Manifest};

/// An instance between calls: its store, its exports (once instantiated), how many messages
/// it has served.
pub(crate) struct Instance {
    pub(crate) store: Store<Invocation>,
    pub(crate) exports: Option<Exports>,
    pub(crate) uses: u32,
}

/// One parked instance and when it was parked.
struct Parked {
    instance: Instance,
    at: Instant,
}

/// The idle instances of one plugin version.
pub(crate) struct Pool {
    /// Idle instances, the most recently parked last. Empty and unused under
    /// `isolation = "message"`.
    idle: Mutex<Vec<Parked>>,
    /// Whether instances are parked at all.
    enabled: bool,
    capacity: usize,
    max_invocations: u32,
    max_idle: Duration,
    /// Calls that got a parked instance, and calls that made a fresh one.
    warm: AtomicU64,
    fresh: AtomicU64,
}

/// How a plugin version's calls got their instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Calls on a parked instance.
    pub warm: u64,
    /// Calls on a fresh instance.
    pub fresh: u64,
    /// Instances parked now.
    pub idle: usize,
}

impl Pool {
    pub(crate) fn new(manifest: &Manifest) -> Self {
        let policy = &manifest.instance;
        Self {
            idle: Mutex::default(),
            enabled: policy.isolation == Isolation::Pool,
            capacity: manifest.pool_size(),
            max_invocations: policy.max_invocations.get(),
            max_idle: policy.max_idle,
            warm: AtomicU64::new(0),
            fresh: AtomicU64::new(0),
        }
    }

    /// The most recently parked instance still young enough, if any; counts the call as warm,
    /// or as fresh when there is none. Instances idle past `max_idle` are dropped (outside the
    /// lock: dropping a store frees its slot).
    pub(crate) fn take(&self) -> Option<Instance> {
        if !self.enabled {
            self.fresh.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let now = Instant::now();
        let (taken, stale) = {
            let mut idle = self.lock();
            // Parked in order, so the stale ones are at the front.
            let fresh_from = idle.partition_point(|p| now.duration_since(p.at) > self.max_idle);
            let stale: Vec<Parked> = idle.drain(..fresh_from).collect();
            (idle.pop(), stale)
        };
        drop(stale);
        let counter = if taken.is_some() {
            &self.warm
        } else {
            &self.fresh
        };
        counter.fetch_add(1, Ordering::Relaxed);
        taken.map(|p| p.instance)
    }

    /// Parks `instance` after a call that ended well, unless it has served its
    /// `max_invocations` or the pool is full; then it is dropped.
    pub(crate) fn park(&self, mut instance: Instance) {
        instance.uses += 1;
        // An instance that still holds HTTP requests or responses (handles the guest kept in a
        // global) is dropped with them, not parked with their sockets open.
        if !self.enabled
            || instance.uses >= self.max_invocations
            || instance.store.data().http_hooks.open() > 0
        {
            return;
        }
        let rejected = {
            let mut idle = self.lock();
            if idle.len() < self.capacity {
                idle.push(Parked {
                    instance,
                    at: Instant::now(),
                });
                None
            } else {
                Some(instance)
            }
        };
        drop(rejected);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        PoolStats {
            warm: self.warm.load(Ordering::Relaxed),
            fresh: self.fresh.load(Ordering::Relaxed),
            idle: self.lock().len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        // The list is valid even if a holder panicked: pushes and pops are whole.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
