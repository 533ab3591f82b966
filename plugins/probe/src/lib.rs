//! `probe`: reports what the sandbox lets it see, for the sandbox tests. The payload picks the
//! probe: `env` lists the environment, `read:PATH` reads a file, `reply` answers with a reply.
use natsplug_sdk::{Message, Output, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let request = String::from_utf8_lossy(&msg.payload).into_owned();
    let answer = if request == "env" {
        let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
        format!("env:[{}]", vars.join(","))
    } else if let Some(path) = request.strip_prefix("read:") {
        match std::fs::read_to_string(path) {
            Ok(text) => format!("read:{text}"),
            Err(e) => format!("error:{:?}", e.kind()),
        }
    } else if request == "reply" {
        return Ok(vec![Output::reply().payload("pong")]);
    } else {
        format!("unknown probe {request:?}")
    };
    Ok(vec![Output::to("probe.out").payload(answer)])
}
