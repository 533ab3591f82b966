//! `pricing`: a service plugin. It answers each request with `ITEM=PRICE`, the price being 100
//! per byte of the item, and a `priced-by: pricing` header; a message without a reply subject
//! is rejected.
use natsplug_sdk::{Error, Message, Output, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    if msg.reply.is_none() {
        return Err(Error::reject("pricing answers requests only"));
    }
    let item = msg.payload_str().map_err(Error::reject)?;
    let price = item.len() * 100;
    Ok(vec![
        Output::reply()
            .header("priced-by", "pricing")
            .payload(format!("{item}={price}")),
    ])
}
