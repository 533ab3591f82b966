// `batch`: a batch handler, the JavaScript twin of plugins/batch. Each message's payload says
// what becomes of it: `retry` is retried after 50 ms, `reject` is dead-lettered, `crash` throws
// (failing its whole call: the host then runs each message of that call alone), anything else
// is upper-cased to `batch.out` with a `batch-size` header: how many messages its call had.
import { Output, Reject, Retry, batchHandler } from '../../../guest-sdk/js/natsplug.js';

export const handleBatch = batchHandler((msgs) => {
  const size = String(msgs.length);
  return msgs.map((msg) => {
    const text = new TextDecoder().decode(msg.payload);
    switch (text) {
      case 'retry':
        return new Retry('asked to', { delayMs: 50 });
      case 'reject':
        return new Reject('asked to');
      case 'crash':
        throw new Error('asked to crash');
      default:
        return Output.to('batch.out', asciiUpper(msg.payload), { 'batch-size': size });
    }
  });
});

/** The bytes with a-z upper-cased and every other byte as it is (ASCII only, as the Python
 * twin's `bytes.upper()`), so a payload that is not UTF-8 goes through too. */
function asciiUpper(bytes) {
  return Uint8Array.from(bytes, (b) => (b >= 0x61 && b <= 0x7a ? b - 0x20 : b));
}
