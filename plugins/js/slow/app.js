// `slow`: sleeps as many seconds as the payload says (a number, as `Number()` reads it, spaces
// around it trimmed), then answers with `slept SECONDS` to the `output` config subject (default
// `slow.done`), or to the request's reply. A negative number sleeps 0 s; a payload that is empty,
// not a finite number (or not UTF-8) is rejected. The long-handler case of the NATS timeout
// problem: the host must keep the message alive.
//
// The JavaScript twin of plugins/slow: the same config keys and outputs; its reject reasons and
// log line are worded the JavaScript way.
import {
  Output, Reject, config, handler, log, sleep,
} from '../../../guest-sdk/js/natsplug.js';

export const handle = handler(async (msg) => {
  const text = msg.text().trim();
  const secs = text === '' ? NaN : Number(text); // Number('') is 0
  if (!Number.isFinite(secs)) {
    throw new Reject(`payload ${JSON.stringify(text)} is not a number of seconds`);
  }
  log.info(`sleeping ${secs} s`);
  await sleep(Math.max(secs, 0) * 1000);
  const payload = `slept ${text}`;
  const subject = config('output');
  if (subject === undefined && msg.reply !== undefined) return [Output.reply(payload)];
  return [Output.to(subject ?? 'slow.done', payload)];
});
