//! One live plugin instance: a `Store` and the instantiated component, with every call bounded by
//! the CPU deadline and the memory cap, and every failure classified for the log.
//!
//! A failed call poisons the store (wasmtime refuses to re-enter a component after a trap), so the
//! owner replaces the instance with [`PluginInstance::new`] from the same compiled plugin.

use std::fmt;

use wasmtime::component::TypedFunc;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::Plugin;
use super::bindings::batch::exports::wsplug::plugin0_1_0::batch::GuestIndices as BatchIndices;
use super::bindings::packed::exports::wsplug::plugin0_2_0::packed_batch::GuestIndices as PackedIndices;
pub use super::bindings::packed::exports::wsplug::plugin0_2_0::packed_batch::{
    PackedActions, PackedParam, PackedResult,
};
use super::bindings::v1::types::{Action, Admission, Connection, MessageParam};
use super::engine::{EPOCH_TICK, LoadedPlugin, PluginEngine};
use super::sandbox::{PluginState, SandboxLimits};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The call ran past its CPU deadline.
    Deadline,
    /// The guest wanted more memory than its cap.
    OutOfMemory,
    /// The guest trapped (a panic, `unreachable`, a bad memory access, ...).
    Trap(String),
    /// Anything else the runtime refused (e.g. too much data copied between host and guest).
    Failed(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deadline => f.write_str("exceeded its CPU deadline"),
            Self::OutOfMemory => f.write_str("exceeded its memory cap"),
            Self::Trap(t) => write!(f, "trapped: {t}"),
            Self::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// `state.restore`: snapshot in, the plugin's verdict out.
type RestoreFunc = TypedFunc<(Vec<u8>,), (Result<(), String>,)>;

/// `batch.on-messages`: a connection's messages in (lent), their actions out.
type BatchFunc = super::bindings::batch::exports::wsplug::plugin0_1_0::batch::Guest;

/// `packed-batch.on-packed`: a connection's messages in one buffer (lent), replies out in one.
type PackedFunc = super::bindings::packed::exports::wsplug::plugin0_2_0::packed_batch::Guest;

/// `timer-handler.on-timer`: a timer's name in, actions out.
type TimerFunc = TypedFunc<(String,), (Vec<Action>,)>;

/// `presence-handler.on-presence`: presence events in, actions out.
type PresenceFunc = TypedFunc<(Vec<PresenceEvent>,), (Vec<Action>,)>;

/// `presence-handler.presence-event`, lowered into the guest (the host's bindings have no type for
/// it: `presence-handler` is an optional export, looked up by name).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
struct PresenceEvent {
    topic: String,
    count: u64,
    joined: Vec<super::bindings::v2::topics::Member>,
    left: Vec<super::bindings::v2::topics::Member>,
    omitted: u64,
}

/// An instantiated plugin and its store.
pub struct PluginInstance {
    store: Store<PluginState>,
    bindings: Plugin,
    deadline_ticks: u64,
    /// The optional `state` interface's functions, when the component exports them.
    snapshot: Option<TypedFunc<(), (Vec<u8>,)>>,
    restore: Option<RestoreFunc>,
    on_messages: Option<BatchFunc>,
    on_packed: Option<PackedFunc>,
    on_timer: Option<TimerFunc>,
    on_presence: Option<PresenceFunc>,
}

impl PluginInstance {
    /// Instantiates `plugin` in a fresh store with `limits`.
    ///
    /// Instantiation (memory set-up, data segments) and the guest's start-up code (a JavaScript or
    /// Python runtime initialising itself) run on a blocking-pool thread, not on an async worker:
    /// they can take milliseconds and, unlike calls, are not the price of any one connection's event.
    pub async fn new(plugin: &LoadedPlugin, limits: &SandboxLimits) -> Result<Self, CallError> {
        let (plugin, limits) = (plugin.clone(), limits.clone());
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(Self::instantiate(&plugin, &limits)))
            .await
            .map_err(|e| CallError::Failed(format!("instantiation task: {e}")))?
    }

    async fn instantiate(plugin: &LoadedPlugin, limits: &SandboxLimits) -> Result<Self, CallError> {
        let engine = &PluginEngine::global().engine;
        let mut store = Store::new(engine, PluginState::new(plugin.name.clone(), limits));
        store.limiter(|s| &mut s.limiter);
        let deadline_ticks = (limits.cpu_deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1;
        // Every tick, the call yields to its executor (other connections on that worker go on);
        // once the call has used its deadline's ticks, it traps.
        store.epoch_deadline_callback(|mut store| {
            let ticks = &mut store.data_mut().ticks_left;
            if *ticks == 0 {
                return Err(wasmtime::Trap::Interrupt.into());
            }
            *ticks -= 1;
            // Tokio's own yield, not wasmtime's: it lets the runtime poll for I/O before the call
            // resumes, so every other connection on this worker is served at each tick.
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
        });
        arm(&mut store, deadline_ticks);
        let instance =
            plugin.pre.instance_pre().instantiate_async(&mut store).await.map_err(|e| classify(&store, e))?;
        let bindings = Plugin::new(&mut store, &instance).map_err(|e| classify(&store, e))?;
        let (snapshot, restore) = match &plugin.state {
            Some(exports) => (
                instance.get_typed_func(&mut store, exports.snapshot).ok(),
                instance.get_typed_func(&mut store, exports.restore).ok(),
            ),
            None => (None, None),
        };
        let on_messages = match plugin.batch {
            Some(_) => BatchIndices::new(plugin.pre.instance_pre())
                .and_then(|indices| indices.load(&mut store, &instance))
                .ok(),
            None => None,
        };
        let on_packed = match plugin.packed {
            Some(_) => PackedIndices::new(plugin.pre.instance_pre())
                .and_then(|indices| indices.load(&mut store, &instance))
                .ok(),
            None => None,
        };
        let on_timer = plugin.on_timer.and_then(|f| instance.get_typed_func(&mut store, f).ok());
        let on_presence = plugin.on_presence.and_then(|f| instance.get_typed_func(&mut store, f).ok());
        Ok(Self { store, bindings, deadline_ticks, snapshot, restore, on_messages, on_packed, on_timer, on_presence })
    }

    /// [`PluginInstance::new`] for callers outside the async workers (`wsplug check`, start-up).
    pub fn new_blocking(plugin: &LoadedPlugin, limits: &SandboxLimits) -> Result<Self, CallError> {
        wasmtime_wasi::runtime::in_tokio(Self::new(plugin, limits))
    }

    /// `wsplug check`'s probe: calls every export of the world once on a scratch instance, as a
    /// connection that opens, sends one text message and closes would, so that an export the
    /// component lacks or that fails on first use (a JavaScript plugin without `onClose`) is found
    /// before a server runs it. The first failing call, named.
    pub fn probe_blocking(plugin: &LoadedPlugin, limits: &SandboxLimits) -> Result<(), String> {
        wasmtime_wasi::runtime::in_tokio(async {
            let mut instance = Self::new(plugin, limits).await.map_err(|e| format!("instantiation {e}"))?;
            let conn = Connection {
                id: 1,
                path: "/wsplug-check",
                headers: &[("host", "127.0.0.1")],
                remote_addr: "127.0.0.1:1",
                protocols: &[],
                resumed: false,
            };
            instance.on_open(conn).await.map_err(|e| format!("on-open {e}"))?;
            instance.on_message(1, MessageParam::Text("wsplug check")).await.map_err(|e| format!("on-message {e}"))?;
            instance.on_close(1, 1000, "").await.map_err(|e| format!("on-close {e}"))?;
            Ok(())
        })
    }

    pub fn has_snapshot(&self) -> bool {
        self.snapshot.is_some()
    }

    pub fn has_restore(&self) -> bool {
        self.restore.is_some()
    }

    /// The plugin's state, for its next version (`state.snapshot`).
    pub async fn snapshot(&mut self) -> Result<Vec<u8>, CallError> {
        let Some(f) = self.snapshot else { return Ok(Vec::new()) };
        self.arm();
        let r = f.call_async(&mut self.store, ()).await;
        r.map(|(bytes,)| bytes).map_err(|e| classify(&self.store, e))
    }

    /// Hands a snapshot to this (new) version (`state.restore`); `Ok(Err(_))` is the plugin's refusal.
    pub async fn restore(&mut self, snapshot: Vec<u8>) -> Result<Result<(), String>, CallError> {
        let Some(f) = self.restore else { return Ok(Ok(())) };
        self.arm();
        let r = f.call_async(&mut self.store, (snapshot,)).await;
        r.map(|(result,)| result).map_err(|e| classify(&self.store, e))
    }

    fn arm(&mut self) {
        arm(&mut self.store, self.deadline_ticks);
    }

    pub async fn on_open(&mut self, conn: Connection<'_>) -> Result<Admission, CallError> {
        self.arm();
        self.store.data_mut().platform.opening = Some(conn.id);
        let r = self.bindings.wsplug_plugin0_1_0_handler().call_on_open(&mut self.store, conn).await;
        let r = self.settled(r).await;
        self.store.data_mut().platform.opening = None;
        r
    }

    pub async fn on_message(&mut self, id: u64, message: MessageParam<'_>) -> Result<Vec<Action>, CallError> {
        self.arm();
        let r = self.bindings.wsplug_plugin0_1_0_handler().call_on_message(&mut self.store, id, message).await;
        self.settled(r).await
    }

    /// Whether the plugin takes several messages in one call (`batch.on-messages`).
    pub fn has_batch(&self) -> bool {
        self.on_messages.is_some()
    }

    /// `batch.on-messages` (when [`PluginInstance::has_batch`]; else no actions).
    pub async fn on_messages(&mut self, id: u64, messages: &[MessageParam<'_>]) -> Result<Vec<Action>, CallError> {
        let Some(batch) = &self.on_messages else { return Ok(Vec::new()) };
        arm(&mut self.store, self.deadline_ticks);
        let r = batch.call_on_messages(&mut self.store, id, messages).await;
        self.settled(r).await
    }

    /// Whether the plugin takes several messages packed in one call (`packed-batch.on-packed`).
    pub fn has_packed(&self) -> bool {
        self.on_packed.is_some()
    }

    /// `packed-batch.on-packed` (when [`PluginInstance::has_packed`]; else nothing).
    pub async fn on_packed(&mut self, id: u64, messages: PackedParam<'_>) -> Result<PackedActions, CallError> {
        let Some(packed) = &self.on_packed else {
            let replies = PackedResult { data: Vec::new(), ends: Vec::new() };
            return Ok(PackedActions { replies, actions: Vec::new() });
        };
        arm(&mut self.store, self.deadline_ticks);
        let r = packed.call_on_packed(&mut self.store, id, messages).await;
        self.settled(r).await
    }

    pub async fn on_close(&mut self, id: u64, code: u16, reason: &str) -> Result<Vec<Action>, CallError> {
        self.arm();
        let r = self.bindings.wsplug_plugin0_1_0_handler().call_on_close(&mut self.store, id, code, reason).await;
        self.settled(r).await
    }

    /// Whether the plugin handles timer events (`timer-handler.on-timer`, contract 0.2.0).
    pub fn has_timers(&self) -> bool {
        self.on_timer.is_some()
    }

    /// `timer-handler.on-timer` (when [`PluginInstance::has_timers`]; else no actions).
    pub async fn on_timer(&mut self, name: &str) -> Result<Vec<Action>, CallError> {
        let Some(f) = self.on_timer else { return Ok(Vec::new()) };
        self.arm();
        let r = f.call_async(&mut self.store, (name.to_owned(),)).await;
        self.settled(r.map(|(actions,)| actions)).await
    }

    /// Whether the plugin handles presence events (`presence-handler.on-presence`).
    pub fn has_presence(&self) -> bool {
        self.on_presence.is_some()
    }

    /// `presence-handler.on-presence` (when [`PluginInstance::has_presence`]; else no actions).
    pub async fn on_presence(
        &mut self,
        events: &[crate::topics::presence::PresenceEvent],
    ) -> Result<Vec<Action>, CallError> {
        use super::bindings::v2::topics;
        let Some(f) = self.on_presence else { return Ok(Vec::new()) };
        let members = |list: &[crate::topics::presence::Member]| {
            list.iter().map(|m| topics::Member { node: m.node.clone(), connection: m.connection }).collect()
        };
        let events = events
            .iter()
            .map(|e| PresenceEvent {
                topic: e.topic.clone(),
                count: e.count,
                joined: members(&e.joined),
                left: members(&e.left),
                omitted: e.omitted,
            })
            .collect();
        self.arm();
        let r = f.call_async(&mut self.store, (events,)).await;
        self.settled(r.map(|(actions,)| actions)).await
    }

    /// The recovering subscriptions (`topics.subscribe-from`) the last successful call asked for.
    pub fn take_subscriptions(&mut self) -> Vec<(u64, String, crate::topics::Position)> {
        self.store.data_mut().platform.take_subscriptions()
    }

    /// Links the instance to its slot's timers and attachments, which outlive it.
    pub fn link_platform(&mut self, shared: super::platform::Shared, max_timers: usize) {
        let platform = &mut self.store.data_mut().platform;
        platform.shared = shared;
        platform.max_timers = max_timers;
    }

    /// Keeps a line for every use of timers and attachments that takes effect (`wsplug test`).
    pub fn keep_platform_log(&mut self) {
        self.store.data_mut().platform.log = Some(Vec::new());
    }

    /// The lines kept since the last time (see [`PluginInstance::keep_platform_log`]).
    pub fn take_platform_log(&mut self) -> Vec<String> {
        self.store.data_mut().platform.log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// A call's result: on success, what it did with timers, attachments and the key-value store
    /// takes effect (before its actions are carried out); a failure is classified and its uses
    /// are dropped.
    ///
    /// Its key-value writes commit first, in one durable transaction (on the blocking pool: file
    /// I/O and an fsync); if the store refuses them (a lost compare-and-swap, the quota, an I/O
    /// error), the call fails and nothing of it takes effect.
    async fn settled<T>(&mut self, r: wasmtime::Result<T>) -> Result<T, CallError> {
        let value = r.map_err(|e| classify(&self.store, e))?;
        if let Some((store, writes, expected)) = self.store.data_mut().platform.take_kv() {
            let committed = tokio::task::spawn_blocking(move || store.commit(&writes, &expected))
                .await
                .unwrap_or_else(|e| Err(format!("the commit task failed: {e}")));
            if let Err(e) = committed {
                self.store.data_mut().platform.clear();
                return Err(CallError::Failed(format!("its key-value writes were refused: {e}")));
            }
        }
        self.store.data_mut().platform.commit();
        Ok(value)
    }
}

/// Separates a failure from the plugin's stderr lines in a [`CallError`]'s text.
pub const STDERR_MARK: &str = "; plugin stderr: ";

/// Of the stderr lines a failed call left (joined with " | "), the one that states the error:
/// the last line that is not a frame of a stack or a traceback (indented), a panic's location
/// header, a traceback's header, a runtime's wrapper line or a hint. A JavaScript exception reported by componentize-qjs
/// (`Exception { message: Some("…"), stack: … }`) is reduced to its message. So a client of a `dev`
/// route reads the panic message, the exception or the traceback's last line first, within a
/// close reason's 123 bytes.
pub fn telling_line(said: &str) -> String {
    let framing = |line: &str| {
        line.is_empty()
            || line.starts_with(char::is_whitespace)
            || line.starts_with("note: ")
            || line.starts_with("Traceback (most recent call last)")
            || line.starts_with("stack backtrace:")
            // componentize-py's own line after the traceback.
            || line.starts_with("Python function threw an unexpected exception")
            || (line.starts_with("thread '") && line.contains("panicked at"))
    };
    let lines: Vec<&str> = said.split(" | ").collect();
    let line = lines.iter().rev().find(|l| !framing(l)).or(lines.last()).copied().unwrap_or_default();
    if let Some((_, rest)) = line.split_once("Exception { message: Some(\"") {
        // The Debug form of a Rust string: unescape the quotes and backslashes it escaped.
        let mut message = String::new();
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return message,
                '\\' => match chars.next() {
                    Some('n') => message.push(' '),
                    Some(other) => message.push(other),
                    None => break,
                },
                c => message.push(c),
            }
        }
    }
    line.to_owned()
}

fn classify(store: &Store<PluginState>, error: wasmtime::Error) -> CallError {
    if store.data().limiter.hit {
        return CallError::OutOfMemory;
    }
    // What the plugin said on stderr during the call is usually the real reason (a panic message,
    // a traceback, an exception): the report carries it.
    let said = store.data().stderr_tail.joined();
    let with_stderr = |what: String| if said.is_empty() { what } else { format!("{what}{STDERR_MARK}{said}") };
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => CallError::Deadline,
        Some(trap) => CallError::Trap(with_stderr(trap.to_string())),
        None => CallError::Failed(with_stderr(format!("{error:#}").lines().next().unwrap_or_default().to_owned())),
    }
}

/// Gives the next call (or the instantiation) its CPU deadline and a clean memory-cap record.
/// Reset before every call: a deadline set once would bound only the first one.
fn arm(store: &mut Store<PluginState>, deadline_ticks: u64) {
    store.data_mut().ticks_left = deadline_ticks - 1;
    store.set_epoch_deadline(1);
    store.data_mut().limiter.hit = false;
    store.data().stderr_tail.clear();
    store.data_mut().platform.clear();
}

#[cfg(test)]
mod tests {
    use super::telling_line;

    #[test]
    fn the_telling_line_of_a_failure_is_its_message() {
        // A Rust panic: the message, not the location header or the hint.
        let rust = "thread '<unnamed>' panicked at src/lib.rs:12:5: | boom: no room 7 | note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";
        assert_eq!(telling_line(rust), "boom: no room 7");
        // A Python traceback: its last line.
        let python = "Traceback (most recent call last): |   File \"/0/app.py\", line 3, in on_message |     raise KeyError(k) | KeyError: 'nick' | Python function threw an unexpected exception";
        assert_eq!(telling_line(python), "KeyError: 'nick'");
        // A JavaScript exception through componentize-qjs: its message, unescaped.
        let js = r#"thread '<unnamed>' (1) panicked at crates/runtime/src/interpreter.rs:51:31: | Failed to call 'onMessage': Exception(Exception { message: Some("action 1 (send): field \"to\": bad"), stack: Some("    at f (/p.js:1:2)\n") }) | note: run with `RUST_BACKTRACE=1`"#;
        assert_eq!(telling_line(js), r#"action 1 (send): field "to": bad"#);
        // Anything else: the last line as it is.
        assert_eq!(telling_line("just this"), "just this");
        assert_eq!(telling_line(""), "");
    }
}
