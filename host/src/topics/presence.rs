//! Presence: who is subscribed to a route's topics, on every node. State-based: each node
//! reports a snapshot of its own subscribers every `presence_interval` (to itself, and in a
//! cluster to the others through the broker); this table keeps the latest snapshot of each node,
//! forgets a node that stopped reporting (its members leave), and turns the differences into
//! join/leave events, batched per topic and per interval so that a topic of 10,000 members
//! produces one event per interval, not one per member. Pure (time is passed in).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// `presence = "off" | "count" | "members"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceMode {
    #[default]
    Off,
    /// How many connections are subscribed, per topic.
    Count,
    /// Which connections (node and connection id).
    Members,
}

/// Members a node reports per topic; past this, it reports the topic's count only.
pub const MAX_REPORTED_MEMBERS: usize = 10_000;
/// Joined or left members listed in one event; the rest are counted in `omitted`.
pub const MAX_EVENT_MEMBERS: usize = 1_000;

/// A subscribed connection: the node it is on and its id there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub node: String,
    pub connection: u64,
}

/// What one node reports of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTopic {
    pub count: u64,
    /// The connection ids, sorted (absent in count mode, or past [`MAX_REPORTED_MEMBERS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<u64>>,
}

/// One node's report: its topics with subscribers.
pub type Snapshot = BTreeMap<String, NodeTopic>;

/// Builds a node's snapshot from its subscribers per topic.
pub fn snapshot<'a>(mode: PresenceMode, topics: impl Iterator<Item = (&'a String, &'a Vec<u64>)>) -> Snapshot {
    topics
        .map(|(topic, ids)| {
            let members = (mode == PresenceMode::Members && ids.len() <= MAX_REPORTED_MEMBERS).then(|| {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids
            });
            (topic.clone(), NodeTopic { count: ids.len() as u64, members })
        })
        .collect()
}

/// The changes of one topic since the last events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub topic: String,
    /// Subscribers now, on every node.
    pub count: u64,
    pub joined: Vec<Member>,
    pub left: Vec<Member>,
    /// Joins and leaves not listed (past [`MAX_EVENT_MEMBERS`] each, or a node reporting counts
    /// only).
    pub omitted: u64,
}

#[derive(Default)]
struct Pending {
    joined: BTreeSet<Member>,
    left: BTreeSet<Member>,
    omitted: u64,
}

struct NodeState {
    seen: Instant,
    snapshot: Snapshot,
}

/// The presence of a route's topics across nodes.
pub struct Presence {
    mode: PresenceMode,
    nodes: HashMap<String, NodeState>,
    pending: BTreeMap<String, Pending>,
}

impl Presence {
    pub fn new(mode: PresenceMode) -> Self {
        Self { mode, nodes: HashMap::new(), pending: BTreeMap::new() }
    }

    pub fn mode(&self) -> PresenceMode {
        self.mode
    }

    /// Takes in a node's latest snapshot, noting what changed.
    pub fn update(&mut self, node: &str, snapshot: Snapshot, now: Instant) {
        let old = self.nodes.remove(node).map(|n| n.snapshot).unwrap_or_default();
        self.diff(node, &old, &snapshot);
        self.nodes.insert(node.to_owned(), NodeState { seen: now, snapshot });
    }

    /// Forgets nodes (other than `own`) not heard from for `after`: their members leave.
    pub fn expire(&mut self, own: &str, now: Instant, after: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .nodes
            .iter()
            .filter(|(name, n)| *name != own && now.saturating_duration_since(n.seen) > after)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &dead {
            if let Some(n) = self.nodes.remove(name) {
                self.diff(name, &n.snapshot, &Snapshot::new());
            }
        }
        dead
    }

    fn diff(&mut self, node: &str, old: &Snapshot, new: &Snapshot) {
        let topics: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for topic in topics {
            let (o, n) = (old.get(topic), new.get(topic));
            if o == n {
                continue;
            }
            let pending = self.pending.entry(topic.clone()).or_default();
            let ids = |t: Option<&NodeTopic>| t.map(|t| t.members.clone()).unwrap_or(Some(Vec::new()));
            match (ids(o), ids(n)) {
                (Some(before), Some(after)) => {
                    let (before, after): (BTreeSet<u64>, BTreeSet<u64>) =
                        (before.into_iter().collect(), after.into_iter().collect());
                    let member = |connection: &u64| Member { node: node.to_owned(), connection: *connection };
                    for id in after.difference(&before) {
                        let m = member(id);
                        if !pending.left.remove(&m) {
                            pending.joined.insert(m);
                        }
                    }
                    for id in before.difference(&after) {
                        let m = member(id);
                        if !pending.joined.remove(&m) {
                            pending.left.insert(m);
                        }
                    }
                }
                _ => {
                    let (a, b) = (o.map_or(0, |t| t.count), n.map_or(0, |t| t.count));
                    pending.omitted += a.abs_diff(b);
                }
            }
        }
    }

    /// Subscribers of `topic` on every node.
    pub fn count(&self, topic: &str) -> u64 {
        self.nodes.values().filter_map(|n| n.snapshot.get(topic)).map(|t| t.count).sum()
    }

    /// Who is subscribed to `topic`, sorted, or why that cannot be told.
    pub fn members(&self, topic: &str, limit: usize) -> Result<Vec<Member>, String> {
        if self.mode != PresenceMode::Members {
            return Err("this route keeps presence counts only (presence = \"count\")".into());
        }
        let mut out = Vec::new();
        for (node, state) in &self.nodes {
            let Some(t) = state.snapshot.get(topic) else { continue };
            let Some(ids) = &t.members else {
                return Err(format!(
                    "node {node} reports a count only for this topic (over {MAX_REPORTED_MEMBERS} members)"
                ));
            };
            out.extend(ids.iter().map(|&connection| Member { node: node.clone(), connection }));
            if out.len() > limit {
                return Err(format!("more than {limit} members"));
            }
        }
        out.sort();
        Ok(out)
    }

    /// The changes since the last call, one event per topic that changed.
    pub fn take_events(&mut self) -> Vec<PresenceEvent> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .filter(|(_, p)| !(p.joined.is_empty() && p.left.is_empty() && p.omitted == 0))
            .map(|(topic, p)| {
                let mut omitted = p.omitted;
                let mut list = |set: BTreeSet<Member>| {
                    omitted += set.len().saturating_sub(MAX_EVENT_MEMBERS) as u64;
                    set.into_iter().take(MAX_EVENT_MEMBERS).collect::<Vec<_>>()
                };
                let (joined, left) = if self.mode == PresenceMode::Members {
                    (list(p.joined), list(p.left))
                } else {
                    (Vec::new(), Vec::new())
                };
                if self.mode == PresenceMode::Count {
                    omitted = 0;
                }
                PresenceEvent { count: self.count(&topic), topic, joined, left, omitted }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(mode: PresenceMode, topics: &[(&str, &[u64])]) -> Snapshot {
        let owned: Vec<(String, Vec<u64>)> = topics.iter().map(|(t, ids)| (t.to_string(), ids.to_vec())).collect();
        snapshot(mode, owned.iter().map(|(t, ids)| (t, ids)))
    }

    fn m(node: &str, connection: u64) -> Member {
        Member { node: node.into(), connection }
    }

    #[test]
    fn joins_and_leaves_are_batched_per_topic_and_cancel_out() {
        let t0 = Instant::now();
        let mut p = Presence::new(PresenceMode::Members);
        p.update("a", snap(PresenceMode::Members, &[("room", &[1, 2])]), t0);
        p.update("b", snap(PresenceMode::Members, &[("room", &[7])]), t0);
        // 2 leaves and comes back within the interval: no event for it.
        p.update("a", snap(PresenceMode::Members, &[("room", &[1])]), t0);
        p.update("a", snap(PresenceMode::Members, &[("room", &[1, 2])]), t0);
        let events = p.take_events();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].count, 3);
        assert_eq!(events[0].joined, vec![m("a", 1), m("a", 2), m("b", 7)]);
        assert!(p.take_events().is_empty(), "nothing changed since");
        assert_eq!(p.members("room", 10).unwrap(), vec![m("a", 1), m("a", 2), m("b", 7)]);
        assert!(p.members("room", 2).is_err());
    }

    #[test]
    fn a_silent_node_expires_and_its_members_leave() {
        let t0 = Instant::now();
        let mut p = Presence::new(PresenceMode::Members);
        p.update("a", snap(PresenceMode::Members, &[("room", &[1])]), t0);
        p.update("b", snap(PresenceMode::Members, &[("room", &[5, 6])]), t0);
        p.take_events();
        let later = t0 + Duration::from_secs(5);
        p.update("a", snap(PresenceMode::Members, &[("room", &[1])]), later);
        assert_eq!(p.expire("a", later, Duration::from_secs(3)), vec!["b".to_string()]);
        let events = p.take_events();
        assert_eq!(events[0].left, vec![m("b", 5), m("b", 6)]);
        assert_eq!(events[0].count, 1);
        assert_eq!(p.count("room"), 1);
    }

    #[test]
    fn count_mode_reports_counts_and_a_big_topic_does_not_storm() {
        let t0 = Instant::now();
        let mut p = Presence::new(PresenceMode::Count);
        let ids: Vec<u64> = (0..10_000).collect();
        p.update("a", snap(PresenceMode::Count, &[("big", &ids)]), t0);
        let events = p.take_events();
        assert_eq!(events.len(), 1, "one event for 10,000 joins");
        assert_eq!((events[0].count, events[0].joined.len()), (10_000, 0));
        assert!(p.members("big", 100_000).is_err());

        let mut p = Presence::new(PresenceMode::Members);
        p.update("a", snap(PresenceMode::Members, &[("big", &ids)]), t0);
        let events = p.take_events();
        assert_eq!((events[0].joined.len(), events[0].omitted), (MAX_EVENT_MEMBERS, 9_000));
    }
}
