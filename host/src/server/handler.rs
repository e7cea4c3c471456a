//! The route-handler boundary: what a connection asks of the handler of its route, and nothing
//! more. The server owns sockets, framing, the 101 response and fan-out (the hub, the outbound
//! queues); a handler admits connections, receives their events and carries out its validated
//! effects through the hub and the queues. The plugin runtime implements these traits; the server
//! knows nothing of Wasm.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::hub::{ConnInfo, Hub};
use super::outbound::Outbound;
use crate::protocol::Message;

/// A boxed future, as the handler traits return them (they are called through `dyn`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A handler's answer to a connection's opening handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Accepted,
    Rejected {
        status: u16,
        body: String,
    },
    /// The handler cannot take connections for a while (its circuit breaker is open): 503 with
    /// `Retry-After`.
    Unavailable {
        retry_after: std::time::Duration,
    },
}

/// Completes an admission on the server's side: queues the 101 response with the chosen
/// subprotocol and registers the connection on its route's hub, so that the handler's first
/// effects follow the handshake on the wire. Returns the connection's outbound queue (the target of
/// replies), or `None` when the client has already gone.
pub type Accept<'a> = &'a mut (dyn FnMut(Option<&str>) -> Option<Outbound> + Send);

/// One instance of an event handler (one plugin instance). Its connections take it in turn (it
/// sits behind an async mutex, [`SharedInstance`]): it sees one connection's events at a time.
pub trait HandlerInstance: Send {
    /// Decides whether to admit a connection; calls `accept` before its first effects if it does.
    fn open<'a>(&'a mut self, info: Arc<ConnInfo>, accept: Accept<'a>) -> BoxFuture<'a, Admit>;

    /// Handles a connection's messages in order (draining `messages`), each one's bytes released
    /// from `out`'s bound once handled. Replies to the sender are queued on `out`, which its session
    /// flushes; effects on other connections are written before the future completes.
    fn messages<'a>(&'a mut self, id: u64, messages: &'a mut Vec<Message>, out: &'a Outbound) -> BoxFuture<'a, ()>;

    /// An admitted connection ended (called exactly once per admitted connection).
    fn closed<'a>(&'a mut self, id: u64, code: u16, reason: &'a str) -> BoxFuture<'a, ()>;
}

/// A handler instance behind the lock its connections take in turn (first come, first served).
pub type SharedInstance = Arc<tokio::sync::Mutex<dyn HandlerInstance>>;

/// A route whose messages go to an event handler (a plugin), as the server sees it.
pub trait EventRoute: Send + Sync + std::fmt::Debug {
    /// The route's live connections and topics.
    fn hub(&self) -> &Arc<Hub>;

    /// The instance a connection is pinned to.
    fn instance_for(&self, id: u64) -> SharedInstance;

    /// For the layers above (hot reload) that know the concrete handler.
    fn as_any(&self) -> &dyn Any;
}
