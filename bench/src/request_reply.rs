//! Request-reply latency through a core NATS subject: the contender's responder answers requests
//! on `bench.rr` (natsplug: the `slow` plugin, payload `0`, replying with `Output::reply()`).
//! The runner sends `requests` requests one at a time and times each round trip on its own
//! clock, after a warm-up of 200.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::contenders::{self, Kind};
use crate::job;
use crate::process::Contender;

/// Round-trip times of `requests` sequential requests, ms.
pub async fn run(
    client: &async_nats::Client,
    kind: Kind,
    url: &str,
    requests: usize,
    dir: &Path,
) -> anyhow::Result<Vec<f64>> {
    if kind == Kind::Natsplug {
        // natsplug serves a plugin once a stream stores its dead letters.
        job::dead_letter_stream(&async_nats::jetstream::new(client.clone())).await?;
    }
    let command = contenders::responder_command(kind, url, dir)?;
    let mut responder = Contender::spawn(
        command,
        &format!("{kind:?} responder"),
        &dir.join("responder.log"),
    )?;
    // Wait until it answers.
    let started = Instant::now();
    loop {
        responder.check_alive()?;
        let answer = tokio::time::timeout(
            Duration::from_millis(500),
            client.request(job::RR_SUBJECT, Bytes::from_static(b"0")),
        )
        .await;
        if let Ok(Ok(_)) = answer {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the {kind:?} responder never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times = Vec::with_capacity(requests);
    for i in 0..requests + 200 {
        let sent = Instant::now();
        let reply = client
            .request(job::RR_SUBJECT, Bytes::from_static(b"0"))
            .await?;
        let took = sent.elapsed();
        anyhow::ensure!(
            reply.payload.as_ref() == b"slept 0",
            "unexpected reply {:?}",
            reply.payload
        );
        if i >= 200 {
            times.push(took.as_secs_f64() * 1e3);
        }
    }
    responder.stop();
    Ok(times)
}
