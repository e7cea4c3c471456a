//! The server's configuration: a TOML file (or the embedded default), with every limit documented
//! and defaulted here, in one place.
//!
//! A bad config stops start-up with an error naming the file, the line and the field: syntax and
//! type errors come from the TOML parser with their position; semantic checks (route paths,
//! duplicates, zero limits) use the spans kept by `toml::Spanned`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// The configuration compiled into the binary, used when neither `--config` nor `--route` is given.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A configuration error, naming where it was found.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    pub source_name: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on. Default `127.0.0.1:8080`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A directory served as static files on paths that are not WebSocket routes (optional).
    #[serde(default)]
    pub static_dir: Option<PathBuf>,
    /// Compiled plugins are cached here, keyed by content and engine, so that a restart or a swap
    /// back to a version seen before skips compilation. Default: `$WSPLUG_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/wsplug`, else `~/.cache/wsplug`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Where plugins' key-value stores are kept (`DIR/NAME.redb`), or `"memory"` (gone at exit).
    /// Default: `$WSPLUG_DATA_DIR`, else `$XDG_DATA_HOME/wsplug`, else `~/.local/share/wsplug`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Turns the compile cache off. Default true.
    #[serde(default = "yes")]
    pub compile_cache: bool,
    /// The admin listener: `/metrics`, `/healthz`, `/readyz` (off unless set; keep it private).
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// TLS on the listener (`wss://`): PEM files, relative to the config file's directory.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// The NATS broker this node shares its routes' topics and broadcasts through
    /// (`[cluster]`; without it, one node, topics in memory). Read at start-up only.
    #[serde(default)]
    pub cluster: Option<crate::topics::nats::ClusterConfig>,
    /// Where relative paths in this config are resolved from (the config file's directory).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where this config came from (its file, or what stood for one), for error messages.
    #[serde(skip)]
    pub source_name: String,
    /// The 1-based line each route starts on in that source (0: from the command line).
    #[serde(skip)]
    pub route_lines: Vec<usize>,
}

/// Per-connection and server-wide limits. Each has a default suited to a public server; the comment
/// says what it protects and what it costs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest frame payload accepted (bytes; "16MiB" style strings allowed). Larger → close 1009,
    /// decided from the header before buffering. Default 16 MiB.
    #[serde(deserialize_with = "de_size")]
    pub max_frame_size: usize,
    /// Largest message (all fragments) accepted; the read buffer of a connection can grow to this.
    /// Larger → close 1009. Default 16 MiB.
    #[serde(deserialize_with = "de_size")]
    pub max_message_size: usize,
    /// Largest HTTP request head. Larger → 431. Default 8 KiB.
    #[serde(deserialize_with = "de_size")]
    pub max_head_size: usize,
    /// Most header fields in a request head. More → 431. Default 100.
    pub max_headers: usize,
    /// Time a client has to send its whole request head (slowloris guard). Default 10 s.
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// After this long without any frame from the client, the server sends a ping. Default 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub ping_interval: Duration,
    /// After this long without any frame from the client, the connection is closed with 1001.
    /// Default 75 s.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// How long to wait for the peer's close frame (or TCP close) after sending ours. Default 5 s.
    #[serde(deserialize_with = "de_duration")]
    pub close_timeout: Duration,
    /// A socket write that makes no progress for this long drops the connection (a client that
    /// stopped reading). Default 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub write_timeout: Duration,
    /// A message must arrive whole (all its frames) within this long of its first byte, else close
    /// 1008: a client cannot pin a half-sent message's memory. Default 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub message_timeout: Duration,
    /// Connections the kernel may queue before they are accepted (SYNs beyond it are dropped
    /// during a storm). Default 4096 (capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Most open WebSocket connections (past their handshake). More → 503 with Retry-After.
    /// Default 10 000.
    pub max_connections: usize,
    /// Most handshakes in progress (accepted, request head not yet complete), a pool of their own
    /// so that sockets that never send cannot take the connection slots. When it is full, the
    /// oldest handshake that has not sent a byte is dropped (408) to make room; when every one has
    /// sent something, the new connection gets 503. Default 1024.
    pub max_handshakes: usize,
    /// Most of those handshakes one client address (IPv4 address, IPv6 /64) may hold; past it,
    /// its own oldest silent one is dropped (408), or the newcomer gets 503 if all of its are
    /// sending. Default 256 (a burst of connections from behind one NAT gets in).
    /// When the pool is full, the address holding the most handshakes gives up its oldest silent one.
    pub max_handshakes_per_address: usize,
    /// Most frames queued for one connection's writer. Default 256.
    pub outbound_queue_frames: usize,
    /// Most payload bytes queued for one connection's writer; the cap on memory a slow reader can
    /// pin. A sender that finds it full waits (its own replies) or closes the slow target with 1013
    /// (fan-out). Default 4 MiB (one larger message still passes, alone).
    #[serde(deserialize_with = "de_size")]
    pub outbound_queue_bytes: usize,
    /// Bytes all connections together may hold in read buffers, messages being assembled,
    /// outbound queues and events waiting at plugins. Past three quarters of it, connections
    /// holding 256 KiB or more stop reading; past all of it they are closed with 1013. Default
    /// 1 GiB.
    #[serde(deserialize_with = "de_size")]
    pub memory_budget: usize,
    /// On SIGINT/SIGTERM, how long open connections get to finish their close handshake. Default 5 s.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 16 << 20,
            max_head_size: 8 << 10,
            max_headers: 100,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            close_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            message_timeout: Duration::from_secs(60),
            listen_backlog: 4096,
            memory_budget: 1 << 30,
            max_connections: 10_000,
            max_handshakes: 1024,
            max_handshakes_per_address: 256,
            outbound_queue_frames: 256,
            outbound_queue_bytes: 4 << 20,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// One WebSocket route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The path, e.g. "/chat" (matched without the query).
    pub path: String,
    /// A built-in route kind: "echo". Exactly one of `kind` and `plugin` is set.
    #[serde(default)]
    pub kind: Option<RouteKind>,
    /// A plugin component (`.wasm`), relative to the config file's directory.
    #[serde(default)]
    pub plugin: Option<PathBuf>,
    /// Plugin instances serving the route; connections are pinned to one by id. Default 1.
    #[serde(default = "one")]
    pub instances: usize,
    /// Subprotocols this route speaks, in preference order: the first one the client offers is
    /// chosen (for a plugin route, when the plugin itself picks none).
    #[serde(default)]
    pub subprotocols: Vec<String>,
    /// The plugin's sandbox limits.
    #[serde(default)]
    pub sandbox: crate::plugin::SandboxLimits,
    /// What one connection may use of the route: message and byte rates, a share of the
    /// plugin's time (`[routes.connection]`).
    #[serde(default)]
    pub connection: crate::server::fairness::ConnectionLimits,
    /// When a stateful plugin's state is checkpointed for recovery after a trap
    /// (`[routes.checkpoint]`).
    #[serde(default)]
    pub checkpoint: crate::plugin::Checkpoints,
    /// permessage-deflate (RFC 7692) for this route (`[routes.deflate]`; off without the table).
    #[serde(default)]
    pub deflate: Option<DeflateSettings>,
    /// For development: the reason a plugin failed (its trap and stderr, or the contract rule it
    /// broke) goes into the 1011 close reason and the 500 body the client gets. Default false:
    /// clients then see only "plugin error".
    #[serde(default)]
    pub dev: bool,
    /// An instance that has had no event for this long is snapshotted (its `state`) and dropped;
    /// its connections stay open, and the next event restores a fresh instance first. Default
    /// "0s": never. Only for plugins that export `state`.
    #[serde(default, deserialize_with = "de_duration")]
    pub hibernate_after: Duration,
    /// What the plugin may use beyond the sandbox (contract 0.2.0: timers, attachments;
    /// `[routes.grants]`): nothing unless granted.
    #[serde(default)]
    pub grants: crate::plugin::platform::Grants,
    /// What the route keeps of its topics: history for recovery, presence
    /// (`[routes.topics]`; nothing unless said).
    #[serde(default)]
    pub topics: crate::topics::TopicSettings,
}

fn one() -> usize {
    1
}

/// `tls = { cert = "...", key = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[routes.deflate]`: compression of messages with permessage-deflate, for clients that offer it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeflateSettings {
    /// Default true (the table turns it on); `false` turns it off without removing the table.
    pub enabled: bool,
    /// Messages smaller than this are sent uncompressed. Default 1KiB.
    #[serde(deserialize_with = "de_size")]
    pub threshold: usize,
    /// The largest window the server compresses with, as a power of two: 9 to 15. Default 15.
    pub server_max_window_bits: u8,
    /// The largest window the server lets clients compress with (when they say they can be
    /// limited): 9 to 15. Default 15. A smaller one saves the server memory per connection.
    pub client_max_window_bits: u8,
    /// Whether the server keeps its compression context from one message to the next (better
    /// ratios for similar messages, about 2^(w+2) + 128 KiB held per connection). Default false.
    pub server_context_takeover: bool,
}

impl Default for DeflateSettings {
    fn default() -> Self {
        let protocol = crate::protocol::deflate::DeflateConfig::default();
        Self {
            enabled: true,
            threshold: protocol.threshold,
            server_max_window_bits: protocol.server_max_window_bits,
            client_max_window_bits: protocol.client_max_window_bits,
            server_context_takeover: protocol.server_context_takeover,
        }
    }
}

impl DeflateSettings {
    /// What the handshake may agree to, when enabled.
    pub fn config(&self) -> Option<crate::protocol::deflate::DeflateConfig> {
        self.enabled.then_some(crate::protocol::deflate::DeflateConfig {
            threshold: self.threshold,
            server_max_window_bits: self.server_max_window_bits,
            client_max_window_bits: self.client_max_window_bits,
            server_context_takeover: self.server_context_takeover,
        })
    }
}

/// The built-in route kinds (native, no Wasm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// Echoes every message back to its sender.
    Echo,
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Echo => f.write_str("echo"),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Config {
    /// Reads and checks a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { source_name: name.clone(), message: format!("cannot read: {e}") })?;
        // Absolute, so that every path resolved from it reads the same from anywhere.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = std::path::absolute(&base).unwrap_or(base);
        Self::parse(&text, &name, base)
    }

    /// The embedded default config. It names only builtins (see [`crate::builtin`]), so the binary
    /// needs no file beside it; its base directory is the working directory.
    pub fn embedded_default() -> Self {
        let base = std::env::current_dir().unwrap_or_default();
        Self::parse(DEFAULT_CONFIG, "embedded default config", base).expect("the embedded default config is valid")
    }

    /// A config with default limits and no routes (for `--route` on the command line).
    pub fn empty() -> Self {
        Self::parse("", "command line", std::env::current_dir().unwrap_or_default()).expect("empty config is valid")
    }

    /// Parses and checks config text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str, base_dir: PathBuf) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError { source_name: source_name.to_owned(), message };
        let mut config: Config = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        config.base_dir = base_dir;
        config.source_name = source_name.to_owned();
        config.route_lines = config.routes.iter().map(|r| line_of(text, r.span().start)).collect();
        config.check().map_err(|(span, msg)| match span {
            Some(span) => err(format!("line {}: {msg}", line_of(text, span.start))),
            None => err(msg),
        })?;
        Ok(config)
    }

    /// Adds a route from the command line: `PATH=KIND` or `PATH=FILE.wasm`.
    pub fn add_route_arg(&mut self, arg: &str) -> Result<(), ConfigError> {
        let err = |message: String| ConfigError { source_name: format!("--route {arg}"), message };
        let (path, target) = arg
            .split_once('=')
            .ok_or_else(|| err("expected PATH=KIND or PATH=FILE.wasm, e.g. /chat=chat.wasm".into()))?;
        let (kind, plugin) = match target {
            "echo" => (Some(RouteKind::Echo), None),
            file if file.ends_with(".wasm") => {
                let cwd = std::env::current_dir().unwrap_or_default();
                (None, Some(cwd.join(file)))
            }
            other => return Err(err(format!("unknown route kind {other:?} (known: echo, or a .wasm plugin file)"))),
        };
        let route = RouteConfig {
            path: path.to_owned(),
            kind,
            plugin,
            instances: 1,
            subprotocols: Vec::new(),
            sandbox: Default::default(),
            grants: Default::default(),
            topics: Default::default(),
            hibernate_after: Duration::ZERO,
            connection: Default::default(),
            checkpoint: Default::default(),
            deflate: None,
            dev: false,
        };
        self.routes.push(Spanned::new(0..0, route));
        self.route_lines.push(0);
        self.check().map_err(|(_, msg)| err(msg))
    }

    /// The compile cache directory in effect, if the cache is on.
    pub fn effective_cache_dir(&self) -> Option<PathBuf> {
        if !self.compile_cache {
            return None;
        }
        match &self.cache_dir {
            Some(dir) => Some(self.resolve(dir)),
            None => crate::plugin::engine::default_cache_dir(),
        }
    }

    /// Where key-value stores live.
    pub fn effective_data_dir(&self) -> crate::storage::Location {
        match &self.data_dir {
            Some(dir) if dir.as_os_str() == "memory" => crate::storage::Location::Memory,
            Some(dir) => crate::storage::Location::Dir(self.resolve(dir)),
            None => crate::storage::Location::Dir(crate::storage::default_data_dir()),
        }
    }

    /// Where route `index` was configured: "FILE line N", or the command line.
    pub fn route_origin(&self, index: usize) -> String {
        match self.route_lines.get(index) {
            Some(&line) if line > 0 => format!("{} line {line}", self.source_name),
            _ => "the command line".to_owned(),
        }
    }

    /// Resolves a path from this config relative to its directory.
    /// A builtin (`builtin:NAME`) stays as it is.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || crate::builtin::name_of(path).is_some() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    fn check(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let l = &self.limits;
        for (name, value) in [
            ("max_frame_size", l.max_frame_size),
            ("max_message_size", l.max_message_size),
            ("max_head_size", l.max_head_size),
            ("max_headers", l.max_headers),
            ("max_connections", l.max_connections),
            ("max_handshakes", l.max_handshakes),
            ("max_handshakes_per_address", l.max_handshakes_per_address),
            ("outbound_queue_frames", l.outbound_queue_frames),
            ("outbound_queue_bytes", l.outbound_queue_bytes),
            ("memory_budget", l.memory_budget),
        ] {
            if value == 0 {
                return Err((None, format!("limits.{name} must be greater than 0")));
            }
        }
        if l.listen_backlog == 0 {
            return Err((None, "limits.listen_backlog must be greater than 0".into()));
        }
        for (name, value) in [
            ("handshake_timeout", l.handshake_timeout),
            ("ping_interval", l.ping_interval),
            ("idle_timeout", l.idle_timeout),
            ("close_timeout", l.close_timeout),
            ("write_timeout", l.write_timeout),
            ("message_timeout", l.message_timeout),
            ("shutdown_timeout", l.shutdown_timeout),
        ] {
            if value.is_zero() {
                return Err((None, format!("limits.{name} must be longer than 0")));
            }
        }
        if let Some(name) = self.static_dir.as_deref().and_then(crate::builtin::name_of)
            && name != crate::builtin::DEMO_PAGE
        {
            let known = format!("{}{}", crate::builtin::PREFIX, crate::builtin::DEMO_PAGE);
            return Err((
                None,
                format!("static_dir: there is no {}{name} (built in: {known})", crate::builtin::PREFIX),
            ));
        }
        if l.max_frame_size > l.max_message_size {
            return Err((None, "limits.max_frame_size must not exceed limits.max_message_size".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for route in &self.routes {
            let span = Some(route.span());
            let r = route.get_ref();
            if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
                return Err((span, format!("route path {:?} must start with '/' and hold no query", r.path)));
            }
            if !seen.insert(r.path.as_str()) {
                return Err((span, format!("route path {:?} is defined twice", r.path)));
            }
            if r.kind.is_some() == r.plugin.is_some() {
                return Err((
                    span,
                    format!("route {:?} needs exactly one of `kind` (\"echo\") and `plugin` (a .wasm file)", r.path),
                ));
            }
            if r.instances == 0 || r.instances > 64 {
                return Err((span, format!("route {:?}: instances must be 1 to 64", r.path)));
            }
            let sb = &r.sandbox;
            if sb.memory < (1 << 20) || sb.cpu_deadline.is_zero() || sb.max_actions == 0 {
                return Err((
                    span,
                    format!(
                        "route {:?}: sandbox memory must be at least 1MiB, cpu_deadline and max_actions above 0",
                        r.path
                    ),
                ));
            }
            if let Some(d) = &r.deflate {
                let bits = crate::protocol::deflate::WINDOW_BITS;
                for (name, value) in [
                    ("server_max_window_bits", d.server_max_window_bits),
                    ("client_max_window_bits", d.client_max_window_bits),
                ] {
                    if !bits.contains(&value) {
                        return Err((span, format!("route {:?}: deflate.{name} must be 9 to 15, not {value}", r.path)));
                    }
                }
            }
            if let Err(e) = r.topics.check() {
                return Err((span, format!("route {:?}: topics: {e}", r.path)));
            }
            if let Err(e) = r.connection.check() {
                return Err((span, format!("route {:?}: {e}", r.path)));
            }
            if let Some(bad) = r.subprotocols.iter().find(|p| !crate::protocol::handshake::is_token(p)) {
                return Err((span, format!("route {:?}: subprotocol {bad:?} is not a valid token", r.path)));
            }
        }
        Ok(())
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A size: an integer of bytes, or a string like "64KiB", "16MiB", "1GiB", "512B".
pub(crate) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => usize::try_from(n).map_err(serde::de::Error::custom),
        Raw::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// The forms a size takes, for error messages.
const SIZE_FORMS: &str = "a number of bytes, or a string like \"512B\", \"64KiB\", \"16MiB\", \"1GiB\"";

/// A size string: digits and a binary unit, nothing between them. "KB", "MB" and "GB" are refused
/// rather than guessed (10^3 or 2^10?).
fn parse_size(s: &str) -> Result<usize, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let invalid = || format!("invalid size {s:?}: use {SIZE_FORMS}");
    let n: usize = num.parse().map_err(|_| invalid())?;
    let mult = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "K" | "KB" | "kB" | "k" | "M" | "MB" | "G" | "GB" => {
            let binary = format!("{}iB", unit.trim_end_matches('B').to_uppercase());
            return Err(format!(
                "ambiguous size {s:?}: {unit} could mean powers of 10 or of 2; write \"{n}{binary}\" (powers of 2) or a number of bytes"
            ));
        }
        _ => return Err(invalid()),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// A duration: a string like "250ms", "10s", "2m", or an integer of milliseconds.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Millis(n) => Ok(Duration::from_millis(n)),
        Raw::Text(s) => parse_duration(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?}: use a number of milliseconds, or digits and a unit with nothing between, like \"250ms\", \"10s\", \"2m\""
            ))
        }),
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", PathBuf::new())
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert!(!c.routes.is_empty());
    }

    #[test]
    fn sample_config_is_valid() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/wsplug.toml");
        let c = Config::from_file(&path).unwrap();
        assert!(c.routes.iter().any(|r| r.get_ref().path == "/chat"));
        assert!(c.resolve(c.static_dir.as_ref().unwrap()).join("index.html").exists());
    }

    #[test]
    fn sizes_and_durations_accept_units() {
        let c = parse("[limits]\nmax_frame_size = \"64KiB\"\nmax_message_size = 1048576\nhandshake_timeout = \"250ms\"\nidle_timeout = \"2m\"\n").unwrap();
        assert_eq!(c.limits.max_frame_size, 64 << 10);
        assert_eq!(c.limits.max_message_size, 1 << 20);
        assert_eq!(c.limits.handshake_timeout, Duration::from_millis(250));
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let e = parse("listen = \"127.0.0.1:1\"\n[limits]\nmax_frame_sise = 10\n").unwrap_err().to_string();
        assert!(e.starts_with("test.toml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("max_frame_sise"), "{e}");
    }

    #[test]
    fn bad_value_names_the_line() {
        let e = parse("\n\n[limits]\nhandshake_timeout = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn semantic_route_errors_name_the_line() {
        let e = parse("[[routes]]\npath = \"/a\"\nkind = \"echo\"\n\n[[routes]]\npath = \"/a\"\nkind = \"echo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("defined twice"), "{e}");
        let e = parse("[[routes]]\npath = \"nope\"\nkind = \"echo\"\n").unwrap_err().to_string();
        assert!(e.contains("must start with '/'"), "{e}");
        let e = parse("[[routes]]\npath = \"/x\"\nkind = \"mirror\"\n").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("mirror"), "{e}");
    }

    #[test]
    fn zero_limits_are_refused() {
        let e = parse("[limits]\nmax_connections = 0\n").unwrap_err().to_string();
        assert!(e.contains("max_connections"), "{e}");
    }

    #[test]
    fn ambiguous_units_are_refused_with_the_accepted_forms() {
        let e = parse("[limits]\nmax_message_size = \"64MB\"\n").unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("\"64MiB\"") && e.contains("line 2"), "{e}");
        let e = parse("[limits]\nmax_message_size = \"64 MiB\"\n").unwrap_err().to_string();
        assert!(e.contains("invalid size") && e.contains("\"16MiB\""), "{e}");
        let e = parse("[limits]\nidle_timeout = \"1 s\"\n").unwrap_err().to_string();
        assert!(e.contains("invalid duration") && e.contains("\"10s\""), "{e}");
        let e = parse("[limits]\nidle_timeout = \"1h\"\n").unwrap_err().to_string();
        assert!(e.contains("invalid duration"), "{e}");
        assert_eq!(
            parse("[limits]\nmax_message_size = \"2KiB\"\nmax_frame_size = 1024\n").unwrap().limits.max_message_size,
            2048
        );
    }

    #[test]
    fn zero_timeouts_are_refused() {
        for key in [
            "handshake_timeout",
            "ping_interval",
            "idle_timeout",
            "close_timeout",
            "write_timeout",
            "message_timeout",
            "shutdown_timeout",
        ] {
            for zero in ["0", "\"0ms\"", "\"0s\""] {
                let e = parse(&format!("[limits]\n{key} = {zero}\n")).unwrap_err().to_string();
                assert!(e.contains(key) && e.contains("longer than 0"), "{key} = {zero}: {e}");
            }
        }
        let route = "[[routes]]\npath = \"/p\"\nplugin = \"p.wasm\"\n";
        let e = parse(&format!("{route}[routes.sandbox]\ncpu_deadline = \"0ms\"\n")).unwrap_err().to_string();
        assert!(e.contains("cpu_deadline"), "{e}");
        let e = parse(&format!("{route}[routes.connection]\ncpu_window = \"0s\"\n")).unwrap_err().to_string();
        assert!(e.contains("cpu_window"), "{e}");
    }

    #[test]
    fn route_args() {
        let mut c = Config::empty();
        c.add_route_arg("/e=echo").unwrap();
        assert_eq!(c.routes[0].get_ref().path, "/e");
        assert!(c.add_route_arg("/e=echo").unwrap_err().to_string().contains("twice"));
        assert!(c.add_route_arg("nope").is_err());
        assert!(c.add_route_arg("/f=mirror").unwrap_err().to_string().contains("mirror"));
    }
}
