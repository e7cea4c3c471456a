//! The pool of handshakes in progress: connections accepted whose request head is not complete.
//!
//! It is separate from the connection slots (`max_connections`, taken once a request asks for a
//! route), so that sockets that connect and never send cannot lock real clients out: when the
//! pool is full, the oldest handshake that has not sent a single byte is dropped (the server
//! answers it 408) to make room for the newcomer. Only when every handshake in the pool has sent
//! something is a newcomer refused (503). A client that sends its request head at once, as every
//! real client does, therefore always gets a place, whatever number of silent sockets others hold.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The handshakes in progress, oldest first.
pub struct Handshakes {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    pending: BTreeMap<u64, Arc<Ticket>>,
}

#[derive(Default)]
struct Ticket {
    /// The client has sent at least one byte.
    heard: AtomicBool,
    /// Woken when the handshake is dropped to make room.
    evicted: Notify,
}

/// A place in the pool, held for the length of one handshake (given back when dropped).
pub struct Pass {
    pool: Arc<Handshakes>,
    seq: u64,
    ticket: Arc<Ticket>,
}

impl Handshakes {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), inner: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new handshake, making room by dropping the oldest silent one if the pool is
    /// full; `None` when it is full of handshakes that are all sending.
    pub fn enter(self: &Arc<Self>) -> Option<Pass> {
        let mut inner = self.lock();
        if inner.pending.len() >= self.max {
            let silent = inner.pending.iter().find(|(_, t)| !t.heard.load(Ordering::Relaxed)).map(|(seq, _)| *seq)?;
            let evicted = inner.pending.remove(&silent).expect("found just now");
            evicted.evicted.notify_one();
        }
        let seq = inner.next;
        inner.next += 1;
        let ticket = Arc::new(Ticket::default());
        inner.pending.insert(seq, ticket.clone());
        Some(Pass { pool: self.clone(), seq, ticket })
    }

    /// Handshakes in the pool now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Pass {
    /// The client has sent something: it is not dropped to make room any more.
    pub fn heard(&self) {
        self.ticket.heard.store(true, Ordering::Relaxed);
    }

    /// Completes when this handshake is dropped to make room for a newer one.
    pub async fn evicted(&self) {
        self.ticket.evicted.notified().await
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.pool.lock().pending.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_drops_its_oldest_silent_handshake_and_refuses_only_when_all_are_sending() {
        let pool = Handshakes::new(3);
        let first = pool.enter().unwrap();
        let second = pool.enter().unwrap();
        let third = pool.enter().unwrap();
        first.heard();
        // Full: the oldest silent one (the second) makes room.
        let fourth = pool.enter().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), second.evicted()).await.expect("second evicted");
        assert_eq!(pool.len(), 3);
        third.heard();
        fourth.heard();
        assert!(pool.enter().is_none(), "every handshake is sending: no room");
        drop(first);
        assert!(pool.enter().is_some(), "a finished handshake gives its place back");
        drop(second); // evicted already: dropping it frees nothing twice
        assert_eq!(pool.len(), 2);
    }
}
