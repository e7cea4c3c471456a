//! A route served by a plugin, and the slot that owns each of its instances.
//!
//! There is no thread and no queue per instance: an [`InstanceSlot`] sits behind an async mutex,
//! and a connection's task takes it, calls the plugin on its own worker (the call runs on a fiber
//! and yields at every epoch tick) and carries out the returned actions, all without a thread
//! hop. Waiting for the slot is the back-pressure: a connection whose instance is busy holds its
//! read batch and stops reading its socket.
//!
//! Guarantees:
//! - A connection's events reach the plugin in order (its own task delivers them one batch at a
//!   time; a connection is pinned to one instance by its id). Waiters take the slot in FIFO order.
//! - `on-close` is called exactly once for every admitted connection.
//! - A failed call (trap, deadline, memory cap, runtime refusal) closes the connection whose event
//!   caused it with 1011 and drops the instance: the next event rebuilds it from the same compiled
//!   plugin and restores its last checkpoint ([`super::recovery`]). The other live connections are
//!   re-attached lazily, each with `on-open` (`resumed: true`) just before its own next message,
//!   so a trap costs O(1) however many connections the instance has; until then a connection
//!   keeps its topic subscriptions. Plugins that keep failing open a circuit breaker (new
//!   connections get 503 with Retry-After, open ones are still served).
//! - Nothing a plugin returns is trusted: counts, sizes, close codes, HTTP statuses, subprotocols
//!   and target ids are checked first; a violation is logged with the plugin's name.
//! - Hot reload takes each slot in turn: events handled before the swap went to the old version,
//!   every later one goes to the new one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::actions::{TEXT_BIT, check_action, check_message_len, check_packed, check_totals};
use super::bindings::v1::types::{self as wit, Action, Admission, Target};
use super::engine::LoadedPlugin;
use super::instance::{CallError, PackedActions, PackedParam, PluginInstance};
use super::platform::{Grants, Shared};
use super::recovery::{Checkpoints, Health};
use super::sandbox::SandboxLimits;
use crate::protocol::frame::OpCode;
use crate::protocol::handshake::is_token;
use crate::protocol::{CloseCode, CloseFrame, Message};
use crate::server::handler::{Accept, Admit, BoxFuture, EventRoute, HandlerInstance, SharedInstance};
use crate::server::hub::{ConnInfo, Hub};
use crate::server::{Batch, Outbound, SharedMessage};
use crate::storage::{Store, StoreSpec};

/// A route served by a plugin: its instances' slots and its hub.
pub struct PluginRoute {
    pub hub: Arc<Hub>,
    instances: Vec<Arc<Mutex<InstanceSlot>>>,
    /// The version and settings in service (after the last successful swap).
    current: std::sync::Mutex<(LoadedPlugin, RouteSettings)>,
}

impl std::fmt::Debug for PluginRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRoute")
            .field("plugin", &self.current().name)
            .field("instances", &self.instances.len())
            .finish()
    }
}

/// What an instance needs to know of its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    pub path: String,
    pub instances: usize,
    pub sandbox: SandboxLimits,
    /// Largest message a plugin may send (the route's max_message_size).
    pub max_message_size: usize,
    /// Subprotocols named in the config, used when the plugin picks none.
    pub subprotocols: Vec<String>,
    /// When a stateful plugin's state is checkpointed for recovery.
    pub checkpoints: Checkpoints,
    /// Failure reasons go to the client (`dev = true`), not only to the log.
    pub dev: bool,
    /// What the plugin may use beyond the sandbox (timers, attachments, a key-value store).
    pub grants: Grants,
    /// The key-value store it is granted, and where it is.
    pub kv: Option<StoreSpec>,
    /// Idle this long, an instance hibernates (zero: never).
    pub hibernate_after: Duration,
    /// What the route keeps of its topics (history, presence).
    pub topics: crate::topics::TopicSettings,
}

impl RouteSettings {
    pub fn new(route: &crate::config::RouteConfig, config: &crate::config::Config) -> Self {
        let limits = &config.limits;
        Self {
            path: route.path.clone(),
            instances: route.instances,
            sandbox: route.sandbox.clone(),
            max_message_size: limits.max_message_size,
            subprotocols: route.subprotocols.clone(),
            checkpoints: route.checkpoint,
            dev: route.dev,
            grants: route.grants.clone(),
            kv: route.grants.kv.as_ref().map(|name| StoreSpec {
                name: name.clone(),
                location: config.effective_data_dir(),
                quota: route.grants.kv_quota as u64,
            }),
            hibernate_after: route.hibernate_after,
            topics: route.topics.clone(),
        }
    }
}

impl PluginRoute {
    /// Instantiates the plugin `settings.instances` times, failing fast if it cannot start.
    pub async fn start(plugin: LoadedPlugin, settings: RouteSettings) -> anyhow::Result<Self> {
        settings.grants.check(&plugin.imports).map_err(|e| anyhow::anyhow!("plugin {}: {e}", plugin.path.display()))?;
        let kv = settings
            .kv
            .as_ref()
            .map(Store::open)
            .transpose()
            .map_err(|e| anyhow::anyhow!("route {}: {e}", settings.path))?;
        let hub = Arc::new(Hub::with_topics(&settings.path, settings.topics.clone()));
        if let Some(cluster) = crate::topics::nats::cluster() {
            hub.link_cluster(cluster).await.map_err(|e| anyhow::anyhow!("route {}: {e:#}", settings.path))?;
        }
        let count = settings.instances.max(1);
        let mut instances = Vec::with_capacity(count);
        for index in 0..count {
            let mut instance = PluginInstance::new(&plugin, &settings.sandbox)
                .await
                .map_err(|e| anyhow::anyhow!("plugin {}: instantiation {e}", plugin.path.display()))?;
            let platform = Shared { kv: kv.clone(), hub: Some(hub.clone()), ..Shared::default() };
            instance.link_platform(platform.clone(), settings.grants.max_timers);
            let slot = Arc::new_cyclic(|this| {
                Mutex::new(InstanceSlot {
                    index,
                    count,
                    plugin: plugin.clone(),
                    settings: settings.clone(),
                    hub: hub.clone(),
                    instance: Some(instance),
                    batch: Batch::default(),
                    detached: HashSet::new(),
                    generation: 0,
                    attached: HashMap::new(),
                    checkpoint: None,
                    events_since_checkpoint: 0,
                    checkpoint_timer: false,
                    checkpoint_due: false,
                    health: Health::default(),
                    last_failure: String::new(),
                    platform,
                    last_event: tokio::time::Instant::now(),
                    hibernated: false,
                    hibernation_task: false,
                    this: this.clone(),
                })
            });
            // The task needs the timers only: it does not keep the route's store open.
            let timers = Shared { kv: None, hub: None, ..slot.try_lock().expect("a new slot").platform.clone() };
            tokio::spawn(timer_task(Arc::downgrade(&slot), timers));
            instances.push(slot);
        }
        if settings.topics.presence != crate::topics::PresenceMode::Off {
            let slots = instances.iter().map(Arc::downgrade).collect();
            tokio::spawn(presence_task(Arc::downgrade(&hub), slots, settings.topics.presence_interval));
        }
        Ok(Self { hub, instances, current: std::sync::Mutex::new((plugin, settings)) })
    }

    /// [`PluginRoute::start`] for callers off the async workers (start-up).
    pub fn start_blocking(plugin: LoadedPlugin, settings: RouteSettings) -> anyhow::Result<Self> {
        wasmtime_wasi::runtime::in_tokio(Self::start(plugin, settings))
    }

    /// The version in service.
    pub fn current(&self) -> LoadedPlugin {
        self.current.lock().expect("current plugin lock").0.clone()
    }

    pub fn settings(&self) -> RouteSettings {
        self.current.lock().expect("current plugin lock").1.clone()
    }

    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    /// Swaps a checked new version (and optionally new settings) into every instance, all or none:
    /// every slot is held (between two of its events) while the new version is built and handed
    /// each instance's state; only when all succeeded do they all switch. A route never serves two
    /// versions at once, and a refused version leaves `current` as it was, so that writing the same
    /// file again is tried again.
    pub async fn swap(&self, plugin: LoadedPlugin, settings: Option<RouteSettings>) -> Result<(), String> {
        let settings = settings.unwrap_or_else(|| self.settings());
        settings.grants.check(&plugin.imports)?;
        let kv = settings.kv.as_ref().map(Store::open).transpose()?;
        // In index order; nothing else holds two slots, so this cannot deadlock.
        let mut slots = Vec::with_capacity(self.instances.len());
        for slot in &self.instances {
            slots.push(slot.lock().await);
        }
        let mut prepared = Vec::with_capacity(slots.len());
        for (i, slot) in slots.iter_mut().enumerate() {
            match slot.prepare(&plugin, &settings, kv.clone()).await {
                Ok(p) => prepared.push(p),
                Err(e) => return Err(format!("instance {i} of {}: {e}; no instance changed", slots.len())),
            }
        }
        for (slot, p) in slots.iter_mut().zip(prepared) {
            slot.commit(p, plugin.clone(), settings.clone()).await;
        }
        *self.current.lock().expect("current plugin lock") = (plugin, settings);
        Ok(())
    }
}

impl EventRoute for PluginRoute {
    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    fn instance_for(&self, id: u64) -> SharedInstance {
        self.instances[(id % self.instances.len() as u64) as usize].clone()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Every entry point is supervised: a panic of the host's own code during an event (in wasmtime,
/// in a host function, in carrying out actions) is caught here and handled like a failed call. The
/// instance is dropped (its store may be mid-call) and rebuilt for the next event, the connection
/// whose event it was is closed with 1011, and the route goes on serving everyone else.
impl HandlerInstance for InstanceSlot {
    fn open<'a>(&'a mut self, info: Arc<ConnInfo>, accept: Accept<'a>) -> BoxFuture<'a, Admit> {
        Box::pin(async move {
            let id = info.id;
            match supervised(Box::pin(self.admit(info, accept))).await {
                Ok(admit) => admit,
                Err(panic) => {
                    self.panicked("on-open", &panic);
                    if self.hub.info(id).is_none() {
                        return Admit::Rejected { status: 500, body: format!("{}\n", self.client_reason(&panic)) };
                    }
                    // Its 101 is queued already: it is closed like any connection whose event failed.
                    self.detach(id);
                    Admit::Accepted
                }
            }
        })
    }

    fn messages<'a>(&'a mut self, id: u64, messages: &'a mut Vec<Message>, out: &'a Outbound) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(panic) = supervised(Box::pin(self.handle_messages(id, messages, out))).await {
                self.panicked("on-message", &panic);
                self.detach(id);
                for message in messages.drain(..) {
                    out.end_event(message.payload().len());
                }
                self.batch.flush();
            }
        })
    }

    fn closed<'a>(&'a mut self, id: u64, code: u16, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(panic) = supervised(Box::pin(self.connection_closed(id, code, reason))).await {
                self.panicked("on-close", &panic);
                self.detached.remove(&id);
                self.attached.remove(&id);
                self.batch.flush();
            }
        })
    }
}

/// How a caught panic's failure text starts.
const HOST_PANIC: &str = "host panic: ";

/// Runs `call`, turning a panic in any of its polls into `Err` with the panic's message.
async fn supervised<T>(mut call: BoxFuture<'_, T>) -> Result<T, String> {
    std::future::poll_fn(|cx| match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(cx))) {
        Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
        Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            std::task::Poll::Ready(Err(text))
        }
    })
    .await
}

/// A new version built and given an instance's state, ready to be put in service.
struct Prepared {
    instance: PluginInstance,
    checkpoint: Option<Vec<u8>>,
    /// The key-value store of the new settings.
    kv: Option<Arc<Store>>,
}

/// One plugin instance and what it needs to serve its connections; taken by one connection's
/// task at a time.
pub struct InstanceSlot {
    index: usize,
    count: usize,
    plugin: LoadedPlugin,
    settings: RouteSettings,
    hub: Arc<Hub>,
    /// `None` after a failure (its store is poisoned) until the next event rebuilds it.
    instance: Option<PluginInstance>,
    /// Other connections' queues written to during one connection's batch of events, flushed
    /// before the slot is released (the sender's own queue is flushed by its session, after its
    /// whole read batch, so that replies to pipelined messages leave in one write).
    batch: Batch,
    /// Connections closed because of a plugin failure (or not resumed): their later events are
    /// dropped, and only `on-close` still reaches the plugin.
    detached: HashSet<u64>,
    /// Which instance this is, counted from 0: every failure makes the next one a new generation.
    generation: u64,
    /// The generation each admitted connection was last attached (`on-open`) to. One that is
    /// behind is re-attached (`on-open`, `resumed: true`) before its next message: lazily, so a
    /// failure costs O(1) however many connections the instance serves.
    attached: HashMap<u64, u64>,
    /// The last snapshot of the plugin's state (`state.snapshot`), restored into the instance
    /// rebuilt after a failure.
    checkpoint: Option<Vec<u8>>,
    /// Events handled since that snapshot.
    events_since_checkpoint: u64,
    /// The task that takes a checkpoint every `checkpoints.every` is running.
    checkpoint_timer: bool,
    /// A checkpoint made due by the event count is on its way.
    checkpoint_due: bool,
    /// Failures, the circuit breaker and the rebuild backoff.
    health: Health,
    /// What the last failed call reported (for `dev` routes' clients).
    last_failure: String,
    /// The instance's timers and its connections' attachments (contract 0.2.0): the slot's, so
    /// that they outlive the instance (a reload, a rebuild after a failure).
    platform: Shared,
    /// When the instance last had an event (for hibernation).
    last_event: tokio::time::Instant,
    /// The instance was dropped for being idle (its state is the checkpoint): the next event
    /// wakes a fresh one, without re-attaching the connections.
    hibernated: bool,
    /// The task that hibernates the instance when idle is running.
    hibernation_task: bool,
    /// This slot's own lock, for the checkpoint, timer and hibernation tasks.
    this: Weak<Mutex<InstanceSlot>>,
}

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        // The timer task waits on this: it then finds the slot gone and ends.
        self.platform.timers_changed.notify_one();
    }
}

/// Which connection an action list belongs to, and its outbound queue (the target of `reply`).
type Sender<'a> = Option<(u64, &'a Outbound)>;

impl InstanceSlot {
    fn owns(&self, id: u64) -> bool {
        (id % self.count as u64) as usize == self.index
    }

    /// The instance, rebuilt if a failure dropped it: from the last checkpoint when there is one,
    /// and not more often than the rebuild backoff allows when instantiation keeps failing.
    async fn instance(&mut self) -> Result<&mut PluginInstance, CallError> {
        if self.instance.is_none() {
            let now = tokio::time::Instant::now();
            let waking = std::mem::take(&mut self.hibernated);
            if let Some(wait) = self.health.rebuild_wait(now) {
                return Err(CallError::Failed(format!("unavailable: instantiation failed, next attempt in {wait:?}")));
            }
            let mut fresh = match PluginInstance::new(&self.plugin, &self.settings.sandbox).await {
                Ok(i) => i,
                Err(e) => {
                    let wait = self.health.rebuild_failed(now);
                    tracing::error!(plugin = &*self.plugin.name, route = %self.settings.path, "cannot rebuild the plugin instance ({e}); next attempt in {wait:?}");
                    return Err(e);
                }
            };
            self.health.rebuilt();
            if !waking {
                self.hub.metrics().plugin_rebuilds.inc();
            }
            fresh.link_platform(self.platform.clone(), self.settings.grants.max_timers);
            if let Some(checkpoint) = self.checkpoint.clone()
                && fresh.has_restore()
            {
                let bytes = checkpoint.len();
                let failure = match fresh.restore(checkpoint).await {
                    Ok(Ok(())) => None,
                    Ok(Err(refusal)) => Some(format!("refused it: {refusal}")),
                    Err(e) => Some(format!("{e}")),
                };
                match failure {
                    None if waking => {
                        self.hub.metrics().plugin_wake_seconds.observe(now.elapsed().as_secs_f64());
                        let micros = now.elapsed().as_micros() as u64;
                        tracing::info!(plugin = &*self.plugin.name, route = %self.settings.path, bytes, micros, "woken from hibernation");
                    }
                    None => {
                        tracing::info!(plugin = &*self.plugin.name, route = %self.settings.path, bytes, "instance rebuilt from its last checkpoint")
                    }
                    Some(why) => {
                        // The checkpoint itself may be what breaks it: start empty, and forget it.
                        tracing::error!(plugin = &*self.plugin.name, route = %self.settings.path, "restoring the last checkpoint {why}; the instance starts without state");
                        self.checkpoint = None;
                        fresh = PluginInstance::new(&self.plugin, &self.settings.sandbox).await?;
                        fresh.link_platform(self.platform.clone(), self.settings.grants.max_timers);
                    }
                }
            }
            self.instance = Some(fresh);
        }
        Ok(self.instance.as_mut().expect("just set"))
    }

    /// Asks the plugin whether to admit a connection. On acceptance the server queues the 101
    /// response and registers the connection (`accept`) before the plugin's first actions are
    /// carried out, so they follow the handshake on the wire.
    async fn admit(&mut self, info: Arc<ConnInfo>, accept: Accept<'_>) -> Admit {
        if let Some(wait) = self.health.open_for(tokio::time::Instant::now()) {
            return Admit::Unavailable { retry_after: wait };
        }
        self.hub.metrics().plugin_calls.inc();
        let result = match self.instance().await {
            Ok(i) => on_open(i, &info, false).await,
            Err(e) => Err(e),
        };
        let admit = match result {
            Ok(Admission::Accept(acceptance)) => match self.subprotocol(acceptance.subprotocol, &info.protocols) {
                Ok(subprotocol) => match accept(subprotocol.as_deref()) {
                    Some(out) => {
                        self.attached.insert(info.id, self.generation);
                        // The table of live connections for attachments: kept only where they are granted
                        // (an entry per connection is memory every idle connection pays).
                        if self.settings.grants.attachments {
                            self.platform.attachments.lock().expect("attachments lock").entry(info.id).or_default();
                        }
                        self.apply(Some((info.id, &out)), acceptance.actions);
                        self.counted(1);
                        Admit::Accepted
                    }
                    None => {
                        // The client left before its 101: the plugin admitted it, so it hears
                        // of its end, once, like every connection it admitted.
                        self.connection_closed(info.id, 1006, "").await;
                        Admit::Rejected { status: 503, body: "connection gone\n".into() }
                    }
                },
                Err(msg) => {
                    self.violation(None, &msg);
                    // Admitted by the plugin, refused by the host: the plugin still hears of it.
                    self.connection_closed(info.id, 1006, "").await;
                    Admit::Rejected { status: 500, body: format!("{}\n", self.client_reason(&msg)) }
                }
            },
            Ok(Admission::Reject(rejection)) => {
                let status = if (400..=599).contains(&rejection.status) {
                    rejection.status
                } else {
                    self.violation(None, &format!("reject with HTTP status {} (must be 400-599)", rejection.status));
                    500
                };
                Admit::Rejected { status, body: rejection.body }
            }
            Err(e) => {
                self.failed("on-open", &e);
                Admit::Rejected { status: 500, body: format!("{}\n", self.client_reason(&self.last_failure)) }
            }
        };
        if !matches!(admit, Admit::Accepted) {
            // What its on-open attached goes with it.
            self.platform.attachments.lock().expect("attachments lock").remove(&info.id);
        }
        self.batch.flush();
        admit
    }

    /// Hands a connection's messages to the plugin, in order, and carries out its actions: in one
    /// `batch.on-messages` call when there are several and the plugin exports it, else one
    /// `on-message` call each. Each message's bytes stop counting against the connection once it is
    /// handled (`end_event`). Replies to the sender are queued on `out`, which its session flushes;
    /// fan-out to others is written before this returns.
    async fn handle_messages(&mut self, id: u64, messages: &mut Vec<Message>, out: &Outbound) {
        let started = std::time::Instant::now();
        self.handle_messages_timed(id, messages, out).await;
        self.hub.metrics().plugin_batch_seconds.observe(started.elapsed().as_secs_f64());
    }

    async fn handle_messages_timed(&mut self, id: u64, messages: &mut Vec<Message>, out: &Outbound) {
        self.counted(messages.len() as u64);
        self.resume(id, out).await;
        if messages.len() > 1 && !self.detached.contains(&id) {
            let (packed, batch) = match self.instance().await {
                Ok(i) => (i.has_packed(), i.has_batch()),
                Err(_) => (false, false),
            };
            // Packed end offsets leave bit 31 for the kind (the limits keep a batch far below).
            let bytes: usize = messages.iter().map(|m| m.payload().len()).sum();
            if packed && bytes < TEXT_BIT as usize {
                self.message_packed(id, messages, bytes, out).await;
            } else if batch {
                self.message_batch(id, messages, bytes, out).await;
            }
        }
        for message in messages.drain(..) {
            let len = message.payload().len();
            if self.detached.contains(&id) {
                out.end_event(len);
                continue; // closing after a plugin failure: its messages no longer count
            }
            #[cfg(test)]
            tests::inject_panic(&message);
            // Lent to the call, copied once: straight into the guest's memory.
            let param = message_param(&message);
            self.hub.metrics().plugin_calls.inc();
            let result = match self.instance().await {
                Ok(i) => i.on_message(id, param).await,
                Err(e) => Err(e),
            };
            drop(message);
            // Its bytes are no longer held: the replies take their place in the connection's bound.
            out.end_event(len);
            self.outcome(id, out, result, 1, "on-message").await;
        }
        self.batch.flush();
    }

    /// Several messages of one connection (`bytes` in all) in one `batch.on-messages` call (drains
    /// `messages`): lent to the call like a single message, copied once, into the guest.
    async fn message_batch(&mut self, id: u64, messages: &mut Vec<Message>, bytes: usize, out: &Outbound) {
        let count = messages.len();
        let batch: Vec<wit::MessageParam<'_>> = messages.iter().map(message_param).collect();
        self.hub.metrics().plugin_calls.inc();
        let result = match self.instance().await {
            Ok(i) => i.on_messages(id, &batch).await,
            Err(e) => Err(e),
        };
        drop(batch);
        messages.clear();
        out.end_events(count, bytes);
        self.outcome(id, out, result, count, "on-messages").await;
    }

    /// Several messages of one connection (`bytes` in all) in one `packed-batch.on-packed` call
    /// (drains `messages`): copied into one buffer, which is copied once into the guest; the
    /// replies come back in one buffer, shared by their frames (not copied again).
    async fn message_packed(&mut self, id: u64, messages: &mut Vec<Message>, bytes: usize, out: &Outbound) {
        let count = messages.len();
        let mut data = Vec::with_capacity(bytes);
        let mut ends = Vec::with_capacity(count);
        for message in messages.iter() {
            data.extend_from_slice(message.payload());
            let text = if matches!(message, Message::Text(_)) { TEXT_BIT } else { 0 };
            ends.push(data.len() as u32 | text);
        }
        messages.clear();
        self.hub.metrics().plugin_calls.inc();
        let result = match self.instance().await {
            Ok(i) => i.on_packed(id, PackedParam { data: &data, ends: &ends }).await,
            Err(e) => Err(e),
        };
        drop(data);
        out.end_events(count, bytes);
        match result {
            Ok(packed) => self.apply_packed(id, out, packed, count),
            Err(e) => {
                self.failed("on-packed", &e);
                self.detach(id);
            }
        }
    }

    /// Carries out what a message call returned for `count` messages, or recovers from its failure.
    async fn outcome(
        &mut self,
        id: u64,
        out: &Outbound,
        result: Result<Vec<Action>, CallError>,
        count: usize,
        call: &str,
    ) {
        match result {
            Ok(actions) => self.apply_for(Some((id, out)), actions, count),
            Err(e) => {
                self.failed(call, &e);
                self.detach(id);
            }
        }
    }

    /// An admitted connection ended: `on-close`, exactly once (not preceded by a resume: an
    /// instance rebuilt since it last spoke hears only of its end).
    async fn connection_closed(&mut self, id: u64, code: u16, reason: &str) {
        self.counted(1);
        self.hub.leave(id);
        self.detached.remove(&id);
        self.attached.remove(&id);
        self.hub.metrics().plugin_calls.inc();
        // Its attachment is kept for its on-close (which may read it), and dropped after.
        let result = match self.instance().await {
            Ok(i) => i.on_close(id, code, reason).await,
            Err(e) => Err(e),
        };
        self.platform.attachments.lock().expect("attachments lock").remove(&id);
        match result {
            Ok(actions) => self.apply(None, actions),
            Err(e) => {
                self.failed("on-close", &e);
            }
        }
        self.batch.flush();
    }

    /// Drops an idle instance, keeping its state as the checkpoint the next event restores: the
    /// memory of a route nobody talks to is its snapshot. Only for a plugin that hands its state
    /// over (else its state would be lost).
    async fn hibernate(&mut self) {
        let Some(instance) = self.instance.as_mut() else { return };
        if !instance.has_snapshot() || !instance.has_restore() {
            tracing::warn!(plugin = &*self.plugin.name, route = %self.settings.path, "hibernate_after is set, but the plugin exports no state to keep: it stays awake");
            self.settings.hibernate_after = Duration::ZERO;
            return;
        }
        match instance.snapshot().await {
            Ok(bytes) => {
                tracing::info!(plugin = &*self.plugin.name, route = %self.settings.path, bytes = bytes.len(), "hibernating: no event for {:?}", self.settings.hibernate_after);
                self.checkpoint = Some(bytes);
                self.events_since_checkpoint = 0;
                self.instance = None;
                self.hibernated = true;
                self.hub.metrics().plugin_hibernations.inc();
            }
            Err(e) => self.failed("state.snapshot (hibernation)", &e),
        }
    }

    /// Fires every timer due by now, earliest first, each as an `on-timer` call whose actions
    /// have no sender.
    async fn fire_due_timers(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(name) = self.platform.take_due(now) {
            let has_timers = match self.instance().await {
                Ok(i) => i.has_timers(),
                Err(e) => {
                    tracing::warn!(plugin = &*self.plugin.name, route = %self.settings.path, timer = name, "timer not fired: {e}");
                    continue;
                }
            };
            if !has_timers {
                // A version without on-timer (a reload to it, say): its timers have nowhere to go.
                tracing::warn!(plugin = &*self.plugin.name, route = %self.settings.path, timer = name, "timer dropped: this version of the plugin exports no timer-handler");
                self.platform.timers.lock().expect("timers lock").remove(&name);
                continue;
            }
            self.counted(1);
            self.hub.metrics().plugin_calls.inc();
            let result = match self.instance().await {
                Ok(i) => i.on_timer(&name).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(actions) => self.apply_senderless(&format!("on-timer {name:?}"), actions),
                Err(e) => self.failed("on-timer", &e),
            }
        }
        self.batch.flush();
    }

    /// Carries out what an event without a sender returned (a timer, presence): the actions that
    /// need a sender (reply, close, subscribe, unsubscribe, send to sender) are refused and logged.
    fn apply_senderless(&mut self, what: &str, actions: Vec<Action>) {
        let (allowed, refused): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| match a {
            Action::Broadcast(_) => true,
            Action::Send(o) => !matches!(o.to, Target::Sender),
            _ => false,
        });
        if !refused.is_empty() {
            self.violation(None, &format!("{what} returned {} actions for a sender (reply, close, subscribe, unsubscribe, send to sender): it has none", refused.len()));
        }
        self.apply(None, allowed);
    }

    /// Hands presence events to the plugin (when it exports `presence-handler`).
    async fn deliver_presence(&mut self, events: &[crate::topics::presence::PresenceEvent]) {
        match self.instance().await {
            Ok(i) if i.has_presence() => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(plugin = &*self.plugin.name, route = %self.settings.path, "presence events not delivered: {e}");
                return;
            }
        }
        self.counted(1);
        self.hub.metrics().plugin_calls.inc();
        let result = match self.instance().await {
            Ok(i) => i.on_presence(events).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(actions) => self.apply_senderless("on-presence", actions),
            Err(e) => self.failed("on-presence", &e),
        }
        self.batch.flush();
    }

    /// Closes the connection whose event made the plugin fail, and forgets it.
    fn detach(&mut self, id: u64) {
        let reason = self.client_reason(&self.last_failure);
        self.detach_with(id, CloseFrame { code: CloseCode::INTERNAL_ERROR, reason });
    }

    /// What a client is told of a plugin failure: "plugin error", and on a `dev` route what failed,
    /// the plugin's own words first (a close reason is cut at 123 bytes by the encoder).
    fn client_reason(&self, what: &str) -> String {
        if !self.settings.dev || what.is_empty() {
            return "plugin error".into();
        }
        match what.split_once(super::instance::STDERR_MARK) {
            Some((error, said)) => format!("plugin error: {} ({error})", super::instance::telling_line(said)),
            None => format!("plugin error: {what}"),
        }
    }

    /// Closes a connection with `frame` and forgets it: its later events are dropped.
    fn detach_with(&mut self, id: u64, frame: CloseFrame) {
        self.hub.close(id, frame);
        self.hub.leave(id);
        self.detached.insert(id);
    }

    /// A call failed: logs it, counts it against the circuit breaker and drops the instance (the
    /// store is poisoned). The next event rebuilds it from the last checkpoint, and every
    /// connection is re-attached before its own next message.
    fn failed(&mut self, call: &str, error: &CallError) {
        self.hub.metrics().plugin_failed(match error {
            CallError::Deadline => "deadline",
            CallError::OutOfMemory => "memory",
            CallError::Trap(_) => "trap",
            CallError::Failed(e) if e.starts_with(HOST_PANIC) => "panic",
            CallError::Failed(_) => "failed",
        });
        self.last_failure = format!("{call} {error}");
        self.instance = None;
        self.generation += 1;
        tracing::error!(plugin = &*self.plugin.name, route = %self.settings.path, call, "plugin {error}; rebuilding the instance");
        if let Some(open) = self.health.failed(tokio::time::Instant::now()) {
            tracing::error!(
                plugin = &*self.plugin.name,
                route = %self.settings.path,
                instance = self.index,
                "plugin keeps failing: circuit breaker open for {open:?} (new connections get 503; open ones are still served)"
            );
        }
    }

    /// The host's own code panicked during a call ([`supervised`]): a failure like a trap, but a
    /// bug of ours, so it is logged as one.
    fn panicked(&mut self, call: &str, panic: &str) {
        tracing::error!(plugin = &*self.plugin.name, route = %self.settings.path, call, "host panic during a plugin call (a wsplug bug, please report it): {panic}");
        self.failed(call, &CallError::Failed(format!("{HOST_PANIC}{panic}")));
    }

    /// Re-attaches a connection (`on-open`, `resumed: true`) if the instance was rebuilt since it
    /// was last attached.
    async fn resume(&mut self, id: u64, out: &Outbound) {
        if self.attached.get(&id) == Some(&self.generation) || self.detached.contains(&id) {
            return;
        }
        let Some(info) = self.hub.info(id) else { return };
        // The new instance decides the connection's topics again (its state may differ).
        self.hub.clear_topics(id);
        self.hub.metrics().plugin_calls.inc();
        let result = match self.instance().await {
            Ok(i) => on_open(i, &info, true).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Admission::Accept(acceptance)) => {
                self.attached.insert(id, self.generation);
                self.apply(Some((id, out)), acceptance.actions);
            }
            Ok(Admission::Reject(_)) => {
                let frame =
                    CloseFrame { code: CloseCode::POLICY_VIOLATION, reason: "not resumed by the plugin".into() };
                self.detach_with(id, frame);
            }
            Err(e) => {
                self.failed("on-open (resume)", &e);
                self.detach(id);
            }
        }
    }

    /// Re-attaches every live connection pinned to this instance now (hot reload: the new version
    /// hears of all of them before its next event).
    async fn reattach_all(&mut self) {
        for (info, out) in self.hub.members_where(|id| self.owns(id)) {
            self.resume(info.id, &out).await;
            // Its session is not the caller: write its replies with the batch.
            let _ = self.batch.note(&out, Ok(true));
        }
    }

    /// Counts handled events towards the next checkpoint of a plugin that has state to snapshot:
    /// starts the checkpoint timer on its first event, and asks for a checkpoint (by a task of
    /// its own, not the caller) when the count makes one due.
    fn counted(&mut self, events: u64) {
        self.events_since_checkpoint += events;
        self.last_event = tokio::time::Instant::now();
        if !self.settings.hibernate_after.is_zero() && !self.hibernation_task {
            self.hibernation_task = true;
            tokio::spawn(hibernation_task(self.this.clone()));
        }
        if !self.instance.as_ref().is_some_and(|i| i.has_snapshot()) {
            return;
        }
        let every = self.settings.checkpoints;
        if !every.every.is_zero() && !self.checkpoint_timer {
            self.checkpoint_timer = true;
            tokio::spawn(checkpoint_timer(self.this.clone(), every.every));
        }
        if every.every_events > 0 && self.events_since_checkpoint >= every.every_events && !self.checkpoint_due {
            self.checkpoint_due = true;
            let slot = self.this.clone();
            tokio::spawn(async move {
                let Some(slot) = slot.upgrade() else { return };
                let mut slot = slot.lock().await;
                slot.checkpoint_due = false;
                slot.take_checkpoint().await;
            });
        }
    }

    /// Snapshots the plugin's state as the checkpoint to recover from, if it had events since the
    /// last one. A failing snapshot is a failed instance.
    async fn take_checkpoint(&mut self) {
        let Some(instance) = self.instance.as_mut().filter(|i| i.has_snapshot()) else { return };
        if self.events_since_checkpoint == 0 {
            return;
        }
        match instance.snapshot().await {
            Ok(bytes) => {
                self.checkpoint = Some(bytes);
                self.events_since_checkpoint = 0;
            }
            Err(e) => {
                self.failed("state.snapshot (checkpoint)", &e);
            }
        }
    }

    /// Hot reload, first half: builds the new version and hands it the old version's state,
    /// changing nothing here. On any failure the old version stays in service, untouched.
    async fn prepare(
        &mut self,
        plugin: &LoadedPlugin,
        settings: &RouteSettings,
        kv: Option<Arc<Store>>,
    ) -> Result<Prepared, String> {
        let mut next =
            PluginInstance::new(plugin, &settings.sandbox).await.map_err(|e| format!("instantiation {e}"))?;
        next.link_platform(Shared { kv: kv.clone(), ..self.platform.clone() }, settings.grants.max_timers);
        let mut checkpoint = self.checkpoint.clone();
        if next.has_restore() {
            let snapshot = match self.instance.as_mut() {
                Some(old) if old.has_snapshot() => match old.snapshot().await {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        // The old version's state since its last checkpoint is lost, not the new
                        // version's chance.
                        tracing::warn!(
                            plugin = &*plugin.name,
                            "snapshot of the running version {e}: the new version starts from the last checkpoint, if any"
                        );
                        self.checkpoint.clone()
                    }
                },
                // No instance since a failure: the last checkpoint is its state.
                None => self.checkpoint.clone(),
                _ => None,
            };
            if let Some(bytes) = snapshot {
                match next.restore(bytes.clone()).await {
                    // The new version accepts this state: it is its checkpoint until the next.
                    Ok(Ok(())) => checkpoint = Some(bytes),
                    Ok(Err(refusal)) => return Err(format!("restore refused the snapshot: {refusal}")),
                    Err(e) => return Err(format!("restore {e}")),
                }
            }
        }
        Ok(Prepared { instance: next, checkpoint, kv })
    }

    /// Hot reload, second half: puts a prepared version in service and re-attaches the live
    /// connections.
    async fn commit(&mut self, prepared: Prepared, plugin: LoadedPlugin, settings: RouteSettings) {
        self.plugin = plugin;
        self.settings = settings;
        self.platform.kv = prepared.kv;
        self.instance = Some(prepared.instance);
        self.hibernated = false;
        self.checkpoint = prepared.checkpoint;
        self.generation += 1;
        if self.settings.grants.attachments {
            // Attachments granted by this reload: the connections already open may attach too.
            let mut table = self.platform.attachments.lock().expect("attachments lock");
            for id in self.attached.keys() {
                table.entry(*id).or_default();
            }
        }
        self.reattach_all().await;
        self.batch.flush();
    }

    /// The subprotocol to answer with: the plugin's (which must have been offered), else the
    /// route's configured preference.
    fn subprotocol(&self, chosen: Option<String>, offered: &[String]) -> Result<Option<String>, String> {
        match chosen {
            Some(p) if offered.contains(&p) && is_token(&p) => Ok(Some(p)),
            Some(p) => Err(format!("accepted with subprotocol {p:?}, which the client did not offer")),
            None => Ok(self.settings.subprotocols.iter().find(|p| offered.contains(p)).cloned()),
        }
    }

    fn violation(&self, sender: Sender, what: &str) {
        let connection = sender.map(|(id, _)| id);
        tracing::warn!(plugin = &*self.plugin.name, route = %self.settings.path, connection = ?connection, "plugin contract violation: {what}");
        if let Some(id) = connection {
            self.hub.close(id, CloseFrame { code: CloseCode::INTERNAL_ERROR, reason: self.client_reason(what) });
        }
    }

    /// Validates and carries out what one call returned.
    fn apply(&mut self, sender: Sender, actions: Vec<Action>) {
        self.apply_for(sender, actions, 1)
    }

    /// Validates and carries out what one call returned for `count` events (the limits on
    /// returned actions are per event).
    fn apply_for(&mut self, sender: Sender, actions: Vec<Action>, count: usize) {
        let limits = &self.settings.sandbox;
        if let Err(what) = check_totals(&actions, limits, count) {
            return self.violation(sender, &what);
        }
        let max_topics = limits.max_topics_per_connection;
        // A run of valid replies (a batch's echoes) goes onto the sender's queue under one lock;
        // anything else (another action, a violation's close) first flushes the run, so the
        // list's order holds on every queue.
        let mut replies = Vec::new();
        for action in actions {
            let verdict = check_action(&action, self.settings.max_message_size);
            let action = match (action, sender, &verdict) {
                (Action::Reply(m), Some(_), Ok(())) => {
                    replies.push(frame_of(m));
                    continue;
                }
                (action, _, _) => action,
            };
            if let Some((_, out)) = sender {
                queue_replies(out, &mut replies);
            }
            match verdict {
                Ok(()) => self.carry_out(sender, action, max_topics),
                Err(what) => self.violation(sender, &what),
            }
        }
        if let Some((_, out)) = sender {
            queue_replies(out, &mut replies);
        }
        self.recovering_subscriptions(max_topics);
    }

    /// Validates and carries out what a packed call returned for `count` messages: the same as
    /// the list it stands for (replies and actions merged in order), each reply a slice of the
    /// one buffer the replies came in.
    fn apply_packed(&mut self, id: u64, out: &Outbound, packed: PackedActions, count: usize) {
        let sender = Some((id, out));
        let limits = &self.settings.sandbox;
        if let Err(what) = check_packed(&packed, limits, count) {
            return self.violation(sender, &what);
        }
        let max_topics = limits.max_topics_per_connection;
        let max_message = self.settings.max_message_size;
        let PackedActions { replies, actions } = packed;
        let data = Bytes::from(replies.data);
        let mut actions = actions.into_iter().peekable();
        // As in `apply_for`: a run of valid replies is queued under one lock, flushed before
        // anything else.
        let mut run = Vec::with_capacity(replies.ends.len());
        let mut start = 0;
        for i in 0..=replies.ends.len() {
            while let Some((_, action)) = actions.next_if(|(at, _)| *at as usize == i) {
                queue_replies(out, &mut run);
                match check_action(&action, max_message) {
                    Ok(()) => self.carry_out(sender, action, max_topics),
                    Err(what) => self.violation(sender, &what),
                }
            }
            let Some(&end) = replies.ends.get(i) else { break };
            let (text, end) = (end & TEXT_BIT != 0, (end & !TEXT_BIT) as usize);
            let payload = data.slice(start..end);
            start = end;
            let verdict = check_message_len(payload.len(), max_message).and_then(|()| {
                let bad_text = text && std::str::from_utf8(&payload).is_err();
                if bad_text { Err(format!("packed reply {i} is text but not valid UTF-8")) } else { Ok(()) }
            });
            match verdict {
                Ok(()) => run.push((if text { OpCode::Text } else { OpCode::Binary }, payload)),
                Err(what) => {
                    queue_replies(out, &mut run);
                    self.violation(sender, &what);
                }
            }
        }
        queue_replies(out, &mut run);
        self.recovering_subscriptions(max_topics);
    }

    /// Carries out one valid action (`check_action` passed).
    fn carry_out(&mut self, sender: Sender, action: Action, max_topics: usize) {
        let id = sender.map(|(id, _)| id);
        match action {
            Action::Reply(m) => self.send(sender, Target::Sender, m),
            Action::Broadcast(m) => self.send(sender, Target::Everyone, m),
            Action::Send(o) => self.send(sender, o.to, o.message),
            Action::Subscribe(topic) => {
                let Some(id) = id else { return };
                if let Err(e) = self.hub.subscribe(id, &topic, max_topics) {
                    tracing::warn!(plugin = &*self.plugin.name, id, "subscribe {topic:?} refused: {e}");
                }
            }
            Action::Unsubscribe(topic) => {
                if let Some(id) = id {
                    self.hub.unsubscribe(id, &topic);
                }
            }
            Action::Close(frame) => {
                let Some(id) = id else { return };
                let code = CloseCode(frame.code);
                let reason = crate::protocol::close::truncate_reason(&frame.reason).to_owned();
                self.hub.close(id, CloseFrame { code, reason });
            }
        }
    }

    /// Carries out the recovering subscriptions the call asked for (`topics.subscribe-from`),
    /// after its actions.
    fn recovering_subscriptions(&mut self, max_topics: usize) {
        let Some(instance) = self.instance.as_mut() else { return };
        for (conn, topic, since) in instance.take_subscriptions() {
            if let Err(e) = self.hub.subscribe_from(conn, &topic, max_topics, Some(since)) {
                tracing::warn!(plugin = &*self.plugin.name, conn, "subscribe-from {topic:?} refused: {e}");
            }
        }
    }

    fn send(&mut self, sender: Sender, to: Target, message: wit::MessageResult) {
        let (opcode, payload) = frame_of(message);
        let id = sender.map(|(id, _)| id);
        match to {
            // Straight onto the sender's own queue: no hub lookup. A full queue closes itself
            // with 1013 (its hard bound); a closing one takes nothing.
            Target::Sender => {
                if let Some((_, out)) = sender {
                    let _ = out.reply(opcode, payload);
                }
            }
            Target::Connection(target) => {
                if !self.hub.send(target, opcode, payload, id, &mut self.batch) {
                    // Not a violation of the sender's: the target may just have left.
                    tracing::debug!(
                        plugin = &*self.plugin.name,
                        target,
                        "send to a connection not on this route: dropped"
                    );
                }
            }
            Target::Everyone => self.hub.broadcast(&SharedMessage::new(opcode, payload), None, id, &mut self.batch),
            Target::Others => self.hub.broadcast(&SharedMessage::new(opcode, payload), id, id, &mut self.batch),
            Target::Topic(topic) => self.hub.publish(&topic, &SharedMessage::new(opcode, payload), id, &mut self.batch),
        }
    }
}

/// Queues a run of replies on the sender's queue under one lock, in order, and empties the run (a
/// full queue closes itself with 1013, as for one reply; a closing one takes nothing).
fn queue_replies(out: &Outbound, run: &mut Vec<(OpCode, Bytes)>) {
    if !run.is_empty() {
        let _ = out.replies(run.drain(..));
    }
}

/// A returned message as the opcode and payload of its frame (the payload taken over, not copied).
fn frame_of(message: wit::MessageResult) -> (OpCode, Bytes) {
    match message {
        wit::MessageResult::Text(s) => (OpCode::Text, Bytes::from(s.into_bytes())),
        wit::MessageResult::Binary(b) => (OpCode::Binary, Bytes::from(b)),
    }
}

/// Takes a slot's checkpoint every `every` (when it had events since the last one), until the
/// route is gone or a reload turns the timer off.
async fn checkpoint_timer(slot: Weak<Mutex<InstanceSlot>>, mut every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(slot) = slot.upgrade() else { return };
        let mut slot = slot.lock().await;
        slot.take_checkpoint().await;
        every = slot.settings.checkpoints.every;
        if every.is_zero() {
            slot.checkpoint_timer = false;
            return;
        }
    }
}

/// Hibernates a slot's instance once it has had no event for `hibernate_after`, until the slot is
/// gone or the setting is turned off.
async fn hibernation_task(slot: Weak<Mutex<InstanceSlot>>) {
    loop {
        let due = {
            let Some(slot) = slot.upgrade() else { return };
            let mut slot = slot.lock().await;
            let after = slot.settings.hibernate_after;
            if after.is_zero() {
                slot.hibernation_task = false;
                return;
            }
            let due = slot.last_event + after;
            if tokio::time::Instant::now() >= due {
                if slot.instance.is_some() {
                    slot.hibernate().await;
                }
                // Asleep (or nothing to hibernate): look again one period after the next event.
                tokio::time::Instant::now() + after
            } else {
                due
            }
        };
        tokio::time::sleep_until(due).await;
    }
}

/// Every `presence_interval`: takes the route's presence (reporting this node's to the others) and
/// hands what changed to each instance that handles presence events, until the route is gone.
async fn presence_task(hub: Weak<Hub>, slots: Vec<Weak<Mutex<InstanceSlot>>>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let events = hub.presence_tick();
        drop(hub);
        if events.is_empty() {
            continue;
        }
        for slot in &slots {
            let Some(slot) = slot.upgrade() else { return };
            slot.lock().await.deliver_presence(&events).await;
        }
    }
}

/// Fires a slot's timers when they are due, until the slot is gone: sleeps until the earliest
/// one (or until the timers change), then takes the slot like any event.
async fn timer_task(slot: Weak<Mutex<InstanceSlot>>, platform: Shared) {
    loop {
        if slot.strong_count() == 0 {
            return;
        }
        match platform.next_due() {
            None => platform.timers_changed.notified().await,
            Some(due) => {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = platform.timers_changed.notified() => continue,
                }
            }
        }
        let Some(slot) = slot.upgrade() else { return };
        let mut slot = slot.lock().await;
        slot.fire_due_timers().await;
    }
}

/// Calls `on-open` with the connection as the server keeps it (lent, not copied, to the call).
async fn on_open(instance: &mut PluginInstance, info: &ConnInfo, resumed: bool) -> Result<Admission, CallError> {
    let headers: Vec<(&str, &str)> = info.headers().collect();
    let protocols: Vec<&str> = info.protocols.iter().map(String::as_str).collect();
    let remote_addr = info.remote_addr.to_string();
    let conn = wit::Connection {
        id: info.id,
        path: &info.target,
        headers: &headers,
        remote_addr: &remote_addr,
        protocols: &protocols,
        resumed,
    };
    instance.on_open(conn).await
}

/// A message as lent to a plugin call.
fn message_param(message: &Message) -> wit::MessageParam<'_> {
    match message {
        Message::Text(b) => {
            wit::MessageParam::Text(std::str::from_utf8(b).expect("the decoder delivers only valid UTF-8 text"))
        }
        Message::Binary(b) => wit::MessageParam::Binary(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::QueueLimits;
    use crate::server::hub::HeaderBlock;

    /// A text message that makes the host panic while handling it (test builds only).
    const PANIC_TEXT: &[u8] = b"wsplug-test: host panic";

    pub(super) fn inject_panic(message: &Message) {
        if matches!(message, Message::Text(b) if &b[..] == PANIC_TEXT) {
            panic!("injected host panic");
        }
    }

    #[tokio::test]
    async fn a_host_panic_during_a_call_closes_only_its_connection_and_the_instance_is_rebuilt() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/echo.wasm");
        let plugin = crate::plugin::engine::PluginEngine::global().load(&path, None).expect("echo plugin built");
        let settings = RouteSettings {
            path: "/echo".into(),
            instances: 1,
            sandbox: SandboxLimits::default(),
            max_message_size: 1 << 20,
            subprotocols: Vec::new(),
            checkpoints: Checkpoints::default(),
            dev: false,
            grants: Grants::default(),
            kv: None,
            hibernate_after: Duration::ZERO,
            topics: Default::default(),
        };
        let route = PluginRoute::start(plugin, settings).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut clients = Vec::new();
        let mut open = async |id: u64| {
            clients.push(tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap());
            let (socket, _) = listener.accept().await.unwrap();
            let limits =
                QueueLimits { max_frames: 64, max_bytes: 1 << 20, max_message_size: 1 << 20, max_in_flight: 16 };
            let out = Outbound::new(Arc::new(crate::server::socket::Writer::Plain(socket.into_split().1)), limits);
            let info = Arc::new(ConnInfo {
                id,
                target: "/echo".into(),
                headers: HeaderBlock::default(),
                remote_addr: ([127, 0, 0, 1], 1).into(),
                protocols: Vec::new(),
            });
            let hub = route.hub.clone();
            let mut accept = |_: Option<&str>| {
                hub.join(info.clone(), out.clone());
                Some(out.clone())
            };
            let admit = route.instance_for(id).lock().await.open(info.clone(), &mut accept).await;
            assert_eq!(admit, Admit::Accepted);
            out
        };
        let (first, second) = (open(1).await, open(2).await);
        let slot = route.instances[0].clone();
        let text = |t: &'static [u8]| vec![Message::Text(Bytes::from_static(t))];
        // The panic is caught: only its connection is closed, and the instance is dropped.
        slot.lock().await.messages(1, &mut text(PANIC_TEXT), &first).await;
        assert!(first.is_closing(), "the connection whose event it was is closed (1011)");
        assert!(slot.lock().await.instance.is_none(), "the instance (maybe mid-call) is dropped");
        // The other connection is served by a rebuilt instance.
        slot.lock().await.messages(2, &mut text(b"still served"), &second).await;
        assert!(!second.is_closing());
        let slot = slot.lock().await;
        assert!(slot.instance.is_some(), "rebuilt for the next event");
        assert_eq!(slot.generation, 1);
        assert_eq!(slot.attached.get(&2), Some(&1), "re-attached to the new instance");
    }
}
