//! `uppercase`: one output, the payload upper-cased, published to the subject named by the
//! `output` config value (default: the input subject with `.upper` appended). Input headers are
//! carried over.
use natsplug_sdk::{Error, Message, Output, config, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let text = msg.payload_str().map_err(Error::reject)?;
    let subject = config("output").unwrap_or_else(|| format!("{}.upper", msg.subject));
    let mut out = Output::to(subject).payload(text.to_uppercase());
    out.headers = msg.headers.clone();
    if let Some(marker) = config("marker") {
        out.headers.insert("marker", marker);
    }
    Ok(vec![out])
}
