// Maps the component's imports to stand-ins (see fake-host.mjs), so the SDK and the example
// plugins run under Node.
const fakes = {
  'natsplug:plugin/host@0.1.0': './fake-host.mjs',
  'natsplug:plugin/request@0.1.0': './fake-request.mjs',
  'natsplug:plugin/kv@0.1.0': './fake-kv.mjs',
  'wasi:keyvalue/store@0.2.0-draft': './fake-kv.mjs',
  'wasi:keyvalue/atomics@0.2.0-draft': './fake-kv.mjs',
  'wasi:keyvalue/batch@0.2.0-draft': './fake-kv.mjs',
};

export async function resolve(specifier, context, next) {
  if (Object.hasOwn(fakes, specifier)) {
    return { url: new URL(fakes[specifier], import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
