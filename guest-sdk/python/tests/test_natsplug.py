"""Native tests of the Python guest SDK and the example plugins, on stand-in bindings (the real
ones only exist inside a componentize-py build). Run: python3 -m unittest discover guest-sdk/python/tests

rust_golden.jsonl holds what the Rust uppercase and slow plugins answer (from their own code,
run natively with Rust 1.95), the Python ports must answer the same.
"""
import importlib.util
import json
import sys
import types as pytypes
import unittest
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
    sys.modules.update({
        "componentize_py_types": cpt,
        "wit_world": world,
        "wit_world.imports": imports,
        "wit_world.imports.types": types,
        "wit_world.imports.host": host,
    })


_install_fake_bindings()
sys.path.insert(0, str(ROOT / "guest-sdk" / "python"))
import natsplug  # noqa: E402
from natsplug import rust  # noqa: E402


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


def call(app, payload: bytes, subject="demo.in.x", headers=(), reply=None, config=None):
    """The answer as the host sees it: ("ok", outputs) / ("retry", Retry) / ("reject", reason) /
    ("panic", message)."""
    Host.logs, Host.config, Host.published = [], dict(config or {}), []
    message = Message(subject, reply, [Header(n, v) for n, v in headers], payload, None)
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


class RustParityTest(unittest.TestCase):
    """The ports answer what the Rust plugins answer."""

    def setUp(self):
        # A fake clock: no real sleeping.
        self.slept, self.now = [], 0.0

        def sleep(secs):
            self.slept.append(secs)
            self.now += secs

        self.real_time = rust.time
        rust.time = pytypes.SimpleNamespace(sleep=sleep, monotonic=lambda: self.now)

    def tearDown(self):
        rust.time = self.real_time

    def test_examples_answer_like_the_rust_plugins(self):
        uppercase, slow = load_app("python", "uppercase"), load_app("python", "slow")
        for line in (Path(__file__).parent / "rust_golden.jsonl").read_text(encoding="utf-8").split("\n"):
            if not line:
                continue
            case = json.loads(line)
            payload = bytes.fromhex(case["payload"])
            with self.subTest(payload=payload):
                kind, value = call(uppercase, payload)
                self.assertEqual({"ok": value[0].payload.decode()} if kind == "ok" else {kind: value}, case["upper"])
                kind, value = call(slow, payload, config={"output": "demo.out.slow"})
                if kind == "ok":
                    got = {"log": Host.logs[0][1], "out": value[0].payload.decode()}
                elif kind == "panic":
                    got = {"log": Host.logs[0][1], "panic": value}
                else:
                    got = {kind: value}
                self.assertEqual(got, case["slow"])

    def test_uppercase_carries_headers_and_sets_the_marker(self):
        app = load_app("python", "uppercase")
        kind, outputs = call(app, b"hi", headers=[("marker", "a"), ("t", "1"), ("marker", "b")], config={"marker": "m"})
        self.assertEqual(kind, "ok")
        self.assertEqual(outputs, [Output("demo.in.x.upper", [Header("t", "1"), Header("marker", "m")], b"HI")])

    def test_slow_answers_the_request_without_an_output_config(self):
        app = load_app("python", "slow")
        self.assertEqual(call(app, b"0.5", reply="r.1"), ("ok", [Output(None, [], b"slept 0.5")]))
        self.assertEqual(call(app, b"0.5"), ("ok", [Output("slow.done", [], b"slept 0.5")]))
        self.assertEqual(call(app, b"1", reply="r", config={"output": "o"}), ("ok", [Output("o", [], b"slept 1")]))
        self.assertEqual(self.slept, [0.5, 0.5, 1.0])


if __name__ == "__main__":
    unittest.main()
