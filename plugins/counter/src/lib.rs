//! Named counters in the route's key-value store (contract 0.2.0's `kv`): they survive reloads,
//! rebuilds and restarts of the server, and every instance of the route shares them.
//!
//! Text commands: `incr NAME` (answers the new value), `get NAME`, `reset NAME`, `list` (the
//! counters, `NAME=VALUE` comma-separated). Each counter is the key `count/NAME`, its value the
//! decimal number. `incr` is a compare-and-swap, so two instances incrementing at once cannot
//! lose an increment (one of the two calls fails instead, and its client sees 1011).

use wsplug_sdk::{Action, ConnectionId, Message, Plugin, kv};

struct Counter;

fn key(name: &str) -> String {
    format!("count/{name}")
}

fn value(bytes: Option<Vec<u8>>) -> u64 {
    bytes.and_then(|b| String::from_utf8(b).ok()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn incr(name: &str) -> Result<u64, String> {
    let key = key(name);
    let old = kv::get(&key);
    let next = value(old.clone()) + 1;
    if kv::compare_and_swap(&key, old.as_deref(), Some(next.to_string().as_bytes()))? {
        Ok(next)
    } else {
        Err("changed meanwhile".into())
    }
}

impl Plugin for Counter {
    fn on_message(_conn: ConnectionId, msg: Message) -> Vec<Action> {
        let Some(text) = msg.as_text() else { return vec![Action::reply_text("text only")] };
        let (command, name) = text.split_once(' ').unwrap_or((text, ""));
        let valid = !name.is_empty() && name.len() <= 64 && !name.contains(char::is_whitespace);
        let answer = match command {
            "incr" if valid => match incr(name) {
                Ok(n) => format!("{name}={n}"),
                Err(e) => format!("error: {e}"),
            },
            "get" if valid => format!("{name}={}", value(kv::get(&key(name)))),
            "reset" if valid => {
                kv::delete(&key(name));
                format!("{name}=0")
            }
            "list" => kv::keys("count/", 100)
                .iter()
                .map(|k| format!("{}={}", &k["count/".len()..], value(kv::get(k))))
                .collect::<Vec<_>>()
                .join(","),
            _ => "say: incr NAME, get NAME, reset NAME, list".into(),
        };
        vec![Action::reply_text(answer)]
    }
}

wsplug_sdk::export_plugin!(Counter);
