//! The server's counters, gauges and histograms, in one process-wide registry, rendered as
//! Prometheus text by the admin listener ([`crate::admin`]).
//!
//! Every figure is cheap where it is counted: a route's handles are looked up once, when the
//! route is mounted ([`RouteMetrics`]), so counting a message is one relaxed atomic add, with no
//! map lookup and no lock. Labels are bounded: route paths come from the config, close codes are
//! folded into the RFC's names or their range, statuses and outcomes are fixed sets.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    route: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The registry and every metric family in it.
pub struct Metrics {
    registry: Registry,
    connections_open: Family<RouteLabel, Gauge>,
    connections: Family<RouteLabel, Counter>,
    messages_in: Family<RouteLabel, Counter>,
    bytes_in: Family<RouteLabel, Counter>,
    messages_out: Family<RouteLabel, Counter>,
    bytes_out: Family<RouteLabel, Counter>,
    queue_full: Family<RouteLabel, Counter>,
    closes: Family<CloseLabel, Counter>,
    refusals: Family<StatusLabel, Counter>,
    plugin_calls: Family<RouteLabel, Counter>,
    plugin_batch_seconds: Family<RouteLabel, Histogram>,
    plugin_failures: Family<FailureLabel, Counter>,
    plugin_rebuilds: Family<RouteLabel, Counter>,
    plugin_hibernations: Family<RouteLabel, Counter>,
    plugin_wake_seconds: Family<RouteLabel, Histogram>,
    reloads: Family<OutcomeLabel, Counter>,
    compile_cache: Family<OutcomeLabel, Counter>,
    tls_failures: Counter,
    /// Times the cluster's broker connection was lost.
    pub cluster_disconnects: Counter,
    /// Messages the broker never got or never stored (each a logged gap).
    pub cluster_dropped: Counter,
    /// Gaps seen in a topic's offsets (messages this node missed and the stream no longer held).
    pub history_gaps: Counter,
    /// Messages of a topic this node missed live and fetched from the stream before what followed.
    pub history_filled: Counter,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            registry: Registry::with_prefix("wsplug"),
            connections_open: Family::default(),
            connections: Family::default(),
            messages_in: Family::default(),
            bytes_in: Family::default(),
            messages_out: Family::default(),
            bytes_out: Family::default(),
            queue_full: Family::default(),
            closes: Family::default(),
            refusals: Family::default(),
            plugin_calls: Family::default(),
            plugin_batch_seconds: Family::new_with_constructor(|| {
                // 10 µs to about 2.6 s, doubling: a Rust call is microseconds, a deadline 100 ms.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 19))
            }),
            plugin_failures: Family::default(),
            plugin_rebuilds: Family::default(),
            plugin_hibernations: Family::default(),
            plugin_wake_seconds: Family::new_with_constructor(|| {
                // 10 µs to about 2.6 s, doubling: a Rust plugin wakes in well under a millisecond.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 19))
            }),
            reloads: Family::default(),
            compile_cache: Family::default(),
            tls_failures: Counter::default(),
            cluster_disconnects: Counter::default(),
            cluster_dropped: Counter::default(),
            history_gaps: Counter::default(),
            history_filled: Counter::default(),
        };
        let mut registry = Registry::with_prefix("wsplug");
        registry.register(
            "cluster_disconnects",
            "Times the NATS broker connection was lost",
            m.cluster_disconnects.clone(),
        );
        registry.register(
            "cluster_dropped",
            "Messages the NATS broker never got or never stored (each logged as a gap)",
            m.cluster_dropped.clone(),
        );
        registry.register("history_gaps", "Gaps seen in a topic's offsets by this node", m.history_gaps.clone());
        registry.register(
            "history_filled",
            "Topic messages missed live and fetched from the history stream in order",
            m.history_filled.clone(),
        );
        registry.register("connections_open", "WebSocket connections open", m.connections_open.clone());
        registry.register("connections", "WebSocket connections opened", m.connections.clone());
        registry.register("messages_in", "Messages received (complete, after decompression)", m.messages_in.clone());
        registry.register("bytes_in", "Message payload bytes received (after decompression)", m.bytes_in.clone());
        registry.register("messages_out", "Frames queued to clients (data, control and close)", m.messages_out.clone());
        registry.register(
            "bytes_out",
            "Bytes queued to clients (as sent: compressed, with headers)",
            m.bytes_out.clone(),
        );
        registry.register(
            "queue_full_closes",
            "Connections closed with 1013 because their outbound queue was full",
            m.queue_full.clone(),
        );
        registry.register("closes", "Connections ended, by the close code sent or received", m.closes.clone());
        registry.register("handshake_refusals", "HTTP answers other than 101, by status", m.refusals.clone());
        registry.register(
            "plugin_calls",
            "Calls into plugins (open, message, messages, close)",
            m.plugin_calls.clone(),
        );
        registry.register(
            "plugin_batch_seconds",
            "Time one connection's batch of events held its plugin instance",
            m.plugin_batch_seconds.clone(),
        );
        registry.register(
            "plugin_failures",
            "Failed plugin calls, by kind (trap, deadline, memory, failed, panic)",
            m.plugin_failures.clone(),
        );
        registry.register("plugin_rebuilds", "Plugin instances rebuilt after a failure", m.plugin_rebuilds.clone());
        registry.register(
            "plugin_hibernations",
            "Plugin instances dropped for being idle (hibernate_after), their state kept",
            m.plugin_hibernations.clone(),
        );
        registry.register(
            "plugin_wake_seconds",
            "Time a hibernated instance took to wake (instantiate, restore its state)",
            m.plugin_wake_seconds.clone(),
        );
        registry.register(
            "reloads",
            "Hot reloads of plugins and of the config, by outcome (ok, refused)",
            m.reloads.clone(),
        );
        registry.register(
            "compile_cache",
            "Plugins loaded, by whether the compile cache had them (hit, miss)",
            m.compile_cache.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or did not complete in time",
            m.tls_failures.clone(),
        );
        Self { registry, ..m }
    }

    /// The handles of one route (the same ones however often it is asked for).
    pub fn route(&self, path: &str) -> Arc<RouteMetrics> {
        let label = RouteLabel { route: path.to_owned() };
        Arc::new(RouteMetrics {
            path: path.to_owned(),
            connections_open: self.connections_open.get_or_create(&label).clone(),
            connections: self.connections.get_or_create(&label).clone(),
            messages_in: self.messages_in.get_or_create(&label).clone(),
            bytes_in: self.bytes_in.get_or_create(&label).clone(),
            messages_out: self.messages_out.get_or_create(&label).clone(),
            bytes_out: self.bytes_out.get_or_create(&label).clone(),
            queue_full: self.queue_full.get_or_create(&label).clone(),
            plugin_calls: self.plugin_calls.get_or_create(&label).clone(),
            plugin_batch_seconds: self.plugin_batch_seconds.get_or_create(&label).clone(),
            plugin_rebuilds: self.plugin_rebuilds.get_or_create(&label).clone(),
            plugin_hibernations: self.plugin_hibernations.get_or_create(&label).clone(),
            plugin_wake_seconds: self.plugin_wake_seconds.get_or_create(&label).clone(),
        })
    }

    /// An HTTP answer other than 101.
    pub fn refused(&self, status: u16) {
        self.refusals.get_or_create(&StatusLabel { status }).inc();
    }

    /// A TLS handshake failed (a plain-HTTP client on the TLS port, a bad client, a timeout).
    pub fn tls_failed(&self) {
        self.tls_failures.inc();
    }

    /// A hot reload's outcome: `ok` or `refused`.
    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// A plugin loaded from the compile cache (`hit`) or compiled (`miss`).
    pub fn compile_cache(&self, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.compile_cache.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// One route's handles.
#[derive(Debug)]
pub struct RouteMetrics {
    path: String,
    pub connections_open: Gauge,
    pub connections: Counter,
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    pub queue_full: Counter,
    pub plugin_calls: Counter,
    pub plugin_batch_seconds: Histogram,
    pub plugin_rebuilds: Counter,
    pub plugin_hibernations: Counter,
    pub plugin_wake_seconds: Histogram,
}

impl RouteMetrics {
    /// The route's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A connection of this route ended with `code` (sent or received).
    pub fn closed(&self, code: u16) {
        let code = match code {
            1000..=1015 => code.to_string(),
            3000..=3999 => "3xxx".into(),
            4000..=4999 => "4xxx".into(),
            _ => "other".into(),
        };
        metrics().closes.get_or_create(&CloseLabel { route: self.path.clone(), code }).inc();
    }

    /// A plugin call of this route failed: `trap`, `deadline`, `memory`, `failed` or `panic`.
    pub fn plugin_failed(&self, kind: &str) {
        let label = FailureLabel { route: self.path.clone(), kind: kind.into() };
        metrics().plugin_failures.get_or_create(&label).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_handles_count_into_the_registry() {
        let m = metrics();
        let route = m.route("/metrics-test");
        route.messages_in.inc_by(3);
        m.route("/metrics-test").messages_in.inc();
        route.closed(1001);
        route.closed(4321);
        m.refused(503);
        let text = m.encode();
        assert!(text.contains(r#"wsplug_messages_in_total{route="/metrics-test"} 4"#), "{text}");
        assert!(text.contains(r#"wsplug_closes_total{route="/metrics-test",code="1001"} 1"#), "{text}");
        assert!(text.contains(r#"wsplug_closes_total{route="/metrics-test",code="4xxx"} 1"#), "{text}");
        assert!(text.contains("wsplug_handshake_refusals_total{status=\"503\"}"), "{text}");
        assert!(text.contains("# TYPE wsplug_plugin_batch_seconds histogram"), "{text}");
    }
}
