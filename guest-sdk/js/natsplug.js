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
//
// Build with componentize-js against the natsplug WIT (scripts/build-guests.sh does it) and try
// it offline with `natsplug call app.wasm --subject S --payload TEXT`.
//
// Numbers: u64/s64 fields of the contract (Delivery's) are BigInts; `msg.delivered` is a Number.
// `./rust.js` reproduces Rust's string and number semantics, for ports of Rust plugins that must
// answer byte for byte the same.

import {
  config as hostConfig,
  inProgress as hostInProgress,
  log as hostLog,
  publish as hostPublish,
} from 'natsplug:plugin/host@0.1.0';

const encoder = new TextEncoder();
// ignoreBOM: keep a leading U+FEFF, as Rust's str::from_utf8 does. fatal: throw on invalid
// UTF-8 (checked once here, at build-time initialisation; else the JS loop below validates).
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const decoderIsStrict = (() => {
  try {
    decoder.decode(new Uint8Array([0xff]));
    return false;
  } catch {
    return true;
  }
})();

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

/** The payload is not valid UTF-8. The message is the Rust SDK's, word for word. */
export class Utf8Error extends Error {
  constructor(validUpTo, errorLen) {
    super(
      errorLen === undefined
        ? `incomplete utf-8 byte sequence from index ${validUpTo}`
        : `invalid utf-8 sequence of ${errorLen} bytes from index ${validUpTo}`,
    );
    this.name = 'Utf8Error';
    this.validUpTo = validUpTo;
    this.errorLen = errorLen;
  }
}

/** Where `bytes` stops being UTF-8, as Rust's `str::from_utf8` reports it; null when valid. */
function utf8Error(bytes) {
  const n = bytes.length;
  let i = 0;
  while (i < n) {
    const first = bytes[i];
    if (first < 0x80) {
      i += 1;
      continue;
    }
    const width = first >= 0xc2 && first <= 0xdf ? 2
      : first >= 0xe0 && first <= 0xef ? 3
        : first >= 0xf0 && first <= 0xf4 ? 4 : 0;
    if (width === 0) return new Utf8Error(i, 1);
    if (i + 1 >= n) return new Utf8Error(i, undefined);
    const second = bytes[i + 1];
    let low = 0x80;
    let high = 0xbf;
    if (first === 0xe0) low = 0xa0;
    else if (first === 0xed) high = 0x9f;
    else if (first === 0xf0) low = 0x90;
    else if (first === 0xf4) high = 0x8f;
    if (second < low || second > high) return new Utf8Error(i, 1);
    for (let k = 2; k < width; k += 1) {
      if (i + k >= n) return new Utf8Error(i, undefined);
      if (bytes[i + k] < 0x80 || bytes[i + k] > 0xbf) return new Utf8Error(i, k);
    }
    i += width;
  }
  return null;
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

  /** The payload as UTF-8 text; throws Utf8Error when it is not. */
  payloadStr() {
    if (decoderIsStrict) {
      try {
        return decoder.decode(this.payload);
      } catch {
        throw utf8Error(this.payload) ?? new Utf8Error(0, 1);
      }
    }
    const error = utf8Error(this.payload);
    if (error !== null) throw error;
    return decoder.decode(this.payload);
  }

  /** The payload as UTF-8 text; invalid UTF-8 rejects the message (throws Reject), with the
   * reason the Rust SDK's `payload_str().map_err(Error::reject)?` gives. */
  text() {
    try {
      return this.payloadStr();
    } catch (e) {
      if (e instanceof Utf8Error) throw new Reject(e.message);
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
