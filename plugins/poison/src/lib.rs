//! `poison`: rejects every message, so it goes to the dead-letter subject.
use natsplug_sdk::{Error, Message, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    Err(Error::reject(format!(
        "poison message on {}: {}",
        msg.subject,
        String::from_utf8_lossy(&msg.payload)
    )))
}
