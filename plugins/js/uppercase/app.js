// `uppercase`: one output, the payload upper-cased, published to the subject named by the
// `output` config value (default: the input subject with `.upper` appended). Input headers are
// carried over; a `marker` config value is set as the `marker` header.
//
// The JavaScript twin of plugins/uppercase: same config keys, same answers, byte for byte.
import { Output, config, handler } from '../../../guest-sdk/js/natsplug.js';

export const handle = handler((msg) => {
  const text = msg.text(); // invalid UTF-8: Reject, with the Rust SDK's reason
  const subject = config('output', `${msg.subject}.upper`);
  const out = Output.to(subject, text.toUpperCase(), msg.headers);
  const marker = config('marker');
  if (marker !== undefined) out.headers.set('marker', marker);
  return [out];
});
