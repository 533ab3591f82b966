"""Native tests of the Python guest SDK and the example plugins, on stand-in bindings (the real
ones only exist inside a componentize-py build). Run: python3 -m unittest discover guest-sdk/python/tests

The stand-ins include an in-memory NATS KV with revisions and pages of keys (`Kv`, `FakeBucket`) and
a table of request answers (`Requests`), so the KV and request wrappers and the tally and quote
plugins run here too. They are fast but prove nothing about the real bindings: the sdk-check
plugin (plugins/python/sdk-check) runs the SDK inside a real component, in tests/tests/sdks.rs.
"""
import importlib.util
import sys
import types as pytypes
import unittest
from unittest import mock
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


# --- stand-ins for the modules componentize-py generates --------------------------------------
@dataclass
class Ok:
    value: object


class Err(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value


@dataclass
class Header:
    name: str
    value: str


@dataclass
class Output:
    subject: object
    headers: list
    payload: bytes


@dataclass
class Message:
    subject: str
    reply: object
    headers: list
    payload: bytes
    delivery: object


@dataclass
class Retry:
    reason: str
    delay_ms: object


@dataclass
class Failure_Retry:
    value: Retry


@dataclass
class Failure_Reject:
    value: str


class Level(Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class Host:
    logs: list = []
    config: dict = {}
    published: list = []
    refuse: str = ""


@dataclass
class Delivery:
    stream: str
    consumer: str
    stream_sequence: int
    consumer_sequence: int
    delivered: int
    pending: int
    timestamp_ns: int


# wasi:keyvalue/store, atomics, batch and natsplug:plugin/kv
@dataclass
class Error_NoSuchStore:
    pass


@dataclass
class Error_AccessDenied:
    pass


@dataclass
class Error_Other:
    value: str


@dataclass
class KeyResponse:
    keys: list
    cursor: object


@dataclass
class Entry:
    value: bytes
    revision: int


@dataclass
class CasError_Conflict:
    pass


@dataclass
class CasError_Store:
    value: object


class FakeBucket:
    """A WIT bucket resource over `Kv.buckets[name]`: key -> (value, revision)."""

    def __init__(self, name):
        self.name, self.dropped = name, False
        Kv.opened.append(self)

    @property
    def data(self):
        return Kv.buckets[self.name]

    def _check(self, write=False):
        assert not self.dropped, "used after drop"
        if Kv.fail:
            raise Err(Kv.fail)
        if write and self.name in Kv.read_only:
            raise Err(Error_AccessDenied())

    def get(self, key):
        self._check()
        return self.data[key][0] if key in self.data else None

    def set(self, key, value):
        self._check(write=True)
        Kv.calls.append(("set", key, value))
        Kv.revision += 1
        self.data[key] = (bytes(value), Kv.revision)

    def delete(self, key):
        self._check(write=True)
        self.data.pop(key, None)

    def exists(self, key):
        self._check()
        return key in self.data

    def list_keys(self, cursor):
        """Pages of Kv.page_size keys; the cursor is the index of the next page's first key."""
        self._check()
        Kv.calls.append(("list_keys", cursor))
        keys = sorted(self.data)
        start = cursor or 0
        end = start + Kv.page_size
        return KeyResponse(keys[start:end], end if end < len(keys) else None)

    def __exit__(self, *exc):
        self.dropped = True


class Kv:
    buckets: dict = {}
    read_only: set = set()
    opened: list = []
    calls: list = []
    fail: object = None
    revision: int = 0
    page_size: int = 2

    @classmethod
    def reset(cls, **buckets):
        cls.buckets = {name: dict(data) for name, data in buckets.items()}
        cls.read_only, cls.opened, cls.calls, cls.fail, cls.revision = set(), [], [], None, 0
        cls.page_size = 2


def kv_open(name):
    if Kv.fail:
        raise Err(Kv.fail)
    if name not in Kv.buckets:
        raise Err(Error_AccessDenied())
    return FakeBucket(name)


def kv_increment(bucket, key, delta):
    bucket._check(write=True)
    value = int(bucket.data[key][0]) + delta if key in bucket.data else delta
    bucket.set(key, str(value).encode())
    return value


def kv_get_many(bucket, keys):
    bucket._check()
    return [(k, bucket.data[k][0]) if k in bucket.data else None for k in keys]


def kv_set_many(bucket, pairs):
    for key, value in pairs:
        bucket.set(key, value)


def kv_delete_many(bucket, keys):
    for key in keys:
        bucket.delete(key)


def kv_get_entry(bucket, key):
    bucket._check()
    if key not in bucket.data:
        return None
    value, revision = bucket.data[key]
    return Entry(value, revision)


def kv_compare_and_swap(bucket, key, value, revision):
    try:
        bucket._check(write=True)
    except Err as e:
        raise Err(CasError_Store(e.value)) from None
    Kv.calls.append(("cas", key, value, revision))
    current = bucket.data[key][1] if key in bucket.data else 0
    if current != revision:
        raise Err(CasError_Conflict())
    Kv.revision += 1
    bucket.data[key] = (bytes(value), Kv.revision)
    return Kv.revision


# natsplug:plugin/request
@dataclass
class Reply:
    headers: list
    payload: bytes


@dataclass
class RequestError_Denied:
    value: str


@dataclass
class RequestError_Timeout:
    pass


@dataclass
class RequestError_NoResponders:
    pass


@dataclass
class RequestError_Failed:
    value: str


class Requests:
    sent: list = []
    # subject -> a Reply, or a RequestError_* to fail with
    services: dict = {}

    @classmethod
    def reset(cls, **services):
        cls.sent, cls.services = [], {s.replace("_", "."): a for s, a in services.items()}


def request_send(subject, headers, payload, timeout_ms):
    Requests.sent.append((subject, headers, payload, timeout_ms))
    answer = Requests.services.get(subject, RequestError_NoResponders())
    if not isinstance(answer, Reply):
        raise Err(answer)
    return answer


def _install_fake_bindings():
    cpt = pytypes.ModuleType("componentize_py_types")
    cpt.Err = Err
    cpt.Ok = Ok
    world = pytypes.ModuleType("wit_world")
    world.__path__ = []
    world.WitWorld = type("WitWorld", (), {})
    imports = pytypes.ModuleType("wit_world.imports")
    imports.__path__ = []
    types = pytypes.ModuleType("wit_world.imports.types")
    for cls in (Header, Output, Message, Retry, Failure_Retry, Failure_Reject):
        setattr(types, cls.__name__, cls)
    host = pytypes.ModuleType("wit_world.imports.host")
    host.Level = Level
    host.log = lambda level, message: Host.logs.append((level, message))
    host.config = lambda key: Host.config.get(key)
    host.in_progress = lambda: None

    def publish(output):
        if Host.refuse:
            raise Err(Host.refuse)
        Host.published.append(output)

    host.publish = publish
    store = pytypes.ModuleType("wit_world.imports.store")
    for cls in (Error_NoSuchStore, Error_AccessDenied, Error_Other, KeyResponse):
        setattr(store, cls.__name__, cls)
    store.Bucket = FakeBucket
    store.open = kv_open
    atomics = pytypes.ModuleType("wit_world.imports.atomics")
    atomics.increment = kv_increment
    batch = pytypes.ModuleType("wit_world.imports.batch")
    batch.get_many, batch.set_many, batch.delete_many = kv_get_many, kv_set_many, kv_delete_many
    kv = pytypes.ModuleType("wit_world.imports.kv")
    for cls in (Entry, CasError_Conflict, CasError_Store):
        setattr(kv, cls.__name__, cls)
    kv.get_entry, kv.compare_and_swap = kv_get_entry, kv_compare_and_swap
    request = pytypes.ModuleType("wit_world.imports.request")
    for cls in (Reply, RequestError_Denied, RequestError_Timeout, RequestError_NoResponders, RequestError_Failed):
        setattr(request, cls.__name__, cls)
    request.send = request_send
    sys.modules.update({
        "componentize_py_types": cpt,
        "wit_world": world,
        "wit_world.imports": imports,
        "wit_world.imports.types": types,
        "wit_world.imports.host": host,
        "wit_world.imports.store": store,
        "wit_world.imports.atomics": atomics,
        "wit_world.imports.batch": batch,
        "wit_world.imports.kv": kv,
        "wit_world.imports.request": request,
    })


_install_fake_bindings()
sys.path.insert(0, str(ROOT / "guest-sdk" / "python"))
import natsplug  # noqa: E402


class Crashed(Exception):
    pass


def _crash(error):  # instead of writing to stderr and aborting the process
    raise Crashed(str(error) if isinstance(error, natsplug.Panic) else f"{type(error).__name__}: {error}")


natsplug._crash = _crash


def load_app(lang_dir: str, name: str):
    spec = importlib.util.spec_from_file_location(f"app_{name}", ROOT / "plugins" / lang_dir / name / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def delivery(delivered: int) -> Delivery:
    return Delivery("S", "c", 1, delivered, delivered, 0, 0)


def call(app, payload: bytes, subject="demo.in.x", headers=(), reply=None, config=None, delivery=None):
    """The answer as the host sees it: ("ok", outputs) / ("retry", Retry) / ("reject", reason) /
    ("panic", message)."""
    Host.logs, Host.config, Host.published = [], dict(config or {}), []
    message = Message(subject, reply, [Header(n, v) for n, v in headers], payload, delivery)
    try:
        return "ok", app.WitWorld().handle(message)
    except Err as e:
        if isinstance(e.value, Failure_Retry):
            return "retry", e.value.value
        return "reject", e.value.value
    except Crashed as e:
        return "panic", str(e)


class SdkTest(unittest.TestCase):
    def test_headers_keep_every_value_in_order(self):
        h = natsplug.Headers([("a", "1"), ("b", "2"), ("a", "3")])
        self.assertEqual(h.get("a"), "1")
        self.assertEqual(h.get_all("a"), ["1", "3"])
        h.insert("a", "4")
        self.assertEqual(h.items(), [("b", "2"), ("a", "4")])

    def test_payload_str_is_the_stdlib_decode_and_text_rejects(self):
        self.assertEqual(natsplug.Message("s", "é").payload_str(), "é")
        with self.assertRaises(UnicodeDecodeError) as caught:
            natsplug.Message("s", b"ab\xc3(").payload_str()
        self.assertIsInstance(caught.exception, ValueError)
        self.assertEqual((caught.exception.start, caught.exception.end, caught.exception.reason),
                         (2, 3, "invalid continuation byte"))
        with self.assertRaises(natsplug.Reject) as rejected:
            natsplug.Message("s", b"ab\xc3(").text()
        self.assertEqual(rejected.exception.reason, "payload is not UTF-8: invalid continuation byte at byte 2")

    def test_answers_map_to_the_contract(self):
        @natsplug.handler
        def handle(msg):
            if msg.payload == b"retry":
                raise natsplug.Retry("busy", delay_ms=1500)
            if msg.payload == b"reject":
                raise natsplug.Reject(42)
            if msg.payload == b"crash":
                raise KeyError("k")
            if msg.payload == b"none":
                return None
            return [natsplug.Output.to("s", "é", headers={"a": "1"}), natsplug.Output.reply(b"r")]

        app = sys.modules[__name__]
        self.assertEqual(call(app, b"retry"), ("retry", Retry("busy", 1500)))
        self.assertEqual(call(app, b"reject"), ("reject", "42"))
        self.assertEqual(call(app, b"crash"), ("panic", "KeyError: 'k'"))
        self.assertEqual(call(app, b"none"), ("ok", []))
        self.assertEqual(
            call(app, b"x"),
            ("ok", [Output("s", [Header("a", "1")], "é".encode()), Output(None, [], b"r")]),
        )

    def test_a_batch_handler_answers_each_message_and_a_per_message_handler_runs_on_each(self):
        def wit(payload):
            return Message("in", None, [], payload, None)

        def short(result):
            if isinstance(result, Ok):
                return [o.payload for o in result.value]
            if isinstance(result.value, Failure_Retry):
                return ("retry", result.value.value.delay_ms)
            return ("reject", result.value.value)

        @natsplug.handler(batch=True)
        def batch(msgs):
            size = str(len(msgs)).encode()
            return [
                natsplug.Retry("r", delay_ms=5) if m.payload == b"retry"
                else natsplug.Reject("no") if m.payload == b"reject"
                else natsplug.Output.to("o", m.payload + size)
                for m in msgs
            ]

        world = sys.modules[__name__].WitWorld()
        answers = world.handle_batch([wit(b"a"), wit(b"retry"), wit(b"reject")])
        self.assertEqual([short(a) for a in answers], [[b"a3"], ("retry", 5), ("reject", "no")])
        # One message through `handle`: a batch of one.
        self.assertEqual(world.handle(wit(b"b")), [Output("o", [], b"b1")])
        with self.assertRaises(Err):
            world.handle(wit(b"reject"))

        @natsplug.handler(batch=True)
        def short_answer(msgs):
            return []

        with self.assertRaisesRegex(Crashed, "one answer per message: 0 for 2"):
            sys.modules[__name__].WitWorld().handle_batch([wit(b"a"), wit(b"b")])

        @natsplug.handler
        def each(msg):
            if msg.payload == b"reject":
                raise natsplug.Reject("no")
            return natsplug.Output.to("o", msg.payload.upper())

        answers = sys.modules[__name__].WitWorld().handle_batch([wit(b"a"), wit(b"reject")])
        self.assertEqual([short(a) for a in answers], [[b"A"], ("reject", "no")])

    def test_publish_and_config(self):
        Host.config, Host.refuse = {"k": "v"}, ""
        self.assertEqual(natsplug.config("k"), "v")
        self.assertIsNone(natsplug.config("missing"))
        self.assertEqual(natsplug.config("missing", "d"), "d")
        natsplug.publish(natsplug.Output.to("a.b", "x"))
        self.assertEqual(Host.published, [Output("a.b", [], b"x")])
        Host.refuse = "not allowed"
        with self.assertRaisesRegex(natsplug.PublishError, "not allowed"):
            natsplug.publish(natsplug.Output.to("a.b", "x"))
        Host.refuse = ""


class ExamplesTest(unittest.TestCase):
    """The uppercase and slow examples, in Python's own idiom."""

    def setUp(self):
        # No real sleeping: record what slow asks time.sleep for.
        self.slept = []
        patcher = mock.patch("time.sleep", self.slept.append)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_uppercase_upper_cases_with_str_upper(self):
        app = load_app("python", "uppercase")
        for text, upper in [("hello, wasm!", "HELLO, WASM!"), ("ÀÉÎõü straße ǆ", "ÀÉÎÕÜ STRASSE Ǆ"), ("", "")]:
            with self.subTest(text=text):
                self.assertEqual(call(app, text.encode()),
                                 ("ok", [Output("demo.in.x.upper", [], upper.encode())]))

    def test_uppercase_rejects_invalid_utf8_saying_where(self):
        app = load_app("python", "uppercase")
        self.assertEqual(call(app, b"\xff\xfeA"), ("reject", "payload is not UTF-8: invalid start byte at byte 0"))
        self.assertEqual(call(app, b"ok\xe2\x82"), ("reject", "payload is not UTF-8: unexpected end of data at byte 2"))

    def test_uppercase_carries_headers_and_sets_the_marker(self):
        app = load_app("python", "uppercase")
        kind, outputs = call(app, b"hi", headers=[("marker", "a"), ("t", "1"), ("marker", "b")], config={"marker": "m"})
        self.assertEqual(kind, "ok")
        self.assertEqual(outputs, [Output("demo.in.x.upper", [Header("t", "1"), Header("marker", "m")], b"HI")])

    def test_slow_sleeps_what_float_reads_and_logs_it(self):
        app = load_app("python", "slow")
        cases = [(b"0.5", "slept 0.5", 0.5, "sleeping 0.5 s"), (b" 2\n", "slept 2", 2.0, "sleeping 2.0 s"),
                 (b"1e1", "slept 1e1", 10.0, "sleeping 10.0 s"), (b"-3", "slept -3", 0.0, "sleeping -3.0 s")]
        for payload, out, slept, line in cases:
            with self.subTest(payload=payload):
                self.slept.clear()
                self.assertEqual(call(app, payload, config={"output": "o"}), ("ok", [Output("o", [], out.encode())]))
                self.assertEqual(self.slept, [slept])
                self.assertEqual(Host.logs, [(Level.INFO, line)])

    def test_slow_rejects_what_is_not_a_finite_number(self):
        app = load_app("python", "slow")
        for payload in (b"soon", b"", b"nan", b"inf", b"1 2"):
            with self.subTest(payload=payload):
                text = payload.decode()
                self.assertEqual(call(app, payload), ("reject", f"payload {text!r} is not a number of seconds"))
        self.assertEqual(call(app, b"\xff"), ("reject", "payload is not UTF-8: invalid start byte at byte 0"))
        self.assertEqual(self.slept, [])

    def test_slow_answers_the_request_without_an_output_config(self):
        app = load_app("python", "slow")
        self.assertEqual(call(app, b"0.5", reply="r.1"), ("ok", [Output(None, [], b"slept 0.5")]))
        self.assertEqual(call(app, b"0.5"), ("ok", [Output("slow.done", [], b"slept 0.5")]))
        self.assertEqual(call(app, b"1", reply="r", config={"output": "o"}), ("ok", [Output("o", [], b"slept 1")]))
        self.assertEqual(self.slept, [0.5, 0.5, 1.0])


kv = natsplug.kv


class KvTest(unittest.TestCase):
    def setUp(self):
        Kv.reset(tally={"a": (b"1", 1)})
        Kv.revision = 1

    def test_get_set_delete_exists(self):
        bucket = kv.open("tally")
        self.assertEqual(bucket.name, "tally")
        self.assertEqual(bucket.get("a"), b"1")
        self.assertIsNone(bucket.get("b"))
        bucket.set("b", "é")  # a str is stored as UTF-8
        bucket.set("c", bytearray(b"\x00"))
        self.assertEqual((bucket.get("b"), bucket.get("c")), ("é".encode(), b"\x00"))
        self.assertTrue(bucket.exists("b"))
        bucket.delete("b")
        bucket.delete("never")
        self.assertFalse(bucket.exists("b"))

    def test_keys_follows_the_cursor_to_the_end(self):
        Kv.reset(tally={k: (b"", 1) for k in "edcba"})
        self.assertEqual(sorted(kv.open("tally").keys()), list("abcde"))
        self.assertEqual([c for c in Kv.calls if c[0] == "list_keys"],
                         [("list_keys", None), ("list_keys", 2), ("list_keys", 4)])
        Kv.reset(tally={})
        self.assertEqual(kv.open("tally").keys(), [])

    def test_keys_refuses_a_cursor_that_does_not_move(self):
        bucket = kv.open("tally")
        bucket._bucket.list_keys = lambda cursor: KeyResponse(["a"], 7)
        with self.assertRaisesRegex(kv.KvError, "cursor 7 twice"):
            bucket.keys()

    def test_increment_and_batches(self):
        bucket = kv.open("tally")
        self.assertEqual(bucket.increment("a"), 2)
        self.assertEqual(bucket.increment("n", 5), 5)
        self.assertEqual(bucket.increment("n", delta=0), 5)
        with self.assertRaises(ValueError):
            bucket.increment("n", -1)
        bucket.set_many({"x": "1", "y": b"2"})
        bucket.set_many([("z", "3")])
        self.assertEqual(bucket.get_many(["x", "missing", "z", "y"]), {"x": b"1", "y": b"2", "z": b"3"})
        bucket.delete_many(iter(["x", "y", "missing"]))
        self.assertEqual(bucket.get_many(["x", "y", "z"]), {"z": b"3"})

    def test_entry_and_compare_and_swap(self):
        bucket = kv.open("tally")
        self.assertEqual(bucket.entry("a"), kv.Entry(value=b"1", revision=1))
        self.assertIsNone(bucket.entry("b"))
        self.assertEqual(bucket.compare_and_swap("a", "2", 1), 2)
        self.assertEqual(bucket.entry("a"), kv.Entry(b"2", 2))
        with self.assertRaises(kv.Conflict) as caught:
            bucket.compare_and_swap("a", "3", 1)
        self.assertEqual((caught.exception.key, caught.exception.revision), ("a", 1))
        self.assertEqual(str(caught.exception), "conflict: a is no longer at revision 1")
        # Revision 0: only if the key has no value.
        self.assertEqual(bucket.compare_and_swap("b", b"new", 0), 3)
        with self.assertRaisesRegex(kv.Conflict, "^conflict: b already has a value$"):
            bucket.compare_and_swap("b", b"again", 0)
        self.assertEqual(bucket.get("b"), b"new")

    def test_errors_are_translated(self):
        with self.assertRaises(kv.AccessDenied) as caught:
            kv.open("other")
        self.assertEqual(str(caught.exception), "access denied")
        Kv.fail = Error_NoSuchStore()
        with self.assertRaisesRegex(kv.NoSuchStore, "^no such store$"):
            kv.open("tally")
        Kv.fail = None
        bucket = kv.open("tally")
        Kv.read_only.add("tally")
        for write in (lambda: bucket.set("a", "x"), lambda: bucket.compare_and_swap("a", "x", 1),
                      lambda: bucket.increment("a"), lambda: bucket.set_many({"a": "x"})):
            with self.assertRaises(kv.AccessDenied):
                write()
        self.assertEqual(bucket.get("a"), b"1")
        Kv.fail = Error_Other("connection lost")
        for read in (lambda: bucket.get("a"), bucket.keys, lambda: bucket.entry("a"),
                     lambda: bucket.exists("a"), lambda: bucket.get_many(["a"]),
                     lambda: bucket.compare_and_swap("a", "x", 1)):
            with self.assertRaises(kv.KvError) as caught:
                read()
            self.assertIs(type(caught.exception), kv.KvError)
            self.assertEqual(str(caught.exception), "connection lost")
            self.assertIsNone(caught.exception.__cause__)
        for cls in (kv.AccessDenied, kv.NoSuchStore, kv.Conflict):
            self.assertTrue(issubclass(cls, kv.KvError))

    def test_close_releases_the_bucket(self):
        with kv.open("tally") as bucket:
            self.assertEqual(bucket.get("a"), b"1")
        self.assertTrue(Kv.opened[-1].dropped)
        with self.assertRaisesRegex(ValueError, "bucket tally is closed"):
            bucket.get("a")
        bucket.close()  # twice is fine


class RequestTest(unittest.TestCase):
    def test_a_reply(self):
        Requests.reset(pricing_quote=Reply([Header("priced-by", "x"), Header("priced-by", "y")], b"42"))
        reply = natsplug.request("pricing.quote", "é", headers={"h": "1"}, timeout=1.5)
        self.assertEqual(reply, natsplug.Reply(b"42", natsplug.Headers([("priced-by", "x"), ("priced-by", "y")])))
        self.assertEqual((reply.text(), reply.header("priced-by"), reply.headers.get_all("priced-by")),
                         ("42", "x", ["x", "y"]))
        self.assertEqual(Requests.sent, [("pricing.quote", [Header("h", "1")], "é".encode(), 1500)])

    def test_headers_and_timeouts(self):
        Requests.reset(s=Reply([], b"\xff"))
        natsplug.request("s")
        natsplug.request("s", b"", headers=natsplug.Headers([("a", "1"), ("a", "2")]), timeout=0.0001)
        natsplug.request("s", b"", headers=[("b", "1")], timeout=0.007)
        natsplug.request("s", b"", timeout=0)
        natsplug.request("s", b"", timeout=-3)
        natsplug.request("s", b"", timeout=float("inf"))
        self.assertEqual(
            [(h, t) for _, h, _, t in Requests.sent],
            [([], None), ([Header("a", "1"), Header("a", "2")], 1), ([Header("b", "1")], 7),
             ([], 0), ([], 0), ([], 2**64 - 1)],
        )
        with self.assertRaises(ValueError):
            natsplug.request("s", timeout=float("nan"))
        with self.assertRaises(UnicodeDecodeError) as caught:
            natsplug.request("s").text()
        self.assertEqual((caught.exception.start, caught.exception.reason), (0, "invalid start byte"))

    def test_errors_are_translated(self):
        Requests.reset(a=RequestError_Denied("may not send a request to \"a\""), b=RequestError_Timeout(),
                       d=RequestError_Failed("no connection"))
        cases = [("a", natsplug.RequestDenied, 'may not send a request to "a"'),
                 ("b", natsplug.RequestTimeout, "request timed out"),
                 ("c", natsplug.NoResponders, "no responders"),
                 ("d", natsplug.RequestFailed, "no connection")]
        for subject, cls, message in cases:
            with self.subTest(subject=subject):
                with self.assertRaises(natsplug.RequestError) as caught:
                    natsplug.request(subject, b"x")
                self.assertIs(type(caught.exception), cls)
                self.assertEqual((str(caught.exception), caught.exception.subject), (message, subject))


class TallyTest(unittest.TestCase):
    def setUp(self):
        self.app = load_app("python", "tally")
        Kv.reset(tally={})

    def tally(self, key, headers=(), delivered=1, config=None):
        return call(self.app, key, subject="tally.in", headers=headers, delivery=delivery(delivered), config=config)

    @staticmethod
    def out(count, key, revision):
        return [Output("tally.out", [Header("key", key), Header("revision", str(revision))], str(count).encode())]

    def test_counts_each_key(self):
        self.assertEqual(self.tally(b"apple"), ("ok", self.out(1, "apple", 1)))
        self.assertEqual(self.tally(b"apple"), ("ok", self.out(2, "apple", 2)))
        self.assertEqual(self.tally(b"pear"), ("ok", self.out(1, "pear", 3)))
        self.assertEqual(Kv.buckets["tally"], {"apple": (b"2", 2), "pear": (b"1", 3)})
        self.assertEqual([c for c in Kv.calls if c[0] == "cas"],
                         [("cas", "apple", b"1", 0), ("cas", "apple", b"2", 1), ("cas", "pear", b"1", 0)])
        self.assertTrue(all(b.dropped for b in Kv.opened))

    def test_a_rival_on_the_first_delivery_makes_a_conflict_then_the_retry_counts_over_it(self):
        rival = [("tally-rival", "41")]
        self.assertEqual(self.tally(b"k", rival, delivered=1), ("retry", Retry("conflict on k", 10)))
        self.assertEqual(Kv.buckets["tally"], {"k": (b"41", 1)})  # the rival's write stands
        self.assertEqual(self.tally(b"k", rival, delivered=2), ("ok", self.out(42, "k", 2)))
        self.assertEqual([c[0] for c in Kv.calls], ["set", "cas", "cas"])
        # Over an existing value too.
        self.assertEqual(self.tally(b"k", [("tally-rival", "7")]), ("retry", Retry("conflict on k", 10)))
        self.assertEqual(self.tally(b"k", [("tally-rival", "7")], delivered=3), ("ok", self.out(8, "k", 4)))

    def test_the_rival_needs_a_jetstream_first_delivery(self):
        answer = call(self.app, b"k", headers=[("tally-rival", "41")])  # core NATS: no delivery
        self.assertEqual(answer, ("ok", self.out(1, "k", 1)))
        self.assertEqual([c[0] for c in Kv.calls], ["cas"])

    def test_the_bucket_comes_from_config(self):
        Kv.reset(tally={}, other={"k": (b"9", 5)})
        Kv.revision = 5
        self.assertEqual(self.tally(b"k", config={"bucket": "other"}), ("ok", self.out(10, "k", 6)))

    def test_errors(self):
        self.assertEqual(self.tally(b"k", config={"bucket": "nope"}), ("reject", "access denied"))
        Kv.read_only.add("tally")
        self.assertEqual(self.tally(b"k"), ("reject", "access denied"))
        Kv.read_only.clear()
        Kv.fail = Error_NoSuchStore()
        self.assertEqual(self.tally(b"k"), ("reject", "no such store"))
        Kv.fail = Error_Other("\"a b\" is not a valid key")
        self.assertEqual(self.tally(b"a b"), ("retry", Retry('"a b" is not a valid key', None)))
        Kv.fail = None
        Kv.buckets["tally"]["k"] = (b"many", 1)
        self.assertEqual(self.tally(b"k"), ("reject", "the value of k is not a count: many"))
        self.assertEqual(self.tally(b"\xff"), ("reject", "payload is not UTF-8: invalid start byte at byte 0"))


class QuoteTest(unittest.TestCase):
    def setUp(self):
        self.app = load_app("python", "quote")

    def quote(self, config=None):
        return call(self.app, b"widget", subject="quote.in.py", config=config)

    def test_a_reply_becomes_the_output(self):
        Requests.reset(pricing_quote=Reply([Header("priced-by", "rust"), Header("other", "x")], b"9.99"))
        self.assertEqual(self.quote(), ("ok", [
            Output("quote.out", [Header("quoted-by", "python"), Header("priced-by", "rust")], b"9.99")]))
        self.assertEqual(Requests.sent, [("pricing.quote", [Header("quote-for", "quote.in.py")], b"widget", None)])
        Requests.reset(pricing_quote=Reply([], b""))
        self.assertEqual(self.quote(), ("ok", [Output("quote.out", [Header("quoted-by", "python")], b"")]))

    def test_service_and_timeout_from_config(self):
        Requests.reset(pricing_other=Reply([], b"1"))
        self.assertEqual(self.quote({"service": "pricing.other", "timeout_ms": "7"})[0], "ok")
        self.assertEqual(Requests.sent[0][0::3], ("pricing.other", 7))
        self.assertEqual(self.quote({"timeout_ms": "soon"}),
                         ("reject", "config timeout_ms is not a number of milliseconds: soon"))

    def test_errors(self):
        Requests.reset(pricing_quote=RequestError_Timeout())
        self.assertEqual(self.quote(), ("retry", Retry("request timed out", 100)))
        Requests.reset()
        self.assertEqual(self.quote(), ("retry", Retry("no responders", 100)))
        Requests.reset(pricing_quote=RequestError_Denied("not granted"))
        self.assertEqual(self.quote(), ("reject", "not granted"))
        Requests.reset(pricing_quote=RequestError_Failed("payload too big"))
        self.assertEqual(self.quote(), ("retry", Retry("payload too big", None)))


if __name__ == "__main__":
    unittest.main()
