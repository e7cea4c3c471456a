// Types of the wsplug SDK for JavaScript and TypeScript (wsplug.js). The contract's own types
// (Message, Action, Connection, ...) are in contract.d.ts, generated from wit/wsplug.wit.

import type {
  Action,
  Admission,
  CloseFrame,
  Connection,
  ConnectionId,
  Handler,
  Level,
  Message,
  State,
  Target,
} from "./contract.js";

export type * from "./contract.js";

/** What a plugin defines: only `onMessage` is required. */
export interface PluginDefinition {
  /** A connection asks to open (default: admit it, with no subprotocol and no actions). */
  onOpen?(conn: Connection): Admission;
  /** A message arrived on `conn`. */
  onMessage(conn: ConnectionId, msg: Message): Action[];
  /** `conn` has closed (default: nothing to do). */
  onClose?(conn: ConnectionId, code: number, reason: string): Action[];
  /** The state to hand over to the next version on a hot reload (default: nothing). */
  snapshot?(): Uint8Array | string;
  /** Takes over a snapshot of the previous version; throw to refuse it (default: ignore it). */
  restore?(snapshot: Uint8Array): void;
  /** A timer set with platform.js's setTimer is due (contract 0.2.0; default: nothing). */
  onTimer?(name: string): Action[];
  /** Presence changed on the route's topics (topics.js; `[routes.topics] presence`; default: nothing). */
  onPresence?(events: import("./topics.js").PresenceEvent[]): Action[];
}

/**
 * The contract's exports, checked. Export all of them (a world takes what it has, the rest is
 * ignored): `export const { handler, state, batch, timerHandler, presenceHandler } =
 * definePlugin({ ... })`. A world of wit/platform/ exports `batch`: a plugin that left it out
 * would not answer pipelined messages.
 */
export function definePlugin(plugin: PluginDefinition): {
  handler: Handler;
  state: State;
  batch: { onMessages(conn: ConnectionId, msgs: Message[]): Action[] };
  timerHandler: { onTimer(name: string): Action[] };
  presenceHandler: { onPresence(events: import("./topics.js").PresenceEvent[]): Action[] };
};

/** Writes to the server's log. `console.log` and friends do the same. */
export function log(level: Level, ...args: unknown[]): void;

export function text(s: string): Message;
export function binary(bytes: Uint8Array | ArrayLike<number>): Message;
/** A text message holding `value` as JSON. */
export function json(value: unknown): Message;

/** Sends `msg` (a string is a text message) back to the connection of the event. */
export function reply(msg: Message | string): Action;
/** Sends `msg` to every connection of the route, the sender included. */
export function broadcast(msg: Message | string): Action;
export function send(to: Target, msg: Message | string): Action;
export function sendTo(id: ConnectionId, msg: Message | string): Action;
/** Sends `msg` to every subscriber of the topic `name`. */
export function publish(name: string, msg: Message | string): Action;
export function subscribe(name: string): Action;
export function unsubscribe(name: string): Action;
/** Closes the connection of the event: `code` is 1000 or 3000-4999. */
export function close(code?: number, reason?: string): Action & { val: CloseFrame };

export function sender(): Target;
export function connection(id: ConnectionId): Target;
export function everyone(): Target;
export function others(): Target;
export function topic(name: string): Target;

export function accept(options?: { subprotocol?: string | null; actions?: Action[] }): Admission;
/** Refuses the connection with an HTTP status (400-599) and a body. */
export function reject(status: number, body?: string): Admission;

export function encodeUtf8(s: string): Uint8Array;
/** Throws a URIError if `bytes` are not valid UTF-8. */
export function decodeUtf8(bytes: Uint8Array): string;
/** The JSON value of a text message, or `undefined` if it is binary or not JSON. */
export function parseJson(msg: Message): unknown;
/** The decoded value of the query parameter `name` in `path` (e.g. `conn.path`), or null. */
export function queryParam(path: string, name: string): string | null;

declare global {
  /** The SDK's `console` (QuickJS has none): each call is one line in the server's log. */
  interface Console {
    log(...args: unknown[]): void;
    info(...args: unknown[]): void;
    debug(...args: unknown[]): void;
    trace(...args: unknown[]): void;
    warn(...args: unknown[]): void;
    error(...args: unknown[]): void;
  }
  var console: Console;
}
