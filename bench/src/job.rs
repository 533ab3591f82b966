//! The job every contender runs, and the runner's side of it: the streams, the durable consumer,
//! the inputs, and reading the stored messages back to measure what happened.
//!
//! The job: a durable JetStream pull consumer (`bench` on `BENCH_IN`, subject `bench.in`) hands
//! out a message; the contender upper-cases its payload, publishes it to `bench.out` (stream
//! `BENCH_OUT`) with `Nats-Msg-Id = PREFIX:BENCH_IN:SEQ:0`, awaits the publish ack, then acks the
//! input. Every contender uses that id format, so an output names its input's stream sequence.
//!
//! Figures come from the server's own clock: every stored message carries the time the stream
//! stored it (the JetStream timestamp in its ack subject), read back after the run.

use std::future::IntoFuture as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;

/// The input stream.
pub const IN_STREAM: &str = "BENCH_IN";
/// The input subject.
pub const IN_SUBJECT: &str = "bench.in";
/// The output stream.
pub const OUT_STREAM: &str = "BENCH_OUT";
/// The output subject.
pub const OUT_SUBJECT: &str = "bench.out";
/// Where natsplug's dead letters are stored: a plugin is not served until a stream stores them.
pub const DEAD_STREAM: &str = "BENCH_DEAD";
/// The durable pull consumer every contender binds to.
pub const DURABLE: &str = "bench";
/// The core subject of the request-reply figure.
pub const RR_SUBJECT: &str = "bench.rr";
/// The consumer's ack wait.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// The `Nats-Msg-Id` of the output of input `seq`, for a contender whose ids start with `prefix`.
pub fn msg_id(prefix: &str, seq: u64) -> String {
    format!("{prefix}:{IN_STREAM}:{seq}:0")
}

/// The input stream sequence an output id names (the field before the output index).
pub fn input_seq(msg_id: &str) -> Option<u64> {
    let mut fields = msg_id.rsplit(':');
    fields.next()?;
    fields.next()?.parse().ok()
}

/// Input number `i` (stream sequence `i + 1`): `size` bytes of lower-case ASCII that start with
/// the number, so every input differs.
pub fn payload(size: usize, i: u64) -> Bytes {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut p = format!("{i:010} ").into_bytes();
    let mut k = 0;
    while p.len() < size {
        p.push(LETTERS[k % LETTERS.len()]);
        k += 1;
    }
    p.truncate(size);
    Bytes::from(p)
}

/// Deletes and recreates the streams (input, output, dead letters) and the durable consumer, the consumer paused when
/// `paused` (a backlog can then be stored before anyone gets a message of it).
pub async fn prepare(js: &jetstream::Context, paused: bool) -> anyhow::Result<()> {
    for name in [IN_STREAM, OUT_STREAM, DEAD_STREAM] {
        let _ = js.delete_stream(name).await;
    }
    dead_letter_stream(js).await?;
    let input = js
        .create_stream(stream::Config {
            name: IN_STREAM.into(),
            subjects: vec![IN_SUBJECT.into()],
            ..Default::default()
        })
        .await
        .context("cannot create the input stream")?;
    js.create_stream(stream::Config {
        name: OUT_STREAM.into(),
        subjects: vec![OUT_SUBJECT.into()],
        ..Default::default()
    })
    .await
    .context("cannot create the output stream")?;
    let pause_until = paused.then(|| time::OffsetDateTime::now_utc() + time::Duration::hours(1));
    input
        .create_consumer(consumer::pull::Config {
            durable_name: Some(DURABLE.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: 5,
            filter_subject: IN_SUBJECT.into(),
            pause_until,
            ..Default::default()
        })
        .await
        .context("cannot create the durable consumer")?;
    Ok(())
}

/// Creates the stream for natsplug's dead letters (for the request-reply responder, which runs
/// after the job's streams are cleaned).
pub async fn dead_letter_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    js.get_or_create_stream(stream::Config {
        name: DEAD_STREAM.into(),
        subjects: vec!["natsplug.dead.>".into()],
        ..Default::default()
    })
    .await
    .context("cannot create the dead-letter stream")?;
    Ok(())
}

/// Deletes the streams.
pub async fn clean(js: &jetstream::Context) {
    for name in [IN_STREAM, OUT_STREAM, DEAD_STREAM] {
        let _ = js.delete_stream(name).await;
    }
}

/// Publishes inputs `first..first + count` of `size` bytes with pipelined publish acks.
pub async fn publish_inputs(
    js: &jetstream::Context,
    first: u64,
    count: u64,
    size: usize,
) -> anyhow::Result<()> {
    let mut i = first;
    while i < first + count {
        let end = (i + 1000).min(first + count);
        let mut acks = Vec::with_capacity((end - i) as usize);
        for k in i..end {
            acks.push(js.publish(IN_SUBJECT, payload(size, k)).await?);
        }
        for ack in acks {
            ack.await.context("input not stored")?;
        }
        i = end;
    }
    Ok(())
}

/// Publishes inputs `first..first + count` at `rate` per second (one every 1/rate s), each
/// publish ack awaited off the pacing loop.
pub async fn publish_paced(
    js: &jetstream::Context,
    first: u64,
    count: u64,
    size: usize,
    rate: f64,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut next = first;
    while next < first + count || !acks.is_empty() {
        tokio::select! {
            _ = tick.tick(), if next < first + count => {
                acks.push(js.publish(IN_SUBJECT, payload(size, next)).await?.into_future());
                next += 1;
            }
            Some(ack) = acks.next(), if !acks.is_empty() => {
                ack.context("input not stored")?;
            }
        }
    }
    Ok(())
}

/// Waits until the consumer has a pull request waiting (the contender is ready to take work).
pub async fn wait_pulling(js: &jetstream::Context, timeout: Duration) -> anyhow::Result<()> {
    let stream = js.get_stream(IN_STREAM).await?;
    let started = Instant::now();
    loop {
        let info = stream.consumer_info(DURABLE).await?;
        if info.num_waiting > 0 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "no pull request on the consumer after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resumes the paused consumer; returns when the server answered, with the time it was asked.
pub async fn resume(client: &async_nats::Client) -> anyhow::Result<SystemTime> {
    let asked = SystemTime::now();
    let answer = client
        .request(
            format!("$JS.API.CONSUMER.PAUSE.{IN_STREAM}.{DURABLE}"),
            Bytes::from_static(b"{}"),
        )
        .await
        .context("cannot resume the consumer")?;
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload)?;
    anyhow::ensure!(
        answer.get("paused") == Some(&serde_json::Value::Bool(false)),
        "the consumer was not resumed: {answer}"
    );
    Ok(asked)
}

/// How many messages a stream holds.
pub async fn count(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(name).await?.info().await?.state.messages)
}

/// Waits until the output stream holds `target` messages; checks `alive` between polls.
pub async fn wait_outputs(
    js: &jetstream::Context,
    target: u64,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stream = js.get_stream(OUT_STREAM).await?;
    let started = Instant::now();
    loop {
        let stored = stream.info().await?.state.messages;
        if stored >= target {
            return Ok(());
        }
        alive()?;
        anyhow::ensure!(
            started.elapsed() < timeout,
            "only {stored} of {target} outputs after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One stored message, as read back.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its stream sequence.
    pub seq: u64,
    /// When the stream stored it, Unix nanoseconds (server clock).
    pub stored_ns: i128,
    /// Its `Nats-Msg-Id`, if any.
    pub msg_id: Option<String>,
    /// Its `marker` header, if any (the hot-reload figure).
    pub marker: Option<String>,
    /// Its payload (empty when read headers-only).
    pub payload: Bytes,
}

/// Every message of a stream, in order; `headers_only` skips the payloads.
pub async fn read_stream(
    js: &jetstream::Context,
    name: &str,
    headers_only: bool,
) -> anyhow::Result<Vec<Stored>> {
    let stream = js.get_stream(name).await?;
    let total = count(js, name).await? as usize;
    let reader = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            headers_only,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("cannot create a reader consumer")?;
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = reader
            .batch()
            .max_messages((total - out.len()).min(10_000))
            .expires(Duration::from_secs(2))
            .messages()
            .await?;
        let before = out.len();
        while let Some(Ok(m)) = batch.next().await {
            let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let header = |key: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(key))
                    .map(|v| v.as_str().to_owned())
            };
            out.push(Stored {
                seq: info.stream_sequence,
                stored_ns: info.published.unix_timestamp_nanos(),
                msg_id: header("Nats-Msg-Id"),
                marker: header("marker"),
                payload: m.payload.clone(),
            });
        }
        anyhow::ensure!(out.len() > before, "stream {name} stopped giving messages");
    }
    Ok(out)
}

/// Nanoseconds since the Unix epoch of a local time.
pub fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
