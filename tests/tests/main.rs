//! Every integration test, in one binary: each file is a module for one area, and each test
//! starts what it needs (a `nats-server` of its own, a host, a plugins folder). One binary means
//! one link of wasmtime instead of seven (about 90 MB and several seconds each). Run one area
//! with `cargo test -p natsplug-tests --test integration engine::`. A new file here needs its
//! `mod` line below: tests/Cargo.toml turns off cargo's one-binary-per-file discovery.
//!
//! - [`runtime`]: the sandboxed runtime without NATS: every limit, bad plugins, isolation.
//! - [`engine`]: the JetStream engine: exact counts, retries, dead letters, restarts, replies.
//! - [`fleet`]: several hosts on a 3-node JetStream cluster: shared work, a host and the stream
//!   leader's node killed under load; plugins pushed, rolled out and back through a bucket.
//! - [`observability`]: metrics, health, traces and logs.
//! - [`process`]: the `natsplug` binary as a process: SIGKILL and SIGTERM mid-run.
//! - [`reload`]: hot reload under load and the control plane.
//! - [`deploy`]: the deployment files (Kubernetes manifest, Containerfile, Grafana dashboard).
//! - [`package`]: the release tarball outside the checkout: `natsplug new` for each language.
//! - [`languages`]: the same handler in Rust, Python, JavaScript, Go and C.
//! - [`commands`]: command handlers (WASI programs in C and Go): every fault's typed outcome.
//! - [`sdks`]: the Python and JavaScript SDKs inside real components, feature by feature.
//! - [`auth`]: TLS, user/password, nkey and creds file end to end; the documented permissions.
//! - [`security`]: hostile requesters and guests: forged reply subjects, server-steering and
//!   unsendable headers, output and log floods.
//! - [`batch`]: batch calls: each input settled on its own result, heartbeats for all.
//! - [`capabilities`]: KV, requests and outbound HTTP behind grants, and their denials.
//! - [`stranded`]: every input ends acked, dead-lettered or back on the server: host panics,
//!   oversize and unstorable dead letters, bound consumers' own limits, host faults, dedup ids.

mod auth;
mod batch;
mod bindings;
mod capabilities;
mod commands;
mod deploy;
mod engine;
mod fleet;
mod languages;
mod observability;
mod package;
mod process;
mod reload;
mod runtime;
mod sdks;
mod security;
mod stranded;
