export async function resolve(specifier, context, next) {
  if (specifier === 'natsplug:plugin/host@0.1.0') {
    return { url: new URL('./fake-host.mjs', import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
