//! A probe plugin for the host's tests: each text message names the action to perform, so a test
//! can exercise every action kind over real connections and observe the result.
//!
//! | message | action |
//! |---|---|
//! | `id` | reply with the sender's connection id |
//! | `reply X` / `sender X` | `reply(X)` / `send(sender, X)` |
//! | `broadcast X` | `broadcast(X)` |
//! | `everyone X` / `others X` | `send(everyone, X)` / `send(others, X)` |
//! | `to ID X` | `send(connection(ID), X)` |
//! | `pub TOPIC X` | `send(topic(TOPIC), X)` |
//! | `sub TOPIC` / `unsub TOPIC` | `subscribe` / `unsubscribe`, then reply `ok` |
//! | `close CODE REASON` | `close` |
//! | `panic` | panics (to watch the host rebuild the instance and resume the others) |
//! | `tagged X` | reply `TAG X`, TAG being this build's version tag (see [`TAG`]) |
//! | anything else | echoed |
//!
//! `on-open`: `?reject=STATUS` rejects with that status; `?proto=P` accepts with subprotocol P
//! (offered or not); `?greet=1` sends `welcome ID` as a first action; `resumed` connections are
//! told `resumed ID`. `on-close` sends `closed ID CODE` to everyone left on the route.

use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, Target};

/// A version tag that hot-reload tests patch in the compiled `.wasm` (same length, e.g.
/// `wsplug-tag:v0001`) to make distinguishable versions of one build.
static TAG: &str = "wsplug-tag:v0000";

struct Probe;

impl Plugin for Probe {
    fn on_open(conn: Connection) -> Admission {
        if conn.resumed {
            return Admission::accept_with(None, vec![Action::reply_text(format!("resumed {}", conn.id))]);
        }
        if let Some(status) = conn.query_param("reject") {
            return Admission::reject(status.parse().unwrap_or(403), "rejected by probe");
        }
        let actions = if conn.query_param("greet").is_some() {
            vec![Action::reply_text(format!("welcome {}", conn.id))]
        } else {
            vec![]
        };
        Admission::accept_with(conn.query_param("proto"), actions)
    }

    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        let Some(text) = msg.as_text() else { return vec![Action::Reply(msg)] };
        let (command, rest) = text.split_once(' ').unwrap_or((text, ""));
        let send = |to: Target, text: &str| Action::send_text(to, text);
        match command {
            "id" => vec![Action::reply_text(conn.to_string())],
            "panic" => panic!("probe: asked to panic"),
            "tagged" => {
                let tag = std::hint::black_box(TAG);
                vec![Action::reply_text(format!("{} {rest}", &tag[11..]))]
            }
            "reply" => vec![Action::reply_text(rest)],
            "sender" => vec![send(Target::Sender, rest)],
            "broadcast" => vec![Action::broadcast_text(rest)],
            "everyone" => vec![send(Target::Everyone, rest)],
            "others" => vec![send(Target::Others, rest)],
            "to" => {
                let (id, body) = rest.split_once(' ').unwrap_or((rest, ""));
                vec![send(Target::Connection(id.parse().unwrap_or(0)), body)]
            }
            "pub" => {
                let (topic, body) = rest.split_once(' ').unwrap_or((rest, ""));
                vec![send(Target::Topic(topic.into()), body)]
            }
            "sub" => vec![Action::subscribe(rest), Action::reply_text("ok")],
            "unsub" => vec![Action::unsubscribe(rest), Action::reply_text("ok")],
            // A reply, then a close the host must refuse (e.g. 1005): the reply still goes first.
            "reply-then-close" => vec![Action::reply_text("before"), Action::close(rest.parse().unwrap_or(1000), "")],
            "close" => {
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                vec![Action::close(code.parse().unwrap_or(1000), reason)]
            }
            _ => vec![Action::Reply(msg)],
        }
    }

    fn on_close(conn: ConnectionId, code: u16, _reason: String) -> Vec<Action> {
        vec![Action::send_text(Target::Everyone, format!("closed {conn} {code}"))]
    }
}

wsplug_sdk::export_plugin!(Probe);
