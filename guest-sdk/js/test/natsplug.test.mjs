// Native tests of the JavaScript guest SDK and the example plugins, on a stand-in host (see
// register.mjs). They are fast but prove nothing about the real bindings or the engine: the
// sdk-check plugin (plugins/js/sdk-check) runs the SDK inside a real component, in
// tests/tests/sdks.rs.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { state, witError } from './fake-host.mjs';
import {
  Headers, KvError, Output, PublishError, Reject, RequestError, Retry, batchHandler,
  config, eachOf, handler, kv, oneOf, publish, request,
} from '../natsplug.js';
import { handle as uppercase } from '../../../plugins/js/uppercase/app.js';
import { handle as slow } from '../../../plugins/js/slow/app.js';
import { handle as quote } from '../../../plugins/js/quote/app.js';
import { handle as tally } from '../../../plugins/js/tally/app.js';

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
async function call(handle, payload, {
  subject = 'demo.in.x', headers = [], reply, cfg = {}, delivery,
} = {}) {
  Object.assign(state, { logs: [], config: cfg, published: [] });
  const stderr = [];
  const realError = console.error;
  console.error = (...args) => stderr.push(args.join(' '));
  try {
    const message = { subject, reply, headers: headers.map(([name, value]) => ({ name, value })), payload, delivery };
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

test('uppercase upper-cases with toUpperCase and rejects invalid UTF-8', async () => {
  const cases = [['hello, wasm!', 'HELLO, WASM!'], ['ÀÉÎõü straße ǆ', 'ÀÉÎÕÜ STRASSE Ǆ'], ['', '']];
  for (const [input, upper] of cases) {
    assert.deepEqual(await call(uppercase, new TextEncoder().encode(input)), {
      ok: [{ subject: 'demo.in.x.upper', headers: [], payload: new TextEncoder().encode(upper) }],
    }, input);
  }
  assert.deepEqual(await call(uppercase, new Uint8Array([0xff, 0xfe, 0x41])), {
    reject: 'payload is not UTF-8: The encoded data was not valid for encoding utf-8',
  });
});

test('slow sleeps what Number reads, logs it, and rejects what is not a finite number', async () => {
  const cases = [['0.5', 'slept 0.5', 500, 'sleeping 0.5 s'], [' 2\n', 'slept 2', 2000, 'sleeping 2 s'],
    ['1e1', 'slept 1e1', 10000, 'sleeping 10 s'], ['-3', 'slept -3', 0, 'sleeping -3 s']];
  for (const [input, out, ms, line] of cases) {
    const before = now;
    const r = await call(slow, new TextEncoder().encode(input), { cfg: { output: 'o' } });
    assert.deepEqual(r, { ok: [{ subject: 'o', headers: [], payload: new TextEncoder().encode(out) }] }, input);
    assert.equal(now - before, ms, input);
    assert.deepEqual(state.logs.map(([, message]) => message), [line], input);
  }
  for (const input of ['soon', '', 'NaN', 'Infinity', '1 2']) {
    assert.deepEqual(await call(slow, new TextEncoder().encode(input)), {
      reject: `payload ${JSON.stringify(input)} is not a number of seconds`,
    }, input);
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

const bytes = (s) => new TextEncoder().encode(s);
const text = (b) => decoder.decode(b);
const witHeaders = (pairs) => pairs.map(([name, value]) => ({ name, value }));

/** A fresh fake KV: the given buckets (name -> { key: value }), nothing denied, no failure. */
function resetKv(buckets = {}) {
  state.buckets = new Map();
  for (const [name, entries] of Object.entries(buckets)) {
    const store = { seq: 0, entries: new Map() };
    for (const [k, v] of Object.entries(entries)) {
      store.seq += 1;
      store.entries.set(k, { value: bytes(v), revision: BigInt(store.seq) });
    }
    state.buckets.set(name, store);
  }
  Object.assign(state, { deniedBuckets: new Set(), kvFailure: undefined, pageSize: 2, dropped: [] });
}

/** The RequestError a request answered with `variant` throws, as { kind, message, detail }. */
function requestFailure(variant) {
  state.respond = () => {
    throw witError(variant);
  };
  try {
    request('svc.a', 'x');
  } catch (e) {
    assert.ok(e instanceof RequestError && e instanceof Error);
    return { kind: e.kind, message: e.message, detail: e.detail };
  }
  return assert.fail('request did not throw');
}

test('request sends the payload, headers and timeout, and returns the reply', () => {
  state.requests = [];
  state.respond = () => ({ headers: witHeaders([['h', '1'], ['h', '2']]), payload: bytes('pong') });
  const reply = request('svc.a', 'ping', { headers: { a: 'b' }, timeoutMs: 250 });
  assert.deepEqual(state.requests, [
    { subject: 'svc.a', headers: [{ name: 'a', value: 'b' }], payload: bytes('ping'), timeoutMs: 250n },
  ]);
  assert.ok(reply.headers instanceof Headers);
  assert.deepEqual(reply.headers.getAll('h'), ['1', '2']);
  assert.equal(reply.header('h'), '1');
  assert.deepEqual(reply.payload, bytes('pong'));
  assert.equal(reply.text(), 'pong');
  request('svc.a', new Uint8Array([1]));
  assert.equal(state.requests[1].timeoutMs, undefined, 'no timeout: the manifest decides');
  assert.deepEqual(state.requests[1].headers, []);
  state.respond = () => ({ headers: [], payload: new Uint8Array([0xff]) });
  assert.throws(() => request('svc.a', '').text(), TypeError);
  assert.throws(() => request('svc.a', '', { timeoutMs: -1 }), RangeError);
});

test('request errors are translated with their kind', () => {
  assert.deepEqual(requestFailure({ tag: 'denied', val: 'not granted' }), {
    kind: 'denied', message: 'request to svc.a denied: not granted', detail: 'not granted',
  });
  assert.deepEqual(requestFailure({ tag: 'timeout' }), {
    kind: 'timeout', message: 'request to svc.a timed out', detail: undefined,
  });
  assert.deepEqual(requestFailure({ tag: 'no-responders' }), {
    kind: 'no-responders', message: 'no responders on svc.a', detail: undefined,
  });
  assert.deepEqual(requestFailure({ tag: 'failed', val: 'payload too big' }), {
    kind: 'failed', message: 'request to svc.a failed: payload too big', detail: 'payload too big',
  });
  // Not an answer of the host (no payload): it goes on as it is.
  state.respond = () => {
    throw new TypeError('a bug');
  };
  assert.throws(() => request('svc.a', 'x'), TypeError);
});

test('a bucket gets, sets, deletes and lists every page of keys', () => {
  resetKv({ b: { a: '1', b: '2', c: '3', d: '4', e: '5' } });
  const bucket = kv.open('b');
  assert.equal(bucket.name, 'b');
  assert.deepEqual(bucket.get('a'), bytes('1'));
  assert.equal(bucket.get('nope'), undefined);
  bucket.set('f', 'six');
  bucket.set('g', new Uint8Array([7]));
  assert.deepEqual(bucket.get('f'), bytes('six'));
  assert.equal(bucket.exists('g'), true);
  bucket.delete('g');
  assert.equal(bucket.exists('g'), false);
  assert.throws(() => bucket.set('x', undefined), TypeError);
  // 6 keys, 2 a page: three calls of list-keys, the cursor followed to the end.
  assert.deepEqual(bucket.keys(), ['a', 'b', 'c', 'd', 'e', 'f']);
  state.pageSize = 100;
  assert.deepEqual(bucket.keys(), ['a', 'b', 'c', 'd', 'e', 'f']);
  resetKv({ empty: {} });
  assert.deepEqual(kv.open('empty').keys(), []);
});

test('a bucket increments, batches, and compares and swaps by revision', () => {
  resetKv({ b: { x: 'one' } });
  const bucket = kv.open('b');
  assert.equal(bucket.increment('hits'), 1);
  assert.equal(bucket.increment('hits', 5), 6);
  assert.equal(bucket.increment('hits', 4n), 10);
  assert.throws(() => bucket.increment('hits', -1), RangeError);
  assert.throws(() => bucket.increment('hits', 1.5), RangeError);

  bucket.setMany({ m1: 'a', m2: bytes('b') });
  bucket.setMany(new Map([['m3', 'c']]));
  bucket.setMany([['m4', 'd']]);
  assert.deepEqual(bucket.getMany(['m2', 'missing', 'm1', 'm3', 'm4']), [bytes('b'), undefined, bytes('a'), bytes('c'), bytes('d')]);
  bucket.deleteMany(['m1', 'm2']);
  assert.deepEqual(bucket.getMany(['m1', 'm2', 'm3']), [undefined, undefined, bytes('c')]);

  assert.equal(bucket.entry('fresh'), undefined);
  const first = bucket.compareAndSwap('fresh', '1', 0); // revision 0: only if absent
  assert.equal(typeof first, 'number');
  assert.deepEqual(bucket.entry('fresh'), { value: bytes('1'), revision: first });
  const conflict = (() => {
    try {
      bucket.compareAndSwap('fresh', '2', 0);
    } catch (e) {
      return e;
    }
    return undefined;
  })();
  assert.ok(conflict instanceof KvError);
  assert.equal(conflict.kind, 'conflict');
  assert.equal(conflict.message, 'kv bucket "b": key "fresh" is no longer at revision 0');
  const second = bucket.compareAndSwap('fresh', '2', first);
  assert.ok(second > first);
  assert.deepEqual(bucket.entry('fresh'), { value: bytes('2'), revision: second });
  assert.throws(() => bucket.compareAndSwap('fresh', '3', first), { name: 'KvError', kind: 'conflict' });
  assert.equal(bucket.compareAndSwap('fresh', '3', BigInt(second)), second + 1);
});

test('kv errors are translated with their kind', () => {
  resetKv({ b: {} });
  state.deniedBuckets.add('secret');
  assert.throws(() => kv.open('secret'), {
    name: 'KvError', kind: 'access-denied', bucket: 'secret', message: 'kv bucket "secret": access denied',
  });
  assert.throws(() => kv.open('nope'), {
    name: 'KvError', kind: 'no-such-store', message: 'kv bucket "nope": no such store',
  });
  const bucket = kv.open('b');
  state.kvFailure = { tag: 'access-denied' };
  assert.throws(() => bucket.set('k', 'v'), { kind: 'access-denied', key: 'k' });
  state.kvFailure = { tag: 'other', val: 'server gone' };
  assert.throws(() => bucket.keys(), {
    kind: 'other', detail: 'server gone', message: 'kv bucket "b": server gone',
  });
  state.kvFailure = { tag: 'no-such-store' };
  assert.throws(() => bucket.entry('k'), { kind: 'no-such-store' });
  // compare-and-swap wraps the store's error in `store`.
  state.kvFailure = { tag: 'access-denied' };
  assert.throws(() => bucket.compareAndSwap('k', 'v', 0), { name: 'KvError', kind: 'access-denied' });
  state.kvFailure = { tag: 'other', val: 'timeout' };
  assert.throws(() => bucket.compareAndSwap('k', 'v', 0), { kind: 'other', detail: 'timeout' });
  state.kvFailure = { tag: 'other', val: 'x is not a counter' };
  assert.throws(() => bucket.increment('x'), { kind: 'other', detail: 'x is not a counter' });
});

test('a handler closes the buckets its call opened', async () => {
  await call(handler(() => []), bytes('')); // closes those the tests above opened outside a handler
  resetKv({ b: {} });
  let kept;
  const handle = handler(() => {
    kept = kv.open('b');
    kv.open('b').close();
    kept.set('k', 'v');
    return [];
  });
  assert.deepEqual(await call(handle, bytes('')), { ok: [] });
  assert.deepEqual(state.dropped, ['b', 'b']);
  assert.throws(() => kept.get('k'), { kind: 'other', detail: 'bucket is closed' });
  state.dropped = [];
  const crashing = handler(() => {
    kv.open('b');
    throw new Reject('no');
  });
  assert.deepEqual(await call(crashing, bytes('')), { reject: 'no' });
  assert.deepEqual(state.dropped, ['b']);
});

test('quote forwards the reply and maps request errors to retries and rejects', async () => {
  state.requests = [];
  state.respond = ({ payload }) => ({
    headers: witHeaders([['priced-by', 'svc-1'], ['other', 'x']]),
    payload: bytes(`price of ${text(payload)}`),
  });
  assert.deepEqual(await call(quote, bytes('apple'), { subject: 'quote.in.js' }), {
    ok: [{
      subject: 'quote.out',
      headers: [{ name: 'quoted-by', value: 'js' }, { name: 'priced-by', value: 'svc-1' }],
      payload: bytes('price of apple'),
    }],
  });
  assert.deepEqual(state.requests, [{
    subject: 'pricing.quote',
    headers: [{ name: 'quote-for', value: 'quote.in.js' }],
    payload: bytes('apple'),
    timeoutMs: undefined,
  }]);

  state.respond = () => ({ headers: [], payload: bytes('9') });
  const r = await call(quote, bytes('pear'), { cfg: { service: 'prices.x', timeout_ms: '1500' } });
  assert.deepEqual(r.ok[0].headers, [{ name: 'quoted-by', value: 'js' }]);
  assert.equal(state.requests[1].subject, 'prices.x');
  assert.equal(state.requests[1].timeoutMs, 1500n);

  const failing = (variant) => {
    state.respond = () => {
      throw witError(variant);
    };
    return call(quote, bytes('x'));
  };
  assert.deepEqual(await failing({ tag: 'timeout' }), {
    retry: { reason: 'request to pricing.quote timed out', delayMs: 100n },
  });
  assert.deepEqual(await failing({ tag: 'no-responders' }), {
    retry: { reason: 'no responders on pricing.quote', delayMs: 100n },
  });
  assert.deepEqual(await failing({ tag: 'denied', val: 'not in [request] allow' }), {
    reject: 'request to pricing.quote denied: not in [request] allow',
  });
  assert.deepEqual(await failing({ tag: 'failed', val: 'no connection' }), {
    retry: { reason: 'request to pricing.quote failed: no connection', delayMs: undefined },
  });
  assert.deepEqual(await call(quote, bytes('x'), { cfg: { timeout_ms: 'soon' } }), {
    reject: 'config timeout_ms is not a number of milliseconds: "soon"',
  });
  assert.deepEqual(await call(quote, bytes('x'), { cfg: { timeout_ms: '18446744073709551616' } }), {
    reject: 'config timeout_ms is not a number of milliseconds: "18446744073709551616"',
  });
});

test('tally counts by compare-and-swap, retries a conflict and rejects a missing bucket', async () => {
  resetKv({ tally: {} });
  const delivery = (delivered) => ({
    stream: 'TALLY', consumer: 'tally-js', streamSequence: 1n, consumerSequence: 1n,
    delivered, pending: 0n, timestampNs: 0n,
  });
  const out = (r) => r.ok && r.ok.map((o) => [o.subject, text(o.payload), o.headers.map((h) => [h.name, h.value])]);
  // First: absent, so revision 0; the bucket's first write is revision 1.
  assert.deepEqual(out(await call(tally, bytes('k'), { delivery: delivery(1n) })), [
    ['tally.out', '1', [['key', 'k'], ['revision', '1']]],
  ]);
  assert.deepEqual(out(await call(tally, bytes('k'), { delivery: delivery(1n) })), [
    ['tally.out', '2', [['key', 'k'], ['revision', '2']]],
  ]);
  // A rival writes between the read and the swap: conflict, retried in 10 ms.
  const rival = [['tally-rival', '40']];
  assert.deepEqual(await call(tally, bytes('k'), { headers: rival, delivery: delivery(1n) }), {
    retry: { reason: 'conflict on k', delayMs: 10n },
  });
  assert.equal(text(state.buckets.get('tally').entries.get('k').value), '40');
  // The redelivery has no rival and counts from its value.
  assert.deepEqual(out(await call(tally, bytes('k'), { headers: rival, delivery: delivery(2n) })), [
    ['tally.out', '41', [['key', 'k'], ['revision', '4']]],
  ]);
  // Another bucket, missing or denied: rejected. A failing store: retried on the backoff.
  assert.deepEqual(await call(tally, bytes('k'), { cfg: { bucket: 'nope' } }), {
    reject: 'kv bucket "nope": no such store',
  });
  state.deniedBuckets.add('tally');
  assert.deepEqual(await call(tally, bytes('k')), { reject: 'kv bucket "tally": access denied' });
  state.deniedBuckets.clear();
  state.kvFailure = { tag: 'other', val: 'no quorum' };
  assert.deepEqual(await call(tally, bytes('k')), {
    retry: { reason: 'kv bucket "tally": no quorum', delayMs: undefined },
  });
  state.buckets.get('tally').entries.set('k', { value: bytes('many'), revision: 9n });
  assert.deepEqual(await call(tally, bytes('k')), { reject: 'the value of k is not a count: "many"' });
});
