//! `panic`: panics on every message. The host must report the trap and carry on.
use natsplug_sdk::{Message, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    panic!("boom on {}", msg.subject);
}
