//! The history of a route's topics as one node holds it: per topic, the last messages with their
//! offsets, bounded by count, age and a byte budget for the whole route. Pure (time is passed in),
//! so the rules of recovery are unit-tested here.
//!
//! Offsets increase per topic but need not be contiguous (in a cluster they are the broker's
//! stream sequence, shared by every topic of the route). Each entry therefore keeps the offset of
//! the message before it on its topic (`prev`), and recovery is exact: a client whose last offset
//! is N gets everything after it iff the message that followed N is still held (or nothing
//! followed it); otherwise it is told, never handed a history with a hole.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Position;

/// A topic's position and history bounds (`[routes.topics]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Messages kept per topic (0: no history).
    pub size: usize,
    /// How long a message is kept (zero: no age limit).
    pub ttl: Duration,
    /// Bytes of messages kept across every topic of the route on this node.
    pub bytes: usize,
    /// Topics whose history (or last offset) this node keeps.
    pub topics: usize,
}

/// One message of a topic's history, as delivered (`M`: the hub's shared, encoded-once message).
#[derive(Clone)]
pub struct Entry<M> {
    pub offset: u64,
    /// The offset of the message before it on its topic (0: none).
    pub prev: u64,
    pub at: Instant,
    pub message: M,
    pub len: usize,
}

/// The history of one topic.
pub struct TopicLog<M> {
    pub epoch: Arc<str>,
    entries: VecDeque<Entry<M>>,
    /// The offset of the newest message ever appended (0: none).
    last: u64,
    /// When a message was last appended (which log to drop first when too many are kept).
    touched: Instant,
}

/// What a client reconnecting at a position gets.
pub enum Recovery<M> {
    /// Every message after its position, in order (possibly none).
    Recovered(Vec<Entry<M>>),
    /// The messages after its position are no longer all held: why.
    NotRecovered(&'static str),
}

impl<M: Clone> TopicLog<M> {
    pub fn new(epoch: Arc<str>, now: Instant) -> Self {
        Self { epoch, entries: VecDeque::new(), last: 0, touched: now }
    }

    /// The newest position (offset 0 before the first message).
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch.to_string(), offset: self.last }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// What a client that last saw `since` has missed.
    pub fn recover(&self, since: &Position) -> Recovery<M> {
        if *since.epoch != *self.epoch {
            return Recovery::NotRecovered("the topic's history was reset (epoch changed)");
        }
        if since.offset >= self.last {
            return Recovery::Recovered(Vec::new());
        }
        let start = self.entries.partition_point(|e| e.offset <= since.offset);
        match self.entries.get(start) {
            Some(next) if next.prev == since.offset => {
                Recovery::Recovered(self.entries.range(start..).cloned().collect())
            }
            _ => Recovery::NotRecovered("messages after this offset are no longer held"),
        }
    }
}

/// The histories of a route's topics on this node.
pub struct History<M> {
    limits: HistoryLimits,
    logs: HashMap<String, TopicLog<M>>,
    /// Every held entry as (topic, offset), oldest first across topics: what the byte budget and
    /// the age limit drop first.
    order: VecDeque<(Arc<str>, u64)>,
    bytes: usize,
}

impl<M: Clone> History<M> {
    pub fn new(limits: HistoryLimits) -> Self {
        Self { limits, logs: HashMap::new(), order: VecDeque::new(), bytes: 0 }
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    pub fn get(&self, topic: &str) -> Option<&TopicLog<M>> {
        self.logs.get(topic)
    }

    /// The bytes of messages held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The log of `topic`, made (with `epoch`) if this node kept none.
    pub fn log(&mut self, topic: &str, epoch: impl FnOnce() -> Arc<str>, now: Instant) -> &mut TopicLog<M> {
        if !self.logs.contains_key(topic) {
            if self.logs.len() >= self.limits.topics.max(1) {
                self.drop_stalest();
            }
            self.logs.insert(topic.to_owned(), TopicLog::new(epoch(), now));
        }
        self.logs.get_mut(topic).expect("just inserted")
    }

    /// Forgets a topic's log (a new epoch starts with its next message).
    pub fn forget(&mut self, topic: &str) {
        if let Some(log) = self.logs.remove(topic) {
            self.bytes -= log.entries.iter().map(|e| e.len).sum::<usize>();
        }
    }

    /// Appends a message to `topic`'s log (which must exist), then applies the bounds. The
    /// offset must be newer than the log's last.
    pub fn append(&mut self, topic: &str, entry: Entry<M>) {
        let Some(log) = self.logs.get_mut(topic) else { return };
        debug_assert!(entry.offset > log.last);
        log.last = entry.offset;
        log.touched = entry.at;
        let now = entry.at;
        self.bytes += entry.len;
        self.order.push_back((topic.into(), entry.offset));
        log.entries.push_back(entry);
        if log.entries.len() > self.limits.size {
            let old = log.entries.pop_front().expect("over the size");
            self.bytes -= old.len;
        }
        self.expire(now);
    }

    /// Drops what is older than the age limit, and the oldest messages while over the byte budget.
    pub fn expire(&mut self, now: Instant) {
        while let Some((topic, offset)) = self.order.front() {
            let Some(log) = self.logs.get_mut(&**topic) else {
                self.order.pop_front();
                continue;
            };
            match log.entries.front() {
                // Already gone (past the size bound, or the log was forgotten and made again).
                Some(front) if front.offset != *offset => {
                    self.order.pop_front();
                }
                None => {
                    self.order.pop_front();
                }
                Some(front) => {
                    let aged = !self.limits.ttl.is_zero() && now.saturating_duration_since(front.at) > self.limits.ttl;
                    if !(aged || self.bytes > self.limits.bytes) {
                        break;
                    }
                    self.bytes -= front.len;
                    log.entries.pop_front();
                    self.order.pop_front();
                }
            }
        }
    }

    /// Drops the log appended to least recently (past the limit on topics kept).
    fn drop_stalest(&mut self) {
        let stalest = self.logs.iter().min_by_key(|(_, log)| log.touched).map(|(t, _)| t.clone());
        if let Some(topic) = stalest {
            self.forget(&topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(size: usize) -> HistoryLimits {
        HistoryLimits { size, ttl: Duration::from_secs(60), bytes: 1 << 20, topics: 100 }
    }

    fn entry(offset: u64, prev: u64, at: Instant) -> Entry<()> {
        Entry { offset, prev, at, message: (), len: 10 }
    }

    fn offsets(r: Recovery<()>) -> Result<Vec<u64>, &'static str> {
        match r {
            Recovery::Recovered(e) => Ok(e.iter().map(|e| e.offset).collect()),
            Recovery::NotRecovered(why) => Err(why),
        }
    }

    fn pos(epoch: &str, offset: u64) -> Position {
        Position { epoch: epoch.into(), offset }
    }

    #[test]
    fn recovery_is_exact_with_gapped_offsets() {
        let now = Instant::now();
        let mut h = History::<()>::new(limits(3));
        h.log("t", || "e".into(), now);
        // Offsets of a stream shared with other topics: 2, 5, 9, 12 (prev links them).
        for (o, p) in [(2, 0), (5, 2), (9, 5), (12, 9)] {
            h.append("t", entry(o, p, now));
        }
        let log = h.get("t").unwrap();
        assert_eq!(offsets(log.recover(&pos("e", 5))), Ok(vec![9, 12]));
        assert_eq!(offsets(log.recover(&pos("e", 12))), Ok(vec![]), "up to date");
        assert_eq!(offsets(log.recover(&pos("e", 40))), Ok(vec![]), "ahead: nothing to send");
        // 2 was dropped (size 3): the message after it (5) is held, so recovery from 2 works...
        assert_eq!(offsets(log.recover(&pos("e", 2))), Ok(vec![5, 9, 12]));
        // ...but from 0 (before 2) the client would miss 2.
        assert!(offsets(log.recover(&pos("e", 0))).is_err());
        // An offset that never was on this topic, inside the held range, is not trusted.
        assert!(offsets(log.recover(&pos("e", 7))).is_err());
        assert!(offsets(log.recover(&pos("other", 9))).unwrap_err().contains("epoch"));
    }

    #[test]
    fn age_and_byte_budget_drop_the_oldest_first() {
        let t0 = Instant::now();
        let mut h =
            History::<()>::new(HistoryLimits { size: 100, ttl: Duration::from_secs(10), bytes: 30, topics: 100 });
        h.log("a", || "e".into(), t0);
        h.log("b", || "e".into(), t0);
        h.append("a", entry(1, 0, t0));
        h.append("b", entry(1, 0, t0));
        h.append("a", entry(2, 1, t0));
        h.append("b", entry(2, 1, t0)); // 40 bytes > 30: a#1 goes
        assert_eq!(h.bytes(), 30);
        assert!(offsets(h.get("a").unwrap().recover(&pos("e", 0))).is_err());
        assert_eq!(offsets(h.get("b").unwrap().recover(&pos("e", 0))), Ok(vec![1, 2]));
        h.expire(t0 + Duration::from_secs(11));
        assert_eq!(h.bytes(), 0, "everything aged out");
        let b = h.get("b").unwrap();
        assert_eq!(b.last(), 2, "the last offset outlives its message");
        assert_eq!(offsets(b.recover(&pos("e", 2))), Ok(vec![]), "nothing was missed");
        assert!(offsets(b.recover(&pos("e", 1))).is_err());
    }

    #[test]
    fn too_many_topics_drop_the_stalest_log() {
        let t0 = Instant::now();
        let mut h = History::<()>::new(HistoryLimits { topics: 2, ..limits(10) });
        h.log("a", || "e".into(), t0);
        h.append("a", entry(1, 0, t0));
        h.log("b", || "e".into(), t0);
        h.append("b", entry(1, 0, t0 + Duration::from_secs(1)));
        h.log("c", || "e2".into(), t0 + Duration::from_secs(2));
        assert!(h.get("a").is_none(), "a was appended to longest ago");
        assert_eq!(h.bytes(), 10);
        assert!(h.get("b").is_some() && h.get("c").is_some());
    }
}
