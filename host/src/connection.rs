//! NATS connections: one for the consumer side, a pool for the publisher side, all built from
//! the same [`NatsConfig`] (servers, timeouts, reconnect, auth, TLS) and named by their role so
//! `nats server report connections` shows which is which. Connection events are logged with
//! the role.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::{ConnectOptions, Event};

use crate::backoff::Backoff;
use crate::config::NatsConfig;
use crate::metrics::{Metrics, RoleLabel};

/// The server used when none is configured.
pub const DEFAULT_SERVER: &str = "nats://127.0.0.1:4222";

/// Whether `client`'s connection is up (not connecting, reconnecting or closed).
pub fn is_up(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The role of the connection handlers' requests and KV calls use.
pub const CAPABILITIES: &str = "capabilities";

/// Connects one client for `role` ("consumer", "publisher-0"...).
pub async fn connect(config: &NatsConfig, role: &str) -> anyhow::Result<async_nats::Client> {
    connect_with(config, role, None).await
}

/// Connects one client for `role`, counting its state and reconnects in `metrics`.
pub async fn connect_with(
    config: &NatsConfig,
    role: &str,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<String> = if config.servers.is_empty() {
        vec![DEFAULT_SERVER.to_owned()]
    } else {
        config.servers.clone()
    };
    let options = options(config, role, metrics).await?;
    let addrs: Vec<async_nats::ServerAddr> = servers
        .iter()
        .map(|s| {
            s.parse()
                .with_context(|| format!("invalid server URL {s:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    options.connect(addrs).await.with_context(|| {
        format!(
            "cannot connect the {role} connection to {}",
            servers.join(",")
        )
    })
}

async fn options(
    config: &NatsConfig,
    role: &str,
    metrics: Option<Arc<Metrics>>,
) -> anyhow::Result<ConnectOptions> {
    let mut options = match &config.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("cannot read credentials file {path:?}"))?,
        None => ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &config.nkey_seed {
        options = options.nkey(seed.clone());
    }
    if config.tls.required {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let max_delay = config.reconnect_delay;
    let role_for_events = role.to_owned();
    let was_connected = Arc::new(AtomicBool::new(false));
    Ok(options
        .name(format!("{}-{role}", config.name))
        // The host's inboxes are reserved space (crate::policy): no reply goes there. The
        // capabilities' requests get their answers from services, in an inbox of their own.
        .custom_inbox_prefix(if role == CAPABILITIES {
            crate::policy::CAPABILITY_INBOX_PREFIX
        } else {
            crate::policy::HOST_INBOX_PREFIX
        })
        .ping_interval(config.ping_interval)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .client_capacity(config.reconnect_buffer)
        .retry_on_initial_connect()
        .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, max_delay))
        .event_callback(move |event| {
            let role = role_for_events.clone();
            let metrics = metrics.clone();
            let was_connected = was_connected.clone();
            async move {
                // The first `Connected` is the start; any later one follows a disconnect.
                let reconnected = matches!(event, Event::Connected)
                    && was_connected.swap(true, Ordering::Relaxed);
                if let Some(metrics) = metrics {
                    let up = metrics
                        .connected
                        .get_or_create(&RoleLabel { role: role.clone() });
                    match event {
                        Event::Connected => {
                            up.set(1);
                            if reconnected {
                                metrics
                                    .reconnects
                                    .get_or_create(&RoleLabel { role: role.clone() })
                                    .inc();
                            }
                        }
                        Event::Disconnected | Event::Closed => {
                            up.set(0);
                        }
                        _ => {}
                    }
                }
                log_event(&role, event, reconnected)
            }
        }))
}

/// 0 for the first attempt, then 100ms doubling up to `max`.
fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let backoff = Backoff {
        first: Duration::from_millis(100),
        max,
        jitter: false,
    };
    backoff.delay(u32::try_from(attempts - 1).unwrap_or(u32::MAX))
}

/// A connection's lifecycle: what an operator acts on (a disconnect, a server in lame-duck
/// mode, a refusal) at warn or above, a reconnect after a disconnect at info; the routine start
/// and stop of each connection (connected, draining, closed: ten lines per host) at debug.
fn log_event(role: &str, event: Event, reconnected: bool) {
    match event {
        Event::Connected if reconnected => {
            tracing::info!(messaging.system = "nats", role, "reconnected")
        }
        Event::Connected => tracing::debug!(messaging.system = "nats", role, "connected"),
        Event::Disconnected => tracing::warn!(messaging.system = "nats", role, "disconnected"),
        Event::SlowConsumer(sid) => {
            tracing::warn!(messaging.system = "nats", role, sid, "slow consumer")
        }
        Event::LameDuckMode => {
            tracing::warn!(
                messaging.system = "nats",
                role,
                "the server is entering lame-duck mode"
            )
        }
        // A permissions violation or an authorization error: the server refused something the
        // host did (a grant its NATS user does not cover); a human has to widen one or the other.
        Event::ServerError(error) => {
            tracing::error!(messaging.system = "nats", role, error = %error, "the server refused a request")
        }
        Event::ClientError(error) => {
            tracing::warn!(messaging.system = "nats", role, error = %error, "connection error")
        }
        other => {
            tracing::debug!(messaging.system = "nats", role, event = %other, "connection event")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_to_the_max() {
        let max = Duration::from_secs(1);
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        assert_eq!(reconnect_delay(2, max), Duration::from_millis(100));
        assert_eq!(reconnect_delay(4, max), Duration::from_millis(400));
        assert_eq!(reconnect_delay(10, max), max);
    }
}
