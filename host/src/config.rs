//! The host's configuration, `natsplug.toml`: the NATS connection options the timeout
//! write-ups tell people to tune, auth and TLS, the publisher pool and its retries, the host's
//! plugins folder and graceful timeout, the engine's bounds, the admin listener and the trace
//! exporter. Every key has a default and
//! can be overridden by an environment variable `NATSPLUG_<SECTION>_<KEY>` (e.g.
//! `NATSPLUG_NATS_SERVERS=nats://a:4222,nats://b:4222`, `NATSPLUG_HOST_GRACEFUL_TIMEOUT=20s`,
//! `NATSPLUG_NATS_TLS_CA=/etc/ca.pem`), each value typed by the field it sets; the most used
//! ones are also CLI flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

use crate::runtime::RuntimeConfig;

/// The whole host configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// The host itself.
    #[serde(default)]
    pub host: HostSection,
    /// Publishing outputs.
    #[serde(default)]
    pub publisher: PublisherConfig,
    /// The WebAssembly engine.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// The admin HTTP listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Trace export.
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// Trace export: one span per handled message, sent over OTLP/HTTP (see [`crate::traces`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where an OTLP/HTTP collector listens, e.g. "http://127.0.0.1:4318" (`/v1/traces` is
    /// appended unless the URL already ends with it); plain `http://` only. Default: none, and
    /// no spans are made: an input's `traceparent` goes on to its outputs unchanged.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans. Default: "natsplug".
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

/// The admin HTTP listener (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on, e.g. "0.0.0.0:9090". Default: none (off).
    pub listen: Option<std::net::SocketAddr>,
}

/// Connection options, used by the consumer connection and every publisher connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs. Default: none, which makes `natsplug dev` start a local server and
    /// `natsplug run` use `nats://127.0.0.1:4222`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Client name shown by the server (`-consumer` / `-publisher-N` is appended).
    /// Default: "natsplug".
    #[serde(default = "default_name")]
    pub name: String,
    /// PING interval; two missed PONGs mark the connection stale. Default: 10s.
    #[serde(with = "humantime_serde", default = "default_ping_interval")]
    pub ping_interval: Duration,
    /// Timeout of the TCP connect and handshake. Default: 5s.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Timeout of requests, JetStream API calls and publish acks. Default: 10s.
    #[serde(with = "humantime_serde", default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// Longest wait between reconnect attempts (the delay grows up to it). Default: 5s.
    #[serde(with = "humantime_serde", default = "default_reconnect_delay")]
    pub reconnect_delay: Duration,
    /// Commands buffered while reconnecting (the client's capacity). Default: 65536.
    #[serde(default = "default_reconnect_buffer")]
    pub reconnect_buffer: usize,
    /// User for user/password auth. Default: none.
    pub user: Option<String>,
    /// Password for user/password auth. Default: none.
    pub password: Option<String>,
    /// Token auth. Default: none.
    pub token: Option<String>,
    /// NKey seed (`SU...`). Default: none.
    pub nkey_seed: Option<String>,
    /// Credentials file (JWT + seed). Default: none.
    pub creds_file: Option<PathBuf>,
    /// TLS settings. Default: TLS only if the server asks for it.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// TLS settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Require TLS. Default: false.
    #[serde(default)]
    pub required: bool,
    /// CA certificate (PEM) to trust. Default: the system roots.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS. Default: none.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS. Default: none.
    pub key: Option<PathBuf>,
}

/// The host itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// The plugins folder (`NAME.wasm` + `NAME.toml`). Default: "plugins".
    #[serde(default = "default_plugins")]
    pub plugins: PathBuf,
    /// On SIGTERM, how long in-flight messages may take to finish before they are nak'ed for
    /// another host. Default: 30s.
    #[serde(with = "humantime_serde", default = "default_graceful_timeout")]
    pub graceful_timeout: Duration,
    /// This host's id in logs and on the control plane. Default: "<hostname>-<pid>".
    pub id: Option<String>,
    /// A stream the host creates (or extends) to store the dead letters of plugins whose
    /// dead-letter subject no stream captures. Default: none, and such a plugin is not served
    /// until a stream captures it (`natsplug list` says why). `natsplug dev` sets it.
    pub dead_letter_stream: Option<String>,
    /// A NATS Object Store bucket the plugins come from (`natsplug push`, `rollout`,
    /// `rollback`): each plugin's current version is mirrored into `plugins` (created if
    /// missing) and hot-swapped from there. Default: none, the folder is the source.
    pub bucket: Option<String>,
}

/// Publishing outputs and dead letters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherConfig {
    /// Publisher connections, separate from the consumer's. Default: 2.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Attempts per output before the input is nak'ed. Default: 5.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time, with jitter. Default: 100ms.
    #[serde(with = "humantime_serde", default = "default_backoff_initial")]
    pub backoff_initial: Duration,
    /// Longest delay between attempts. Default: 2s.
    #[serde(with = "humantime_serde", default = "default_backoff_max")]
    pub backoff_max: Duration,
}

/// The WebAssembly engine's bounds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Instances alive at once, all plugins together. Default: 1000.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Largest memory limit a plugin may ask for, in bytes. Default: 1 GiB.
    #[serde(default = "default_max_memory")]
    pub max_memory: u64,
    /// Output bytes the host holds for all messages in flight together, in bytes: past it a
    /// handler fails with `host-output-limit` and its input is retried. Default: 1 GiB.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes: u64,
    /// Largest plugin file (`NAME.wasm`) the host reads, from the folder or the bucket, in
    /// bytes: a larger one is refused from its size, unread, and the version served before
    /// keeps serving. Default: 128 MiB (a Python plugin is about 19 MB).
    #[serde(default = "default_max_plugin_bytes")]
    pub max_plugin_bytes: u64,
    /// Compiled components are cached here (keyed by content and engine settings), so a restart
    /// does not recompile. Default: `$XDG_CACHE_HOME/natsplug` or `~/.cache/natsplug`.
    pub cache_dir: Option<PathBuf>,
    /// Set to false to compile on every start. Default: true.
    #[serde(default = "default_cache")]
    pub cache: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            name: default_name(),
            ping_interval: default_ping_interval(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            reconnect_delay: default_reconnect_delay(),
            reconnect_buffer: default_reconnect_buffer(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

impl Default for HostSection {
    fn default() -> Self {
        Self {
            plugins: default_plugins(),
            graceful_timeout: default_graceful_timeout(),
            id: None,
            dead_letter_stream: None,
            bucket: None,
        }
    }
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            connections: default_connections(),
            max_attempts: default_max_attempts(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            max_instances: default_max_instances(),
            max_memory: default_max_memory(),
            max_output_bytes: default_max_output_bytes(),
            max_plugin_bytes: default_max_plugin_bytes(),
            cache_dir: None,
            cache: default_cache(),
        }
    }
}

impl RuntimeSection {
    /// The engine settings.
    pub fn runtime_config(&self) -> RuntimeConfig {
        let cache_dir = self.cache.then(|| {
            self.cache_dir.clone().unwrap_or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .unwrap_or_else(std::env::temp_dir)
                    .join("natsplug")
            })
        });
        RuntimeConfig {
            max_instances: self.max_instances,
            max_memory: self.max_memory,
            max_output_bytes: self.max_output_bytes,
            max_plugin_bytes: self.max_plugin_bytes,
            cache_dir,
        }
    }
}

impl HostSection {
    /// The configured id, else "<hostname>-<pid>".
    pub fn host_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "natsplug".into());
            format!("{host}-{}", std::process::id())
        })
    }
}

/// Sections whose keys an environment variable may override, longest first.
const SECTIONS: &[(&str, &[&str])] = &[
    ("NATS_TLS_", &["nats", "tls"]),
    ("NATS_", &["nats"]),
    ("HOST_", &["host"]),
    ("PUBLISHER_", &["publisher"]),
    ("RUNTIME_", &["runtime"]),
    ("ADMIN_", &["admin"]),
    ("TRACING_", &["tracing"]),
];

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &["servers"];

impl HostConfig {
    /// Reads `path` (when given), then applies the `NATSPLUG_*` environment overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config {path:?}"))?,
            None => String::new(),
        };
        let shown = path.map_or_else(|| "<defaults>".into(), |p| p.display().to_string());
        Self::parse(&text, &shown, std::env::vars())
    }

    /// Parses TOML text and layers the overrides from `env` (name, value) pairs on top.
    ///
    /// The layering is the `config` crate's: an environment value stays text until the field it
    /// sets reads it, so `NATSPLUG_NATS_PASSWORD=123456` is the string "123456" and
    /// `NATSPLUG_PUBLISHER_CONNECTIONS=4` the number 4. (A provider that types values by how
    /// they look, as figment's `Env` does, turns such a password into a number and fails.)
    /// Errors keep the parser's own layout: line, caret and expected fields on their own lines.
    pub fn parse(
        text: &str,
        shown: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml));
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("NATSPLUG_") else {
                continue;
            };
            let Some((prefix, path)) = SECTIONS.iter().find(|(p, _)| rest.starts_with(p)) else {
                continue;
            };
            let key = rest[prefix.len()..].to_ascii_lowercase();
            let at = format!("{}.{key}", path.join("."));
            builder = if LIST_KEYS.contains(&key.as_str()) {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                builder.set_override(at, items)
            } else {
                builder.set_override(at, value)
            }
            .with_context(|| format!("invalid config override {name}"))?;
            overridden.push(name);
        }
        let from = if overridden.is_empty() {
            String::new()
        } else {
            format!(" (with overrides from {})", overridden.join(", "))
        };
        builder
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| {
                anyhow::anyhow!(
                    "invalid config {shown}{from}:\n{}",
                    e.to_string().trim_end()
                )
            })
    }
}

fn default_name() -> String {
    "natsplug".into()
}
const fn default_ping_interval() -> Duration {
    Duration::from_secs(10)
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
const fn default_reconnect_delay() -> Duration {
    Duration::from_secs(5)
}
const fn default_reconnect_buffer() -> usize {
    65_536
}
fn default_service_name() -> String {
    "natsplug".into()
}
fn default_plugins() -> PathBuf {
    PathBuf::from("plugins")
}
const fn default_graceful_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_connections() -> usize {
    2
}
const fn default_max_attempts() -> u32 {
    5
}
const fn default_backoff_initial() -> Duration {
    Duration::from_millis(100)
}
const fn default_backoff_max() -> Duration {
    Duration::from_secs(2)
}
const fn default_max_instances() -> u32 {
    1000
}
const fn default_cache() -> bool {
    true
}
const fn default_max_memory() -> u64 {
    1 << 30
}
const fn default_max_output_bytes() -> u64 {
    1 << 30
}
const fn default_max_plugin_bytes() -> u64 {
    crate::runtime::DEFAULT_MAX_PLUGIN_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = HostConfig::parse("", "x", env(&[])).unwrap();
        assert_eq!(c, HostConfig::default());
        assert_eq!(c.publisher.connections, 2);
        assert_eq!(c.host.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.tracing.otlp_endpoint, None);
    }

    #[test]
    fn env_overrides_the_file() {
        let c = HostConfig::parse(
            "[nats]\nservers = [\"nats://file:4222\"]\nping_interval = \"3s\"\n[host]\ngraceful_timeout = \"9s\"\n",
            "natsplug.toml",
            env(&[
                ("NATSPLUG_NATS_SERVERS", "nats://a:1, nats://b:2"),
                ("NATSPLUG_HOST_GRACEFUL_TIMEOUT", "2s"),
                ("NATSPLUG_PUBLISHER_CONNECTIONS", "4"),
                ("NATSPLUG_NATS_TLS_CA", "/etc/ca.pem"),
                ("NATSPLUG_TRACING_OTLP_ENDPOINT", "http://collector:4318"),
                ("NATSPLUG_LOG", "debug"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats.servers, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(c.nats.ping_interval, Duration::from_secs(3));
        assert_eq!(c.host.graceful_timeout, Duration::from_secs(2));
        assert_eq!(c.publisher.connections, 4);
        assert_eq!(c.nats.tls.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(
            c.tracing.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        assert_eq!(c.tracing.service_name, "natsplug");
    }

    #[test]
    fn an_environment_value_is_typed_by_the_field_it_sets() {
        let c = HostConfig::parse(
            "",
            "x",
            env(&[
                // A numeric password, a boolean-looking user, a token with commas: strings,
                // because the fields are strings.
                ("NATSPLUG_NATS_PASSWORD", "123456"),
                ("NATSPLUG_NATS_USER", "true"),
                ("NATSPLUG_NATS_TOKEN", "a,b, c"),
                ("NATSPLUG_HOST_ID", "007"),
                // Numbers and booleans where the fields are numbers and booleans.
                ("NATSPLUG_PUBLISHER_MAX_ATTEMPTS", "7"),
                ("NATSPLUG_RUNTIME_CACHE", "false"),
                ("NATSPLUG_NATS_TLS_REQUIRED", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats.password.as_deref(), Some("123456"));
        assert_eq!(c.nats.user.as_deref(), Some("true"));
        assert_eq!(c.nats.token.as_deref(), Some("a,b, c"));
        assert_eq!(c.host.id.as_deref(), Some("007"));
        assert_eq!(c.publisher.max_attempts, 7);
        assert!(!c.runtime.cache);
        assert!(c.nats.tls.required);
        // A number field given text says which variable and which key.
        let err = HostConfig::parse("", "x", env(&[("NATSPLUG_PUBLISHER_CONNECTIONS", "four")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NATSPLUG_PUBLISHER_CONNECTIONS") && err.contains("publisher.connections"),
            "{err}"
        );
    }

    #[test]
    fn a_file_error_keeps_the_parser_layout() {
        let err = HostConfig::parse("[nats]\nservers = [\n", "natsplug.toml", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid config natsplug.toml:\n"), "{err}");
        assert!(err.lines().count() >= 3, "line, source and caret: {err}");
        assert!(err.contains('^'), "{err}");
    }

    #[test]
    fn the_tracing_section_names_an_exporter() {
        let c = HostConfig::parse(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"orders\"\n",
            "natsplug.toml",
            env(&[]),
        )
        .unwrap();
        assert_eq!(
            c.tracing,
            TracingConfig {
                otlp_endpoint: Some("http://127.0.0.1:4318".into()),
                service_name: "orders".into(),
            }
        );
        let err = HostConfig::parse("[tracing]\nendpoint = \"x\"\n", "natsplug.toml", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_where() {
        let err = HostConfig::parse("[nats]\nservres = []\n", "natsplug.toml", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("natsplug.toml") && err.contains("servres"),
            "{err}"
        );
        let err = HostConfig::parse(
            "",
            "natsplug.toml",
            env(&[("NATSPLUG_HOST_GRACEFUL", "1s")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("NATSPLUG_HOST_GRACEFUL") && err.contains("graceful"),
            "{err}"
        );
    }
}
