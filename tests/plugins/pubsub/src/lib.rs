//! A test plugin for the topics engine: a line protocol over text messages that drives topics,
//! history and presence directly, so that tests (and the cluster benchmark) can check what the
//! host does with them. `?sub=TOPIC` (repeatable) subscribes the connection when it opens.
//!
//! - `sub TOPIC` / `unsub TOPIC`: (un)subscribes the sender; replies `ok`;
//! - `pub TOPIC TEXT`: publishes TEXT to TOPIC (no reply); `bin TOPIC TEXT`: the same as binary;
//! - `all TEXT`: broadcasts TEXT to the whole route (every node);
//! - `count TOPIC`: replies `count N` (presence on every node);
//! - `members TOPIC`: replies `members node/id,node/id,...` or `error REASON`;
//! - `pos TOPIC`: replies `pos EPOCH OFFSET` or `pos none`;
//! - `from TOPIC EPOCH OFFSET`: subscribes the sender recovering from that position;
//! - `events`: replies with the presence events received since the last `events`, one per line
//!   (`TOPIC COUNT +joined -left ~omitted`), and forgets them.

use std::cell::RefCell;

use wsplug_sdk::topics::{self, Position, PresenceEvent};
use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, Target, query_params};

thread_local! {
    static EVENTS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct PubSub;

impl Plugin for PubSub {
    fn on_open(conn: Connection) -> Admission {
        let subs = query_params(&conn.path)
            .into_iter()
            .filter(|(k, _)| k == "sub")
            .map(|(_, v)| Action::subscribe(v))
            .collect();
        Admission::accept_with(None, subs)
    }

    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        let Some(text) = msg.as_text() else { return Vec::new() };
        let mut words = text.splitn(3, ' ');
        let (verb, topic, rest) = (words.next().unwrap_or(""), words.next().unwrap_or(""), words.next().unwrap_or(""));
        match verb {
            "sub" => vec![Action::subscribe(topic), Action::reply_text("ok")],
            "unsub" => vec![Action::unsubscribe(topic), Action::reply_text("ok")],
            "pub" => vec![Action::publish_text(topic, rest)],
            "bin" => vec![Action::send(Target::Topic(topic.into()), Message::binary(rest.as_bytes().to_vec()))],
            "all" => vec![Action::broadcast_text(format!("{topic} {rest}").trim_end().to_owned())],
            "count" => vec![Action::reply_text(format!("count {}", topics::presence_count(topic)))],
            "members" => vec![Action::reply_text(match topics::presence_members(topic, 100_000) {
                Ok(members) => {
                    let list: Vec<String> = members.iter().map(|m| format!("{}/{}", m.node, m.connection)).collect();
                    format!("members {}", list.join(","))
                }
                Err(e) => format!("error {e}"),
            })],
            "pos" => vec![Action::reply_text(match topics::last_position(topic) {
                Some(p) => format!("pos {} {}", p.epoch, p.offset),
                None => "pos none".into(),
            })],
            "from" => {
                let mut parts = rest.splitn(2, ' ');
                let epoch = parts.next().unwrap_or("").to_owned();
                let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(0);
                match topics::subscribe_from(conn, topic, &Position { epoch, offset }) {
                    Ok(()) => Vec::new(),
                    Err(e) => vec![Action::reply_text(format!("error {e}"))],
                }
            }
            "events" => {
                let lines = EVENTS.with(|e| std::mem::take(&mut *e.borrow_mut()));
                vec![Action::reply_text(lines.join("\n"))]
            }
            _ => vec![Action::reply_text("error unknown command")],
        }
    }

    fn on_presence(events: Vec<PresenceEvent>) -> Vec<Action> {
        let ids = |list: &[topics::Member]| {
            list.iter().map(|m| format!("{}/{}", m.node, m.connection)).collect::<Vec<_>>().join(",")
        };
        EVENTS.with(|e| {
            let mut e = e.borrow_mut();
            for ev in &events {
                e.push(format!("{} {} +{} -{} ~{}", ev.topic, ev.count, ids(&ev.joined), ids(&ev.left), ev.omitted));
            }
            // Bounded: a test that never asks keeps the last 1,000 lines.
            let excess = e.len().saturating_sub(1000);
            e.drain(..excess);
        });
        Vec::new()
    }
}

wsplug_sdk::export_plugin!(PubSub);
