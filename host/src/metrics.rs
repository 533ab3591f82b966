//! Prometheus metrics, one registry per host, encoded by `prometheus-client` at `/metrics`.
//! Per-plugin metrics carry a `plugin` label; [`PluginMetrics`] holds one plugin's handles so the
//! hot path increments without a label lookup, and the control plane reads the same counters.
//!
//! Names follow Prometheus conventions: `natsplug_` prefix, `_total` counters, `_seconds`
//! histograms, base units.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A `plugin` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// Plugin name.
    pub plugin: String,
}

/// `plugin` and `outcome` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Plugin name.
    pub plugin: String,
    /// acked, retried, dead_lettered.
    pub outcome: String,
}

/// `plugin` and `kind` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Plugin name.
    pub plugin: String,
    /// The kind (a limit: fuel, deadline, memory, panic, trap...; a dead letter: reject...).
    pub kind: String,
}

/// `plugin` and `result` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Plugin name.
    pub plugin: String,
    /// loaded, replaced, removed, failed.
    pub result: String,
}

/// `plugin` and `version` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Plugin name.
    pub plugin: String,
    /// Served version.
    pub version: String,
}

/// A `role` label (consumer, publisher-N).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// Connection role.
    pub role: String,
}

/// `plugin`, `capability` and `result` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapabilityLabels {
    /// Plugin name.
    pub plugin: String,
    /// kv, request, http.
    pub capability: String,
    /// ok, error (the service failed or said no), denied (the grant refused it).
    pub result: String,
}

/// `plugin` and `capability` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapabilityLabel {
    /// Plugin name.
    pub plugin: String,
    /// kv, request, http.
    pub capability: String,
}

fn duration_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Every metric of a host.
pub struct Metrics {
    registry: Registry,
    /// Inputs by plugin and outcome.
    pub messages: Family<OutcomeLabels, Counter>,
    /// Handler limit hits and refusals by plugin and kind.
    pub limit_hits: Family<KindLabels, Counter>,
    /// Dead letters by plugin and kind.
    pub dead_letters: Family<KindLabels, Counter>,
    /// Inputs the host could not run (no instance, a full output pool), nak'ed for later, by
    /// plugin and kind.
    pub host_faults: Family<KindLabels, Counter>,
    /// Refusals of what a guest or a requester asked for ([`crate::policy`]), by plugin and
    /// kind.
    pub policy_denials: Family<KindLabels, Counter>,
    /// Handler calls by plugin and how their instance was got (`warm` from the pool, `fresh`).
    pub instances: Family<KindLabels, Counter>,
    /// Handler wall time by plugin.
    pub handler_duration: Family<PluginLabel, Histogram, fn() -> Histogram>,
    /// Fuel consumed by plugin.
    pub fuel: Family<PluginLabel, Counter>,
    /// Messages in a handler or being settled, by plugin.
    pub in_flight: Family<PluginLabel, Gauge>,
    /// Ack-progress heartbeats sent, by plugin.
    pub heartbeats: Family<PluginLabel, Counter>,
    /// Deliveries with a delivery count above 1, by plugin.
    pub redeliveries: Family<PluginLabel, Counter>,
    /// Stored publishes attempted (first tries and retries).
    pub publish_attempts: Counter,
    /// Stored publishes retried after a failure.
    pub publish_retries: Counter,
    /// Stored publishes that failed for good.
    pub publish_failures: Counter,
    /// Time from publish to publish ack.
    pub publish_ack_duration: Histogram,
    /// Outputs the server reported as duplicates (already stored).
    pub deduplicated: Counter,
    /// Plugin loads by plugin and result.
    pub reloads: Family<ResultLabels, Counter>,
    /// 1 for the served version of each plugin.
    pub plugin_info: Family<VersionLabels, Gauge>,
    /// 1 while the connection of a role is up.
    pub connected: Family<RoleLabel, Gauge>,
    /// Reconnects by connection role.
    pub reconnects: Family<RoleLabel, Counter>,
    /// Capability calls (kv, request, http) by plugin, capability and result.
    pub capability_calls: Family<CapabilityLabels, Counter>,
    /// Capability call wall time by plugin and capability.
    pub capability_duration: Family<CapabilityLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("natsplug");
        let m = Self {
            messages: Family::default(),
            limit_hits: Family::default(),
            dead_letters: Family::default(),
            host_faults: Family::default(),
            instances: Family::default(),
            policy_denials: Family::default(),
            handler_duration: Family::new_with_constructor(duration_histogram),
            fuel: Family::default(),
            in_flight: Family::default(),
            heartbeats: Family::default(),
            redeliveries: Family::default(),
            publish_attempts: Counter::default(),
            publish_retries: Counter::default(),
            publish_failures: Counter::default(),
            publish_ack_duration: duration_histogram(),
            deduplicated: Counter::default(),
            reloads: Family::default(),
            plugin_info: Family::default(),
            connected: Family::default(),
            reconnects: Family::default(),
            capability_calls: Family::default(),
            capability_duration: Family::new_with_constructor(duration_histogram),
            registry: Registry::default(),
        };
        registry.register(
            "messages",
            "Inputs by plugin and outcome",
            m.messages.clone(),
        );
        registry.register(
            "limit_hits",
            "Handler limit hits and refusals by kind",
            m.limit_hits.clone(),
        );
        registry.register(
            "dead_letters",
            "Inputs dead-lettered, by kind",
            m.dead_letters.clone(),
        );
        registry.register(
            "host_faults",
            "Inputs the host could not run, nak'ed for later, by kind",
            m.host_faults.clone(),
        );
        registry.register(
            "instances",
            "Handler calls by how their instance was got: warm from the pool, or fresh",
            m.instances.clone(),
        );
        registry.register(
            "policy_denials",
            "Refusals of what a guest or a requester asked for, by kind",
            m.policy_denials.clone(),
        );
        registry.register_with_unit(
            "handler_duration",
            "Handler wall time",
            prometheus_client::registry::Unit::Seconds,
            m.handler_duration.clone(),
        );
        registry.register("fuel_consumed", "Fuel consumed by handlers", m.fuel.clone());
        registry.register(
            "in_flight_messages",
            "Messages in a handler or being settled",
            m.in_flight.clone(),
        );
        registry.register(
            "heartbeats",
            "Ack-progress heartbeats sent",
            m.heartbeats.clone(),
        );
        registry.register(
            "redeliveries",
            "Deliveries with a delivery count above 1",
            m.redeliveries.clone(),
        );
        registry.register(
            "publish_attempts",
            "Stored publishes attempted",
            m.publish_attempts.clone(),
        );
        registry.register(
            "publish_retries",
            "Stored publishes retried",
            m.publish_retries.clone(),
        );
        registry.register(
            "publish_failures",
            "Stored publishes that failed for good",
            m.publish_failures.clone(),
        );
        registry.register_with_unit(
            "publish_ack_duration",
            "Time from publish to publish ack",
            prometheus_client::registry::Unit::Seconds,
            m.publish_ack_duration.clone(),
        );
        registry.register(
            "outputs_deduplicated",
            "Outputs the server reported as duplicates",
            m.deduplicated.clone(),
        );
        registry.register(
            "capability_calls",
            "Capability calls (kv, request, http) by result: ok, error, denied",
            m.capability_calls.clone(),
        );
        registry.register_with_unit(
            "capability_duration",
            "Capability call wall time",
            prometheus_client::registry::Unit::Seconds,
            m.capability_duration.clone(),
        );
        registry.register(
            "plugin_reloads",
            "Plugin loads by result",
            m.reloads.clone(),
        );
        registry.register(
            "plugin_info",
            "The served version of each plugin",
            m.plugin_info.clone(),
        );
        registry.register(
            "connection_up",
            "1 while the connection of a role is up",
            m.connected.clone(),
        );
        registry.register(
            "connection_reconnects",
            "Reconnects by connection role",
            m.reconnects.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one capability call of `plugin`.
    pub fn capability(&self, plugin: &str, capability: &str, result: &str, took: Duration) {
        self.capability_calls
            .get_or_create(&CapabilityLabels {
                plugin: plugin.to_owned(),
                capability: capability.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.capability_duration
            .get_or_create(&CapabilityLabel {
                plugin: plugin.to_owned(),
                capability: capability.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One plugin's handles.
    pub fn plugin(self: &Arc<Self>, plugin: &str) -> PluginMetrics {
        let label = PluginLabel {
            plugin: plugin.to_owned(),
        };
        let outcome = |outcome: &str| {
            self.messages
                .get_or_create(&OutcomeLabels {
                    plugin: plugin.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .clone()
        };
        PluginMetrics {
            plugin: plugin.to_owned(),
            acked: outcome("acked"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            heartbeats: self.heartbeats.get_or_create(&label).clone(),
            redeliveries: self.redeliveries.get_or_create(&label).clone(),
            fuel: self.fuel.get_or_create(&label).clone(),
            duration: self.handler_duration.get_or_create(&label).clone(),
            denial_logged: Arc::default(),
            all: self.clone(),
        }
    }
}

/// One plugin's metric handles; the control plane's counters are read from them.
#[derive(Clone)]
pub struct PluginMetrics {
    plugin: String,
    /// Inputs acked after their outputs were stored.
    pub acked: Counter,
    /// Inputs nak'ed for a retry.
    pub retried: Counter,
    /// Inputs dead-lettered.
    pub dead_lettered: Counter,
    /// Messages in flight.
    pub in_flight: Gauge,
    /// Heartbeats sent.
    pub heartbeats: Counter,
    /// Redeliveries seen.
    pub redeliveries: Counter,
    /// Fuel consumed.
    pub fuel: Counter,
    /// Handler wall time.
    pub duration: Histogram,
    /// When a refusal was last logged, in ms since [`since`]; 0 for never.
    denial_logged: Arc<AtomicU64>,
    all: Arc<Metrics>,
}

/// How often one plugin's refusals are logged; every one is counted.
const DENIAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Milliseconds since the first call, at least 1.
fn since() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl PluginMetrics {
    /// Counts a limit hit or refusal of this plugin.
    pub fn limit_hit(&self, kind: &str) {
        self.all
            .limit_hits
            .get_or_create(&KindLabels {
                plugin: self.plugin.clone(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts `count` policy refusals of this plugin; true when it should be logged too (the first
    /// one of each [`DENIAL_LOG_INTERVAL`]), so a flood of refusals does not flood the log.
    pub fn denied(&self, kind: &str, count: u64) -> bool {
        self.all
            .policy_denials
            .get_or_create(&KindLabels {
                plugin: self.plugin.clone(),
                kind: kind.to_owned(),
            })
            .inc_by(count);
        let now = since();
        let last = self.denial_logged.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DENIAL_LOG_INTERVAL.as_millis() as u64;
        due && self
            .denial_logged
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Counts a dead letter of this plugin.
    pub fn dead_letter(&self, kind: &str) {
        self.dead_lettered.inc();
        self.all
            .dead_letters
            .get_or_create(&KindLabels {
                plugin: self.plugin.clone(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts an input this plugin's handler could not be run for (nak'ed for later).
    pub fn host_fault(&self, kind: &str) {
        self.retried.inc();
        self.all
            .host_faults
            .get_or_create(&KindLabels {
                plugin: self.plugin.clone(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records one handler call, and whether its instance was warm.
    pub fn handled(&self, took: Duration, fuel: u64, warm: bool) {
        self.duration.observe(took.as_secs_f64());
        self.fuel.inc_by(fuel);
        self.all
            .instances
            .get_or_create(&KindLabels {
                plugin: self.plugin.clone(),
                kind: if warm { "warm" } else { "fresh" }.to_owned(),
            })
            .inc();
    }

    /// Marks a message in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The counters as the control plane shows them.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.get().max(0) as u64,
            processed: self.acked.get(),
            retried: self.retried.get(),
            dead_lettered: self.dead_lettered.get(),
            redelivered: self.redeliveries.get(),
            heartbeats: self.heartbeats.get(),
        }
    }
}

/// Counts one message in flight while alive.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The counters at one moment, as the control plane reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatsSnapshot {
    /// Messages in flight.
    pub in_flight: u64,
    /// Inputs acked after their outputs were stored.
    pub processed: u64,
    /// Inputs nak'ed for a retry.
    pub retried: u64,
    /// Inputs dead-lettered.
    pub dead_lettered: u64,
    /// Deliveries with a delivery count above 1.
    pub redelivered: u64,
    /// Ack-progress heartbeats sent.
    pub heartbeats: u64,
}
