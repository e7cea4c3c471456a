//! The guard plugin: an echo behind a token check and a per-connection rate limit.
//!
//! * A connection must carry a valid token in its query (`/guarded?token=let-me-in`), or it is
//!   refused with 401 and the body `missing or invalid token`. The valid tokens are the fixed
//!   list [`TOKENS`] — an example only: a real deployment would not keep secrets in the plugin's
//!   source. Tokens are compared in constant time. Resumed connections are checked again (and
//!   closed with 1008 by the host if their token is no longer valid).
//! * Each connection may send [`RATE`] messages a second, with bursts of up to [`BURST`] (a token
//!   bucket, timed with `std::time::Instant`, i.e. WASI's monotonic clock). A connection that
//!   sends faster is closed with 1008 and the reason `rate limit exceeded`.
//! * Every message that passes is echoed back, text as text and binary as binary.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use wsplug_sdk::{Action, Admission, Connection, ConnectionId, Message, Plugin, log};

/// The tokens that open the door (an example list).
pub const TOKENS: &[&str] = &["let-me-in", "open-sesame"];
/// Messages a second a connection may send, on average.
pub const RATE: f64 = 10.0;
/// The most messages a connection may send at once, after a quiet period.
pub const BURST: f64 = 20.0;
/// The close code for a connection over its rate (policy violation).
const CLOSE_POLICY: u16 = 1008;

/// A token bucket: holds up to [`BURST`] tokens, refilled at [`RATE`] a second; each message
/// takes one.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Bucket { tokens: BURST, last: now }
    }

    /// Takes a token for a message arriving at `now`; false when there is none.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RATE).min(BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

thread_local! {
    static BUCKETS: RefCell<BTreeMap<ConnectionId, Bucket>> = const { RefCell::new(BTreeMap::new()) };
}

/// Compares two byte strings in time that depends only on their lengths, not on where they
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Whether `token` is one of [`TOKENS`]; every entry is compared, whatever matches.
fn token_is_valid(token: &str) -> bool {
    TOKENS.iter().fold(false, |found, valid| found | constant_time_eq(token.as_bytes(), valid.as_bytes()))
}

/// The plugin.
struct Guard;

impl Plugin for Guard {
    fn on_open(conn: Connection) -> Admission {
        let valid = conn.query_param("token").is_some_and(|t| token_is_valid(&t));
        if !valid {
            log::info(&format!("refused {} (token)", conn.remote_addr));
            return Admission::reject(401, "missing or invalid token");
        }
        BUCKETS.with_borrow_mut(|buckets| buckets.insert(conn.id, Bucket::full(Instant::now())));
        Admission::accept()
    }

    fn on_message(conn: ConnectionId, msg: Message) -> Vec<Action> {
        let now = Instant::now();
        let allowed = BUCKETS.with_borrow_mut(|buckets| {
            // A connection this instance did not see open (state lost) starts with a full bucket.
            buckets.entry(conn).or_insert_with(|| Bucket::full(now)).take(now)
        });
        if allowed {
            vec![Action::Reply(msg)]
        } else {
            log::warn(&format!("connection {conn} exceeded its rate limit"));
            vec![Action::close(CLOSE_POLICY, "rate limit exceeded")]
        }
    }

    fn on_close(conn: ConnectionId, _code: u16, _reason: String) -> Vec<Action> {
        BUCKETS.with_borrow_mut(|buckets| buckets.remove(&conn));
        Vec::new()
    }
}

wsplug_sdk::export_plugin!(Guard);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tokens() {
        assert!(token_is_valid("let-me-in"));
        assert!(token_is_valid("open-sesame"));
        assert!(!token_is_valid(""));
        assert!(!token_is_valid("let-me-i"));
        assert!(!token_is_valid("let-me-inn"));
        assert!(!token_is_valid("LET-ME-IN"));
    }

    #[test]
    fn admission() {
        let conn = |path: &str| Connection {
            id: 1,
            path: path.to_owned(),
            headers: Vec::new(),
            remote_addr: "127.0.0.1:1".to_owned(),
            protocols: Vec::new(),
            resumed: false,
        };
        assert_eq!(Guard::on_open(conn("/g?token=let-me-in")), Admission::accept());
        assert_eq!(Guard::on_open(conn("/g?token=let%2Dme%2Din")), Admission::accept());
        let refused = Admission::reject(401, "missing or invalid token");
        assert_eq!(Guard::on_open(conn("/g")), refused);
        assert_eq!(Guard::on_open(conn("/g?token=nope")), refused);
    }

    #[test]
    fn bucket() {
        let start = Instant::now();
        let mut bucket = Bucket::full(start);
        // A burst of 20 passes, the 21st does not.
        assert!((0..20).all(|_| bucket.take(start)));
        assert!(!bucket.take(start));
        // 10 a second: after 0.5 s, 5 more (the failed attempt took nothing).
        let later = start + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 5);
        // After a long pause the bucket is full again, not fuller.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| bucket.take(much_later)).count(), 20);
        // A steady 10 a second never runs dry.
        let mut bucket = Bucket::full(start);
        assert!((1..=1000).all(|i| bucket.take(start + Duration::from_millis(100 * i))));
    }

    #[test]
    fn over_the_limit_closes() {
        let mut actions = Vec::new();
        for _ in 0..40 {
            actions.extend(Guard::on_message(9, Message::text("x")));
        }
        let closes: Vec<_> = actions.iter().filter(|a| matches!(a, Action::Close(_))).collect();
        assert!(!closes.is_empty());
        assert_eq!(*closes[0], Action::close(1008, "rate limit exceeded"), "{actions:?}");
        assert_eq!(actions[0], Action::reply_text("x"));
    }
}
