//! The hub of one route: its live connections, their topics, and fan-out.
//!
//! Plugins address connections by id, "everyone", "everyone but the sender" or a topic; the hub
//! turns that into pushes onto each target's bounded outbound queue, noted in the caller's
//! [`Batch`] so that each queue is written once at the end of the batch. A broadcast or publish is
//! encoded once and the same bytes are shared by every target (never copied per receiver). A
//! target whose queue is full is a slow consumer: it is closed with 1013 (ahead of its queue) and
//! logged, and the other targets are never blocked or slowed by it. Every push is non-blocking, so
//! the hub is safe to use from any connection's task while it calls a plugin.
//!
//! Beyond its own connections, the hub is the route's side of the topics engine
//! ([`crate::topics`]): it keeps the history of topics (the in-memory engine assigns offsets
//! here; in a cluster the broker does, and this node keeps the history of the topics it follows),
//! recovers a reconnecting client's missed messages when it is subscribed again, reports presence,
//! and hands publications and broadcasts to the other nodes and theirs to its connections.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use tokio::time::Instant;

use super::outbound::{Batch, Outbound, Outgoing, QueueError, SharedMessage, close_frame};
use crate::metrics::RouteMetrics;
use crate::protocol::frame::OpCode;
use crate::protocol::{CloseCode, CloseFrame};
use crate::topics::history::Entry;
use crate::topics::nats::{Local, RouteLink};
use crate::topics::presence::{Presence, PresenceEvent, PresenceMode, Snapshot};
use crate::topics::{History, Position, Recovery, TopicSettings};

/// A topic message as the history keeps it: in its envelope, encoded once for every receiver.
type Stored = Arc<SharedMessage>;

/// What the server knows of a connection when it opened (what a plugin's `on-open` sees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub id: u64,
    /// The request target, with the query.
    pub target: String,
    /// Header fields, names lower-cased, in the order received (see [`ConnInfo::headers`]).
    pub headers: HeaderBlock,
    /// The peer's address (kept as an address, not as text: every open connection pays for it).
    pub remote_addr: std::net::SocketAddr,
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
    /// Its topics (a list: a connection has few, at most `max_topics_per_connection`, and every
    /// connection's entry costs its size in the map of members).
    topics: Vec<Box<str>>,
    /// Being closed: nothing more is delivered.
    closing: bool,
    /// Topics this connection asked to recover (`?recover=`), used when it is subscribed to one.
    /// Boxed: 8 bytes in every member's entry instead of a vector's 24, for what few connections
    /// ask.
    #[allow(clippy::box_collection)]
    recover: Option<Box<Vec<(String, Position)>>>,
}

impl Member {
    fn has_topic(&self, topic: &str) -> bool {
        self.topics.iter().any(|t| **t == *topic)
    }

    fn remove_topic(&mut self, topic: &str) -> bool {
        match self.topics.iter().position(|t| **t == *topic) {
            Some(i) => {
                self.topics.swap_remove(i);
                true
            }
            None => false,
        }
    }
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
    /// The history of topics (routes with `history`).
    history: Option<History<Stored>>,
    /// Topics whose history is being loaded from the broker: what arrived meanwhile, and the
    /// recoveries waiting for it.
    loading: HashMap<String, Loading>,
}

#[derive(Default)]
struct Loading {
    live: Vec<(u64, u64, bool, Bytes)>,
    recoveries: Vec<(u64, Position)>,
}

/// Messages that arrive for a topic while its history loads, at most (then the load is relied on).
const MAX_LOADING_BUFFER: usize = 10_000;

/// Connections and topics of one route.
pub struct Hub {
    route: Arc<str>,
    /// The route's counters (looked up once).
    metrics: Arc<RouteMetrics>,
    inner: Mutex<Inner>,
    settings: TopicSettings,
    /// The route on the cluster's broker, when there is one.
    link: OnceLock<Arc<RouteLink>>,
    presence: Mutex<Presence>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("route", &self.route).field("connections", &self.len()).finish()
    }
}

impl Hub {
    pub fn new(route: &str) -> Self {
        Self::with_topics(route, TopicSettings::default())
    }

    /// A hub whose topics keep history or presence as `settings` say.
    pub fn with_topics(route: &str, settings: TopicSettings) -> Self {
        let inner = Inner {
            history: (settings.history > 0).then(|| History::new(settings.history_limits())),
            ..Inner::default()
        };
        Self {
            route: route.into(),
            metrics: crate::metrics::metrics().route(route),
            inner: Mutex::new(inner),
            presence: Mutex::new(Presence::new(settings.presence)),
            settings,
            link: OnceLock::new(),
        }
    }

    /// Joins the route to the cluster (once, right after the hub is made).
    pub async fn link_cluster(self: &Arc<Self>, cluster: Arc<crate::topics::nats::Cluster>) -> anyhow::Result<()> {
        let local: Weak<dyn Local> = Arc::downgrade(self) as Weak<dyn Local>;
        let link = RouteLink::open(cluster, &self.route, &self.settings, local).await?;
        let _ = self.link.set(link);
        Ok(())
    }

    pub fn topic_settings(&self) -> &TopicSettings {
        &self.settings
    }

    /// This node's name in presence ("local" without a cluster).
    pub fn node(&self) -> String {
        self.link.get().map_or_else(|| "local".to_owned(), |l| l.node().to_owned())
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
        let recover = match inner.history {
            Some(_) => Some(Box::new(crate::topics::recovery_requests(&info.target))).filter(|r| !r.is_empty()),
            None => None,
        };
        inner.members.insert(id, Member { info, out, topics: Vec::new(), closing, recover });
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
            self.drop_subscriber(&mut inner, &topic, id);
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

    /// Queues a message for every connection but `except` (and, in a cluster, for every
    /// connection of the other nodes).
    pub fn broadcast(&self, message: &SharedMessage, except: Option<u64>, sender: Option<u64>, batch: &mut Batch) {
        {
            let mut inner = self.lock();
            for member in inner.members.values_mut().filter(|m| Some(m.info.id) != except) {
                deliver(&self.metrics, member, Outgoing::Shared(message), sender, batch);
            }
        }
        if let Some(link) = self.link.get() {
            link.broadcast(message.opcode() == OpCode::Text, message.payload());
        }
    }

    /// Queues a message for every subscriber of `topic`, on every node. With history, the
    /// message gets the topic's next offset and goes out in its envelope; in a cluster with
    /// history, every node (this one too) delivers it when the broker has stored it.
    pub fn publish(&self, topic: &str, message: &SharedMessage, sender: Option<u64>, batch: &mut Batch) {
        let text = message.opcode() == OpCode::Text;
        if let Some(link) = self.link.get() {
            link.publish(topic, text, message.payload());
            if link.keeps_history() {
                return;
            }
        }
        let mut inner = self.lock();
        if inner.history.is_some() {
            let now = Instant::now();
            let history = inner.history.as_mut().expect("checked");
            let prev = history.log(topic, || crate::topics::new_epoch().into(), now).last();
            let epoch = history.get(topic).expect("made").epoch.clone();
            let entry = stored_entry(topic, &epoch, prev + 1, prev, text, message.payload(), now);
            history.append(topic, entry.clone());
            self.deliver_to_topic(&mut inner, topic, &entry.message, sender, batch);
        } else {
            self.deliver_to_topic(&mut inner, topic, message, sender, batch);
        }
    }

    fn deliver_to_topic(
        &self,
        inner: &mut Inner,
        topic: &str,
        message: &SharedMessage,
        sender: Option<u64>,
        batch: &mut Batch,
    ) {
        let Inner { members, topics, .. } = inner;
        let Some(subscribers) = topics.get(topic) else { return };
        for id in subscribers {
            if let Some(member) = members.get_mut(id) {
                deliver(&self.metrics, member, Outgoing::Shared(message), sender, batch);
            }
        }
    }

    pub fn subscribe(&self, id: u64, topic: &str, max_topics: usize) -> Result<(), SubscribeError> {
        self.subscribe_from(id, topic, max_topics, None)
    }

    /// Subscribes a connection to `topic`; with history, first recovering what it missed since
    /// `from` (or since the position its `?recover=` named for this topic).
    pub fn subscribe_from(
        &self,
        id: u64,
        topic: &str,
        max_topics: usize,
        from: Option<Position>,
    ) -> Result<(), SubscribeError> {
        let mut batch = Batch::default();
        {
            let mut inner = self.lock();
            let member = inner.members.get_mut(&id).ok_or(SubscribeError::UnknownConnection(id))?;
            let had = member.has_topic(topic);
            if had && from.is_none() {
                return Ok(());
            }
            if !had && member.topics.len() >= max_topics {
                return Err(SubscribeError::TooManyTopics(max_topics));
            }
            if !had {
                member.topics.push(topic.into());
            }
            let asked = member.recover.as_mut().and_then(|r| {
                let i = r.iter().position(|(t, _)| t == topic)?;
                Some(r.swap_remove(i).1)
            });
            let from = from.or(asked);
            let subscribers = inner.topics.entry(topic.to_owned()).or_default();
            let first = subscribers.is_empty();
            subscribers.insert(id);
            // Newly followed: its history loads, and recoveries wait for it. (Still followed, after
            // its last subscriber here left a moment ago: the history kept is current.)
            if first
                && let Some(link) = self.link.get()
                && link.interest(topic, true)
                && link.keeps_history()
            {
                inner.loading.entry(topic.to_owned()).or_default();
            }
            if let Some(from) = from {
                match inner.loading.get_mut(topic) {
                    Some(loading) => loading.recoveries.push((id, from)),
                    None => self.recover(&mut inner, id, topic, &from, &mut batch),
                }
            }
        }
        batch.flush();
        Ok(())
    }

    /// Sends a subscriber what it missed since `from` (after a notice saying whether it is all).
    fn recover(&self, inner: &mut Inner, id: u64, topic: &str, from: &Position, batch: &mut Batch) {
        let Inner { members, history, .. } = inner;
        let (Some(member), Some(history)) = (members.get_mut(&id), history.as_mut()) else { return };
        let (at, outcome) = match history.get(topic) {
            Some(log) => (log.position(), log.recover(from)),
            None => (
                Position { epoch: self.link.get().map_or_else(String::new, |l| l.epoch().to_string()), offset: 0 },
                Recovery::NotRecovered("this topic has no history"),
            ),
        };
        let missed = match &outcome {
            Recovery::Recovered(entries) => Ok(entries.len()),
            Recovery::NotRecovered(why) => Err(*why),
        };
        let notice = crate::topics::recovery_notice(topic, &at, missed);
        deliver(&self.metrics, member, Outgoing::One(OpCode::Text, Bytes::from(notice)), None, batch);
        if let Recovery::Recovered(entries) = outcome {
            for entry in entries {
                deliver(&self.metrics, member, Outgoing::Shared(&entry.message), None, batch);
            }
        }
    }

    /// Forgets every subscription of a connection (when it is re-attached to a fresh instance,
    /// which re-subscribes it from its own state).
    pub fn clear_topics(&self, id: u64) {
        let mut inner = self.lock();
        let Some(member) = inner.members.get_mut(&id) else { return };
        let topics = std::mem::take(&mut member.topics);
        for topic in topics {
            self.drop_subscriber(&mut inner, &topic, id);
        }
    }

    pub fn unsubscribe(&self, id: u64, topic: &str) {
        let mut inner = self.lock();
        if let Some(member) = inner.members.get_mut(&id)
            && member.remove_topic(topic)
        {
            self.drop_subscriber(&mut inner, topic, id);
        }
    }

    /// Removes `id` from a topic's subscribers, and the topic once nobody is left (this node then
    /// stops following it on the broker, after a grace period: see [`Local::unfollowed`]).
    fn drop_subscriber(&self, inner: &mut Inner, topic: &str, id: u64) {
        let Some(subs) = inner.topics.get_mut(topic) else { return };
        subs.remove(&id);
        if subs.is_empty() {
            inner.topics.remove(topic);
            if let Some(link) = self.link.get() {
                link.interest(topic, false);
            }
        }
    }

    /// The latest position of a topic's history on this node (`None`: no history kept of it).
    pub fn position(&self, topic: &str) -> Option<Position> {
        self.lock().history.as_ref()?.get(topic).map(|log| log.position())
    }

    /// Presence: subscribers of `topic` on every node (as of the last report).
    pub fn presence_count(&self, topic: &str) -> u64 {
        self.presence.lock().unwrap().count(topic)
    }

    /// Presence: who is subscribed to `topic` on every node, or why that cannot be told.
    pub fn presence_members(&self, topic: &str, limit: usize) -> Result<Vec<crate::topics::presence::Member>, String> {
        let presence = self.presence.lock().unwrap();
        if presence.mode() == PresenceMode::Off {
            return Err("this route keeps no presence (presence = \"off\")".into());
        }
        presence.members(topic, limit)
    }

    /// Takes this node's presence snapshot (and reports it to the other nodes), forgets nodes
    /// that stopped reporting, and returns the changes since the last tick. Called every
    /// `presence_interval` by the route.
    pub fn presence_tick(&self) -> Vec<PresenceEvent> {
        if self.settings.presence == PresenceMode::Off {
            return Vec::new();
        }
        let snapshot: Snapshot = {
            let inner = self.lock();
            let topics: Vec<(String, Vec<u64>)> =
                inner.topics.iter().map(|(t, ids)| (t.clone(), ids.iter().copied().collect())).collect();
            crate::topics::presence::snapshot(self.settings.presence, topics.iter().map(|(t, ids)| (t, ids)))
        };
        if let Some(link) = self.link.get() {
            link.report_presence(&snapshot);
        }
        let now = Instant::now();
        let node = self.node();
        let mut presence = self.presence.lock().unwrap();
        presence.update(&node, snapshot, now);
        let silent_for = self.settings.presence_interval * 3 + std::time::Duration::from_secs(2);
        for dead in presence.expire(&node, now, silent_for) {
            tracing::warn!(route = %self.route, node = %dead, "cluster: node stopped reporting presence; its members left");
        }
        presence.take_events()
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

/// A history entry for a message: its envelope, encoded once.
fn stored_entry(
    topic: &str,
    epoch: &str,
    offset: u64,
    prev: u64,
    text: bool,
    payload: &[u8],
    now: Instant,
) -> Entry<Stored> {
    let body = match text {
        true => crate::topics::envelope(topic, offset, epoch, Some(&String::from_utf8_lossy(payload)), b""),
        false => crate::topics::envelope(topic, offset, epoch, None, payload),
    };
    let len = body.len();
    Entry { offset, prev, at: now, message: Arc::new(SharedMessage::new(OpCode::Text, Bytes::from(body))), len }
}

/// What comes from the cluster's broker.
impl Local for Hub {
    fn remote_message(&self, topic: Option<&str>, text: bool, payload: Bytes) {
        let message = SharedMessage::new(if text { OpCode::Text } else { OpCode::Binary }, payload);
        let mut batch = Batch::default();
        {
            let mut inner = self.lock();
            match topic {
                Some(topic) => self.deliver_to_topic(&mut inner, topic, &message, None, &mut batch),
                None => {
                    for member in inner.members.values_mut() {
                        deliver(&self.metrics, member, Outgoing::Shared(&message), None, &mut batch);
                    }
                }
            }
        }
        batch.flush();
    }

    fn stored_message(
        &self,
        topic: &str,
        offset: u64,
        prev: u64,
        text: bool,
        payload: Bytes,
        fill: bool,
    ) -> Option<u64> {
        let mut batch = Batch::default();
        {
            let mut inner = self.lock();
            if let Some(loading) = inner.loading.get_mut(topic) {
                if loading.live.len() < MAX_LOADING_BUFFER {
                    loading.live.push((offset, prev, text, payload));
                }
                return None;
            }
            let now = Instant::now();
            let history = inner.history.as_mut()?;
            let log = history.get(topic)?;
            let last = log.last();
            if offset <= last {
                return None; // already had it (from the history load)
            }
            if prev > last && fill {
                return Some(last); // the ones in between first (fetched from the stream)
            }
            if prev != last {
                crate::metrics::metrics().history_gaps.inc();
                tracing::warn!(route = %self.route, topic, last, prev, "history: gap in a topic's offsets (messages missed while away from the broker)");
            }
            let epoch = log.epoch.clone();
            let entry = stored_entry(topic, &epoch, offset, prev, text, &payload, now);
            history.append(topic, entry.clone());
            self.deliver_to_topic(&mut inner, topic, &entry.message, None, &mut batch);
        }
        batch.flush();
        None
    }

    fn history_loaded(&self, topic: &str, epoch: Arc<str>, entries: Vec<(u64, bool, Bytes)>) {
        let mut batch = Batch::default();
        {
            let mut inner = self.lock();
            // (Kept even if nobody here wants the topic any more: this node still follows it, and
            // forgets it when it stops, `unfollowed`.)
            let loading = inner.loading.remove(topic).unwrap_or_default();
            let now = Instant::now();
            let Some(history) = inner.history.as_mut() else { return };
            // What subscribers here were already sent (a reload after a reconnection): up to the
            // last offset of the same epoch; nothing of a new one (the broker lost the history,
            // and everything it holds now is newer than what they got).
            let (delivered, reset) = match history.get(topic) {
                Some(log) if *log.epoch == *epoch => (log.last(), false),
                Some(_) => (0, true),
                None => (0, false),
            };
            history.forget(topic);
            history.log(topic, || epoch.clone(), now);
            // The first loaded message's predecessor is unknown (u64::MAX matches no client's
            // offset): recovering from before it is refused, never answered with a hole.
            let mut prev = u64::MAX;
            let mut fresh = Vec::new();
            for (offset, text, payload) in entries {
                let entry = stored_entry(topic, &epoch, offset, prev, text, &payload, now);
                prev = offset;
                if reset || (delivered > 0 && offset > delivered) {
                    fresh.push(entry.message.clone());
                }
                history.append(topic, entry);
            }
            for (offset, prev, text, payload) in loading.live {
                if offset > history.get(topic).map_or(0, |l| l.last()) {
                    let entry = stored_entry(topic, &epoch, offset, prev, text, &payload, now);
                    // Arrived from the broker while loading: live, so subscribers get it.
                    fresh.push(entry.message.clone());
                    history.append(topic, entry);
                }
            }
            if delivered > 0 || reset {
                tracing::info!(route = %self.route, topic, filled = fresh.len(), "history: reloaded from the broker after a reconnection");
            }
            for message in &fresh {
                self.deliver_to_topic(&mut inner, topic, message, None, &mut batch);
            }
            for (id, from) in loading.recoveries {
                self.recover(&mut inner, id, topic, &from, &mut batch);
            }
        }
        batch.flush();
    }

    fn unfollowed(&self, topic: &str) {
        let mut inner = self.lock();
        if inner.topics.contains_key(topic) {
            return; // wanted again since (then it is followed again, with its history loading)
        }
        inner.loading.remove(topic);
        if let Some(history) = inner.history.as_mut() {
            history.forget(topic);
        }
    }

    fn presence_report(&self, node: &str, snapshot: Snapshot) {
        if node != self.node() {
            self.presence.lock().unwrap().update(node, snapshot, Instant::now());
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
            remote_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
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
                remote_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
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
