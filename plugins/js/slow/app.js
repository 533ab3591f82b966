// `slow`: sleeps as many seconds as the payload says (a decimal number), then answers with
// `slept SECONDS` to the `output` config subject (default `slow.done`), or to the request's reply.
// The long-handler case of the NATS timeout problem: the host must keep the message alive.
//
// The JavaScript twin of plugins/slow: same config keys, same answers, byte for byte (numbers
// are parsed and printed with Rust's rules through rust.js).
import { Output, Reject, config, handler, log } from '../../../guest-sdk/js/natsplug.js';
import * as rust from '../../../guest-sdk/js/rust.js';

export const handle = handler(async (msg) => {
  const text = rust.trim(msg.text());
  let secs;
  try {
    secs = rust.parseF64(text);
  } catch (e) {
    if (e instanceof rust.ParseFloatError) {
      throw new Reject(`payload ${rust.debugStr(text)} is not a number of seconds: ${e.message}`);
    }
    throw e;
  }
  log.info(`sleeping ${rust.displayF64(secs)} s`);
  await rust.sleep(secs > 0 ? secs : 0); // Rust's secs.max(0.0): a NaN sleeps 0 s
  const payload = `slept ${text}`;
  const subject = config('output');
  if (subject === undefined && msg.reply !== undefined) return [Output.reply(payload)];
  return [Output.to(subject ?? 'slow.done', payload)];
});
