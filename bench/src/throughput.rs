//! One run of the job for one contender and one payload size, in two phases on the same
//! (warm) contender process:
//!
//! 1. **Throughput**: `messages` inputs are stored while the durable consumer is paused; the
//!    contender starts and binds to it; once it has a pull request waiting, its CPU time is
//!    sampled and the consumer resumed. msgs/s = `messages` / (last output stored - resume).
//!    CPU per 10k messages = the contender's `utime + stime` over that phase, per 10,000. The
//!    longest gap between consecutive stored outputs is kept too (the hot-reload figure's
//!    baseline).
//! 2. **Latency**: `latency_messages` more inputs are published at a steady `latency_rate` per
//!    second; each one's end-to-end latency is its output's stored time minus its own stored time
//!    (both from the server's clock). A saturated run would measure queueing, not the contender.
//!
//! Then peak RSS (`VmHWM`) is read, every input is checked to have exactly one output with the
//! right payload and to be acked, and the contender is stopped.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::job::{self, Stored};
use crate::process::Contender;
use crate::stats;

/// How a run is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Payload bytes.
    pub size: usize,
    /// Inputs of the throughput phase.
    pub messages: u64,
    /// Inputs of the latency phase (0: no latency phase).
    pub latency_messages: u64,
    /// Their rate, per second.
    pub latency_rate: f64,
}

/// Something to do once `after` outputs are stored (the hot-reload figure rewrites a manifest).
pub struct MidRun<'a> {
    /// Outputs stored before it runs.
    pub after: u64,
    /// What to do; returns when it did it.
    pub action: Box<dyn FnOnce() -> anyhow::Result<()> + 'a>,
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Throughput phase: messages per second.
    pub msgs_per_s: f64,
    /// Throughput phase: CPU seconds per 10,000 messages.
    pub cpu_per_10k: f64,
    /// Throughput phase: nats-server CPU seconds per 10,000 messages.
    pub server_cpu_per_10k: f64,
    /// Peak RSS of the contender process, bytes.
    pub peak_rss: u64,
    /// Throughput phase: longest gap between consecutive stored outputs, ms.
    pub longest_gap_ms: f64,
    /// Latency phase: end-to-end latency of every message, ms.
    pub latencies_ms: Vec<f64>,
    /// When the mid-run action ran (Unix ns), if any.
    pub mid_run_at_ns: Option<i128>,
    /// The throughput phase's outputs (stored time, marker header), for the hot-reload figure.
    pub outputs: Vec<(i128, Option<String>)>,
}

/// Runs the job once; `dir` is a scratch folder (logs, plugins).
pub async fn run(
    client: &async_nats::Client,
    server_pid: u32,
    command: Command,
    what: &str,
    shape: Shape,
    dir: &Path,
    mid_run: Option<MidRun<'_>>,
) -> anyhow::Result<RunResult> {
    let js = jetstream::new(client.clone());
    job::prepare(&js, true).await?;
    // All but the last input: the last one is published right after the resume, because a
    // resumed consumer does not hand stored messages to the pull requests that waited while it
    // was paused; a new message wakes them (otherwise they wait for their expiry).
    job::publish_inputs(&js, 0, shape.messages - 1, shape.size).await?;
    let log = dir.join("contender.log");
    let result = measured(&js, client, server_pid, command, what, shape, &log, mid_run).await;
    job::clean(&js).await;
    result.with_context(|| {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = tail
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!("{what} failed; its log ends with:\n{tail}")
    })
}

#[allow(clippy::too_many_arguments)]
async fn measured(
    js: &jetstream::Context,
    client: &async_nats::Client,
    server_pid: u32,
    command: Command,
    what: &str,
    shape: Shape,
    log: &Path,
    mid_run: Option<MidRun<'_>>,
) -> anyhow::Result<RunResult> {
    let mut contender = Contender::spawn(command, what, log)?;
    job::wait_pulling(js, Duration::from_secs(60)).await?;
    contender.check_alive()?;
    let cpu_before = contender.cpu()?;
    let server_cpu_before = crate::process::cpu_time(server_pid)?;
    let resumed = job::resume(client).await?;
    job::publish_inputs(js, shape.messages - 1, 1, shape.size).await?;
    let timeout = Duration::from_secs(60).max(Duration::from_secs(shape.messages / 200));
    let mut mid_run_at = None;
    if let Some(mid) = mid_run {
        job::wait_outputs(js, mid.after, timeout, || contender.check_alive()).await?;
        mid_run_at = Some(job::unix_ns(SystemTime::now()));
        (mid.action)()?;
    }
    job::wait_outputs(js, shape.messages, timeout, || contender.check_alive()).await?;
    let cpu = contender.cpu()? - cpu_before;
    let server_cpu = crate::process::cpu_time(server_pid)? - server_cpu_before;
    if shape.latency_messages > 0 {
        job::publish_paced(
            js,
            shape.messages,
            shape.latency_messages,
            shape.size,
            shape.latency_rate,
        )
        .await?;
        let total = shape.messages + shape.latency_messages;
        job::wait_outputs(js, total, timeout, || contender.check_alive()).await?;
    }
    let total = shape.messages + shape.latency_messages;
    wait_acked(js, total).await?;
    let peak_rss = contender.peak_rss()?;
    contender.stop();

    let inputs = job::read_stream(js, job::IN_STREAM, true).await?;
    let outputs = job::read_stream(js, job::OUT_STREAM, false).await?;
    let by_input = check(&inputs, &outputs, shape.size, total)?;
    let mut result = RunResult {
        cpu_per_10k: cpu.as_secs_f64() / shape.messages as f64 * 10_000.0,
        server_cpu_per_10k: server_cpu.as_secs_f64() / shape.messages as f64 * 10_000.0,
        peak_rss,
        mid_run_at_ns: mid_run_at,
        ..Default::default()
    };
    let resumed = job::unix_ns(resumed);
    let phase1: Vec<&Stored> = by_input[..shape.messages as usize].to_vec();
    let last = phase1.iter().map(|o| o.stored_ns).max().unwrap_or(resumed);
    result.msgs_per_s = shape.messages as f64 / ((last - resumed) as f64 / 1e9);
    let times: Vec<i128> = phase1.iter().map(|o| o.stored_ns).collect();
    result.longest_gap_ms = stats::longest_gap(&times) as f64 / 1e6;
    result.outputs = phase1
        .iter()
        .map(|o| (o.stored_ns, o.marker.clone()))
        .collect();
    result.latencies_ms = (shape.messages as usize..total as usize)
        .map(|i| (by_input[i].stored_ns - inputs[i].stored_ns) as f64 / 1e6)
        .collect();
    Ok(result)
}

/// Waits until the consumer's ack floor covers every input (all of them acked).
async fn wait_acked(js: &jetstream::Context, total: u64) -> anyhow::Result<()> {
    let stream = js.get_stream(job::IN_STREAM).await?;
    for _ in 0..500 {
        let info = stream.consumer_info(job::DURABLE).await?;
        if info.ack_floor.stream_sequence >= total {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("not every input was acked within 10 s")
}

/// Checks that every input has exactly one output with its payload upper-cased; returns the
/// outputs indexed by input (index = input sequence - 1).
fn check<'a>(
    inputs: &[Stored],
    outputs: &'a [Stored],
    size: usize,
    total: u64,
) -> anyhow::Result<Vec<&'a Stored>> {
    anyhow::ensure!(
        inputs.len() as u64 == total,
        "{} inputs stored, expected {total}",
        inputs.len()
    );
    anyhow::ensure!(
        outputs.len() as u64 == total,
        "{} outputs stored for {total} inputs (duplicates or losses)",
        outputs.len()
    );
    for (i, input) in inputs.iter().enumerate() {
        anyhow::ensure!(
            input.seq == i as u64 + 1,
            "input stream sequences are not 1.."
        );
    }
    let mut by_input: Vec<Option<&Stored>> = vec![None; inputs.len()];
    for output in outputs {
        let id = output
            .msg_id
            .as_deref()
            .context("an output without Nats-Msg-Id")?;
        let seq = job::input_seq(id).with_context(|| format!("bad output id {id:?}"))?;
        let slot = by_input
            .get_mut((seq as usize).wrapping_sub(1))
            .with_context(|| format!("output id {id:?} names no input"))?;
        anyhow::ensure!(slot.is_none(), "two outputs for input {seq}");
        let expected = job::payload(size, seq - 1).to_ascii_uppercase();
        anyhow::ensure!(
            output.payload == expected,
            "the output of input {seq} is not its payload upper-cased"
        );
        *slot = Some(output);
    }
    by_input
        .into_iter()
        .enumerate()
        .map(|(i, o)| o.with_context(|| format!("input {} has no output", i + 1)))
        .collect()
}
