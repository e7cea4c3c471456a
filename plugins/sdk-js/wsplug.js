// The wsplug SDK for JavaScript and TypeScript plugins (componentize-qjs): the JavaScript side of
// what the Rust SDK (plugins/sdk) gives a Rust plugin.
//
//   import { definePlugin, reply, text, log } from "./wsplug.js";
//
//   export const { handler, state, batch, timerHandler, presenceHandler } = definePlugin({
//     onMessage(conn, msg) {
//       return msg.tag === "text" ? [reply(text(msg.val.toUpperCase()))] : [reply(msg)];
//     },
//   });
//
// It brings:
// - `definePlugin`: the contract's `handler` and `state` exports from an object that defines only
//   what it needs (`onMessage`; `onOpen` admits everyone, `onClose` does nothing, `snapshot` and
//   `restore` hand nothing over), and that checks what each handler returns: a wrongly shaped
//   action is reported as `onMessage returned a wrong shape: action 1 (send): field "to": ...`,
//   not as the component model's bare conversion error;
// - constructors for messages, actions and admissions (`text`, `reply`, `publish`, `accept`, ...);
// - `console` (log, info, warn, error, debug), which goes to the server's log through the host's
//   `log` import, and `log` itself;
// - `json`/`parseJson` for JSON over text messages, and `queryParam` for the request's query.
//
// Types: wsplug.d.ts (and contract.d.ts, generated from wit/wsplug.wit).

import host from "wsplug:plugin/host@0.1.0";

// ---- Logging ----

const format = (args) =>
  args
    .map((a) => {
      if (typeof a === "string") return a;
      if (a instanceof Error) return a.stack ? `${a}\n${a.stack}` : String(a);
      try {
        const s = JSON.stringify(a);
        return s === undefined ? String(a) : s;
      } catch {
        return String(a);
      }
    })
    .join(" ");

/** Writes to the server's log at `level` ("trace", "debug", "info", "warn" or "error"). */
export function log(level, ...args) {
  host.log(level, format(args));
}

// QuickJS has no `console`: this one writes to the server's log, tagged with the plugin's name.
if (typeof globalThis.console === "undefined") {
  globalThis.console = {
    log: (...args) => log("info", ...args),
    info: (...args) => log("info", ...args),
    debug: (...args) => log("debug", ...args),
    trace: (...args) => log("trace", ...args),
    warn: (...args) => log("warn", ...args),
    error: (...args) => log("error", ...args),
  };
}

// ---- Messages, targets, actions, admissions ----

/** A text message. */
export const text = (s) => ({ tag: "text", val: String(s) });
/** A binary message (a Uint8Array, or an array of byte values). */
export const binary = (bytes) => ({ tag: "binary", val: bytes instanceof Uint8Array ? bytes : Uint8Array.from(bytes) });
/** A text message holding `value` as JSON. */
export const json = (value) => text(JSON.stringify(value));

/** A message given as a string is a text message. */
const message = (m) => (typeof m === "string" ? text(m) : m);

/** Sends `msg` (a message, or a string for text) back to the connection of the event. */
export const reply = (msg) => ({ tag: "reply", val: message(msg) });
/** Sends `msg` to every connection of the route, the sender included. */
export const broadcast = (msg) => ({ tag: "broadcast", val: message(msg) });
/** Sends `msg` to `to`, a target: see `connection`, `everyone`, `others`, `topic`. */
export const send = (to, msg) => ({ tag: "send", val: { to, message: message(msg) } });
/** Sends `msg` to the connection `id`. */
export const sendTo = (id, msg) => send(connection(id), msg);
/** Sends `msg` to every subscriber of `name`. */
export const publish = (name, msg) => send(topic(name), msg);
/** Subscribes the connection of the event to the topic `name`. */
export const subscribe = (name) => ({ tag: "subscribe", val: String(name) });
/** Unsubscribes the connection of the event from the topic `name`. */
export const unsubscribe = (name) => ({ tag: "unsubscribe", val: String(name) });
/** Closes the connection of the event with `code` (1000, or 3000-4999) and `reason`. */
export const close = (code = 1000, reason = "") => ({ tag: "close", val: { code, reason } });

/** Targets of `send`. */
export const sender = () => ({ tag: "sender" });
export const connection = (id) => ({ tag: "connection", val: id });
export const everyone = () => ({ tag: "everyone" });
export const others = () => ({ tag: "others" });
export const topic = (name) => ({ tag: "topic", val: String(name) });

/** Admits the connection, with a subprotocol (or null) and actions to carry out at once. */
export const accept = ({ subprotocol = null, actions = [] } = {}) => ({
  tag: "accept",
  val: { subprotocol, actions },
});
/** Refuses the connection with an HTTP status (400-599) and a body. */
export const reject = (status, body = "") => ({ tag: "reject", val: { status, body } });

// ---- UTF-8, JSON and the query string ----

// QuickJS has no TextEncoder/TextDecoder: its native URI and base64 functions do the work, an
// order of magnitude faster than a loop over the bytes.

/** `s` in UTF-8, as a Uint8Array (what a binary message or a snapshot holds). */
export const encodeUtf8 = (s) => Uint8Array.fromBase64(btoa(unescape(encodeURIComponent(s))));

/** The string UTF-8 `bytes` hold; throws a URIError if they are not valid UTF-8. */
export const decodeUtf8 = (bytes) => decodeURIComponent(escape(atob(bytes.toBase64())));

/** The JSON value of a text message, or `undefined` if it is binary or not JSON. */
export function parseJson(msg) {
  if (!msg || msg.tag !== "text") return undefined;
  try {
    return JSON.parse(msg.val);
  } catch {
    return undefined;
  }
}

/** The value of the query parameter `name` in `path` (e.g. conn.path), decoded, or null. */
export function queryParam(path, name) {
  const q = path.indexOf("?");
  if (q < 0) return null;
  for (const pair of path.slice(q + 1).split("&")) {
    const eq = pair.indexOf("=");
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (decode(key) !== name) continue;
    return eq < 0 ? "" : decode(pair.slice(eq + 1));
  }
  return null;
}

function decode(s) {
  try {
    return decodeURIComponent(s.replace(/\+/g, " "));
  } catch {
    return s;
  }
}

// ---- Checking what a handler returns ----

const ACTIONS = ["reply", "broadcast", "send", "subscribe", "unsubscribe", "close"];
const TARGETS = ["sender", "connection", "everyone", "others", "topic"];

const describe = (v) => {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (v instanceof Uint8Array) return "a Uint8Array";
  if (typeof v === "string") return `a string (${JSON.stringify(v.length > 40 ? v.slice(0, 40) + "…" : v)})`;
  if (typeof v === "object") return `an object with keys ${JSON.stringify(Object.keys(v))}`;
  return `${typeof v === "undefined" ? "undefined" : `a ${typeof v}`}`;
};

class Shape extends Error {}
const wrong = (where, v, expected) => {
  throw new Shape(`${where}: expected ${expected}, got ${describe(v)}`);
};
const isObject = (v) => typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);

function checkVariant(where, v, cases) {
  if (!isObject(v)) wrong(where, v, `{ tag, val } with tag one of ${cases.join(", ")}`);
  if (!cases.includes(v.tag)) wrong(`${where}: field "tag"`, v.tag, `one of ${cases.map((c) => JSON.stringify(c)).join(", ")}`);
}

function checkString(where, v) {
  if (typeof v !== "string") wrong(where, v, "a string");
}

function checkInteger(where, v, min, max) {
  if (!Number.isInteger(v) || v < min || v > max) wrong(where, v, `an integer from ${min} to ${max}`);
}

function checkMessage(where, m) {
  checkVariant(where, m, ["text", "binary"]);
  if (m.tag === "text") checkString(`${where}: field "val" (text)`, m.val);
  else if (!(m.val instanceof Uint8Array)) wrong(`${where}: field "val" (binary)`, m.val, "a Uint8Array");
}

function checkTarget(where, t) {
  checkVariant(where, t, TARGETS);
  if (t.tag === "connection") checkInteger(`${where}: field "val" (connection id)`, t.val, 0, Number.MAX_SAFE_INTEGER);
  if (t.tag === "topic") checkString(`${where}: field "val" (topic)`, t.val);
}

function checkAction(where, a) {
  checkVariant(where, a, ACTIONS);
  where = `${where} (${a.tag})`;
  switch (a.tag) {
    case "reply":
    case "broadcast":
      return checkMessage(`${where}: field "val"`, a.val);
    case "send":
      if (!isObject(a.val)) wrong(`${where}: field "val"`, a.val, "{ to, message }");
      checkTarget(`${where}: field "to"`, a.val.to);
      return checkMessage(`${where}: field "message"`, a.val.message);
    case "subscribe":
    case "unsubscribe":
      return checkString(`${where}: field "val" (topic)`, a.val);
    case "close":
      if (!isObject(a.val)) wrong(`${where}: field "val"`, a.val, "{ code, reason }");
      checkInteger(`${where}: field "code"`, a.val.code, 0, 65535);
      return checkString(`${where}: field "reason"`, a.val.reason);
  }
}

function checkActions(where, actions) {
  if (!Array.isArray(actions)) wrong(where, actions, "an array of actions (e.g. [reply(text(\"hi\"))])");
  actions.forEach((a, i) => checkAction(`action ${i}`, a));
  return actions;
}

function checkAdmission(admission) {
  checkVariant("admission", admission, ["accept", "reject"]);
  const val = admission.val;
  if (!isObject(val)) wrong(`admission (${admission.tag}): field "val"`, val, "an object (use accept() or reject())");
  if (admission.tag === "reject") {
    checkInteger('admission (reject): field "status"', val.status, 0, 65535);
    checkString('admission (reject): field "body"', val.body);
  } else {
    if (val.subprotocol !== null && val.subprotocol !== undefined) {
      checkString('admission (accept): field "subprotocol"', val.subprotocol);
    }
    checkActions('admission (accept): field "actions"', val.actions);
  }
  return admission;
}

/** Runs a handler; a wrongly shaped result becomes an error that says where the shape is wrong. */
function checked(name, check, fn) {
  return (...args) => {
    const result = fn(...args);
    try {
      return check(result ?? (name === "onOpen" ? accept() : []));
    } catch (e) {
      if (e instanceof Shape) throw new TypeError(`${name} returned a wrong shape: ${e.message}`);
      throw e;
    }
  };
}

/**
 * The contract's exports from `plugin`: `{ onOpen?, onMessage, onClose?, snapshot?, restore?,
 * onTimer?, onPresence? }`. Export all it returns (a world takes what it has; a world of wit/platform/ needs
 * `batch`, or pipelined messages go unanswered): `export const { handler, state, batch,
 * timerHandler, presenceHandler } = definePlugin({ ... })`.
 */
export function definePlugin(plugin) {
  if (!plugin || typeof plugin.onMessage !== "function") {
    throw new TypeError("definePlugin: the plugin needs an onMessage(conn, msg) function");
  }
  const onOpen = plugin.onOpen ? plugin.onOpen.bind(plugin) : () => accept();
  const onClose = plugin.onClose ? plugin.onClose.bind(plugin) : () => [];
  const onTimer = plugin.onTimer ? plugin.onTimer.bind(plugin) : () => [];
  const onPresence = plugin.onPresence ? plugin.onPresence.bind(plugin) : () => [];
  return {
    // The world `topics-plugin` (topics.js) exports it.
    presenceHandler: {
      onPresence: checked("onPresence", (r) => checkActions("the result", r), onPresence),
    },
    // Contract 0.2.0 (a plugin built for a world of wit/platform/ exports it; see platform.js).
    timerHandler: {
      onTimer: checked("onTimer", (r) => checkActions("the result", r), onTimer),
    },
    // The worlds of wit/platform/ include `batched-plugin`, whose `batch` must be exported:
    // pipelined messages, each handed to onMessage in order.
    batch: {
      onMessages: checked(
        "onMessage",
        (r) => checkActions("the result", r),
        (conn, msgs) => msgs.flatMap((msg) => plugin.onMessage(conn, msg)),
      ),
    },
    handler: {
      onOpen: checked("onOpen", checkAdmission, onOpen),
      onMessage: checked("onMessage", (r) => checkActions("the result", r), plugin.onMessage.bind(plugin)),
      onClose: checked("onClose", (r) => checkActions("the result", r), onClose),
    },
    state: {
      snapshot() {
        if (!plugin.snapshot) return new Uint8Array();
        const s = plugin.snapshot();
        return typeof s === "string" ? encodeUtf8(s) : s;
      },
      restore(bytes) {
        // Throwing a string refuses the snapshot (the old version keeps serving).
        if (!plugin.restore) return;
        try {
          plugin.restore(bytes);
        } catch (e) {
          throw e instanceof Error ? e.message : String(e);
        }
      },
    },
  };
}
