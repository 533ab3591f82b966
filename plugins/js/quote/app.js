// `quote`: asks a pricing service for each message. The input's payload goes as a request to
// the `service` config subject (default `pricing.quote`) with a `quote-for: <input subject>`
// header, waiting `timeout_ms` (config; default: the manifest's `[request] timeout`). The reply
// goes to `quote.out`: its payload, a `quoted-by: js` header and the reply's `priced-by` header
// when it has one. No reply (a timeout, no responders) retries in 100 ms; a denied request is
// rejected (the manifest will not change by retrying); a request that failed otherwise is
// retried on the plugin's backoff. The JavaScript twin of plugins/quote-rs.
import {
  Output, Reject, RequestError, Retry, config, handler, request,
} from '../../../guest-sdk/js/natsplug.js';

export const handle = handler((msg) => {
  const service = config('service', 'pricing.quote');
  let reply;
  try {
    reply = request(service, msg.payload, {
      headers: { 'quote-for': msg.subject },
      timeoutMs: timeoutMs(),
    });
  } catch (e) {
    if (!(e instanceof RequestError)) throw e;
    switch (e.kind) {
      case 'timeout':
      case 'no-responders':
        throw new Retry(e.message, { delayMs: 100 });
      case 'denied':
        throw new Reject(e.message);
      default:
        throw new Retry(e.message);
    }
  }
  const out = Output.to('quote.out', reply.payload, { 'quoted-by': 'js' });
  const pricedBy = reply.header('priced-by');
  if (pricedBy !== undefined) out.header('priced-by', pricedBy);
  return [out];
});

/** The `timeout_ms` config value (decimal digits, below 2^64), as a BigInt, or undefined; one
 * that is not a number of milliseconds rejects. */
function timeoutMs() {
  const text = config('timeout_ms');
  if (text === undefined) return undefined;
  const ms = /^\+?[0-9]+$/.test(text) ? BigInt(text) : -1n;
  if (ms < 0n || ms >= 1n << 64n) {
    throw new Reject(`config timeout_ms is not a number of milliseconds: ${JSON.stringify(text)}`);
  }
  return ms;
}
