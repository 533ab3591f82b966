// `uppercase`: one output, the payload upper-cased with `toUpperCase()`, published to the subject
// named by the `output` config value (default: the input subject with `.upper` appended). Input
// headers are carried over; a `marker` config value is set as the `marker` header. A payload
// that is not UTF-8 is rejected.
//
// The JavaScript twin of plugins/uppercase: the same config keys and outputs. Upper-casing is the
// engine's own (its Unicode version's tables and full case mapping, "straße" -> "STRASSE"), so on
// letters newer than one of the three languages' Unicode tables the twins may differ.
import { Output, config, handler } from '../../../guest-sdk/js/natsplug.js';

export const handle = handler((msg) => {
  const text = msg.text(); // invalid UTF-8: Reject
  const subject = config('output', `${msg.subject}.upper`);
  const out = Output.to(subject, text.toUpperCase(), msg.headers);
  const marker = config('marker');
  if (marker !== undefined) out.headers.set('marker', marker);
  return [out];
});
