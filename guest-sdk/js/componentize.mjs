#!/usr/bin/env node
// Builds a natsplug plugin component from a JavaScript app with componentize-js:
//
//     node guest-sdk/js/componentize.mjs APP.js OUT.wasm
//
// The app and this SDK must both be under the repository root: componentize-js maps the current
// directory into the build sandbox, so the app's relative imports of guest-sdk/js/ resolve. The
// `jco componentize` CLI is not used: it fails on the WIT path here ("failed to get path
// metadata"), while the library call works. The fetch-event feature (an HTTP server's export) is
// always disabled. The http feature (`fetch`, through an import of wasi:http/outgoing-handler)
// is enabled only for an app whose manifest, the NAME.toml beside it (NAME its folder), has an
// `[http]` table, so a plugin without that grant does not import wasi:http at all.
//
// componentize-js is loaded from $GUEST_NODE_MODULES, else <root>/.tools/node/node_modules
// (scripts/setup.sh installs it there).
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const [source, output] = process.argv.slice(2);
if (!source || !output) {
  console.error('usage: node guest-sdk/js/componentize.mjs APP.js OUT.wasm');
  process.exit(2);
}
const modules = process.env.GUEST_NODE_MODULES ?? join(root, '.tools', 'node', 'node_modules');
const entry = join(modules, '@bytecodealliance', 'componentize-js', 'src', 'componentize.js');
const { componentize } = await import(pathToFileURL(entry).href);

// Every plugin is built against the `batch-plugin` world: an entry module beside the build's
// output exports the app's `handle` and `handleBatch`, making whichever the app leaves out from
// the other (the SDK's `eachOf` and `oneOf`).
const app = resolve(source);
const out = resolve(output);
const entryDir = join(root, 'target', 'guests', 'entries');
await mkdir(entryDir, { recursive: true });
const sourcePath = join(entryDir, `${basename(dirname(app))}-${basename(app)}`);
const from = (path) => {
  const rel = relative(entryDir, path).split(sep).join('/');
  return rel.startsWith('.') ? rel : `./${rel}`;
};

/** Whether a manifest has an `[http]` table (or a sub-table of it): a line `[http]` or
 * `[http.x]`, comments and blanks around it allowed. Enough for the manifests here; a full TOML
 * parser would also see `http = { ... }`, which the host's manifest format does not use. */
function grantsHttp(toml) {
  return toml.split(/\r?\n/).some((line) => /^\s*\[\s*http\s*[\].]/.test(line));
}

const manifest = join(dirname(app), `${basename(dirname(app))}.toml`);
const http = grantsHttp(await readFile(manifest, 'utf8').catch(() => ''));
if (http) {
  console.error(`componentize: fetch enabled (wasi:http), for the [http] of ${relative(root, manifest)}`);
}
// Without the http feature the engine still has a `fetch`, and calling it traps (`unreachable`
// in a wasi:http stub), which no try/catch sees. Replace it, before the app's modules run, with
// one that rejects like a network error and says why.
const noFetch = join(entryDir, 'no-fetch.js');
if (!http) {
  await writeFile(
    noFetch,
    `globalThis.fetch = async function fetch() {
  throw new TypeError('fetch is not enabled for this plugin: its manifest has no [http] section');
};
`,
  );
}
await writeFile(
  sourcePath,
  `${http ? '' : `import '${from(noFetch)}';\n`}import * as app from '${from(app)}';
import { eachOf, oneOf } from '${from(join(root, 'guest-sdk', 'js', 'natsplug.js'))}';
if (!app.handle && !app.handleBatch) throw new Error('the app exports neither handle nor handleBatch');
export const handle = app.handle ?? oneOf(app.handleBatch);
export const handleBatch = app.handleBatch ?? eachOf(app.handle);
`,
);
process.chdir(root);
const { component } = await componentize({
  sourcePath,
  witPath: join(root, 'guest-sdk', 'wit'),
  worldName: 'batch-plugin',
  disableFeatures: http ? ['fetch-event'] : ['http', 'fetch-event'],
});
await writeFile(out, component);
