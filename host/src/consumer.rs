//! The consumer side of one plugin: a durable pull consumer (created, updated or bound) or core
//! NATS subscriptions. Each message runs the handler with a heartbeat beside it and settles the
//! input (publish outputs then ack, nak, or dead-letter then term).
//!
//! A JetStream worker is one pull loop (a shard) per core thread ([`crate::cores`]), each with its share
//! of the plugin's concurrency, running its messages in its own task. A shard pulls only as many
//! messages as it has free handler slots, so a message never waits in a local buffer while its
//! ack_wait runs out. Core messages get a task each.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
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
use crate::cores::Cores;
use crate::heartbeat::Heartbeats;
use crate::manifest::{AckMode, Subscribe};
use crate::message::{Delivery, Headers, Message};
use crate::metrics::PluginMetrics;
use crate::policy;
use crate::publisher::{PublishError, Publisher};
use crate::pull::{Pulled, Puller};
use crate::runtime::{Hooks, OutputHold, Plugin};
use crate::settle::{self, Decision, Settled};
use crate::shutdown::Shutdown;
use crate::traces::Traces;

/// The nak delay of a message pulled while stopping: longer than [`crate::pull::PULL_EXPIRES`], so its
/// redelivery goes to another pull request, not back into the one being drained.
const GIVE_BACK_DELAY: Duration = Duration::from_secs(2);
/// The fewest handler slots a shard gets: fewer shards than runtime threads rather than shards
/// that pull a message or two at a time.
const MIN_SHARE: usize = 16;
/// The dead-letter kind of a message this host gave back on its last allowed delivery.
const GIVEN_BACK: &str = "given-back";
/// The dead-letter reason of one pulled while the host stopped.
const PULLED_WHILE_STOPPING: &str = "pulled while this host stopped, on its last allowed delivery";
/// The dead-letter reason of one still in flight at the end of the graceful period.
const CUT_SHORT: &str =
    "still in flight at the end of the graceful period, on its last allowed delivery";
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

    /// Runs the plugin's subscription until shutdown.
    pub async fn run(self, client: async_nats::Client) {
        let plugin = self.current();
        let Some(subscribe) = plugin.manifest().subscribe.clone() else {
            return;
        };
        if subscribe.stream.is_some() {
            self.run_shards(client, subscribe).await;
        } else {
            self.run_core(client, subscribe).await;
        }
    }

    /// Splits the plugin's concurrency over pull loops (shards), one per core thread
    /// ([`crate::cores`]; without cores, one per runtime worker thread) but none with fewer
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
        futures::future::join_all(supervised).await;
    }

    /// Shard number `shard`: pulls at most `concurrency` messages at a time from the plugin's
    /// consumer and handles them. A message whose handling panics (a host bug) is logged and left
    /// to its ack_wait; the shard goes on.
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
        // Declared after what its messages borrow, so it is dropped first.
        let mut in_flight = FuturesUnordered::new();
        let mut failures = 0u32;
        while !self.shutdown.is_stopping() && !self.retire.is_cancelled() {
            let Some(pull) = &mut puller else {
                let set_up = async {
                    let consumer = ensure_consumer(&js, &name, &subscribe).await?;
                    Puller::new(client.clone(), js.clone(), &consumer, concurrency).await
                };
                let ready = driving(&mut in_flight, &name, set_up).await;
                match ready {
                    Ok(p) => {
                        tracing::info!(plugin = %name, stream = ?subscribe.stream, shard, "consumer ready");
                        self.bound.store(true, std::sync::atomic::Ordering::Relaxed);
                        puller = Some(p);
                        failures = 0;
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
                        in_flight.push(self.message(message, slot, &heartbeats));
                    }
                    // Still asked for by a request given up on: handled if a slot is free,
                    // else given back.
                    Pulled::Unrequested(message) => match slots.clone().try_acquire_owned() {
                        Ok(slot) => in_flight.push(self.message(message, slot, &heartbeats)),
                        Err(_) => {
                            tracing::warn!(plugin = %name, "a message beyond the free slots; nak'ed");
                            self.give_back(message);
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
                pull.drain(|message| self.give_back(message)).await;
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
    /// message only.
    fn message<'a>(
        &'a self,
        message: jetstream::Message,
        slot: OwnedSemaphorePermit,
        heartbeats: &'a Heartbeats,
    ) -> impl Future<Output = std::thread::Result<()>> + 'a {
        std::panic::AssertUnwindSafe(self.process_jetstream(message, slot, heartbeats))
            .catch_unwind()
    }

    /// Naks a message this worker will not handle. The delay outlasts any open pull request,
    /// or the server would redeliver it straight into one being drained, burning a delivery
    /// per round until max_deliver.
    ///
    /// A message on its last allowed delivery would not come back after a nak: it is
    /// dead-lettered (kind `given-back`) instead.
    fn give_back(&self, message: jetstream::Message) {
        let worker = self.clone();
        self.tracker.spawn(async move {
            let plugin = worker.current();
            let (input, acker) = match jetstream_input(message) {
                (Ok(input), acker) => (input, acker),
                (Err(_), acker) => return nak(&acker, GIVE_BACK_DELAY).await,
            };
            let delivered = input.delivered();
            if settle::is_last_delivery(delivered, plugin.manifest()) {
                worker
                    .dead_letter_and_term(
                        &plugin,
                        &input,
                        &acker,
                        GIVEN_BACK,
                        PULLED_WHILE_STOPPING,
                    )
                    .await;
            } else {
                nak(&acker, GIVE_BACK_DELAY).await;
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

    /// Handles `message`, holding `slot` until it is settled.
    async fn process_jetstream(
        &self,
        message: jetstream::Message,
        _slot: OwnedSemaphorePermit,
        heartbeats: &Heartbeats,
    ) {
        let plugin = self.current();
        let _in_flight = self.metrics.in_flight();
        let (input, acker) = match jetstream_input(message) {
            (Ok(input), acker) => (input, acker),
            (Err(e), acker) => {
                tracing::error!(plugin = plugin.name(), error = %e, "a JetStream message without delivery info; terminated");
                settle_ack(&acker, AckKind::Term).await;
                return;
            }
        };
        let acker = Arc::new(acker);
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
        let last = settle::is_last_delivery(delivered, plugin.manifest()).then(|| input.clone());
        let trace = self.traces.message(plugin.name(), &input);
        let heartbeat = heartbeats.start(acker.clone());
        let hooks = Hooks {
            in_progress: Some(heartbeat.in_progress()),
        };
        let work = async {
            if delivered > 1 {
                self.metrics.redeliveries.inc();
                tracing::debug!("redelivery");
            }
            let (result, input, held) = self.handle(&plugin, input, hooks).await;
            let mut decision = settle::decide(result, delivered, plugin.manifest());
            if let Decision::Publish(outputs) = &mut decision {
                trace.stamp(&input, outputs);
            }
            let settled = self
                .settle_jetstream(&plugin, &input, &acker, decision)
                .await;
            drop(held);
            settled
        };
        let settled = tokio::select! {
            settled = work.instrument(span) => settled,
            _ = self.shutdown.aborting() => match &last {
                None => {
                    tracing::warn!(plugin = plugin.name(), sequence, "still in flight at the end of the graceful period: nak'ed for another host");
                    nak(&acker, Duration::ZERO).await;
                    Settled::GivenBack
                }
                Some(input) => {
                    self.dead_letter_and_term(&plugin, input, &acker, GIVEN_BACK, CUT_SHORT).await
                }
            }
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
        self.metrics.handled(started.elapsed(), handled.fuel);
        if let Err(e) = &handled.result {
            self.metrics.limit_hit(e.kind());
        }
        for (kind, count) in handled.denials {
            self.metrics.denied(kind, count);
        }
        (handled.result, input, handled.held)
    }

    /// The reply subject of `input` if the host may answer there. A refused one (reserved
    /// space, outside `publish.reply_allow`, not a subject) is counted, logged at most once per
    /// plugin per interval, and the answer dropped: a requester must not make the host publish
    /// with its own credentials where the requester chose.
    fn reply_to<'a>(&self, plugin: &Plugin, input: &'a Message) -> Option<&'a str> {
        let reply = input.reply.as_deref()?;
        match policy::refuse_reply(reply, &plugin.grants().reply_allow) {
            Ok(()) => Some(reply),
            Err(denied) => {
                if self.metrics.denied(denied.kind(), 1) {
                    tracing::warn!(plugin = plugin.name(), error = %denied, "a reply dropped (logged once per plugin per minute)");
                }
                None
            }
        }
    }

    async fn settle_jetstream(
        &self,
        plugin: &Plugin,
        input: &Message,
        acker: &Acker,
        decision: Decision,
    ) -> Settled {
        let delivered = input.delivered();
        let manifest = plugin.manifest();
        match decision {
            Decision::Publish(outputs) => match self.publish_outputs(plugin, input, &outputs).await
            {
                Ok(()) => {
                    self.metrics.acked.inc();
                    match manifest
                        .subscribe
                        .as_ref()
                        .map(|s| s.ack)
                        .unwrap_or_default()
                    {
                        AckMode::Plain => settle_ack(acker, AckKind::Ack).await,
                        AckMode::Confirmed => {
                            if let Err(e) = acker.double_ack().await {
                                tracing::warn!(error = %e, "ack not confirmed; a redelivery will find its outputs deduplicated");
                            }
                        }
                    }
                    Settled::Acked
                }
                Err(e) if e.is_permanent() || settle::is_last_delivery(delivered, manifest) => {
                    self.dead_letter_and_term(plugin, input, acker, "publish", &e.to_string())
                        .await
                }
                Err(e) => {
                    let delay = manifest.retry.delay_for(delivered);
                    tracing::warn!(error = %e, ?delay, "outputs not stored; the input is nak'ed, not acked");
                    self.metrics.retried.inc();
                    nak(acker, delay).await;
                    Settled::Retried {
                        kind: "publish".into(),
                        reason: e.to_string(),
                    }
                }
            },
            Decision::Nak { delay, reason } => {
                tracing::info!(%reason, ?delay, "retry");
                self.metrics.retried.inc();
                nak(acker, delay).await;
                Settled::Retried {
                    kind: "retry".into(),
                    reason,
                }
            }
            Decision::DeadLetter { kind, reason } => {
                self.dead_letter_and_term(plugin, input, acker, &kind, &reason)
                    .await
            }
        }
    }

    async fn dead_letter_and_term(
        &self,
        plugin: &Plugin,
        input: &Message,
        acker: &Acker,
        kind: &str,
        reason: &str,
    ) -> Settled {
        match self.dead_letter(plugin, input, kind, reason).await {
            Ok(()) => {
                tracing::warn!(kind, reason, "dead-lettered");
                self.metrics.dead_letter(kind);
                settle_ack(acker, AckKind::Term).await;
                Settled::DeadLettered {
                    kind: kind.to_owned(),
                    reason: reason.to_owned(),
                }
            }
            Err(e) => {
                let delivered = input.delivered();
                tracing::error!(error = %e, kind, reason, "cannot publish the dead letter; nak'ed to try again");
                nak(acker, plugin.manifest().retry.delay_for(delivered)).await;
                Settled::Retried {
                    kind: "dead-letter".into(),
                    reason: format!("{kind}: {reason}; the dead letter was not stored: {e}"),
                }
            }
        }
    }

    async fn dead_letter(
        &self,
        plugin: &Plugin,
        input: &Message,
        kind: &str,
        reason: &str,
    ) -> Result<(), PublishError> {
        let subject = plugin.manifest().publish.dead_letter_subject(plugin.name());
        let id = input.delivery.as_ref().map(|d| {
            format!(
                "natsplug-dead:{}:{}:{}",
                plugin.name(),
                d.stream,
                d.stream_sequence
            )
        });
        let mut headers =
            settle::dead_letter_headers(plugin.name(), &input.headers, input, kind, reason);
        let mut payload = input.payload.clone();
        let mut result = self
            .publisher
            .store(&subject, headers.clone(), payload.clone(), id.as_deref())
            .await;
        if let Err(PublishError::TooLarge { .. }) = result {
            // The input plus our headers is over max_payload. The original stays in its stream
            // at the sequence the headers name; the dead letter goes without its payload and
            // its own headers.
            headers = settle::dead_letter_headers(
                plugin.name(),
                &Headers::default(),
                input,
                kind,
                reason,
            );
            headers.insert(
                settle::header::PAYLOAD_OMITTED,
                payload.len().to_string().as_str(),
            );
            payload = bytes::Bytes::new();
            result = self
                .publisher
                .store(&subject, headers.clone(), payload.clone(), id.as_deref())
                .await;
        }
        match result {
            Ok(_) => Ok(()),
            Err(PublishError::NoStream { .. }) => {
                tracing::warn!(
                    subject,
                    "no stream captures the dead-letter subject: published without storage"
                );
                self.publisher.core(&subject, headers, payload).await
            }
            Err(e) => Err(e),
        }
    }

    /// Publishes every output of `input` at once and waits for all of them. Stored outputs get
    /// the `Nats-Msg-Id` `PLUGIN:STREAM:SEQUENCE:INDEX`, so a redelivered input whose outputs were
    /// stored publishes no duplicates. The outputs' `traceparent` is already set
    /// ([`crate::traces::MessageSpan::stamp`]).
    async fn publish_outputs(
        &self,
        plugin: &Plugin,
        input: &Message,
        outputs: &[crate::message::Output],
    ) -> Result<(), PublishError> {
        match outputs {
            [] => Ok(()),
            // The common case, without the allocation and the moves of a join.
            [output] => self.publish_output(plugin, input, 0, output).await,
            outputs => {
                let publishes = outputs
                    .iter()
                    .enumerate()
                    .map(|(index, output)| self.publish_output(plugin, input, index, output));
                futures::future::try_join_all(publishes).await.map(drop)
            }
        }
    }

    /// Publishes output number `index` of `input`: its reply, a core subject, or stored with
    /// its dedup id.
    async fn publish_output(
        &self,
        plugin: &Plugin,
        input: &Message,
        index: usize,
        output: &crate::message::Output,
    ) -> Result<(), PublishError> {
        let headers = output.headers.to_nats();
        let payload = output.payload.clone();
        match output.subject.as_deref() {
            // The runtime only lets a reply through when the input has a reply subject; it goes
            // out only where the host may answer.
            None => match self.reply_to(plugin, input) {
                Some(reply) => self.publisher.core(reply, headers, payload).await,
                None => Ok(()),
            },
            Some(subject) if plugin.grants().is_core(subject) => {
                self.publisher.core(subject, headers, payload).await
            }
            Some(subject) => {
                let id = input.delivery.as_ref().map(|d| {
                    format!(
                        "{}:{}:{}:{index}",
                        plugin.name(),
                        d.stream,
                        d.stream_sequence
                    )
                });
                self.publisher
                    .store(subject, headers, payload, id.as_deref())
                    .await
                    .map(drop)
            }
        }
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
            let settled = match settle::decide(result, 1, plugin.manifest()) {
                Decision::Publish(mut outputs) => {
                    trace.stamp(&input, &mut outputs);
                    match self.publish_outputs(&plugin, &input, &outputs).await {
                        Ok(()) => {
                            self.metrics.acked.inc();
                            Settled::Published
                        }
                        Err(e) => Settled::Failed {
                            kind: "publish".into(),
                            reason: e.to_string(),
                        },
                    }
                }
                Decision::Nak { reason, .. } => Settled::Failed {
                    kind: "retry".into(),
                    reason: format!("{reason} (core NATS messages are not redelivered)"),
                },
                Decision::DeadLetter { kind, reason } => {
                    match self.dead_letter(&plugin, &input, &kind, &reason).await {
                        Ok(()) => {
                            self.metrics.dead_letter(&kind);
                            Settled::DeadLettered { kind, reason }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot publish the dead letter");
                            Settled::Failed { kind, reason }
                        }
                    }
                }
            };
            if let Some((kind, reason)) = settled.failure() {
                tracing::warn!(kind, reason, "core message failed");
                // A requester gets the failure at once instead of waiting for its timeout.
                if let Some(reply) = self.reply_to(&plugin, &input) {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(settle::header::KIND, kind);
                    headers.insert(
                        settle::header::REASON,
                        settle::header_value(reason).as_str(),
                    );
                    if let Err(e) = self
                        .publisher
                        .core(reply, headers, bytes::Bytes::new())
                        .await
                    {
                        tracing::warn!(error = %e, "cannot send the error reply");
                    }
                }
            }
            settled
        }
        .instrument(span)
        .await;
        trace.end(&settled);
    }
}

/// Creates or updates the plugin's durable consumer, or binds to an existing one.
async fn ensure_consumer(
    js: &jetstream::Context,
    plugin: &str,
    subscribe: &Subscribe,
) -> anyhow::Result<PullConsumer> {
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
        return stream.get_consumer(&durable).await.map_err(|e| {
            anyhow::anyhow!("binding to consumer {durable:?} on {stream_name:?}: {e}")
        });
    }
    let (filter_subject, filter_subjects) = match subscribe.subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let config = pull::Config {
        durable_name: Some(durable.clone()),
        description: Some(format!("natsplug plugin {plugin}")),
        ack_policy: AckPolicy::Explicit,
        ack_wait: subscribe.ack_wait,
        max_deliver: subscribe.max_deliver,
        filter_subject,
        filter_subjects,
        ..Default::default()
    };
    stream
        .create_consumer(config)
        .await
        .map_err(|e| anyhow::anyhow!("creating consumer {durable:?} on {stream_name:?}: {e}"))
}

async fn nak(acker: &Acker, delay: Duration) {
    let delay = (!delay.is_zero()).then_some(delay);
    settle_ack(acker, AckKind::Nak(delay)).await;
}

/// Sends an ack of any kind; a failure is logged, not fatal (the server will redeliver).
async fn settle_ack(acker: &Acker, kind: AckKind) {
    if let Err(e) = acker.ack_with(kind).await {
        tracing::warn!(error = %e, ?kind, "cannot send ack");
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

/// Logs a message whose handling panicked (a host bug): it is left to its ack_wait.
fn settled(plugin: &str, done: std::thread::Result<()>) {
    if let Err(panic) = done {
        let panic = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(not a string)");
        tracing::error!(
            plugin,
            panic,
            "a message's handling panicked; it is left to its ack_wait"
        );
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
