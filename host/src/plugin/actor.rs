//! The actor that owns a plugin instance: it takes events from its route's connections off a
//! bounded queue, calls the plugin one event at a time, validates what the plugin returns and
//! carries it out through the route's [`Hub`].
//!
//! Guarantees:
//! - A connection's events reach the plugin in order (one FIFO queue per instance; a connection is
//!   pinned to one instance by its id).
//! - A slow plugin applies backpressure: the queue is bounded, and a connection whose event does
//!   not fit waits (and stops reading its socket).
//! - `on-close` is called exactly once for every admitted connection.
//! - A failed call (trap, deadline, memory cap, runtime refusal) closes the connection whose event
//!   caused it with 1011, rebuilds the instance from the same compiled plugin and re-attaches the
//!   other live connections with `on-open` (`resumed: true`). Nothing else notices.
//! - Nothing a plugin returns is trusted: counts, sizes, close codes, HTTP statuses, subprotocols
//!   and target ids are checked first; a violation is logged with the plugin's name.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::bindings::wsplug::plugin::types::{self as wit, Action, Admission, Target};
use super::engine::LoadedPlugin;
use super::instance::{CallError, PluginInstance};
use super::sandbox::SandboxLimits;
use crate::protocol::frame::{OpCode, encode_frame};
use crate::protocol::handshake::{accept_response, is_token};
use crate::protocol::{CloseCode, CloseFrame, Message};
use crate::server::hub::{ConnInfo, Hub};
use crate::server::{Batch, Outbound};

/// Events queued per instance before connections must wait.
const QUEUE: usize = 1024;
/// Longest topic name accepted.
const MAX_TOPIC: usize = 256;

/// An event for a plugin instance.
pub enum Command {
    /// A client asks to open; the actor answers on `reply` after queuing the 101 response and
    /// registering the connection (so the first actions follow the handshake on the wire).
    Open(OpenRequest),
    /// A connection's messages from one read, in order; their bytes count against its outbound
    /// side (`out`) until each is handled.
    Messages { id: u64, messages: Vec<Message>, out: Outbound },
    /// An admitted connection ended (sent exactly once).
    Closed { id: u64, code: u16, reason: String },
    /// The connection's session closes it: the close frame is queued after every reply to the
    /// events queued before it (`None`: a close frame without a code).
    Close { out: Outbound, frame: Option<CloseFrame> },
    /// Replace the running version with a checked new one (hot reload): events queued before
    /// this command were handled by the old version, events after it go to the new one.
    Swap { plugin: Box<LoadedPlugin>, settings: RouteSettings, done: oneshot::Sender<Result<(), String>> },
}

pub struct OpenRequest {
    pub info: Arc<ConnInfo>,
    pub key: String,
    pub out: Outbound,
    pub reply: oneshot::Sender<Admit>,
}

/// The outcome of an open request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Accepted,
    Rejected { status: u16, body: String },
}

/// A route served by a plugin: its instances' queues and its hub.
pub struct PluginRoute {
    pub hub: Arc<Hub>,
    instances: Vec<mpsc::Sender<Command>>,
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

/// What an actor needs to know of its route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    pub path: String,
    pub instances: usize,
    pub sandbox: SandboxLimits,
    /// Largest message a plugin may send (the route's max_message_size).
    pub max_message_size: usize,
    /// Subprotocols named in the config, used when the plugin picks none.
    pub subprotocols: Vec<String>,
}

impl RouteSettings {
    pub fn new(route: &crate::config::RouteConfig, limits: &crate::config::Limits) -> Self {
        Self {
            path: route.path.clone(),
            instances: route.instances,
            sandbox: route.sandbox.clone(),
            max_message_size: limits.max_message_size,
            subprotocols: route.subprotocols.clone(),
        }
    }
}

impl PluginRoute {
    /// Instantiates the plugin `settings.instances` times (failing fast if it cannot start) and
    /// starts one actor thread per instance.
    pub fn start(plugin: LoadedPlugin, settings: RouteSettings) -> anyhow::Result<Self> {
        let hub = Arc::new(Hub::new(&settings.path));
        let count = settings.instances.max(1);
        let mut instances = Vec::with_capacity(count);
        for index in 0..count {
            let instance = PluginInstance::new(&plugin, &settings.sandbox)
                .map_err(|e| anyhow::anyhow!("plugin {}: instantiation {e}", plugin.path.display()))?;
            let (tx, rx) = mpsc::channel(QUEUE);
            let actor = Actor {
                index,
                count,
                plugin: plugin.clone(),
                settings: settings.clone(),
                hub: hub.clone(),
                instance: Some(instance),
                batch: Batch::default(),
            };
            std::thread::Builder::new().name(format!("plugin-{}-{index}", plugin.name)).spawn(move || actor.run(rx))?;
            instances.push(tx);
        }
        Ok(Self { hub, instances, current: std::sync::Mutex::new((plugin, settings)) })
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

    /// Swaps a checked new version (and optionally new settings) into every instance, in queue
    /// order. Fails, leaving the old version serving, if an instance cannot instantiate or restore
    /// the new one.
    pub async fn swap(&self, plugin: LoadedPlugin, settings: Option<RouteSettings>) -> Result<(), String> {
        let settings = settings.unwrap_or_else(|| self.settings());
        let mut waits = Vec::new();
        for tx in &self.instances {
            let (done, wait) = oneshot::channel();
            let command = Command::Swap { plugin: Box::new(plugin.clone()), settings: settings.clone(), done };
            tx.send(command).await.map_err(|_| "the plugin instance has stopped".to_owned())?;
            waits.push(wait);
        }
        let mut errors = Vec::new();
        for (i, wait) in waits.into_iter().enumerate() {
            match wait.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("instance {i}: {e}")),
                Err(_) => errors.push(format!("instance {i}: stopped")),
            }
        }
        if errors.len() < self.instances.len() {
            *self.current.lock().expect("current plugin lock") = (plugin, settings);
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// The queue of the instance a connection is pinned to.
    pub fn instance_for(&self, id: u64) -> &mpsc::Sender<Command> {
        &self.instances[(id % self.instances.len() as u64) as usize]
    }
}

struct Actor {
    index: usize,
    count: usize,
    plugin: LoadedPlugin,
    settings: RouteSettings,
    hub: Arc<Hub>,
    /// `None` after a failed rebuild; the next event tries again.
    instance: Option<PluginInstance>,
    /// Queues written to during the current batch of events, flushed when the instance's queue
    /// is empty (or the batch is large), so that replies to pipelined events leave together.
    batch: Batch,
}

/// Queues touched before a batch is flushed even though more events are waiting.
const BATCH_FLUSH: usize = 64;

/// Which connection an action list belongs to.
type Sender = Option<u64>;

impl Actor {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.blocking_recv() {
            match command {
                Command::Open(request) => self.open(request),
                Command::Messages { id, messages, out } => {
                    for message in messages {
                        self.message(id, message, &out);
                    }
                }
                Command::Closed { id, code, reason } => self.closed(id, code, &reason),
                Command::Close { out, frame } => {
                    self.batch.flush();
                    out.close(frame, false);
                    let _ = out.flush();
                }
                Command::Swap { plugin, settings, done } => {
                    let _ = done.send(self.swap(*plugin, settings));
                }
            }
            if rx.is_empty() || self.batch.len() >= BATCH_FLUSH {
                self.batch.flush();
            }
        }
        tracing::debug!(plugin = &*self.plugin.name, index = self.index, "plugin instance stopped");
    }

    fn owns(&self, id: u64) -> bool {
        (id % self.count as u64) as usize == self.index
    }

    fn instance(&mut self) -> Result<&mut PluginInstance, CallError> {
        if self.instance.is_none() {
            self.instance = Some(PluginInstance::new(&self.plugin, &self.settings.sandbox)?);
        }
        Ok(self.instance.as_mut().expect("just set"))
    }

    fn open(&mut self, request: OpenRequest) {
        let OpenRequest { info, key, out, reply } = request;
        let conn = to_wit(&info, false);
        let result = self.instance().and_then(|i| i.on_open(&conn));
        match result {
            Ok(Admission::Accept(acceptance)) => {
                let subprotocol = match self.subprotocol(acceptance.subprotocol, &info.protocols) {
                    Ok(s) => s,
                    Err(msg) => {
                        self.violation(None, &msg);
                        let _ = reply.send(Admit::Rejected { status: 500, body: "plugin error\n".into() });
                        return;
                    }
                };
                let response = Bytes::from(accept_response(&key, subprotocol.as_deref()));
                if self.batch.note(&out, out.push_encoded(response)).is_err() {
                    return; // the client already left
                }
                let id = info.id;
                self.hub.join(info, out);
                let _ = reply.send(Admit::Accepted);
                self.apply(Some(id), acceptance.actions);
            }
            Ok(Admission::Reject(rejection)) => {
                let status = if (400..=599).contains(&rejection.status) {
                    rejection.status
                } else {
                    self.violation(None, &format!("reject with HTTP status {} (must be 400-599)", rejection.status));
                    500
                };
                let _ = reply.send(Admit::Rejected { status, body: rejection.body });
            }
            Err(e) => {
                self.failed("on-open", &e);
                let _ = reply.send(Admit::Rejected { status: 500, body: "plugin error\n".into() });
                self.recover();
            }
        }
    }

    fn message(&mut self, id: u64, message: Message, out: &Outbound) {
        let len = message.payload().len();
        if !self.hub.contains(id) {
            out.end_event(len);
            return; // detached (closing after a plugin failure): its messages no longer count
        }
        let message = match message {
            Message::Text(b) => wit::Message::Text(String::from_utf8_lossy(&b).into_owned()),
            Message::Binary(b) => wit::Message::Binary(b.to_vec()),
        };
        let result = self.instance().and_then(|i| i.on_message(id, &message));
        drop(message);
        // Its bytes are no longer held: the replies take their place in the connection's bound.
        out.end_event(len);
        match result {
            Ok(actions) => self.apply(Some(id), actions),
            Err(e) => {
                self.failed("on-message", &e);
                self.detach(id);
                self.recover();
            }
        }
    }

    fn closed(&mut self, id: u64, code: u16, reason: &str) {
        self.hub.leave(id);
        let result = self.instance().and_then(|i| i.on_close(id, code, reason));
        match result {
            Ok(actions) => self.apply(None, actions),
            Err(e) => {
                self.failed("on-close", &e);
                self.recover();
            }
        }
    }

    /// Closes the connection whose event made the plugin fail, and forgets it.
    fn detach(&self, id: u64) {
        self.hub.close(id, CloseFrame { code: CloseCode::INTERNAL_ERROR, reason: "plugin error".into() });
        self.hub.leave(id);
    }

    fn failed(&self, call: &str, error: &CallError) {
        tracing::error!(plugin = &*self.plugin.name, route = %self.settings.path, call, "plugin {error}; rebuilding the instance");
    }

    /// Rebuilds the instance and re-attaches every live connection pinned to it.
    fn recover(&mut self) {
        self.instance = None;
        self.reattach();
    }

    /// Re-attaches every live connection pinned to this instance with `on-open` (`resumed: true`),
    /// rebuilding the instance first if it has none (and again whenever a resume traps).
    fn reattach(&mut self) {
        let mut pending = self.hub.members_where(|id| self.owns(id)).into_iter();
        loop {
            if let Err(e) = self.instance() {
                tracing::error!(plugin = &*self.plugin.name, route = %self.settings.path, "cannot rebuild the plugin instance: {e}");
                let frame = CloseFrame { code: CloseCode::INTERNAL_ERROR, reason: "plugin unavailable".into() };
                self.hub.close_where(|id| self.owns(id), frame);
                return;
            }
            let Some(info) = pending.next() else { return };
            // The new instance decides the connection's topics again (its state may differ).
            self.hub.clear_topics(info.id);
            let conn = to_wit(&info, true);
            let result = self.instance().and_then(|i| i.on_open(&conn));
            match result {
                Ok(Admission::Accept(acceptance)) => self.apply(Some(info.id), acceptance.actions),
                Ok(Admission::Reject(_)) => {
                    let frame =
                        CloseFrame { code: CloseCode::POLICY_VIOLATION, reason: "not resumed by the plugin".into() };
                    self.hub.close(info.id, frame);
                    self.hub.leave(info.id);
                }
                Err(e) => {
                    self.failed("on-open (resume)", &e);
                    self.detach(info.id);
                    self.instance = None; // poisoned: rebuild before the next one
                }
            }
        }
    }

    /// Hot reload: builds the new version, hands the old version's state over, and re-attaches the
    /// live connections. On any failure the old version stays in service, untouched.
    fn swap(&mut self, plugin: LoadedPlugin, settings: RouteSettings) -> Result<(), String> {
        let mut next = PluginInstance::new(&plugin, &settings.sandbox).map_err(|e| format!("instantiation {e}"))?;
        if next.has_restore() {
            let snapshot = match self.instance.as_mut() {
                Some(old) if old.has_snapshot() => match old.snapshot() {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        // The old version's state is lost, not the new version's chance.
                        tracing::warn!(
                            plugin = &*plugin.name,
                            "snapshot of the running version {e}: the new version starts without its state"
                        );
                        None
                    }
                },
                _ => None,
            };
            if let Some(bytes) = snapshot {
                match next.restore(bytes) {
                    Ok(Ok(())) => {}
                    Ok(Err(refusal)) => return Err(format!("restore refused the snapshot: {refusal}")),
                    Err(e) => return Err(format!("restore {e}")),
                }
            }
        }
        self.plugin = plugin;
        self.settings = settings;
        self.instance = Some(next);
        self.reattach();
        Ok(())
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
        tracing::warn!(plugin = &*self.plugin.name, route = %self.settings.path, connection = ?sender, "plugin contract violation: {what}");
        if let Some(id) = sender {
            self.hub.close(id, CloseFrame { code: CloseCode::INTERNAL_ERROR, reason: "plugin error".into() });
        }
    }

    /// Validates and carries out what one call returned.
    fn apply(&mut self, sender: Sender, actions: Vec<Action>) {
        let limits = self.settings.sandbox.clone();
        if actions.len() > limits.max_actions {
            return self
                .violation(sender, &format!("returned {} actions (limit {})", actions.len(), limits.max_actions));
        }
        let bytes: usize = actions.iter().map(action_bytes).sum();
        if bytes > limits.max_action_bytes {
            return self
                .violation(sender, &format!("returned {bytes} message bytes (limit {})", limits.max_action_bytes));
        }
        for action in actions {
            match action {
                Action::Reply(m) => self.send(sender, Target::Sender, m),
                Action::Broadcast(m) => self.send(sender, Target::Everyone, m),
                Action::Send(o) => self.send(sender, o.to, o.message),
                Action::Subscribe(topic) => {
                    let Some(id) = sender else { continue };
                    if topic.len() > MAX_TOPIC {
                        self.violation(sender, &format!("topic name of {} bytes (limit {MAX_TOPIC})", topic.len()));
                        continue;
                    }
                    if let Err(e) = self.hub.subscribe(id, &topic, limits.max_topics_per_connection) {
                        tracing::warn!(plugin = &*self.plugin.name, id, "subscribe {topic:?} refused: {e}");
                    }
                }
                Action::Unsubscribe(topic) => {
                    if let Some(id) = sender {
                        self.hub.unsubscribe(id, &topic);
                    }
                }
                Action::Close(frame) => {
                    let Some(id) = sender else { continue };
                    let code = CloseCode(frame.code);
                    if !code.is_allowed_on_wire() {
                        self.violation(sender, &format!("close with code {} (not allowed on the wire)", frame.code));
                        continue;
                    }
                    let reason = crate::protocol::close::truncate_reason(&frame.reason).to_owned();
                    self.hub.close(id, CloseFrame { code, reason });
                }
            }
        }
    }

    fn send(&mut self, sender: Sender, to: Target, message: wit::Message) {
        let (opcode, payload) = match message {
            wit::Message::Text(s) => (OpCode::Text, Bytes::from(s.into_bytes())),
            wit::Message::Binary(b) => (OpCode::Binary, Bytes::from(b)),
        };
        if payload.len() > self.settings.max_message_size {
            let max = self.settings.max_message_size;
            return self.violation(sender, &format!("message of {} bytes (limit {max})", payload.len()));
        }
        match to {
            Target::Sender => {
                if let Some(id) = sender {
                    self.hub.send(id, opcode, payload, sender, &mut self.batch);
                }
            }
            Target::Connection(id) => {
                if !self.hub.send(id, opcode, payload, sender, &mut self.batch) {
                    // Not a violation of the sender's: the target may just have left.
                    tracing::debug!(
                        plugin = &*self.plugin.name,
                        target = id,
                        "send to a connection not on this route: dropped"
                    );
                }
            }
            Target::Everyone => self.hub.broadcast(&encode_frame(opcode, &payload), None, sender, &mut self.batch),
            Target::Others => self.hub.broadcast(&encode_frame(opcode, &payload), sender, sender, &mut self.batch),
            Target::Topic(topic) => self.hub.publish(&topic, &encode_frame(opcode, &payload), sender, &mut self.batch),
        }
    }
}

fn action_bytes(action: &Action) -> usize {
    let size = |m: &wit::Message| match m {
        wit::Message::Text(s) => s.len(),
        wit::Message::Binary(b) => b.len(),
    };
    match action {
        Action::Reply(m) | Action::Broadcast(m) => size(m),
        Action::Send(o) => size(&o.message),
        Action::Subscribe(t) | Action::Unsubscribe(t) => t.len(),
        Action::Close(f) => f.reason.len(),
    }
}

fn to_wit(info: &ConnInfo, resumed: bool) -> wit::Connection {
    wit::Connection {
        id: info.id,
        path: info.target.clone(),
        headers: info.headers.clone(),
        remote_addr: info.remote_addr.clone(),
        protocols: info.protocols.clone(),
        resumed,
    }
}
