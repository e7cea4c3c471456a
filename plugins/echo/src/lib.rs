//! The echo plugin: sends every message back to its sender, text as text and binary as binary.
//!
//! It admits every connection and never picks a subprotocol (it speaks none), so a client that
//! offers some gets a handshake answer without `Sec-WebSocket-Protocol`.

use wsplug_sdk::{Action, ConnectionId, Message, Plugin};

/// The plugin (stateless).
struct Echo;

impl Plugin for Echo {
    fn on_message(_conn: ConnectionId, msg: Message) -> Vec<Action> {
        vec![Action::Reply(msg)]
    }
}

wsplug_sdk::export_plugin!(Echo);
