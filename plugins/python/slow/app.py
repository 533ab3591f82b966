"""`slow`: sleeps as many seconds as the payload says (a decimal number), then answers with
`slept SECONDS` to the `output` config subject (default `slow.done`), or to the request's reply.
The long-handler case of the NATS timeout problem: the host must keep the message alive.

The Python twin of plugins/slow: same config keys, same answers, byte for byte (numbers are
parsed and printed with Rust's rules through `natsplug.rust`).
"""
from natsplug import Message, Output, Reject, config, handler, log, rust


@handler
def handle(msg: Message) -> list[Output]:
    text = rust.trim(msg.text())
    try:
        secs = rust.parse_f64(text)
    except rust.ParseFloatError as e:
        raise Reject(f"payload {rust.debug_str(text)} is not a number of seconds: {e}") from None
    log.info(f"sleeping {rust.display_f64(secs)} s")
    rust.sleep(secs if secs > 0 else 0.0)  # Rust's secs.max(0.0): a NaN sleeps 0 s
    payload = f"slept {text}"
    subject = config("output")
    if subject is None and msg.reply is not None:
        return [Output.reply(payload)]
    return [Output.to(subject if subject is not None else "slow.done", payload)]
