//! The hub of one route: its live connections, their topics, and fan-out.
//!
//! Plugins address connections by id, "everyone", "everyone but the sender" or a topic; the hub
//! turns that into pushes onto each target's bounded outbound queue, noted in the caller's
//! [`Batch`] so that each queue is written once at the end of the batch. A broadcast or publish is
//! encoded once and the same bytes are shared by every target (never copied per receiver). A
//! target whose queue is full is a slow consumer: it is closed with 1013 (ahead of its queue) and
//! logged, and the other targets are never blocked or slowed by it. Every push is non-blocking, so
//! the hub is safe to use from any connection's task while it calls a plugin.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::outbound::{Batch, Outbound, Outgoing, QueueError, SharedMessage, close_frame};
use crate::metrics::RouteMetrics;
use crate::protocol::frame::OpCode;
use crate::protocol::{CloseCode, CloseFrame};

/// What the server knows of a connection when it opened (what a plugin's `on-open` sees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub id: u64,
    /// The request target, with the query.
    pub target: String,
    /// Header fields, names lower-cased, in the order received (see [`ConnInfo::headers`]).
    pub headers: HeaderBlock,
    pub remote_addr: String,
    /// Subprotocols the client offered.
    pub protocols: Vec<String>,
}

impl ConnInfo {
    /// The header fields, names lower-cased, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.0.split_terminator('\n').filter_map(|line| line.split_once(": "))
    }
}

/// Header fields kept for the life of a connection, in one allocation ("name: value\n" each):
/// a plugin's `on-open` sees them again when the connection is re-attached, and every idle
/// connection pays for what it keeps. A name never holds ':' or a line break (RFC 9110 tokens),
/// and a value never holds a line break (the parser refuses one), so the block splits back
/// exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderBlock(Box<str>);

impl HeaderBlock {
    pub fn new<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut block = String::new();
        for (name, value) in fields {
            block.push_str(name);
            block.push_str(": ");
            block.push_str(value);
            block.push('\n');
        }
        Self(block.into_boxed_str())
    }
}

/// A live connection as the hub holds it.
struct Member {
    info: Arc<ConnInfo>,
    out: Outbound,
    topics: HashSet<String>,
    /// Being closed: nothing more is delivered.
    closing: bool,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("connection {0} is not on this route")]
    UnknownConnection(u64),
    #[error("connection is at its limit of {0} topics")]
    TooManyTopics(usize),
}

#[derive(Default)]
struct Inner {
    members: HashMap<u64, Member>,
    topics: HashMap<String, HashSet<u64>>,
    /// Set once the route is removed or replaced: how late joiners are closed.
    retired: Option<CloseFrame>,
}

/// Connections and topics of one route.
pub struct Hub {
    route: Arc<str>,
    /// The route's counters (looked up once).
    metrics: Arc<RouteMetrics>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("route", &self.route).field("connections", &self.len()).finish()
    }
}

impl Hub {
    pub fn new(route: &str) -> Self {
        Self { route: route.into(), metrics: crate::metrics::metrics().route(route), inner: Mutex::default() }
    }

    /// The route's counters.
    pub fn metrics(&self) -> &Arc<RouteMetrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that matters
        // more than losing the route, so recover the guard rather than poisoning every connection.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers an admitted connection. On a retired route (removed or replaced by a reload
    /// while this connection was being admitted) it is closed at once with the frame every other
    /// connection got, instead of staying on a route nobody serves.
    pub fn join(&self, info: Arc<ConnInfo>, out: Outbound) {
        let id = info.id;
        let mut inner = self.lock();
        let closing = inner.retired.is_some();
        if let Some(frame) = inner.retired.clone() {
            out.close(Some(frame), false);
        }
        inner.members.insert(id, Member { info, out, topics: HashSet::new(), closing });
    }

    /// Retires the route: closes every connection with `frame`, and every later joiner too.
    pub fn retire(&self, frame: CloseFrame) {
        self.lock().retired = Some(frame.clone());
        self.close_where(|_| true, frame);
    }

    /// Removes a connection and its subscriptions; false if it was not registered.
    pub fn leave(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(member) = inner.members.remove(&id) else { return false };
        for topic in member.topics {
            drop_subscriber(&mut inner.topics, &topic, id);
        }
        true
    }

    /// What the server keeps of a connection on this route, if it is on it.
    pub fn info(&self, id: u64) -> Option<Arc<ConnInfo>> {
        self.lock().members.get(&id).map(|m| m.info.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The connections for which `pick(id)` holds (e.g. those pinned to one plugin instance), with
    /// their queues, in the order they joined.
    pub fn members_where(&self, pick: impl Fn(u64) -> bool) -> Vec<(Arc<ConnInfo>, Outbound)> {
        let inner = self.lock();
        let mut out: Vec<_> =
            inner.members.values().filter(|m| pick(m.info.id)).map(|m| (m.info.clone(), m.out.clone())).collect();
        out.sort_by_key(|(i, _)| i.id);
        out
    }

    /// Queues a message for one connection; false if the id is not on this route. `sender` is the
    /// connection whose event is being handled: its own replies are flow-controlled by its session
    /// and never count as a slow consumer.
    pub fn send(&self, id: u64, opcode: OpCode, payload: Bytes, sender: Option<u64>, batch: &mut Batch) -> bool {
        let mut inner = self.lock();
        match inner.members.get_mut(&id) {
            Some(member) => {
                deliver(&self.metrics, member, Outgoing::One(opcode, payload), sender, batch);
                true
            }
            None => false,
        }
    }

    /// Queues a message for every connection but `except`.
    pub fn broadcast(&self, message: &SharedMessage, except: Option<u64>, sender: Option<u64>, batch: &mut Batch) {
        let mut inner = self.lock();
        for member in inner.members.values_mut().filter(|m| Some(m.info.id) != except) {
            deliver(&self.metrics, member, Outgoing::Shared(message), sender, batch);
        }
    }

    /// Queues a message for every subscriber of `topic`.
    pub fn publish(&self, topic: &str, message: &SharedMessage, sender: Option<u64>, batch: &mut Batch) {
        let mut inner = self.lock();
        let Inner { members, topics, .. } = &mut *inner;
        let Some(subscribers) = topics.get(topic) else { return };
        for id in subscribers {
            if let Some(member) = members.get_mut(id) {
                deliver(&self.metrics, member, Outgoing::Shared(message), sender, batch);
            }
        }
    }

    pub fn subscribe(&self, id: u64, topic: &str, max_topics: usize) -> Result<(), SubscribeError> {
        let mut inner = self.lock();
        let member = inner.members.get_mut(&id).ok_or(SubscribeError::UnknownConnection(id))?;
        if !member.topics.contains(topic) {
            if member.topics.len() >= max_topics {
                return Err(SubscribeError::TooManyTopics(max_topics));
            }
            member.topics.insert(topic.to_owned());
            inner.topics.entry(topic.to_owned()).or_default().insert(id);
        }
        Ok(())
    }

    /// Forgets every subscription of a connection (when it is re-attached to a fresh instance,
    /// which re-subscribes it from its own state).
    pub fn clear_topics(&self, id: u64) {
        let mut inner = self.lock();
        let Some(member) = inner.members.get_mut(&id) else { return };
        let topics = std::mem::take(&mut member.topics);
        for topic in topics {
            drop_subscriber(&mut inner.topics, &topic, id);
        }
    }

    pub fn unsubscribe(&self, id: u64, topic: &str) {
        let mut inner = self.lock();
        if let Some(member) = inner.members.get_mut(&id)
            && member.topics.remove(topic)
        {
            drop_subscriber(&mut inner.topics, topic, id);
        }
    }

    /// Closes a connection after what is already queued for it.
    pub fn close(&self, id: u64, frame: CloseFrame) {
        let mut inner = self.lock();
        if let Some(member) = inner.members.get_mut(&id)
            && !member.closing
        {
            member.closing = true;
            member.out.close(Some(frame), false);
        }
    }

    /// Closes every connection for which `pick(id)` holds.
    pub fn close_where(&self, pick: impl Fn(u64) -> bool, frame: CloseFrame) {
        let ids: Vec<u64> = self.lock().members.keys().copied().filter(|id| pick(*id)).collect();
        for id in ids {
            self.close(id, frame.clone());
        }
    }
}

/// Removes `id` from a topic's subscribers, and the topic once nobody is left.
fn drop_subscriber(topics: &mut HashMap<String, HashSet<u64>>, topic: &str, id: u64) {
    if let Some(subs) = topics.get_mut(topic) {
        subs.remove(&id);
        if subs.is_empty() {
            topics.remove(topic);
        }
    }
}

/// Pushes a message without blocking; a full queue marks a slow consumer, closed with 1013 —
/// except for the sender's own replies, which its session flow-controls.
fn deliver(metrics: &RouteMetrics, member: &mut Member, message: Outgoing<'_>, sender: Option<u64>, batch: &mut Batch) {
    if member.closing {
        return;
    }
    let pushed = match (sender == Some(member.info.id), message) {
        (true, Outgoing::One(op, payload)) => member.out.reply(op, payload),
        (_, message) => member.out.deliver(message),
    };
    match batch.note(&member.out, pushed) {
        Ok(()) => {}
        Err(QueueError::Full) => {
            member.closing = true;
            if sender == Some(member.info.id) {
                return; // the queue closed itself with 1013 (its hard bound)
            }
            tracing::warn!(
                route = metrics.path(),
                id = member.info.id,
                "slow consumer: outbound queue full, closing with 1013"
            );
            metrics.queue_full.inc();
            member.out.close_now(close_frame(CloseCode::TRY_AGAIN_LATER, "slow consumer: outbound queue full"));
            batch.note(&member.out, Ok(true)).ok();
        }
        Err(QueueError::Closed) => member.closing = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_block_gives_back_every_field_in_order() {
        let fields = [("host", "example.com"), ("x-empty", ""), ("x-colon", "a: b: c"), ("host", "second")];
        let info = ConnInfo {
            id: 1,
            target: "/".into(),
            headers: HeaderBlock::new(fields),
            remote_addr: String::new(),
            protocols: Vec::new(),
        };
        assert_eq!(info.headers().collect::<Vec<_>>(), fields);
        let none = ConnInfo { headers: HeaderBlock::default(), ..info };
        assert_eq!(none.headers().count(), 0);
    }

    #[tokio::test]
    async fn a_connection_admitted_to_a_retired_route_is_closed_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outbound = || async {
            let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            let limits = super::super::outbound::QueueLimits {
                max_frames: 8,
                max_bytes: 1000,
                max_message_size: 1000,
                max_in_flight: 4,
            };
            Outbound::new(Arc::new(crate::server::socket::Writer::Plain(server.into_split().1)), limits)
        };
        let info = |id| {
            Arc::new(ConnInfo {
                id,
                target: "/".into(),
                headers: HeaderBlock::default(),
                remote_addr: String::new(),
                protocols: Vec::new(),
            })
        };
        let hub = Hub::new("/old");
        let early = outbound().await;
        hub.join(info(1), early.clone());
        assert!(!early.is_closing());
        hub.retire(CloseFrame { code: CloseCode::SERVICE_RESTART, reason: "route reconfigured".into() });
        assert!(early.is_closing(), "a member is closed by the retirement");
        // Admitted while the reload ran: it joins after the route was retired.
        let late = outbound().await;
        hub.join(info(2), late.clone());
        assert!(late.is_closing(), "a late joiner must not stay on a route nobody serves");
    }
}
