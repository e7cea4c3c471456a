//! Per-connection budgets on a route (`[routes.connection]` in the config): a message rate, a
//! byte rate, and a share of the handler's time, so that no single client can take a route.
//!
//! - **Messages per second** (data messages and pings, each of which costs the server a call or a
//!   pong): a token bucket holding one second's worth. A message that finds it empty is dropped
//!   and the connection closed with 1008: flooding is abuse, not a burst.
//! - **Bytes per second** (everything read from the socket): a token bucket holding one second's
//!   worth. When it runs dry the connection stops reading until it refills, so the client is
//!   slowed to the rate by TCP back-pressure; nothing is dropped and nothing is closed.
//! - **Handler time** (plugin routes): the time the connection's events kept the route's plugin
//!   instance busy, decayed exponentially over `cpu_window`. Past `cpu_share` of the window the
//!   connection is throttled (no reading, so no events) until its use decays back to the share;
//!   the third time in a row that it crosses the share, without falling to half of it in between,
//!   it is closed with 1008.
//!
//! The state is boxed and made only when the route sets one of them, so connections on routes
//! without these limits pay a pointer. The message rate counts messages as they are decoded, so
//! a burst within one read is judged message by message.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// `[routes.connection]`: what one connection may use of its route. Every limit is off by
/// default: what is fair depends on the application (the example chat sets them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Most messages (and pings) a connection may send per second, with a burst of as many.
    /// Over it → the message is dropped and the connection closed with 1008. 0 = no limit
    /// (the default).
    pub messages_per_second: u32,
    /// Most bytes a connection may send per second, with a burst of as many ("1MiB" style
    /// strings allowed). Over it, the server stops reading from it until the budget refills
    /// (the client is slowed, not closed). 0 = no limit (the default).
    #[serde(deserialize_with = "crate::config::de_size")]
    pub bytes_per_second: usize,
    /// The share of its plugin instance's time one connection may take over `cpu_window`
    /// (plugin routes). Over it → throttled until back under; the third time in a row → close
    /// 1008. Default 1.0 (off: a single busy client on an otherwise idle route is not an abuser;
    /// set it where many clients share an instance).
    pub cpu_share: f64,
    /// The window of `cpu_share`. Default 10 s.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub cpu_window: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { messages_per_second: 0, bytes_per_second: 0, cpu_share: 1.0, cpu_window: Duration::from_secs(10) }
    }
}

impl ConnectionLimits {
    /// Why these limits are unusable, if they are.
    pub fn check(&self) -> Result<(), String> {
        if !(self.cpu_share > 0.0 && self.cpu_share <= 1.0) {
            return Err(format!("connection.cpu_share must be above 0 and at most 1 (got {})", self.cpu_share));
        }
        if self.cpu_window.is_zero() {
            return Err("connection.cpu_window must be longer than 0".into());
        }
        Ok(())
    }

    /// The per-connection state these limits need on a route, if any (`events`: the route has a
    /// handler whose time is counted).
    pub fn state(&self, events: bool, now: Instant) -> Option<Box<Fairness>> {
        let messages = (self.messages_per_second > 0).then(|| Bucket::new(f64::from(self.messages_per_second), now));
        let bytes = (self.bytes_per_second > 0).then(|| Bucket::new(self.bytes_per_second as f64, now));
        let cpu = (events && self.cpu_share < 1.0).then_some(CpuShare {
            window: self.cpu_window.as_secs_f64(),
            limit: self.cpu_share * self.cpu_window.as_secs_f64(),
            used: 0.0,
            last: now,
            strikes: 0,
            over: false,
        });
        (messages.is_some() || bytes.is_some() || cpu.is_some()).then(|| Box::new(Fairness { messages, bytes, cpu }))
    }
}

/// One connection's standing against its route's [`ConnectionLimits`].
#[derive(Debug)]
pub struct Fairness {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    cpu: Option<CpuShare>,
}

/// What a connection's handler time earned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Over its share: no reading until the share decays back.
    Throttled,
    /// Over its share for the third time in a row: close with 1008.
    Close,
}

impl Fairness {
    /// Takes one message from the message budget; false when it is spent (close 1008).
    pub fn allow_message(&mut self, now: Instant) -> bool {
        self.messages.as_mut().is_none_or(|b| b.take(1.0, now))
    }

    /// The most bytes the next read may take, under a byte rate.
    pub fn read_allowance(&mut self, now: Instant) -> Option<usize> {
        let bucket = self.bytes.as_mut()?;
        bucket.refill(now);
        Some(bucket.tokens.max(0.0) as usize)
    }

    /// Counts `n` bytes read.
    pub fn read(&mut self, n: usize, now: Instant) {
        if let Some(b) = &mut self.bytes {
            b.spend(n as f64, now);
        }
    }

    /// Counts `busy` of handler time spent on this connection's events.
    pub fn charge(&mut self, busy: Duration, now: Instant) -> Verdict {
        match &mut self.cpu {
            Some(cpu) => cpu.charge(busy.as_secs_f64(), now),
            None => Verdict::Fine,
        }
    }

    /// Over its share of the handler's time: no more of its events go to the handler (not even
    /// those already read) until this returns false.
    pub fn throttled(&mut self, now: Instant) -> bool {
        self.cpu.as_mut().is_some_and(|c| c.ready_at(now).is_some())
    }

    /// When reading may go on, if it must wait (the byte budget is spent or handler time is over
    /// its share).
    pub fn paused_until(&mut self, now: Instant) -> Option<Instant> {
        let bytes = self.bytes.as_mut().and_then(|b| b.ready_at(now));
        let cpu = self.cpu.as_mut().and_then(|c| c.ready_at(now));
        bytes.into_iter().chain(cpu).max()
    }
}

/// A token bucket holding one second's worth of its rate.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Self {
        Self { rate, tokens: rate, last: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many.
    fn take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }

    /// Takes `n` tokens, going into debt if need be.
    fn spend(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// When the debt is paid back, if there is one.
    fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        (self.tokens < 0.0).then(|| now + Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// Handler time used, decayed exponentially over the window.
#[derive(Debug)]
struct CpuShare {
    window: f64,
    /// `cpu_share × window`, in seconds.
    limit: f64,
    used: f64,
    last: Instant,
    /// Times in a row the share was crossed.
    strikes: u8,
    /// Over the share now (throttled).
    over: bool,
}

/// Crossing the share this many times in a row closes the connection.
const STRIKES: u8 = 3;

impl CpuShare {
    /// Lets the use decay to `now`; back under the share ends a crossing, and under half of it
    /// forgives the earlier ones.
    fn decay(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.used *= (-elapsed / self.window).exp();
        self.last = now;
        if self.used <= self.limit {
            self.over = false;
            if self.used < self.limit / 2.0 {
                self.strikes = 0;
            }
        }
    }

    fn charge(&mut self, busy: f64, now: Instant) -> Verdict {
        self.decay(now);
        self.used += busy;
        if self.used <= self.limit {
            return Verdict::Fine;
        }
        if !self.over {
            self.over = true;
            self.strikes += 1;
        }
        if self.strikes >= STRIKES { Verdict::Close } else { Verdict::Throttled }
    }

    fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        self.decay(now);
        if !self.over {
            return None;
        }
        // used × e^(−t/window) = limit  ⇒  t = window × ln(used / limit); a millisecond more
        // so that it is under the share then, rounding notwithstanding.
        let wait = self.window * (self.used / self.limit).ln();
        Some(now + Duration::from_secs_f64(wait.max(0.0) + 0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(messages: u32, bytes: usize) -> ConnectionLimits {
        ConnectionLimits { messages_per_second: messages, bytes_per_second: bytes, ..Default::default() }
    }

    #[test]
    fn nothing_is_made_for_a_route_without_limits() {
        assert!(ConnectionLimits::default().state(true, Instant::now()).is_none());
        let share = ConnectionLimits { cpu_share: 0.5, ..Default::default() };
        assert!(share.state(false, Instant::now()).is_none(), "native routes have no handler time");
        assert!(share.state(true, Instant::now()).is_some());
    }

    #[test]
    fn the_message_rate_allows_a_seconds_burst_then_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut f = limits(10, 0).state(false, t0).unwrap();
        assert!((0..10).all(|_| f.allow_message(t0)));
        assert!(!f.allow_message(t0), "the 11th message within the same instant is over the rate");
        assert!(f.allow_message(t0 + Duration::from_millis(100)), "a tenth of a second buys one");
        assert!(!f.allow_message(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn the_byte_rate_pauses_reading_until_the_debt_is_paid() {
        let t0 = Instant::now();
        let mut f = limits(0, 1000).state(false, t0).unwrap();
        f.read(1000, t0);
        assert_eq!(f.paused_until(t0), None, "a second's worth is the burst");
        f.read(500, t0);
        let until = f.paused_until(t0).expect("in debt");
        assert!((until - t0).as_millis().abs_diff(500) <= 1, "{:?}", until - t0);
        assert_eq!(f.paused_until(t0 + Duration::from_millis(501)), None);
    }

    #[test]
    fn handler_time_over_the_share_throttles_then_closes_on_the_third_crossing() {
        let t0 = Instant::now();
        let lim = ConnectionLimits { cpu_share: 0.1, cpu_window: Duration::from_secs(10), ..Default::default() };
        let mut f = lim.state(true, t0).unwrap();
        assert_eq!(f.charge(Duration::from_millis(900), t0), Verdict::Fine, "0.9 s of a 1 s allowance");
        assert_eq!(f.charge(Duration::from_millis(200), t0), Verdict::Throttled);
        let mut now = f.paused_until(t0).expect("throttled");
        assert!(now > t0 && now < t0 + Duration::from_secs(2), "{:?}", now - t0);
        for expected in [Verdict::Throttled, Verdict::Close] {
            assert_eq!(f.paused_until(now), None, "back under its share");
            assert_eq!(f.charge(Duration::from_millis(300), now), expected);
            now = f.paused_until(now).expect("throttled");
        }
    }

    #[test]
    fn a_connection_that_calms_down_starts_afresh() {
        let t0 = Instant::now();
        let lim = ConnectionLimits { cpu_share: 0.1, cpu_window: Duration::from_secs(10), ..Default::default() };
        let mut f = lim.state(true, t0).unwrap();
        for round in 0..5u32 {
            let now = t0 + Duration::from_secs(60) * round;
            assert_eq!(f.charge(Duration::from_millis(1100), now), Verdict::Throttled, "round {round}");
        }
    }
}
