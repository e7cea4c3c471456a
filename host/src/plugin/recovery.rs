//! How a plugin instance recovers from failures without taking its route down: checkpoints of its
//! state, a backoff on rebuilds that keep failing, and a circuit breaker for plugins that keep
//! trapping. [`super::route`] applies them; this file owns the settings and the bookkeeping.
//!
//! - **Checkpoints** (`[routes.checkpoint]`): a plugin that exports `state` is snapshotted every
//!   `every` (when it had events since the last one) and after every `every_events` events, by a
//!   task of its own rather than by the connection whose event it was. After a trap the new
//!   instance restores the last checkpoint, so a trap (a memory-cap trap included) costs the
//!   events since that checkpoint, not the whole state.
//! - **Rebuild backoff**: when even instantiating the plugin fails, the next attempt waits
//!   100 ms, doubling up to 30 s; events meanwhile fail at once (their connections close with
//!   1011) instead of each paying for a doomed instantiation.
//! - **Circuit breaker**: [`BREAKER_FAILURES`] failed calls within [`BREAKER_WINDOW`] open the
//!   instance's breaker for a backoff of 1 s, doubling (up to 60 s) while it keeps failing soon
//!   after reopening. While open, new connections get 503 with `Retry-After`; open ones are
//!   still served. It closes by itself when the backoff ends.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// `[routes.checkpoint]`: when a stateful plugin's state is snapshotted for recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checkpoints {
    /// A checkpoint this often while events arrive ("0s" turns the timer off). Default 5 s.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub every: Duration,
    /// A checkpoint after this many events (0 turns it off). Default 10 000.
    pub every_events: u64,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self { every: Duration::from_secs(5), every_events: 10_000 }
    }
}

/// Failed calls within [`BREAKER_WINDOW`] that open the breaker.
pub const BREAKER_FAILURES: usize = 5;
/// The window the failures are counted in.
pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
const BREAKER_FIRST: Duration = Duration::from_secs(1);
const BREAKER_MAX: Duration = Duration::from_secs(60);
const REBUILD_FIRST: Duration = Duration::from_millis(100);
const REBUILD_MAX: Duration = Duration::from_secs(30);

/// One instance's record of failures: its circuit breaker and its rebuild backoff.
#[derive(Debug, Default)]
pub struct Health {
    /// When the recent failures happened (at most [`BREAKER_FAILURES`]).
    failures: Vec<Instant>,
    /// The breaker is open until then.
    open_until: Option<Instant>,
    /// How long it opened for last time.
    backoff: Duration,
    /// Instantiation failed: no new attempt before then.
    rebuild_after: Option<Instant>,
    rebuild_backoff: Duration,
}

impl Health {
    /// Records a failed call; returns how long the breaker opens for if this opens it.
    pub fn failed(&mut self, now: Instant) -> Option<Duration> {
        self.failures.retain(|t| now.saturating_duration_since(*t) < BREAKER_WINDOW);
        self.failures.push(now);
        if self.failures.len() < BREAKER_FAILURES {
            return None;
        }
        self.failures.clear();
        // Failing again soon after the last opening: twice as long; else from the start.
        let recently_open = self.open_until.is_some_and(|until| now.saturating_duration_since(until) < BREAKER_WINDOW);
        self.backoff = if recently_open { (self.backoff * 2).min(BREAKER_MAX) } else { BREAKER_FIRST };
        self.open_until = Some(now + self.backoff);
        Some(self.backoff)
    }

    /// How long the breaker stays open, if it is.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        self.open_until.filter(|until| *until > now).map(|until| until - now)
    }

    /// Instantiation failed: back off before the next attempt.
    pub fn rebuild_failed(&mut self, now: Instant) -> Duration {
        self.rebuild_backoff =
            if self.rebuild_backoff.is_zero() { REBUILD_FIRST } else { (self.rebuild_backoff * 2).min(REBUILD_MAX) };
        self.rebuild_after = Some(now + self.rebuild_backoff);
        self.rebuild_backoff
    }

    /// Instantiation succeeded.
    pub fn rebuilt(&mut self) {
        self.rebuild_after = None;
        self.rebuild_backoff = Duration::ZERO;
    }

    /// How long until the next instantiation may be tried, if it must wait.
    pub fn rebuild_wait(&self, now: Instant) -> Option<Duration> {
        self.rebuild_after.filter(|at| *at > now).map(|at| at - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_on_the_fifth_failure_in_the_window_and_backs_off_while_failures_go_on() {
        let t0 = Instant::now();
        let mut h = Health::default();
        for i in 0..4 {
            assert_eq!(h.failed(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(h.open_for(t0 + Duration::from_secs(4)), None);
        assert_eq!(h.failed(t0 + Duration::from_secs(4)), Some(BREAKER_FIRST));
        assert_eq!(h.open_for(t0 + Duration::from_secs(4)), Some(BREAKER_FIRST));
        assert_eq!(h.open_for(t0 + Duration::from_secs(5)), None, "closes by itself");
        // Failing on right after: open twice as long.
        let t1 = t0 + Duration::from_secs(6);
        for _ in 0..4 {
            assert_eq!(h.failed(t1), None);
        }
        assert_eq!(h.failed(t1), Some(BREAKER_FIRST * 2));
        // Failures spread wider than the window never open it.
        let mut calm = Health::default();
        for i in 0..20 {
            assert_eq!(calm.failed(t0 + BREAKER_WINDOW / 2 * i), None);
        }
        // Long after: back to the first backoff.
        let t2 = t1 + Duration::from_secs(600);
        for _ in 0..4 {
            h.failed(t2);
        }
        assert_eq!(h.failed(t2), Some(BREAKER_FIRST));
    }

    #[test]
    fn rebuilds_back_off_exponentially_until_one_succeeds() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.rebuild_failed(t0), REBUILD_FIRST);
        assert_eq!(h.rebuild_failed(t0), REBUILD_FIRST * 2);
        assert_eq!(h.rebuild_wait(t0), Some(REBUILD_FIRST * 2));
        for _ in 0..20 {
            h.rebuild_failed(t0);
        }
        assert_eq!(h.rebuild_wait(t0), Some(REBUILD_MAX));
        h.rebuilt();
        assert_eq!(h.rebuild_wait(t0), None);
        assert_eq!(h.rebuild_failed(t0), REBUILD_FIRST);
    }
}
