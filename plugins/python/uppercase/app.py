"""`uppercase`: one output, the payload upper-cased with `str.upper()`, published to the subject
named by the `output` config value (default: the input subject with `.upper` appended). Input
headers are carried over; a `marker` config value is set as the `marker` header. A payload that
is not UTF-8 is rejected.

The Python twin of plugins/uppercase: the same config keys and outputs. Upper-casing is
Python's own (its Unicode version's tables and full case mapping, "straße" -> "STRASSE"), so on
letters newer than one of the three languages' Unicode tables the twins may differ.
"""
from natsplug import Message, Output, config, handler


@handler
def handle(msg: Message) -> list[Output]:
    text = msg.text()  # invalid UTF-8: Reject
    subject = config("output", f"{msg.subject}.upper")
    out = Output.to(subject, text.upper(), headers=msg.headers)
    marker = config("marker")
    if marker is not None:
        out.headers.insert("marker", marker)
    return [out]
