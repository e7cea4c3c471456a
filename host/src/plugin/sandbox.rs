//! What a plugin instance may do and use: its WASI context (no files, no sockets, no environment;
//! clocks and random allowed; stdout and stderr into the host's log), its memory cap, and the
//! per-call limits on CPU time and on what it may return.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v1::{host, types};

/// Per-route sandbox limits, `[routes.sandbox]` in the config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxLimits {
    /// Memory an instance may grow to: all its linear memories and tables together. A call that
    /// needs more traps (the connection is closed with 1011 and the instance rebuilt). Default
    /// 64 MiB.
    #[serde(deserialize_with = "crate::config::de_size")]
    pub memory: usize,
    /// Time budget of one call, enforced by epoch interruption (10 ms resolution). It bounds a
    /// runaway loop, not normal work: copying a 16 MiB message in and out fits with room to spare.
    /// It is also how long one call can hold up the other connections of its instance, so it is
    /// short by default: 100 ms. Interpreted guests (JavaScript, Python) handling large messages
    /// may need more.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub cpu_deadline: Duration,
    /// Most actions one call may return; more closes the sender with 1011. Default 1024.
    pub max_actions: usize,
    /// Most message bytes one call may return, all actions together; more closes the sender with
    /// 1011. Default 16 MiB.
    #[serde(deserialize_with = "crate::config::de_size")]
    pub max_action_bytes: usize,
    /// Most topics one connection may be subscribed to. Default 256.
    pub max_topics_per_connection: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            cpu_deadline: Duration::from_millis(100),
            max_actions: 1024,
            max_action_bytes: 16 << 20,
            max_topics_per_connection: 256,
        }
    }
}

/// The data a plugin's `Store` holds.
pub struct PluginState {
    pub plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    /// Epoch ticks the current call may still run before it is interrupted (its CPU deadline).
    pub ticks_left: u64,
    /// The last lines the plugin wrote to stderr during the current call: what a failure
    /// report quotes (a Rust panic message, a Python traceback, a JavaScript exception).
    pub stderr_tail: StderrTail,
    /// Timers and attachments (contract 0.2.0): the slot's, and the current call's pending uses.
    pub platform: super::platform::CallPlatform,
}

impl PluginState {
    pub fn new(plugin: Arc<str>, limits: &SandboxLimits) -> Self {
        // Nothing is granted beyond clocks and random: no preopened directories, no environment,
        // no arguments, no network (TCP, UDP and name lookup are off by default; say so anyway).
        let stderr_tail = StderrTail::default();
        let mut stderr = LogSink::new(plugin.clone(), "stderr");
        stderr.tail = Some(stderr_tail.clone());
        let wasi = WasiCtxBuilder::new()
            .stdout(LogSink::new(plugin.clone(), "stdout"))
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory),
            ticks_left: 0,
            stderr_tail,
            platform: Default::default(),
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    fn log(&mut self, level: host::Level, message: String) {
        let message = crate::protocol::close::truncate_utf8(&message, 4096);
        let plugin = &*self.plugin;
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Caps the memory of one instance, all of its linear memories and tables together (a component
/// may have several of each: a cap per memory would let k memories take k times the cap), and
/// remembers when it said no, so a trap can be reported as what it was.
pub struct MemoryLimiter {
    max: usize,
    /// Bytes granted so far to every memory and table of the instance (they never shrink). A grow
    /// granted here that wasmtime then fails to make still counts: the error is on the safe side.
    used: usize,
    /// Set when a grow was refused during the current call.
    pub hit: bool,
}

/// What one table element is counted as (a function reference: a pointer).
const TABLE_ELEMENT_BYTES: usize = 8;
/// Most elements one table may have, whatever the memory left.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryLimiter {
    fn new(max: usize) -> Self {
        Self { max, used: 0, hit: false }
    }

    /// Grants `bytes` more if the instance stays within its cap.
    fn grant(&mut self, bytes: usize) -> bool {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.max => {
                self.used = total;
                true
            }
            _ => {
                if !self.hit {
                    tracing::warn!(used = self.used, wanted = bytes, cap = self.max, "plugin hit its memory cap");
                }
                self.hit = true;
                false
            }
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grant(desired.saturating_sub(current)))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        Ok(self.grant(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES)))
    }
}

/// The last [`TAIL_LINES`] lines a plugin wrote to stderr (each at most [`TAIL_LINE`] bytes), and
/// the start of an unfinished one. Cleared before every call.
#[derive(Clone, Default)]
pub struct StderrTail(Arc<Mutex<std::collections::VecDeque<String>>>);

const TAIL_LINES: usize = 8;
const TAIL_LINE: usize = 300;

impl StderrTail {
    fn push(&self, line: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(crate::protocol::close::truncate_utf8(line, TAIL_LINE).to_owned());
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The lines, joined with " | "; empty when the plugin wrote nothing.
    pub fn joined(&self) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | ")
    }
}

/// A plugin's stdout or stderr: complete lines go to the log, tagged with the plugin's name.
#[derive(Clone)]
struct LogSink {
    plugin: Arc<str>,
    stream: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
    /// stderr only: where the recent lines are kept for failure reports.
    tail: Option<StderrTail>,
}

/// Longest line kept; a longer one is logged in pieces.
const MAX_LINE: usize = 4096;

impl LogSink {
    fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        Self { plugin, stream, pending: Arc::default(), tail: None }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(plugin = &*self.plugin, stream = self.stream, "{text}");
            if let Some(tail) = &self.tail {
                tail.push(text);
            }
        }
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASI preview 3 guests use this; preview 2 guests get `p2_stream`.
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let mut pending = self.pending.lock().expect("log sink lock");
        pending.extend_from_slice(&bytes);
        while let Some(i) = pending.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            self.emit(&line);
        }
        if pending.len() > MAX_LINE {
            let line: Vec<u8> = std::mem::take(&mut *pending);
            self.emit(&line);
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn the_cap_holds_for_all_memories_and_tables_of_an_instance_together() {
        let mut limiter = MemoryLimiter::new(64 << 20);
        assert!(limiter.memory_growing(0, 40 << 20, None).unwrap(), "a first memory of 40 MiB fits");
        assert!(!limiter.memory_growing(0, 40 << 20, None).unwrap(), "a second one does not");
        assert!(limiter.hit);
        assert!(limiter.memory_growing(40 << 20, 127 << 19, None).unwrap(), "the first may grow to 63.5 MiB");
        assert!(limiter.table_growing(0, 1000, None).unwrap(), "a small table fits in the 512 KiB left");
        assert!(!limiter.table_growing(1000, 90_000, None).unwrap(), "90,000 elements (720 KB) do not");
        assert!(!MemoryLimiter::new(usize::MAX).table_growing(0, 100_001, None).unwrap(), "nor 100,001 ever");
    }
}
