// A stand-in for wasi:keyvalue (store, atomics, batch) and natsplug:plugin/kv over in-memory
// buckets (state.buckets). Revisions are per bucket, as a NATS KV stream's sequence: every
// write takes the next one. list-keys pages by state.pageSize, its cursor an offset.
import { state, witError } from './fake-host.mjs';

const disposeSymbol = Symbol.dispose ?? Symbol.for('dispose');
const u64 = (n) => BigInt.asUintN(64, BigInt(n));

function check() {
  const failure = state.kvFailure;
  if (failure !== undefined) {
    state.kvFailure = undefined;
    throw witError(failure);
  }
}

function write(store, key, value) {
  store.seq += 1;
  store.entries.set(key, { value: Uint8Array.from(value), revision: BigInt(store.seq) });
  return BigInt(store.seq);
}

export class Bucket {
  #name;
  #store;
  constructor(name, store) {
    this.#name = name;
    this.#store = store;
  }
  get store() {
    return this.#store;
  }
  get(key) {
    check();
    return this.#store.entries.get(key)?.value;
  }
  set(key, value) {
    check();
    write(this.#store, key, value);
  }
  delete(key) {
    check();
    this.#store.entries.delete(key);
  }
  exists(key) {
    check();
    return this.#store.entries.has(key);
  }
  listKeys(cursor) {
    check();
    const keys = [...this.#store.entries.keys()];
    const from = cursor === undefined ? 0 : Number(cursor);
    const to = from + state.pageSize;
    return { keys: keys.slice(from, to), cursor: to < keys.length ? u64(to) : undefined };
  }
  [disposeSymbol]() {
    state.dropped.push(this.#name);
  }
}

export function open(name) {
  check();
  if (state.deniedBuckets.has(name)) throw witError({ tag: 'access-denied' });
  const store = state.buckets.get(name);
  if (store === undefined) throw witError({ tag: 'no-such-store' });
  return new Bucket(name, store);
}

export function increment(bucket, key, delta) {
  check();
  if (typeof delta !== 'bigint') throw new TypeError('delta is a u64 BigInt');
  const old = bucket.store.entries.get(key);
  const text = old === undefined ? '0' : new TextDecoder().decode(old.value);
  if (!/^[0-9]+$/.test(text)) throw witError({ tag: 'other', val: `${key} is not a counter` });
  const next = u64(BigInt(text) + delta);
  write(bucket.store, key, new TextEncoder().encode(String(next)));
  return next;
}

export function getMany(bucket, keys) {
  check();
  return keys.map((k) => {
    const e = bucket.store.entries.get(k);
    return e === undefined ? undefined : [k, e.value];
  });
}

export function setMany(bucket, keyValues) {
  check();
  for (const [k, v] of keyValues) write(bucket.store, k, v);
}

export function deleteMany(bucket, keys) {
  check();
  for (const k of keys) bucket.store.entries.delete(k);
}

export function getEntry(bucket, key) {
  check();
  const e = bucket.store.entries.get(key);
  return e === undefined ? undefined : { value: e.value, revision: e.revision };
}

export function compareAndSwap(bucket, key, value, revision) {
  if (state.kvFailure !== undefined) {
    const failure = state.kvFailure;
    state.kvFailure = undefined;
    throw witError({ tag: 'store', val: failure });
  }
  if (typeof revision !== 'bigint') throw new TypeError('revision is a u64 BigInt');
  const current = bucket.store.entries.get(key)?.revision ?? 0n;
  if (current !== revision) throw witError({ tag: 'conflict' });
  return write(bucket.store, key, value);
}
