//! The server-wide memory budget, on top of each connection's own bounds (an overload manager in
//! the manner of Envoy's).
//!
//! Every connection accounts what it holds: its read buffer, the message it is assembling, its
//! outbound queue and its events waiting at a plugin ([`Budget::reaccount`], at every turn of its
//! loop). When the sum passes three quarters of `limits.memory_budget`, connections holding a
//! large share (at least [`LARGE_HOLDER`]) stop reading until the pressure falls; past the whole
//! budget, such connections are closed with 1013 ("try again later"). Connections holding little
//! (the ordinary chat or echo client) are served throughout, so no set of clients can take the
//! machine or starve the others.
//!
//! Shared broadcast frames are counted in every queue that holds them, so the figure errs on the
//! high side under large fan-out.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A connection holding at least this much is a large holder: the first to pause and be shed.
pub const LARGE_HOLDER: usize = 256 << 10;

/// What the budget allows a connection right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    /// Read as usual.
    Normal,
    /// Stop reading for a while (the connection is a large holder and memory is tight).
    Pause,
    /// Close with 1013: the budget is exceeded and this connection is one of its large holders.
    Shed,
}

/// Bytes held by all connections, against the limit.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self { used: AtomicUsize::new(0), limit }
    }

    /// Bytes accounted across the server.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A connection's holding went from `old` to `new` bytes.
    pub fn reaccount(&self, old: usize, new: usize) {
        if new > old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
        } else if old > new {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    /// What a connection holding `held` bytes may do.
    pub fn pressure(&self, held: usize) -> Pressure {
        if held < LARGE_HOLDER {
            return Pressure::Normal;
        }
        let used = self.used();
        if used > self.limit {
            Pressure::Shed
        } else if used > self.limit / 4 * 3 {
            Pressure::Pause
        } else {
            Pressure::Normal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_holders_are_never_paused_and_large_ones_are_shed_past_the_limit() {
        let budget = Budget::new(4 << 20);
        budget.reaccount(0, 2 << 20);
        assert_eq!(budget.pressure(LARGE_HOLDER), Pressure::Normal);
        budget.reaccount(2 << 20, (3 << 20) + 1);
        assert_eq!(budget.pressure(LARGE_HOLDER), Pressure::Pause);
        assert_eq!(budget.pressure(LARGE_HOLDER - 1), Pressure::Normal);
        budget.reaccount((3 << 20) + 1, (4 << 20) + 1);
        assert_eq!(budget.pressure(1 << 20), Pressure::Shed);
        assert_eq!(budget.pressure(100), Pressure::Normal);
        budget.reaccount((4 << 20) + 1, 0);
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.pressure(1 << 20), Pressure::Normal);
    }
}
