"""`quote`: asks a pricing service for a quote on each input and publishes its reply. The
request goes to the `service` config subject (default `pricing.quote`) with the input's payload
and a `quote-for: <input subject>` header, waiting `timeout_ms` milliseconds (config; default:
the manifest's `request.timeout`). The reply's payload goes to `quote.out` with
`quoted-by: python` and the reply's `priced-by` header, if it has one.

No reply in time, or no service listening: a retry after 100 ms. A subject the manifest does
not grant: a reject. A request that could not be sent: a retry on the plugin's backoff.

The Python twin of plugins/quote: same config keys, same answers.
"""
from natsplug import (
    Message,
    NoResponders,
    Output,
    Reject,
    RequestDenied,
    RequestError,
    RequestTimeout,
    Retry,
    config,
    handler,
    request,
)


def _timeout() -> float | None:
    """The `timeout_ms` config, in seconds; None when it is not set."""
    value = config("timeout_ms")
    if value is None:
        return None
    if not (value.isascii() and value.isdecimal()):
        raise Reject(f"config timeout_ms is not a number of milliseconds: {value}")
    return int(value) / 1000


@handler
def handle(msg: Message) -> list[Output]:
    service = config("service", "pricing.quote")
    try:
        reply = request(service, msg.payload, headers={"quote-for": msg.subject}, timeout=_timeout())
    except (RequestTimeout, NoResponders) as e:
        raise Retry(str(e), delay_ms=100) from None
    except RequestDenied as e:
        raise Reject(str(e)) from None
    except RequestError as e:  # RequestFailed
        raise Retry(str(e)) from None
    out = Output.to("quote.out", reply.payload, headers={"quoted-by": "python"})
    priced_by = reply.header("priced-by")
    if priced_by is not None:
        out.header("priced-by", priced_by)
    return [out]
