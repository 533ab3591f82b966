//! The plugin manifest, `NAME.toml` beside `NAME.wasm`: what the plugin consumes, its limits,
//! its retry and dead-letter policy, the subjects it may publish to, the sandbox grants and its
//! config values. Every field is optional and documented with its default; unknown fields are
//! errors, and every error names the file, the line and the field (validation happens while
//! parsing, so the TOML parser's location is attached to it).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::policy::{self, Pattern};

/// A manifest could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path:?}: {source}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid manifest; the message names the line, column and field.
    #[error("invalid manifest {path:?}: {message}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
}

/// A plugin manifest. `Manifest::default()` is what a plugin without a manifest runs with.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// What the plugin consumes. Default: nothing (it can only be called offline).
    pub subscribe: Option<Subscribe>,
    /// Per-message resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Retries, backoff and what happens when a limit is hit.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where the plugin may publish, and its dead-letter subject.
    #[serde(default)]
    pub publish: PublishPolicy,
    /// What the guest may see of the machine. Default: nothing.
    #[serde(default)]
    pub sandbox: Sandbox,
    /// Instance policy: a fresh instance per message (the default) or a warm pool.
    #[serde(default)]
    pub instance: InstancePolicy,
    /// Batch calls (`handle-batch`). Default: none, one `handle` call per input.
    pub batch: Option<Batch>,
    /// Requests to NATS services the guest may send. Default: none.
    #[serde(default)]
    pub request: RequestGrant,
    /// NATS KV buckets the guest may open. Default: none.
    #[serde(default)]
    pub kv: KvGrant,
    /// Outbound HTTP origins the guest may call. Default: none.
    #[serde(default)]
    pub http: HttpGrant,
    /// Free-form values the guest reads with `config(key)`. Default: none.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Where messages come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// JetStream stream to consume. Default: none, and `subjects` are core NATS subscriptions.
    pub stream: Option<String>,
    /// Filter subjects of the consumer (JetStream) or the subjects to subscribe to (core NATS).
    #[serde(deserialize_with = "subjects")]
    pub subjects: Vec<String>,
    /// Durable consumer name. Default: the plugin's name.
    pub durable: Option<String>,
    /// Bind to an existing consumer declared elsewhere instead of creating or updating it.
    /// Default: false.
    #[serde(default)]
    pub bind: bool,
    /// Queue group for core NATS subjects. Default: none (every host gets every message).
    pub queue_group: Option<String>,
    /// How long the server waits for an ack before redelivering. Default: 30s.
    #[serde(with = "humantime_serde", default = "default_ack_wait")]
    pub ack_wait: Duration,
    /// Deliveries before a failing message is dead-lettered. Default: 5.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Messages handled at once by one host; also the most it pulls at once. Default: 4.
    #[serde(default = "default_concurrency")]
    pub concurrency: NonZeroUsize,
    /// Interval of the ack-progress heartbeat while a handler runs. Default: ack_wait / 3.
    #[serde(with = "humantime_serde", default)]
    pub heartbeat: Option<Duration>,
    /// How an input is acked once its outputs are stored. Default: `plain`.
    #[serde(default)]
    pub ack: AckMode,
    /// Where a consumer the host creates starts in the stream: `all` its messages, only `new`
    /// ones, or the `last` one. It matters when the consumer is created: the first time, and
    /// again if an operator deletes it. Default: `all`.
    #[serde(default)]
    pub deliver: Deliver,
}

/// Where a created consumer starts in its stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Deliver {
    /// Every message the stream holds.
    #[default]
    All,
    /// Only messages stored after the consumer is created.
    New,
    /// The last message the stream holds, then new ones.
    Last,
}

/// How an input is acked once its outputs are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// `+ACK`, not confirmed. An ack lost on the way means a redelivery whose outputs the
    /// server deduplicates (their `Nats-Msg-Id`s are already stored), then a new ack.
    #[default]
    Plain,
    /// The server confirms the ack (a request and its reply), and an ack that did not land is
    /// logged. Costs a round trip and about a third of the throughput (see bench/).
    Confirmed,
}

impl Subscribe {
    /// The heartbeat interval: the configured one, else a third of ack_wait.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat.unwrap_or(self.ack_wait / 3)
    }
}

/// Per-message limits. Each hit ends the handler with a typed error naming the limit.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU budget in wasmtime fuel units (a tight loop burns ~13.5M per ms on the reference
    /// machine, so 10,000,000,000 is about 0.7 s of computing). 0, the default, sets none: the
    /// wall-clock `deadline` is the guard, so a handler that computes for 3 s runs to the end
    /// under the defaults. Set it to bound CPU more tightly than wall time. Default: 0.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Wall-clock time a handler may take, sleeping included. Default: 60s.
    #[serde(with = "humantime_serde", default = "default_deadline")]
    pub deadline: Duration,
    /// Linear memory, all memories of the instance together ("64MiB", "1GiB" or bytes).
    /// Default: 128MiB.
    #[serde(default = "default_memory", deserialize_with = "byte_size")]
    pub memory: u64,
    /// Bytes of outputs one message may ask for, returned and `publish()`ed together (subjects,
    /// headers, payloads and 64 bytes each). The call that crosses it fails the handler with
    /// kind `output-limit`. It bounds what the host holds for a message: the guest's own memory
    /// limit does not, as a guest can publish one buffer many times. Default: 16MiB.
    #[serde(default = "default_output_bytes", deserialize_with = "byte_size")]
    pub output_bytes: u64,
    /// Bytes of log lines (stdout, stderr and `log`) one message may write to the host's log;
    /// past it, lines are dropped and counted, and one line says how many. A line is cut at
    /// 4KiB. Default: 64KiB.
    #[serde(default = "default_log_bytes", deserialize_with = "byte_size")]
    pub log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: default_fuel(),
            deadline: default_deadline(),
            memory: default_memory(),
            output_bytes: default_output_bytes(),
            log_bytes: default_log_bytes(),
        }
    }
}

/// What to do when a handler hits a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitAction {
    /// Nak with the backoff delay, like a retry.
    Retry,
    /// Publish to the dead-letter subject and terminate.
    DeadLetter,
}

/// Retry and limit policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Nak delay by delivery count: the first retry waits `backoff[0]`, and so on; the last
    /// value repeats. (The server's consumer BackOff does not apply to naks, so the host
    /// computes it.) Default: ["1s", "5s", "30s"].
    #[serde(default = "default_backoff", deserialize_with = "durations")]
    pub backoff: Vec<Duration>,
    /// Out of fuel. Default: dead-letter (deterministic, retrying cannot help).
    #[serde(default = "dead_letter")]
    pub on_fuel: LimitAction,
    /// Over the memory limit. Default: dead-letter.
    #[serde(default = "dead_letter")]
    pub on_memory: LimitAction,
    /// A trap or a panic. Default: dead-letter.
    #[serde(default = "dead_letter")]
    pub on_trap: LimitAction,
    /// Past the wall-clock deadline. Default: retry (it may depend on a slow dependency).
    #[serde(default = "retry")]
    pub on_deadline: LimitAction,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: default_backoff(),
            on_fuel: LimitAction::DeadLetter,
            on_memory: LimitAction::DeadLetter,
            on_trap: LimitAction::DeadLetter,
            on_deadline: LimitAction::Retry,
        }
    }
}

impl RetryPolicy {
    /// The nak delay after delivery number `delivered` (1-based) failed.
    pub fn delay_for(&self, delivered: u64) -> Duration {
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or_default()
    }
}

/// Where the plugin may publish.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishPolicy {
    /// Subjects (NATS wildcards allowed) the plugin's outputs may go to; a grant reaches
    /// reserved space only if it names its prefix (`$KV.orders.>`). Replies go by
    /// `reply_allow`. Default: none.
    #[serde(default, deserialize_with = "subjects")]
    pub allow: Vec<String>,
    /// Allowed subjects published as core NATS, without storage or publish ack (events nobody
    /// must keep). Every other output must be stored by a stream, or the input is retried: a
    /// missing stream never loses an output silently. Default: none.
    #[serde(default, deserialize_with = "subjects")]
    pub core: Vec<String>,
    /// Where rejected and dead-lettered inputs go; a concrete subject outside reserved space.
    /// Default: `natsplug.dead.<plugin>`.
    pub dead_letter: Option<String>,
    /// Headers that steer the server (`Nats-TTL`, `Nats-Rollup`, `Nats-Expected-*`...) the
    /// guest may set on its outputs, by name. Any other `Nats-*` header fails the handler
    /// (`forbidden-header`); `Nats-Msg-Id` is always the host's own and is left out.
    /// Default: none.
    #[serde(default, deserialize_with = "header_names")]
    pub headers: Vec<String>,
    /// Reply subjects (NATS wildcards allowed) the host answers requests on; a reply anywhere
    /// else is dropped and counted. Reserved space ($-subjects, `natsplug.control.`, the host's
    /// inboxes) is never answered, listed or not. Default: `["_INBOX.>"]`.
    #[serde(default = "default_reply_allow", deserialize_with = "subjects")]
    pub reply_allow: Vec<String>,
}

impl Default for PublishPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            core: Vec::new(),
            dead_letter: None,
            headers: Vec::new(),
            reply_allow: default_reply_allow(),
        }
    }
}

fn default_reply_allow() -> Vec<String> {
    vec!["_INBOX.>".to_owned()]
}

impl PublishPolicy {
    /// The dead-letter subject of plugin `name`.
    pub fn dead_letter_subject(&self, name: &str) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("natsplug.dead.{name}"))
    }
}

/// How instances are used: a fresh one for every message, or warm ones from a pool.
///
/// A warm instance keeps what the guest left in its memory (globals, caches, a module-level
/// dict in Python) from one message to the next of that instance: that is the trade. The
/// host still gives every call its own fuel, deadline, log budget, outputs and hooks, and never
/// parks an instance that trapped or hit a limit (fuel, memory, deadline, output bytes).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePolicy {
    /// `message`: a fresh instance for every message, so nothing carries over. `pool`: a
    /// message takes the most recently parked instance (its caches are the warmest), or a
    /// fresh one when none is idle (it never waits for one). Default: `message`.
    #[serde(default)]
    pub isolation: Isolation,
    /// Idle instances a pool keeps (wasmCloud's name); an instance coming back to a full
    /// pool is dropped. Default: the plugin's `subscribe.concurrency` (4 without one).
    pub pool_size: Option<NonZeroUsize>,
    /// Messages one pooled instance serves before it is retired, bounding what can build up
    /// in it (a leak, a cache that only grows). Default: 10000.
    #[serde(default = "default_max_invocations")]
    pub max_invocations: std::num::NonZeroU32,
    /// An instance idle longer than this is dropped instead of taken, so a quiet plugin gives
    /// its memory back. Default: 60s.
    #[serde(with = "humantime_serde", default = "default_max_idle")]
    pub max_idle: Duration,
    /// The setting this section replaced; refused with a hint.
    #[serde(default)]
    reuse: Option<toml::Value>,
}

impl Default for InstancePolicy {
    fn default() -> Self {
        Self {
            isolation: Isolation::default(),
            pool_size: None,
            max_invocations: default_max_invocations(),
            max_idle: default_max_idle(),
            reuse: None,
        }
    }
}

impl Manifest {
    /// The capability sections that grant something (`request`, `kv`, `http`), in that order.
    pub fn capability_sections(&self) -> Vec<&'static str> {
        let mut sections = Vec::new();
        if !self.request.allow.is_empty() {
            sections.push("request");
        }
        if !self.kv.buckets.is_empty() {
            sections.push("kv");
        }
        if !self.http.allow.is_empty() {
            sections.push("http");
        }
        sections
    }

    /// Idle instances the plugin's pool keeps (`instance.pool_size`, else its concurrency).
    pub fn pool_size(&self) -> usize {
        self.instance.pool_size.map_or_else(
            || self.subscribe.as_ref().map_or(4, |s| s.concurrency.get()),
            NonZeroUsize::get,
        )
    }
}

/// What one message's instance shares with the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A fresh instance for every message.
    #[default]
    Message,
    /// Warm instances, reused within `[instance]`'s bounds.
    Pool,
}

const fn default_max_invocations() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(10_000).expect("not zero")
}

const fn default_max_idle() -> Duration {
    Duration::from_secs(60)
}

/// Inputs handled together in one call of the guest's `handle-batch` export.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// Most inputs in one call. Default: 64.
    #[serde(default = "default_batch_max")]
    pub max: NonZeroUsize,
    /// How long the first input of a batch waits for others before the call starts.
    /// Default: 5ms.
    #[serde(with = "humantime_serde", default = "default_batch_wait")]
    pub max_wait: Duration,
}

const fn default_batch_max() -> NonZeroUsize {
    NonZeroUsize::new(64).expect("not zero")
}

const fn default_batch_wait() -> Duration {
    Duration::from_millis(5)
}

/// `[request]`: the NATS services a guest may send requests to (`natsplug:plugin/request`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestGrant {
    /// Subjects (NATS wildcards allowed) a request may go to. Reserved space (`$JS.`, `$KV.`,
    /// `$SYS.`, the host's own subjects and inboxes) is never reachable, even when named: a
    /// request there could drive the server's APIs with the host's credentials. Default: none.
    #[serde(default, deserialize_with = "subjects")]
    pub allow: Vec<String>,
    /// How long a request waits for its reply when the guest names no timeout; never longer
    /// than what is left of the handler's deadline. Default: 5s.
    #[serde(with = "humantime_serde", default = "default_request_timeout")]
    pub timeout: Duration,
}

impl Default for RequestGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            timeout: default_request_timeout(),
        }
    }
}

const fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `[kv]`: the NATS KV buckets a guest may open (`wasi:keyvalue`, `natsplug:plugin/kv`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvGrant {
    /// Bucket name to access: `"read"` or `"read-write"`, or a table with `access` and the
    /// settings to create the bucket with when it is missing
    /// (`orders = { access = "read-write", create = true, history = 5 }`). A bucket that is
    /// neither there nor to be created fails the plugin's load. Default: none.
    #[serde(default)]
    pub buckets: BTreeMap<String, BucketGrant>,
}

/// One granted bucket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BucketGrant {
    /// `orders = "read-write"`: the bucket must exist.
    Access(Access),
    /// `orders = { access = "read-write", create = true, ... }`.
    Full(BucketSettings),
}

impl BucketGrant {
    /// What the guest may do with the bucket.
    pub fn access(&self) -> Access {
        match self {
            Self::Access(access) => *access,
            Self::Full(settings) => settings.access,
        }
    }

    /// The settings to create it with, when the manifest says to create it.
    pub fn create(&self) -> Option<&BucketSettings> {
        match self {
            Self::Full(settings) if settings.create => Some(settings),
            _ => None,
        }
    }
}

/// What a guest may do with a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// `get`, `exists`, `list-keys`, `get-many`, `get-entry`.
    Read,
    /// Reads, and `set`, `delete`, `increment`, `set-many`, `delete-many`, `compare-and-swap`.
    ReadWrite,
}

/// A granted bucket with its settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSettings {
    /// What the guest may do.
    pub access: Access,
    /// Create the bucket at load when it is missing, with these settings. Default: false.
    #[serde(default)]
    pub create: bool,
    /// Values kept per key (1 to 64). Default: 1.
    #[serde(default = "default_history")]
    pub history: i64,
    /// The largest value ("1MiB" or bytes). Default: the server's limit.
    #[serde(default, deserialize_with = "optional_byte_size")]
    pub max_value_size: Option<u64>,
    /// How long a value lives ("0s": for ever). Default: for ever.
    #[serde(with = "humantime_serde", default)]
    pub ttl: Option<Duration>,
}

const fn default_history() -> i64 {
    1
}

/// `[http]`: the origins a guest may call with `wasi:http/outgoing-handler`, and the bounds
/// of each call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Origins, each a scheme, a host and an optional port (`"https://api.example.com"`,
    /// `"http://127.0.0.1:8080"`); no path, no wildcard. A request to any other origin fails
    /// with `HTTP-request-denied`. Default: none.
    #[serde(default)]
    pub allow: Vec<String>,
    /// The largest request body. Default: 1MiB.
    #[serde(default = "default_http_request_bytes", deserialize_with = "byte_size")]
    pub max_request_bytes: u64,
    /// The largest response body; a longer one fails the read with
    /// `HTTP-response-body-size`. Default: 4MiB.
    #[serde(
        default = "default_http_response_bytes",
        deserialize_with = "byte_size"
    )]
    pub max_response_bytes: u64,
    /// How long to wait for a connection. Default: 5s.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// How long to wait for the first byte of the response, and between two of its frames.
    /// Every wait is also cut at the handler's deadline. Default: 30s.
    #[serde(with = "humantime_serde", default = "default_first_byte_timeout")]
    pub first_byte_timeout: Duration,
}

impl Default for HttpGrant {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_request_bytes: default_http_request_bytes(),
            max_response_bytes: default_http_response_bytes(),
            connect_timeout: default_connect_timeout(),
            first_byte_timeout: default_first_byte_timeout(),
        }
    }
}

const fn default_http_request_bytes() -> u64 {
    1 << 20
}
const fn default_http_response_bytes() -> u64 {
    4 << 20
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(30)
}

/// What the guest may see of the machine; by default nothing: no files, no network, no
/// environment variables, no arguments.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sandbox {
    /// Environment variables the guest sees. Default: none.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Host directories the guest may open. Default: none.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Outgoing TCP/UDP and name lookups. Default: false.
    #[serde(default)]
    pub network: bool,
}

/// A host directory the guest may open.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Absolute path on the host.
    pub host: PathBuf,
    /// Path the guest sees it at.
    pub guest: String,
    /// Whether the guest may write. Default: false.
    #[serde(default)]
    pub writable: bool,
}

impl Manifest {
    /// Parses a manifest from TOML text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: path.to_owned(),
            message,
        };
        // Read within the bound here too, whoever read it.
        crate::bounded::Bound::MANIFEST
            .check(text.len() as u64)
            .map_err(|e| invalid(e.to_string()))?;
        let manifest: Self =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        manifest.refuse_reserved().map_err(invalid)?;
        manifest.refuse_out_of_range().map_err(invalid)?;
        Ok(manifest)
    }

    /// Bounds that keep the host's arithmetic and allocations sane whatever a manifest says
    /// (`deadline = "500000000000y"` overflowed the deadline instant on every message).
    fn refuse_out_of_range(&self) -> Result<(), String> {
        let mut durations = vec![("limits.deadline", self.limits.deadline)];
        durations.extend(self.retry.backoff.iter().map(|d| ("retry.backoff", *d)));
        durations.extend([
            ("request.timeout", self.request.timeout),
            ("http.connect_timeout", self.http.connect_timeout),
            ("http.first_byte_timeout", self.http.first_byte_timeout),
        ]);
        if let Some(s) = &self.subscribe {
            durations.push(("subscribe.ack_wait", s.ack_wait));
            durations.extend(s.heartbeat.map(|h| ("subscribe.heartbeat", h)));
            if s.concurrency.get() > MAX_CONCURRENCY {
                return Err(format!(
                    "subscribe.concurrency = {} is more than {MAX_CONCURRENCY}",
                    s.concurrency
                ));
            }
        }
        if let Some((field, value)) = durations.iter().find(|(_, d)| *d > MAX_DURATION) {
            return Err(format!("{field} = {value:?} is longer than 1 day"));
        }
        // A zero backoff entry is an immediate retry; the others must be some time.
        if let Some((field, _)) = durations
            .iter()
            .find(|(field, d)| d.is_zero() && *field != "retry.backoff")
        {
            return Err(format!("{field} must be more than 0"));
        }
        if let Some(s) = &self.subscribe
            && s.stream.is_some()
            && s.heartbeat_interval() >= s.ack_wait
        {
            return Err(format!(
                "subscribe.heartbeat = {:?} is not less than subscribe.ack_wait = {:?}: the \
                 server would redeliver a message between two heartbeats",
                s.heartbeat_interval(),
                s.ack_wait
            ));
        }
        for dir in &self.sandbox.dirs {
            if !dir.host.is_absolute() {
                return Err(format!(
                    "sandbox.dirs: {:?} is not an absolute path",
                    dir.host
                ));
            }
            if dir.writable && dir.host.parent().is_none() {
                return Err(
                    "sandbox.dirs: the root directory `/` cannot be granted writable".into(),
                );
            }
        }
        if self.instance.reuse.is_some() {
            return Err(
                "instance.reuse is gone: write isolation = \"pool\" (warm instances) \
                        with max_invocations = N (messages per instance) instead"
                    .into(),
            );
        }
        if self.instance.max_idle > MAX_DURATION || self.instance.max_idle.is_zero() {
            return Err("instance.max_idle must be more than 0 and at most 1 day".into());
        }
        if let Some(batch) = &self.batch {
            if batch.max.get() > MAX_BATCH {
                return Err(format!(
                    "batch.max = {} is more than {MAX_BATCH}",
                    batch.max
                ));
            }
            if batch.max_wait > MAX_BATCH_WAIT {
                return Err(format!(
                    "batch.max_wait = {:?} is longer than {MAX_BATCH_WAIT:?}: the inputs' \
                     ack_wait runs while they wait",
                    batch.max_wait
                ));
            }
        }
        for (field, bytes) in [
            ("limits.output_bytes", self.limits.output_bytes),
            ("limits.log_bytes", self.limits.log_bytes),
            ("http.max_request_bytes", self.http.max_request_bytes),
            ("http.max_response_bytes", self.http.max_response_bytes),
        ] {
            if bytes > MAX_BYTES {
                return Err(format!("{field} = {bytes} is more than 1GiB"));
            }
        }
        Ok(())
    }

    /// The checks that need more than one field: names that go into API subjects, core
    /// subscriptions and the dead-letter subject kept out of reserved space
    /// ([`policy`](crate::policy)).
    fn refuse_reserved(&self) -> Result<(), String> {
        if let Some(subscribe) = &self.subscribe {
            let names = [
                ("subscribe.stream", &subscribe.stream),
                ("subscribe.durable", &subscribe.durable),
                ("subscribe.queue_group", &subscribe.queue_group),
            ];
            for (field, name) in names {
                if let Some(name) = name {
                    policy::refuse_invalid_name(field, name)?;
                }
            }
            if subscribe.stream.is_none() {
                for subject in &subscribe.subjects {
                    policy::refuse_reserved_subscription(subject)
                        .map_err(|e| format!("subscribe.subjects: {e}"))?;
                }
            }
        }
        for pattern in &self.request.allow {
            policy::capabilities::refuse_reserved_request(pattern)
                .map_err(|e| format!("request.allow: {e}"))?;
        }
        for (bucket, grant) in &self.kv.buckets {
            policy::capabilities::refuse_invalid_bucket(bucket)
                .map_err(|e| format!("kv.buckets: {e}"))?;
            if let BucketGrant::Full(settings) = grant
                && !(1..=64).contains(&settings.history)
            {
                return Err(format!(
                    "kv.buckets.{bucket}.history = {} is not between 1 and 64",
                    settings.history
                ));
            }
        }
        for origin in &self.http.allow {
            policy::Origin::parse(origin).map_err(|e| format!("http.allow: {e}"))?;
        }
        if let Some(subject) = &self.publish.dead_letter {
            policy::refuse_invalid_subject(subject)
                .and_then(|()| policy::refuse_wildcard(subject))
                .map_err(|e| format!("publish.dead_letter: {e}"))?;
            if let Some(prefix) = policy::reserved_prefix(subject) {
                return Err(format!(
                    "publish.dead_letter = {subject:?} is in reserved space ({prefix})"
                ));
            }
        }
        Ok(())
    }

    /// Reads and parses a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        Self::parse(&Self::read_text(path)?, path)
    }

    /// The manifest beside a plugin file (`NAME.toml` for `NAME.wasm`), or the defaults when
    /// there is none.
    pub fn beside(wasm: &Path) -> Result<Self, ManifestError> {
        match Self::read_beside(wasm)? {
            Some((path, text)) => Self::parse(&text, &path),
            None => Ok(Self::default()),
        }
    }

    /// A manifest file's text, read within [`Bound::MANIFEST`](crate::bounded::Bound::MANIFEST).
    pub fn read_text(path: &Path) -> Result<String, ManifestError> {
        crate::bounded::read_text(path, crate::bounded::Bound::MANIFEST).map_err(|source| {
            ManifestError::Read {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// The path and text of the manifest beside a plugin file, if there is one.
    pub fn read_beside(wasm: &Path) -> Result<Option<(PathBuf, String)>, ManifestError> {
        let path = wasm.with_extension("toml");
        match Self::read_text(&path) {
            Ok(text) => Ok(Some((path, text))),
            Err(ManifestError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The longest duration a manifest may set (deadline, ack_wait, heartbeat, backoff).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The most handlers one plugin may run at once on one host.
const MAX_CONCURRENCY: usize = 65_536;
/// The most inputs in one batch call.
const MAX_BATCH: usize = 4096;
/// The longest a batch waits to fill.
const MAX_BATCH_WAIT: Duration = Duration::from_secs(1);
/// The largest byte budget a manifest may set (output_bytes, log_bytes).
const MAX_BYTES: u64 = 1 << 30;

const fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
const fn default_max_deliver() -> i64 {
    5
}
const fn default_concurrency() -> NonZeroUsize {
    NonZeroUsize::new(4).expect("4 is not zero")
}
const fn default_fuel() -> u64 {
    0
}
const fn default_deadline() -> Duration {
    Duration::from_secs(60)
}
const fn default_memory() -> u64 {
    128 << 20
}
const fn default_output_bytes() -> u64 {
    16 << 20
}
const fn default_log_bytes() -> u64 {
    64 << 10
}
fn default_backoff() -> Vec<Duration> {
    vec![
        Duration::from_secs(1),
        Duration::from_secs(5),
        Duration::from_secs(30),
    ]
}
const fn dead_letter() -> LimitAction {
    LimitAction::DeadLetter
}
const fn retry() -> LimitAction {
    LimitAction::Retry
}

/// A list of NATS subjects: non-empty tokens without whitespace or control characters, `*`
/// and `>` as whole tokens, `>` only last.
fn subjects<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let subjects = Vec::<String>::deserialize(d)?;
    for subject in &subjects {
        if !Pattern::parse(subject).is_valid() || subject.len() > policy::MAX_SUBJECT {
            return Err(serde::de::Error::custom(format!(
                "{subject:?} is not a valid NATS subject"
            )));
        }
    }
    Ok(subjects)
}

/// A list of header names the protocol can carry.
fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    for name in &names {
        policy::headers::refuse_unsendable_name(name).map_err(serde::de::Error::custom)?;
    }
    Ok(names)
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

/// An optional [`byte_size`].
fn optional_byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    byte_size(d).map(Some)
}

/// A byte size: an integer, or a string like "64MiB", "512KiB", "1GiB", "100MB".
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => parse_byte_size(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a size (use bytes, or a number with KiB, MiB, GiB, KB, MB or GB)"
            ))
        }),
    }
}

fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_manifest_is_the_defaults() {
        let m = Manifest::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(m, Manifest::default());
        assert_eq!(m.limits.memory, 128 << 20);
        assert_eq!(m.retry.on_deadline, LimitAction::Retry);
    }

    /// Whoever writes the folder or bucket writes the manifest: past 1 MiB it is refused
    /// unparsed, and within it the deepest nesting the bound allows is an error, not a stack
    /// overflow (which would abort the host).
    #[test]
    fn an_oversize_or_deeply_nested_manifest_is_a_typed_error() {
        let path = Path::new("p.toml");
        let big = format!("# {}\n", "x".repeat(1 << 20));
        let err = Manifest::parse(&big, path).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid manifest \"p.toml\": 1048579 bytes, over the manifest bound (1048576 bytes)"
        );
        let half = (1 << 20) / 2 - 16;
        for deep in [
            format!("[config]\na = {}{}", "[".repeat(half), "]".repeat(half)),
            format!(
                "[config]\na = {}1{}",
                "{a=".repeat(half / 3),
                "}".repeat(half / 3)
            ),
            format!("[config]\na = {}", "[".repeat((1 << 20) - 16)),
        ] {
            assert!(deep.len() <= 1 << 20);
            // On a thread with a small stack, as the host's blocking compile threads have.
            let parsed = std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || Manifest::parse(&deep, Path::new("p.toml")).map(|_| ()))
                .unwrap()
                .join()
                .expect("the parser does not overflow its stack");
            let err = parsed.unwrap_err().to_string();
            assert!(err.starts_with("invalid manifest \"p.toml\": "), "{err}");
        }
    }

    #[test]
    fn full_manifest_parses() {
        let m = Manifest::parse(
            r#"
            [subscribe]
            stream = "ORDERS"
            subjects = ["orders.>"]
            ack_wait = "5s"
            concurrency = 8
            [limits]
            fuel = 0
            deadline = "1500ms"
            memory = "64MiB"
            [retry]
            backoff = ["100ms", "2s"]
            on_trap = "retry"
            [publish]
            allow = ["out.*"]
            [config]
            output = "out.x"
            "#,
            Path::new("p.toml"),
        )
        .unwrap();
        let s = m.subscribe.unwrap();
        assert_eq!(s.ack_wait, Duration::from_secs(5));
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(5) / 3);
        assert_eq!(s.concurrency.get(), 8);
        assert_eq!(m.limits.memory, 64 << 20);
        assert_eq!(m.limits.deadline, Duration::from_millis(1500));
        assert_eq!(m.retry.delay_for(1), Duration::from_millis(100));
        assert_eq!(m.retry.delay_for(2), Duration::from_secs(2));
        assert_eq!(m.retry.delay_for(9), Duration::from_secs(2));
        assert_eq!(m.retry.on_trap, LimitAction::Retry);
        assert_eq!(m.config["output"], "out.x");
    }

    #[test]
    fn settings_that_would_strand_or_fail_every_message_are_refused_at_load() {
        let refused = |text: &str| {
            Manifest::parse(text, Path::new("m.toml"))
                .unwrap_err()
                .to_string()
        };
        let js = "[subscribe]\nstream = \"S\"\nsubjects = [\"s\"]\n";
        let err = refused(&format!("{js}ack_wait = \"5s\"\nheartbeat = \"5s\"\n"));
        assert!(
            err.contains("subscribe.heartbeat = 5s is not less than subscribe.ack_wait = 5s"),
            "{err}"
        );
        let err = refused(&format!("{js}ack_wait = \"0s\"\n"));
        assert!(
            err.contains("subscribe.ack_wait must be more than 0"),
            "{err}"
        );
        let err = refused("[limits]\ndeadline = \"0s\"\n");
        assert!(err.contains("limits.deadline must be more than 0"), "{err}");
        let err = refused("[[sandbox.dirs]]\nhost = \"/\"\nguest = \"/\"\nwritable = true\n");
        assert!(err.contains("`/` cannot be granted writable"), "{err}");
        let err = refused("[[sandbox.dirs]]\nhost = \"data\"\nguest = \"/data\"\n");
        assert!(err.contains("is not an absolute path"), "{err}");
        // A zero backoff is an immediate retry, and a read-only `/` is a grant like another.
        Manifest::parse(
            "[retry]\nbackoff = [\"0s\"]\n[[sandbox.dirs]]\nhost = \"/\"\nguest = \"/\"\n",
            Path::new("m.toml"),
        )
        .unwrap();
        assert_eq!(
            Manifest::default().limits.fuel,
            0,
            "no fuel budget: the deadline guards"
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let err = Manifest::parse("[limits]\nfuel = 1\nmemroy = 5\n", Path::new("bad.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("unknown field `memroy`"), "{err}");

        let err = Manifest::parse("[limits]\nmemory = \"lots\"\n", Path::new("m.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("\"lots\" is not a size"),
            "{err}"
        );

        let err = Manifest::parse("[subscribe]\nsubjects = [\"a..b\"]\n", Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("not a valid NATS subject"),
            "{err}"
        );

        let err = Manifest::parse(
            "[subscribe]\nsubjects = [\"a\"]\nconcurrency = 0\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("line 3") && err.contains("concurrency"),
            "{err}"
        );
    }
    #[test]
    fn what_would_reach_reserved_space_is_refused_at_load() {
        for (text, wanted) in [
            (
                "[subscribe]\nsubjects = [\">\"]\n",
                "reaches reserved space",
            ),
            (
                "[subscribe]\nsubjects = [\"*.>\"]\n",
                "reaches reserved space",
            ),
            (
                "[subscribe]\nsubjects = [\"natsplug.>\"]\n",
                "reaches reserved space",
            ),
            (
                "[publish]\ndead_letter = \"$JS.API.STREAM.DELETE.IN\"\n",
                "reserved space",
            ),
            ("[publish]\ndead_letter = \"dead.*\"\n", "wildcard"),
            (
                "[subscribe]\nstream = \"IN.x\"\nsubjects = [\"a\"]\n",
                "not a valid name",
            ),
            (
                "[subscribe]\nstream = \"IN\"\ndurable = \"d *\"\nsubjects = [\"a\"]\n",
                "not a valid name",
            ),
            ("[publish]\nheaders = [\"Bad Name\"]\n", "invalid"),
            (
                "[publish]\nallow = [\"a.b*\"]\n",
                "not a valid NATS subject",
            ),
            (
                "[publish]\nreply_allow = [\"a..b\"]\n",
                "not a valid NATS subject",
            ),
            (
                "[limits]\ndeadline = \"500000000000y\"\n",
                "longer than 1 day",
            ),
            (
                "[retry]\nbackoff = [\"1s\", \"2days\"]\n",
                "longer than 1 day",
            ),
            (
                "[subscribe]\nsubjects = [\"a\"]\nconcurrency = 9223372036854775807\n",
                "more than 65536",
            ),
            ("[limits]\noutput_bytes = \"2GiB\"\n", "more than 1GiB"),
        ] {
            let err = Manifest::parse(text, Path::new("r.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("r.toml") && err.contains(wanted),
                "{text}: {err}"
            );
        }
        // A JetStream filter is inside its stream: `>` is fine there.
        let m = Manifest::parse(
            "[subscribe]\nstream = \"IN\"\nsubjects = [\">\"]\n[publish]\nheaders = [\"Nats-TTL\"]\n",
            Path::new("ok.toml"),
        )
        .unwrap();
        assert_eq!(m.publish.headers, ["Nats-TTL"]);
        assert_eq!(m.limits.output_bytes, 16 << 20);
        assert_eq!(m.limits.log_bytes, 64 << 10);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Manifest text from the fragments a manifest is made of, so random ones are often
        /// valid TOML and exercise the field checks, not only the TOML parser.
        fn text() -> impl Strategy<Value = String> {
            let line = prop_oneof![
                Just("[subscribe]".to_owned()),
                Just("[publish]".to_owned()),
                Just("[limits]".to_owned()),
                Just("[retry]".to_owned()),
                Just("[sandbox]".to_owned()),
                "(stream|durable|queue_group|dead_letter) = \"[a-z.*>$ ]{0,6}\"",
                "(subjects|allow|core|reply_allow|headers|backoff) = \\[(\"[a-z.*>$:-]{0,6}\", ?){0,3}\\]",
                "(memory|output_bytes|log_bytes|fuel|max_deliver|concurrency) = (-?[0-9]{1,12}|\"[0-9]{0,4}[KMG]?i?B?\")",
                "(ack_wait|deadline|heartbeat) = \"[0-9]{0,3}(ms|s|m|h|x)?\"",
                "\\PC{0,20}",
            ];
            prop::collection::vec(line, 0..10).prop_map(|lines| lines.join("\n"))
        }

        proptest! {
            #[test]
            fn random_manifests_never_panic_and_never_grant_reserved_space(text in text()) {
                if let Ok(m) = Manifest::parse(&text, Path::new("p.toml")) {
                    if let Some(s) = &m.subscribe
                        && s.stream.is_none()
                    {
                        for subject in &s.subjects {
                            prop_assert!(policy::refuse_reserved_subscription(subject).is_ok());
                        }
                    }
                    let dead = m.publish.dead_letter_subject("p");
                    prop_assert!(policy::reserved_prefix(&dead).is_none(), "{dead}");
                    let _ = policy::Grants::new(&m.publish);
                }
            }
        }
    }
}
