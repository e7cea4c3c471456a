"""The chat plugin in Python: chat rooms over the `chat.v1` subprotocol, speaking the same JSON
protocol as the Rust chat plugin (plugins/chat/src/lib.rs, which documents it in full), so the
browser demo (examples/static/index.html) works against either.

Connect as `/chat?nick=ada&room=lobby` (both optional: `guest-<id>` and `lobby`). Send text lines:
`/nick NEW`, `/join ROOM`, `/who`, or anything else to say it to the room. The server answers with
JSON events `welcome`, `join`, `leave`, `presence`, `message`, `nick`, `members`, `error`. Rooms are
topics of the host; each keeps its last 50 messages (at most 64 KiB; all rooms together at most
8 MiB) as history.

Large rooms: naming every joiner to every member costs O(members²) in a join storm, so a room of
more than 50 members names nobody. Instead of `join` and `leave`, its members get `presence` with
the room's `count`, at most once a second, or at once when the count moved by an eighth since the
last one; a change not announced yet goes out with the instance's next event. A `welcome` lists
only the first 50 members (`count` says how many there are; `/who` lists them all). When the room
shrinks back to 50, its members get the whole list again as `members`.

Hand-over on reload: like the Rust plugin (it targets the world `stateful-plugin`), this one exports
`state`, whose snapshot is the Rust chat's format, version 1 (plugins/chat/src/snapshot.rs):
`{"version":1,"members":[{"id","nick","room"}],"history":{"ROOM":[{"nick","text"}]}}`. So a reload
hands nicks, rooms and histories over to the next version, whether it is written in Python,
JavaScript or Rust, and the host's checkpoints keep them across a trap. Each connection the
restored state knows is then re-attached (`resumed`) silently: subscribed to its room again, with a
`welcome` that says `"resumed": true` and lists the members, but no history and no `join` notice.
One it does not know (a reload from a version without hand-over) is registered again from its
query string, with the same `welcome` and no `join` notice either. The large-room bookkeeping is not
in the snapshot: a restored large room announces its next change at once.

Built with componentize-py: WIT variants are the dataclasses of `wit_world.imports.types`, records
are dataclasses, `option<T>` is a value or None.
"""

import json
import re
import time
from collections import deque
from dataclasses import dataclass, field

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

PROTOCOL = "chat.v1"  # the subprotocol this plugin speaks
DEFAULT_ROOM = "lobby"  # the room of a connection that names none
MAX_NICK = 32  # the longest nick, in characters (code points)
MAX_ROOM = 64  # the longest room name, in characters
MAX_TEXT = 4096  # the longest chat message, in bytes of UTF-8
HISTORY_LINES = 50  # the most messages a room's history keeps
HISTORY_BYTES = 64 * 1024  # the most bytes of nicks and text kept, and of JSON in a `welcome`
IDLE_HISTORIES = 32  # how many rooms without members keep their history
# The most bytes all rooms' histories keep together, so that many busy rooms cannot grow the
# instance to its memory cap (a trap): past it, the largest history gives up its oldest lines.
TOTAL_HISTORY_BYTES = 8 << 20
# A room of more than this many members announces presence as counts (`presence`), not nicks, and
# its `welcome` lists only this many members.
LARGE_ROOM = 50
# How often a large room's `presence` goes out, at most (unless the count moved by an eighth), in
# seconds.
PRESENCE_EVERY = 1.0

# Unicode's White_Space, the set Rust's `char::is_whitespace` uses (Python's `str.isspace` differs).
WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
SPLIT = re.compile(f"[{re.escape(WHITESPACE)}]")


@dataclass
class Member:
    nick: str
    room: str


@dataclass
class History:
    """A room's recent messages, oldest first, as (nick, text) pairs."""

    lines: deque = field(default_factory=deque)
    size: int = 0  # bytes of nicks and text


# State: one instance sees every connection of its route, one call at a time. (`State.restore`
# replaces all of it at once: see `_fresh_state`.)
members: dict[int, Member] = {}  # admitted connections
nicks: dict[str, int] = {}  # nicks in use, lower-cased, with their owners
rooms: dict[str, set[str]] = {}  # each room's members' nicks; a room without members is removed
histories: dict[str, History] = {}  # each room's recent messages
idle: deque = deque()  # rooms with a history but without members, the longest empty first
# Large rooms: [member count last announced, when (monotonic)] (not in the snapshot: a restored
# large room announces its next change at once).
announced: dict[str, list] = {}
unannounced: set[str] = set()  # large rooms whose count changed since it was last announced


def _fresh_state() -> tuple:
    """A fresh, empty state, in the order of `_current_state`."""
    return {}, {}, {}, {}, deque(), {}, set()


def _current_state() -> tuple:
    """The whole state, to put back if a restore fails halfway."""
    return members, nicks, rooms, histories, idle, announced, unannounced


def _set_state(state: tuple) -> None:
    global members, nicks, rooms, histories, idle, announced, unannounced
    members, nicks, rooms, histories, idle, announced, unannounced = state


# ---- Text helpers ----


def to_json(value) -> str:
    """`value` as compact JSON; U+2028 and U+2029 are escaped too, for JavaScript parsers."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def is_control(c: str) -> bool:
    return c < " " or "\x7f" <= c <= "\x9f"


def percent_decode(s: str) -> str:
    """Decodes a query component as HTML forms do: `+` is a space, `%XX` a byte (kept if malformed)."""
    raw = s.encode("utf-8")
    out = bytearray()
    i = 0
    hexdigits = b"0123456789abcdefABCDEF"
    while i < len(raw):
        b = raw[i]
        if b == 0x2B:  # '+'
            out.append(0x20)
        elif b == 0x25 and i + 2 < len(raw) and raw[i + 1] in hexdigits and raw[i + 2] in hexdigits:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 2
        else:
            out.append(b)
        i += 1
    return out.decode("utf-8", errors="replace")


def query_param(path: str, name: str) -> str | None:
    """The first value of query parameter `name` in the request target `path`, decoded, or None."""
    path = path.split("#", 1)[0]
    if "?" not in path:
        return None
    for piece in path.split("?", 1)[1].split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        if percent_decode(key) == name:
            return percent_decode(value)
    return None


def check_name(what: str, name: str, limit: int) -> str | None:
    """An error if `name` is not 1 to `limit` characters without whitespace or control characters."""
    if not 0 < len(name) <= limit or any(c in WHITESPACE or is_control(c) for c in name):
        return f"a {what} must be 1 to {limit} characters, without spaces or control characters"
    return None


# ---- Actions and events ----


def reply(text: str) -> types.Action:
    return types.Action_Reply(types.Message_Text(text))


def to_room(room: str, text: str) -> types.Action:
    return types.Action_Send(types.Outgoing(types.Target_Topic(room), types.Message_Text(text)))


def join_event(kind: str, nick: str, room: str) -> str:
    return to_json({"type": kind, "nick": nick, "room": room})


def error(text: str) -> types.Action:
    return reply(to_json({"type": "error", "text": text}))


def log(level: host.Level, message: str) -> None:
    host.log(level, message)


# ---- Bookkeeping ----


def nick_taken(nick: str, except_id: int | None = None) -> bool:
    owner = nicks.get(nick.lower())
    return owner is not None and owner != except_id


def unique_nick(wanted: str) -> str:
    """`wanted`, or `wanted-N` with the smallest N >= 2 that is free (cut to fit MAX_NICK)."""
    if not nick_taken(wanted):
        return wanted
    n = 2
    while True:
        suffix = f"-{n}"
        nick = wanted[: MAX_NICK - len(suffix)] + suffix
        if not nick_taken(nick):
            return nick
        n += 1


def enter_room(room: str, nick: str) -> None:
    if room not in rooms:
        rooms[room] = set()
        if room in idle:
            idle.remove(room)
    rooms[room].add(nick)


def leave_room(room: str, nick: str) -> None:
    names = rooms.get(room)
    if names is None:
        return
    names.discard(nick)
    if not names:
        del rooms[room]
        if room in histories:
            idle.append(room)
            while len(idle) > IDLE_HISTORIES:
                histories.pop(idle.popleft(), None)


def add(conn: int, nick: str, room: str) -> None:
    nicks[nick.lower()] = conn
    enter_room(room, nick)
    members[conn] = Member(nick, room)


def remove(conn: int) -> Member | None:
    member = members.pop(conn, None)
    if member is not None:
        nicks.pop(member.nick.lower(), None)
        leave_room(member.room, member.nick)
    return member


def members_of(room: str) -> list[str]:
    return sorted(rooms.get(room, ()))


def push_history(room: str, nick: str, text: str) -> None:
    history = histories.setdefault(room, History())
    history.lines.append((nick, text))
    history.size += utf8_len(nick) + utf8_len(text)
    while history.lines and (len(history.lines) > HISTORY_LINES or history.size > HISTORY_BYTES):
        old_nick, old_text = history.lines.popleft()
        history.size -= utf8_len(old_nick) + utf8_len(old_text)


def bound_history() -> None:
    """Drops the oldest lines of the largest histories while all together hold more than
    TOTAL_HISTORY_BYTES."""
    total = sum(history.size for history in histories.values())
    if total <= TOTAL_HISTORY_BYTES:
        return
    # By room name, the last of equals losing, as the Rust plugin picks.
    ordered = [histories[room] for room in sorted(histories)]
    while total > TOTAL_HISTORY_BYTES:
        largest = ordered[0]
        for history in ordered:
            if history.size >= largest.size:
                largest = history
        if not largest.lines:
            break
        old_nick, old_text = largest.lines.popleft()
        size = utf8_len(old_nick) + utf8_len(old_text)
        largest.size -= size
        total -= size


def recent_history(room: str) -> list[dict]:
    """The most recent lines of `room` whose JSON fits in HISTORY_BYTES, oldest first."""
    history = histories.get(room)
    out = []
    size = 2
    for nick, text in reversed(history.lines if history else ()):
        line = {"nick": nick, "text": text}
        size += utf8_len(to_json(line)) + 1
        if size > HISTORY_BYTES:
            break
        out.append(line)
    out.reverse()
    return out


def welcome(nick: str, room: str, resumed: bool) -> str:
    """A `welcome`: with the room's history for a joiner, `"resumed": true` for a resumed one."""
    everyone = members_of(room)
    event = {"type": "welcome", "nick": nick, "room": room, "members": everyone[:LARGE_ROOM]}
    event["count"] = len(everyone)
    if resumed:
        event["resumed"] = True
    else:
        event["history"] = recent_history(room)
    return to_json(event)


def admit(conn: int, nick: str, room: str, resumed: bool) -> list[types.Action]:
    """Registers `conn` as `nick` (made unique) in `room`: a `join` unless resumed, the
    subscription, and a `welcome`."""
    remove(conn)
    nick = unique_nick(nick)
    add(conn, nick, room)
    actions = [] if resumed else presence_changed(room, "join", nick, time.monotonic())
    actions.append(types.Action_Subscribe(room))
    actions.append(reply(welcome(nick, room, resumed)))
    return actions


# ---- Commands ----


def say(conn: int, text: str) -> list[types.Action]:
    if utf8_len(text) > MAX_TEXT:
        return [error(f"message too long: at most {MAX_TEXT} bytes")]
    if not text.strip(WHITESPACE):
        return []
    member = members[conn]
    push_history(member.room, member.nick, text)
    bound_history()
    event = {"type": "message", "nick": member.nick, "room": member.room, "text": text}
    return [to_room(member.room, to_json(event))]


def rename(conn: int, new: str) -> list[types.Action]:
    if not new:
        return [error("usage: /nick NEW")]
    problem = check_name("nick", new, MAX_NICK)
    if problem:
        return [error(problem)]
    member = members[conn]
    if member.nick == new:
        return [error(f"you are already {new}")]
    if nick_taken(new, conn):
        return [error(f"nick {new} is taken")]
    old, room = member.nick, member.room
    # Renamed in place: leaving and entering the room would empty it for a moment.
    nicks.pop(old.lower(), None)
    nicks[new.lower()] = conn
    if room in rooms:
        rooms[room].discard(old)
        rooms[room].add(new)
    member.nick = new
    log(host.Level.INFO, f"{old} is now {new}")
    return [to_room(room, to_json({"type": "nick", "old": old, "new": new, "room": room}))]


def join(conn: int, room: str) -> list[types.Action]:
    if not room:
        return [error("usage: /join ROOM")]
    problem = check_name("room", room, MAX_ROOM)
    if problem:
        return [error(problem)]
    member = members[conn]
    if member.room == room:
        return [error(f"you are already in {room}")]
    nick, old = member.nick, member.room
    # Into the new room first: leaving the old one may forget the history of the longest empty
    # room, and that must not be the new room's.
    enter_room(room, nick)
    leave_room(old, nick)
    member.room = room
    now = time.monotonic()
    return [
        types.Action_Unsubscribe(old),
        *presence_changed(old, "leave", nick, now),
        *presence_changed(room, "join", nick, now),
        types.Action_Subscribe(room),
        reply(welcome(nick, room, False)),
    ]


def presence_changed(room: str, kind: str, nick: str, now: float) -> list[types.Action]:
    """What tells `room` that `nick` joined or left it (`kind`), the change already made: `join` or
    `leave` in a small room; in a large one, `presence` when due (see `due_presence`); for a room
    that just shrank to LARGE_ROOM, its whole member list."""
    count = len(rooms.get(room, ()))
    if count > LARGE_ROOM:
        # Announced 0 a second ago: a room that just turned large is due at once.
        announced.setdefault(room, [0, now - PRESENCE_EVERY])
        unannounced.add(room)
        return due_presence(now)
    if announced.pop(room, None) is not None or (kind == "leave" and count == LARGE_ROOM):
        unannounced.discard(room)
        return [to_room(room, to_json({"type": "members", "room": room, "members": members_of(room)}))]
    return [to_room(room, join_event(kind, nick, room))]


def due_presence(now: float) -> list[types.Action]:
    """A `presence` for each large room whose count changed since it was last announced, if a
    second has passed since then or the count moved by an eighth of what was announced."""
    actions = []
    # In order of room names, as the Rust plugin sends them.
    for room in sorted(unannounced):
        count = len(rooms.get(room, ()))
        last = announced.get(room)
        if last is not None and count != last[0]:
            if now - last[1] < PRESENCE_EVERY and abs(count - last[0]) * 8 < last[0]:
                continue
            last[0], last[1] = count, now
            actions.append(to_room(room, to_json({"type": "presence", "room": room, "count": count})))
        unannounced.discard(room)
    return actions


def who(conn: int) -> list[types.Action]:
    room = members[conn].room
    return [reply(to_json({"type": "members", "room": room, "members": members_of(room)}))]


def on_text(conn: int, text: str) -> list[types.Action]:
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if text.startswith("/"):
        parts = SPLIT.split(text[1:], maxsplit=1)
        name = parts[0]
        arg = parts[1].strip(WHITESPACE) if len(parts) > 1 else ""
        if name == "nick":
            return rename(conn, arg)
        if name == "join":
            return join(conn, arg)
        if name == "who":
            return who(conn)
    return say(conn, text)


# ---- The exported interface `handler` ----


class Handler(exports.Handler):
    def on_open(self, conn: types.Connection) -> types.Admission:
        if PROTOCOL in conn.protocols:
            subprotocol = PROTOCOL
        elif not conn.protocols or conn.resumed:
            subprotocol = None
        else:
            return types.Admission_Reject(types.Rejection(400, "this endpoint requires the chat.v1 subprotocol"))

        def accept(actions: list[types.Action]) -> types.Admission:
            return types.Admission_Accept(types.Acceptance(subprotocol, actions))

        if conn.resumed and conn.id in members:
            # Known if this instance saw it open, or if the state handed over (`State.restore`) had
            # it: it keeps its nick and room, silently.
            member = members[conn.id]
            log(host.Level.INFO, f"{member.nick} is still in {member.room}")
            return accept([types.Action_Subscribe(member.room), reply(welcome(member.nick, member.room, True))])
        default_nick = f"guest-{conn.id}"
        nick = query_param(conn.path, "nick") or default_nick
        room = query_param(conn.path, "room") or DEFAULT_ROOM
        problem = check_name("nick", nick, MAX_NICK) or check_name("room", room, MAX_ROOM)
        if problem:
            # A resumed connection cannot be refused any more: give it the defaults instead.
            if not conn.resumed:
                return types.Admission_Reject(types.Rejection(400, problem))
            nick, room = default_nick, DEFAULT_ROOM
        actions = admit(conn.id, nick, room, conn.resumed)
        actions.extend(due_presence(time.monotonic()))
        how = "is back in" if conn.resumed else "joined"
        log(host.Level.INFO, f"{members[conn.id].nick} {how} {room}")
        return accept(actions)

    def on_message(self, conn: int, msg: types.Message) -> list[types.Action]:
        actions = []
        if conn not in members:
            # Not seen opening: take it in with the defaults rather than fail.
            log(host.Level.WARN, f"message from unknown connection {conn}")
            actions = admit(conn, f"guest-{conn}", DEFAULT_ROOM, True)
        if isinstance(msg, types.Message_Text):
            actions.extend(on_text(conn, msg.value))
        else:
            actions.append(error("binary messages are not supported"))
        actions.extend(due_presence(time.monotonic()))
        return actions

    def on_close(self, conn: int, code: int, reason: str) -> list[types.Action]:
        member = remove(conn)
        if member is None:
            return due_presence(time.monotonic())
        log(host.Level.INFO, f"{member.nick} left {member.room}")
        now = time.monotonic()
        return presence_changed(member.room, "leave", member.nick, now) + due_presence(now)


# ---- The exported interface `state`: hand-over on reload, in the Rust chat's format ----

SNAPSHOT_VERSION = 1  # the snapshot format `snapshot` writes, and the only one `restore` reads
SURROGATE = re.compile("[\ud800-\udfff]")


def encode_snapshot() -> bytes:
    """The snapshot of the state: version 1 of the Rust chat's format (plugins/chat/src/snapshot.rs),
    as the Rust chat writes it, byte for byte: members by id, histories by room name (rooms without
    lines left out), compact UTF-8 JSON."""
    snapshot = {
        "version": SNAPSHOT_VERSION,
        "members": [{"id": conn, "nick": m.nick, "room": m.room} for conn, m in sorted(members.items())],
        "history": {
            room: [{"nick": nick, "text": text} for nick, text in histories[room].lines]
            for room in sorted(histories)
            if histories[room].lines
        },
    }
    return json.dumps(snapshot, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _unexpected(value) -> str:
    """What a JSON value is, in the words of the Rust chat's errors (serde's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{_json(value)}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {_json(value)}"
    return "sequence" if isinstance(value, list) else "map"


DEBUG_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", '"': '\\"', "\\": "\\\\"}


def _debug(s: str) -> str:
    """`s` quoted as Rust's `{:?}` shows a string (quotes, backslashes and control characters escaped)."""
    return '"' + "".join(DEBUG_ESCAPES.get(c) or (f"\\u{{{ord(c):x}}}" if is_control(c) else c) for c in s) + '"'


class SnapshotError(Exception):
    """Why a snapshot is refused, in the Rust chat's words."""


def _malformed(why: str) -> SnapshotError:
    return SnapshotError(f"malformed chat snapshot (version {SNAPSHOT_VERSION}): {why}")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _field(obj: dict, name: str, expected: str, ok):
    """`obj[name]`, checked by `ok`; else raises what serde would say."""
    if name not in obj:
        raise _malformed(f"missing field `{name}`")
    value = obj[name]
    if not ok(value):
        raise _malformed(f"invalid type: {_unexpected(value)}, expected {expected}")
    return value


def _is_id(value) -> bool:
    if type(value) is not int:
        return False
    if not 0 <= value < 1 << 64:
        raise _malformed(f"invalid value: {_unexpected(value)}, expected u64")
    return True


def _struct(value, name: str) -> dict:
    if not isinstance(value, dict):
        raise _malformed(f"invalid type: {_unexpected(value)}, expected struct {name}")
    return value


def parse_snapshot(data: bytes) -> tuple[list, list]:
    """Reads a version 1 snapshot's structure (`{"version", "members", "history"}`, other fields
    ignored) into ([(id, nick, room)], [(room, [(nick, text)])]), its rooms sorted; or raises
    SnapshotError: not such JSON, or another version."""
    try:
        text = data.decode("utf-8")
        doc = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise SnapshotError("malformed chat snapshot: invalid UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise SnapshotError(f"malformed chat snapshot: {e}") from None
    if not isinstance(doc, dict):
        raise SnapshotError(f"malformed chat snapshot: invalid type: {_unexpected(doc)}, expected a JSON object")
    version = doc.get("version")
    if version is None:
        raise SnapshotError('malformed chat snapshot: no "version" field')
    if type(version) is not int or version != SNAPSHOT_VERSION:
        raise SnapshotError(
            f"unsupported chat snapshot version {_json(version)} "
            f"(this version of chat reads version {SNAPSHOT_VERSION})"
        )
    # Rust reads JSON strings as Unicode: an escaped lone surrogate (`"\ud800"`) is malformed. Valid
    # UTF-8 holds none, so only an escape makes one: the strings are searched if there is one.
    surrogates = "\\ud" in text or "\\uD" in text

    def is_str(value) -> bool:
        if not isinstance(value, str):
            return False
        if surrogates and SURROGATE.search(value):
            raise _malformed("lone surrogate in a string")
        return True

    listed = []
    for member in _field(doc, "members", "a sequence", lambda v: isinstance(v, list)):
        _struct(member, "MemberV1")
        listed.append(
            (
                _field(member, "id", "u64", _is_id),
                _field(member, "nick", "a string", is_str),
                _field(member, "room", "a string", is_str),
            )
        )
    history = []
    saved = _field(doc, "history", "a map", lambda v: isinstance(v, dict))
    for room in sorted(saved):
        is_str(room)
        lines = saved[room]
        if not isinstance(lines, list):
            raise _malformed(f"invalid type: {_unexpected(lines)}, expected a sequence")
        taken = []
        for line in lines:
            _struct(line, "Line")
            taken.append((_field(line, "nick", "a string", is_str), _field(line, "text", "a string", is_str)))
        history.append((room, taken))
    return listed, history


def take_snapshot(listed: list, history: list) -> None:
    """Takes in a parsed snapshot, into the (fresh) state; raises SnapshotError for members it
    cannot take in (an invalid nick or room, an id or nick listed twice) and invalid room names.
    Histories are cut to their limits as on a normal push."""
    for conn, nick, room in listed:
        problem = check_name("nick", nick, MAX_NICK) or check_name("room", room, MAX_ROOM)
        if problem:
            raise SnapshotError(f"invalid chat snapshot: connection {conn}: {problem}")
        if conn in members:
            raise SnapshotError(f"invalid chat snapshot: connection {conn} is listed twice")
        if nick_taken(nick):
            raise SnapshotError(f"invalid chat snapshot: nick {_debug(nick)} is used twice")
        add(conn, nick, room)
    for room, lines in history:
        problem = check_name("room", room, MAX_ROOM)
        if problem:
            raise SnapshotError(f"invalid chat snapshot: history of {_debug(room)}: {problem}")
        if not lines:
            continue
        for nick, text in lines:
            push_history(room, nick, text)
        if room not in rooms:
            idle.append(room)
    while len(idle) > IDLE_HISTORIES:
        histories.pop(idle.popleft(), None)


class State(exports.State):
    def snapshot(self) -> bytes:
        """Everything the next version needs: version 1 of the Rust chat's snapshot, as UTF-8 JSON."""
        data = encode_snapshot()
        log(
            host.Level.INFO,
            f"snapshot: {len(members)} connections, {len(rooms)} rooms, {len(histories)} histories ({len(data)} bytes)",
        )
        return data

    def restore(self, snapshot: bytes) -> None:
        """Loads a snapshot taken by an earlier version, in any language (`Err` is the WIT `err`):
        an empty one starts fresh; one refused leaves the state as it was."""
        saved = _current_state()
        _set_state(_fresh_state())
        try:
            if snapshot:
                take_snapshot(*parse_snapshot(snapshot))
        except SnapshotError as e:
            _set_state(saved)
            raise Err(str(e)) from None
        except BaseException:
            _set_state(saved)
            raise
        log(host.Level.INFO, f"restored: {len(members)} connections, {len(rooms)} rooms, {len(histories)} histories")
