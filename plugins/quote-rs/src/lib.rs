//! `quote-rs`: asks the pricing service (config `service`, default `pricing.quote`) for a quote of
//! the payload and publishes the answer to `quote.out`, with `quoted-by: rust` and the
//! service's `priced-by` header. No answer in time, or no service: retried after 100 ms. A
//! subject the manifest does not grant: rejected.
use std::time::Duration;

use natsplug_sdk::request::{Request, RequestError};
use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let service = config("service").unwrap_or_else(|| "pricing.quote".into());
    let mut request = Request::to(service)
        .header("quote-for", msg.subject.clone())
        .payload(msg.payload);
    if let Some(ms) = config("timeout_ms") {
        let ms: u64 = ms.parse().map_err(|_| {
            Error::reject(format!(
                "config timeout_ms is not a number of milliseconds: {ms:?}"
            ))
        })?;
        request = request.timeout(Duration::from_millis(ms));
    }
    let reply = request.send().map_err(|e| match e {
        RequestError::Timeout | RequestError::NoResponders => {
            Error::retry_after(e, Duration::from_millis(100))
        }
        RequestError::Denied(_) => Error::reject(e),
        RequestError::Failed(_) => Error::retry(e),
    })?;
    let mut out = Output::to("quote.out").header("quoted-by", "rust");
    if let Some(by) = reply.headers.get("priced-by") {
        out = out.header("priced-by", by);
    }
    Ok(vec![out.payload(reply.payload)])
}
