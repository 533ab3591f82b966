// A stand-in for the host interface the component imports, and the state every stand-in
// (fake-request.mjs, fake-kv.mjs) shares with the tests.
export const state = {
  logs: [],
  config: {},
  published: [],
  refuse: '',
  /** Every request sent: { subject, headers, payload, timeoutMs }. */
  requests: [],
  /** Answers a request: returns { headers, payload } or throws witError(variant). */
  respond: () => ({ headers: [], payload: new Uint8Array(0) }),
  /** The KV buckets that exist: name -> { seq, entries: Map(key -> { value, revision }) }. */
  buckets: new Map(),
  /** Bucket names `open` refuses with access-denied. */
  deniedBuckets: new Set(),
  /** Keys per page of list-keys. */
  pageSize: 2,
  /** When set, the next KV call throws this store error ({ tag, val }). */
  kvFailure: undefined,
  /** Buckets dropped, by name. */
  dropped: [],
};

/** What a jco import binding throws for an `err` result: an Error with the variant as `payload`. */
export function witError(payload) {
  const enumerable = typeof payload !== 'string';
  const error = new Error(enumerable ? `${String(payload)} (see error.payload)` : payload);
  Object.defineProperty(error, 'payload', { value: payload, enumerable });
  return error;
}

export function log(level, message) {
  state.logs.push([level, message]);
}
export function inProgress() {}
export function publish(output) {
  if (state.refuse) throw witError(state.refuse);
  state.published.push(output);
}
export function config(key) {
  return state.config[key];
}
