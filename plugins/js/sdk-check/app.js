// `sdk-check`: the JavaScript SDK's surface, run inside a real component by tests/tests/sdks.rs
// (the Python twin is plugins/python/sdk-check). The `check` header names what to do; the
// payload is its argument. Outputs go to the `output` config subject (default `sdk.check.out`):
//
// - `echo`: the payload as text (`msg.text()`: invalid UTF-8 rejects), with the input's headers
//   and an `echoed-by: js` header added.
// - `meta`: no payload; headers `subject`, `reply` (when there is one), `delivered`, `traces`
//   (every `trace` header value, comma-separated) and `bytes` (the payload's length).
// - `config`: the value of the config key the payload names, or `<unset>`.
// - `reply`: the payload as the reply to the request; a message without a reply subject rejects.
// - `retry`: a retry after as many milliseconds as the payload says; `retry-backoff`: one on the
//   plugin's backoff (no delay).
// - `reject`: a reject, the payload its reason.
// - `many`: as many outputs as the payload says, `i` to `OUTPUT.i` for i from 1, and one more
//   `publish`ed to `OUTPUT.published`.
// - `log`: logs the payload at info and at warn; no outputs.
// - `progress`: two `inProgress()` heartbeats; no outputs.
// - `denied`: one output per capability the manifest does not grant, naming the error thrown: a
//   request to `sdk.check.nowhere`, the KV bucket `sdk-check`, a publish to `sdk.check.forbidden`.
// - `sleep`: awaits `sleep(ms)` for as many milliseconds as the payload says (timers in the
//   engine), then answers `slept`.
// - `crash`: an uncaught `Error(payload)`, the language's panic; `panic`: `Panic(payload)`.
// - anything else: a reject.
import {
  KvError, Output, Panic, PublishError, Reject, RequestError, Retry, config, handler, inProgress,
  kv, log, publish, request, sleep,
} from '../../../guest-sdk/js/natsplug.js';

/** What each capability the manifest does not grant throws. */
function denied() {
  const refused = [];
  try {
    request('sdk.check.nowhere', '', { timeoutMs: 1000 });
  } catch (e) {
    if (!(e instanceof RequestError)) throw e;
    refused.push(`request ${e.kind}`);
  }
  try {
    kv.open('sdk-check');
  } catch (e) {
    if (!(e instanceof KvError)) throw e;
    refused.push(`kv ${e.kind}`);
  }
  try {
    publish(Output.to('sdk.check.forbidden', ''));
  } catch (e) {
    if (!(e instanceof PublishError)) throw e;
    refused.push(`publish ${e.name}`);
  }
  return refused;
}

export const handle = handler(async (msg) => {
  const check = msg.header('check');
  const subject = config('output', 'sdk.check.out');
  switch (check) {
    case 'echo':
      return [Output.to(subject, msg.text(), msg.headers).header('echoed-by', 'js')];
    case 'meta': {
      const headers = [['subject', msg.subject]];
      if (msg.reply !== undefined) headers.push(['reply', msg.reply]);
      headers.push(
        ['delivered', String(msg.delivered)],
        ['traces', msg.headers.getAll('trace').join(',')],
        ['bytes', String(msg.payload.length)],
      );
      return [Output.to(subject, '', headers)];
    }
    case 'config':
      return [Output.to(subject, config(msg.text(), '<unset>'))];
    case 'reply':
      if (msg.reply === undefined) throw new Reject('no reply subject to answer');
      return [Output.reply(msg.payload)];
    case 'retry':
      throw new Retry(`asked to retry in ${msg.text()} ms`, { delayMs: Number(msg.text()) });
    case 'retry-backoff':
      throw new Retry('asked to retry on the backoff');
    case 'reject':
      throw new Reject(msg.text());
    case 'many': {
      publish(Output.to(`${subject}.published`, 'published'));
      const count = Number(msg.text());
      return Array.from({ length: count }, (_, i) => Output.to(`${subject}.${i + 1}`, String(i + 1)));
    }
    case 'log':
      log.info(msg.text());
      log.warn(`${msg.text()}, warned`);
      return [];
    case 'progress':
      inProgress();
      inProgress();
      return [];
    case 'denied':
      return denied().map((line) => Output.to(subject, line));
    case 'sleep':
      await sleep(Number(msg.text()));
      return [Output.to(subject, 'slept')];
    case 'crash':
      throw new Error(msg.text());
    case 'panic':
      throw new Panic(msg.text());
    default:
      throw new Reject(`unknown check ${JSON.stringify(check)}`);
  }
});
