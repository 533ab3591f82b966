//! `slow`: sleeps as many seconds as the payload says (a decimal number), then answers with
//! `slept SECONDS` to the `output` config subject (default `slow.done`), or to the request's reply.
//! The long-handler case of the NATS timeout problem: the host must keep the message alive.
use std::time::Duration;

use natsplug_sdk::{Error, Message, Output, config, handler, log};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let text = msg.payload_str().map_err(Error::reject)?.trim().to_owned();
    let secs: f64 = text
        .parse()
        .map_err(|e| Error::reject(format!("payload {text:?} is not a number of seconds: {e}")))?;
    log::info(&format!("sleeping {secs} s"));
    std::thread::sleep(Duration::from_secs_f64(secs.max(0.0)));
    let out = match (config("output"), msg.reply.is_some()) {
        (None, true) => Output::reply(),
        (subject, _) => Output::to(subject.unwrap_or_else(|| "slow.done".into())),
    };
    Ok(vec![out.payload(format!("slept {text}"))])
}
