"""The FastStream contender of natsplug-bench: the same job in Python.

`--mode job`: a JetStream pull subscriber bound to the runner's durable consumer `bench` on
`BENCH_IN`, pulling with `PullSub(batch_size=N)`. FastStream runs the handler of every message of
a fetched batch concurrently (one task each); the handler upper-cases the payload and publishes it
to `bench.out` on stream `BENCH_OUT` with `Nats-Msg-Id = faststream:BENCH_IN:SEQ:0`, awaiting
the publish ack; FastStream acks the input when the handler returns.
`--batch-handler` instead hands the handler the whole batch as a list: it publishes every output at
once (asyncio.gather), awaits every publish ack, and FastStream acks the batch.

`--mode reply`: a core NATS subscriber on `bench.rr` that returns `slept 0` (FastStream sends it
to the request's reply subject).

`--workers N` (N > 1) runs N such processes on the same durable consumer, under this one as their
supervisor, as `faststream run --workers N` does: one process per core, each with its own GIL.

Logging is off; the event loop is uvloop, as `faststream run` picks it when installed. It runs
until SIGTERM. Started by natsplug-bench, not by hand.
"""

import argparse
import asyncio
import signal
import subprocess
import sys

from faststream import FastStream
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.nats.annotations import NatsMessage


def build(args: argparse.Namespace) -> FastStream:
    broker = NatsBroker(args.server, logger=None)
    app = FastStream(broker, logger=None)

    async def publish_upper(raw) -> None:
        seq = raw.metadata.sequence.stream
        await broker.publish(
            raw.data.decode().upper().encode(),
            "bench.out",
            stream="BENCH_OUT",
            headers={"Nats-Msg-Id": f"faststream:BENCH_IN:{seq}:0"},
        )

    if args.mode == "job" and not args.batch_handler:

        @broker.subscriber(
            "bench.in",
            stream=JStream("BENCH_IN", declare=False),
            durable="bench",
            pull_sub=PullSub(batch_size=args.batch, timeout=args.timeout),
        )
        async def handle(msg: NatsMessage) -> None:
            await publish_upper(msg.raw_message)

    elif args.mode == "job":

        @broker.subscriber(
            "bench.in",
            stream=JStream("BENCH_IN", declare=False),
            durable="bench",
            pull_sub=PullSub(batch_size=args.batch, timeout=args.timeout, batch=True),
        )
        async def handle_batch(msg: NatsMessage) -> None:
            await asyncio.gather(*(publish_upper(raw) for raw in msg.raw_message))

    else:

        @broker.subscriber("bench.rr")
        async def reply(msg: NatsMessage) -> bytes:
            return b"slept 0"

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--mode", choices=["job", "reply"], default="job")
    parser.add_argument("--batch", type=int, default=256, help="PullSub batch_size")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="PullSub timeout, seconds (FastStream's default)"
    )
    parser.add_argument("--batch-handler", action="store_true")
    parser.add_argument("--workers", type=int, default=1, help="processes, as faststream run --workers")
    args = parser.parse_args()
    if args.workers > 1:
        supervise(args.workers)
        return
    app = build(args)
    try:
        # What `faststream run` does when uvloop is installed (scripts/bench.sh installs it).
        import uvloop
    except ImportError:
        asyncio.run(app.run())
    else:
        uvloop.run(app.run())


def supervise(workers: int) -> None:
    """Runs `workers` copies of this process (without --workers) until SIGTERM, then stops them."""
    argv = [a for a in sys.argv[1:]]
    i = argv.index("--workers")
    del argv[i : i + 2]
    children = [subprocess.Popen([sys.executable, "-u", __file__, *argv]) for _ in range(workers)]

    def stop(*_):
        for child in children:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.wait()


if __name__ == "__main__":
    main()
