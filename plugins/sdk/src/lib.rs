//! A thin SDK for writing wsplug plugins in Rust.
//!
//! A wsplug plugin is a WebAssembly component (target `wasm32-wasip2`); this SDK builds the
//! `full-plugin` world of `wit/platform/wsplug.wit` (contract 0.2.0, which includes the 0.1.0
//! world `batched-plugin` of `wit/wsplug.wit`): the host calls it once per event (a connection
//! asks to open, a message arrives, a connection has closed; a client's pipelined messages come
//! packed in one `on-packed` call, each passed to [`Plugin::on_message`] in order) and the plugin
//! answers with a list of [`Action`]s. This crate runs `wit_bindgen::generate!` over that
//! contract, re-exports the generated types and adds a few conveniences:
//!
//! * the [`Plugin`] trait (the contract's `handler` and `state` interfaces, with defaults for all
//!   but `on_message`) and the [`export_plugin!`] macro;
//! * constructors such as [`Action::reply_text`], [`Admission::accept`] and
//!   [`Admission::reject`];
//! * [`query_param`] and [`Connection::query_param`] to read the request's query string;
//! * the [`log`] module, over the host's `log` import.
//!
//! A complete plugin:
//!
//! ```no_run
//! use wsplug_sdk::{Action, ConnectionId, Message, Plugin};
//!
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn on_message(_conn: ConnectionId, msg: Message) -> Vec<Action> {
//!         vec![Action::Reply(msg)]
//!     }
//! }
//!
//! wsplug_sdk::export_plugin!(Echo);
//! ```
//!
//! Build it as a `cdylib` crate with `cargo build --release --target wasm32-wasip2`: the
//! `.wasm` file cargo writes is already a component.
//!
//! Calls into one plugin instance never overlap, so plain global state (`thread_local!` with a
//! `RefCell`, or a `static` behind one) is safe and is the way to remember connections.
//!
//! # State hand-over on reload
//!
//! When the server replaces a plugin's file while it runs (hot reload), the host asks the old
//! version for a snapshot of its state ([`Plugin::snapshot`]), hands those bytes to the new
//! version ([`Plugin::restore`]) before the new version sees any event, and then re-attaches every
//! open connection to the new version with `on_open` (`conn.resumed` set). If `restore` returns an
//! error, the new version is refused: the old one keeps serving and the error is logged.
//!
//! Every plugin built with this SDK exports the contract's `state` interface
//! (`wsplug:plugin/state@0.1.0`). The defaults hand nothing over: `snapshot` returns no bytes
//! and `restore` accepts anything and ignores it, so a plugin that does not override them starts
//! fresh after a reload, exactly as after a trap. A plugin that keeps state worth keeping
//! overrides both.
//!
//! The bytes are the plugin's own format, and the two ends are *different versions* of the
//! plugin. So put a format version in every snapshot, make `restore` read the versions it knows
//! (older ones included) and refuse the others with a clear error, and accept an empty snapshot
//! (what a version without hand-over, or the default `snapshot`, produces) by starting fresh.

#![warn(missing_docs)]

// Lets the generated code refer to this crate as `wsplug_sdk::…` from inside it too, so the same
// paths work here and in the plugin crates that expand `export_plugin!`.
extern crate self as wsplug_sdk;

#[doc(hidden)]
pub use wit_bindgen;

/// The raw bindings generated from the contract: the world `full-plugin` of
/// `wit/platform/wsplug.wit` (version 0.2.0, which includes the 0.1.0 world `batched-plugin` of
/// `wit/wsplug.wit`). Use the re-exports at the crate root.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "full-plugin",
        path: "wit/platform",
        // The 0.1.0 interfaces live in a dependency package (wit/platform/deps).
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "wsplug_sdk::bindings",
        runtime_path: "wsplug_sdk::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

mod query;

/// Named timers of the instance (contract 0.2.0; the route must grant `timers = true`, or the
/// plugin is refused at load). They fire as [`Plugin::on_timer`] calls, in order with the
/// instance's other events, and outlive a hot reload. What a call sets or cancels takes effect
/// when the call succeeds.
pub mod timers {
    use crate::bindings::wsplug::plugin0_2_0::timers;

    /// Sets the timer `name` (replacing one of that name): due after `after_ms`, then every
    /// `every_ms` if given. An error says why not (a bad name or delay, the route's `max_timers`).
    pub fn set(name: &str, after_ms: u64, every_ms: Option<u64>) -> Result<(), String> {
        timers::set(name, after_ms, every_ms)
    }

    /// Cancels the timer `name`, if set.
    pub fn cancel(name: &str) {
        timers::cancel(name)
    }

    /// The names of the instance's timers, sorted.
    pub fn names() -> Vec<String> {
        timers::names()
    }
}

/// The route's key-value store (contract 0.2.0; the route must grant `kv = "STORE-NAME"`): kept
/// on disk by the server, shared by the route's instances. Reads see the store plus the current
/// call's own writes; the call's writes commit together when it succeeds, before its actions are
/// carried out. Keys are at most 1 KiB, values at most 64 KiB.
pub mod kv {
    use crate::bindings::wsplug::plugin0_2_0::kv;

    /// The value of `key`.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }

    /// Sets `key` to `value`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        kv::set(key, value)
    }

    /// Removes `key`.
    pub fn delete(key: &str) {
        kv::delete(key)
    }

    /// Up to `limit` keys starting with `prefix`, in byte order.
    pub fn keys(prefix: &str, limit: u32) -> Vec<String> {
        kv::keys(prefix, limit)
    }

    /// Sets `key` to `value` (`None`: removes it) only if it now holds `expected` (`None`:
    /// absent); whether it did. Checked again at commit: a race lost to another instance fails
    /// the call.
    pub fn compare_and_swap(key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Result<bool, String> {
        kv::compare_and_swap(key, expected, value)
    }
}

/// A small value per connection (at most 16 KiB) that the host keeps for the plugin across hot
/// reloads and instance rebuilds, until the connection closes (contract 0.2.0; the route must
/// grant `attachments = true`). What a call attaches takes effect when the call succeeds.
pub mod attachments {
    use crate::ConnectionId;
    use crate::bindings::wsplug::plugin0_2_0::attachments;

    /// Attaches `value` to `conn` (an open connection of this instance, or the one opening);
    /// an empty value removes it.
    pub fn set(conn: ConnectionId, value: &[u8]) -> Result<(), String> {
        attachments::set(conn, value)
    }

    /// What `conn` has attached.
    pub fn get(conn: ConnectionId) -> Option<Vec<u8>> {
        attachments::get(conn)
    }
}

/// The route's topics beyond this node's subscribers (contract 0.2.0, no grant needed): their
/// history positions, recovering subscriptions, and presence on every node of a cluster. See the
/// server's README, "Topics".
pub mod topics {
    use crate::ConnectionId;
    pub use crate::bindings::exports::wsplug::plugin0_2_0::presence_handler::PresenceEvent;
    use crate::bindings::wsplug::plugin0_2_0::topics;
    pub use crate::bindings::wsplug::plugin0_2_0::topics::{Member, Position};

    /// The newest position of `topic`'s history on this node (`None`: no history kept).
    pub fn last_position(topic: &str) -> Option<Position> {
        topics::last_position(topic)
    }

    /// Subscribes `conn` to `topic`, first sending it what it missed since `since` (a notice,
    /// then the messages in order). Takes effect when the call succeeds, after its actions.
    pub fn subscribe_from(conn: ConnectionId, topic: &str, since: &Position) -> Result<(), String> {
        topics::subscribe_from(conn, topic, since)
    }

    /// Connections subscribed to `topic` on every node (as of the last presence report).
    pub fn presence_count(topic: &str) -> u64 {
        topics::presence_count(topic)
    }

    /// Who is subscribed to `topic` on every node (at most `limit`), or why that cannot be told.
    pub fn presence_members(topic: &str, limit: u32) -> Result<Vec<Member>, String> {
        topics::presence_members(topic, limit)
    }
}

/// The generated trait of the contract's `batch` interface; [`Plugin`] implementors get it for
/// free (each message goes to [`Plugin::on_message`], in order).
pub use bindings::exports::wsplug::plugin0_1_0::batch::Guest as BatchGuest;
pub use bindings::exports::wsplug::plugin0_1_0::handler::Guest;
/// The generated trait of the contract's `state` interface; [`Plugin`] implementors get it for
/// free.
pub use bindings::exports::wsplug::plugin0_1_0::state::Guest as StateGuest;
/// The generated trait of the contract's `packed-batch` interface (0.2.0); [`Plugin`]
/// implementors get it for free (each message goes to [`Plugin::on_message`], in order, and the
/// replies among its actions are packed into one buffer).
pub use bindings::exports::wsplug::plugin0_2_0::packed_batch::Guest as PackedGuest;
/// The generated trait of the contract's `presence-handler` interface (0.2.0); [`Plugin`]
/// implementors get it for free (events go to [`Plugin::on_presence`]).
pub use bindings::exports::wsplug::plugin0_2_0::presence_handler::Guest as PresenceGuest;
/// The generated trait of the contract's `timer-handler` interface (0.2.0); [`Plugin`]
/// implementors get it for free (each timer goes to [`Plugin::on_timer`]).
pub use bindings::exports::wsplug::plugin0_2_0::timer_handler::Guest as TimerGuest;
pub use bindings::wsplug::plugin0_1_0::host::Level;
pub use bindings::wsplug::plugin0_1_0::types::{
    Acceptance, Action, Admission, CloseFrame, Connection, ConnectionId, Message, Outgoing, Rejection, Target,
};
pub use query::{percent_decode, query_param, query_params};

/// The events a plugin handles: implement this and pass the type to [`export_plugin!`].
///
/// These are the contract's `handler` and `state` functions. They are associated functions (no
/// `self`): one instance serves every connection of its route, one call at a time, so a plugin
/// keeps its state in globals. Only [`Plugin::on_message`] must be written; the others default to
/// admitting every connection without a subprotocol, doing nothing on close, and handing no state
/// over on reload (see [the crate docs](crate#state-hand-over-on-reload)).
pub trait Plugin {
    /// A client asks to open a WebSocket on the plugin's route, or an open connection is being
    /// re-attached to a fresh instance (`conn.resumed`: after a trap, just before the connection's
    /// next message, the state is what [`Plugin::restore`] made of the last checkpoint, or empty;
    /// after a reload it is what it made of the old version's snapshot; in both cases a rejection
    /// now closes the connection with 1008).
    ///
    /// The default admits the connection without a subprotocol and without actions.
    fn on_open(conn: Connection) -> Admission {
        let _ = conn;
        Admission::accept()
    }

    /// A complete message arrived from an admitted connection. The returned actions are carried
    /// out in order before the connection's next event is handled.
    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action>;

    /// An admitted connection has closed (called exactly once per admitted connection). `code`
    /// is 1005 when the close frame had no code and 1006 when there was no close handshake.
    /// Actions addressed to the closed connection itself are ignored.
    ///
    /// The default does nothing.
    fn on_close(conn: ConnectionId, code: u16, reason: String) -> Vec<Action> {
        let _ = (conn, code, reason);
        Vec::new()
    }

    /// Hot reload, on the old version: everything the next version needs to carry on, in the
    /// plugin's own format. Start it with a format version (see
    /// [the crate docs](crate#state-hand-over-on-reload)).
    ///
    /// The default hands nothing over: an empty snapshot.
    fn snapshot() -> Vec<u8> {
        Vec::new()
    }

    /// Hot reload, on the new version, before any event: loads a snapshot taken by an earlier
    /// version (possibly in an older format). It should accept an empty snapshot by starting
    /// fresh. An error refuses the new version: the old one keeps serving, and the error is
    /// logged.
    ///
    /// The default accepts any snapshot and ignores it: the plugin starts fresh.
    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        let _ = snapshot;
        Ok(())
    }

    /// The timer `name`, set with [`timers::set`], is due (contract 0.2.0; the route must grant
    /// `timers`). There is no sender: return broadcasts and sends to connections or topics.
    ///
    /// The default does nothing.
    fn on_timer(name: String) -> Vec<Action> {
        let _ = name;
        Vec::new()
    }

    /// Presence changed on some of the route's topics (the route's `[routes.topics] presence` is
    /// on): one event per topic, batched per `presence_interval`. There is no sender.
    ///
    /// The default does nothing.
    fn on_presence(events: Vec<topics::PresenceEvent>) -> Vec<Action> {
        let _ = events;
        Vec::new()
    }
}

impl<T: Plugin> PresenceGuest for T {
    fn on_presence(events: Vec<topics::PresenceEvent>) -> Vec<Action> {
        <T as Plugin>::on_presence(events)
    }
}

impl<T: Plugin> Guest for T {
    fn on_open(conn: Connection) -> Admission {
        <T as Plugin>::on_open(conn)
    }

    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        <T as Plugin>::on_message(conn, msg)
    }

    fn on_close(conn: ConnectionId, code: u16, reason: String) -> Vec<Action> {
        <T as Plugin>::on_close(conn, code, reason)
    }
}

impl<T: Plugin> BatchGuest for T {
    fn on_messages(conn: ConnectionId, msgs: Vec<Message>) -> Vec<Action> {
        // Sized for one action per message (an echo, a relay): no regrowth while collecting.
        let mut actions = Vec::with_capacity(msgs.len());
        for msg in msgs {
            actions.extend(<T as Plugin>::on_message(conn, msg));
        }
        actions
    }
}

/// Bit 31 of an end offset in `packed-batch`: the message is text.
const TEXT_BIT: u32 = 1 << 31;

impl<T: Plugin> PackedGuest for T {
    fn on_packed(
        conn: ConnectionId,
        msgs: bindings::exports::wsplug::plugin0_2_0::packed_batch::Packed,
    ) -> bindings::exports::wsplug::plugin0_2_0::packed_batch::PackedActions {
        use bindings::exports::wsplug::plugin0_2_0::packed_batch::{Packed, PackedActions};
        // Sized for one reply per message of the same size (an echo): no regrowth.
        let mut replies =
            Packed { data: Vec::with_capacity(msgs.data.len()), ends: Vec::with_capacity(msgs.ends.len()) };
        let mut actions = Vec::new();
        let mut start = 0;
        for &end in &msgs.ends {
            let (text, end) = (end & TEXT_BIT != 0, (end & !TEXT_BIT) as usize);
            let bytes = msgs.data.get(start..end).unwrap_or_default();
            start = end;
            let msg = match text {
                false => Message::Binary(bytes.to_vec()),
                // The host sends valid UTF-8 only. (Not from_utf8_lossy first: its byte-wise walk
                // cost more than the rest of the call.)
                true => match std::str::from_utf8(bytes) {
                    Ok(text) => Message::Text(text.to_owned()),
                    Err(_) => Message::Text(String::from_utf8_lossy(bytes).into_owned()),
                },
            };
            for action in <T as Plugin>::on_message(conn, msg) {
                let (bytes, bit) = match &action {
                    Action::Reply(Message::Text(t)) => (t.as_bytes(), TEXT_BIT),
                    Action::Reply(Message::Binary(b)) => (b.as_slice(), 0),
                    _ => {
                        actions.push((replies.ends.len() as u32, action));
                        continue;
                    }
                };
                replies.data.extend_from_slice(bytes);
                replies.ends.push(replies.data.len() as u32 | bit);
            }
        }
        PackedActions { replies, actions }
    }
}

impl<T: Plugin> TimerGuest for T {
    fn on_timer(name: String) -> Vec<Action> {
        <T as Plugin>::on_timer(name)
    }
}

impl<T: Plugin> StateGuest for T {
    fn snapshot() -> Vec<u8> {
        <T as Plugin>::snapshot()
    }

    fn restore(snapshot: Vec<u8>) -> Result<(), String> {
        <T as Plugin>::restore(snapshot)
    }
}

/// Exports a type that implements [`Plugin`] as the component's `handler`, `state` and `batch`
/// interfaces (`wsplug:plugin/handler@0.1.0`, `wsplug:plugin/state@0.1.0` and
/// `wsplug:plugin/batch@0.1.0`) and `timer-handler` (`wsplug:plugin/timer-handler@0.2.0`).
///
/// Use it once, at the root of a `cdylib` crate: `wsplug_sdk::export_plugin!(MyPlugin);`.
/// The argument is a plain type name (bring it into scope first).
#[macro_export]
macro_rules! export_plugin {
    ($ty:ident) => {
        $crate::bindings::__export_plugin_world!($ty with_types_in $crate::bindings);
    };
}

/// The longest close reason the protocol allows, in bytes.
pub const MAX_CLOSE_REASON: usize = 123;

impl Message {
    /// A text message.
    pub fn text(text: impl Into<String>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Vec<u8>>) -> Self {
        Message::Binary(data.into())
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        }
    }

    /// The payload's bytes, whatever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) => data,
        }
    }
}

impl Action {
    /// Sends a text message to the sender.
    pub fn reply_text(text: impl Into<String>) -> Self {
        Action::Reply(Message::text(text))
    }

    /// Sends a binary message to the sender.
    pub fn reply_binary(data: impl Into<Vec<u8>>) -> Self {
        Action::Reply(Message::binary(data))
    }

    /// Sends a text message to every connection on the route, the sender included.
    pub fn broadcast_text(text: impl Into<String>) -> Self {
        Action::Broadcast(Message::text(text))
    }

    /// Sends a message to a target.
    pub fn send(to: Target, message: Message) -> Self {
        Action::Send(Outgoing { to, message })
    }

    /// Sends a text message to a target.
    pub fn send_text(to: Target, text: impl Into<String>) -> Self {
        Action::send(to, Message::text(text))
    }

    /// Sends a text message to every connection subscribed to `topic`.
    pub fn publish_text(topic: impl Into<String>, text: impl Into<String>) -> Self {
        Action::send(Target::Topic(topic.into()), Message::text(text))
    }

    /// Subscribes the sender to a topic.
    pub fn subscribe(topic: impl Into<String>) -> Self {
        Action::Subscribe(topic.into())
    }

    /// Unsubscribes the sender from a topic.
    pub fn unsubscribe(topic: impl Into<String>) -> Self {
        Action::Unsubscribe(topic.into())
    }

    /// Closes the sender's connection. The reason is cut to [`MAX_CLOSE_REASON`] bytes (at a
    /// character boundary); the code must be one an endpoint may send (1000, 1001, 1003,
    /// 1007-1011, 3000-4999), which the host checks.
    pub fn close(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON {
            let mut end = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Action::Close(CloseFrame { code, reason })
    }
}

impl Admission {
    /// Admits the connection without a subprotocol and without actions.
    pub fn accept() -> Self {
        Admission::accept_with(None, Vec::new())
    }

    /// Admits the connection, answering with `subprotocol` (which must be one the client
    /// offered) and carrying out `actions` once it is open.
    pub fn accept_with(subprotocol: Option<String>, actions: Vec<Action>) -> Self {
        Admission::Accept(Acceptance { subprotocol, actions })
    }

    /// Refuses the connection with an HTTP status (400-599) and a text/plain body.
    pub fn reject(status: u16, body: impl Into<String>) -> Self {
        Admission::Reject(Rejection { status, body: body.into() })
    }
}

impl Connection {
    /// The first value of query parameter `name` in the request's path, decoded (see
    /// [`query_param`]).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.path, name)
    }

    /// The first value of header `name` (matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the client offered subprotocol `protocol`.
    pub fn offers(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p == protocol)
    }
}

/// Writing to the server's log through the host's `log` import.
///
/// Each line is tagged with the plugin's name by the host. Use these instead of printing:
/// what a plugin writes to stdout or stderr may go nowhere.
pub mod log {
    pub use crate::Level;

    /// Writes `message` at `level`.
    ///
    /// Outside WebAssembly (a plugin's unit tests run natively) there is no host: the line goes
    /// to stderr instead.
    pub fn log(level: Level, message: &str) {
        #[cfg(target_arch = "wasm32")]
        crate::bindings::wsplug::plugin0_1_0::host::log(level, message);
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("[{level:?}] {message}");
    }

    /// Writes `message` at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }

    /// Writes `message` at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Writes `message` at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Writes `message` at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Writes `message` at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_is_cut_at_a_char_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let Action::Close(frame) = Action::close(1000, long) else { panic!("not a close") };
        assert_eq!(frame.code, 1000);
        assert!(frame.reason.len() <= MAX_CLOSE_REASON);
        assert_eq!(frame.reason.len(), 122);
    }

    #[test]
    fn state_defaults_hand_nothing_over() {
        struct Plain;
        impl Plugin for Plain {
            fn on_message(_conn: ConnectionId, _msg: Message) -> Vec<Action> {
                Vec::new()
            }
        }
        assert!(<Plain as StateGuest>::snapshot().is_empty());
        assert_eq!(<Plain as StateGuest>::restore(Vec::new()), Ok(()));
        assert_eq!(<Plain as StateGuest>::restore(b"{\"version\":9}".to_vec()), Ok(()));
    }

    #[test]
    fn connection_helpers() {
        let conn = Connection {
            id: 7,
            path: "/chat?nick=ada+l&room=r%C3%A9".into(),
            headers: vec![("x-thing".into(), "1".into())],
            remote_addr: "127.0.0.1:1".into(),
            protocols: vec!["a".into(), "chat.v1".into()],
            resumed: false,
        };
        assert_eq!(conn.query_param("nick").as_deref(), Some("ada l"));
        assert_eq!(conn.query_param("room").as_deref(), Some("ré"));
        assert_eq!(conn.header("X-Thing"), Some("1"));
        assert!(conn.offers("chat.v1"));
        assert!(!conn.offers("chat.v2"));
    }
}
