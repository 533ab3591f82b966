//! `fanout`: one output per subject in the comma-separated `subjects` config value, each with the
//! input payload and a `fanout-index` header. If the input has a `publish-to` header, it also
//! publishes an extra output there through the host's `publish`, and rejects the message when the
//! host refuses that subject.
use natsplug_sdk::{Error, Message, Output, config, handler, publish};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let subjects = config("subjects").unwrap_or_else(|| "fanout.a,fanout.b,fanout.c".into());
    if let Some(extra) = msg.header("publish-to") {
        publish(Output::to(extra).payload(msg.payload.clone())).map_err(Error::reject)?;
    }
    Ok(subjects
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            Output::to(s)
                .payload(msg.payload.clone())
                .header("fanout-index", i.to_string())
        })
        .collect())
}
