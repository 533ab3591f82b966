// Native tests of the JavaScript guest SDK and the example plugins, on a stand-in host (see
// register.mjs). rust_golden.jsonl (beside the Python tests) holds what the Rust uppercase and
// slow plugins answer; the JavaScript ports must answer the same.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { state } from './fake-host.mjs';
import {
  Headers, Output, PublishError, Reject, Retry, batchHandler, config, eachOf, handler, oneOf, publish,
} from '../natsplug.js';
import { handle as uppercase } from '../../../plugins/js/uppercase/app.js';
import { handle as slow } from '../../../plugins/js/slow/app.js';

const decoder = new TextDecoder('utf-8', { ignoreBOM: true });

// No real sleeping: timers fire at once and the clock jumps.
let now = 0;
Date.now = () => now;
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn, ms) => {
  now += ms;
  return realSetTimeout(fn, 0);
};

// The answer as the host sees it.
async function call(handle, payload, { subject = 'demo.in.x', headers = [], reply, cfg = {} } = {}) {
  Object.assign(state, { logs: [], config: cfg, published: [] });
  const stderr = [];
  const realError = console.error;
  console.error = (...args) => stderr.push(args.join(' '));
  try {
    const message = { subject, reply, headers: headers.map(([name, value]) => ({ name, value })), payload, delivery: undefined };
    return { ok: await handle(message) };
  } catch (e) {
    if (e && (e.tag === 'retry' || e.tag === 'reject')) return { [e.tag]: e.val };
    const text = stderr.join('\n');
    return { panic: text.slice(text.lastIndexOf('panicked at ')).split('\n')[1] };
  } finally {
    console.error = realError;
  }
}

test('headers keep every value in order', () => {
  const h = new Headers([['a', '1'], ['b', '2'], ['a', '3']]);
  assert.equal(h.get('a'), '1');
  assert.deepEqual(h.getAll('a'), ['1', '3']);
  h.set('a', '4');
  assert.deepEqual(h.entries(), [['b', '2'], ['a', '4']]);
});

test('answers map to the contract', async () => {
  const handle = handler(async (msg) => {
    const text = msg.text();
    if (text === 'retry') throw new Retry('busy', { delayMs: 1500 });
    if (text === 'reject') throw new Reject(42);
    if (text === 'crash') throw new TypeError('bad');
    if (text === 'none') return undefined;
    return [Output.to('s', 'é', { a: '1' }), Output.reply(new Uint8Array([114]))];
  });
  const bytes = (s) => new TextEncoder().encode(s);
  assert.deepEqual(await call(handle, bytes('retry')), { retry: { reason: 'busy', delayMs: 1500n } });
  assert.deepEqual(await call(handle, bytes('reject')), { reject: '42' });
  assert.deepEqual(await call(handle, bytes('crash')), { panic: 'TypeError: bad' });
  assert.deepEqual(await call(handle, bytes('none')), { ok: [] });
  assert.deepEqual(await call(handle, bytes('x')), {
    ok: [
      { subject: 's', headers: [{ name: 'a', value: '1' }], payload: bytes('é') },
      { subject: undefined, headers: [], payload: new Uint8Array([114]) },
    ],
  });
});

test('a batch handler answers each message, and a per-message handler runs on each', async () => {
  const bytes = (s) => new TextEncoder().encode(s);
  const wit = (s) => ({ subject: 'in', reply: undefined, headers: [], payload: bytes(s), delivery: undefined });
  const short = (r) => (r.tag === 'ok' ? r.val.map((o) => decoder.decode(o.payload)) : [r.val.tag, r.val.val]);
  const handleBatch = batchHandler((msgs) => msgs.map((m) => {
    const text = m.text();
    if (text === 'retry') return new Retry('r', { delayMs: 5 });
    if (text === 'reject') return new Reject('no');
    return Output.to('o', `${text}${msgs.length}`);
  }));
  const answers = await handleBatch([wit('a'), wit('retry'), wit('reject')]);
  assert.deepEqual(answers.map(short), [['a3'], ['retry', { reason: 'r', delayMs: 5n }], ['reject', 'no']]);
  assert.deepEqual(await call(oneOf(handleBatch), bytes('b')), {
    ok: [{ subject: 'o', headers: [], payload: bytes('b1') }],
  });
  assert.deepEqual(await call(oneOf(handleBatch), bytes('reject')), { reject: 'no' });
  const each = eachOf(handler((m) => {
    if (m.text() === 'reject') throw new Reject('no');
    return Output.to('o', m.text().toUpperCase());
  }));
  assert.deepEqual((await each([wit('a'), wit('reject')])).map(short), [['A'], ['reject', 'no']]);
});

test('publish and config', () => {
  state.config = { k: 'v' };
  assert.equal(config('k'), 'v');
  assert.equal(config('missing'), undefined);
  assert.equal(config('missing', 'd'), 'd');
  state.published = [];
  publish(Output.to('a.b', 'x'));
  assert.equal(state.published.length, 1);
  state.refuse = 'not allowed';
  assert.throws(() => publish(Output.to('a.b', 'x')), PublishError);
  state.refuse = '';
});

test('the examples answer like the Rust plugins', async () => {
  const golden = new URL('../../python/tests/rust_golden.jsonl', import.meta.url);
  for (const line of readFileSync(golden, 'utf8').split('\n')) {
    if (!line) continue;
    const expected = JSON.parse(line);
    const payload = Uint8Array.from(Buffer.from(expected.payload, 'hex'));
    let r = await call(uppercase, payload);
    assert.deepEqual(r.ok ? { ok: decoder.decode(r.ok[0].payload) } : r, expected.upper, expected.payload);
    r = await call(slow, payload, { cfg: { output: 'demo.out.slow' } });
    const got = r.ok ? { log: state.logs[0][1], out: decoder.decode(r.ok[0].payload) }
      : r.panic ? { log: state.logs[0][1], panic: r.panic } : r;
    assert.deepEqual(got, expected.slow, expected.payload);
  }
});

test('uppercase carries the headers over and sets the marker', async () => {
  const r = await call(uppercase, new TextEncoder().encode('hi'), {
    headers: [['marker', 'a'], ['t', '1'], ['marker', 'b']],
    cfg: { marker: 'm' },
  });
  assert.deepEqual(r.ok, [{
    subject: 'demo.in.x.upper',
    headers: [{ name: 't', value: '1' }, { name: 'marker', value: 'm' }],
    payload: new TextEncoder().encode('HI'),
  }]);
});

test('slow answers the request without an output config', async () => {
  const p = new TextEncoder().encode('0.5');
  assert.equal((await call(slow, p, { reply: 'r.1' })).ok[0].subject, undefined);
  assert.equal((await call(slow, p)).ok[0].subject, 'slow.done');
  assert.equal((await call(slow, p, { reply: 'r', cfg: { output: 'o' } })).ok[0].subject, 'o');
});
