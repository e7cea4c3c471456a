//! The pool of handshakes in progress: connections accepted whose request head is not complete.
//!
//! It is separate from the connection slots (`max_connections`, taken once a request asks for a
//! route), so that sockets that connect and never send cannot lock real clients out: when the
//! pool is full, the oldest handshake that has not sent a single byte is dropped (the server
//! answers it 408) to make room for the newcomer. Only when every handshake in the pool has sent
//! something is a newcomer refused (503). A client that sends its request head at once, as every
//! real client does, therefore always gets a place, whatever number of silent sockets others hold.
//!
//! One address (an IPv4 address, or an IPv6 /64, what one user typically holds) may have at most
//! `max_handshakes_per_address` of them: past that, its own oldest silent one makes room, or the
//! newcomer is refused (503) when all of its are sending. And when the pool is full, the
//! handshake dropped is the oldest silent one of the address holding the most. So one address
//! cannot fill the pool and churn everyone else's handshakes out of it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The answer to a handshake the pool has no room for (refused on arrival, or dropped to make room
/// before it had been silent long enough to count as slow): busy, retry in a second.
pub(crate) fn busy_response() -> Vec<u8> {
    crate::protocol::handshake::unavailable_response(
        std::time::Duration::from_secs(1),
        "server is busy: too many handshakes in progress; retry",
    )
}

/// The handshakes in progress, oldest first.
pub struct Handshakes {
    max: usize,
    max_per_address: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    pending: BTreeMap<u64, Arc<Ticket>>,
    /// Handshakes in `pending` per address key.
    per_address: HashMap<IpAddr, usize>,
}

impl Inner {
    /// Takes a handshake out of the pool (dropped to make room, or finished).
    fn remove(&mut self, seq: u64) -> Option<Arc<Ticket>> {
        let ticket = self.pending.remove(&seq)?;
        if let Some(n) = self.per_address.get_mut(&ticket.address) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&ticket.address);
            }
        }
        Some(ticket)
    }

    /// Drops the oldest silent handshake (of `address`, if given) to make room; false if there
    /// is none.
    fn evict_oldest_silent(&mut self, address: Option<IpAddr>) -> bool {
        let Some(seq) = self
            .pending
            .iter()
            .find(|(_, t)| !t.heard.load(Ordering::Relaxed) && address.is_none_or(|a| t.address == a))
            .map(|(seq, _)| *seq)
        else {
            return false;
        };
        let evicted = self.remove(seq).expect("found just now");
        evicted.evicted.notify_one();
        true
    }
}

struct Ticket {
    /// The address key of the client (see [`address_key`]).
    address: IpAddr,
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
    pub fn new(max: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self { max: max.max(1), max_per_address: max_per_address.max(1), inner: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new handshake from `peer`, making room by dropping the oldest silent one
    /// of its address if the address is at its quota, else the oldest silent one of all if the
    /// pool is full; `None` when there is no silent one to drop.
    pub fn enter(self: &Arc<Self>, peer: IpAddr) -> Option<Pass> {
        let address = address_key(peer);
        let mut inner = self.lock();
        if inner.per_address.get(&address).copied().unwrap_or(0) >= self.max_per_address {
            if !inner.evict_oldest_silent(Some(address)) {
                return None;
            }
        } else if inner.pending.len() >= self.max {
            // The address holding the most pays first; anyone's silent handshake after that.
            let largest = inner.per_address.iter().max_by_key(|(_, n)| **n).map(|(a, _)| *a);
            if !inner.evict_oldest_silent(largest) && !inner.evict_oldest_silent(None) {
                return None;
            }
        }
        let seq = inner.next;
        inner.next += 1;
        let ticket = Arc::new(Ticket { address, heard: AtomicBool::new(false), evicted: Notify::new() });
        inner.pending.insert(seq, ticket.clone());
        *inner.per_address.entry(address).or_default() += 1;
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
        self.pool.lock().remove(self.seq);
    }
}

/// What counts as one client's address: an IPv4 address, or the /64 prefix of an IPv6 one (a
/// single host is commonly given a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_pool_drops_its_oldest_silent_handshake_and_refuses_only_when_all_are_sending() {
        let pool = Handshakes::new(3, 3);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let first = pool.enter(ip).unwrap();
        let second = pool.enter(ip).unwrap();
        let third = pool.enter(ip).unwrap();
        first.heard();
        // Full: the oldest silent one (the second) makes room.
        let fourth = pool.enter(ip).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), second.evicted()).await.expect("second evicted");
        assert_eq!(pool.len(), 3);
        third.heard();
        fourth.heard();
        assert!(pool.enter(ip).is_none(), "every handshake is sending: no room");
        drop(first);
        assert!(pool.enter(ip).is_some(), "a finished handshake gives its place back");
        drop(second); // evicted already: dropping it frees nothing twice
        assert_eq!(pool.len(), 2);
    }

    #[tokio::test]
    async fn one_address_at_its_quota_makes_room_only_among_its_own() {
        let pool = Handshakes::new(10, 2);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let other = pool.enter(b).unwrap();
        let a1 = pool.enter(a).unwrap();
        let _a2 = pool.enter(a).unwrap();
        let _a3 = pool.enter(a).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), a1.evicted()).await.expect("a's oldest made room");
        assert_eq!(pool.len(), 3, "b's handshake and two of a's");
        drop(a1);
        assert_eq!(pool.len(), 3);
        other.heard();
        assert!(pool.enter(b).is_some(), "b is under its quota");
    }

    #[tokio::test]
    async fn a_full_pool_takes_room_from_the_address_holding_the_most() {
        let pool = Handshakes::new(4, 4);
        let (a, b, c) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 3]));
        let b1 = pool.enter(b).unwrap(); // the oldest, but b holds only one
        let a1 = pool.enter(a).unwrap();
        let _a2 = pool.enter(a).unwrap();
        let _a3 = pool.enter(a).unwrap();
        let _c1 = pool.enter(c).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), a1.evicted()).await.expect("a's oldest made room");
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), b1.evicted()).await.is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let two: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(one), address_key(two));
        assert_ne!(address_key(one), address_key(elsewhere));
        assert_eq!(address_key("::ffff:10.0.0.1".parse().unwrap()), IpAddr::from([10, 0, 0, 1]));
    }
}
