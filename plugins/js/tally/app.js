// `tally`: counts how many times each key (the payload's text) came in, in the `bucket` config
// KV bucket (default `tally`), with a compare-and-swap so a count is applied once even when two
// writers race. It reads the key's entry, then writes `count` (its value + 1, or 1) only if the
// key is still at that revision (0: still absent). A conflict retries in 10 ms; success
// publishes the count to `tally.out` with headers `key` and `revision` (the new revision).
//
// For the tests, a `tally-rival` header plays the other writer: on the first delivery, the
// plugin sets the key to the header's value between its read and its compare-and-swap, which
// then conflicts; the redelivery counts from the rival's value. The JavaScript twin of
// plugins/tally.
import {
  KvError, Output, Reject, Retry, config, handler, kv,
} from '../../../guest-sdk/js/natsplug.js';

export const handle = handler((msg) => {
  const key = msg.text();
  try {
    const bucket = kv.open(config('bucket', 'tally'));
    const entry = bucket.entry(key);
    const count = entry === undefined ? 1 : countOf(key, entry.value) + 1;
    const rival = msg.header('tally-rival');
    if (rival !== undefined && msg.delivered === 1) bucket.set(key, rival);
    const revision = bucket.compareAndSwap(key, String(count), entry?.revision ?? 0);
    return [Output.to('tally.out', String(count), { key, revision: String(revision) })];
  } catch (e) {
    if (!(e instanceof KvError)) throw e;
    switch (e.kind) {
      case 'conflict':
        throw new Retry(`conflict on ${key}`, { delayMs: 10 });
      case 'access-denied':
      case 'no-such-store':
        throw new Reject(e.message);
      default:
        throw new Retry(e.message);
    }
  }
});

/** The count a value holds (decimal digits, read lossily as UTF-8, at most
 * Number.MAX_SAFE_INTEGER); one that is not a count rejects. */
function countOf(key, value) {
  const text = new TextDecoder().decode(value);
  if (!/^\+?[0-9]+$/.test(text) || !Number.isSafeInteger(Number(text))) {
    throw new Reject(`the value of ${key} is not a count: ${JSON.stringify(text)}`);
  }
  return Number(text);
}
