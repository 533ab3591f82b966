//! Fault injection for the host's own tests: makes the handling path panic for messages on
//! chosen subjects, as a host bug would, to show that such a message still ends stored. Only
//! Rust code linked with the host can arm it; nothing on the wire can.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::message::Message;

static PANIC_ON: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Whether anything was armed: the one load every message pays when nothing is.
static ARMED: AtomicBool = AtomicBool::new(false);

/// From now on, handling a message on `subject` panics after its handler has run.
pub fn panic_on(subject: &str) {
    PANIC_ON
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(subject.to_owned());
    ARMED.store(true, Ordering::Release);
}

/// Panics if `input`'s subject was armed with [`panic_on`].
pub fn check(input: &Message) {
    if !ARMED.load(Ordering::Acquire) {
        return;
    }
    let armed = PANIC_ON.lock().unwrap_or_else(|e| e.into_inner());
    if armed.contains(&input.subject) {
        drop(armed);
        panic!("injected fault on {}", input.subject);
    }
}
