// Maps the host interface import to a stand-in, so the SDK and the example plugins run under
// Node: node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/natsplug.test.mjs
import { register } from 'node:module';

register(new URL('./hooks.mjs', import.meta.url));
