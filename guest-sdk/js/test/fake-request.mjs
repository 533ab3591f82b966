// A stand-in for natsplug:plugin/request: records each request and answers with state.respond.
import { state } from './fake-host.mjs';

export function send(subject, headers, payload, timeoutMs) {
  const request = { subject, headers, payload, timeoutMs };
  state.requests.push(request);
  return state.respond(request);
}
