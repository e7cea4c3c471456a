//! The chat's state snapshot, handed from one version of the plugin to the next on hot reload.
//!
//! A snapshot is a JSON object (UTF-8):
//!
//! ```json
//! {
//!   "version": 1,
//!   "members": [{"id": 3, "nick": "ada", "room": "lobby"}, {"id": 5, "nick": "bob", "room": "rust"}],
//!   "history": {"lobby": [{"nick": "ada", "text": "hi"}, {"nick": "bob", "text": "hello"}]}
//! }
//! ```
//!
//! * `version`: the format, 1. A version that changes the meaning of these fields must bump it;
//!   fields this version does not know are ignored.
//! * `members`: the admitted connections, by connection id, with their nick and room (rooms and
//!   their member lists are made from these).
//! * `history`: each room's recent messages, oldest first, rooms without members included.
//!
//! [`decode`] reads version 1. It refuses, with an error that says why, bytes that are not such
//! JSON, another version, and members it could not take in (an invalid nick or room, an id or
//! nick listed twice). An empty snapshot (from a version without hand-over) starts fresh.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wsplug_sdk::ConnectionId;

use crate::{Line, MAX_NICK, MAX_ROOM, State, check_name};

/// The format [`encode`] writes, and the only one [`decode`] reads.
const VERSION: u64 = 1;

/// A version 1 snapshot, as written (borrowing from the state).
#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u64,
    members: Vec<MemberOut<'a>>,
    history: BTreeMap<&'a str, &'a VecDeque<Line>>,
}

#[derive(Serialize)]
struct MemberOut<'a> {
    id: ConnectionId,
    nick: &'a str,
    room: &'a str,
}

/// What every version has: read first, to know how to read the rest.
#[derive(Deserialize)]
struct Header {
    version: Option<Value>,
}

/// A version 1 snapshot, as read.
#[derive(Deserialize)]
struct SnapshotV1 {
    members: Vec<MemberV1>,
    history: BTreeMap<String, Vec<Line>>,
}

#[derive(Deserialize)]
struct MemberV1 {
    id: ConnectionId,
    nick: String,
    room: String,
}

/// The snapshot of `state`, in the current format.
pub(crate) fn encode(state: &State) -> Vec<u8> {
    let snapshot = SnapshotOut {
        version: VERSION,
        members: state
            .members
            .iter()
            .map(|(&id, member)| MemberOut { id, nick: &member.nick, room: &member.room })
            .collect(),
        history: state
            .history
            .iter()
            .filter(|(_, history)| !history.lines.is_empty())
            .map(|(room, history)| (room.as_str(), &history.lines))
            .collect(),
    };
    serde_json::to_vec(&snapshot).expect("a snapshot is always serializable")
}

/// The state a snapshot describes: a fresh one for an empty snapshot.
pub(crate) fn decode(bytes: &[u8]) -> Result<State, String> {
    if bytes.is_empty() {
        return Ok(State::default());
    }
    let header: Header = serde_json::from_slice(bytes).map_err(|e| format!("malformed chat snapshot: {e}"))?;
    match header.version {
        Some(version) if version == VERSION => {}
        Some(version) => {
            return Err(format!(
                "unsupported chat snapshot version {version} (this version of chat reads version {VERSION})"
            ));
        }
        None => return Err("malformed chat snapshot: no \"version\" field".to_owned()),
    }
    let snapshot: SnapshotV1 =
        serde_json::from_slice(bytes).map_err(|e| format!("malformed chat snapshot (version 1): {e}"))?;

    let mut state = State::default();
    for MemberV1 { id, nick, room } in snapshot.members {
        check_name("nick", &nick, MAX_NICK)
            .and_then(|()| check_name("room", &room, MAX_ROOM))
            .map_err(|e| format!("invalid chat snapshot: connection {id}: {e}"))?;
        if state.members.contains_key(&id) {
            return Err(format!("invalid chat snapshot: connection {id} is listed twice"));
        }
        if state.nick_taken(&nick, None) {
            return Err(format!("invalid chat snapshot: nick {nick:?} is used twice"));
        }
        state.add(id, nick, room);
    }
    for (room, lines) in snapshot.history {
        check_name("room", &room, MAX_ROOM).map_err(|e| format!("invalid chat snapshot: history of {room:?}: {e}"))?;
        if lines.is_empty() {
            continue;
        }
        let history = state.history.entry(room.clone()).or_default();
        for line in lines {
            history.push(line);
        }
        if !state.rooms.contains_key(&room) {
            state.idle.push_back(room);
        }
    }
    state.forget_idle();
    Ok(state)
}
