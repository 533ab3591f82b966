//! `fetch`: GETs the payload's path from the origin in config `origin` and publishes the body
//! to `fetch.out`, with the response's status in an `http-status` header. A status of 500 or
//! more, or no answer in time, is retried; an origin the manifest does not allow, or a body
//! over its limit, is rejected.
use natsplug_sdk::http::{self, HttpError};
use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let origin = config("origin").ok_or_else(|| Error::reject("config origin is not set"))?;
    let path = msg.payload_str().map_err(Error::reject)?;
    let response =
        http::get(&format!("{origin}/{}", path.trim_start_matches('/'))).map_err(|e| match e {
            HttpError::Denied | HttpError::TooLarge | HttpError::InvalidUrl(_) => Error::reject(e),
            _ => Error::retry(e),
        })?;
    if response.status >= 500 {
        return Err(Error::retry(format!(
            "the server answered {}",
            response.status
        )));
    }
    Ok(vec![
        Output::to("fetch.out")
            .header("http-status", response.status.to_string())
            .payload(response.body),
    ])
}
