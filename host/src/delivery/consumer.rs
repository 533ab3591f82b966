//! The consumer side of one plugin: a durable pull consumer (created, updated or bound) or core
//! NATS subscriptions. It pulls, runs each message's handler with a heartbeat beside it, and
//! hands the answer to [`crate::delivery::settle`], which decides and carries out what becomes
//! of the input.
//!
//! A JetStream worker is one pull loop (a shard) per core thread ([`crate::delivery::cores`]),
//! each with its share of the plugin's concurrency, running its messages in its own task. A
//! shard pulls only as many messages as it has free handler slots, so a message never waits in
//! a local buffer while its ack_wait runs out. Core messages get a task each.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, AckKind};
use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument as _;

use crate::backoff::Backoff;
use crate::delivery::cores::Cores;
use crate::delivery::faults;
use crate::delivery::heartbeat::Heartbeats;
use crate::delivery::publisher::Publisher;
use crate::delivery::pull::{Pulled, Puller};
use crate::delivery::settle::{self, Decision, DeliveryLimit, Settled, Settler};
use crate::manifest::{Deliver, Subscribe};
use crate::message::{Delivery, Headers, Message};
use crate::metrics::PluginMetrics;
use crate::runtime::{Hooks, OutputHold, Plugin};
use crate::shutdown::Shutdown;
use crate::traces::Traces;

/// The fewest handler slots a shard gets: fewer shards than runtime threads rather than shards
/// that pull a message or two at a time.
const MIN_SHARE: usize = 16;
/// Why a message pulled while the host stops is given back.
const PULLED_WHILE_STOPPING: &str = "pulled while this host stopped";
/// Why a message that came for a pull request given up on, with no slot free, is given back.
const BEYOND_FREE_SLOTS: &str = "came for a pull request given up on, with no handler slot free";
/// The dead-letter kind and reason of a message whose handling panicked on its last delivery
/// under a limit the server enforces.
const HOST_PANIC: &str = "host-panic";
const HOST_PANICKED: &str = "the host's handling of it panicked, on its last allowed delivery";
/// The dead-letter reason of one still in flight at the end of the graceful period.
const CUT_SHORT: &str = "still in flight at the end of the graceful period";
/// Longest wait between attempts to set up a consumer or pull after an error.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// What every message task of a worker shares.
#[derive(Clone)]
pub struct Worker {
    /// The plugin's current version; a message keeps the version it started on.
    pub plugin: watch::Receiver<Plugin>,
    /// Where outputs and dead letters go.
    pub publisher: Arc<Publisher>,
    /// The host's shutdown signal.
    pub shutdown: Shutdown,
    /// Cancelled when this worker is replaced or its plugin removed: it stops pulling and lets
    /// its in-flight messages finish.
    pub retire: CancellationToken,
    /// Owns every message task, so the host can wait for them.
    pub tracker: TaskTracker,
    /// This plugin's metrics.
    pub metrics: PluginMetrics,
    /// Set while the consumer (or the core subscription) is in place.
    pub bound: Arc<std::sync::atomic::AtomicBool>,
    /// Why the plugin is not served, while its set-up fails (for `natsplug list`).
    pub unserved: Arc<std::sync::Mutex<Option<String>>>,
    /// Where the host stores dead letters no stream captures (`host.dead_letter_stream`).
    pub dead_letter_stream: Option<String>,
    /// The host's trace exporter, or none: a span per message, its outputs' `traceparent`.
    pub traces: Traces,
    /// The host's core threads, where the shards run (with their connections); without them,
    /// shards are tasks on the current runtime with [`publisher`](Self::publisher).
    pub cores: Option<Arc<Cores>>,
    /// Where a handler that yields moves to (the host's multi-thread runtime when this worker
    /// is a shard on a core); the current runtime when none.
    pub long_handlers: Option<tokio::runtime::Handle>,
}

impl Worker {
    fn current(&self) -> Plugin {
        self.plugin.borrow().clone()
    }

    /// What carries out the decisions for `plugin`'s inputs under `limit`.
    fn settler<'a>(&'a self, plugin: &'a Plugin, limit: DeliveryLimit) -> Settler<'a> {
        Settler {
            plugin,
            publisher: &self.publisher,
            metrics: &self.metrics,
            limit,
            shutdown: &self.shutdown,
        }
    }

    /// Runs the plugin's subscription until shutdown.
    pub async fn run(self, client: async_nats::Client) {
        let plugin = self.current();
        let Some(subscribe) = plugin.manifest().subscribe.clone() else {
            return;
        };
        if !self.dead_letters_stored(&client).await {
            return;
        }
        if subscribe.stream.is_some() {
            self.run_shards(client, subscribe).await;
        } else {
            self.run_core(client, subscribe).await;
        }
    }

    /// Waits until a stream stores the plugin's dead letters ([`settle::ensure_stored`]),
    /// trying again with backoff and saying why meanwhile; false if the host stops or the
    /// worker is retired first. Nothing is pulled or subscribed before: an input this plugin
    /// could not dead-letter stays on the server.
    async fn dead_letters_stored(&self, client: &async_nats::Client) -> bool {
        let plugin = self.current();
        let subject = plugin.manifest().publish.dead_letter_subject(plugin.name());
        let js = jetstream::new(client.clone());
        let mut failures = 0;
        loop {
            let stored =
                settle::ensure_stored(&js, &subject, self.dead_letter_stream.as_deref()).await;
            let why = match stored {
                Ok(stream) => {
                    tracing::debug!(
                        plugin = plugin.name(),
                        subject,
                        stream,
                        "dead letters stored"
                    );
                    None
                }
                Err(e) => {
                    if failures == 0 {
                        tracing::error!(plugin = plugin.name(), error = %e, "plugin not served");
                    }
                    Some(format!("not served: {e}"))
                }
            };
            let served = why.is_none();
            *self.unserved.lock().unwrap_or_else(|e| e.into_inner()) = why;
            if served {
                return true;
            }
            failures += 1;
            self.pause(failures).await;
            if self.shutdown.is_stopping() || self.retire.is_cancelled() {
                return false;
            }
        }
    }

    /// Splits the plugin's concurrency over pull loops (shards), one per core thread
    /// ([`crate::delivery::cores`]; without cores, one per runtime worker thread) but none with fewer
    /// than [`MIN_SHARE`] slots, and waits for all of them. A shard that panics (a host bug) is
    /// logged and started again.
    ///
    /// A shard runs its messages' handlers in its own task rather than a task each: a message
    /// pulled, handled, published and acked in one poll of its shard costs no task spawn, and
    /// on a core thread no wake-up of another thread either. A handler that takes longer moves
    /// to a task of its own (see [`handle`](Self::handle)).
    async fn run_shards(self, client: async_nats::Client, subscribe: Subscribe) {
        let concurrency = subscribe.concurrency.get();
        let threads = match &self.cores {
            Some(cores) => cores.len(),
            None => tokio::runtime::Handle::current().metrics().num_workers(),
        };
        let shards = threads.min(concurrency / MIN_SHARE).max(1);
        let first = self.cores.as_ref().map_or(0, |cores| cores.first());
        let supervised = (0..shards).map(|shard| {
            let share = concurrency / shards + usize::from(shard < concurrency % shards);
            let (mut worker, mut client, subscribe) =
                (self.clone(), client.clone(), subscribe.clone());
            let mut on = tokio::runtime::Handle::current();
            if let Some(cores) = &self.cores {
                let core = cores.get(first + shard);
                client = core.client.clone();
                worker.publisher = core.publisher.clone();
                on = core.handle.clone();
                // Where a long handler goes; a shard does not hold the cores (they stop when
                // the host drops them).
                worker.long_handlers = Some(cores.main().clone());
                worker.cores = None;
            }
            async move {
                loop {
                    let run = worker.clone().run_jetstream(client.clone(), subscribe.clone(), shard, share);
                    let Err(e) = on.spawn(worker.tracker.track_future(run)).await else { break };
                    if !e.is_panic() {
                        break; // cancelled: its core is closing
                    }
                    tracing::error!(plugin = worker.current().name(), shard, error = %e, "a pull loop panicked; starting it again");
                    if worker.shutdown.is_stopping() || worker.retire.is_cancelled() {
                        break;
                    }
                }
            }
        });
        // A bound consumer's limit is the server's: what it gives up on silently is
        // dead-lettered from the stream.
        let watch = async {
            if subscribe.bind {
                self.dead_letter_max_deliveries(client.clone(), &subscribe)
                    .await;
            }
        };
        tokio::join!(futures::future::join_all(supervised), watch);
    }

    /// Watches the server's `MAX_DELIVERIES` advisories for a bound consumer, and stores the
    /// dead letter of each message the server gave up on (its last delivery ended unsettled: a
    /// host killed, a dead letter refused until the end of a graceful period), read from the
    /// stream by sequence. Every host watching stores it under one `Nats-Msg-Id`, so it is kept
    /// once.
    async fn dead_letter_max_deliveries(&self, client: async_nats::Client, subscribe: &Subscribe) {
        let plugin = self.current();
        let stream_name = subscribe.stream.clone().unwrap_or_default();
        let durable = subscribe
            .durable
            .clone()
            .unwrap_or_else(|| plugin.name().to_owned());
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{durable}");
        let mut advisories = match client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(plugin = plugin.name(), subject, error = %e, "cannot watch the bound consumer's max-deliveries advisories");
                return;
            }
        };
        let js = jetstream::new(client);
        loop {
            let advisory = tokio::select! {
                a = advisories.next() => match a { Some(a) => a, None => return },
                _ = self.shutdown.stopping() => return,
                _ = self.retire.cancelled() => return,
            };
            let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
                continue;
            };
            let stored = match js.get_stream(&stream_name).await {
                Ok(stream) => stream.get_raw_message(advisory.stream_seq).await.ok(),
                Err(_) => None,
            };
            let Some(stored) = stored else {
                tracing::debug!(
                    sequence = advisory.stream_seq,
                    "a max-deliveries advisory for a message no longer in the stream"
                );
                continue;
            };
            let input = Message {
                subject: stored.subject.to_string(),
                reply: None,
                headers: Headers::from_nats(Some(&stored.headers)),
                payload: stored.payload,
                delivery: Some(Delivery {
                    stream: stream_name.clone(),
                    consumer: durable.clone(),
                    stream_sequence: advisory.stream_seq,
                    consumer_sequence: 0,
                    delivered: advisory.deliveries,
                    pending: 0,
                    timestamp_ns: i64::try_from(stored.time.unix_timestamp_nanos()).unwrap_or(0),
                }),
            };
            let plugin = self.current();
            let limit = DeliveryLimit {
                max_deliver: 0,
                server_enforced: true,
            };
            let reason = format!(
                "the server gave up after {} deliveries: the last one ended unsettled",
                advisory.deliveries
            );
            self.settler(&plugin, limit)
                .store_dead_letter(&input, settle::MAX_DELIVERIES, &reason)
                .await;
        }
    }

    /// Shard number `shard`: pulls at most `concurrency` messages at a time from the plugin's
    /// consumer and handles them. A message whose handling panics (a host bug) is logged and
    /// nak'ed; the shard goes on.
    async fn run_jetstream(
        self,
        client: async_nats::Client,
        subscribe: Subscribe,
        shard: usize,
        concurrency: usize,
    ) {
        let name = self.current().name().to_owned();
        let js = jetstream::new(client.clone());
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut puller: Option<Puller> = None;
        let heartbeats = Heartbeats::new(
            subscribe.heartbeat_interval(),
            self.metrics.heartbeats.clone(),
        );
        // The consumer's delivery limit, as the last set-up found it.
        let mut limit = DeliveryLimit::of(self.current().manifest());
        // Whether the consumer was in place once: if it goes, an operator deleted it.
        let mut was_set_up = false;
        // Declared after what its messages borrow, so it is dropped first.
        let mut in_flight = FuturesUnordered::new();
        let mut failures = 0u32;
        while !self.shutdown.is_stopping() && !self.retire.is_cancelled() {
            let Some(pull) = &mut puller else {
                let set_up = async {
                    let consumer = ensure_consumer(&js, &name, &subscribe, was_set_up).await?;
                    let pull = Puller::new(client.clone(), js.clone(), &consumer.pull, concurrency)
                        .await?;
                    anyhow::Ok((consumer, pull))
                };
                let ready = driving(&mut in_flight, &name, set_up).await;
                match ready {
                    Ok((consumer, p)) => {
                        tracing::info!(plugin = %name, stream = ?subscribe.stream, shard, max_deliver = consumer.limit.max_deliver, heartbeat = ?consumer.heartbeat, "consumer ready");
                        self.bound.store(true, std::sync::atomic::Ordering::Relaxed);
                        heartbeats.set_interval(consumer.heartbeat);
                        limit = consumer.limit;
                        puller = Some(p);
                        failures = 0;
                        was_set_up = !subscribe.bind;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(plugin = %name, error = %e, "cannot set up the consumer; retrying");
                        driving(&mut in_flight, &name, self.pause(failures)).await;
                    }
                }
                continue;
            };
            // Ask for messages when enough slots are free (all of the free ones), and hand
            // every message that arrives to a task with the slot it was asked with.
            let wanted = u32::try_from(pull.wanted()).unwrap_or(u32::MAX);
            tokio::select! {
                biased;
                _ = self.shutdown.stopping() => break,
                _ = self.retire.cancelled() => break,
                // Before pulling more: a message starts as soon as it came, and a settled one
                // frees its slot before the next request is sized. (Polling this after the
                // pull measured 15% fewer messages a second.)
                Some(done) = in_flight.next(), if !in_flight.is_empty() => settled(&name, done),
                pulled = pull.next() => match pulled {
                    Pulled::Message(message, slot) => {
                        failures = 0;
                        in_flight.push(self.message(message, slot, &heartbeats, limit));
                    }
                    // Still asked for by a request given up on: handled if a slot is free,
                    // else given back.
                    Pulled::Unrequested(message) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => in_flight.push(self.message(message, slot, &heartbeats, limit)),
                        Err(_) => {
                            tracing::warn!(plugin = %name, "a message beyond the free slots; nak'ed");
                            self.give_back(message, limit, BEYOND_FREE_SLOTS);
                        }
                    },
                    Pulled::Released => {}
                    Pulled::ConsumerGone(why) => {
                        tracing::warn!(plugin = %name, why, "the consumer is gone; setting it up again");
                        self.bound.store(false, std::sync::atomic::Ordering::Relaxed);
                        puller = None;
                    }
                    Pulled::Refused(why) => {
                        failures += 1;
                        tracing::warn!(plugin = %name, why, "pull request refused");
                        driving(&mut in_flight, &name, self.pause(failures)).await;
                    }
                    Pulled::Closed => break,
                },
                permit = slots.clone().acquire_many_owned(wanted) => {
                    let Ok(mut free) = permit else { break };
                    while let Ok(more) = slots.clone().try_acquire_owned() {
                        free.merge(more);
                    }
                    // `failures` counts on until a message comes: a request the server keeps
                    // refusing backs off.
                    if let Err(e) = driving(&mut in_flight, &name, pull.request(free)).await {
                        failures += 1;
                        tracing::warn!(plugin = %name, error = %e, "pull request failed");
                        driving(&mut in_flight, &name, self.pause(failures)).await;
                    }
                }
            }
        }
        let drain = async {
            if let Some(pull) = puller {
                // Pulled during shutdown or after retirement: give it back.
                pull.drain(|message| self.give_back(message, limit, PULLED_WHILE_STOPPING))
                    .await;
            }
        };
        let finish = async {
            while let Some(done) = in_flight.next().await {
                settled(&name, done);
            }
        };
        tokio::join!(drain, finish);
        tracing::info!(plugin = %name, shard, "stopped pulling");
    }

    /// [`process_jetstream`](Self::process_jetstream), with a panic caught so that it ends this
    /// message only: the message is nak'ed, and comes back (past its limit it is dead-lettered
    /// on arrival, before anything runs); on its last delivery under a limit the server
    /// enforces, it is dead-lettered at once.
    fn message<'a>(
        &'a self,
        message: jetstream::Message,
        slot: OwnedSemaphorePermit,
        heartbeats: &'a Heartbeats,
        limit: DeliveryLimit,
    ) -> impl Future<Output = std::thread::Result<()>> + 'a {
        let (input, acker) = jetstream_input(message);
        let acker = Arc::new(acker);
        // A nak would not bring back a message on its last delivery under the server's limit.
        let last = input
            .as_ref()
            .ok()
            .filter(|i| limit.server_enforced && limit.is_last(i.delivered()))
            .cloned();
        let process = self.process_jetstream(input, acker.clone(), slot, heartbeats, limit);
        std::panic::AssertUnwindSafe(process)
            .catch_unwind()
            .then(move |done| async move {
                if done.is_err() {
                    match &last {
                        None => settle::nak(&acker, settle::GIVE_BACK_DELAY).await,
                        Some(input) => {
                            let plugin = self.current();
                            self.settler(&plugin, limit)
                                .dead_letter_and_term(input, &acker, HOST_PANIC, HOST_PANICKED)
                                .await;
                        }
                    }
                }
                done
            })
    }

    /// Gives back a message this worker will not handle ([`Settler::give_back`]).
    fn give_back(&self, message: jetstream::Message, limit: DeliveryLimit, why: &'static str) {
        let worker = self.clone();
        self.tracker.spawn(async move {
            let plugin = worker.current();
            match jetstream_input(message) {
                (Ok(input), acker) => {
                    worker
                        .settler(&plugin, limit)
                        .give_back(&input, &acker, why)
                        .await;
                }
                (Err(_), acker) => settle::nak(&acker, settle::GIVE_BACK_DELAY).await,
            }
        });
    }

    async fn pause(&self, failures: u32) {
        let delay = Backoff {
            first: Duration::from_millis(100),
            max: MAX_RETRY_DELAY,
            jitter: false,
        }
        .delay(failures);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.shutdown.stopping() => {}
            _ = self.retire.cancelled() => {}
        }
    }

    /// Handles `input`, holding `slot` until it is settled.
    async fn process_jetstream(
        &self,
        input: Result<Message, String>,
        acker: Arc<Acker>,
        _slot: OwnedSemaphorePermit,
        heartbeats: &Heartbeats,
        limit: DeliveryLimit,
    ) {
        let plugin = self.current();
        let _in_flight = self.metrics.in_flight();
        let input = match input {
            Ok(input) => input,
            Err(e) => {
                tracing::error!(plugin = plugin.name(), error = %e, "a JetStream message without delivery info; terminated");
                settle::send(&acker, AckKind::Term).await;
                return;
            }
        };
        let settler = self.settler(&plugin, limit);
        let sequence = input.delivery.as_ref().map_or(0, |d| d.stream_sequence);
        let delivered = input.delivered();
        let span = tracing::info_span!(
            "message",
            plugin = plugin.name(),
            messaging.system = "nats",
            messaging.destination.name = %input.subject,
            stream = input.delivery.as_ref().map_or("", |d| d.stream.as_str()),
            sequence,
            delivered,
        );
        // On its last allowed delivery a message cut short by the end of the graceful period is
        // not redelivered after a nak: it is dead-lettered instead, which needs it whole.
        let last = limit.is_last(delivered).then(|| input.clone());
        let trace = self.traces.message(plugin.name(), &input);
        let heartbeat = heartbeats.start(acker.clone());
        let hooks = Hooks {
            in_progress: Some(heartbeat.in_progress()),
        };
        // What becomes of it: decided by the handler, or at once if it came past its limit.
        let decide = async {
            if delivered > 1 {
                self.metrics.redeliveries.inc();
                tracing::debug!("redelivery");
            }
            // The last allowed delivery ended unsettled (its host died, its handling panicked,
            // its dead letter was not stored): the handler does not run again.
            if limit.is_past(delivered) {
                let reason = format!(
                    "delivered {delivered} times, past max_deliver {}: an earlier delivery ended unsettled",
                    limit.max_deliver
                );
                let decision = Decision::DeadLetter {
                    kind: settle::DELIVERY_LIMIT.into(),
                    reason,
                };
                return (decision, input, OutputHold::default());
            }
            let mut input = input;
            let mut tries = 0u32;
            loop {
                let (result, back, held) = self.handle(&plugin, input, hooks.clone()).await;
                input = back;
                faults::check(&input);
                match settle::decide(result, delivered, limit, plugin.manifest()) {
                    // On its last delivery an input the host could not run is not nak'ed (that
                    // would spend the delivery): it waits here, its heartbeat going, and tries
                    // again.
                    Decision::HostFault {
                        delay,
                        kind,
                        reason,
                    } if limit.is_last(delivered) => {
                        tries += 1;
                        self.metrics.host_fault(&kind);
                        tracing::warn!(%reason, ?delay, tries, "the host could not run the handler on the last delivery; trying again");
                        tokio::time::sleep(delay).await;
                    }
                    mut decision => {
                        if let Decision::Publish(outputs) = &mut decision {
                            trace.stamp(&input, outputs);
                        }
                        return (decision, input, held);
                    }
                }
            }
        }
        .instrument(span.clone());
        // The end of the graceful period cuts a handler short, never a settlement under way:
        // the settler bounds its own retries and watches the abort.
        let decided = tokio::select! {
            decided = decide => Some(decided),
            _ = self.shutdown.aborting() => None,
        };
        let settled = match decided {
            Some((decision, input, held)) => {
                let settled = settler
                    .jetstream(&input, &acker, decision)
                    .instrument(span)
                    .await;
                drop(held);
                settled
            }
            None => match &last {
                None => {
                    tracing::warn!(
                        plugin = plugin.name(),
                        sequence,
                        "still in flight at the end of the graceful period: nak'ed for another host"
                    );
                    settle::nak(&acker, Duration::ZERO).await;
                    Settled::GivenBack
                }
                Some(input) => settler.give_back(input, &acker, CUT_SHORT).await,
            },
        };
        drop(heartbeat);
        trace.end(&settled);
    }

    /// Runs the handler, records its duration, limit hits and refusals, and gives `input` back
    /// with the output bytes its outputs hold in the host's pool.
    ///
    /// A handler that finishes without waiting runs right here, in its shard's poll. One that
    /// yields (it ran past an epoch tick, or a host call waits) moves to a task of its own, so
    /// a slow or looping handler never holds up its shard's other messages for more than one
    /// epoch tick.
    async fn handle(
        &self,
        plugin: &Plugin,
        input: Message,
        hooks: Hooks,
    ) -> (
        Result<crate::runtime::Outcome, crate::runtime::HandlerError>,
        Message,
        OutputHold,
    ) {
        let started = std::time::Instant::now();
        let plugin = plugin.clone();
        let mut run = Box::pin(async move {
            let metered = plugin.handle_metered(&input, hooks).await;
            (metered, input)
        });
        let (handled, input) = match futures::poll!(run.as_mut()) {
            std::task::Poll::Ready(done) => done,
            std::task::Poll::Pending => {
                let run = run.in_current_span();
                // Aborted with the message that owns it (at the end of the graceful period,
                // say), as it would have been in the message's own poll.
                let task = AbortOnDropHandle::new(match &self.long_handlers {
                    Some(runtime) => runtime.spawn(run),
                    None => tokio::spawn(run),
                });
                match task.await {
                    Ok(done) => done,
                    // Cancelled only if the runtime is going away, which drops this too.
                    Err(e) => std::panic::resume_unwind(
                        e.try_into_panic()
                            .unwrap_or_else(|e| Box::new(e.to_string())),
                    ),
                }
            }
        };
        self.metrics
            .handled(started.elapsed(), handled.fuel, handled.warm);
        if let Err(e) = &handled.result {
            self.metrics.limit_hit(e.kind());
        }
        for (kind, count) in handled.denials {
            self.metrics.denied(kind, count);
        }
        (handled.result, input, handled.held)
    }

    async fn run_core(self, client: async_nats::Client, subscribe: Subscribe) {
        let name = self.current().name().to_owned();
        let mut subscriptions = Vec::new();
        for subject in &subscribe.subjects {
            let subscription = match &subscribe.queue_group {
                Some(group) => client.queue_subscribe(subject.clone(), group.clone()).await,
                None => client.subscribe(subject.clone()).await,
            };
            match subscription {
                Ok(s) => subscriptions.push(s),
                Err(e) => tracing::error!(plugin = %name, subject, error = %e, "cannot subscribe"),
            }
        }
        tracing::info!(plugin = %name, subjects = ?subscribe.subjects, "subscribed");
        self.bound.store(
            !subscriptions.is_empty(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut messages = futures::stream::select_all(subscriptions);
        let slots = Arc::new(Semaphore::new(subscribe.concurrency.get()));
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                _ = self.shutdown.stopping() => break,
                _ = self.retire.cancelled() => break,
            };
            let Some(message) = message else { break };
            let slot = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = self.shutdown.stopping() => break,
            };
            let worker = self.clone();
            self.tracker.spawn(worker.process_core(message, slot));
        }
        tracing::info!(plugin = %name, "unsubscribed");
    }

    async fn process_core(self, message: async_nats::Message, _slot: OwnedSemaphorePermit) {
        let plugin = self.current();
        let _in_flight = self.metrics.in_flight();
        let input = Message {
            subject: message.subject.to_string(),
            reply: message.reply.map(|r| r.to_string()),
            headers: Headers::from_nats(message.headers.as_ref()),
            payload: message.payload,
            delivery: None,
        };
        let span = tracing::info_span!(
            "message",
            plugin = plugin.name(),
            messaging.system = "nats",
            messaging.destination.name = %input.subject,
        );
        let trace = self.traces.message(plugin.name(), &input);
        let settled = async {
            let (result, input, _held) = self.handle(&plugin, input, Hooks::default()).await;
            let limit = DeliveryLimit::of(plugin.manifest());
            let mut decision = settle::decide(result, 1, limit, plugin.manifest());
            if let Decision::Publish(outputs) = &mut decision {
                trace.stamp(&input, outputs);
            }
            self.settler(&plugin, limit).core(&input, decision).await
        }
        .instrument(span)
        .await;
        trace.end(&settled);
    }
}

/// What a `MAX_DELIVERIES` advisory says (the fields the host reads).
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: u64,
}

/// The consumer a shard pulls from, and what the host settles its messages by.
struct Consumer {
    pull: PullConsumer,
    /// Its delivery limit: the host's on a consumer it created, the consumer's own on a bound one.
    limit: DeliveryLimit,
    /// The heartbeat interval: well inside the shortest ack wait the server applies to it.
    heartbeat: Duration,
}

/// Creates or updates the plugin's durable consumer, or binds to an existing one.
///
/// A created consumer has no server-side delivery limit: the host counts deliveries against
/// `max_deliver` ([`DeliveryLimit`]). A bound one keeps its own `ack_wait`, `max_deliver` and
/// `backoff`, read from its info: heartbeats and the last-delivery decision follow them.
/// `recreating` says the consumer was in place before: an operator deleted it.
async fn ensure_consumer(
    js: &jetstream::Context,
    plugin: &str,
    subscribe: &Subscribe,
    recreating: bool,
) -> anyhow::Result<Consumer> {
    let stream_name = subscribe.stream.as_deref().unwrap_or_default();
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| anyhow::anyhow!("stream {stream_name:?}: {e}"))?;
    let durable = subscribe
        .durable
        .clone()
        .unwrap_or_else(|| plugin.to_owned());
    if subscribe.bind {
        let pull: PullConsumer = stream.get_consumer(&durable).await.map_err(|e| {
            anyhow::anyhow!("binding to consumer {durable:?} on {stream_name:?}: {e}")
        })?;
        return Ok(Consumer::as_it_is(pull, subscribe));
    }
    let (filter_subject, filter_subjects) = match subscribe.subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let deliver_policy = match subscribe.deliver {
        Deliver::All => DeliverPolicy::All,
        Deliver::New => DeliverPolicy::New,
        Deliver::Last => DeliverPolicy::Last,
    };
    if recreating {
        tracing::error!(
            plugin,
            durable,
            stream = stream_name,
            deliver = ?subscribe.deliver,
            "the consumer was deleted while this host served it; created again with the \
             manifest's deliver policy (with `all`, the stream's whole history is delivered again)"
        );
    }
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        description: Some(format!("natsplug plugin {plugin}")),
        ack_policy: AckPolicy::Explicit,
        ack_wait: subscribe.ack_wait,
        // The host counts deliveries; see `DeliveryLimit`.
        max_deliver: -1,
        deliver_policy,
        filter_subject,
        filter_subjects,
        ..Default::default()
    };
    let pull = stream
        .create_consumer(config)
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {durable:?} on {stream_name:?}: {e}"))?;
    let consumer = Consumer::as_it_is(pull, subscribe);
    if consumer.limit.max_deliver > 0 {
        // Another writer (an older natsplug, an operator) set a limit since: the server's rules.
        tracing::warn!(
            plugin,
            durable,
            max_deliver = consumer.limit.max_deliver,
            "the consumer has a server-side max_deliver: the server enforces it"
        );
        return Ok(consumer);
    }
    Ok(Consumer {
        limit: DeliveryLimit {
            max_deliver: subscribe.max_deliver,
            server_enforced: false,
        },
        ..consumer
    })
}

impl Consumer {
    /// The consumer with the limits its info says: its `max_deliver` (enforced by the server),
    /// and heartbeats well inside the shortest ack wait it has (with a backoff, the server's
    /// ack wait for a delivery is its entry in the list).
    fn as_it_is(pull: PullConsumer, subscribe: &Subscribe) -> Self {
        let config = &pull.cached_info().config;
        let shortest = config
            .backoff
            .iter()
            .copied()
            .filter(|d| !d.is_zero())
            .fold(config.ack_wait, Duration::min);
        let heartbeat = match subscribe.heartbeat {
            Some(set) => set.min(shortest / 3),
            None => shortest / 3,
        };
        Self {
            limit: DeliveryLimit {
                max_deliver: config.max_deliver,
                server_enforced: true,
            },
            heartbeat: heartbeat.max(Duration::from_millis(10)),
            pull,
        }
    }
}

/// Awaits `wait` (a pause, a set-up, a pull request) while driving a shard's in-flight messages,
/// so that their handlers, publishes and acks never wait for it.
async fn driving<F, T>(
    in_flight: &mut FuturesUnordered<F>,
    plugin: &str,
    wait: impl Future<Output = T>,
) -> T
where
    F: Future<Output = std::thread::Result<()>>,
{
    let mut wait = std::pin::pin!(wait);
    loop {
        tokio::select! {
            biased;
            out = &mut wait => return out,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => settled(plugin, done),
        }
    }
}

/// Logs a message whose handling panicked (a host bug): it was nak'ed.
fn settled(plugin: &str, done: std::thread::Result<()>) {
    if let Err(panic) = done {
        let panic = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        tracing::error!(plugin, panic, "a message's handling panicked; nak'ed");
    }
}

/// The input a JetStream message gives its handler (or why it has none: no delivery info), and
/// its acker.
fn jetstream_input(message: jetstream::Message) -> (Result<Message, String>, Acker) {
    let delivery = message
        .info()
        .map(|info| Delivery {
            stream: info.stream.to_owned(),
            consumer: info.consumer.to_owned(),
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
            delivered: u64::try_from(info.delivered).unwrap_or(1),
            pending: info.pending,
            timestamp_ns: i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
        })
        .map_err(|e| e.to_string());
    let (message, acker) = message.split();
    let input = delivery.map(|delivery| Message {
        subject: message.subject.to_string(),
        reply: None,
        headers: Headers::from_nats(message.headers.as_ref()),
        payload: message.payload,
        delivery: Some(delivery),
    });
    (input, acker)
}
