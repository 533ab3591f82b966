//! natsplug: run WebAssembly message handlers on NATS JetStream.
//!
//! The host owns the NATS connections, the ack-progress heartbeats and every ack, nak, term
//! and dead-letter decision; plugins are WebAssembly components that answer one message at a
//! time in a fresh sandboxed instance, under fuel, wall-clock and memory limits.
//!
//! Layout:
//! - [`message`]: the host's message and output types, subject matching.
//! - [`manifest`]: the plugin manifest (`NAME.toml`): subscriptions, limits, policies, grants.
//! - [`runtime`]: the wasmtime engine, plugin loading and the sandboxed handler call.
//! - [`offline`]: `natsplug validate` and `natsplug call`, the plugin author's test loop.

pub mod manifest;
pub mod message;
pub mod offline;
pub mod runtime;
