//! The chat protocol, driven natively through the `Plugin` functions. Each test runs on its own
//! thread and so starts with empty state.

use serde_json::{Value, json};
use wsplug_sdk::{Acceptance, Target};

use super::*;

fn conn(id: ConnectionId, path: &str, protocols: &[&str], resumed: bool) -> Connection {
    Connection {
        id,
        path: path.to_owned(),
        headers: Vec::new(),
        remote_addr: "127.0.0.1:4000".to_owned(),
        protocols: protocols.iter().map(|p| p.to_string()).collect(),
        resumed,
    }
}

/// An action in a comparable form: `("reply" | "topic:ROOM" | "subscribe" | ..., payload)`.
fn show(action: Action) -> (String, Value) {
    match action {
        Action::Reply(Message::Text(text)) => ("reply".into(), parse(&text)),
        Action::Send(out) => match (out.to, out.message) {
            (Target::Topic(room), Message::Text(text)) => (format!("topic:{room}"), parse(&text)),
            other => panic!("unexpected send {other:?}"),
        },
        Action::Subscribe(room) => ("subscribe".into(), json!(room)),
        Action::Unsubscribe(room) => ("unsubscribe".into(), json!(room)),
        other => panic!("unexpected action {other:?}"),
    }
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
}

fn shown(actions: Vec<Action>) -> Vec<(String, Value)> {
    actions.into_iter().map(show).collect()
}

fn open(id: ConnectionId, path: &str) -> Vec<(String, Value)> {
    match Chat::on_open(conn(id, path, &["chat.v1"], false)) {
        Admission::Accept(Acceptance { subprotocol, actions }) => {
            assert_eq!(subprotocol.as_deref(), Some("chat.v1"));
            shown(actions)
        }
        Admission::Reject(r) => panic!("rejected: {r:?}"),
    }
}

fn say(id: ConnectionId, text: &str) -> Vec<(String, Value)> {
    shown(Chat::on_message(id, Message::text(text)))
}

fn pair(to: &str, value: Value) -> (String, Value) {
    (to.to_owned(), value)
}

#[test]
fn subprotocol_negotiation() {
    let accepted = |a: Admission| match a {
        Admission::Accept(a) => a.subprotocol,
        Admission::Reject(r) => panic!("rejected: {r:?}"),
    };
    let offered = Chat::on_open(conn(1, "/chat", &["x", "chat.v1"], false));
    assert_eq!(accepted(offered).as_deref(), Some("chat.v1"));
    let none = Chat::on_open(conn(2, "/chat", &[], false));
    assert_eq!(accepted(none), None);
    match Chat::on_open(conn(3, "/chat", &["chat.v2"], false)) {
        Admission::Reject(r) => {
            assert_eq!(r.status, 400);
            assert!(r.body.contains("chat.v1"));
        }
        Admission::Accept(_) => panic!("accepted without chat.v1"),
    }
}

#[test]
fn join_talk_rename_move_leave() {
    assert_eq!(
        open(1, "/chat?nick=ada"),
        [
            pair("topic:lobby", json!({"type": "join", "nick": "ada", "room": "lobby"})),
            pair("subscribe", json!("lobby")),
            pair(
                "reply",
                json!({"type": "welcome", "nick": "ada", "room": "lobby", "members": ["ada"], "count": 1, "history": []})
            ),
        ]
    );
    assert_eq!(
        open(2, "/chat?nick=bob&room=lobby")[2],
        pair(
            "reply",
            json!({"type": "welcome", "nick": "bob", "room": "lobby", "members": ["ada", "bob"], "count": 2, "history": []})
        )
    );
    assert_eq!(
        say(1, "hi \"there\"\n"),
        [pair("topic:lobby", json!({"type": "message", "nick": "ada", "room": "lobby", "text": "hi \"there\""}))]
    );
    assert_eq!(say(2, "/nick ADA"), [pair("reply", json!({"type": "error", "text": "nick ADA is taken"}))]);
    assert_eq!(
        say(2, "/nick bobby"),
        [pair("topic:lobby", json!({"type": "nick", "old": "bob", "new": "bobby", "room": "lobby"}))]
    );
    assert_eq!(
        say(1, "/who"),
        [pair("reply", json!({"type": "members", "room": "lobby", "members": ["ada", "bobby"]}))]
    );
    assert_eq!(
        say(1, "/join rust"),
        [
            pair("unsubscribe", json!("lobby")),
            pair("topic:lobby", json!({"type": "leave", "nick": "ada", "room": "lobby"})),
            pair("topic:rust", json!({"type": "join", "nick": "ada", "room": "rust"})),
            pair("subscribe", json!("rust")),
            pair(
                "reply",
                json!({"type": "welcome", "nick": "ada", "room": "rust", "members": ["ada"], "count": 1, "history": []})
            ),
        ]
    );
    assert_eq!(
        shown(Chat::on_close(2, 1000, String::new())),
        [pair("topic:lobby", json!({"type": "leave", "nick": "bobby", "room": "lobby"}))]
    );
    // The nick is free again.
    assert_eq!(say(1, "/nick bobby")[0].1["type"], "nick");
    // Closing twice, or an unknown connection, does nothing.
    assert!(Chat::on_close(2, 1000, String::new()).is_empty());
}

#[test]
fn defaults_and_duplicates() {
    let welcome = open(7, "/chat")[2].1.clone();
    assert_eq!(welcome["nick"], "guest-7");
    assert_eq!(welcome["room"], "lobby");
    assert_eq!(open(8, "/chat?nick=guest-7")[2].1["nick"], "guest-7-2");
    assert_eq!(open(9, "/chat?nick=Guest-7")[2].1["nick"], "Guest-7-3");
    let long = "x".repeat(32);
    assert_eq!(open(10, &format!("/chat?nick={long}"))[2].1["nick"], long);
    let suffixed = open(11, &format!("/chat?nick={long}"))[2].1["nick"].clone();
    assert_eq!(suffixed, format!("{}-2", "x".repeat(30)));
    // Percent-decoding and '+' in the query.
    let welcome = open(12, "/chat?nick=J%C3%BCrgen&room=caf%C3%A9")[2].1.clone();
    assert_eq!(welcome["nick"], "Jürgen");
    assert_eq!(welcome["room"], "café");
}

#[test]
fn invalid_names_are_refused() {
    for path in [
        "/chat?nick=a+b",
        "/chat?room=a%0Ab",
        &format!("/chat?nick={}", "n".repeat(33)),
        &format!("/chat?room={}", "r".repeat(65)),
    ] {
        match Chat::on_open(conn(1, path, &["chat.v1"], false)) {
            Admission::Reject(r) => assert_eq!(r.status, 400, "{path}"),
            Admission::Accept(_) => panic!("accepted {path}"),
        }
    }
    open(1, "/chat?nick=ok");
    for (line, error) in [
        ("/nick", "usage: /nick NEW"),
        ("/join   ", "usage: /join ROOM"),
        ("/nick ok", "you are already ok"),
        ("/join lobby", "you are already in lobby"),
    ] {
        assert_eq!(say(1, line), [pair("reply", json!({"type": "error", "text": error}))]);
    }
    for line in ["/nick two words".to_owned(), format!("/nick {}", "n".repeat(33)), format!("/join {}", "r".repeat(65))]
    {
        assert_eq!(say(1, &line)[0].1["type"], "error", "{line}");
    }
    assert_eq!(say(1, &format!("/nick {}", "é".repeat(32)))[0].1["type"], "nick");
}

#[test]
fn message_limits_and_binary() {
    open(1, "/chat?nick=ada");
    assert_eq!(say(1, &"a".repeat(4096))[0].0, "topic:lobby");
    assert_eq!(say(1, &"a".repeat(4097))[0].1["type"], "error");
    assert!(say(1, "   ").is_empty());
    // Unknown commands are ordinary messages.
    assert_eq!(say(1, "/me waves")[0].1["text"], "/me waves");
    assert_eq!(
        shown(Chat::on_message(1, Message::binary(vec![1, 2]))),
        [pair("reply", json!({"type": "error", "text": "binary messages are not supported"}))]
    );
}

#[test]
fn resumed_connections_are_registered_silently() {
    let admission = Chat::on_open(conn(5, "/chat?nick=ada&room=rust", &["chat.v1"], true));
    let Admission::Accept(acceptance) = admission else { panic!("rejected") };
    assert_eq!(
        shown(acceptance.actions),
        [
            pair("subscribe", json!("rust")),
            pair(
                "reply",
                json!({"type": "welcome", "nick": "ada", "room": "rust", "members": ["ada"], "count": 1,
                       "resumed": true})
            ),
        ]
    );
    // A resumed connection with a bad query is not refused.
    let admission = Chat::on_open(conn(6, "/chat?nick=a+b", &["chat.v1"], true));
    let Admission::Accept(acceptance) = admission else { panic!("rejected") };
    assert_eq!(shown(acceptance.actions)[1].1["nick"], "guest-6");
    // A message from a connection never seen is taken in with the defaults.
    let actions = say(9, "hello");
    assert_eq!(actions[0], pair("subscribe", json!("lobby")));
    assert_eq!(actions[2].1["text"], "hello");
}

#[test]
fn json_escaping() {
    let nasty = "q\" b\\ nl\n cr\r tab\t nul\0 esc\u{1b} del\u{7f} ls\u{2028} é 😀 </script>";
    let mut out = String::new();
    push_json_string(&mut out, nasty);
    assert_eq!(serde_json::from_str::<String>(&out).unwrap(), nasty);
    assert!(!out.contains('\n') && !out.contains('\0') && !out.contains('\u{2028}'));
}

/// The `history` of a connection's `welcome` (the last of its open actions).
fn history_of(actions: &[(String, Value)]) -> Value {
    let (to, welcome) = actions.last().expect("actions");
    assert_eq!((to.as_str(), &welcome["type"]), ("reply", &json!("welcome")));
    welcome["history"].clone()
}

fn resume(id: ConnectionId, path: &str) -> Vec<(String, Value)> {
    match Chat::on_open(conn(id, path, &["chat.v1"], true)) {
        Admission::Accept(acceptance) => shown(acceptance.actions),
        Admission::Reject(r) => panic!("rejected: {r:?}"),
    }
}

#[test]
fn joiners_get_the_last_50_messages() {
    open(1, "/chat?nick=ada");
    for i in 0..55 {
        say(1, &format!("line {i}"));
    }
    say(1, "<b>\"quoted\"</b>\n");
    let history = history_of(&open(2, "/chat?nick=bob"));
    let history = history.as_array().expect("an array");
    assert_eq!(history.len(), 50);
    assert_eq!(history[0], json!({"nick": "ada", "text": "line 6"}));
    assert_eq!(history[48], json!({"nick": "ada", "text": "line 54"}));
    assert_eq!(history[49], json!({"nick": "ada", "text": "<b>\"quoted\"</b>"}));
    // A history per room: /join sends the new room's.
    assert_eq!(history_of(&say(2, "/join rust")), json!([]));
    say(2, "in rust");
    assert_eq!(history_of(&say(1, "/join rust")), json!([{"nick": "bob", "text": "in rust"}]));
    // Renaming keeps what was said under the old nick.
    say(1, "/nick ada2");
    say(1, "renamed");
    assert_eq!(history_of(&say(2, "/join lobby")).as_array().unwrap().len(), 50);
    assert_eq!(
        history_of(&say(2, "/join rust")),
        json!([{"nick": "bob", "text": "in rust"}, {"nick": "ada2", "text": "renamed"}])
    );
    // Commands and blank lines are not history.
    say(2, "   ");
    say(2, "/who");
    assert_eq!(history_of(&open(3, "/chat?room=rust")).as_array().unwrap().len(), 2);
}

#[test]
fn long_histories_are_capped_in_bytes() {
    open(1, "/chat?nick=ada");
    for i in 0..50 {
        say(1, &format!("{i:02}{}", "\u{1}".repeat(4094)));
    }
    STATE.with_borrow(|state| {
        let history = &state.history["lobby"];
        assert!(history.bytes <= HISTORY_BYTES && history.lines.len() < 50, "{}", history.bytes);
    });
    let Admission::Accept(acceptance) = Chat::on_open(conn(2, "/chat", &[], false)) else { panic!("rejected") };
    let Some(Action::Reply(Message::Text(welcome))) = acceptance.actions.last() else { panic!("no welcome") };
    // Each "\u0001" is 6 bytes of JSON: only the last few lines fit.
    assert!(welcome.len() < HISTORY_BYTES + 200, "{}", welcome.len());
    let history = parse(welcome)["history"].as_array().unwrap().clone();
    assert!(!history.is_empty());
    assert!(history.last().unwrap()["text"].as_str().unwrap().starts_with("49"));
}

#[test]
fn empty_rooms_keep_their_history_for_a_while() {
    open(1, "/chat?nick=ada&room=r0");
    say(1, "hello r0");
    Chat::on_close(1, 1000, String::new());
    assert_eq!(history_of(&open(2, "/chat?room=r0")), json!([{"nick": "ada", "text": "hello r0"}]));
    // Emptied again, then 32 other rooms are emptied after it: it is forgotten.
    Chat::on_close(2, 1000, String::new());
    for i in 1..=IDLE_HISTORIES as u64 {
        open(10 + i, &format!("/chat?room=r{i}"));
        say(10 + i, "hi");
        Chat::on_close(10 + i, 1000, String::new());
    }
    assert_eq!(history_of(&open(3, "/chat?room=r0")), json!([]));
    // Moving from a room that empties to the longest empty one, with as many empty rooms as are
    // kept: the new room is no longer empty, so the old one takes its place and nothing is lost.
    say(3, "hello again");
    assert_eq!(history_of(&say(3, "/join r1")), json!([{"nick": "guest-11", "text": "hi"}]));
    STATE.with_borrow(|state| {
        assert_eq!(state.idle.len(), IDLE_HISTORIES);
        assert_eq!(state.idle.front().map(String::as_str), Some("r2"));
        assert_eq!(state.idle.back().map(String::as_str), Some("r0"));
        assert_eq!(state.history.len(), IDLE_HISTORIES + 1);
    });
}

/// Ada and Bob in the lobby, Cy renamed and moved to rust, with a history in both rooms.
fn populate() {
    open(1, "/chat?nick=ada");
    open(2, "/chat?nick=bob");
    open(3, "/chat?nick=cy");
    say(1, "hi all");
    say(3, "/nick cyril");
    say(3, "/join rust");
    say(3, "rust \"rocks\"");
}

/// A reload: the old version's snapshot is restored into a fresh instance.
fn reload() {
    let snapshot = Chat::snapshot();
    Chat::restore(Vec::new()).expect("an empty snapshot starts fresh");
    assert!(STATE.with_borrow(|state| state.members.is_empty() && state.history.is_empty()));
    Chat::restore(snapshot).expect("restore");
}

#[test]
fn snapshot_format() {
    populate();
    let snapshot = parse(std::str::from_utf8(&Chat::snapshot()).unwrap());
    assert_eq!(
        snapshot,
        json!({
            "version": 1,
            "members": [
                {"id": 1, "nick": "ada", "room": "lobby"},
                {"id": 2, "nick": "bob", "room": "lobby"},
                {"id": 3, "nick": "cyril", "room": "rust"},
            ],
            "history": {
                "lobby": [{"nick": "ada", "text": "hi all"}],
                "rust": [{"nick": "cyril", "text": "rust \"rocks\""}],
            },
        })
    );
}

#[test]
fn snapshot_restore_round_trip() {
    populate();
    Chat::on_close(2, 1000, String::new());
    open(4, "/chat?nick=dee&room=quiet");
    say(4, "anyone?");
    Chat::on_close(4, 1000, String::new()); // "quiet" is empty but keeps its history
    let before = Chat::snapshot();
    reload();
    assert_eq!(Chat::snapshot(), before);
    STATE.with_borrow(|state| {
        assert_eq!(state.members.len(), 2);
        assert_eq!(state.nicks.keys().collect::<Vec<_>>(), ["ada", "cyril"]);
        assert_eq!(state.members_of("lobby"), ["ada"]);
        assert_eq!(state.members_of("rust"), ["cyril"]);
        assert_eq!(state.idle, ["quiet"]);
        assert_eq!(state.history["lobby"].bytes, "adahi all".len());
    });
    // Taken nicks stay taken; a newcomer gets every room's history.
    let actions = open(5, "/chat?nick=CYRIL&room=quiet");
    assert_eq!(actions[2].1["nick"], "CYRIL-2");
    assert_eq!(history_of(&actions), json!([{"nick": "dee", "text": "anyone?"}]));
    assert_eq!(history_of(&say(5, "/join lobby")), json!([{"nick": "ada", "text": "hi all"}]));
}

#[test]
fn resumed_connections_keep_their_nick_and_room() {
    populate();
    reload();
    // Cy's query still says "cy" in the lobby, but it is cyril in rust now: that is kept, silently.
    assert_eq!(
        resume(3, "/chat?nick=cy"),
        [
            pair("subscribe", json!("rust")),
            pair(
                "reply",
                json!({"type": "welcome", "nick": "cyril", "room": "rust", "members": ["cyril"], "count": 1, "resumed": true})
            ),
        ]
    );
    // The members list is the room's whole list, before the others are back.
    assert_eq!(resume(2, "/chat?nick=bob")[1].1["members"], json!(["ada", "bob"]));
    // Carrying on where they were.
    assert_eq!(
        say(3, "still here"),
        [pair("topic:rust", json!({"type": "message", "nick": "cyril", "room": "rust", "text": "still here"}))]
    );
    // A connection the snapshot does not know is registered from its query, as after a trap.
    assert_eq!(
        resume(9, "/chat?nick=ada&room=rust"),
        [
            pair("subscribe", json!("rust")),
            pair(
                "reply",
                json!({"type": "welcome", "nick": "ada-2", "room": "rust", "members": ["ada-2", "cyril"], "count": 2,
                       "resumed": true})
            ),
        ]
    );
    // A restored member that closes before being re-attached leaves as usual.
    assert_eq!(
        shown(Chat::on_close(1, 1006, String::new())),
        [pair("topic:lobby", json!({"type": "leave", "nick": "ada", "room": "lobby"}))]
    );
}

#[test]
fn bad_snapshots_are_refused() {
    populate();
    let before = Chat::snapshot();
    let refused = |bytes: &[u8], expected: &str| {
        let err = Chat::restore(bytes.to_vec()).expect_err(&String::from_utf8_lossy(bytes));
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
    };
    refused(br#"{"version":2,"members":[],"history":{}}"#, "unsupported chat snapshot version 2");
    refused(br#"{"version":"1"}"#, "unsupported chat snapshot version \"1\"");
    refused(br#"{"members":[],"history":{}}"#, "no \"version\" field");
    refused(b"garbage", "malformed chat snapshot");
    refused(b"[1, 2]", "malformed chat snapshot");
    refused(b"\xff\xfe{}", "malformed chat snapshot");
    refused(br#"{"version":1,"members":[],"history":{}"#, "malformed chat snapshot");
    refused(br#"{"version":1}"#, "malformed chat snapshot (version 1): missing field `members`");
    refused(br#"{"version":1,"members":[{"id":1,"nick":"a"}],"history":{}}"#, "missing field `room`");
    refused(
        br#"{"version":1,"members":[{"id":1,"nick":"a","room":"x"},{"id":1,"nick":"b","room":"x"}],"history":{}}"#,
        "connection 1 is listed twice",
    );
    refused(
        br#"{"version":1,"members":[{"id":1,"nick":"a","room":"x"},{"id":2,"nick":"A","room":"y"}],"history":{}}"#,
        "nick \"A\" is used twice",
    );
    refused(br#"{"version":1,"members":[{"id":1,"nick":"a b","room":"x"}],"history":{}}"#, "connection 1: a nick");
    refused(br#"{"version":1,"members":[],"history":{"":[]}}"#, "a room must be");
    // A refused snapshot leaves the state as it was.
    assert_eq!(Chat::snapshot(), before);
}

#[test]
fn lenient_snapshots_are_accepted() {
    // Fields version 1 does not know are ignored; long histories are cut to the limits.
    let lines: Vec<Value> = (0..60).map(|i| json!({"nick": "old", "text": format!("m{i}")})).collect();
    let snapshot = json!({
        "version": 1,
        "members": [{"id": 4, "nick": "ada", "room": "lobby", "color": "red"}],
        "history": {"lobby": lines, "empty": []},
        "later": true,
    });
    Chat::restore(serde_json::to_vec(&snapshot).unwrap()).expect("restore");
    let history = history_of(&open(5, "/chat?nick=bob"));
    assert_eq!(history.as_array().unwrap().len(), 50);
    assert_eq!(history[0]["text"], "m10");
    STATE.with_borrow(|state| assert!(!state.history.contains_key("empty")));
    // An empty snapshot: a fresh start.
    Chat::restore(Vec::new()).expect("empty snapshot");
    assert_eq!(
        parse(std::str::from_utf8(&Chat::snapshot()).unwrap()),
        json!({"version": 1, "members": [], "history": {}})
    );
}

#[test]
fn all_histories_together_stay_under_their_total_bound() {
    // 200 busy rooms of 64 KiB each would be 12.5 MiB: more than the total bound.
    for room in 0..200u64 {
        open(1000 + room, &format!("/chat?nick=n{room}&room=r{room}"));
        for i in 0..16 {
            say(1000 + room, &format!("{i:02}{}", "x".repeat(4000)));
        }
    }
    STATE.with_borrow(|state| {
        let total: usize = state.history.values().map(|h| h.bytes).sum();
        assert!(total <= TOTAL_HISTORY_BYTES, "{total} bytes of history");
        assert!(total > TOTAL_HISTORY_BYTES - 8192, "trimmed far more than needed: {total}");
        // The latest line of every room is kept: only the oldest lines of the largest go.
        assert!(state.history.values().all(|h| h.lines.back().is_some_and(|l| l.text.starts_with("15"))));
    });
}

/// Opens `/chat?nick=u{id}` for each id, returning the actions of the last one.
fn open_many(ids: std::ops::RangeInclusive<ConnectionId>) -> Vec<(String, Value)> {
    let mut last = Vec::new();
    for id in ids {
        last = open(id, &format!("/chat?nick=u{id:04}"));
    }
    last
}

fn presence(count: usize) -> (String, Value) {
    pair("topic:lobby", json!({"type": "presence", "room": "lobby", "count": count}))
}

#[test]
fn large_rooms_announce_counts_not_nicks() {
    // Up to LARGE_ROOM members, every join is named.
    let fiftieth = open_many(1..=50);
    assert_eq!(fiftieth[0], pair("topic:lobby", json!({"type": "join", "nick": "u0050", "room": "lobby"})));
    // The 51st makes the room large: its count goes out at once, and nobody is named.
    let joined = open(51, "/chat?nick=u0051");
    assert_eq!(joined[0], presence(51));
    assert_eq!(joined[1], pair("subscribe", json!("lobby")));
    let welcome = &joined[2].1;
    assert_eq!(welcome["count"], 51);
    assert_eq!(welcome["members"].as_array().unwrap().len(), LARGE_ROOM, "a welcome lists the first 50");
    // Within the second, a small change waits...
    assert_eq!(open(52, "/chat?nick=u0052").len(), 2, "subscribe and welcome only");
    assert!(say(1, "hello")[1..].is_empty(), "nothing due yet");
    // ... until a second has passed (it goes out with the next event then) ...
    let later = Instant::now() + PRESENCE_EVERY;
    assert_eq!(shown(STATE.with_borrow_mut(|s| s.due_presence(later))), [presence(52)]);
    // ... or the count has moved by an eighth of the last one announced (52 → 59).
    open_many(53..=58);
    assert_eq!(open(59, "/chat?nick=u0059")[0], presence(59));
    // `/who` lists everyone.
    assert_eq!(say(1, "/who")[0].1["members"].as_array().unwrap().len(), 59);
    // Leaving is counted the same way; shrinking back to 50 gives the room its whole list.
    for id in 51..=58 {
        Chat::on_close(id, 1000, String::new());
    }
    let members = shown(Chat::on_close(59, 1000, String::new()));
    assert_eq!(members.len(), 1);
    assert_eq!((members[0].0.as_str(), &members[0].1["type"]), ("topic:lobby", &json!("members")));
    assert_eq!(members[0].1["members"].as_array().unwrap().len(), 50);
    // Small again: leaves are named.
    assert_eq!(
        shown(Chat::on_close(50, 1000, String::new())),
        [pair("topic:lobby", json!({"type": "leave", "nick": "u0050", "room": "lobby"}))]
    );
}

#[test]
fn a_join_storm_costs_linear_bytes() {
    // 3,000 joins in one room, as fast as they come: count every byte the server would deliver
    // (a message to the room reaches each of its members at that moment).
    let joins = 3_000u64;
    let mut delivered = 0usize;
    for id in 1..=joins {
        for (to, value) in open(id, &format!("/chat?nick=user-{id}")) {
            let size = value.to_string().len();
            delivered += match to.as_str() {
                "topic:lobby" => size * (id as usize - 1), // the members before this one
                "reply" => size,
                _ => 0,
            };
        }
    }
    // Naming every joiner to every member would be about n²/2 × 45 B ≈ 200 MB, and a full member
    // list in every welcome about n²/2 × 12 B ≈ 54 MB. Linear: a few KiB per member.
    let per_member = delivered / joins as usize;
    assert!(per_member < 8 * 1024, "{delivered} bytes delivered for {joins} joins: {per_member} per member");
}
