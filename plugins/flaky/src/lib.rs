//! `flaky`: asks for a retry until the delivery count reaches `succeed-at` (config, default 3),
//! then answers `ok after N` to the `output` config subject (default `flaky.done`). With
//! `retry-delay-ms` set it names its own delay; otherwise the plugin's backoff schedule applies.
use std::time::Duration;

use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let succeed_at: u64 = config("succeed-at")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let delivered = msg.delivered();
    if delivered < succeed_at {
        let reason = format!("attempt {delivered} of {succeed_at}");
        return Err(
            match config("retry-delay-ms").and_then(|v| v.parse().ok()) {
                Some(ms) => Error::retry_after(reason, Duration::from_millis(ms)),
                None => Error::retry(reason),
            },
        );
    }
    let subject = config("output").unwrap_or_else(|| "flaky.done".into());
    Ok(vec![
        Output::to(subject).payload(format!("ok after {delivered}")),
    ])
}
