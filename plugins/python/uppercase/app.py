"""`uppercase`: one output, the payload upper-cased, published to the subject named by the
`output` config value (default: the input subject with `.upper` appended). Input headers are
carried over; a `marker` config value is set as the `marker` header.

The Python twin of plugins/uppercase: same config keys, same answers, byte for byte
(`rust.to_uppercase` is `str.upper()` with Rust's Unicode 17 tables; see natsplug/rust.py).
"""
from natsplug import Message, Output, config, handler, rust


@handler
def handle(msg: Message) -> list[Output]:
    text = msg.text()  # invalid UTF-8: Reject, with the Rust SDK's reason
    subject = config("output", f"{msg.subject}.upper")
    out = Output.to(subject, rust.to_uppercase(text), headers=msg.headers)
    marker = config("marker")
    if marker is not None:
        out.headers.insert("marker", marker)
    return [out]
