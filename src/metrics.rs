//! Metrics: counters, gauges and one histogram, rendered as Prometheus text.
//!
//! Owns the numbers and their text format. Hand-rolled on atomics so each hub
//! (including several in one test process) has its own registry and the hot
//! path pays one relaxed atomic add per event. It must not decide anything.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the fan-out latency buckets, in seconds.
const FANOUT_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25,
];

#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicI64,
    pub sessions: AtomicI64,
    pub members: AtomicI64,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub rate_limited_connection: AtomicU64,
    pub rate_limited_identity: AtomicU64,
    pub rate_limited_room: AtomicU64,
    pub rate_limited_address: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    pub flood_disconnects: AtomicU64,
    pub origin_refused: AtomicU64,
    pub bad_frames: AtomicU64,
    pub reports: AtomicU64,
    pub support_sent: AtomicU64,
    pub flags: AtomicU64,
    /// Escalations raised, by level: concern, high, imminent.
    pub escalations_raised: [AtomicU64; 3],
    pub escalations_open: AtomicI64,
    pub escalations_acknowledged: AtomicI64,
    pub escalation_rounds: AtomicU64,
    pub escalation_deliveries: AtomicU64,
    pub escalation_delivery_failures: AtomicU64,
    pub escalation_dead_letters: AtomicU64,
    /// Cluster mode: the Redis series below are rendered.
    pub cluster: AtomicBool,
    pub redis_up: AtomicBool,
    pub redis_reconnects: AtomicU64,
    pub fanout_catchups: AtomicU64,
    pub history_resets: AtomicU64,
    fanout: Histogram,
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; FANOUT_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Metrics {
    pub fn count_escalation(&self, level: &str) {
        let i = match level {
            "concern" => 0,
            "high" => 1,
            _ => 2,
        };
        Metrics::inc(&self.escalations_raised[i]);
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn gauge(g: &AtomicI64, delta: i64) {
        g.fetch_add(delta, Relaxed);
    }

    pub fn set_flag(f: &AtomicBool, on: bool) {
        f.store(on, Relaxed);
    }

    /// Records how long one message took from decode to the last recipient's queue.
    pub fn observe_fanout(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let h = &self.fanout;
        // Cumulative buckets are computed at render time; store per-bucket counts.
        if let Some(i) = FANOUT_BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i].fetch_add(1, Relaxed);
        }
        h.count.fetch_add(1, Relaxed);
        h.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// Prometheus text exposition. `rooms` is passed in: it is hub state.
    pub fn render(&self, rooms: usize, limiter_keys: usize) -> String {
        let mut o = String::with_capacity(4096);
        let g = |o: &mut String, name: &str, help: &str, v: i64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        g(
            &mut o,
            "hearth_connections",
            "Open WebSocket connections.",
            self.connections.load(Relaxed),
        );
        g(
            &mut o,
            "hearth_sessions",
            "Identities held (connected or within their resume TTL).",
            self.sessions.load(Relaxed),
        );
        g(&mut o, "hearth_rooms", "Rooms on this node.", rooms as i64);
        g(
            &mut o,
            "hearth_room_members",
            "Room memberships, summed over rooms.",
            self.members.load(Relaxed),
        );
        g(
            &mut o,
            "hearth_rate_limiter_keys",
            "Keys held by the keyed rate limiters.",
            limiter_keys as i64,
        );
        c(
            &mut o,
            "hearth_messages_in_total",
            "Messages accepted from clients.",
            self.messages_in.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_messages_out_total",
            "Message frames queued to recipients.",
            self.messages_out.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP hearth_rate_limited_total Frames or connections refused by a rate limit.\n# TYPE hearth_rate_limited_total counter");
        for (scope, v) in [
            ("connection", &self.rate_limited_connection),
            ("identity", &self.rate_limited_identity),
            ("room", &self.rate_limited_room),
            ("address", &self.rate_limited_address),
        ] {
            let _ = writeln!(
                o,
                "hearth_rate_limited_total{{scope=\"{scope}\"}} {}",
                v.load(Relaxed)
            );
        }
        c(
            &mut o,
            "hearth_slow_consumer_disconnects_total",
            "Connections closed with 4009 because their queue overflowed.",
            self.slow_consumer_disconnects.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_flood_disconnects_total",
            "Connections closed with 4008 for flooding.",
            self.flood_disconnects.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_origin_refused_total",
            "WebSocket upgrades refused for their Origin.",
            self.origin_refused.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_bad_frames_total",
            "Client frames answered with bad_request or unknown_type.",
            self.bad_frames.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_reports_total",
            "Reports received from peers.",
            self.reports.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_support_sent_total",
            "Private support events sent to people whose message showed distress or asked for help.",
            self.support_sent.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_flags_total",
            "Messages flagged to watching staff (crisis signals, method details, urging).",
            self.flags.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP hearth_escalations_raised_total Escalations raised, by crisis level.\n# TYPE hearth_escalations_raised_total counter"
        );
        for (i, level) in ["concern", "high", "imminent"].iter().enumerate() {
            let _ = writeln!(
                o,
                "hearth_escalations_raised_total{{level=\"{level}\"}} {}",
                self.escalations_raised[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP hearth_escalations Unresolved escalations known to this node (in cluster mode every node knows all of them), by state.\n# TYPE hearth_escalations gauge\nhearth_escalations{{state=\"open\"}} {}\nhearth_escalations{{state=\"acknowledged\"}} {}",
            self.escalations_open.load(Relaxed),
            self.escalations_acknowledged.load(Relaxed)
        );
        c(
            &mut o,
            "hearth_escalation_rounds_total",
            "Times an escalation was told again: moved up a tier, or re-triggered while unresolved.",
            self.escalation_rounds.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_escalation_deliveries_total",
            "Escalations a hook (webhook) accepted.",
            self.escalation_deliveries.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_escalation_delivery_failures_total",
            "Failed escalation delivery attempts (each is retried).",
            self.escalation_delivery_failures.load(Relaxed),
        );
        c(
            &mut o,
            "hearth_escalation_dead_letters_total",
            "Escalation deliveries given up after every attempt failed (shown to staff).",
            self.escalation_dead_letters.load(Relaxed),
        );
        if self.cluster.load(Relaxed) {
            g(
                &mut o,
                "hearth_redis_up",
                "1 when Redis answers and this node's room subscriptions are live.",
                i64::from(self.redis_up.load(Relaxed)),
            );
            c(
                &mut o,
                "hearth_redis_reconnects_total",
                "Times the Redis subscriber connection was lost and re-established.",
                self.redis_reconnects.load(Relaxed),
            );
            c(
                &mut o,
                "hearth_fanout_catchups_total",
                "Times a room was checked against its Redis history to repair missed messages.",
                self.fanout_catchups.load(Relaxed),
            );
            c(
                &mut o,
                "hearth_history_resets_total",
                "Times a room's history was lost and its members were asked to re-join (close 4009).",
                self.history_resets.load(Relaxed),
            );
        }

        let name = "hearth_fanout_seconds";
        let _ = writeln!(o, "# HELP {name} Time from a message's decode to its last recipient's queue.\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in FANOUT_BUCKETS.iter().enumerate() {
            cum += self.fanout.buckets[i].load(Relaxed);
            let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.fanout.count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.fanout.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(o, "{name}_sum {sum}\n{name}_count {count}");
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_cumulatively() {
        let m = Metrics::default();
        m.observe_fanout(Duration::from_micros(5));
        m.observe_fanout(Duration::from_micros(200));
        m.observe_fanout(Duration::from_secs(2));
        Metrics::gauge(&m.connections, 3);
        let t = m.render(3, 0);
        assert!(t.contains("hearth_connections 3"), "{t}");
        assert!(
            t.contains("hearth_fanout_seconds_bucket{le=\"0.00001\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("hearth_fanout_seconds_bucket{le=\"0.00025\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("hearth_fanout_seconds_bucket{le=\"+Inf\"} 3"),
            "{t}"
        );
        assert!(t.contains("hearth_fanout_seconds_count 3"), "{t}");
    }
}
