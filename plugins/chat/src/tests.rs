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
            pair("reply", json!({"type": "welcome", "nick": "ada", "room": "lobby", "members": ["ada"]})),
        ]
    );
    assert_eq!(
        open(2, "/chat?nick=bob&room=lobby")[2],
        pair("reply", json!({"type": "welcome", "nick": "bob", "room": "lobby", "members": ["ada", "bob"]}))
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
            pair("reply", json!({"type": "welcome", "nick": "ada", "room": "rust", "members": ["ada"]})),
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
                json!({"type": "welcome", "nick": "ada", "room": "rust", "members": ["ada"],
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
