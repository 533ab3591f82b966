// Maps the interfaces the component imports to stand-ins (hooks.mjs), so the SDK and the
// example plugins run under Node: node --import ./guest-sdk/js/test/register.mjs --test guest-sdk/js/test/natsplug.test.mjs
import { register } from 'node:module';

register(new URL('./hooks.mjs', import.meta.url));
