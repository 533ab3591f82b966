"""`tally`: counts how often each key was seen, in a NATS KV bucket, exactly once per input. The
key is the payload; the count goes to `tally.out` with `key` and `revision` headers.

The update is a compare-and-swap on the revision read, so a retry or a redelivery never counts
an input twice: a writer that got there first makes it a `Conflict`, answered with a retry
(10 ms). A first delivery with a `tally-rival` header writes that value itself, between the read
and the swap, to get that conflict on purpose (the tests do). A bucket the manifest does not
grant is a reject; any other store failure a retry.

The Python twin of plugins/tally: same config keys, same answers. Config: `bucket` (default
`tally`).
"""
from natsplug import Message, Output, Reject, Retry, config, handler, kv


def _count(key: str, entry: kv.Entry | None) -> int:
    """The count after this input: the stored one (a decimal number) plus 1, or 1."""
    if entry is None:
        return 1
    text = entry.value.decode("utf-8", errors="replace")
    if not (text.isascii() and text.isdecimal()):
        raise Reject(f"the value of {key} is not a count: {text}")
    return int(text) + 1


@handler
def handle(msg: Message) -> list[Output]:
    key = msg.text()
    try:
        with kv.open(config("bucket", "tally")) as bucket:
            entry = bucket.entry(key)
            count = _count(key, entry)
            rival = msg.header("tally-rival")
            if rival is not None and msg.delivery is not None and msg.delivery.delivered == 1:
                bucket.set(key, rival)  # another writer, between our read and our write
            revision = bucket.compare_and_swap(key, str(count), entry.revision if entry else 0)
    except kv.Conflict:
        raise Retry(f"conflict on {key}", delay_ms=10) from None
    except (kv.AccessDenied, kv.NoSuchStore) as e:
        raise Reject(str(e)) from None
    except kv.KvError as e:
        raise Retry(str(e)) from None
    return [Output.to("tally.out", str(count), headers=[("key", key), ("revision", str(revision))])]
