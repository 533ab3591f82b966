"""`slow`: sleeps as many seconds as the payload says (a number, as `float()` reads it, spaces
around it stripped), then answers with `slept SECONDS` to the `output` config subject (default
`slow.done`), or to the request's reply. A negative number sleeps 0 s; a payload that is not a
finite number (or not UTF-8) is rejected. The long-handler case of the NATS timeout problem: the
host must keep the message alive.

The Python twin of plugins/slow: the same config keys and outputs; its reject reasons and log
line are worded the Python way.
"""
import math
import time

from natsplug import Message, Output, Reject, config, handler, log


@handler
def handle(msg: Message) -> list[Output]:
    text = msg.text().strip()
    try:
        secs = float(text)
    except ValueError:
        raise Reject(f"payload {text!r} is not a number of seconds") from None
    if not math.isfinite(secs):
        raise Reject(f"payload {text!r} is not a number of seconds")
    log.info(f"sleeping {secs} s")
    time.sleep(max(secs, 0.0))
    payload = f"slept {text}"
    subject = config("output")
    if subject is None and msg.reply is not None:
        return [Output.reply(payload)]
    return [Output.to(subject if subject is not None else "slow.done", payload)]
