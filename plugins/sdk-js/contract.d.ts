// The plugin contract (wsplug:plugin@0.1.0, world `stateful-plugin`) as componentize-qjs presents it to JavaScript.
// Generated from the WIT by `wsplug-c-tools ts-types`: do not edit.

export type Level = "trace" | "debug" | "info" | "warn" | "error";

/**
 * Identifies a live connection for as long as it is open. Unique per server process; never
 * reused.
 */
export type ConnectionId = number;

/**
 * A complete WebSocket message. Text is guaranteed to be valid UTF-8 (the host closes with
 * 1007 before invalid text could reach a plugin).
 */
export type Message =
  | { tag: "text"; val: string }
  | { tag: "binary"; val: Uint8Array };

/**
 * What the host knows of a connection when it asks to open.
 */
export interface Connection {
  id: ConnectionId;
  /**
   * The request target, with its query: e.g. "/chat?room=lobby&nick=ada".
   */
  path: string;
  /**
   * The request's headers, names lower-cased, in the order received.
   */
  headers: [string, string][];
  /**
   * The peer's socket address, e.g. "127.0.0.1:50312".
   */
  remoteAddr: string;
  /**
   * The subprotocols the client offered in Sec-WebSocket-Protocol, in its order.
   */
  protocols: string[];
  /**
   * True when the connection was already open and is being re-attached to a fresh instance:
   * after a reload (every connection, before the new version's first event), or after the
   * previous instance trapped (each connection just before its own next message; one that
   * only closes gets `on-close` alone). Its topic subscriptions were cleared: subscribe it
   * again from the plugin's state (the snapshot handed over, or the last checkpoint). A
   * resumed connection cannot be rejected any more: a `reject` answer closes it with 1008.
   */
  resumed: boolean;
}

/**
 * Where a message goes.
 */
export type Target =
  /**
   * The connection whose event is being handled.
   */
  | { tag: "sender" }
  /**
   * One connection on the same route.
   */
  | { tag: "connection"; val: ConnectionId }
  /**
   * Every open connection on the route, the sender included.
   */
  | { tag: "everyone" }
  /**
   * Every open connection on the route but the sender.
   */
  | { tag: "others" }
  /**
   * Every connection on the route subscribed to this topic.
   */
  | { tag: "topic"; val: string };

/**
 * A message for a target.
 */
export interface Outgoing {
  to: Target;
  message: Message;
}

/**
 * A close frame: `code` must be one an endpoint may send (1000, 1001, 1003, 1007-1011,
 * 3000-4999); `reason` at most 123 bytes of UTF-8.
 */
export interface CloseFrame {
  code: number;
  reason: string;
}

/**
 * An effect the plugin asks the host to carry out.
 */
export type Action =
  /**
   * Send a message to the sender. Same as `send(outgoing { to: sender, .. })`.
   */
  | { tag: "reply"; val: Message }
  /**
   * Send a message to every connection on the route, the sender included.
   */
  | { tag: "broadcast"; val: Message }
  /**
   * Send a message to a target.
   */
  | { tag: "send"; val: Outgoing }
  /**
   * Subscribe the sender to a topic (idempotent).
   */
  | { tag: "subscribe"; val: string }
  /**
   * Unsubscribe the sender from a topic (idempotent).
   */
  | { tag: "unsubscribe"; val: string }
  /**
   * Close the sender's connection with this close frame.
   */
  | { tag: "close"; val: CloseFrame };

/**
 * The plugin's answer to `on-open`: admit the connection ...
 */
export interface Acceptance {
  /**
   * The subprotocol to answer with; must be one the client offered (or none).
   */
  subprotocol: string | null;
  /**
   * Actions to carry out once the connection is open (a welcome message, subscriptions).
   */
  actions: Action[];
}

/**
 * ... or refuse it with an HTTP response.
 */
export interface Rejection {
  /**
   * An HTTP status from 400 to 599.
   */
  status: number;
  /**
   * The response body (text/plain).
   */
  body: string;
}

export type Admission =
  | { tag: "accept"; val: Acceptance }
  | { tag: "reject"; val: Rejection };

/**
 * What the host offers a plugin beyond WASI.
 */
export interface Host {
  /**
   * Write a line to the server's log, tagged with the plugin's name.
   */
  log(level: Level, message: string): void;
}

/**
 * Optional: state hand-over across versions of a plugin, used by hot reload.
 *
 * When a plugin file is replaced while the server runs, the host calls `snapshot` on the old
 * version (if it exports this interface) and `restore` on the new one (if it exports it) before
 * the new version sees any event; then every live connection is re-attached with `on-open`
 * (`resumed: true`). The bytes are the plugin's own format: version them, so that a new version
 * can read an older one's snapshot.
 *
 * The host also takes snapshots as checkpoints (every few seconds while events arrive, see the
 * route's `[routes.checkpoint]`) and, after a trap, restores the last one into the rebuilt
 * instance: a trap then loses only the events since that checkpoint.
 */
export interface State {
  /**
   * Everything the next version needs to carry on.
   */
  snapshot(): Uint8Array;
  /**
   * Loads a snapshot taken by an earlier version (possibly of a different format). An error
   * refuses the new version: the old one keeps serving, and the error is logged.
   */
  restore(snapshot: Uint8Array): void;
}

/**
 * The events a plugin handles.
 */
export interface Handler {
  /**
   * A client asks to open a WebSocket on the plugin's route (or an open connection is re-attached,
   * see `connection.resumed`).
   */
  onOpen(conn: Connection): Admission;
  /**
   * A complete message arrived from an admitted connection.
   */
  onMessage(conn: ConnectionId, msg: Message): Action[];
  /**
   * An admitted connection has closed: called exactly once per admitted connection. `code` is
   * the close code received from or sent to the peer, 1005 when the close frame had none, and
   * 1006 when the connection ended without a close handshake. Actions addressed to the closed
   * connection itself are ignored.
   */
  onClose(conn: ConnectionId, code: number, reason: string): Action[];
}
