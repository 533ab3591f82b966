//! The control plane over NATS. Each host registers as a NATS service named `natsplug` (the
//! services protocol: `$SRV.PING|INFO|STATS.natsplug` discovery, so `nats micro ls` sees it), with
//! its endpoints on subjects of its own, `natsplug.control.<HOST>.{list,reload,status}`, so a
//! command can reach every host, not one of a queue group.
//!
//! The CLI side ([`call`]) discovers the hosts with `$SRV.INFO.natsplug`, then asks each one
//! (or the one named) and returns every answer. Who may call it is governed by NATS
//! permissions: allow `$SRV.>` and `natsplug.control.>` only to operators.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::plugins::{PluginInfo, Registry, ReloadResult};
use crate::shutdown::Shutdown;

/// The service name every host registers.
pub const SERVICE: &str = "natsplug";
/// The metadata key carrying the host id.
const HOST_KEY: &str = "host";

/// The control subject prefix of a host.
pub fn host_subject(host: &str) -> String {
    let token: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("natsplug.control.{token}")
}

/// `natsplug status` for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Host id.
    pub host: String,
    /// When the host started (RFC 3339).
    pub started_at: String,
    /// Seconds since.
    pub uptime_secs: u64,
    /// Whether the consumer connection is up.
    pub connected: bool,
    /// Plugins served (including failed ones).
    pub plugins: usize,
    /// Plugins whose file failed to load.
    pub failed: usize,
    /// Messages in flight, all plugins.
    pub in_flight: u64,
    /// Inputs acked, all plugins.
    pub processed: u64,
    /// Inputs dead-lettered, all plugins.
    pub dead_lettered: u64,
}

/// A reload request: one plugin, or all when `plugin` is absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// The plugin to reload; all when absent.
    pub plugin: Option<String>,
}

/// One host's answer to a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer<T> {
    /// The host that answered.
    pub host: String,
    /// Its answer.
    pub answer: T,
}

/// Serves the control endpoints of this host until shutdown.
pub async fn serve(
    client: async_nats::Client,
    host: String,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use async_nats::service::ServiceExt as _;
    let service = client
        .service_builder()
        .description("natsplug host: list plugins, reload, status")
        .metadata([(HOST_KEY.to_owned(), host.clone())].into())
        .start(SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot register the control service: {e}"))?;
    let group = service.group(host_subject(&host));
    let endpoint = |name: &'static str| {
        let group = &group;
        async move {
            group
                .endpoint(name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot add the {name} endpoint: {e}"))
        }
    };
    let mut list = endpoint("list").await?;
    let mut reload = endpoint("reload").await?;
    let mut status = endpoint("status").await?;
    let started = SystemTime::now();
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(request) = list.next() => {
                    let plugins = registry.list();
                    respond(request, &plugins).await;
                }
                Some(request) = reload.next() => {
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        let ask: ReloadRequest = serde_json::from_slice(&request.message.payload).unwrap_or_default();
                        let results = registry.sync(ask.plugin.as_deref(), true).await;
                        respond(request, &results).await;
                    });
                }
                Some(request) = status.next() => {
                    let plugins = registry.list();
                    let answer = HostStatus {
                        host: host.clone(),
                        started_at: time::OffsetDateTime::from(started)
                            .format(&time::format_description::well_known::Rfc3339)
                            .unwrap_or_default(),
                        uptime_secs: started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                        connected: crate::connection::is_up(&client),
                        plugins: plugins.len(),
                        failed: plugins.iter().filter(|p| p.error.is_some()).count(),
                        in_flight: plugins.iter().map(|p| p.stats.in_flight).sum(),
                        processed: plugins.iter().map(|p| p.stats.processed).sum(),
                        dead_lettered: plugins.iter().map(|p| p.stats.dead_lettered).sum(),
                    };
                    respond(request, &answer).await;
                }
                _ = shutdown.stopping() => break,
            }
        }
        if let Err(e) = service.stop().await {
            tracing::warn!(error = %e, "cannot stop the control service");
        }
    }))
}

async fn respond<T: Serialize>(request: async_nats::service::Request, answer: &T) {
    let body = serde_json::to_vec(answer).unwrap_or_default();
    if let Err(e) = request.respond(Ok(body.into())).await {
        tracing::warn!(error = %e, "cannot answer a control request");
    }
}

/// Sends `payload` to `subject` and collects every reply that arrives within `wait`.
async fn gather(
    client: &async_nats::Client,
    subject: String,
    payload: Vec<u8>,
    wait: Duration,
    expect: Option<usize>,
) -> anyhow::Result<Vec<async_nats::Message>> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subject, inbox, payload.into())
        .await?;
    client.flush().await?;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while expect.is_none_or(|n| got.len() < n) {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(got)
}

/// The hosts on this NATS (ids), found through `$SRV.INFO.natsplug` within `wait`.
pub async fn discover(client: &async_nats::Client, wait: Duration) -> anyhow::Result<Vec<String>> {
    let replies = gather(
        client,
        format!("$SRV.INFO.{SERVICE}"),
        Vec::new(),
        wait,
        None,
    )
    .await?;
    let mut hosts: Vec<String> = replies
        .iter()
        .filter_map(|m| serde_json::from_slice::<async_nats::service::Info>(&m.payload).ok())
        .filter_map(|info| info.metadata.get(HOST_KEY).cloned())
        .collect();
    hosts.sort();
    hosts.dedup();
    Ok(hosts)
}

/// Sends a control command (`list`, `reload`, `status`) to every host, or to `only`, and
/// returns each host's answer (or the error it gave).
pub async fn call<T: for<'de> Deserialize<'de>>(
    client: &async_nats::Client,
    verb: &str,
    body: &impl Serialize,
    only: Option<&str>,
    wait: Duration,
) -> anyhow::Result<Vec<Answer<Result<T, String>>>> {
    let hosts = match only {
        Some(host) => vec![host.to_owned()],
        None => discover(client, wait).await?,
    };
    let payload = serde_json::to_vec(body)?;
    let asks = hosts.into_iter().map(|host| {
        let payload = payload.clone();
        async move {
            let subject = format!("{}.{verb}", host_subject(&host));
            let answer = match gather(client, subject, payload, wait, Some(1)).await {
                Ok(replies) => match replies.first() {
                    Some(m) => serde_json::from_slice::<T>(&m.payload)
                        .map_err(|e| format!("unreadable answer: {e}")),
                    None => Err(format!("no answer within {wait:?}")),
                },
                Err(e) => Err(e.to_string()),
            };
            Answer { host, answer }
        }
    });
    Ok(futures::future::join_all(asks).await)
}

/// `natsplug list`'s answer type.
pub type ListAnswer = Vec<PluginInfo>;
/// `natsplug reload`'s answer type.
pub type ReloadAnswer = Vec<ReloadResult>;
