"""`sdk-check`: the Python SDK's surface, run inside a real component by tests/tests/sdks.rs (the
JavaScript twin is plugins/js/sdk-check). The `check` header names what to do; the payload is
its argument. Outputs go to the `output` config subject (default `sdk.check.out`):

- `echo`: the payload as text (`msg.text()`: invalid UTF-8 rejects), with the input's headers
  and an `echoed-by: python` header added.
- `meta`: no payload; headers `subject`, `reply` (when there is one), `delivered`, `traces` (every
  `trace` header value, comma-separated) and `bytes` (the payload's length).
- `config`: the value of the config key the payload names, or `<unset>`.
- `reply`: the payload as the reply to the request; a message without a reply subject rejects.
- `retry`: a retry after as many milliseconds as the payload says; `retry-backoff`: one on the
  plugin's backoff (no delay).
- `reject`: a reject, the payload its reason.
- `many`: as many outputs as the payload says, `i` to `OUTPUT.i` for i from 1, and one more
  `publish`ed to `OUTPUT.published`.
- `log`: logs the payload at info and at warn; no outputs.
- `progress`: two `in_progress()` heartbeats; no outputs.
- `denied`: one output per capability the manifest does not grant, naming the error raised: a
  request to `sdk.check.nowhere`, the KV bucket `sdk-check`, a publish to `sdk.check.forbidden`.
- `sleep`: `time.sleep` for as many milliseconds as the payload says, then answers `slept`.
- `crash`: an uncaught `RuntimeError(payload)`, the language's panic; `panic`: `Panic(payload)`.
- anything else: a reject.
"""
import time

from natsplug import (
    Message,
    Output,
    Panic,
    PublishError,
    Reject,
    RequestError,
    Retry,
    config,
    handler,
    in_progress,
    kv,
    log,
    publish,
    request,
)


def _denied() -> list[str]:
    """What each capability the manifest does not grant raises."""
    refused = []
    try:
        request("sdk.check.nowhere", b"", timeout=1)
    except RequestError as e:
        refused.append(f"request {type(e).__name__}")
    try:
        kv.open("sdk-check")
    except kv.KvError as e:
        refused.append(f"kv {type(e).__name__}")
    try:
        publish(Output.to("sdk.check.forbidden", b""))
    except PublishError as e:
        refused.append(f"publish {type(e).__name__}")
    return refused


@handler
def handle(msg: Message) -> list[Output]:
    check = msg.header("check")
    subject = config("output", "sdk.check.out")
    match check:
        case "echo":
            return [Output.to(subject, msg.text(), headers=msg.headers).header("echoed-by", "python")]
        case "meta":
            headers = [("subject", msg.subject)]
            if msg.reply is not None:
                headers.append(("reply", msg.reply))
            headers += [
                ("delivered", str(msg.delivered)),
                ("traces", ",".join(msg.headers.get_all("trace"))),
                ("bytes", str(len(msg.payload))),
            ]
            return [Output.to(subject, b"", headers=headers)]
        case "config":
            return [Output.to(subject, config(msg.text(), "<unset>"))]
        case "reply":
            if msg.reply is None:
                raise Reject("no reply subject to answer")
            return [Output.reply(msg.payload)]
        case "retry":
            raise Retry(f"asked to retry in {msg.text()} ms", delay_ms=int(msg.text()))
        case "retry-backoff":
            raise Retry("asked to retry on the backoff")
        case "reject":
            raise Reject(msg.text())
        case "many":
            publish(Output.to(f"{subject}.published", "published"))
            return [Output.to(f"{subject}.{i}", str(i)) for i in range(1, int(msg.text()) + 1)]
        case "log":
            log.info(msg.text())
            log.warn(f"{msg.text()}, warned")
            return []
        case "progress":
            in_progress()
            in_progress()
            return []
        case "denied":
            return [Output.to(subject, line) for line in _denied()]
        case "sleep":
            time.sleep(int(msg.text()) / 1000)
            return [Output.to(subject, "slept")]
        case "crash":
            raise RuntimeError(msg.text())
        case "panic":
            raise Panic(msg.text())
    raise Reject(f"unknown check {check!r}")
