//! Engine metrics: counters and gauges per shard, per destination domain and per source, readable
//! from any thread as a struct ([`Metrics`]) or as Prometheus text ([`Metrics::prometheus`]).
//!
//! Shard-wide figures are atomics the shard thread bumps; per-destination and per-source figures sit in
//! a map behind a mutex that only its own shard takes on the delivery path (uncontended) and readers
//! take briefly. Rates are left to the reader (Prometheus `rate()` over the counters).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one destination or source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Recipients delivered.
    pub delivered: u64,
    /// Deferrals.
    pub deferred: u64,
    /// Recipients bounced.
    pub bounced: u64,
    /// Recipients expired.
    pub expired: u64,
}

/// What one shard publishes.
#[derive(Debug, Default)]
pub(crate) struct ShardMetrics {
    pub submitted: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
    pub expired: AtomicU64,
    pub cancelled: AtomicU64,
    pub queued: AtomicU64,
    pub in_flight: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connection_failures: AtomicU64,
    pub spool_errors: AtomicU64,
    pub by_domain: Mutex<BTreeMap<String, Counts>>,
    pub by_source: Mutex<BTreeMap<String, Counts>>,
}

impl ShardMetrics {
    pub(crate) fn count(&self, domain: &str, source: &str, f: impl Fn(&mut Counts)) {
        if let Ok(mut m) = self.by_domain.lock() {
            match m.get_mut(domain) {
                Some(c) => f(c),
                None => {
                    let mut c = Counts::default();
                    f(&mut c);
                    m.insert(domain.to_string(), c);
                }
            }
        }
        if let Ok(mut m) = self.by_source.lock() {
            match m.get_mut(source) {
                Some(c) => f(c),
                None => {
                    let mut c = Counts::default();
                    f(&mut c);
                    m.insert(source.to_string(), c);
                }
            }
        }
    }

    pub(crate) fn snapshot(&self, shard: usize) -> ShardSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShardSnapshot {
            shard,
            submitted: l(&self.submitted),
            delivered: l(&self.delivered),
            deferred: l(&self.deferred),
            bounced: l(&self.bounced),
            expired: l(&self.expired),
            cancelled: l(&self.cancelled),
            queued: l(&self.queued),
            in_flight: l(&self.in_flight),
            connections_open: l(&self.connections_open),
            connections_opened: l(&self.connections_opened),
            connection_failures: l(&self.connection_failures),
            spool_errors: l(&self.spool_errors),
        }
    }
}

/// One shard's figures at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Shard number.
    pub shard: usize,
    /// Recipients accepted by submission (counter).
    pub submitted: u64,
    /// Recipients delivered (counter).
    pub delivered: u64,
    /// Deferrals (counter).
    pub deferred: u64,
    /// Recipients bounced (counter).
    pub bounced: u64,
    /// Recipients expired (counter).
    pub expired: u64,
    /// Recipients cancelled (counter).
    pub cancelled: u64,
    /// Recipients waiting (gauge).
    pub queued: u64,
    /// Recipients in an SMTP transaction now (gauge).
    pub in_flight: u64,
    /// Open connections (gauge).
    pub connections_open: u64,
    /// Connections opened (counter).
    pub connections_opened: u64,
    /// Connections that failed before the session was ready (counter).
    pub connection_failures: u64,
    /// Spool write errors on state changes (counter).
    pub spool_errors: u64,
}

/// The engine's metrics at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Per shard.
    pub shards: Vec<ShardSnapshot>,
    /// Per destination domain.
    pub domains: BTreeMap<String, Counts>,
    /// Per source.
    pub sources: BTreeMap<String, Counts>,
}

impl Metrics {
    pub(crate) fn collect(shards: &[std::sync::Arc<ShardMetrics>]) -> Metrics {
        let mut m = Metrics::default();
        for (i, s) in shards.iter().enumerate() {
            m.shards.push(s.snapshot(i));
            for (map, out) in [
                (&s.by_domain, &mut m.domains),
                (&s.by_source, &mut m.sources),
            ] {
                if let Ok(map) = map.lock() {
                    for (k, c) in map.iter() {
                        let e = out.entry(k.clone()).or_default();
                        e.delivered += c.delivered;
                        e.deferred += c.deferred;
                        e.bounced += c.bounced;
                        e.expired += c.expired;
                    }
                }
            }
        }
        m
    }

    /// Sum over shards.
    pub fn total(&self) -> ShardSnapshot {
        let mut t = ShardSnapshot::default();
        for s in &self.shards {
            t.submitted += s.submitted;
            t.delivered += s.delivered;
            t.deferred += s.deferred;
            t.bounced += s.bounced;
            t.expired += s.expired;
            t.cancelled += s.cancelled;
            t.queued += s.queued;
            t.in_flight += s.in_flight;
            t.connections_open += s.connections_open;
            t.connections_opened += s.connections_opened;
            t.connection_failures += s.connection_failures;
            t.spool_errors += s.spool_errors;
        }
        t
    }

    /// The Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        type Get = fn(&ShardSnapshot) -> u64;
        let shard_series: [(&str, &str, &str, Get); 12] = [
            (
                "vmta_submitted_total",
                "counter",
                "Recipients accepted by submission.",
                |s| s.submitted,
            ),
            (
                "vmta_delivered_total",
                "counter",
                "Recipients delivered.",
                |s| s.delivered,
            ),
            ("vmta_deferred_total", "counter", "Deferrals.", |s| {
                s.deferred
            }),
            (
                "vmta_bounced_total",
                "counter",
                "Recipients bounced.",
                |s| s.bounced,
            ),
            (
                "vmta_expired_total",
                "counter",
                "Recipients expired.",
                |s| s.expired,
            ),
            (
                "vmta_cancelled_total",
                "counter",
                "Recipients cancelled.",
                |s| s.cancelled,
            ),
            ("vmta_queued", "gauge", "Recipients waiting.", |s| s.queued),
            (
                "vmta_in_flight",
                "gauge",
                "Recipients in an SMTP transaction.",
                |s| s.in_flight,
            ),
            (
                "vmta_connections_open",
                "gauge",
                "Open SMTP connections.",
                |s| s.connections_open,
            ),
            (
                "vmta_connections_opened_total",
                "counter",
                "SMTP connections opened.",
                |s| s.connections_opened,
            ),
            (
                "vmta_connection_failures_total",
                "counter",
                "Connections that failed before the session was ready.",
                |s| s.connection_failures,
            ),
            (
                "vmta_spool_errors_total",
                "counter",
                "Spool write errors on state changes.",
                |s| s.spool_errors,
            ),
        ];
        for (name, kind, help, get) in shard_series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &self.shards {
                let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, get(s));
            }
        }
        for (label, map) in [("domain", &self.domains), ("source", &self.sources)] {
            let name = format!("vmta_{label}_outcomes_total");
            let _ = writeln!(
                out,
                "# HELP {name} Recipient outcomes per {label}.\n# TYPE {name} counter"
            );
            for (k, c) in map {
                let k = k.replace('\\', "\\\\").replace('"', "\\\"");
                for (outcome, v) in [
                    ("delivered", c.delivered),
                    ("deferred", c.deferred),
                    ("bounced", c.bounced),
                    ("expired", c.expired),
                ] {
                    let _ = writeln!(out, "{name}{{{label}=\"{k}\",outcome=\"{outcome}\"}} {v}");
                }
            }
        }
        out
    }
}
