//! `batch`: a batch handler. Each message's payload says what becomes of it: `retry` is retried
//! after 50 ms, `reject` is dead-lettered, `crash` panics (failing its whole call: the host then
//! runs each message of that call alone), anything else is upper-cased to `batch.out` with a
//! `batch-size` header: how many messages its call had.
use std::time::Duration;

use natsplug_sdk::{Error, Message, Output, batch_handler};

batch_handler!(handle);

fn handle(msgs: Vec<Message>) -> Vec<natsplug_sdk::Result> {
    let size = msgs.len().to_string();
    msgs.into_iter()
        .map(|msg| match msg.payload.as_slice() {
            b"retry" => Err(Error::retry_after("asked to", Duration::from_millis(50))),
            b"reject" => Err(Error::reject("asked to")),
            b"crash" => panic!("asked to crash"),
            payload => Ok(vec![
                Output::to("batch.out")
                    .payload(payload.to_ascii_uppercase())
                    .header("batch-size", &size),
            ]),
        })
        .collect()
}
