//! The platform of contract 0.2.0 (`wit/platform/wsplug.wit`) as the host provides it: `timers`,
//! `attachments` and `kv` (over [`crate::storage`]), and the route grants that allow them.
//!
//! What a call does with them is pending in its store (the call reads its own writes) and takes
//! effect when the call succeeds ([`CallPlatform::commit`], run by the instance right after a
//! successful call, before the slot carries out its actions), like its actions: a failed call sets
//! no timer and attaches nothing. The committed timers and attachments belong to the slot
//! ([`Shared`]), not to the instance, so they outlive a hot reload and an instance rebuilt after a
//! failure.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::bindings::v2::{attachments, kv, timers, topics};
use super::sandbox::PluginState;
use crate::storage::{MAX_KEY, MAX_VALUE, Store, Write};

/// The longest timer name, in bytes.
pub const MAX_TIMER_NAME: usize = 128;
/// The largest value attached to one connection.
pub const MAX_ATTACHMENT: usize = 16 << 10;
/// The interfaces of 0.2.0, by the grant that allows each.
pub const TIMERS_INTERFACE: &str = "wsplug:plugin/timers@0.2.0";
pub const ATTACHMENTS_INTERFACE: &str = "wsplug:plugin/attachments@0.2.0";
pub const KV_INTERFACE: &str = "wsplug:plugin/kv@0.2.0";
/// The optional export of timer events.
pub const TIMER_HANDLER_INTERFACE: &str = "wsplug:plugin/timer-handler@0.2.0";
/// The optional export of presence events.
pub const PRESENCE_HANDLER_INTERFACE: &str = "wsplug:plugin/presence-handler@0.2.0";
/// Recovering subscriptions one call may ask for (`topics.subscribe-from`).
pub const MAX_SUBSCRIBE_FROM: usize = 1000;

/// What a route grants its plugin beyond the sandbox, `[routes.grants]` in the config: nothing
/// unless said.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Grants {
    /// The `timers` interface.
    pub timers: bool,
    /// Most timers one instance may have set at once. Default 100.
    pub max_timers: usize,
    /// The `attachments` interface.
    pub attachments: bool,
    /// The `kv` interface, on the store of this name (`DATA_DIR/NAME.redb`).
    pub kv: Option<String>,
    /// Most bytes of keys and values the store may hold. Default 64 MiB.
    #[serde(deserialize_with = "crate::config::de_size")]
    pub kv_quota: usize,
}

impl Default for Grants {
    fn default() -> Self {
        Self { timers: false, max_timers: 100, attachments: false, kv: None, kv_quota: 64 << 20 }
    }
}

impl Grants {
    /// Refuses a plugin that imports an interface this route does not grant, naming the grant.
    pub fn check(&self, imports: &[String]) -> Result<(), String> {
        for import in imports {
            let Some(grant) = grant_needed(import) else { continue };
            let granted = match import.as_str() {
                TIMERS_INTERFACE => self.timers,
                ATTACHMENTS_INTERFACE => self.attachments,
                _ => self.kv.is_some(),
            };
            if !granted {
                return Err(format!(
                    "imports {import}, which this route does not grant: add `{grant}` to its [routes.grants]"
                ));
            }
        }
        Ok(())
    }
}

/// The line of `[routes.grants]` an import of 0.2.0 needs (`None`: no grant needed).
pub fn grant_needed(import: &str) -> Option<&'static str> {
    match import {
        TIMERS_INTERFACE => Some("timers = true"),
        ATTACHMENTS_INTERFACE => Some("attachments = true"),
        KV_INTERFACE => Some("kv = \"STORE-NAME\""),
        _ => None,
    }
}

/// A timer as the slot keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub due: Instant,
    pub every: Option<Duration>,
}

impl Timer {
    /// After firing at `now`: the next tick of a repeating timer (the missed ones fold into
    /// this firing), or `None` for a one-shot.
    pub fn next(self, now: Instant) -> Option<Timer> {
        let every = self.every?;
        let mut due = self.due + every;
        if due <= now {
            let behind = now.duration_since(due).as_nanos() / every.as_nanos().max(1) + 1;
            due += every * u32::try_from(behind).unwrap_or(u32::MAX);
        }
        Some(Timer { due, every: Some(every) })
    }
}

/// What a slot keeps for its instances, shared with the instance's store.
#[derive(Clone, Default)]
pub struct Shared {
    /// The instance's timers, by name.
    pub timers: Arc<Mutex<BTreeMap<String, Timer>>>,
    /// Wakes the slot's timer task when the timers changed.
    pub timers_changed: Arc<tokio::sync::Notify>,
    /// The live connections of the slot, each with what it has attached (empty: nothing).
    pub attachments: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
    /// The route's key-value store, when granted.
    pub kv: Option<Arc<Store>>,
    /// The route's hub: its topics' history positions and presence (none when unlinked).
    pub hub: Option<Arc<crate::server::hub::Hub>>,
}

impl Shared {
    /// The earliest due time, if any timer is set.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.lock().expect("timers lock").values().map(|t| t.due).min()
    }

    /// Takes the earliest timer due by `now`, rescheduling a repeating one: its name.
    pub fn take_due(&self, now: Instant) -> Option<String> {
        let mut timers = self.timers.lock().expect("timers lock");
        let (name, timer) = timers.iter().filter(|(_, t)| t.due <= now).min_by_key(|(_, t)| t.due)?;
        let (name, timer) = (name.clone(), *timer);
        match timer.next(now) {
            Some(next) => {
                timers.insert(name.clone(), next);
            }
            None => {
                timers.remove(&name);
            }
        }
        Some(name)
    }
}

/// A call's key-value writes on their way to the store: the store, the writes, and the value each
/// compare-and-swap saw (checked again when they commit).
pub type KvCommit = (Arc<Store>, Vec<Write>, Vec<(String, Option<Vec<u8>>)>);

enum TimerOp {
    Set(String, Duration, Option<Duration>),
    Cancel(String),
}

/// The platform as one call sees it: the slot's shared tables, and the call's pending uses.
pub struct CallPlatform {
    pub shared: Shared,
    pub max_timers: usize,
    /// The connection of the `on-open` call under way (not admitted yet, but it may attach).
    pub opening: Option<u64>,
    timer_ops: Vec<TimerOp>,
    attach_ops: Vec<(u64, Vec<u8>)>,
    kv_writes: Vec<Write>,
    /// What each compare-and-swap saw, checked again at commit.
    kv_expected: Vec<(String, Option<Vec<u8>>)>,
    /// Recovering subscriptions asked for (`topics.subscribe-from`), carried out after the actions.
    subscriptions: Vec<(u64, String, crate::topics::Position)>,
    /// When kept (`wsplug test`), a line for every use that took effect.
    pub log: Option<Vec<String>>,
}

impl Default for CallPlatform {
    /// Unlinked (`wsplug check`'s probe, `wsplug test`): tables of its own, the default limit.
    fn default() -> Self {
        Self {
            shared: Shared::default(),
            max_timers: Grants::default().max_timers,
            opening: None,
            timer_ops: Vec::new(),
            attach_ops: Vec::new(),
            kv_writes: Vec::new(),
            kv_expected: Vec::new(),
            subscriptions: Vec::new(),
            log: None,
        }
    }
}

impl CallPlatform {
    /// Forgets what a previous call left pending (a failed call's uses never take effect).
    pub fn clear(&mut self) {
        self.timer_ops.clear();
        self.attach_ops.clear();
        self.kv_writes.clear();
        self.kv_expected.clear();
        self.subscriptions.clear();
    }

    /// The recovering subscriptions the last successful call asked for.
    pub fn take_subscriptions(&mut self) -> Vec<(u64, String, crate::topics::Position)> {
        if let Some(log) = &mut self.log {
            for (conn, topic, since) in &self.subscriptions {
                log.push(format!("subscribe-from {conn} {} {}:{}", quoted(topic), since.epoch, since.offset));
            }
        }
        std::mem::take(&mut self.subscriptions)
    }

    /// The call's key-value writes, to commit ([`Store::commit`], blocking) before the rest: the
    /// store, the writes and what its compare-and-swaps saw. `None` when it wrote nothing.
    pub fn take_kv(&mut self) -> Option<KvCommit> {
        if self.kv_writes.is_empty() {
            return None;
        }
        let store = self.shared.kv.clone()?;
        if let Some(log) = &mut self.log {
            for write in &self.kv_writes {
                log.push(match write {
                    Write::Set(key, value) => format!("kv set {} ({} bytes)", quoted(key), value.len()),
                    Write::Delete(key) => format!("kv delete {}", quoted(key)),
                });
            }
        }
        Some((store, std::mem::take(&mut self.kv_writes), std::mem::take(&mut self.kv_expected)))
    }

    /// Records a timer operation, replacing an earlier one on the same name: what a call keeps is
    /// bounded by its timers (`max_timers`).
    fn push_timer(&mut self, op: TimerOp) {
        let name = match &op {
            TimerOp::Set(name, ..) | TimerOp::Cancel(name) => name.clone(),
        };
        self.timer_ops.retain(|o| !matches!(o, TimerOp::Set(n, ..) | TimerOp::Cancel(n) if *n == name));
        self.timer_ops.push(op);
    }

    /// Records a key-value write, replacing an earlier one on the same key. A call's writes
    /// together (keys and values) may not pass the store's quota: the host holds them until the
    /// call ends, outside the plugin's memory cap.
    fn push_kv(&mut self, write: Write) -> Result<(), String> {
        let key = match &write {
            Write::Set(key, _) | Write::Delete(key) => key.clone(),
        };
        self.kv_writes.retain(|w| !matches!(w, Write::Set(k, _) | Write::Delete(k) if *k == key));
        self.kv_writes.push(write);
        let pending: usize = self
            .kv_writes
            .iter()
            .map(|w| match w {
                Write::Set(k, v) => k.len() + v.len(),
                Write::Delete(k) => k.len(),
            })
            .sum();
        let quota = self.shared.kv.as_ref().map_or(0, |s| s.quota());
        if pending as u64 > quota {
            self.kv_writes.pop();
            return Err(format!(
                "this call's writes ({pending} bytes) pass the store's quota ({quota} bytes, kv_quota)"
            ));
        }
        Ok(())
    }

    /// The value of `key` as this call sees it: its own last write, else the store's.
    fn kv_value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        for write in self.kv_writes.iter().rev() {
            match write {
                Write::Set(k, v) if k == key => return Ok(Some(v.clone())),
                Write::Delete(k) if k == key => return Ok(None),
                _ => {}
            }
        }
        match &self.shared.kv {
            Some(store) => store.get(key),
            None => Ok(None),
        }
    }

    /// Applies the call's pending uses: it succeeded.
    pub fn commit(&mut self) {
        if !self.timer_ops.is_empty() {
            let now = Instant::now();
            let mut timers = self.shared.timers.lock().expect("timers lock");
            for op in self.timer_ops.drain(..) {
                match op {
                    TimerOp::Set(name, after, every) => {
                        if let Some(log) = &mut self.log {
                            let every = every.map(|e| format!(" every {} ms", e.as_millis())).unwrap_or_default();
                            log.push(format!("timer set {} after {} ms{every}", quoted(&name), after.as_millis()));
                        }
                        timers.insert(name, Timer { due: now + after, every });
                    }
                    TimerOp::Cancel(name) => {
                        if let Some(log) = &mut self.log {
                            log.push(format!("timer cancel {}", quoted(&name)));
                        }
                        timers.remove(&name);
                    }
                }
            }
            drop(timers);
            self.shared.timers_changed.notify_one();
        }
        if !self.attach_ops.is_empty() {
            let mut attached = self.shared.attachments.lock().expect("attachments lock");
            for (conn, value) in self.attach_ops.drain(..) {
                // The connection may have closed since (a resumed one's on-open, say): only live
                // ones (and the one opening, whose admission the slot completes) keep values.
                if attached.contains_key(&conn) || Some(conn) == self.opening {
                    if let Some(log) = &mut self.log {
                        log.push(format!("attach {conn} {}", quoted(&String::from_utf8_lossy(&value))));
                    }
                    attached.insert(conn, value);
                }
            }
        }
    }

    /// The timer names once the call's pending operations apply.
    fn names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self.shared.timers.lock().expect("timers lock").keys().cloned().collect();
        for op in &self.timer_ops {
            match op {
                TimerOp::Set(name, ..) => names.insert(name.clone()),
                TimerOp::Cancel(name) => names.remove(name),
            };
        }
        names
    }
}

/// `s` as a JSON string, for the lines `wsplug test` prints.
pub(super) fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

impl timers::Host for PluginState {
    fn set(&mut self, name: String, after_ms: u64, every_ms: Option<u64>) -> Result<(), String> {
        if name.is_empty() || name.len() > MAX_TIMER_NAME {
            return Err(format!("a timer name is 1 to {MAX_TIMER_NAME} bytes, not {}", name.len()));
        }
        if after_ms == 0 || every_ms == Some(0) {
            return Err("a timer's delays are at least 1 ms".into());
        }
        // A year: beyond it, a delay is a mistake (and Instant arithmetic would overflow).
        const MAX_MS: u64 = 366 * 24 * 3600 * 1000;
        if after_ms > MAX_MS || every_ms.is_some_and(|ms| ms > MAX_MS) {
            return Err(format!("a timer's delays are at most {MAX_MS} ms (a year)"));
        }
        let platform = &mut self.platform;
        let names = platform.names();
        if !names.contains(&name) && names.len() >= platform.max_timers {
            return Err(format!(
                "this instance has {} timers, its route's limit (max_timers): cancel one first",
                platform.max_timers
            ));
        }
        platform.push_timer(TimerOp::Set(name, Duration::from_millis(after_ms), every_ms.map(Duration::from_millis)));
        Ok(())
    }

    fn cancel(&mut self, name: String) {
        // Cancelling a timer that is not set is nothing to remember (so a call cannot pile up
        // cancellations of names that never were).
        if self.platform.names().contains(&name) {
            self.platform.push_timer(TimerOp::Cancel(name));
        }
    }

    fn names(&mut self) -> Vec<String> {
        self.platform.names().into_iter().collect()
    }
}

impl attachments::Host for PluginState {
    fn set(&mut self, conn: u64, value: Vec<u8>) -> Result<(), String> {
        if value.len() > MAX_ATTACHMENT {
            return Err(format!("an attachment is at most {MAX_ATTACHMENT} bytes, not {}", value.len()));
        }
        let platform = &mut self.platform;
        let live = platform.shared.attachments.lock().expect("attachments lock").contains_key(&conn);
        if !live && platform.opening != Some(conn) {
            return Err(format!("connection {conn} is not an open connection of this instance"));
        }
        // Only the last value per connection is kept: a call holds at most one each.
        platform.attach_ops.retain(|(c, _)| *c != conn);
        platform.attach_ops.push((conn, value));
        Ok(())
    }

    fn get(&mut self, conn: u64) -> Option<Vec<u8>> {
        let platform = &self.platform;
        let value = match platform.attach_ops.iter().rev().find(|(c, _)| *c == conn) {
            Some((_, value)) => value.clone(),
            None => platform.shared.attachments.lock().expect("attachments lock").get(&conn)?.clone(),
        };
        (!value.is_empty()).then_some(value)
    }
}

/// A key's or a value's size against the store's bounds.
fn check_kv(key: &str, value: Option<&[u8]>) -> Result<(), String> {
    if key.len() > MAX_KEY {
        return Err(format!("a key is at most {MAX_KEY} bytes, not {}", key.len()));
    }
    if let Some(value) = value
        && value.len() > MAX_VALUE
    {
        return Err(format!("a value is at most {MAX_VALUE} bytes, not {}", value.len()));
    }
    Ok(())
}

impl kv::Host for PluginState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.platform.kv_value(&key) {
            Ok(value) => value,
            Err(e) => {
                // A read the database cannot serve is the server's failure, not the plugin's: it
                // is logged, and the plugin sees no value.
                tracing::error!(plugin = &*self.plugin, "{e}");
                None
            }
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        check_kv(&key, Some(&value))?;
        self.platform.push_kv(Write::Set(key, value))
    }

    fn delete(&mut self, key: String) {
        // Deleting a key that is not there is nothing to remember.
        if matches!(self.platform.kv_value(&key), Ok(Some(_))) {
            let _ = self.platform.push_kv(Write::Delete(key));
        }
    }

    fn keys(&mut self, prefix: String, limit: u32) -> Vec<String> {
        let platform = &self.platform;
        let limit = limit as usize;
        let Some(store) = &platform.shared.kv else { return Vec::new() };
        // The committed keys, then this call's own writes over them.
        let mut keys: BTreeSet<String> = match store.keys(&prefix, limit + platform.kv_writes.len()) {
            Ok(keys) => keys.into_iter().collect(),
            Err(e) => {
                tracing::error!(plugin = &*self.plugin, "{e}");
                BTreeSet::new()
            }
        };
        for write in &platform.kv_writes {
            match write {
                Write::Set(k, _) if k.starts_with(&prefix) => keys.insert(k.clone()),
                Write::Delete(k) => keys.remove(k),
                _ => false,
            };
        }
        keys.into_iter().take(limit).collect()
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Result<bool, String> {
        check_kv(&key, value.as_deref())?;
        let platform = &mut self.platform;
        if platform.kv_value(&key)? != expected {
            return Ok(false);
        }
        // What the store held is what the commit checks (this call's own earlier writes to the
        // key are its own business).
        if !platform.kv_writes.iter().any(|w| matches!(w, Write::Set(k, _) | Write::Delete(k) if *k == key))
            && !platform.kv_expected.iter().any(|(k, _)| *k == key)
            && let Some(store) = &platform.shared.kv
        {
            platform.kv_expected.push((key.clone(), store.get(&key)?));
        }
        platform.push_kv(match value {
            Some(v) => Write::Set(key, v),
            None => Write::Delete(key),
        })?;
        Ok(true)
    }
}

impl topics::Host for PluginState {
    fn last_position(&mut self, topic: String) -> Option<topics::Position> {
        let at = self.platform.shared.hub.as_ref()?.position(&topic)?;
        Some(topics::Position { epoch: at.epoch, offset: at.offset })
    }

    fn subscribe_from(&mut self, conn: u64, topic: String, since: topics::Position) -> Result<(), String> {
        if topic.len() > super::actions::MAX_TOPIC {
            return Err(format!("topic name of {} bytes (limit {})", topic.len(), super::actions::MAX_TOPIC));
        }
        let platform = &mut self.platform;
        if platform.subscriptions.len() >= MAX_SUBSCRIBE_FROM {
            return Err(format!("at most {MAX_SUBSCRIBE_FROM} recovering subscriptions per call"));
        }
        platform.subscriptions.push((
            conn,
            topic,
            crate::topics::Position { epoch: since.epoch, offset: since.offset },
        ));
        Ok(())
    }

    fn presence_count(&mut self, topic: String) -> u64 {
        self.platform.shared.hub.as_ref().map_or(0, |hub| hub.presence_count(&topic))
    }

    fn presence_members(&mut self, topic: String, limit: u32) -> Result<Vec<topics::Member>, String> {
        let hub = self.platform.shared.hub.as_ref().ok_or("no route: presence is not kept here")?;
        let members = hub.presence_members(&topic, limit as usize)?;
        Ok(members.into_iter().map(|m| topics::Member { node: m.node, connection: m.connection }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_timer_that_fell_behind_fires_once_and_keeps_its_phase() {
        let start = Instant::now();
        let every = Duration::from_millis(10);
        let timer = Timer { due: start, every: Some(every) };
        // On time: the next tick.
        assert_eq!(timer.next(start).unwrap().due, start + every);
        // 35 ms late: ticks at 10, 20, 30 are folded into this firing; the next is at 40.
        assert_eq!(timer.next(start + Duration::from_millis(35)).unwrap().due, start + Duration::from_millis(40));
        assert_eq!(Timer { due: start, every: None }.next(start), None);
    }

    #[test]
    fn grants_refuse_an_ungranted_import_by_name() {
        let imports = vec!["wsplug:plugin/host@0.1.0".to_owned(), TIMERS_INTERFACE.to_owned()];
        let e = Grants::default().check(&imports).unwrap_err();
        assert!(e.contains(TIMERS_INTERFACE) && e.contains("timers = true"), "{e}");
        assert!(Grants { timers: true, ..Grants::default() }.check(&imports).is_ok());
        let e = Grants { timers: true, ..Grants::default() }.check(&[ATTACHMENTS_INTERFACE.to_owned()]).unwrap_err();
        assert!(e.contains("attachments = true"), "{e}");
    }
}
