//! **native**: the floor. A hand-written async-nats consumer doing exactly the job, tuned:
//! - one connection consumes, another publishes (as natsplug does);
//! - the pull is a continuous `stream()` with prefetch (`max_messages_per_batch` = `batch`);
//! - publishes are pipelined: each message's output is sent as soon as it is upper-cased, and its
//!   publish-ack future joins a bounded in-flight set (`window`); when an ack comes back, the input
//!   is acked (a plain `+ACK`, or with `--double-ack` an ack the server confirms, as natsplug does).
//!
//! It runs in its own process (`natsplug-bench native-worker ...`), like every contender, so its
//! CPU time and peak RSS are measured the same way.

use std::process::Command;

use anyhow::Context as _;
use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

use crate::job;

/// Settings of the native contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Native {
    /// Confirm every input ack with the server (`double_ack`), as natsplug does.
    pub double_ack: bool,
    /// Messages pulled per pull request.
    pub batch: usize,
    /// Most outputs awaiting their publish ack at once.
    pub window: usize,
}

impl Native {
    /// The tuned floor: plain acks, 256 per pull, 512 in flight.
    pub const TUNED: Self = Self {
        double_ack: false,
        batch: 256,
        window: 512,
    };

    /// The row name.
    pub fn label(&self) -> String {
        if self.double_ack {
            "native (double ack)".into()
        } else {
            "native".into()
        }
    }

    /// The command that runs the job against `url`.
    pub fn job_command(&self, url: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args([
            "native-worker",
            "--server",
            url,
            "--batch",
            &self.batch.to_string(),
            "--window",
            &self.window.to_string(),
        ]);
        if self.double_ack {
            command.arg("--double-ack");
        }
        Ok(command)
    }

    /// The command that answers requests on [`job::RR_SUBJECT`].
    pub fn responder_command(url: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["native-responder", "--server", url]);
        Ok(command)
    }
}

/// The worker process: runs the job until SIGTERM.
pub async fn worker(url: &str, settings: Native) -> anyhow::Result<()> {
    let consuming = async_nats::connect(url).await?;
    let publishing = async_nats::connect(url).await?;
    let out = jetstream::new(publishing);
    let consumer: jetstream::consumer::PullConsumer = jetstream::new(consuming)
        .get_stream(job::IN_STREAM)
        .await?
        .get_consumer(job::DURABLE)
        .await
        .map_err(|e| anyhow::anyhow!("the runner creates the durable consumer: {e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch)
        .messages()
        .await?;
    let mut in_flight = FuturesUnordered::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = done {
                    eprintln!("native: {e}");
                }
            }
            message = messages.next(), if in_flight.len() < settings.window => {
                let message = match message {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        eprintln!("native: pull: {e}");
                        continue;
                    }
                    None => break,
                };
                let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                let (message, acker) = message.split();
                let upper = std::str::from_utf8(&message.payload)
                    .context("payload is not UTF-8")?
                    .to_uppercase();
                let publish = PublishMessage::build()
                    .payload(Bytes::from(upper))
                    .message_id(job::msg_id("native", seq));
                let ack = out.send_publish(job::OUT_SUBJECT, publish).await?;
                let double_ack = settings.double_ack;
                in_flight.push(async move {
                    match ack.await {
                        Ok(_) if double_ack => acker.double_ack().await.map_err(|e| anyhow::anyhow!("ack: {e}")),
                        Ok(_) => acker.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}")),
                        // Not stored: leave the input to its ack_wait (it is redelivered).
                        Err(e) if e.kind() == PublishErrorKind::StreamNotFound => Err(anyhow::anyhow!("no output stream")),
                        Err(e) => Err(anyhow::anyhow!("publish: {e}")),
                    }
                });
            }
        }
    }
    Ok(())
}

/// The responder process: answers every request on [`job::RR_SUBJECT`] with `slept 0`, as the
/// natsplug `slow` plugin does for the payload `0`.
pub async fn responder(url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let mut requests = client.subscribe(job::RR_SUBJECT).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            request = requests.next() => {
                let Some(request) = request else { break };
                if let Some(reply) = request.reply {
                    client.publish(reply, Bytes::from_static(b"slept 0")).await?;
                }
            }
        }
    }
    Ok(())
}
