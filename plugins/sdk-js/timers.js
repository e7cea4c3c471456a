// Timers of the instance (contract 0.2.0's `timers`; the route must grant `timers = true`): for a
// plugin built for a world of wit/platform/ that imports them (`timed-plugin`, `platform-plugin`).
// What a call sets or cancels takes effect when it succeeds; a timer fires as `onTimer(name)` of
// definePlugin.

import timers from "wsplug:plugin/timers@0.2.0";

/** The reason of a refused call, as an Error (componentize-qjs throws the WIT error value). */
const refused = (what, e) => new Error(`${what}: ${e instanceof Error ? e.message : e?.payload ?? e}`);

/**
 * Sets the timer `name` (replacing one of that name): `onTimer(name)` after `afterMs`, then every
 * `everyMs` if given. Throws an Error saying why not (a bad name or delay, the route's max_timers).
 */
export function setTimer(name, afterMs, everyMs = null) {
  try {
    timers.set(name, afterMs, everyMs);
  } catch (e) {
    throw refused(`setTimer(${JSON.stringify(name)})`, e);
  }
}

/** Cancels the timer `name`, if set. */
export function cancelTimer(name) {
  timers.cancel(name);
}

/** The names of the instance's timers, sorted. */
export function timerNames() {
  return timers.names();
}
