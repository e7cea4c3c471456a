// The chat plugin in JavaScript: chat rooms over the `chat.v1` subprotocol, speaking the same
// JSON protocol as the Rust chat plugin (plugins/chat/src/lib.rs, which documents it in full), so
// the browser demo (examples/static/index.html) works against either.
//
// Connect as `/chat?nick=ada&room=lobby` (both optional: `guest-<id>` and `lobby`). Send text
// lines: `/nick NEW`, `/join ROOM`, `/who`, or anything else to say it to the room. The server
// answers with JSON events `welcome`, `join`, `leave`, `presence`, `message`, `nick`, `members`,
// `error`. Rooms are topics of the host; each keeps its last 50 messages (at most 64 KiB; all
// rooms together at most 8 MiB) as history.
//
// Large rooms: naming every joiner to every member costs O(members²) in a join storm, so a room
// of more than 50 members names nobody. Instead of `join` and `leave`, its members get `presence`
// with the room's `count`, at most once a second, or at once when the count moved by an eighth
// since the last one; a change not announced yet goes out with the instance's next event. A
// `welcome` lists only the first 50 members (`count` says how many there are; `/who` lists them
// all). When the room shrinks back to 50, its members get the whole list again as `members`.
//
// Hand-over on reload: like the Rust plugin (it targets the world `stateful-plugin`), this one
// exports `state`, whose snapshot is the Rust chat's format, version 1 (plugins/chat/src/snapshot.rs):
// `{"version":1,"members":[{"id","nick","room"}],"history":{"ROOM":[{"nick","text"}]}}`. So a
// reload hands nicks, rooms and histories over to the next version, whether it is written in
// JavaScript, Python or Rust, and the host's checkpoints keep them across a trap. Each connection
// the restored state knows is then re-attached (`resumed`) silently: subscribed to its room again,
// with a `welcome` that says `"resumed": true` and lists the members, but no history and no `join`
// notice. One it does not know (a reload from a version without hand-over) is registered again
// from its query string, with the same `welcome` and no `join` notice either. The large-room
// bookkeeping is not in the snapshot: a restored large room announces its next change at once.
//
// Built with componentize-qjs (QuickJS). WIT variants are `{ tag, val }` objects, records are
// objects with camelCase keys, `option<T>` is a value or null, u64 ids are numbers.

import host from "wsplug:plugin/host@0.1.0";

/** The subprotocol this plugin speaks. */
const PROTOCOL = "chat.v1";
/** The room of a connection that names none. */
const DEFAULT_ROOM = "lobby";
/** The longest nick, in characters (code points). */
const MAX_NICK = 32;
/** The longest room name, in characters. */
const MAX_ROOM = 64;
/** The longest chat message, in bytes of UTF-8. */
const MAX_TEXT = 4096;
/** The most messages a room's history keeps. */
const HISTORY_LINES = 50;
/** The most bytes of nicks and text a room's history keeps, and of JSON a `welcome` carries. */
const HISTORY_BYTES = 64 * 1024;
/** How many rooms without members keep their history (the most recently emptied ones). */
const IDLE_HISTORIES = 32;
/**
 * The most bytes all rooms' histories keep together, so that many busy rooms cannot grow the
 * instance to its memory cap (a trap): past it, the largest history gives up its oldest lines.
 */
const TOTAL_HISTORY_BYTES = 8 << 20;
/**
 * A room of more than this many members announces presence as counts (`presence`), not nicks,
 * and its `welcome` lists only this many members.
 */
const LARGE_ROOM = 50;
/** How often a large room's `presence` goes out, at most (unless the count moved by an eighth), in ms. */
const PRESENCE_EVERY = 1000;

// ---- State: one instance sees every connection of its route, one call at a time. ----

// (`let`, not `const`: `state.restore` replaces them all at once.)
/** Admitted connections: id -> { nick, room }. */
let members = new Map();
/** Nicks in use, lower-cased, with their owners' ids (nicks are unique ignoring case). */
let nicks = new Map();
/** Each room's members' nicks. A room without members is removed. */
let rooms = new Map();
/** Each room's recent messages: room -> { lines: [{ nick, text }], bytes }. */
let histories = new Map();
/** Rooms with a history but without members, the longest empty first. */
let idle = [];
/**
 * Large rooms: the member count last announced and when: room -> { count, at } (not in the
 * snapshot: a restored large room announces its next change at once).
 */
let announced = new Map();
/** Large rooms whose count changed since it was last announced. */
let unannounced = new Set();

/** The whole state, to put back if a restore fails halfway. */
function saveState() {
  return { members, nicks, rooms, histories, idle, announced, unannounced };
}

function loadState(saved) {
  ({ members, nicks, rooms, histories, idle, announced, unannounced } = saved);
}

/** A fresh, empty state. */
function freshState() {
  return {
    members: new Map(),
    nicks: new Map(),
    rooms: new Map(),
    histories: new Map(),
    idle: [],
    announced: new Map(),
    unannounced: new Set(),
  };
}

/** Milliseconds on a monotonic clock (QuickJS's `performance.now()`, WASI's monotonic clock). */
const now = () => performance.now();

// ---- Text helpers ----

const WHITESPACE = /\p{White_Space}/u;
const BAD_NAME_CHAR = /[\p{White_Space}\p{Cc}]/u;
const TRIM = /^\p{White_Space}+|\p{White_Space}+$/gu;

/**
 * `s` as a "binary string" of its UTF-8 bytes, one character (U+0000 to U+00FF) per byte. QuickJS
 * has no TextEncoder; its native URI functions do this an order of magnitude faster than a loop.
 * (`s` never holds a lone surrogate: the host's strings are valid Unicode, and so are ours.)
 */
const utf8Binary = (s) => unescape(encodeURIComponent(s));

/** The length of `s` in bytes of UTF-8. */
const utf8Length = (s) => utf8Binary(s).length;

/**
 * `s` in UTF-8, as the Uint8Array a WIT `list<u8>` takes, by base64 (both ways are native: a loop
 * would take 100 ms a megabyte). `ascii`: the caller knows `s` is ASCII, which skips a step.
 */
const utf8Encode = (s, ascii) => Uint8Array.fromBase64(btoa(ascii ? s : utf8Binary(s)));

/** `value` as JSON; U+2028 and U+2029 are escaped too, for the sake of JavaScript parsers. */
function json(value) {
  return JSON.stringify(value).replace(/[\u2028\u2029]/g, (c) => "\\u" + c.charCodeAt(0).toString(16));
}

/** Compares strings by code point, the order the Rust plugin sorts nicks in. */
function byCodePoint(a, b) {
  const x = a[Symbol.iterator]();
  const y = b[Symbol.iterator]();
  for (;;) {
    const p = x.next();
    const q = y.next();
    if (p.done || q.done) return p.done === q.done ? 0 : p.done ? -1 : 1;
    const d = p.value.codePointAt(0) - q.value.codePointAt(0);
    if (d !== 0) return d;
  }
}

/** Decodes UTF-8 bytes; each maximal invalid subpart becomes U+FFFD. */
function utf8Decode(bytes) {
  let out = "";
  let i = 0;
  while (i < bytes.length) {
    const b = bytes[i];
    let need = 0;
    let cp = 0;
    let lo = 0x80;
    let hi = 0xbf;
    if (b < 0x80) {
      out += String.fromCharCode(b);
      i += 1;
      continue;
    } else if (b >= 0xc2 && b <= 0xdf) {
      need = 1;
      cp = b & 0x1f;
    } else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      cp = b & 0x0f;
      if (b === 0xe0) lo = 0xa0;
      if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      cp = b & 0x07;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f;
    } else {
      out += "\uFFFD";
      i += 1;
      continue;
    }
    let j = i + 1;
    let ok = true;
    for (let k = 0; k < need; k++, j++) {
      const c = bytes[j];
      if (j >= bytes.length || c < lo || c > hi) {
        ok = false;
        break;
      }
      cp = (cp << 6) | (c & 0x3f);
      lo = 0x80;
      hi = 0xbf;
    }
    out += ok ? String.fromCodePoint(cp) : "\uFFFD";
    i = j;
  }
  return out;
}

/** Decodes a query component as HTML forms do: `+` is a space, `%XX` a byte (kept if malformed). */
function percentDecode(s) {
  const bytes = [];
  const hex = (c) => (c !== undefined && /^[0-9a-fA-F]$/.test(c) ? parseInt(c, 16) : -1);
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === "+") {
      bytes.push(0x20);
    } else if (c === "%" && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      bytes.push(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      // Re-encode the character itself as UTF-8.
      const cp = s.codePointAt(i);
      if (cp > 0xffff) i += 1;
      if (cp < 0x80) bytes.push(cp);
      else if (cp < 0x800) bytes.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
      else if (cp < 0x10000) bytes.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
      else bytes.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    }
  }
  return utf8Decode(bytes);
}

/** The first value of query parameter `name` in the request target `path`, decoded, or null. */
function queryParam(path, name) {
  let target = path;
  const hash = target.indexOf("#");
  if (hash >= 0) target = target.slice(0, hash);
  const q = target.indexOf("?");
  if (q < 0) return null;
  for (const piece of target.slice(q + 1).split("&")) {
    if (piece === "") continue;
    const eq = piece.indexOf("=");
    const [n, v] = eq >= 0 ? [piece.slice(0, eq), piece.slice(eq + 1)] : [piece, ""];
    if (percentDecode(n) === name) return percentDecode(v);
  }
  return null;
}

/** Checks a nick or room name: 1 to `max` characters, no whitespace or control characters. */
function checkName(what, name, max) {
  const count = [...name].length;
  if (count === 0 || count > max || BAD_NAME_CHAR.test(name)) {
    return `a ${what} must be 1 to ${max} characters, without spaces or control characters`;
  }
  return null;
}

// ---- Actions and events ----

const text = (s) => ({ tag: "text", val: s });
const reply = (s) => ({ tag: "reply", val: text(s) });
const toRoom = (room, s) => ({ tag: "send", val: { to: { tag: "topic", val: room }, message: text(s) } });
const subscribe = (room) => ({ tag: "subscribe", val: room });
const unsubscribe = (room) => ({ tag: "unsubscribe", val: room });
const joinEvent = (type, nick, room) => json({ type, nick, room });
const error = (message) => reply(json({ type: "error", text: message }));

function log(level, message) {
  host.log(level, message);
}

// ---- Bookkeeping ----

/** Whether `nick` is in use by a connection other than `except`. */
function nickTaken(nick, except) {
  const owner = nicks.get(nick.toLowerCase());
  return owner !== undefined && owner !== except;
}

/** `wanted`, or `wanted-N` with the smallest N >= 2 that is free (cut to fit MAX_NICK). */
function uniqueNick(wanted) {
  if (!nickTaken(wanted)) return wanted;
  for (let n = 2; ; n++) {
    const suffix = `-${n}`;
    const nick = [...wanted].slice(0, MAX_NICK - suffix.length).join("") + suffix;
    if (!nickTaken(nick)) return nick;
  }
}

function enterRoom(room, nick) {
  let set = rooms.get(room);
  if (!set) {
    set = new Set();
    rooms.set(room, set);
    idle = idle.filter((r) => r !== room);
  }
  set.add(nick);
}

function leaveRoom(room, nick) {
  const set = rooms.get(room);
  if (!set) return;
  set.delete(nick);
  if (set.size === 0) {
    rooms.delete(room);
    if (histories.has(room)) {
      idle.push(room);
      while (idle.length > IDLE_HISTORIES) histories.delete(idle.shift());
    }
  }
}

function add(id, nick, room) {
  nicks.set(nick.toLowerCase(), id);
  enterRoom(room, nick);
  members.set(id, { nick, room });
}

function remove(id) {
  const member = members.get(id);
  if (!member) return null;
  members.delete(id);
  nicks.delete(member.nick.toLowerCase());
  leaveRoom(member.room, member.nick);
  return member;
}

function membersOf(room) {
  return [...(rooms.get(room) ?? [])].sort(byCodePoint);
}

/** What a history line counts for against HISTORY_BYTES and TOTAL_HISTORY_BYTES. */
const lineSize = (line) => utf8Length(line.nick) + utf8Length(line.text);

/** Appends `line` (of `size` bytes) to `room`'s history, dropping the oldest lines beyond the limits. */
function pushHistory(room, line, size = lineSize(line)) {
  let history = histories.get(room);
  if (!history) {
    history = { lines: [], bytes: 0 };
    histories.set(room, history);
  }
  history.lines.push(line);
  history.bytes += size;
  while (history.lines.length > HISTORY_LINES || history.bytes > HISTORY_BYTES) {
    const old = history.lines.shift();
    if (!old) break;
    history.bytes -= lineSize(old);
  }
}

/** Drops the oldest lines of the largest histories while all together hold more than TOTAL_HISTORY_BYTES. */
function boundHistory() {
  let total = 0;
  for (const history of histories.values()) total += history.bytes;
  if (total <= TOTAL_HISTORY_BYTES) return;
  // By room name, the last of equals losing, as the Rust plugin picks.
  const ordered = [...histories.keys()].sort(byCodePoint).map((room) => histories.get(room));
  while (total > TOTAL_HISTORY_BYTES) {
    const largest = ordered.reduce((a, b) => (b.bytes >= a.bytes ? b : a));
    const old = largest.lines.shift();
    if (!old) break;
    largest.bytes -= lineSize(old);
    total -= lineSize(old);
  }
}

/** The most recent lines of `room` whose JSON fits in HISTORY_BYTES, oldest first. */
function recentHistory(room) {
  const lines = histories.get(room)?.lines ?? [];
  const out = [];
  let size = 2;
  for (let i = lines.length - 1; i >= 0; i--) {
    size += utf8Length(json(lines[i])) + 1;
    if (size > HISTORY_BYTES) break;
    out.push({ nick: lines[i].nick, text: lines[i].text });
  }
  return out.reverse();
}

/** A `welcome`: with the room's history for a joiner, `"resumed": true` for a resumed connection. */
function welcome(nick, room, resumed) {
  const all = membersOf(room);
  const event = { type: "welcome", nick, room, members: all.slice(0, LARGE_ROOM), count: all.length };
  if (resumed) event.resumed = true;
  else event.history = recentHistory(room);
  return json(event);
}

/** Registers `id` as `nick` (made unique) in `room`: a `join` unless resumed, the subscription, a `welcome`. */
function admit(id, nick, room, resumed) {
  remove(id);
  const unique = uniqueNick(nick);
  add(id, unique, room);
  const actions = [];
  if (!resumed) actions.push(...presenceChanged(room, "join", unique, now()));
  actions.push(subscribe(room));
  actions.push(reply(welcome(unique, room, resumed)));
  return actions;
}

// ---- Commands ----

function say(id, line) {
  if (utf8Length(line) > MAX_TEXT) return [error(`message too long: at most ${MAX_TEXT} bytes`)];
  if (line.replace(TRIM, "") === "") return [];
  const { nick, room } = members.get(id);
  pushHistory(room, { nick, text: line });
  boundHistory();
  return [toRoom(room, json({ type: "message", nick, room, text: line }))];
}

function rename(id, wanted) {
  if (wanted === "") return [error("usage: /nick NEW")];
  const bad = checkName("nick", wanted, MAX_NICK);
  if (bad) return [error(bad)];
  const member = members.get(id);
  if (member.nick === wanted) return [error(`you are already ${wanted}`)];
  if (nickTaken(wanted, id)) return [error(`nick ${wanted} is taken`)];
  const old = member.nick;
  const room = member.room;
  // Renamed in place: leaving and entering the room would empty it for a moment.
  nicks.delete(old.toLowerCase());
  nicks.set(wanted.toLowerCase(), id);
  const set = rooms.get(room);
  if (set) {
    set.delete(old);
    set.add(wanted);
  }
  member.nick = wanted;
  log("info", `${old} is now ${wanted}`);
  return [toRoom(room, json({ type: "nick", old, new: wanted, room }))];
}

function join(id, room) {
  if (room === "") return [error("usage: /join ROOM")];
  const bad = checkName("room", room, MAX_ROOM);
  if (bad) return [error(bad)];
  const member = members.get(id);
  if (member.room === room) return [error(`you are already in ${room}`)];
  const { nick } = member;
  const old = member.room;
  // Into the new room first: leaving the old one may forget the history of the longest empty
  // room, and that must not be the new room's.
  enterRoom(room, nick);
  leaveRoom(old, nick);
  member.room = room;
  const at = now();
  return [
    unsubscribe(old),
    ...presenceChanged(old, "leave", nick, at),
    ...presenceChanged(room, "join", nick, at),
    subscribe(room),
    reply(welcome(nick, room, false)),
  ];
}

/**
 * What tells `room` that `nick` joined or left it (`kind`), the change already made: `join` or
 * `leave` in a small room; in a large one, `presence` when due (see duePresence); for a room that
 * just shrank to LARGE_ROOM, its whole member list.
 */
function presenceChanged(room, kind, nick, at) {
  const count = rooms.get(room)?.size ?? 0;
  if (count > LARGE_ROOM) {
    // Announced 0 a second ago: a room that just turned large is due at once.
    if (!announced.has(room)) announced.set(room, { count: 0, at: at - PRESENCE_EVERY });
    unannounced.add(room);
    return duePresence(at);
  }
  if (announced.delete(room) || (kind === "leave" && count === LARGE_ROOM)) {
    unannounced.delete(room);
    return [toRoom(room, json({ type: "members", room, members: membersOf(room) }))];
  }
  return [toRoom(room, joinEvent(kind, nick, room))];
}

/**
 * A `presence` for each large room whose count changed since it was last announced, if a second
 * has passed since then or the count moved by an eighth of what was announced.
 */
function duePresence(at) {
  const actions = [];
  // In order of room names, as the Rust plugin sends them.
  for (const room of [...unannounced].sort(byCodePoint)) {
    const count = rooms.get(room)?.size ?? 0;
    const last = announced.get(room);
    if (last && count !== last.count) {
      if (at - last.at < PRESENCE_EVERY && Math.abs(count - last.count) * 8 < last.count) continue;
      last.count = count;
      last.at = at;
      actions.push(toRoom(room, json({ type: "presence", room, count })));
    }
    unannounced.delete(room);
  }
  return actions;
}

function who(id) {
  const { room } = members.get(id);
  return [reply(json({ type: "members", room, members: membersOf(room) }))];
}

function onText(id, message) {
  let line = message;
  if (line.endsWith("\n")) {
    line = line.slice(0, -1);
    if (line.endsWith("\r")) line = line.slice(0, -1);
  }
  if (line.startsWith("/")) {
    const command = line.slice(1);
    const space = command.search(WHITESPACE);
    const name = space < 0 ? command : command.slice(0, space);
    const arg = space < 0 ? "" : command.slice(space).replace(TRIM, "");
    if (name === "nick") return rename(id, arg);
    if (name === "join") return join(id, arg);
    if (name === "who") return who(id);
  }
  return say(id, line);
}

// ---- The exported interface `handler` ----

export const handler = {
  onOpen(conn) {
    let subprotocol = null;
    if (conn.protocols.includes(PROTOCOL)) {
      subprotocol = PROTOCOL;
    } else if (conn.protocols.length > 0 && !conn.resumed) {
      return { tag: "reject", val: { status: 400, body: "this endpoint requires the chat.v1 subprotocol" } };
    }
    const accept = (actions) => ({ tag: "accept", val: { subprotocol, actions } });
    if (conn.resumed) {
      // Known if this instance saw it open, or if the state handed over (`state.restore`) had it:
      // it keeps its nick and room, silently.
      const member = members.get(conn.id);
      if (member) {
        log("info", `${member.nick} is still in ${member.room}`);
        return accept([subscribe(member.room), reply(welcome(member.nick, member.room, true))]);
      }
    }
    const defaultNick = `guest-${conn.id}`;
    let nick = queryParam(conn.path, "nick") || defaultNick;
    let room = queryParam(conn.path, "room") || DEFAULT_ROOM;
    const bad = checkName("nick", nick, MAX_NICK) ?? checkName("room", room, MAX_ROOM);
    if (bad) {
      // A resumed connection cannot be refused any more: give it the defaults instead.
      if (!conn.resumed) return { tag: "reject", val: { status: 400, body: bad } };
      nick = defaultNick;
      room = DEFAULT_ROOM;
    }
    const actions = admit(conn.id, nick, room, conn.resumed);
    actions.push(...duePresence(now()));
    log("info", `${members.get(conn.id).nick} ${conn.resumed ? "is back in" : "joined"} ${room}`);
    return accept(actions);
  },

  onMessage(id, msg) {
    let actions = [];
    if (!members.has(id)) {
      // Not seen opening: take it in with the defaults rather than fail.
      log("warn", `message from unknown connection ${id}`);
      actions = admit(id, `guest-${id}`, DEFAULT_ROOM, true);
    }
    if (msg.tag === "text") actions.push(...onText(id, msg.val));
    else actions.push(error("binary messages are not supported"));
    actions.push(...duePresence(now()));
    return actions;
  },

  onClose(id, code, reason) {
    const member = remove(id);
    if (!member) return duePresence(now());
    log("info", `${member.nick} left ${member.room}`);
    const at = now();
    return [...presenceChanged(member.room, "leave", member.nick, at), ...duePresence(at)];
  },
};

// ---- The exported interface `state`: hand-over on reload, in the Rust chat's format ----

/** The snapshot format `snapshot` writes, and the only one `restore` reads. */
const SNAPSHOT_VERSION = 1;

/**
 * The snapshot of the state: version 1 of the Rust chat's format (plugins/chat/src/snapshot.rs),
 * as JSON text, and whether that text is ASCII.
 */
function encodeSnapshot() {
  // As the Rust chat writes it, byte for byte: members by id, histories by room name (rooms
  // without lines left out), compact JSON. Written by hand, not as one object: JavaScript would
  // put rooms with integer-like names first.
  const list = [...members.keys()]
    .sort((a, b) => a - b)
    .map((id) => ({ id, nick: members.get(id).nick, room: members.get(id).room }));
  const listed = JSON.stringify(list);
  let ascii = !NON_ASCII.test(listed);
  const history = [...histories.keys()]
    .filter((room) => histories.get(room).lines.length > 0)
    .sort(byCodePoint)
    .map((room) => {
      const { lines, bytes } = histories.get(room);
      // A history is ASCII if its lines have as many UTF-16 units as bytes of UTF-8: counted per
      // line, not per character, since scanning megabytes of text in QuickJS takes a while.
      let units = 0;
      for (const line of lines) units += line.nick.length + line.text.length;
      if (units !== bytes || NON_ASCII.test(room)) ascii = false;
      return `${JSON.stringify(room)}:${JSON.stringify(lines)}`;
    });
  const text = `{"version":${SNAPSHOT_VERSION},"members":${listed},"history":{${history.join(",")}}}`;
  return { text, ascii };
}

const NON_ASCII = /[^\x00-\x7f]/;

/** What a JSON value is, in the words of the Rust chat's errors (serde's). */
function unexpected(value) {
  if (value === null) return "null";
  if (typeof value === "boolean") return `boolean \`${value}\``;
  if (typeof value === "number") return Number.isInteger(value) ? `integer \`${value}\`` : `floating point \`${value}\``;
  if (typeof value === "string") return `string ${JSON.stringify(value)}`;
  return Array.isArray(value) ? "sequence" : "map";
}

/** `s` quoted as Rust's `{:?}` shows a string (the quotes, backslashes and control characters escaped). */
function debugString(s) {
  const escapes = { "\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\" };
  return `"${s.replace(/[\0\t\r\n"\\]|\p{Cc}/gu, (c) => escapes[c] ?? `\\u{${c.codePointAt(0).toString(16)}}`)}"`;
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** Whether `bytes` (a Uint8Array) are all ASCII: natively, 8 KiB at a time. */
function isAscii(bytes) {
  for (let i = 0; i < bytes.length; i += 8192) {
    if (Math.max.apply(null, bytes.subarray(i, i + 8192)) >= 0x80) return false;
  }
  return true;
}

/** Whether JSON text has a `\u` escape (`split` is native and fast, unlike a search for two characters). */
function hasUnicodeEscape(json) {
  const pieces = json.split("\\");
  for (let i = 1; i < pieces.length; i++) {
    // Each piece follows a backslash that starts an escape, but the one after an escaped
    // backslash (an empty piece).
    if (pieces[i] === "") i++;
    else if (pieces[i].charCodeAt(0) === 0x75) return true;
  }
  return false;
}

/**
 * Reads a version 1 snapshot's structure (`{"version", "members", "history"}`, other fields
 * ignored) into `{ members: [{ id, nick, room }], history: [[room, [[{ nick, text }, size]]]] }`,
 * its rooms sorted, each line with its size in bytes; or throws the reason as a string: not such
 * JSON (or not UTF-8), or another version.
 */
function parseSnapshot(bytes) {
  // QuickJS has no TextDecoder, and a loop would take 100 ms a megabyte: the bytes are made a
  // "binary string" (a character per byte) natively, by base64. Without `\u` escapes in it (our
  // writers make them only for control characters), the JSON is parsed as it is: its strings come
  // out as their UTF-8 bytes, the sizes of history lines already, and only those with non-ASCII
  // bytes need decoding ("bytes"; "ascii" if none has). With escapes, the whole text is decoded
  // first ("text").
  let doc;
  let mode;
  try {
    const binary = atob(bytes.toBase64());
    const ascii = isAscii(bytes);
    if (!hasUnicodeEscape(binary)) {
      mode = ascii ? "ascii" : "bytes";
      doc = JSON.parse(binary);
    } else {
      mode = "text";
      // decodeURIComponent is strict: invalid UTF-8 throws a URIError.
      doc = JSON.parse(ascii ? binary : decodeURIComponent(escape(binary)));
    }
  } catch (e) {
    throw `malformed chat snapshot: ${e instanceof URIError ? "invalid UTF-8" : e instanceof Error ? e.message : e}`;
  }
  if (!isObject(doc)) throw `malformed chat snapshot: invalid type: ${unexpected(doc)}, expected a JSON object`;
  const version = Object.hasOwn(doc, "version") ? doc.version : null;
  if (version === null) throw 'malformed chat snapshot: no "version" field';
  if (version !== SNAPSHOT_VERSION) {
    // (In "bytes" mode a string version shows its UTF-8 bytes: good enough for an error.)
    throw `unsupported chat snapshot version ${JSON.stringify(version)} (this version of chat reads version ${SNAPSHOT_VERSION})`;
  }
  const malformed = (why) => `malformed chat snapshot (version ${SNAPSHOT_VERSION}): ${why}`;
  /** `object[name]`, checked by `ok`; else throws what serde would say. */
  const field = (object, name, expected, ok) => {
    if (!Object.hasOwn(object, name)) throw malformed(`missing field \`${name}\``);
    const value = object[name];
    if (!ok(value)) throw malformed(`invalid type: ${unexpected(value)}, expected ${expected}`);
    return value;
  };
  /** A string as parsed, as text: decoded from UTF-8 in "bytes" mode, checked in "text" mode. */
  const decode = (raw) => {
    if (mode === "bytes" && NON_ASCII.test(raw)) {
      try {
        return decodeURIComponent(escape(raw));
      } catch {
        throw malformed("invalid UTF-8 in a string");
      }
    }
    // Rust reads JSON strings as Unicode: an escaped lone surrogate (`"\ud800"`) is malformed.
    if (mode === "text" && !raw.isWellFormed()) throw malformed("lone surrogate in a string");
    return raw;
  };
  /** The size in bytes of UTF-8 of a string as parsed (and checked). */
  const sizeOf = (raw) => (mode === "text" ? utf8Length(raw) : raw.length);
  const isString = (value) => typeof value === "string";
  const string = (object, name) => decode(field(object, name, "a string", isString));
  const struct = (value, name) => {
    if (!isObject(value)) throw malformed(`invalid type: ${unexpected(value)}, expected struct ${name}`);
    return value;
  };
  const isId = (value) => {
    if (typeof value === "number" && Number.isInteger(value) && value < 0) {
      throw malformed(`invalid value: ${unexpected(value)}, expected u64`);
    }
    return Number.isInteger(value) && value < 2 ** 64;
  };
  const list = field(doc, "members", "a sequence", Array.isArray).map((member) => {
    struct(member, "MemberV1");
    return { id: field(member, "id", "u64", isId), nick: string(member, "nick"), room: string(member, "room") };
  });
  const map = field(doc, "history", "a map", isObject);
  const history = Object.keys(map)
    .map((key) => {
      const lines = map[key];
      if (!Array.isArray(lines)) throw malformed(`invalid type: ${unexpected(lines)}, expected a sequence`);
      const taken = lines.map((line) => {
        struct(line, "Line");
        const nick = field(line, "nick", "a string", isString);
        const text = field(line, "text", "a string", isString);
        return [{ nick: decode(nick), text: decode(text) }, sizeOf(nick) + sizeOf(text)];
      });
      return [decode(key), taken];
    })
    .sort(([a], [b]) => byCodePoint(a, b));
  return { members: list, history };
}

/**
 * Takes in a parsed snapshot, into the (fresh) state: throws the reason as a string for members
 * it cannot take in (an invalid nick or room, an id or nick listed twice) and invalid room names.
 * Histories are cut to their limits as on a normal push.
 */
function takeSnapshot(snapshot) {
  for (const { id, nick, room } of snapshot.members) {
    const bad = checkName("nick", nick, MAX_NICK) ?? checkName("room", room, MAX_ROOM);
    if (bad) throw `invalid chat snapshot: connection ${id}: ${bad}`;
    if (members.has(id)) throw `invalid chat snapshot: connection ${id} is listed twice`;
    if (nickTaken(nick)) throw `invalid chat snapshot: nick ${debugString(nick)} is used twice`;
    add(id, nick, room);
  }
  for (const [room, lines] of snapshot.history) {
    const bad = checkName("room", room, MAX_ROOM);
    if (bad) throw `invalid chat snapshot: history of ${debugString(room)}: ${bad}`;
    if (lines.length === 0) continue;
    for (const [line, size] of lines) pushHistory(room, line, size);
    if (!rooms.has(room)) idle.push(room);
  }
  while (idle.length > IDLE_HISTORIES) histories.delete(idle.shift());
}

export const state = {
  /** Everything the next version needs: version 1 of the Rust chat's snapshot, as UTF-8 JSON. */
  snapshot() {
    const { text, ascii } = encodeSnapshot();
    const bytes = utf8Encode(text, ascii);
    log(
      "info",
      `snapshot: ${members.size} connections, ${rooms.size} rooms, ${histories.size} histories (${bytes.length} bytes)`,
    );
    return bytes;
  },

  /**
   * Loads a snapshot taken by an earlier version, in any language (thrown strings are the WIT
   * `err`): an empty one starts fresh; one refused leaves the state as it was.
   */
  restore(snapshot) {
    const saved = saveState();
    loadState(freshState());
    try {
      if (snapshot.length > 0) takeSnapshot(parseSnapshot(snapshot));
    } catch (e) {
      loadState(saved);
      throw e;
    }
    log("info", `restored: ${members.size} connections, ${rooms.size} rooms, ${histories.size} histories`);
  },
};
