//! `tally`: counts each key (the payload) in a NATS KV bucket, once per input even when an
//! input runs twice: it reads the key's count and revision, and writes count + 1 only if the
//! key is still at that revision. When another writer got there first, the input is retried
//! and counted on its next delivery. Each count goes to `tally.out` with `key` and `revision`
//! headers.
//!
//! A `tally-rival: N` header on a first delivery sets the key to N between the read and the
//! write, as a rival writer would: the tests' way to a compare-and-swap conflict.
use std::time::Duration;

use natsplug_sdk::kv::{Bucket, CasError, KvError};
use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let bucket = Bucket::open(&config("bucket").unwrap_or_else(|| "tally".into()))?;
    let key = msg.payload_str().map_err(Error::reject)?;
    let (count, revision) = match bucket.entry(key)? {
        None => (0, 0),
        Some(entry) => {
            let text = String::from_utf8_lossy(&entry.value);
            let count: u64 = text.parse().map_err(|_| {
                Error::reject(format!("the value of {key} is not a count: {text:?}"))
            })?;
            (count, entry.revision)
        }
    };
    if let Some(rival) = msg.header("tally-rival")
        && msg.delivered() == 1
    {
        bucket.set(key, rival)?;
    }
    let count = count + 1;
    match bucket.compare_and_swap(key, count.to_string(), revision) {
        Ok(revision) => Ok(vec![
            Output::to("tally.out")
                .header("key", key)
                .header("revision", revision.to_string())
                .payload(count.to_string()),
        ]),
        Err(CasError::Conflict) => Err(Error::retry_after(
            format!("conflict on {key}"),
            Duration::from_millis(10),
        )),
        Err(CasError::Store(e @ (KvError::AccessDenied | KvError::NoSuchStore))) => {
            Err(Error::reject(e))
        }
        Err(CasError::Store(e)) => Err(Error::retry(e)),
    }
}
