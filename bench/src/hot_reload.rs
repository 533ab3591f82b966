//! The throughput dip while `uppercase` is hot-reloaded under load: a natsplug throughput run
//! whose manifest says `marker = "before"`; once a quarter of the outputs are stored, the runner
//! replaces the component with a new one (the same code with a custom section added, so its
//! bytes differ and the host compiles it: the compile cache has never seen it) and then the
//! manifest with `marker = "after"`, each atomically, as a deploy tool would. The host sees the
//! folder change, compiles and loads the new version off the hot path and sends new messages to
//! it.
//! Outputs carry the marker as a header, which shows when the new version took over.
//!
//! Figure: the longest gap between consecutive stored outputs over the whole run, beside the
//! same figure of ordinary runs (no reload) as the baseline.

use std::path::Path;

use crate::contenders::natsplug::{self, Natsplug};
use crate::stats;
use crate::throughput::{self, MidRun, Shape};

/// What the hot-reload run measured.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Messages in the run.
    pub messages: u64,
    /// Its throughput, msgs/s.
    pub msgs_per_s: f64,
    /// Longest gap between consecutive stored outputs, ms.
    pub longest_gap_ms: f64,
    /// Longest gap within a second either side of the new version's first output, ms.
    pub gap_at_switch_ms: f64,
    /// From the manifest rewrite to the first output of the new version, ms.
    pub switch_after_ms: f64,
    /// Outputs of the old version.
    pub before: usize,
    /// Outputs of the new version.
    pub after: usize,
}

/// Runs it.
pub async fn run(
    client: &async_nats::Client,
    server_pid: u32,
    url: &str,
    settings: Natsplug,
    shape: Shape,
    dir: &Path,
) -> anyhow::Result<Reload> {
    let plugins = settings.job_plugins(dir, Some("before"))?;
    let command = settings.command(url, &plugins)?;
    let manifest = natsplug::manifest_path(&plugins);
    let new_manifest = settings.manifest(Some("after"))?;
    let wasm = manifest.with_extension("wasm");
    let mut new_wasm = std::fs::read(&wasm)?;
    // A new version every time: the compile cache is kept from one bench to the next.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    new_wasm.extend(custom_section("natsplug-bench", nonce.as_bytes()));
    let mid = MidRun {
        after: shape.messages / 4,
        action: Box::new(move || {
            natsplug::replace_bytes(&wasm, &new_wasm)?;
            natsplug::replace_file(&manifest, &new_manifest)
        }),
    };
    let shape = Shape {
        latency_messages: 0,
        ..shape
    };
    let result = throughput::run(
        client,
        server_pid,
        command,
        "natsplug (hot reload)",
        shape,
        dir,
        Some(mid),
    )
    .await?;
    let mut outputs = result.outputs.clone();
    outputs.sort_by_key(|o| o.0);
    let marked = |m: &str| outputs.iter().filter(|o| o.1.as_deref() == Some(m)).count();
    let first_after = outputs
        .iter()
        .find(|o| o.1.as_deref() == Some("after"))
        .map(|o| o.0);
    let rewritten = result.mid_run_at_ns.unwrap_or(0);
    let (switch_after_ms, gap_at_switch_ms) = match first_after {
        Some(t) => {
            let window: Vec<i128> = outputs
                .iter()
                .map(|o| o.0)
                .filter(|&s| s >= t - 1_000_000_000 && s <= t + 1_000_000_000)
                .collect();
            (
                (t - rewritten) as f64 / 1e6,
                stats::longest_gap(&window) as f64 / 1e6,
            )
        }
        None => (f64::NAN, f64::NAN),
    };
    Ok(Reload {
        messages: shape.messages,
        msgs_per_s: result.msgs_per_s,
        longest_gap_ms: result.longest_gap_ms,
        gap_at_switch_ms,
        switch_after_ms,
        before: marked("before"),
        after: marked("after"),
    })
}

/// A custom section (id 0: a name and bytes) to append to a component: it changes the bytes,
/// not what the component does.
fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut body = leb128(name.len());
    body.extend(name.as_bytes());
    body.extend(data);
    let mut section = vec![0];
    section.extend(leb128(body.len()));
    section.extend(body);
    section
}

fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}
