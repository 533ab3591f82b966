//! Ack-progress heartbeats. While a message is in the host's hands (handler, publishing its
//! outputs, settling), `+WPI` goes out for it every interval (a fraction of ack_wait), and at once
//! when the guest calls `in-progress`. It does not depend on the guest: a handler that never asks
//! still keeps its message alive, and one that loops is stopped by its own limits.
//!
//! One ticker task per pull loop beats for all of that loop's messages: a message only registers
//! its acker ([`Heartbeats::start`]), which costs a lock, no timer and no task. The ticker ticks
//! [`TICKS_PER_INTERVAL`] times an interval, so a message's first beat comes between 7/8 of an
//! interval and a whole one after it started (later only if the ticker's thread is held up).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use prometheus_client::metrics::counter::Counter;
use slab::Slab;
use tokio::sync::Notify;

use crate::runtime::InProgress;

/// Ticks per heartbeat interval: how finely the ticker tells that a message is due.
const TICKS_PER_INTERVAL: u64 = 8;

/// The heartbeats of one pull loop's messages. Its ticker stops when this is dropped.
pub struct Heartbeats {
    shared: Arc<Shared>,
    ticker: tokio::task::JoinHandle<()>,
}

struct Shared {
    beating: Mutex<Beating>,
    /// Wakes the ticker for a message whose guest asked for a heartbeat now.
    nudge: Notify,
    sent: Counter,
    /// The time between ticks, in microseconds.
    tick_us: AtomicU64,
}

#[derive(Default)]
struct Beating {
    /// Ticks since the ticker started.
    now: u64,
    messages: Slab<Beat>,
}

struct Beat {
    acker: Arc<Acker>,
    /// The tick at which this message is due a heartbeat.
    due: u64,
    /// The tick of its last heartbeat.
    last: u64,
}

impl Heartbeats {
    /// Starts the ticker: every registered message gets ack-progress every `interval`, counted
    /// in `sent`.
    pub fn new(interval: Duration, sent: Counter) -> Self {
        let shared = Arc::new(Shared {
            beating: Mutex::new(Beating::default()),
            nudge: Notify::new(),
            sent,
            tick_us: AtomicU64::new(0),
        });
        let heartbeats = Self {
            ticker: tokio::spawn(tick(shared.clone())),
            shared,
        };
        heartbeats.set_interval(interval);
        heartbeats
    }

    /// Beats every `interval` from the next tick on (a bound consumer's ack wait is known only
    /// once its info is read).
    pub fn set_interval(&self, interval: Duration) {
        let ticks = u32::try_from(TICKS_PER_INTERVAL).unwrap_or(1);
        let every = (interval / ticks).max(Duration::from_millis(1));
        let us = u64::try_from(every.as_micros()).unwrap_or(u64::MAX);
        self.shared.tick_us.store(us, Ordering::Relaxed);
        // The ticker may be asleep until a tick of the old interval.
        self.shared.nudge.notify_one();
    }

    /// Beats for `acker` until the returned guard is dropped.
    pub fn start(&self, acker: Arc<Acker>) -> Heartbeat {
        let mut beating = self.shared.lock();
        let (now, due) = (beating.now, beating.now + TICKS_PER_INTERVAL);
        let key = beating.messages.insert(Beat {
            acker,
            due,
            last: now,
        });
        Heartbeat {
            shared: self.shared.clone(),
            key,
        }
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// One message's heartbeat; it stops when dropped.
pub struct Heartbeat {
    shared: Arc<Shared>,
    key: usize,
}

impl Heartbeat {
    /// The hook the guest's `in-progress` calls: a heartbeat right now, or at the next tick if
    /// one went out in this tick (a guest calling it in a loop sends at most one a tick).
    pub fn in_progress(&self) -> InProgress {
        let shared = self.shared.clone();
        let key = self.key;
        Arc::new(move || {
            let mut beating = shared.lock();
            let now = beating.now;
            let Some(beat) = beating.messages.get_mut(key) else {
                return;
            };
            if beat.last < now {
                beat.due = 0;
                drop(beating);
                shared.nudge.notify_one();
            } else {
                beat.due = beat.due.min(now + 1);
            }
        })
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shared.lock().messages.try_remove(self.key);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Beating> {
        // Every change is a single call that cannot panic half-way, so a poisoned lock still
        // holds a consistent set.
        self.beating.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The ticker: each tick (or nudge), ack-progress for every message that is due.
async fn tick(shared: Arc<Shared>) {
    let every = || Duration::from_micros(shared.tick_us.load(Ordering::Relaxed));
    let mut last = tokio::time::Instant::now();
    let mut due = Vec::new();
    loop {
        tokio::select! {
            // Missed ticks are not made up: the next one is a whole tick after this one.
            _ = tokio::time::sleep_until(last + every()) => {
                shared.lock().now += 1;
                last = tokio::time::Instant::now();
            }
            _ = shared.nudge.notified() => {}
        }
        {
            let mut beating = shared.lock();
            let now = beating.now;
            for (_, beat) in beating.messages.iter_mut() {
                if beat.due <= now {
                    beat.due = now + TICKS_PER_INTERVAL;
                    beat.last = now;
                    due.push(beat.acker.clone());
                }
            }
        }
        for acker in due.drain(..) {
            match acker.ack_with(AckKind::Progress).await {
                Ok(()) => {
                    shared.sent.inc();
                }
                Err(e) => tracing::warn!(error = %e, "cannot send ack-progress"),
            }
        }
    }
}
