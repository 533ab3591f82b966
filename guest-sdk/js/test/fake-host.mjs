// A stand-in for the host interface the component imports.
export const state = { logs: [], config: {}, published: [], refuse: '' };

export function log(level, message) {
  state.logs.push([level, message]);
}
export function inProgress() {}
export function publish(output) {
  if (state.refuse) throw Object.assign(new Error(state.refuse), { payload: state.refuse });
  state.published.push(output);
}
export function config(key) {
  return state.config[key];
}
