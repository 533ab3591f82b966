"""`batch`: a batch handler, the Python twin of plugins/batch. Each message's payload says what
becomes of it: `retry` is retried after 50 ms, `reject` is dead-lettered, `crash` raises (failing
its whole call: the host then runs each message of that call alone), anything else is
upper-cased to `batch.out` with a `batch-size` header: how many messages its call had.
"""
from natsplug import Message, Output, Reject, Retry, handler


@handler(batch=True)
def handle(msgs: list[Message]) -> list:
    size = str(len(msgs))

    def answer(msg: Message):
        match msg.payload:
            case b"retry":
                return Retry("asked to", delay_ms=50)
            case b"reject":
                return Reject("asked to")
            case b"crash":
                raise RuntimeError("asked to crash")
        return Output.to("batch.out", msg.payload.upper(), headers={"batch-size": size})

    return [answer(msg) for msg in msgs]
