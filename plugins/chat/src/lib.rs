//! The chat plugin: chat rooms over the `chat.v1` subprotocol.
//!
//! Connect to the plugin's route as `/chat?nick=ada&room=lobby` (both optional: the nick defaults
//! to `guest-<connection id>`, the room to `lobby`). A client that offers `chat.v1` is answered
//! with it; one that offers only other subprotocols is refused with 400; one that offers none is
//! admitted without a subprotocol. A nick already in use (ignoring case) gets a suffix (`ada-2`).
//!
//! The client sends text lines: `/nick NEW` renames, `/join ROOM` moves to another room, `/who`
//! lists the current room's members, and any other line is said to the room. The server answers
//! with JSON text messages, one object each, told apart by `type`:
//!
//! | `type`    | fields                              | sent to                             |
//! |-----------|-------------------------------------|-------------------------------------|
//! | `welcome` | `nick`, `room`, `members`, `count`, `history` (or `resumed`) | the connection that joined a room |
//! | `join`    | `nick`, `room`                      | the room, but the one who joined (small rooms) |
//! | `leave`   | `nick`, `room`                      | the room, but the one who left (small rooms) |
//! | `presence`| `room`, `count`                     | the room (large rooms, see below)   |
//! | `message` | `nick`, `room`, `text`              | the room, the sender included       |
//! | `nick`    | `old`, `new`, `room`                | the room, the renamed one included  |
//! | `members` | `room`, `members`                   | the sender of `/who`; the room when it becomes small again |
//! | `error`   | `text`                              | the sender of what failed           |
//!
//! `members` lists are sorted nicks; `count` is the room's number of members. Limits: a nick is 1 to 32 characters, a room name 1 to 64,
//! neither with whitespace or control characters; a message is at most 4096 bytes. Binary
//! messages are answered with an error (the connection stays open).
//!
//! Rooms are topics of the host: a member is subscribed to its room's topic, and messages to the
//! room are sent to that topic.
//!
//! **Large rooms.** Announcing every join to every member costs O(members²) when many join at once
//! (a join storm: 3,000 joins made the server send 438 MB). So a room of more than 50 members
//! ([`LARGE_ROOM`]) names nobody: instead of `join` and `leave`, its members get `presence` with
//! the new `count`, at most once a second, or at once when the count moved by an eighth since the
//! last one; a change not announced yet goes out with the instance's next event. A `welcome` there
//! lists only the first 50 members (`count` says how many there are; `/who` lists them all). When
//! a room shrinks back to 50, its members get the whole list again as `members`. A join storm of
//! n connections then costs O(n) messages of constant size, plus one `welcome` each.
//!
//! **History.** Each room keeps its last 50 messages (fewer when they are long: at most 64 KiB of
//! nicks and text). A `welcome` for a connection that joins a room, on opening or with `/join`,
//! carries them as `"history": [{"nick": "ada", "text": "hi"}, ...]`, oldest first (only the most
//! recent ones if their JSON would exceed 64 KiB). A room's history outlives its members, but only
//! the 32 most recently emptied rooms keep theirs.
//!
//! **Hand-over on reload.** When the server reloads this plugin, the old version's nicks, rooms
//! and histories are handed to the new one (a JSON snapshot with a format `version`, described in
//! `src/snapshot.rs`). Each connection is then re-attached (`resumed`): one the snapshot knows
//! keeps its nick and room silently — it is subscribed to its room again and gets a `welcome` with
//! `"resumed": true` and the room's current members, but no `history` (it saw those messages) —
//! and no `join` is sent to the room.
//!
//! **Resumed connections without state.** When the host re-attaches open connections to a fresh
//! instance that does not know them (after a trap, or a reload from a version without
//! hand-over), this plugin has lost their state. Each such connection is registered again from
//! its query string as if new (the nick gets a suffix if taken), and is subscribed to its room
//! again. No `join` notice is sent to the room — the others never saw it leave — but the
//! connection itself gets a `welcome` with `"resumed": true`, so a client learns its nick and
//! room again (a `/nick` or `/join` made before the state was lost is forgotten). Its `members`
//! list holds only those resumed so far: a client should merge it into the list it has rather
//! than replace it, when the room did not change.

mod snapshot;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, log};

/// The subprotocol this plugin speaks.
const PROTOCOL: &str = "chat.v1";
/// The room of a connection that names none.
const DEFAULT_ROOM: &str = "lobby";
/// The longest nick, in characters.
const MAX_NICK: usize = 32;
/// The longest room name, in characters.
const MAX_ROOM: usize = 64;
/// The longest chat message, in bytes.
const MAX_TEXT: usize = 4096;
/// The most messages a room's history keeps.
const HISTORY_LINES: usize = 50;
/// The most bytes of nicks and text a room's history keeps, and the most bytes of JSON a
/// `welcome`'s `history` holds.
const HISTORY_BYTES: usize = 64 * 1024;
/// How many rooms without members keep their history (the most recently emptied ones).
const IDLE_HISTORIES: usize = 32;
/// The most bytes all rooms' histories keep together, so that many busy rooms cannot grow the
/// instance to its memory cap (a trap): past it, the largest history gives up its oldest lines.
const TOTAL_HISTORY_BYTES: usize = 8 << 20;

/// A room of more than this many members announces presence as counts (`presence`), not nicks,
/// and its `welcome` lists only this many members.
const LARGE_ROOM: usize = 50;
/// How often a large room's `presence` goes out, at most (unless the count moved by an eighth).
const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// One admitted connection.
struct Member {
    nick: String,
    room: String,
}

/// A message said in a room, as its history keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Line {
    nick: String,
    text: String,
}

impl Line {
    /// What the line counts for against [`HISTORY_BYTES`].
    fn size(&self) -> usize {
        self.nick.len() + self.text.len()
    }
}

/// A room's recent messages, oldest first.
#[derive(Default)]
struct History {
    lines: VecDeque<Line>,
    /// The sum of the lines' [`Line::size`].
    bytes: usize,
}

impl History {
    /// Appends a line, dropping the oldest ones beyond [`HISTORY_LINES`] or [`HISTORY_BYTES`].
    fn push(&mut self, line: Line) {
        self.bytes += line.size();
        self.lines.push_back(line);
        while self.lines.len() > HISTORY_LINES || self.bytes > HISTORY_BYTES {
            let Some(old) = self.lines.pop_front() else { break };
            self.bytes -= old.size();
        }
    }

    /// The `history` of a `welcome`: a JSON array of `{"nick", "text"}` objects, oldest first,
    /// holding the most recent lines that fit in [`HISTORY_BYTES`].
    fn to_json(&self) -> String {
        let mut parts = Vec::new();
        let mut size = 2;
        for line in self.lines.iter().rev() {
            let mut part = String::from("{\"nick\":");
            push_json_string(&mut part, &line.nick);
            part.push_str(",\"text\":");
            push_json_string(&mut part, &line.text);
            part.push('}');
            size += part.len() + 1;
            if size > HISTORY_BYTES {
                break;
            }
            parts.push(part);
        }
        parts.reverse();
        format!("[{}]", parts.join(","))
    }
}

/// Everything the plugin remembers about its route.
#[derive(Default)]
struct State {
    /// Admitted connections.
    members: BTreeMap<ConnectionId, Member>,
    /// Nicks in use, lower-cased, with their owners: nicks are unique per route, ignoring case.
    nicks: BTreeMap<String, ConnectionId>,
    /// Each room's members' nicks (sorted). A room without members is removed.
    rooms: BTreeMap<String, BTreeSet<String>>,
    /// Each room's recent messages. A room without members keeps its history while it is in
    /// `idle`.
    history: BTreeMap<String, History>,
    /// The rooms with a history but without members, the longest empty first; at most
    /// [`IDLE_HISTORIES`].
    idle: VecDeque<String>,
    /// Large rooms: the member count last announced and when (not in the snapshot: a restored
    /// large room announces its next change at once).
    announced: BTreeMap<String, (usize, Instant)>,
    /// Large rooms whose count changed since it was last announced.
    unannounced: BTreeSet<String>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

impl State {
    /// Whether `nick` is in use by a connection other than `except`.
    fn nick_taken(&self, nick: &str, except: Option<ConnectionId>) -> bool {
        self.nicks.get(&nick.to_lowercase()).is_some_and(|owner| Some(*owner) != except)
    }

    /// `wanted`, or `wanted-N` with the smallest N >= 2 that is free (cut to fit [`MAX_NICK`]).
    fn unique_nick(&self, wanted: &str) -> String {
        if !self.nick_taken(wanted, None) {
            return wanted.to_owned();
        }
        (2u64..)
            .map(|n| {
                let suffix = format!("-{n}");
                let base: String = wanted.chars().take(MAX_NICK - suffix.len()).collect();
                base + &suffix
            })
            .find(|nick| !self.nick_taken(nick, None))
            .expect("some suffix is free")
    }

    fn add(&mut self, id: ConnectionId, nick: String, room: String) {
        self.nicks.insert(nick.to_lowercase(), id);
        self.enter_room(&room, &nick);
        self.members.insert(id, Member { nick, room });
    }

    fn enter_room(&mut self, room: &str, nick: &str) {
        let nicks = self.rooms.entry(room.to_owned()).or_default();
        if nicks.is_empty() {
            self.idle.retain(|idle| idle != room);
        }
        nicks.insert(nick.to_owned());
    }

    fn remove(&mut self, id: ConnectionId) -> Option<Member> {
        let member = self.members.remove(&id)?;
        self.nicks.remove(&member.nick.to_lowercase());
        self.leave_room(&member.room, &member.nick);
        Some(member)
    }

    fn leave_room(&mut self, room: &str, nick: &str) {
        if let Some(nicks) = self.rooms.get_mut(room) {
            nicks.remove(nick);
            if nicks.is_empty() {
                self.rooms.remove(room);
                if self.history.contains_key(room) {
                    self.idle.push_back(room.to_owned());
                    self.forget_idle();
                }
            }
        }
    }

    /// Drops the oldest lines of the largest histories while all of them together hold more than
    /// [`TOTAL_HISTORY_BYTES`].
    fn bound_history(&mut self) {
        let mut total: usize = self.history.values().map(|h| h.bytes).sum();
        while total > TOTAL_HISTORY_BYTES {
            let Some(largest) = self.history.values_mut().max_by_key(|h| h.bytes) else { break };
            let Some(old) = largest.lines.pop_front() else { break };
            largest.bytes -= old.size();
            total -= old.size();
        }
    }

    /// Drops the histories of the longest empty rooms beyond [`IDLE_HISTORIES`].
    fn forget_idle(&mut self) {
        while self.idle.len() > IDLE_HISTORIES {
            if let Some(room) = self.idle.pop_front() {
                self.history.remove(&room);
            }
        }
    }

    fn members_of(&self, room: &str) -> Vec<&str> {
        self.rooms.get(room).map(|nicks| nicks.iter().map(String::as_str).collect()).unwrap_or_default()
    }

    /// Registers connection `id` as `nick` (made unique) in `room`, and returns the actions that
    /// announce it: a `join` to the room unless `resumed`, the subscription, and a `welcome`.
    fn admit(&mut self, id: ConnectionId, nick: &str, room: &str, resumed: bool) -> Vec<Action> {
        self.remove(id);
        let nick = self.unique_nick(nick);
        self.add(id, nick.clone(), room.to_owned());
        let mut actions = Vec::with_capacity(3);
        if !resumed {
            actions.extend(self.presence_changed(room, "join", &nick, Instant::now()));
        }
        actions.push(Action::subscribe(room));
        actions.push(Action::reply_text(self.welcome(&nick, room, resumed)));
        actions
    }

    /// The actions that re-attach connection `id` as the member it already is (after a reload
    /// handed its state over): the subscription to its room and a `welcome` with `resumed` and
    /// the current members, but no `join` notice and no history. `None` if `id` is unknown.
    fn resume(&self, id: ConnectionId) -> Option<Vec<Action>> {
        let Member { nick, room } = self.members.get(&id)?;
        Some(vec![Action::subscribe(room.as_str()), Action::reply_text(self.welcome(nick, room, true))])
    }

    /// A `welcome` to `room`: with its history for a joiner, with `"resumed": true` instead for
    /// a resumed connection (which saw those messages already).
    fn welcome(&self, nick: &str, room: &str, resumed: bool) -> String {
        let mut json = JsonObject::new("welcome");
        json.str("nick", nick);
        json.str("room", room);
        let members = self.members_of(room);
        json.list("members", &members[..members.len().min(LARGE_ROOM)]);
        json.number("count", members.len());
        if resumed {
            json.bool("resumed", true);
        } else {
            json.raw("history", &self.history.get(room).map_or_else(|| "[]".to_owned(), History::to_json));
        }
        json.finish()
    }

    fn on_text(&mut self, id: ConnectionId, text: &str) -> Vec<Action> {
        let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
        if let Some(command) = text.strip_prefix('/') {
            let (name, arg) =
                command.split_once(char::is_whitespace).map_or((command, ""), |(name, arg)| (name, arg.trim()));
            match name {
                "nick" => return self.rename(id, arg),
                "join" => return self.join(id, arg),
                "who" => return self.who(id),
                _ => {}
            }
        }
        self.say(id, text)
    }

    fn say(&mut self, id: ConnectionId, text: &str) -> Vec<Action> {
        if text.len() > MAX_TEXT {
            return vec![error(&format!("message too long: at most {MAX_TEXT} bytes"))];
        }
        if text.trim().is_empty() {
            return Vec::new();
        }
        let member = &self.members[&id];
        let mut json = JsonObject::new("message");
        json.str("nick", &member.nick);
        json.str("room", &member.room);
        json.str("text", text);
        let line = Line { nick: member.nick.clone(), text: text.to_owned() };
        let room = member.room.clone();
        self.history.entry(room.clone()).or_default().push(line);
        self.bound_history();
        vec![to_room(&room, json.finish())]
    }

    fn rename(&mut self, id: ConnectionId, new: &str) -> Vec<Action> {
        if new.is_empty() {
            return vec![error("usage: /nick NEW")];
        }
        if let Err(e) = check_name("nick", new, MAX_NICK) {
            return vec![error(&e)];
        }
        let member = &self.members[&id];
        if member.nick == new {
            return vec![error(&format!("you are already {new}"))];
        }
        if self.nick_taken(new, Some(id)) {
            return vec![error(&format!("nick {new} is taken"))];
        }
        let room = member.room.clone();
        let old = member.nick.clone();
        // Renamed in place: going through `remove` would empty the room for a moment.
        self.nicks.remove(&old.to_lowercase());
        self.nicks.insert(new.to_lowercase(), id);
        if let Some(nicks) = self.rooms.get_mut(&room) {
            nicks.remove(&old);
            nicks.insert(new.to_owned());
        }
        self.members.get_mut(&id).expect("member").nick = new.to_owned();
        log::info(&format!("{old} is now {new}"));
        let mut json = JsonObject::new("nick");
        json.str("old", &old);
        json.str("new", new);
        json.str("room", &room);
        vec![to_room(&room, json.finish())]
    }

    fn join(&mut self, id: ConnectionId, room: &str) -> Vec<Action> {
        if room.is_empty() {
            return vec![error("usage: /join ROOM")];
        }
        if let Err(e) = check_name("room", room, MAX_ROOM) {
            return vec![error(&e)];
        }
        let member = &self.members[&id];
        if member.room == room {
            return vec![error(&format!("you are already in {room}"))];
        }
        let nick = member.nick.clone();
        let old = member.room.clone();
        // Into the new room first: leaving the old one may forget the history of the longest
        // empty room, and that must not be the new room's.
        self.enter_room(room, &nick);
        self.leave_room(&old, &nick);
        self.members.get_mut(&id).expect("member").room = room.to_owned();
        let now = Instant::now();
        let mut actions = vec![Action::unsubscribe(old.as_str())];
        actions.extend(self.presence_changed(&old, "leave", &nick, now));
        actions.extend(self.presence_changed(room, "join", &nick, now));
        actions.push(Action::subscribe(room));
        actions.push(Action::reply_text(self.welcome(&nick, room, false)));
        actions
    }

    /// What tells `room` that `nick` joined or left it (`kind`), the change already made: `join`
    /// or `leave` in a small room; in a large one, `presence` when due (see [`State::due_presence`]);
    /// for a room that just shrank to [`LARGE_ROOM`], its whole member list.
    fn presence_changed(&mut self, room: &str, kind: &str, nick: &str, now: Instant) -> Vec<Action> {
        let count = self.rooms.get(room).map_or(0, BTreeSet::len);
        if count > LARGE_ROOM {
            self.announced.entry(room.to_owned()).or_insert((0, now - PRESENCE_EVERY));
            self.unannounced.insert(room.to_owned());
            return self.due_presence(now);
        }
        if self.announced.remove(room).is_some() || (kind == "leave" && count == LARGE_ROOM) {
            self.unannounced.remove(room);
            let mut json = JsonObject::new("members");
            json.str("room", room);
            json.list("members", &self.members_of(room));
            return vec![to_room(room, json.finish())];
        }
        vec![to_room(room, join_event(kind, nick, room))]
    }

    /// A `presence` for each large room whose count changed since it was last announced, if a
    /// second has passed since then or the count moved by an eighth of what was announced.
    fn due_presence(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let rooms = &self.rooms;
        self.unannounced.retain(|room| {
            let count = rooms.get(room).map_or(0, BTreeSet::len);
            let Some((announced, at)) = self.announced.get_mut(room) else { return false };
            if count == *announced {
                return false;
            }
            if now.duration_since(*at) < PRESENCE_EVERY && count.abs_diff(*announced) * 8 < *announced {
                return true;
            }
            *announced = count;
            *at = now;
            let mut json = JsonObject::new("presence");
            json.str("room", room);
            json.number("count", count);
            actions.push(to_room(room, json.finish()));
            false
        });
        actions
    }

    fn who(&self, id: ConnectionId) -> Vec<Action> {
        let room = &self.members[&id].room;
        let mut json = JsonObject::new("members");
        json.str("room", room);
        json.list("members", &self.members_of(room));
        vec![Action::reply_text(json.finish())]
    }
}

/// Checks a nick or room name: 1 to `max` characters, no whitespace or control characters.
fn check_name(what: &str, name: &str, max: usize) -> Result<(), String> {
    let count = name.chars().count();
    if count == 0 || count > max || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("a {what} must be 1 to {max} characters, without spaces or control characters"));
    }
    Ok(())
}

/// A `join` or `leave` event.
fn join_event(kind: &str, nick: &str, room: &str) -> String {
    let mut json = JsonObject::new(kind);
    json.str("nick", nick);
    json.str("room", room);
    json.finish()
}

/// Sends text to every member of `room`.
fn to_room(room: &str, json: String) -> Action {
    Action::publish_text(room, json)
}

/// An `error` event for the sender.
fn error(text: &str) -> Action {
    let mut json = JsonObject::new("error");
    json.str("text", text);
    Action::reply_text(json.finish())
}

/// A flat JSON object written field by field, starting with `"type"`.
struct JsonObject(String);

impl JsonObject {
    fn new(kind: &str) -> Self {
        let mut json = JsonObject(String::from("{"));
        json.str("type", kind);
        json
    }

    fn key(&mut self, key: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        push_json_string(&mut self.0, key);
        self.0.push(':');
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(&mut self.0, value);
    }

    fn list(&mut self, key: &str, values: &[&str]) {
        self.key(key);
        self.0.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            push_json_string(&mut self.0, value);
        }
        self.0.push(']');
    }

    /// A field whose value is JSON already.
    fn raw(&mut self, key: &str, json: &str) {
        self.key(key);
        self.0.push_str(json);
    }

    fn number(&mut self, key: &str, value: usize) {
        self.key(key);
        let _ = write!(self.0, "{value}");
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Appends `s` as a JSON string literal (RFC 8259): quotes, backslashes and control characters
/// are escaped, and so are U+2028 and U+2029 for the sake of JavaScript parsers.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c < ' ' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The plugin.
struct Chat;

impl Plugin for Chat {
    fn on_open(conn: Connection) -> Admission {
        let subprotocol = if conn.offers(PROTOCOL) {
            Some(PROTOCOL.to_owned())
        } else if conn.protocols.is_empty() || conn.resumed {
            None
        } else {
            return Admission::reject(400, "this endpoint requires the chat.v1 subprotocol");
        };
        if conn.resumed {
            let resumed = STATE.with_borrow(|state| {
                let actions = state.resume(conn.id)?;
                let Member { nick, room } = &state.members[&conn.id];
                log::info(&format!("{nick} is still in {room}"));
                Some(actions)
            });
            if let Some(actions) = resumed {
                return Admission::accept_with(subprotocol, actions);
            }
        }
        let default_nick = format!("guest-{}", conn.id);
        let nick = conn.query_param("nick").filter(|n| !n.is_empty()).unwrap_or_else(|| default_nick.clone());
        let room = conn.query_param("room").filter(|r| !r.is_empty()).unwrap_or_else(|| DEFAULT_ROOM.to_owned());
        let checked = check_name("nick", &nick, MAX_NICK).and_then(|()| check_name("room", &room, MAX_ROOM));
        let (nick, room) = match checked {
            Ok(()) => (nick, room),
            // A resumed connection cannot be refused any more: give it the defaults instead.
            Err(_) if conn.resumed => (default_nick, DEFAULT_ROOM.to_owned()),
            Err(e) => return Admission::reject(400, e),
        };
        let actions = STATE.with_borrow_mut(|state| {
            let mut actions = state.admit(conn.id, &nick, &room, conn.resumed);
            actions.extend(state.due_presence(Instant::now()));
            let nick = &state.members[&conn.id].nick;
            let how = if conn.resumed { "is back in" } else { "joined" };
            log::info(&format!("{nick} {how} {room}"));
            actions
        });
        Admission::accept_with(subprotocol, actions)
    }

    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        STATE.with_borrow_mut(|state| {
            let mut actions = Vec::new();
            if !state.members.contains_key(&conn) {
                // Not seen opening (the host did not tell this instance): take it in with the
                // defaults rather than fail.
                log::warn(&format!("message from unknown connection {conn}"));
                let nick = format!("guest-{conn}");
                actions = state.admit(conn, &nick, DEFAULT_ROOM, true);
            }
            match msg {
                Message::Text(text) => actions.extend(state.on_text(conn, &text)),
                Message::Binary(_) => actions.push(error("binary messages are not supported")),
            }
            actions.extend(state.due_presence(Instant::now()));
            actions
        })
    }

    fn on_close(conn: ConnectionId, _code: u16, _reason: String) -> Vec<Action> {
        STATE.with_borrow_mut(|state| match state.remove(conn) {
            Some(Member { nick, room }) => {
                log::info(&format!("{nick} left {room}"));
                let now = Instant::now();
                let mut actions = state.presence_changed(&room, "leave", &nick, now);
                actions.extend(state.due_presence(now));
                actions
            }
            None => state.due_presence(Instant::now()),
        })
    }

    fn snapshot() -> Vec<u8> {
        STATE.with_borrow(|state| {
            let bytes = snapshot::encode(state);
            log::info(&format!(
                "snapshot: {} connections, {} rooms, {} histories ({} bytes)",
                state.members.len(),
                state.rooms.len(),
                state.history.len(),
                bytes.len()
            ));
            bytes
        })
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let restored = snapshot::decode(&snapshot)?;
        log::info(&format!(
            "restored: {} connections, {} rooms, {} histories",
            restored.members.len(),
            restored.rooms.len(),
            restored.history.len()
        ));
        STATE.with_borrow_mut(|state| *state = restored);
        Ok(())
    }
}

wsplug_sdk::export_plugin!(Chat);

#[cfg(test)]
mod tests;
