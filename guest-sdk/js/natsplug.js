// Write natsplug message handlers in JavaScript.
//
// A plugin is one exported function, wrapped by `handler`. The host (natsplug) calls it once per
// message in a fresh sandboxed instance, keeps the JetStream message alive with heartbeats while
// it runs, and turns the answer into an ack, a retry or a dead-letter:
//
//     import { Output, config, handler, log } from '../../../guest-sdk/js/natsplug.js';
//
//     export const handle = handler((msg) => {
//       const text = msg.text();              // throws Reject on invalid UTF-8
//       log.info(`upper-casing ${text.length} chars`);
//       return [Output.to(config('output', 'out'), text.toUpperCase())];
//     });
//
// - Return an array of outputs (or one Output, or nothing for none), or a Promise of it: the host
//   publishes every output (awaiting the publish acks), then acks the input. `Output.reply(...)`
//   answers a request. The handler may be `async` (timers work: `await sleep(ms)`).
// - `throw new Retry(reason, { delayMs })`: the input is nak'ed and comes back later.
// - `throw new Reject(reason)`: the input goes to the dead-letter subject and is terminated.
// - Anything else thrown is a crash, like a Rust panic: the host reports `panicked: Error: msg`
//   and applies the manifest's `on_trap` policy (dead-letter by default). `throw new Panic(msg)`
//   crashes with exactly `msg`.
// - Capabilities, each refused unless the manifest grants it: `request(subject, payload)` asks a
//   NATS service and returns its `Reply` (`[request] allow`; throws `RequestError`),
//   `kv.open(name)` opens a NATS KV bucket (`[kv] buckets`; its methods throw `KvError`), and
//   `fetch` reaches the origins of `[http] allow` (componentize.mjs builds it in only for a
//   plugin whose manifest has `[http]`).
//
// Build with componentize-js against the natsplug WIT (scripts/build-guests.sh does it) and try
// it offline with `natsplug call app.wasm --subject S --payload TEXT`.
//
// Numbers: u64/s64 fields of the contract (Delivery's) are BigInts; `msg.delivered` is a Number.
// Strings and numbers are JavaScript's own: `toUpperCase()`, `trim()`, `Number()`.

import {
  config as hostConfig,
  inProgress as hostInProgress,
  log as hostLog,
  publish as hostPublish,
} from 'natsplug:plugin/host@0.1.0';
import { send as hostSend } from 'natsplug:plugin/request@0.1.0';
import { open as storeOpen } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment as atomicIncrement } from 'wasi:keyvalue/atomics@0.2.0-draft';
import {
  deleteMany as batchDeleteMany,
  getMany as batchGetMany,
  setMany as batchSetMany,
} from 'wasi:keyvalue/batch@0.2.0-draft';
import { compareAndSwap as kvCompareAndSwap, getEntry as kvGetEntry } from 'natsplug:plugin/kv@0.1.0';

const encoder = new TextEncoder();
// fatal: invalid UTF-8 throws (a TypeError) instead of becoming U+FFFD. ignoreBOM: a leading
// U+FEFF is the payload's, not a marker to drop.
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function toBytes(payload) {
  if (payload === undefined || payload === null) return new Uint8Array(0);
  if (typeof payload === 'string') return encoder.encode(payload);
  if (payload instanceof Uint8Array) return payload;
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
  }
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  throw new TypeError(`a payload is a string or bytes, not ${typeof payload}`);
}

/** Message headers. NATS headers are multi-valued: a name may appear several times, in order.
 * Names compare case-sensitively, as NATS does. */
export class Headers {
  #items;

  /** @param {Headers | Iterable<[string, string]> | Record<string, string>} [init] */
  constructor(init) {
    this.#items = [];
    if (init === undefined || init === null) return;
    const pairs =
      init instanceof Headers ? init.entries()
        : Symbol.iterator in Object(init) ? init
          : Object.entries(init);
    for (const [name, value] of pairs) this.#items.push([String(name), String(value)]);
  }

  /** The first value of `name`, or undefined. */
  get(name) {
    const found = this.#items.find(([n]) => n === name);
    return found === undefined ? undefined : found[1];
  }

  /** Every value of `name`, in order. */
  getAll(name) {
    return this.#items.filter(([n]) => n === name).map(([, v]) => v);
  }

  /** Whether `name` has a value. */
  has(name) {
    return this.#items.some(([n]) => n === name);
  }

  /** Adds a value for `name`, keeping the ones already there. */
  append(name, value) {
    this.#items.push([String(name), String(value)]);
    return this;
  }

  /** Sets `name` to this one value (at the end), removing the others. */
  set(name, value) {
    this.delete(name);
    return this.append(name, value);
  }

  /** Removes every value of `name`. */
  delete(name) {
    this.#items = this.#items.filter(([n]) => n !== name);
    return this;
  }

  /** Every [name, value] pair, in order. */
  entries() {
    return this.#items.map(([n, v]) => [n, v]);
  }

  [Symbol.iterator]() {
    return this.entries()[Symbol.iterator]();
  }

  /** How many header lines there are. */
  get size() {
    return this.#items.length;
  }

  toJSON() {
    return this.entries();
  }

  static fromWit(headers) {
    return new Headers(headers.map((h) => [h.name, h.value]));
  }

  toWit() {
    return this.#items.map(([name, value]) => ({ name, value }));
  }
}

/** `bytes` as UTF-8 text; throws the platform's TypeError when they are not UTF-8. */
function decodeUtf8(bytes) {
  return decoder.decode(bytes);
}

/** An incoming message. */
export class Message {
  constructor({ subject, payload, headers, reply, delivery } = {}) {
    /** The subject it was published to. */
    this.subject = subject;
    /** The reply subject of a request, or undefined. */
    this.reply = reply ?? undefined;
    /** Its headers. */
    this.headers = headers instanceof Headers ? headers : new Headers(headers);
    /** Its payload, a Uint8Array. */
    this.payload = toBytes(payload);
    /** JetStream facts (BigInt numbers), or undefined for a core NATS message. */
    this.delivery = delivery ?? undefined;
  }

  /** The payload as UTF-8 text; throws TextDecoder's TypeError when it is not. */
  payloadStr() {
    return decodeUtf8(this.payload);
  }

  /** The payload as UTF-8 text; invalid UTF-8 rejects the message (throws Reject), with
   * TextDecoder's own words as the reason. */
  text() {
    try {
      return this.payloadStr();
    } catch (e) {
      if (e instanceof TypeError) throw new Reject(`payload is not UTF-8: ${e.message}`);
      throw e;
    }
  }

  /** The first value of a header. */
  header(name) {
    return this.headers.get(name);
  }

  /** How many times this message has been delivered (1 for core NATS messages), a Number. */
  get delivered() {
    return this.delivery === undefined ? 1 : Number(this.delivery.delivered);
  }

  static fromWit(m) {
    return new Message({
      subject: m.subject,
      reply: m.reply,
      headers: Headers.fromWit(m.headers),
      payload: m.payload,
      delivery: m.delivery
        ? {
          stream: m.delivery.stream,
          consumer: m.delivery.consumer,
          streamSequence: m.delivery.streamSequence,
          consumerSequence: m.delivery.consumerSequence,
          delivered: m.delivery.delivered,
          pending: m.delivery.pending,
          timestampNs: m.delivery.timestampNs,
        }
        : undefined,
    });
  }
}

/** A message to publish. Make one with `Output.to` or `Output.reply`. */
export class Output {
  /**
   * @param {string | undefined} subject where to publish; undefined answers the input's request
   * @param {string | Uint8Array} [payload] a string is encoded as UTF-8
   * @param {Headers | Iterable<[string, string]> | Record<string, string>} [headers] copied
   */
  constructor(subject, payload, headers) {
    this.subject = subject ?? undefined;
    this.payload = toBytes(payload);
    this.headers = new Headers(headers);
  }

  /** An output to `subject`. */
  static to(subject, payload, headers) {
    return new Output(String(subject), payload, headers);
  }

  /** The reply to the input's request. */
  static reply(payload, headers) {
    return new Output(undefined, payload, headers);
  }

  /** Adds a header value; returns the output, for chaining. */
  header(name, value) {
    this.headers.append(name, value);
    return this;
  }

  toWit() {
    return { subject: this.subject, headers: this.headers.toWit(), payload: this.payload };
  }
}

/** Transient failure: nak the input so it is delivered again, after `delayMs` milliseconds or,
 * when not given, after the plugin's backoff delay. */
export class Retry extends Error {
  constructor(reason, { delayMs } = {}) {
    super(String(reason));
    this.name = 'Retry';
    this.reason = String(reason);
    this.delayMs = delayMs ?? undefined;
  }
}

/** Permanent failure: the input goes to the dead-letter subject and is terminated. */
export class Reject extends Error {
  constructor(reason) {
    super(String(reason));
    this.name = 'Reject';
    this.reason = String(reason);
  }
}

/** Crash the handler like a Rust `panic!(message)`: the host reports
 * `plugin "NAME" panicked: message` and applies the manifest's `on_trap` policy. */
export class Panic extends Error {
  constructor(message) {
    super(String(message));
    this.name = 'Panic';
  }
}

/** `publish` was refused; the message says why (e.g. a subject the manifest does not allow). */
export class PublishError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PublishError';
  }
}

/** Structured logging to the host's log, tagged with the plugin and the message. */
export const log = Object.freeze({
  trace: (message) => hostLog('trace', String(message)),
  debug: (message) => hostLog('debug', String(message)),
  info: (message) => hostLog('info', String(message)),
  warn: (message) => hostLog('warn', String(message)),
  error: (message) => hostLog('error', String(message)),
});

/** Tells the server right now that the message is still being worked on. The host already sends
 * these heartbeats on its own while a handler runs; this is for being explicit. */
export function inProgress() {
  hostInProgress();
}

/** Adds an output besides the ones the handler returns. It is published with them, and only if
 * the handler succeeds. Throws PublishError at once if the subject is not allowed. */
export function publish(output) {
  try {
    hostPublish(output.toWit());
  } catch (e) {
    throw new PublishError(e && e.payload !== undefined ? String(e.payload) : String(e));
  }
}

/** A value from the `[config]` table of the plugin's manifest, else `fallback`. */
export function config(key, fallback = undefined) {
  const value = hostConfig(String(key));
  return value === undefined || value === null ? fallback : value;
}

// -- Capabilities: requests and NATS KV. Each is refused by the host unless the manifest grants
// it (`[request] allow`, `[kv] buckets`). The generated import bindings throw an error whose
// `payload` is the WIT error variant ({ tag, val }); the wrappers below turn it into a
// RequestError or a KvError with a `kind`. Anything thrown without a `payload` is not an answer
// of the host (a bug, a trap) and goes on as it is.

/** The WIT error an import binding threw, or rethrows what it threw when it is not one. */
function errorPayload(error) {
  if (error !== null && typeof error === 'object' && Object.hasOwn(error, 'payload')) {
    return error.payload;
  }
  throw error;
}

/** `value` (a Number or a BigInt) as a u64 BigInt; RangeError when it is not one. */
function u64Arg(what, value) {
  if (typeof value === 'bigint' && value >= 0n && value < 1n << 64n) return value;
  if (Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  throw new RangeError(
    `${what} is a non-negative integer (a safe Number or a u64 BigInt), not ${String(value)}`,
  );
}

/** A u64 BigInt from the host as a Number; RangeError when a Number cannot hold it exactly. */
function u64Number(what, value) {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) {
    throw new RangeError(`${what} ${value} is above Number.MAX_SAFE_INTEGER`);
  }
  return n;
}

/** Bytes to store: a string (encoded as UTF-8) or bytes; undefined and null are mistakes. */
function valueBytes(value) {
  if (value === undefined || value === null) {
    throw new TypeError(`a value is a string or bytes, not ${value}`);
  }
  return toBytes(value);
}

/** The reply to a `request`. */
export class Reply {
  constructor({ headers, payload } = {}) {
    /** Its headers. */
    this.headers = headers instanceof Headers ? headers : new Headers(headers);
    /** Its payload, a Uint8Array. */
    this.payload = toBytes(payload);
  }

  /** The payload as UTF-8 text; throws TextDecoder's TypeError when it is not (a crash,
   * unless caught: the input is not at fault). */
  text() {
    return decodeUtf8(this.payload);
  }

  /** The first value of a header. */
  header(name) {
    return this.headers.get(name);
  }

  static fromWit(r) {
    return new Reply({ headers: Headers.fromWit(r.headers), payload: r.payload });
  }
}

/** A request got no reply. `kind` says why:
 * - `'denied'`: the subject is not granted by `[request] allow` (or is reserved, or not a
 *   subject), or the call's request budget is spent; `detail` says which.
 * - `'timeout'`: no reply within the timeout.
 * - `'no-responders'`: no service listens on the subject.
 * - `'failed'`: it could not be sent (a bad header, a payload too big, no connection);
 *   `detail` says why. */
export class RequestError extends Error {
  constructor(kind, subject, detail = undefined) {
    const message = kind === 'timeout' ? `request to ${subject} timed out`
      : kind === 'no-responders' ? `no responders on ${subject}`
        : `request to ${subject} ${kind}: ${detail}`;
    super(message);
    this.name = 'RequestError';
    this.kind = kind;
    this.subject = subject;
    this.detail = detail;
  }

  static fromWit(subject, e) {
    const tag = e && e.tag;
    if (tag === 'denied' || tag === 'timeout' || tag === 'no-responders') {
      return new RequestError(tag, subject, e.val === undefined ? undefined : String(e.val));
    }
    return new RequestError('failed', subject, tag === 'failed' ? String(e.val) : `error ${tag}`);
  }
}

/**
 * Sends `payload` (a string or bytes) to `subject` and waits for the reply: a `Reply`. The call
 * blocks the handler (the host keeps the input alive meanwhile). `headers` takes a `Headers`,
 * an object or pairs; `timeoutMs` (a Number or a BigInt) defaults to the manifest's
 * `[request] timeout` and never outlasts the handler's deadline. Throws a `RequestError`.
 */
export function request(subject, payload, { headers, timeoutMs } = {}) {
  const to = String(subject);
  const wait = timeoutMs === undefined || timeoutMs === null
    ? undefined : u64Arg('timeoutMs', timeoutMs);
  let reply;
  try {
    reply = hostSend(to, new Headers(headers).toWit(), toBytes(payload), wait);
  } catch (e) {
    throw RequestError.fromWit(to, errorPayload(e));
  }
  return Reply.fromWit(reply);
}

/** A KV call failed. `kind` says why:
 * - `'access-denied'`: the manifest's `[kv] buckets` does not grant it (a bucket not named, or
 *   a write to a `"read"` one).
 * - `'no-such-store'`: the bucket does not exist.
 * - `'other'`: the store failed; `detail` says how.
 * - `'conflict'` (`compareAndSwap` only): the key is no longer at the revision given. */
export class KvError extends Error {
  constructor(kind, bucket, { key, detail, revision } = {}) {
    const what = kind === 'access-denied' ? 'access denied'
      : kind === 'no-such-store' ? 'no such store'
        : kind === 'conflict' ? `key ${JSON.stringify(key)} is no longer at revision ${revision}`
          : detail;
    super(`kv bucket ${JSON.stringify(bucket)}: ${what}`);
    this.name = 'KvError';
    this.kind = kind;
    this.bucket = bucket;
    this.key = key;
    this.detail = detail;
  }

  static fromWit(bucket, e, key = undefined) {
    const tag = e && e.tag;
    if (tag === 'access-denied' || tag === 'no-such-store') return new KvError(tag, bucket, { key });
    const detail = tag === 'other' ? String(e.val) : `error ${tag}`;
    return new KvError('other', bucket, { key, detail });
  }
}

const disposeSymbol = Symbol.dispose ?? Symbol.for('dispose');
// Buckets opened during the current call, closed when its handler returns: in a pooled
// instance a bucket left open would hold its host resource for the instance's lifetime.
const openBuckets = new Set();

function closeBuckets() {
  for (const bucket of openBuckets) bucket.close();
}

/**
 * An open NATS KV bucket (`kv.open(name)`). Keys are strings; values are bytes (a string is
 * stored as UTF-8). Numbers the host gives (counters, revisions) are Numbers; one above
 * `Number.MAX_SAFE_INTEGER` throws a RangeError rather than lose digits. Every method throws a
 * `KvError`. A bucket lasts for the call that opened it: the handler closes it on return.
 */
export class Bucket {
  #inner;

  /** @param {string} name @param {object} inner the `wasi:keyvalue/store` bucket resource */
  constructor(name, inner) {
    /** The bucket's name. */
    this.name = name;
    this.#inner = inner;
    openBuckets.add(this);
  }

  /** The bucket resource; a KvError once closed. */
  #resource(key) {
    if (this.#inner === undefined) {
      throw new KvError('other', this.name, { key, detail: 'bucket is closed' });
    }
    return this.#inner;
  }

  #call(key, fn) {
    const inner = this.#resource(key);
    try {
      return fn(inner);
    } catch (e) {
      throw KvError.fromWit(this.name, errorPayload(e), key);
    }
  }

  /** The key's value (a Uint8Array), or undefined when it has none. */
  get(key) {
    const k = String(key);
    return this.#call(k, (b) => b.get(k)) ?? undefined;
  }

  /** Stores `value` (a string or bytes) under `key`. */
  set(key, value) {
    const k = String(key);
    const bytes = valueBytes(value);
    this.#call(k, (b) => b.set(k, bytes));
  }

  /** Removes the key; nothing happens when it has no value. */
  delete(key) {
    const k = String(key);
    this.#call(k, (b) => b.delete(k));
  }

  /** Whether the key has a value. */
  exists(key) {
    const k = String(key);
    return this.#call(k, (b) => b.exists(k));
  }

  /** Every key of the bucket (every page of `list-keys`, in the host's order). */
  keys() {
    const keys = [];
    let cursor;
    for (;;) {
      const page = this.#call(undefined, (b) => b.listKeys(cursor));
      keys.push(...page.keys);
      if (page.cursor === undefined || page.cursor === null) return keys;
      if (cursor !== undefined && page.cursor === cursor) {
        const detail = `list-keys cursor ${cursor} did not move`;
        throw new KvError('other', this.name, { detail });
      }
      cursor = page.cursor;
    }
  }

  /** Adds `delta` (a Number or a BigInt, default 1) to the key's counter, atomically, and
   * returns the new value, a Number. A key with no value counts from 0. */
  increment(key, delta = 1) {
    const k = String(key);
    const by = u64Arg('delta', delta);
    return u64Number('counter', this.#call(k, (b) => atomicIncrement(b, k, by)));
  }

  /** The values of `keys`, in their order: a Uint8Array, or undefined for a key with none. */
  getMany(keys) {
    const list = Array.from(keys, String);
    const found = new Map();
    for (const item of this.#call(undefined, (b) => batchGetMany(b, list))) {
      if (item !== undefined && item !== null) found.set(item[0], item[1]);
    }
    return list.map((k) => found.get(k));
  }

  /** Stores several values: a Map, an object or [key, value] pairs (values strings or bytes). */
  setMany(entries) {
    const pairs = Symbol.iterator in Object(entries)
      ? Array.from(entries) : Object.entries(entries);
    const list = pairs.map(([k, v]) => [String(k), valueBytes(v)]);
    this.#call(undefined, (b) => batchSetMany(b, list));
  }

  /** Removes several keys. */
  deleteMany(keys) {
    const list = Array.from(keys, String);
    this.#call(undefined, (b) => batchDeleteMany(b, list));
  }

  /** The key's value and revision, `{ value, revision }` (a Uint8Array and a Number), or
   * undefined when it has no value. */
  entry(key) {
    const k = String(key);
    const e = this.#call(k, (b) => kvGetEntry(b, k));
    if (e === undefined || e === null) return undefined;
    return { value: e.value, revision: u64Number('revision', e.revision) };
  }

  /** Stores `value` only if the key is still at `revision` (0: only if it has no value) and
   * returns the new revision, a Number. Throws a KvError of kind `'conflict'` when another
   * writer got there first. */
  compareAndSwap(key, value, revision) {
    const k = String(key);
    const bytes = valueBytes(value);
    const rev = u64Arg('revision', revision);
    const inner = this.#resource(k);
    let next;
    try {
      next = kvCompareAndSwap(inner, k, bytes, rev);
    } catch (e) {
      const why = errorPayload(e);
      if (why && why.tag === 'conflict') {
        throw new KvError('conflict', this.name, { key: k, revision: rev });
      }
      throw KvError.fromWit(this.name, why && why.tag === 'store' ? why.val : why, k);
    }
    return u64Number('revision', next);
  }

  /** Gives the bucket back to the host; later calls throw. The handler does it on return. */
  close() {
    openBuckets.delete(this);
    const inner = this.#inner;
    this.#inner = undefined;
    if (inner !== undefined && typeof inner[disposeSymbol] === 'function') inner[disposeSymbol]();
  }

  [disposeSymbol]() {
    this.close();
  }
}

/** NATS KV, through `wasi:keyvalue`: `kv.open(name)` opens a bucket the manifest's
 * `[kv] buckets` grants, or throws a KvError (`'access-denied'`, `'no-such-store'`). */
export const kv = Object.freeze({
  open(name) {
    const bucket = String(name);
    let inner;
    try {
      inner = storeOpen(bucket);
    } catch (e) {
      throw KvError.fromWit(bucket, errorPayload(e));
    }
    return new Bucket(bucket, inner);
  },
});

/** Resolves after `ms` milliseconds (any length; the host's deadline still applies). */
export async function sleep(ms) {
  const DAY = 86_400_000;
  const end = Date.now() + ms;
  for (let left = ms; left > 0; left = end - Date.now()) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(left, DAY)));
  }
}

function outputsToWit(result) {
  if (result === undefined || result === null) return [];
  const list = result instanceof Output ? [result] : Array.from(result);
  return list.map((output) => {
    if (!(output instanceof Output)) {
      throw new TypeError(`a handler returns Output values, not ${typeof output}`);
    }
    return output.toWit();
  });
}

function toU64(ms) {
  if (ms === undefined || ms === null) return undefined;
  const n = typeof ms === 'bigint' ? ms : BigInt(Math.max(0, Math.trunc(Number(ms))));
  const max = (1n << 64n) - 1n;
  return n < 0n ? 0n : n > max ? max : n;
}

// Ends the call like a Rust panic: the stack and a `panicked at` line on stderr (the host reads
// the message from it); rethrowing a non-variant value then traps.
function crash(error) {
  let message;
  if (error instanceof Panic) message = error.message;
  else if (error instanceof Error) message = `${error.name}: ${error.message}`;
  else message = `uncaught exception: ${String(error)}`;
  const stack = error instanceof Error && typeof error.stack === 'string' ? error.stack : '';
  const frame = stack.split('\n').find((line) => line.includes('@')) ?? '';
  const where = frame.slice(frame.indexOf('@') + 1) || '<handler>';
  if (!(error instanceof Panic) && stack) console.error(`${message}\n${stack}`);
  console.error(`panicked at ${where}:\n${message}`);
  throw error;
}

function failure(error) {
  if (error instanceof Retry) {
    return { tag: 'retry', val: { reason: error.reason, delayMs: toU64(error.delayMs) } };
  }
  if (error instanceof Reject) return { tag: 'reject', val: error.reason };
  return crash(error);
}

/**
 * Makes `fn`, a function from Message to outputs (or a Promise of them), the plugin's handler:
 * `export const handle = handler(fn)`.
 */
export function handler(fn) {
  return async function handle(message) {
    let result;
    try {
      result = await fn(Message.fromWit(message));
    } catch (error) {
      throw failure(error);
    } finally {
      closeBuckets();
    }
    try {
      return outputsToWit(result);
    } catch (error) {
      throw failure(error);
    }
  };
}

/**
 * Makes `fn`, a function from an array of Messages to an array of answers (or a Promise of
 * one), one per message, in order, the plugin's batch handler:
 * `export const handleBatch = batchHandler(fn)`. An answer is the message's outputs, or a
 * `Retry` or `Reject` *returned* for it, which settles that message alone; one thrown answers
 * every message of the batch. The host uses batches under the manifest's `[batch]`; without
 * it the batch handler gets one message at a time.
 */
export function batchHandler(fn) {
  return async function handleBatch(messages) {
    const msgs = messages.map((m) => Message.fromWit(m));
    let answers;
    try {
      answers = Array.from(await fn(msgs));
    } catch (error) {
      const why = failure(error);
      return msgs.map(() => ({ tag: 'err', val: why }));
    } finally {
      closeBuckets();
    }
    if (answers.length !== msgs.length) {
      crash(new TypeError(`a batch handler returns one answer per message: ${answers.length} for ${msgs.length}`));
    }
    return answers.map((answer) => {
      if (answer instanceof Retry || answer instanceof Reject) {
        return { tag: 'err', val: failure(answer) };
      }
      try {
        return { tag: 'ok', val: outputsToWit(answer) };
      } catch (error) {
        return crash(error);
      }
    });
  };
}

/** The WIT failure a per-message handler threw, or null for a crash. */
function thrownFailure(error) {
  return error && (error.tag === 'retry' || error.tag === 'reject') ? error : null;
}

/**
 * The `handle-batch` export of an app that exports only `handle`: `handle` on each message in
 * turn. Used by componentize.mjs; not for apps.
 */
export function eachOf(handle) {
  return async function handleBatch(messages) {
    const results = [];
    for (const message of messages) {
      try {
        results.push({ tag: 'ok', val: await handle(message) });
      } catch (error) {
        const why = thrownFailure(error);
        if (why === null) throw error;
        results.push({ tag: 'err', val: why });
      }
    }
    return results;
  };
}

/**
 * The `handle` export of an app that exports only `handleBatch`: a batch of one. Used by
 * componentize.mjs; not for apps.
 */
export function oneOf(handleBatch) {
  return async function handle(message) {
    const [result] = await handleBatch([message]);
    if (result.tag === 'err') throw result.val;
    return result.val;
  };
}
