//! `GET /metrics`: the engine's and the daemon's figures in the Prometheus text exposition format
//! (version 0.0.4), named by Prometheus conventions: `vmta_` prefix, base units, `_total` on
//! counters, recipients counted as recipients (a message to three recipients delivers three).
//!
//! Label values are bounded: per-destination series for the [`TOP_DOMAINS`] busiest destination
//! domains and one `other` series for the rest; reasons from the classifier's vocabulary (see
//! [`crate::stats`]); listeners and routes from the configuration and the code.
//!
//! The figures are read at scrape time (the engine's atomics, the daemon's counters, the spool
//! directory's size), so the text is written here rather than through a metrics registry.

use super::Api;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Destination domains given series of their own; the rest are summed under `other`.
pub const TOP_DOMAINS: usize = 20;

/// A label value escaped for the text format.
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The size of the files under the spool directory, in octets.
fn spool_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, depth: u32) -> u64 {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut total = 0;
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() && depth < 3 => total += walk(&e.path(), depth + 1),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
        total
    }
    walk(dir, 0)
}

/// The exposition text.
pub fn render(api: &Api) -> String {
    let m = api.engine.metrics();
    let t = m.total();
    let stats = &api.stats;
    let mut o = Out(String::with_capacity(8192));
    o.one(
        "vmta_recipients_submitted_total",
        "counter",
        "Recipients accepted by submission (every way in).",
        t.submitted,
    );
    o.one(
        "vmta_recipients_delivered_total",
        "counter",
        "Recipients the receiving server accepted.",
        t.delivered,
    );
    o.one(
        "vmta_recipients_expired_total",
        "counter",
        "Recipients given up after the maximum queue age.",
        t.expired,
    );
    o.one(
        "vmta_recipients_cancelled_total",
        "counter",
        "Recipients cancelled by an operator or the host program.",
        t.cancelled,
    );
    let (suppressed, suppression_errors) = api.engine.suppression_counts();
    o.one(
        "vmta_recipients_suppressed_total",
        "counter",
        "Recipients refused at submission because they were on the suppression list.",
        suppressed,
    );
    o.one(
        "vmta_suppression_write_errors_total",
        "counter",
        "Suppression list changes that could not be written.",
        suppression_errors,
    );
    let outcomes = stats.outcomes();
    for (event, name, help) in [
        (
            "bounced",
            "vmta_recipients_bounced_total",
            "Recipients bounced (permanent failure), by reason.",
        ),
        (
            "deferred",
            "vmta_recipients_deferred_total",
            "Deferrals (temporary failures; each attempt counts), by reason.",
        ),
        (
            "late-bounce",
            "vmta_recipients_late_bounced_total",
            "Recipients reported failed by a DSN after the receiver's 250, by reason.",
        ),
        (
            "complaint",
            "vmta_complaints_total",
            "Spam complaints (ARF reports) applied.",
        ),
    ] {
        o.family(name, "counter", help);
        for ((e, reason), n) in &outcomes {
            if *e == event {
                let r = if reason.is_empty() { "none" } else { reason };
                o.sample(name, &[("reason", r)], *n);
            }
        }
    }
    o.family(
        "vmta_queue_recipients",
        "gauge",
        "Recipients waiting for delivery, per shard.",
    );
    for s in &m.shards {
        o.sample(
            "vmta_queue_recipients",
            &[("shard", &s.shard.to_string())],
            s.queued,
        );
    }
    o.one(
        "vmta_in_flight_recipients",
        "gauge",
        "Recipients in an SMTP transaction now.",
        t.in_flight,
    );
    o.one(
        "vmta_smtp_connections",
        "gauge",
        "Outbound SMTP connections open.",
        t.connections_open,
    );
    o.one(
        "vmta_smtp_connections_opened_total",
        "counter",
        "Outbound SMTP connections opened.",
        t.connections_opened,
    );
    o.one(
        "vmta_smtp_connection_failures_total",
        "counter",
        "Outbound connections that failed before the session was ready.",
        t.connection_failures,
    );
    o.one(
        "vmta_spool_bytes",
        "gauge",
        "Size of the files in the spool directory.",
        spool_bytes(&api.spool_dir),
    );
    o.one(
        "vmta_spool_errors_total",
        "counter",
        "Spool write errors on state changes.",
        t.spool_errors,
    );
    // The busiest destinations by recipients handled, the rest as `other`.
    let mut domains: Vec<(&String, &vmta::engine::metrics::Counts)> = m.domains.iter().collect();
    domains.sort_by_key(|(d, c)| {
        (
            std::cmp::Reverse(c.delivered + c.deferred + c.bounced + c.expired),
            *d,
        )
    });
    let mut other = vmta::engine::metrics::Counts::default();
    for (_, c) in domains.iter().skip(TOP_DOMAINS) {
        other.delivered += c.delivered;
        other.deferred += c.deferred;
        other.bounced += c.bounced;
        other.expired += c.expired;
    }
    let name = "vmta_destination_recipients_total";
    o.family(
        name,
        "counter",
        "Recipient outcomes per destination domain (the busiest; the rest under `other`).",
    );
    let top = domains
        .iter()
        .take(TOP_DOMAINS)
        .map(|(d, c)| (d.as_str(), **c));
    let rest = (domains.len() > TOP_DOMAINS).then_some(("other", other));
    for (d, c) in top.chain(rest) {
        for (outcome, v) in [
            ("delivered", c.delivered),
            ("deferred", c.deferred),
            ("bounced", c.bounced),
            ("expired", c.expired),
        ] {
            o.sample(name, &[("domain", d), ("outcome", outcome)], v);
        }
    }
    o.family(
        "vmta_listener_connections",
        "gauge",
        "SMTP connections open on each listener.",
    );
    for (l, n) in &api.listeners {
        o.sample(
            "vmta_listener_connections",
            &[("listener", l)],
            n.load(Ordering::Relaxed) as u64,
        );
    }
    let name = "vmta_listener_messages_total";
    o.family(
        name,
        "counter",
        "Messages received (durable, answered 250) and refused on each SMTP listener.",
    );
    for (l, [received, refused]) in stats.listeners() {
        o.sample(name, &[("listener", &l), ("result", "received")], received);
        o.sample(name, &[("listener", &l), ("result", "refused")], refused);
    }
    let name = "vmta_http_requests_total";
    o.family(
        name,
        "counter",
        "HTTP API requests answered, by route and status.",
    );
    for ((route, code), n) in stats.http_requests() {
        o.sample(name, &[("route", route), ("code", &code.to_string())], n);
    }
    let name = "vmta_http_messages_total";
    o.family(
        name,
        "counter",
        "Messages injected over HTTP, taken or refused.",
    );
    o.sample(
        name,
        &[("result", "accepted")],
        stats.http_messages_accepted.load(Ordering::Relaxed),
    );
    o.sample(
        name,
        &[("result", "refused")],
        stats.http_messages_refused.load(Ordering::Relaxed),
    );
    o.one(
        "vmta_http_connections",
        "gauge",
        "HTTP API connections open.",
        stats.http_connections_open.load(Ordering::Relaxed),
    );
    o.one(
        "vmta_http_connections_refused_total",
        "counter",
        "HTTP API connections refused because max_connections were open.",
        stats.http_connections_refused.load(Ordering::Relaxed),
    );
    o.0
}

/// The `GET /metrics` answer.
pub fn answer(api: &Api) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(render(api))));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut o = Out(String::new());
        o.sample("x_total", &[("a", "1"), ("b", "q\"")], 5);
        assert_eq!(o.0, "x_total{a=\"1\",b=\"q\\\"\"} 5\n");
    }
}
