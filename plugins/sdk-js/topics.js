// The route's topics beyond this node's subscribers (contract 0.2.0's `topics`; no grant needed):
// history positions, recovering subscriptions, presence on every node of a cluster. For a plugin
// built for the world `topics-plugin` of wit/platform/, which imports `topics` and exports
// `presence-handler` (definePlugin's `onPresence`). See the server's README, "Topics".
//
//   import { definePlugin, reply } from "./wsplug.js";
//   import { presenceCount } from "./topics.js";
//
//   export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
//     onMessage(conn, msg) { return [reply(`${presenceCount("lobby")} here`)]; },
//     onPresence(events) { ...; return []; },
//   });

import topics from "wsplug:plugin/topics@0.2.0";

/** The reason of a refused call, as an Error (componentize-qjs throws the WIT error value). */
const refused = (what, e) => new Error(`${what}: ${e instanceof Error ? e.message : e?.payload ?? e}`);

/** The newest position of `topic`'s history on this node (`{ epoch, offset }`), or null. */
export function lastPosition(topic) {
  return topics.lastPosition(String(topic)) ?? null;
}

/**
 * Subscribes `conn` to `topic`, first sending it what it missed since `since` (`{ epoch, offset }`):
 * a notice, then the messages in order. Takes effect when the call succeeds, after its actions.
 */
export function subscribeFrom(conn, topic, since) {
  try {
    topics.subscribeFrom(conn, String(topic), { epoch: String(since.epoch), offset: since.offset });
  } catch (e) {
    throw refused(`subscribeFrom(${JSON.stringify(topic)})`, e);
  }
}

/** Connections subscribed to `topic` on every node (as of the last presence report). */
export function presenceCount(topic) {
  return topics.presenceCount(String(topic));
}

/**
 * Who is subscribed to `topic` on every node (`[{ node, connection }]`, sorted, at most `limit`).
 * Throws an Error saying why not (presence off or count-only, or more than `limit`).
 */
export function presenceMembers(topic, limit = 10000) {
  try {
    return topics.presenceMembers(String(topic), limit);
  } catch (e) {
    throw refused(`presenceMembers(${JSON.stringify(topic)})`, e);
  }
}
