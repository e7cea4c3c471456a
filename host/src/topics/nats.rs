//! The NATS engine: the nodes of a cluster share topic messages, broadcasts, history and
//! presence through a NATS broker (`[cluster] nats = "nats://..."`), instead of a protocol of our
//! own.
//!
//! Subjects, under `wsplug.NAME.ROUTE` (names escaped into subject tokens):
//! - `msg.TOPIC`: a topic message of a route without history (core NATS; a node never receives
//!   its own, `no_echo`, since it delivered them to its own connections already);
//! - `pub.TOPIC`: a topic message of a route with history, stored by the route's JetStream stream
//!   (per subject: the last `history` messages, for `history_ttl`), which republishes it on
//!   `live.TOPIC` with its sequence (the offset) and the sequence of the topic's message before it.
//!   Every node, the publisher's included, delivers it from there: one order for everyone;
//! - `all`: route-wide broadcasts; `presence`: each node's snapshot of its subscribers.
//!
//! A node subscribes to `msg.TOPIC` / `live.TOPIC` only while one of its own connections is
//! subscribed to the topic (no firehose). The client reconnects by itself after a broker restart
//! and resubscribes; on reconnection every history topic is reloaded from the stream, and an
//! epoch change (the stream was lost and made again) is logged and told to recovering clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::presence::Snapshot;
use super::{TopicSettings, new_epoch};

/// `[cluster]`: the broker this node shares its routes' topics through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server(s), e.g. "nats://127.0.0.1:4222" (several: comma-separated).
    pub nats: String,
    /// This node's name, unique in the cluster (default: the host name and the process id).
    #[serde(default)]
    pub node: Option<String>,
    /// The cluster's name: several clusters can share one broker. Default "wsplug".
    #[serde(default = "default_name")]
    pub name: String,
}

fn default_name() -> String {
    "wsplug".into()
}

/// Most bytes of messages waiting to be handed to the broker; past it, messages are dropped
/// (and counted, and logged) rather than held without bound while the broker is away.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// What a route's hub does with what comes from the broker (implemented by `server::hub::Hub`).
pub trait Local: Send + Sync {
    /// A topic message (`Some(topic)`) or broadcast (`None`) published on another node.
    fn remote_message(&self, topic: Option<&str>, text: bool, payload: Bytes);
    /// A message of a topic with history, with its offset and the offset before it on the topic
    /// (`u64::MAX`: not known). With `fill`, a message whose predecessor this node never got is
    /// not delivered: the topic's last offset here is returned instead, so that the missing ones
    /// are fetched from the stream and handed over first (then this one again, without `fill`).
    fn stored_message(
        &self,
        topic: &str,
        offset: u64,
        prev: u64,
        text: bool,
        payload: Bytes,
        fill: bool,
    ) -> Option<u64>;
    /// A topic's history as the broker holds it (oldest first, each with its offset), loaded when
    /// this node became interested in the topic or reconnected to the broker.
    fn history_loaded(&self, topic: &str, epoch: Arc<str>, entries: Vec<(u64, bool, Bytes)>);
    /// Another node's presence snapshot.
    fn presence_report(&self, node: &str, snapshot: Snapshot);
    /// This node no longer follows `topic` (nobody here wanted it for [`UNFOLLOW_AFTER`]).
    fn unfollowed(&self, topic: &str);
}

enum Outgoing {
    Core { subject: String, payload: Bytes },
    Stored { subject: String, payload: Bytes },
}

/// The node's connection to the broker, shared by its routes.
pub struct Cluster {
    client: async_nats::Client,
    js: jetstream::Context,
    node: String,
    prefix: String,
    out: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    links: Mutex<Vec<Weak<RouteLink>>>,
}

static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

/// The process's cluster connection, if the config named a broker.
pub fn cluster() -> Option<Arc<Cluster>> {
    CLUSTER.get().cloned()
}

/// Connects to the broker and makes it the process's (once: a reload cannot change it).
pub async fn install(config: &ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
    if let Some(existing) = CLUSTER.get() {
        return Ok(existing.clone());
    }
    let cluster = Cluster::connect(config).await?;
    Ok(CLUSTER.get_or_init(|| cluster).clone())
}

impl Cluster {
    async fn connect(config: &ClusterConfig) -> anyhow::Result<Arc<Self>> {
        let node = config.node.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("wsplug {node}"))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(config.nats.split(',').map(str::trim).collect::<Vec<_>>().as_slice())
            .await
            .with_context(|| format!("connecting to the NATS broker at {} ([cluster] nats)", config.nats))?;
        // The first connection must be up before routes make their streams.
        tokio::time::timeout(Duration::from_secs(10), client.flush())
            .await
            .map_err(|_| anyhow::anyhow!("the NATS broker at {} did not answer within 10s", config.nats))?
            .with_context(|| format!("talking to the NATS broker at {}", config.nats))?;
        let js = jetstream::new(client.clone());
        let (out, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let cluster = Arc::new(Self {
            client,
            js,
            node,
            prefix: format!("wsplug.{}", token(&config.name)),
            out,
            queued: queued.clone(),
            links: Mutex::new(Vec::new()),
        });
        tracing::info!(node = %cluster.node, broker = %config.nats, "cluster: connected to the NATS broker");
        tokio::spawn(publisher(cluster.client.clone(), cluster.js.clone(), rx, queued));
        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            let mut lost = false;
            while let Some(event) = events.recv().await {
                let Some(cluster) = weak.upgrade() else { return };
                match event {
                    async_nats::Event::Disconnected => {
                        lost = true;
                        crate::metrics::metrics().cluster_disconnects.inc();
                        tracing::warn!(
                            "cluster: lost the NATS broker; reconnecting (messages published meanwhile may be lost)"
                        )
                    }
                    async_nats::Event::Connected if lost => {
                        lost = false;
                        tracing::info!("cluster: reconnected to the NATS broker; resynchronising history");
                        cluster.resync();
                    }
                    async_nats::Event::Connected => {}
                    other => tracing::warn!("cluster: {other}"),
                }
            }
        });
        Ok(cluster)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn send(&self, message: Outgoing) {
        let len = match &message {
            Outgoing::Core { payload, .. } | Outgoing::Stored { payload, .. } => payload.len(),
        };
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            crate::metrics::metrics().cluster_dropped.inc();
            tracing::warn!("cluster: {MAX_QUEUED_BYTES} bytes already wait for the broker; message dropped");
            return;
        }
        if self.out.send(message).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        }
    }

    fn resync(&self) {
        let links: Vec<Arc<RouteLink>> = self.links.lock().unwrap().iter().filter_map(Weak::upgrade).collect();
        for link in links {
            if link.stream.is_some() {
                tokio::spawn(async move {
                    if let Err(e) = link.reload_all().await {
                        tracing::warn!(route = %link.route, "cluster: resynchronising history failed: {e:#}");
                    }
                });
            }
        }
    }
}

/// Hands messages to the broker in the order they were published.
async fn publisher(
    client: async_nats::Client,
    js: jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(message) = rx.recv().await {
        match message {
            Outgoing::Core { subject, payload } => {
                queued.fetch_sub(payload.len(), Ordering::Relaxed);
                if let Err(e) = client.publish(subject.clone(), payload).await {
                    crate::metrics::metrics().cluster_dropped.inc();
                    tracing::warn!(%subject, "cluster: publish failed, message lost: {e}");
                }
            }
            Outgoing::Stored { subject, payload } => {
                queued.fetch_sub(payload.len(), Ordering::Relaxed);
                match js.publish(subject.clone(), payload).await {
                    // The acknowledgement is awaited aside, so that publishes stay pipelined.
                    Ok(ack) => {
                        tokio::spawn(async move {
                            if let Err(e) = ack.await {
                                crate::metrics::metrics().cluster_dropped.inc();
                                tracing::warn!(%subject, "cluster: gap: the broker did not store a message: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        crate::metrics::metrics().cluster_dropped.inc();
                        tracing::warn!(%subject, "cluster: gap: publishing to the broker failed: {e}");
                    }
                }
            }
        }
    }
}

/// How long a node keeps following a topic its last connection left: a connection re-attached by
/// a hot reload leaves its topics and joins them again at once, and must not miss what was
/// published meanwhile.
pub const UNFOLLOW_AFTER: Duration = Duration::from_secs(5);

/// A topic this node follows.
struct Interest {
    task: AbortHandle,
    wanted: bool,
    /// Counts the times it became unwanted: a delayed release acts only on the latest.
    released: u64,
}

/// A route's presence on the broker.
pub struct RouteLink {
    cluster: Arc<Cluster>,
    route: String,
    base: String,
    /// The route's JetStream stream (its name is in the config), when it keeps history.
    stream: Option<jetstream::stream::Config>,
    history: usize,
    epoch: Mutex<Arc<str>>,
    local: Weak<dyn Local>,
    /// A subscription task per topic this node follows: wanted by its connections, or unwanted
    /// for less than [`UNFOLLOW_AFTER`].
    interests: Mutex<HashMap<String, Interest>>,
    /// The route-wide subscriptions (broadcasts, presence).
    background: Mutex<Vec<AbortHandle>>,
}

impl std::fmt::Debug for RouteLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLink").field("route", &self.route).finish()
    }
}

impl Drop for RouteLink {
    fn drop(&mut self) {
        for task in self.background.get_mut().unwrap().drain(..) {
            task.abort();
        }
        for (_, interest) in self.interests.get_mut().unwrap().drain() {
            interest.task.abort();
        }
    }
}

fn frame(text: bool, payload: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(payload.len() + 1);
    bytes.push(if text { b't' } else { b'b' });
    bytes.extend_from_slice(payload);
    bytes.into()
}

fn unframe(bytes: Bytes) -> Option<(bool, Bytes)> {
    let text = match bytes.first()? {
        b't' => true,
        b'b' => false,
        _ => return None,
    };
    Some((text, bytes.slice(1..)))
}

impl RouteLink {
    /// Joins the route to the cluster: its stream (when it keeps history), its broadcasts and its
    /// presence reports.
    pub async fn open(
        cluster: Arc<Cluster>,
        route: &str,
        settings: &TopicSettings,
        local: Weak<dyn Local>,
    ) -> anyhow::Result<Arc<Self>> {
        let base = format!("{}.{}", cluster.prefix, token(route));
        let mut stream = None;
        let mut epoch: Arc<str> = new_epoch().into();
        if settings.history > 0 {
            let name = format!("WSPLUG_{:016x}", fnv(&base));
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{base}.pub.>")],
                max_messages_per_subject: settings.history as i64,
                max_age: settings.history_ttl,
                storage: jetstream::stream::StorageType::File,
                republish: Some(jetstream::stream::Republish {
                    source: format!("{base}.pub.>"),
                    destination: format!("{base}.live.>"),
                    headers_only: false,
                }),
                allow_direct: true,
                ..Default::default()
            };
            let mut made = cluster
                .js
                .get_or_create_stream(config.clone())
                .await
                .with_context(|| format!("route {route}: making its history stream {name} on the broker"))?;
            epoch = stream_epoch(&mut made).await?;
            stream = Some(config);
        }
        let link = Arc::new(Self {
            cluster: cluster.clone(),
            route: route.to_owned(),
            base: base.clone(),
            stream,
            history: settings.history,
            epoch: Mutex::new(epoch),
            local,
            interests: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
        });
        let broadcasts = cluster.client.subscribe(format!("{base}.all")).await?;
        let presence = cluster.client.subscribe(format!("{base}.presence")).await?;
        let weak = Arc::downgrade(&link);
        let mut tasks = link.background.lock().unwrap();
        tasks.push(
            tokio::spawn(forward(broadcasts, weak.clone(), |local, m| {
                if let Some((text, payload)) = unframe(m.payload) {
                    local.remote_message(None, text, payload);
                }
            }))
            .abort_handle(),
        );
        tasks.push(
            tokio::spawn(forward(presence, weak, |local, m| {
                #[derive(Deserialize)]
                struct Report {
                    node: String,
                    topics: Snapshot,
                }
                match serde_json::from_slice::<Report>(&m.payload) {
                    Ok(r) => local.presence_report(&r.node, r.topics),
                    Err(e) => tracing::warn!("cluster: a presence report that does not parse: {e}"),
                }
            }))
            .abort_handle(),
        );
        drop(tasks);
        cluster.links.lock().unwrap().push(Arc::downgrade(&link));
        tracing::info!(route, history = link.stream.is_some(), "cluster: route joined");
        Ok(link)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.cluster.node
    }

    /// The epoch of the route's history in the broker.
    pub fn epoch(&self) -> Arc<str> {
        self.epoch.lock().unwrap().clone()
    }

    pub fn keeps_history(&self) -> bool {
        self.stream.is_some()
    }

    /// Publishes a topic message to the other nodes (and, with history, to the stream, from which
    /// every node delivers it).
    pub fn publish(&self, topic: &str, text: bool, payload: &[u8]) {
        let payload = frame(text, payload);
        let message = match self.stream {
            Some(_) => Outgoing::Stored { subject: format!("{}.pub.{}", self.base, token(topic)), payload },
            None => Outgoing::Core { subject: format!("{}.msg.{}", self.base, token(topic)), payload },
        };
        self.cluster.send(message);
    }

    /// Sends a route-wide broadcast to the other nodes.
    pub fn broadcast(&self, text: bool, payload: &[u8]) {
        self.cluster.send(Outgoing::Core { subject: format!("{}.all", self.base), payload: frame(text, payload) });
    }

    /// Reports this node's subscribers to the other nodes.
    pub fn report_presence(&self, snapshot: &Snapshot) {
        let body = serde_json::json!({"node": self.cluster.node, "topics": snapshot});
        let payload = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        self.cluster.send(Outgoing::Core { subject: format!("{}.presence", self.base), payload });
    }

    /// Starts (`true`) or stops receiving a topic's messages from the broker, as this node's first
    /// connection subscribes to it or its last one leaves. Stopping takes effect after
    /// [`UNFOLLOW_AFTER`], unless it is wanted again meanwhile; the hub then hears of it
    /// ([`Local::unfollowed`]). Returns whether the topic is newly followed: its history is then
    /// being loaded ([`Local::history_loaded`] follows).
    pub fn interest(self: &Arc<Self>, topic: &str, on: bool) -> bool {
        let mut interests = self.interests.lock().unwrap();
        if !on {
            let Some(interest) = interests.get_mut(topic) else { return false };
            interest.wanted = false;
            interest.released += 1;
            let (link, topic, released) = (Arc::downgrade(self), topic.to_owned(), interest.released);
            tokio::spawn(async move {
                tokio::time::sleep(UNFOLLOW_AFTER).await;
                let Some(link) = link.upgrade() else { return };
                let mut interests = link.interests.lock().unwrap();
                if interests.get(&topic).is_some_and(|i| !i.wanted && i.released == released) {
                    interests.remove(&topic).expect("present").task.abort();
                    drop(interests);
                    if let Some(local) = link.local.upgrade() {
                        local.unfollowed(&topic);
                    }
                }
            });
            return false;
        }
        if let Some(interest) = interests.get_mut(topic) {
            interest.wanted = true;
            return false;
        }
        let link = Arc::downgrade(self);
        let topic_owned = topic.to_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = follow(link, topic_owned.clone()).await {
                tracing::warn!(topic = %topic_owned, "cluster: following a topic failed: {e:#}");
            }
        });
        interests.insert(topic.to_owned(), Interest { task: task.abort_handle(), wanted: true, released: 0 });
        true
    }

    /// Reloads the history of every topic this node follows (after a reconnection), noting an
    /// epoch change.
    async fn reload_all(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(config) = &self.stream else { return Ok(()) };
        // A broker that lost the stream (its store wiped) gets it made again: a new epoch.
        let mut stream = self.cluster.js.get_or_create_stream(config.clone()).await?;
        let epoch = stream_epoch(&mut stream).await?;
        let old = std::mem::replace(&mut *self.epoch.lock().unwrap(), epoch.clone());
        if old != epoch {
            crate::metrics::metrics().history_gaps.inc();
            tracing::warn!(route = %self.route, %old, new = %epoch, "cluster: the broker lost the route's history (a new epoch): recovering clients are told");
        }
        let topics: Vec<String> = self.interests.lock().unwrap().keys().cloned().collect();
        for topic in topics {
            if let Err(e) = self.load(&topic).await {
                tracing::warn!(route = %self.route, %topic, "cluster: reloading a topic's history failed: {e:#}");
            }
        }
        Ok(())
    }

    /// Loads a topic's history from the stream and hands it to the hub.
    async fn load(&self, topic: &str) -> anyhow::Result<()> {
        let Some(config) = &self.stream else { return Ok(()) };
        let stream = self.cluster.js.get_stream(&config.name).await?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: format!("{}.pub.{}", self.base, token(topic)),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let mut entries = Vec::new();
        'fetch: loop {
            use futures_util::StreamExt as _;
            let mut batch = consumer.fetch().max_messages(self.history.clamp(1, 1000)).messages().await?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
                got += 1;
                let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                if let Some((text, payload)) = unframe(message.payload.clone()) {
                    entries.push((seq, text, payload));
                }
                if pending == 0 {
                    break 'fetch;
                }
            }
            if got == 0 {
                break;
            }
        }
        let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        if let Some(local) = self.local.upgrade() {
            local.history_loaded(topic, self.epoch(), entries);
        }
        Ok(())
    }
}

/// The longest a node waits for the stream to hand over the messages of a gap (then it delivers
/// what follows the gap, which stays a gap: recovering clients are told).
const FILL_TIMEOUT: Duration = Duration::from_secs(2);

impl RouteLink {
    /// Fetches a topic's messages after offset `last` up to `upto` from the stream and hands them
    /// to `local` in order: messages this node should have received live and did not.
    async fn fill_gap(&self, topic: &str, local: &dyn Local, last: u64, upto: u64) {
        let Some(config) = &self.stream else { return };
        let subject = format!("{}.pub.{}", self.base, token(topic));
        let mut delivered = 0;
        let fetched = async {
            let stream = self.cluster.js.get_stream(&config.name).await?;
            // From `last` itself: if the stream still holds it, it holds everything after it (the
            // oldest go first), so each fetched message's predecessor is known exactly.
            let mut prev = last;
            let mut from = last;
            while delivered < self.history {
                let m = stream.direct_get_next_for_subject(subject.as_str(), Some(from)).await?;
                if m.sequence > upto {
                    break;
                }
                if m.sequence == last {
                    from = last + 1;
                    continue;
                }
                if from == last {
                    prev = u64::MAX; // `last` is gone: what came between it and this is unknown
                }
                if let Some((text, payload)) = unframe(m.payload) {
                    local.stored_message(topic, m.sequence, prev, text, payload, false);
                }
                delivered += 1;
                (prev, from) = (m.sequence, m.sequence + 1);
                if m.sequence == upto {
                    break;
                }
            }
            anyhow::Ok(())
        };
        let outcome = tokio::time::timeout(FILL_TIMEOUT, fetched).await;
        crate::metrics::metrics().history_filled.inc_by(delivered as u64);
        match outcome {
            Ok(Ok(())) => {
                tracing::info!(route = %self.route, topic, last, upto, delivered, "cluster: filled a gap in a topic's live messages from the stream")
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %self.route, topic, last, upto, delivered, "cluster: filling a gap from the stream failed: {e:#}")
            }
            Err(_) => {
                tracing::warn!(route = %self.route, topic, last, upto, delivered, "cluster: filling a gap from the stream timed out after {FILL_TIMEOUT:?}")
            }
        }
    }
}

/// Receives one topic's messages for as long as this node follows it.
async fn follow(link: Weak<RouteLink>, topic: String) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let (subject, client, stored) = {
        let Some(l) = link.upgrade() else { return Ok(()) };
        let kind = if l.stream.is_some() { "live" } else { "msg" };
        (format!("{}.{kind}.{}", l.base, token(&topic)), l.cluster.client.clone(), l.stream.is_some())
    };
    let mut subscriber = client.subscribe(subject).await?;
    if stored {
        // Subscribed first, then loaded: what arrives meanwhile is merged by offset, not lost.
        // Until the load succeeds (the broker may be away), the topic's recoveries wait for it.
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(l) = link.upgrade() else { return Ok(()) };
            let loaded = async {
                client.flush().await?;
                l.load(&topic).await
            };
            match loaded.await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(route = %l.route, %topic, "cluster: loading a topic's history failed, retrying: {e:#}");
                    drop(l);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    while let Some(message) = subscriber.next().await {
        let Some(l) = link.upgrade() else { return Ok(()) };
        let Some(local) = l.local.upgrade() else { return Ok(()) };
        let Some((text, payload)) = unframe(message.payload) else { continue };
        if stored {
            let header = |name: &str| {
                message.headers.as_ref().and_then(|h| h.get(name)).and_then(|v| v.as_str().parse::<u64>().ok())
            };
            let Some(offset) = header("Nats-Sequence") else { continue };
            let prev = header("Nats-Last-Sequence").unwrap_or(0);
            if let Some(last) = local.stored_message(&topic, offset, prev, text, payload.clone(), true) {
                // A gap: the broker's republication of a message can be lost (seen under load on
                // loopback), or this node was away. What the stream still holds comes first.
                l.fill_gap(&topic, &*local, last, prev).await;
                local.stored_message(&topic, offset, prev, text, payload, false);
            }
        } else {
            local.remote_message(Some(&topic), text, payload);
        }
    }
    Ok(())
}

/// Hands each message of a route-wide subscription to the hub.
async fn forward(
    mut subscriber: async_nats::Subscriber,
    link: Weak<RouteLink>,
    handle: impl Fn(&dyn Local, async_nats::Message),
) {
    use futures_util::StreamExt as _;
    while let Some(message) = subscriber.next().await {
        let Some(l) = link.upgrade() else { return };
        let Some(local) = l.local.upgrade() else { return };
        handle(&*local, message);
    }
}

async fn stream_epoch(stream: &mut jetstream::stream::Stream) -> anyhow::Result<Arc<str>> {
    let info = stream.info().await.map_err(|e| anyhow::anyhow!("reading the history stream's info: {e}"))?;
    Ok(format!("{:x}", info.created.unix_timestamp_nanos()).into())
}

/// A subject token for any string: letters, digits, '-' and '_' as they are, every other byte as
/// `~XX` (so '.', '*', '>' and spaces cannot change the subject's meaning).
pub fn token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('~');
    }
    out
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_cannot_change_a_subject() {
        assert_eq!(token("room-1_a"), "room-1_a");
        assert_eq!(token("/chat"), "~2Fchat");
        assert_eq!(token("a.b *>"), "a~2Eb~20~2A~3E");
        assert_eq!(token(""), "~");
        assert_ne!(token("a~2E"), token("a."), "'~' is escaped too");
    }

    #[test]
    fn frames_carry_the_opcode() {
        assert_eq!(unframe(frame(true, b"hi")), Some((true, Bytes::from_static(b"hi"))));
        assert_eq!(unframe(frame(false, b"")), Some((false, Bytes::new())));
        assert_eq!(unframe(Bytes::from_static(b"x")), None);
    }
}
