"""Write natsplug message handlers in Python.

A plugin is one decorated function. The host (natsplug) calls it once per message in a
sandboxed instance (fresh, or warm under the manifest's ``[instance]``), keeps the JetStream
message alive with heartbeats while it runs, and turns the answer into an ack, a retry or a
dead-letter::

    from natsplug import Message, Output, Reject, config, handler, log

    @handler
    def handle(msg: Message) -> list[Output]:
        text = msg.text()                 # raises Reject on invalid UTF-8
        log.info(f"upper-casing {len(text)} bytes")
        subject = config("output") or "out"
        return [Output.to(subject, text.upper())]

- Return a list of outputs (or one `Output`, or None for none): the host publishes every output
  (awaiting the publish acks), then acks the input. `Output.reply(...)` answers a request.
- ``raise Retry(reason, delay_ms=...)``: the input is nak'ed and comes back later.
- ``raise Reject(reason)``: the input goes to the plugin's dead-letter subject and is terminated.
- Any other exception is a crash, like a Rust panic: the host reports ``panicked: Type: message``
  and applies the manifest's ``on_trap`` policy (dead-letter by default). ``raise Panic(msg)``
  crashes with exactly ``msg``.

A batch handler takes the messages of one call (``[batch]`` in the manifest) and answers each,
in order; a `Retry` or `Reject` *returned* in its place settles that message alone::

    @handler(batch=True)
    def handle(msgs: list[Message]) -> list:
        return [Output.to("out", m.payload.upper()) if m.payload else Reject("empty") for m in msgs]

Build with componentize-py against the natsplug WIT (``scripts/build-guests.sh`` does it)::

    componentize-py -d guest-sdk/wit -w batch-plugin componentize -p guest-sdk/python -p DIR app -o app.wasm

and try it offline with ``natsplug call app.wasm --subject S --payload TEXT``.

Layout:

- `Message`, `Headers`, `Delivery`: what the handler receives.
- `Output`: what it publishes. `Retry`, `Reject`, `Panic`: how it fails.
- `log`, `in_progress`, `publish`, `config`: the functions the host offers.
- `request`: a request to a NATS service (``[request] allow`` in the manifest), its `Reply`, and
  why it got none: `RequestError` (`RequestDenied`, `RequestTimeout`, `NoResponders`,
  `RequestFailed`).
- `natsplug.kv`: NATS KV buckets (``[kv] buckets`` in the manifest): ``kv.open(name)`` gives a
  `Bucket` (get, set, delete, exists, keys, increment, get_many, set_many, delete_many, and
  revisions: entry, compare_and_swap); errors are `kv.KvError` (`NoSuchStore`, `AccessDenied`,
  `Conflict`).
- `handler`: makes a function the plugin's handler (``batch=True``: its batch handler).

Text is Python's own: ``msg.payload_str()`` is ``payload.decode("utf-8")`` and raises the
stdlib's `UnicodeDecodeError` (a `ValueError`); ``msg.text()`` turns that into a `Reject`.
"""

from __future__ import annotations

import math
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Union

# The bindings componentize-py generates from the WIT contract (world `batch-plugin`).
import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import host as _host
from wit_world.imports import request as _request
from wit_world.imports import types as _types

from . import kv

__all__ = [
    "Delivery",
    "Headers",
    "Message",
    "NoResponders",
    "Output",
    "Panic",
    "PublishError",
    "Reject",
    "Reply",
    "RequestDenied",
    "RequestError",
    "RequestFailed",
    "RequestTimeout",
    "Retry",
    "config",
    "handler",
    "in_progress",
    "kv",
    "log",
    "publish",
    "request",
]

Payload = Union[bytes, bytearray, memoryview, str]


def _bytes(payload: Payload) -> bytes:
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return bytes(payload)


class Headers:
    """Message headers. NATS headers are multi-valued: a name may appear several times, in order.

    Names compare case-sensitively, as NATS does.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Optional[Iterable[tuple[str, str]]] = None) -> None:
        self._items: list[tuple[str, str]] = [(str(n), str(v)) for n, v in (items or ())]

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of `name`, else `default`."""
        for n, v in self._items:
            if n == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order."""
        return [v for n, v in self._items if n == name]

    def append(self, name: str, value: str) -> None:
        """Adds a value for `name`, keeping the ones already there."""
        self._items.append((str(name), str(value)))

    def insert(self, name: str, value: str) -> None:
        """Sets `name` to this one value (at the end), removing the others."""
        self._items = [(n, v) for n, v in self._items if n != name]
        self._items.append((str(name), str(value)))

    def remove(self, name: str) -> None:
        """Removes every value of `name`."""
        self._items = [(n, v) for n, v in self._items if n != name]

    def items(self) -> list[tuple[str, str]]:
        """Every (name, value) pair, in order."""
        return list(self._items)

    def copy(self) -> "Headers":
        return Headers(self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return any(n == name for n, _ in self._items)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: str) -> None:
        self.insert(name, value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    @classmethod
    def _from_wit(cls, headers: list) -> "Headers":
        return cls((h.name, h.value) for h in headers)

    def _to_wit(self) -> list:
        return [_types.Header(name=n, value=v) for n, v in self._items]


@dataclass(frozen=True)
class Delivery:
    """JetStream facts about a delivery."""

    stream: str
    """The stream that stored the message."""
    consumer: str
    """The durable consumer that delivered it."""
    stream_sequence: int
    """The message's sequence in the stream."""
    consumer_sequence: int
    """The delivery's sequence in the consumer."""
    delivered: int
    """How many times this message has been delivered: 1 on the first delivery."""
    pending: int
    """Messages still pending on the consumer after this one."""
    timestamp_ns: int
    """When the stream stored the message, in nanoseconds since the Unix epoch."""


class Message:
    """An incoming message."""

    __slots__ = ("subject", "reply", "headers", "payload", "delivery")

    def __init__(
        self,
        subject: str,
        payload: Payload = b"",
        headers: Optional[Headers] = None,
        reply: Optional[str] = None,
        delivery: Optional[Delivery] = None,
    ) -> None:
        self.subject: str = subject
        """The subject it was published to."""
        self.reply: Optional[str] = reply
        """The reply subject of a request, if any."""
        self.headers: Headers = headers if headers is not None else Headers()
        """Its headers."""
        self.payload: bytes = _bytes(payload)
        """Its payload."""
        self.delivery: Optional[Delivery] = delivery
        """JetStream facts; None for a core NATS message."""

    def payload_str(self) -> str:
        """The payload as UTF-8 text: ``payload.decode("utf-8")``, which raises the stdlib's
        `UnicodeDecodeError` (a `ValueError`; `start`, `end` and `reason` say where and why)."""
        return self.payload.decode("utf-8")

    def text(self) -> str:
        """The payload as UTF-8 text; invalid UTF-8 rejects the message (raises `Reject`, e.g.
        ``payload is not UTF-8: invalid start byte at byte 0``): the input itself is at fault."""
        try:
            return self.payload_str()
        except UnicodeDecodeError as e:
            raise Reject(f"payload is not UTF-8: {e.reason} at byte {e.start}") from None

    def header(self, name: str) -> Optional[str]:
        """The first value of a header."""
        return self.headers.get(name)

    @property
    def delivered(self) -> int:
        """How many times this message has been delivered (1 for core NATS messages)."""
        return self.delivery.delivered if self.delivery is not None else 1

    def __repr__(self) -> str:
        return (
            f"Message(subject={self.subject!r}, reply={self.reply!r}, headers={self.headers!r}, "
            f"payload={self.payload!r}, delivery={self.delivery!r})"
        )

    @classmethod
    def _from_wit(cls, m) -> "Message":
        d = m.delivery
        return cls(
            subject=m.subject,
            reply=m.reply,
            headers=Headers._from_wit(m.headers),
            payload=bytes(m.payload),
            delivery=None
            if d is None
            else Delivery(
                stream=d.stream,
                consumer=d.consumer,
                stream_sequence=d.stream_sequence,
                consumer_sequence=d.consumer_sequence,
                delivered=d.delivered,
                pending=d.pending,
                timestamp_ns=d.timestamp_ns,
            ),
        )


class Output:
    """A message to publish. Make one with `Output.to` or `Output.reply`."""

    __slots__ = ("subject", "headers", "payload")

    def __init__(
        self,
        subject: Optional[str],
        payload: Payload = b"",
        headers: Union[Headers, Iterable[tuple[str, str]], dict, None] = None,
    ) -> None:
        self.subject: Optional[str] = subject
        """Where to publish; None answers the input's request."""
        self.payload: bytes = _bytes(payload)
        """Its payload (a str is encoded as UTF-8)."""
        self.headers: Headers = Headers(headers.items() if isinstance(headers, dict) else headers)
        """Its headers (a copy of what was passed)."""

    @classmethod
    def to(cls, subject: str, payload: Payload = b"", headers=None) -> "Output":
        """An output to `subject`. `headers`: a `Headers`, a dict or (name, value) pairs."""
        return cls(subject, payload, headers)

    @classmethod
    def reply(cls, payload: Payload = b"", headers=None) -> "Output":
        """The reply to the input's request."""
        return cls(None, payload, headers)

    def header(self, name: str, value: str) -> "Output":
        """Adds a header value; returns the output, for chaining."""
        self.headers.append(name, value)
        return self

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Output)
            and (self.subject, self.headers, self.payload) == (other.subject, other.headers, other.payload)
        )

    def __repr__(self) -> str:
        return f"Output(subject={self.subject!r}, headers={self.headers!r}, payload={self.payload!r})"

    def _to_wit(self):
        return _types.Output(subject=self.subject, headers=self.headers._to_wit(), payload=self.payload)


class Retry(Exception):
    """Transient failure: nak the input so it is delivered again, after `delay_ms` milliseconds
    or, when None, after the plugin's backoff delay."""

    def __init__(self, reason: object, delay_ms: Optional[float] = None) -> None:
        self.reason = str(reason)
        self.delay_ms = None if delay_ms is None else max(0, min(int(delay_ms), 2**64 - 1))
        super().__init__(self.reason)


class Reject(Exception):
    """Permanent failure: the input goes to the dead-letter subject and is terminated."""

    def __init__(self, reason: object) -> None:
        self.reason = str(reason)
        super().__init__(self.reason)


class Panic(Exception):
    """Crash the handler like a Rust `panic!(message)`: the host reports
    `plugin "NAME" panicked: message` and applies the manifest's `on_trap` policy."""


class PublishError(Exception):
    """`publish` was refused; the message says why (e.g. a subject the manifest does not allow)."""


class _Log:
    """Structured logging to the host's log, tagged with the plugin and the message."""

    __slots__ = ()

    def trace(self, message: str) -> None:
        _host.log(_host.Level.TRACE, str(message))

    def debug(self, message: str) -> None:
        _host.log(_host.Level.DEBUG, str(message))

    def info(self, message: str) -> None:
        _host.log(_host.Level.INFO, str(message))

    def warn(self, message: str) -> None:
        _host.log(_host.Level.WARN, str(message))

    warning = warn

    def error(self, message: str) -> None:
        _host.log(_host.Level.ERROR, str(message))


log = _Log()
"""``log.info("...")`` and friends: trace, debug, info, warn (or warning), error."""


def in_progress() -> None:
    """Tells the server right now that the message is still being worked on. The host already
    sends these heartbeats on its own while a handler runs; this is for being explicit."""
    _host.in_progress()


def publish(output: Output) -> None:
    """Adds an output besides the ones the handler returns. It is published with them, and only
    if the handler succeeds. Raises `PublishError` at once if the subject is not allowed."""
    try:
        _host.publish(output._to_wit())
    except Err as e:
        raise PublishError(e.value) from None


def config(key: str, default: Optional[str] = None) -> Optional[str]:
    """A value from the `[config]` table of the plugin's manifest, else `default`."""
    value = _host.config(key)
    return default if value is None else value


class Reply:
    """The reply to a `request`."""

    __slots__ = ("headers", "payload")

    def __init__(self, payload: Payload = b"", headers: Optional[Headers] = None) -> None:
        self.headers: Headers = headers if headers is not None else Headers()
        """Its headers."""
        self.payload: bytes = _bytes(payload)
        """Its payload."""

    def text(self) -> str:
        """The payload as UTF-8 text: ``payload.decode("utf-8")``, which raises the stdlib's
        `UnicodeDecodeError` when it is not (a crash, unless caught: the input is not at fault)."""
        return self.payload.decode("utf-8")

    def header(self, name: str) -> Optional[str]:
        """The first value of a header."""
        return self.headers.get(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and (self.headers, self.payload) == (other.headers, other.payload)

    def __repr__(self) -> str:
        return f"Reply(headers={self.headers!r}, payload={self.payload!r})"


class RequestError(Exception):
    """A `request` got no reply. `subject` is where it went; the subclass says why."""

    def __init__(self, subject: str, message: str) -> None:
        self.subject = subject
        """The subject the request was sent to."""
        super().__init__(message)


class RequestDenied(RequestError):
    """Refused by the host: the subject is not granted by the manifest's ``[request] allow`` (or
    is reserved, or not a subject), or the handler's request budget is spent. The message is the
    host's reason."""


class RequestTimeout(RequestError):
    """No reply within the timeout."""

    def __init__(self, subject: str) -> None:
        super().__init__(subject, "request timed out")


class NoResponders(RequestError):
    """No service listens on the subject."""

    def __init__(self, subject: str) -> None:
        super().__init__(subject, "no responders")


class RequestFailed(RequestError):
    """The request could not be sent (an unsendable header, a payload over the server's limit,
    no connection to NATS). The message is the host's reason."""


def _request_error(subject: str, error) -> RequestError:
    if isinstance(error, _request.RequestError_Denied):
        return RequestDenied(subject, error.value)
    if isinstance(error, _request.RequestError_Timeout):
        return RequestTimeout(subject)
    if isinstance(error, _request.RequestError_NoResponders):
        return NoResponders(subject)
    if isinstance(error, _request.RequestError_Failed):
        return RequestFailed(subject, error.value)
    return RequestFailed(subject, f"unknown request error: {error!r}")  # pragma: no cover


def _timeout_ms(timeout: float) -> int:
    """Seconds to whole milliseconds, to the nearest; a positive timeout is at least 1 ms."""
    if timeout != timeout:  # NaN
        raise ValueError("timeout is not a number")
    if timeout <= 0:
        return 0
    if math.isinf(timeout):
        return 2**64 - 1
    return max(1, min(round(timeout * 1000), 2**64 - 1))


def request(
    subject: str,
    payload: Payload = b"",
    headers: Union[Headers, Iterable[tuple[str, str]], dict, None] = None,
    timeout: Optional[float] = None,
) -> Reply:
    """Sends a request to the NATS service on `subject` and waits for its `Reply`, as
    ``await nc.request(...)`` does; the host keeps the input alive meanwhile. The manifest's
    ``[request] allow`` must grant the subject.

    `payload`: bytes or str (UTF-8). `headers`: a `Headers`, a dict or (name, value) pairs.
    `timeout`: seconds to wait (None: the manifest's ``request.timeout``, 5 s by default), never
    longer than what is left of the handler's deadline.

    Raises `RequestTimeout`, `NoResponders`, `RequestDenied` or `RequestFailed`, all
    `RequestError`.
    """
    wit_headers = Headers(headers.items() if isinstance(headers, dict) else headers)._to_wit()
    timeout_ms = None if timeout is None else _timeout_ms(timeout)
    try:
        reply = _request.send(subject, wit_headers, _bytes(payload), timeout_ms)
    except Err as e:
        raise _request_error(subject, e.value) from None
    return Reply(bytes(reply.payload), Headers._from_wit(reply.headers))


Handler = Callable[[Message], Union[None, Output, Iterable[Output]]]
BatchHandler = Callable[[list[Message]], Iterable[Union[None, Output, Iterable[Output], "Retry", "Reject"]]]


def _outputs(result) -> list:
    if result is None:
        return []
    if isinstance(result, Output):
        return [result._to_wit()]
    outputs = []
    for output in result:
        if not isinstance(output, Output):
            raise TypeError(f"a handler returns Output values, not {type(output).__name__}")
        outputs.append(output._to_wit())
    return outputs


def _crash(error: BaseException) -> None:
    """Ends the call like a Rust panic: the traceback and a `panicked at` line on stderr (the host
    reads the message from it), then a trap."""
    message = str(error) if isinstance(error, Panic) else f"{type(error).__name__}: {error}"
    tb = traceback.extract_tb(error.__traceback__)
    where = f"{tb[-1].filename}:{tb[-1].lineno}:1" if tb else "<handler>"
    stderr = sys.stderr
    if not isinstance(error, Panic):
        traceback.print_exception(error, file=stderr)
    stderr.write(f"panicked at {where}:\n{message}\n")
    stderr.flush()
    os.abort()


def _failure(error: Union[Retry, Reject]):
    if isinstance(error, Retry):
        return _types.Failure_Retry(_types.Retry(reason=error.reason, delay_ms=error.delay_ms))
    return _types.Failure_Reject(error.reason)


def _answer(handle: Handler, message):
    """Runs a per-message `handle` on a WIT message: `Ok(outputs)`, or `Err(failure)` for a
    `Retry` or `Reject`; any other exception crashes the call, like a Rust panic."""
    try:
        return Ok(_outputs(handle(Message._from_wit(message))))
    except (Retry, Reject) as e:
        return Err(_failure(e))
    except Exception as e:  # a crash: report it the way a Rust panic is reported
        _crash(e)
        raise


def _unwrap(answer):
    """A result as the `handle` export returns it: its value, or its `Err` raised."""
    if isinstance(answer, Err):
        raise answer
    return answer.value


def dispatch(handle: Handler, message) -> list:
    """Runs `handle` on a WIT message and maps its answer onto the contract. Not for apps."""
    return _unwrap(_answer(handle, message))


def _result(answer):
    """One message's answer in a batch: outputs, or a `Retry` or `Reject` returned for it."""
    if isinstance(answer, (Retry, Reject)):
        return Err(_failure(answer))
    return Ok(_outputs(answer))


def dispatch_each(handle: Handler, messages) -> list:
    """Runs a per-message `handle` on each message of a batch. Not for apps."""
    return [_answer(handle, message) for message in messages]


def dispatch_batch(handle: BatchHandler, messages) -> list:
    """Runs a batch `handle` on WIT messages and maps its answers onto the contract. A `Retry`
    or `Reject` raised (not returned) answers every message of the batch. Not for apps."""
    try:
        answers = list(handle([Message._from_wit(m) for m in messages]))
        if len(answers) != len(messages):
            raise TypeError(
                f"a batch handler returns one answer per message: {len(answers)} for {len(messages)}"
            )
        return [_result(answer) for answer in answers]
    except (Retry, Reject) as e:
        return [Err(_failure(e)) for _ in messages]
    except Exception as e:
        _crash(e)
        raise


def handler(handle=None, *, batch: bool = False):
    """Makes `handle` the plugin's handler: ``@handler`` for a function from `Message` to
    outputs, ``@handler(batch=True)`` for one from a list of messages to a list of answers, one
    per message, in order (outputs, or a `Retry` or `Reject` *returned* for that message).

    The host uses batches under the manifest's ``[batch]`` section; without it a batch handler
    gets one message at a time. A per-message handler is called on each message of a batch.

    It defines the `WitWorld` class that componentize-py looks for in the app module (so the
    app module needs nothing else), and returns `handle` unchanged, so tests can call it.
    """
    if handle is None:
        return lambda handle: handler(handle, batch=batch)
    module = sys.modules[handle.__module__]

    if batch:

        class WitWorld(wit_world.WitWorld):
            def handle(self, message):  # noqa: D401 - the WIT export
                [answer] = dispatch_batch(handle, [message])
                return _unwrap(answer)

            def handle_batch(self, messages):
                return dispatch_batch(handle, messages)

    else:

        class WitWorld(wit_world.WitWorld):
            def handle(self, message):  # noqa: D401 - the WIT export
                return dispatch(handle, message)

            def handle_batch(self, messages):
                return dispatch_each(handle, messages)

    WitWorld.__module__ = handle.__module__
    WitWorld.__qualname__ = "WitWorld"
    setattr(module, "WitWorld", WitWorld)
    return handle
