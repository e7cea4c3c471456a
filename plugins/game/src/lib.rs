//! A game room on the platform of contract 0.2.0: a repeating `tick` timer broadcast to the room,
//! and each player's name kept as a connection attachment (see README.md).

use std::cell::Cell;

use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, attachments, log, timers};

/// The tick period.
const TICK_MS: u64 = 100;
/// The room every player is subscribed to.
const ROOM: &str = "game";
/// The snapshot format: `{"version":1,"tick":N,"players":P}`.
const SNAPSHOT_VERSION: u64 = 1;

thread_local! {
    /// Ticks so far: the only state, handed over on reload.
    static TICKS: Cell<u64> = const { Cell::new(0) };
    /// Players in the room (to cancel the tick when the last one leaves).
    static PLAYERS: Cell<u64> = const { Cell::new(0) };
}

struct Game;

fn to_room(value: serde_json::Value) -> Action {
    Action::send_text(wsplug_sdk::Target::Topic(ROOM.into()), value.to_string())
}

fn name_of(conn: ConnectionId) -> String {
    attachments::get(conn).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| format!("player-{conn}"))
}

fn start_ticking() -> Result<(), String> {
    timers::set("tick", TICK_MS, Some(TICK_MS))
}

impl Plugin for Game {
    fn on_open(conn: Connection) -> Admission {
        // A resumed connection was counted before (the count is in the snapshot).
        if !conn.resumed {
            PLAYERS.set(PLAYERS.get() + 1);
            let name = conn.query_param("name").filter(|n| !n.is_empty() && n.len() <= 32);
            let name = name.unwrap_or_else(|| format!("player-{}", conn.id));
            if let Err(e) = attachments::set(conn.id, name.as_bytes()) {
                return Admission::reject(500, &e);
            }
            if !timers::names().iter().any(|t| t == "tick")
                && let Err(e) = start_ticking()
            {
                log::warn(&format!("no tick: {e}"));
            }
        }
        let welcome = serde_json::json!({"type": "welcome", "name": name_of(conn.id), "tick": TICKS.get()});
        Admission::accept_with(None, vec![Action::Subscribe(ROOM.into()), Action::reply_text(welcome.to_string())])
    }

    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        let Some(text) = msg.as_text() else { return vec![Action::reply_text("text only")] };
        match text {
            "/pause" => {
                timers::cancel("tick");
                vec![Action::reply_text("paused")]
            }
            "/resume" => match start_ticking() {
                Ok(()) => vec![Action::reply_text("resumed")],
                Err(e) => vec![Action::reply_text(e)],
            },
            "/timers" => vec![Action::reply_text(timers::names().join(","))],
            "panic" => panic!("game: asked to panic"),
            _ => match text.strip_prefix("move ") {
                Some(to) => vec![to_room(serde_json::json!({"type": "moved", "name": name_of(conn), "to": to}))],
                None => vec![Action::reply_text("say: move X, /pause, /resume, /timers")],
            },
        }
    }

    fn on_close(_conn: ConnectionId, _code: u16, _reason: String) -> Vec<Action> {
        PLAYERS.set(PLAYERS.get().saturating_sub(1));
        if PLAYERS.get() == 0 {
            timers::cancel("tick");
        }
        Vec::new()
    }

    fn on_timer(name: String) -> Vec<Action> {
        if name != "tick" {
            return Vec::new();
        }
        TICKS.set(TICKS.get() + 1);
        vec![to_room(serde_json::json!({"type": "tick", "n": TICKS.get()}))]
    }

    fn snapshot() -> Vec<u8> {
        serde_json::json!({"version": SNAPSHOT_VERSION, "tick": TICKS.get(), "players": PLAYERS.get()})
            .to_string()
            .into_bytes()
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        if snapshot.is_empty() {
            return Ok(());
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&snapshot).map_err(|e| format!("malformed game snapshot: {e}"))?;
        match doc["version"].as_u64() {
            Some(SNAPSHOT_VERSION) => {}
            other => return Err(format!("unsupported game snapshot version {other:?}")),
        }
        TICKS.set(doc["tick"].as_u64().ok_or("malformed game snapshot: no tick")?);
        PLAYERS.set(doc["players"].as_u64().unwrap_or(0));
        Ok(())
    }
}

wsplug_sdk::export_plugin!(Game);
