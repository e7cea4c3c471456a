//! {{name}}: a wsplug plugin. It admits every connection, answers each text message with the
//! same text in upper case, and sends binary messages back unchanged.
//!
//! Edit, run `./build.sh`, and a running `wsplug --route /{{name}}={{name}}.wasm` picks the new
//! version up without dropping a connection. The SDK's documentation: `cargo doc -p wsplug-sdk
//! --open`.

use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, log};

struct App;

impl Plugin for App {
    fn on_open(conn: Connection) -> Admission {
        log::info(&format!("connection {} opened {}", conn.id, conn.path));
        Admission::accept()
    }

    fn on_message(_conn: ConnectionId, msg: Message) -> Vec<Action> {
        match msg {
            Message::Text(text) => vec![Action::reply_text(text.to_uppercase())],
            binary => vec![Action::Reply(binary)],
        }
    }
}

wsplug_sdk::export_plugin!(App);
