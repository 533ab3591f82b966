//! `counter`: answers with how many messages this instance has handled, to `counter.out`. With a
//! fresh instance per message the answer is always 1: no state leaks from one message to the next.
use std::sync::atomic::{AtomicU64, Ordering};

use natsplug_sdk::{Message, Output, handler};

static CALLS: AtomicU64 = AtomicU64::new(0);

handler!(handle);

fn handle(_msg: Message) -> natsplug_sdk::Result {
    let n = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
    Ok(vec![Output::to("counter.out").payload(n.to_string())])
}
