//! The topics engine: what a route's topics are beyond their local subscribers. History with
//! offsets and recovery, presence, and the crossing of topic messages and broadcasts between the
//! nodes of a cluster.
//!
//! Two engines stand behind one boundary (the hub in `server/hub.rs` calls them):
//! - **in-memory** (the default, one node): offsets are assigned here, history is this node's
//!   ([`history`]), presence is this node's connections ([`presence`]);
//! - **NATS** (`[cluster] nats = "..."`, [`nats`]): a node subscribes on the broker only to the
//!   topics its own connections want, publishes what its plugins publish, and delivers what comes
//!   from the broker to its own connections. History lives in the broker (a JetStream stream per
//!   route; offsets are its sequence numbers), presence is gossiped between nodes.
//!
//! A route with history (`[routes.topics] history = N`) delivers each topic message in an envelope
//! that carries its offset, and a client reconnecting with `?recover=TOPIC:EPOCH:OFFSET` gets what
//! it missed when its connection is subscribed to that topic again (see the README, "Topics").

pub mod history;
pub mod nats;
pub mod presence;

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

pub use history::{History, HistoryLimits, Recovery};
pub use presence::PresenceMode;

/// A position in a topic's history: the epoch (changes when the history is reset) and the offset
/// of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// `[routes.topics]`: what a route keeps of its topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicSettings {
    /// Messages kept per topic for recovery (0: no history, topic messages go out as published).
    pub history: usize,
    /// How long a message is kept (zero: as long as the count allows).
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub history_ttl: Duration,
    /// Bytes of history a node holds for the route, across topics.
    #[serde(deserialize_with = "crate::config::de_size")]
    pub history_bytes: usize,
    /// Topics whose history a node keeps for the route.
    pub history_topics: usize,
    /// "off", "count" (how many are subscribed) or "members" (who).
    pub presence: PresenceMode,
    /// How often presence changes are sent to the plugin (and, in a cluster, to the other nodes).
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub presence_interval: Duration,
}

impl Default for TopicSettings {
    fn default() -> Self {
        Self {
            history: 0,
            history_ttl: Duration::ZERO,
            history_bytes: 64 << 20,
            history_topics: 10_000,
            presence: PresenceMode::Off,
            presence_interval: Duration::from_secs(1),
        }
    }
}

impl TopicSettings {
    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            size: self.history,
            ttl: self.history_ttl,
            bytes: self.history_bytes,
            topics: self.history_topics,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.history > 1_000_000 {
            return Err(format!("history = {} is more than 1000000 messages per topic", self.history));
        }
        if self.presence != PresenceMode::Off && self.presence_interval < Duration::from_millis(10) {
            return Err("presence_interval must be at least 10ms".into());
        }
        Ok(())
    }
}

/// The envelope a topic message goes out in on a route with history: a text frame holding
/// `{"topic":..,"offset":..,"epoch":..,"text":..}` (or `"binary"`, base64).
pub fn envelope(topic: &str, offset: u64, epoch: &str, text: Option<&str>, binary: &[u8]) -> String {
    let body = match text {
        Some(text) => format!("\"text\":{}", serde_json::Value::from(text)),
        None => format!("\"binary\":\"{}\"", base64::engine::general_purpose::STANDARD.encode(binary)),
    };
    format!(
        "{{\"topic\":{},\"offset\":{offset},\"epoch\":{},{body}}}",
        serde_json::Value::from(topic),
        serde_json::Value::from(epoch)
    )
}

/// What a recovering client is told first: whether it gets every message it missed (which then
/// follow, in order), and the topic's position.
pub fn recovery_notice(topic: &str, at: &Position, missed: Result<usize, &str>) -> String {
    let head = format!(
        "{{\"topic\":{},\"epoch\":{},\"offset\":{}",
        serde_json::Value::from(topic),
        serde_json::Value::from(at.epoch.as_str()),
        at.offset
    );
    match missed {
        Ok(n) => format!("{head},\"recovered\":true,\"missed\":{n}}}"),
        Err(why) => format!("{head},\"recovered\":false,\"reason\":{}}}", serde_json::Value::from(why)),
    }
}

/// The positions a client asks to recover from: every `recover=TOPIC:EPOCH:OFFSET` of the request
/// target's query (percent-decoded; the topic may itself hold ':'). Malformed ones are ignored.
pub fn recovery_requests(target: &str) -> Vec<(String, Position)> {
    let Some((_, query)) = target.split_once('?') else { return Vec::new() };
    query
        .split('&')
        .filter_map(|pair| {
            let value = pair.strip_prefix("recover=")?;
            let value = crate::protocol::handshake::percent_decode(value, true)?;
            let mut parts = value.rsplitn(3, ':');
            let offset = parts.next()?.parse().ok()?;
            let epoch = parts.next()?.to_owned();
            let topic = parts.next()?.to_owned();
            Some((topic, Position { epoch, offset }))
        })
        .collect()
}

/// A fresh epoch: unique enough that two lives of a history never share one.
pub fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40) ^ (nanos >> 64) as u64;
    format!("{:x}", mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_requests_parse_the_query() {
        let got =
            recovery_requests("/chat?nick=a&recover=room%3A1:ab12:7&recover=lobby:e:0&recover=bad&recover=x:e:NaN");
        assert_eq!(
            got,
            vec![
                ("room:1".into(), Position { epoch: "ab12".into(), offset: 7 }),
                ("lobby".into(), Position { epoch: "e".into(), offset: 0 }),
            ]
        );
        assert!(recovery_requests("/chat").is_empty());
    }

    #[test]
    fn envelopes_are_json() {
        let text: serde_json::Value = serde_json::from_str(&envelope("r\"1", 5, "e", Some("hi \"x\""), b"")).unwrap();
        assert_eq!(text, serde_json::json!({"topic": "r\"1", "offset": 5, "epoch": "e", "text": "hi \"x\""}));
        let bin: serde_json::Value = serde_json::from_str(&envelope("r", 6, "e", None, &[0, 255])).unwrap();
        assert_eq!(bin["binary"], "AP8=");
        let at = Position { epoch: "e".into(), offset: 9 };
        let ok: serde_json::Value = serde_json::from_str(&recovery_notice("r", &at, Ok(3))).unwrap();
        assert_eq!(ok, serde_json::json!({"topic": "r", "epoch": "e", "offset": 9, "recovered": true, "missed": 3}));
        let no: serde_json::Value = serde_json::from_str(&recovery_notice("r", &at, Err("gone"))).unwrap();
        assert_eq!(no["recovered"], false);
        assert_eq!(no["reason"], "gone");
    }
}
