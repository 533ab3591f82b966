//! natsplug: run WebAssembly message handlers on NATS JetStream.
//!
//! The host owns the NATS connections, the ack-progress heartbeats and every ack, nak, term
//! and dead-letter decision; plugins are WebAssembly components that answer one message at a
//! time in a fresh sandboxed instance, under fuel, wall-clock and memory limits.
//!
//! Layout:
//! - [`message`]: the host's message and output types.
//! - [`manifest`]: the plugin manifest (`NAME.toml`): subscriptions, limits, policies, grants.
//! - [`policy`]: every check of what a guest, a requester or a manifest controls (subjects,
//!   reply subjects, headers, sizes) against the plugin's grant and the reserved space.
//! - [`runtime`]: the wasmtime engine, plugin loading and the sandboxed handler call.
//! - [`bounded`]: reading plugin files, manifests and bucket objects, never past a bound.
//! - [`offline`]: `natsplug validate` and `natsplug call`, the plugin author's test loop.
//! - [`config`]: the host configuration (`natsplug.toml` + `NATSPLUG_*` overrides).
//! - [`connection`]: NATS connections by role (consumer, publisher-N).
//! - [`plugins`]: the plugins folder and the registry of served versions.
//! - [`reload`]: watches the folder and hot-swaps plugins.
//! - [`source`]: plugins from a NATS Object Store bucket: push, rollout, rollback, the mirror.
//! - [`control`]: the control plane over NATS (`natsplug list|reload|status`).
//! - [`admin`]: the admin HTTP listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`metrics`]: Prometheus metrics; per-plugin handles the control plane reads too.
//! - [`scaffold`]: `natsplug new`, a plugin project with a test through the real runtime.
//! - [`sdk`]: the WIT contract and the guest SDKs, embedded in the binary.
//! - [`delivery`]: the message path, pull to settle: consumers, pull requests, heartbeats,
//!   settlement (every input acked with its outputs stored, dead-lettered, or back on the
//!   server), the publisher pool, the core threads.
//! - [`capability`]: KV, requests and outbound HTTP for handlers, behind grants.
//! - [`backoff`]: the exponential backoff of reconnects, publish retries and set-up pauses.
//! - [`traces`]: W3C trace context through a message, spans exported over OTLP/HTTP.
//! - [`shutdown`]: the two-stage shutdown signal.
//! - [`host`]: `run(config, shutdown)`, the whole host.
//! - [`dev`]: `natsplug dev`, a local server, demo streams and sample messages.
//! - [`watch`]: `natsplug dev --build`, rebuild a plugin project on every change.

pub mod admin;
pub mod backoff;
pub mod bounded;
pub mod capability;
pub mod config;
pub mod connection;
pub mod control;
pub mod delivery;
pub mod dev;
pub mod host;
pub mod manifest;
pub mod message;
pub mod metrics;
pub mod offline;
pub mod plugins;
pub mod policy;
pub mod reload;
pub mod runtime;
pub mod scaffold;
pub mod sdk;
pub mod shutdown;
pub mod source;
pub mod traces;
pub mod watch;
