// The platform of contract 0.2.0 for JavaScript and TypeScript plugins: timers and attachments.
// Import it only in a plugin built for a world of wit/platform/ (e.g. `platform-plugin`, with
// `--wit wit/platform`): a plugin of the 0.1.0 worlds cannot import these interfaces.
//
//   import { definePlugin, publish, text } from "./wsplug.js";
//   import { setTimer, attach, attached } from "./platform.js";
//
//   export const { handler, state, timerHandler } = definePlugin({
//     onOpen(conn) { setTimer("tick", 100, 100); ... },
//     onTimer(name) { return [publish("room", text("tick"))]; },
//   });
//
// The route must grant what the plugin imports (`[routes.grants] timers = true`,
// `attachments = true`), or the server refuses the plugin at load. What a call sets, cancels or
// attaches takes effect when the call succeeds.

import timers from "wsplug:plugin/timers@0.2.0";
import attachments from "wsplug:plugin/attachments@0.2.0";
import { decodeUtf8, encodeUtf8 } from "./wsplug.js";

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

/**
 * Attaches `value` (a string, stored as UTF-8, or a Uint8Array; at most 16 KiB) to the connection
 * `conn`, which the host keeps across reloads and rebuilds until it closes; "" removes it.
 */
export function attach(conn, value) {
  try {
    attachments.set(conn, typeof value === "string" ? encodeUtf8(value) : value);
  } catch (e) {
    throw refused(`attach(${conn})`, e);
  }
}

/** What `conn` has attached, as a Uint8Array, or null. */
export function attachment(conn) {
  return attachments.get(conn) ?? null;
}

/** What `conn` has attached, as a string (UTF-8), or null. */
export function attached(conn) {
  const bytes = attachment(conn);
  return bytes === null ? null : decodeUtf8(bytes);
}
