//! Deterministic simulation of shaping over days of virtual time: simulated MX hosts that enforce their
//! own limits (421 above N connections, 451 4.7.1 above a message rate), a small delivery driver that
//! behaves as the engine will (connect when allowed, send while allowed, wait until "not before"), a
//! virtual clock and a seeded RNG for latencies. The engine-level simulation comes with the engine;
//! this one drives the shaping hooks directly.

use super::bucket::{BucketParams, TokenBucket};
use super::rules::RuleSet;
use super::{
    ConnectionPermit, Deferral, Nanos, Reason, ReplySignal, RouteId, Shaper, ShapingShared,
};
use crate::smtp::{EnhancedCode, Phase};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;
const MIN: u64 = 60 * S;
const H: u64 = 60 * MIN;
const DAY: u64 = 24 * H;

/// The seed of a scenario: its default, or `VMTA_SIM_SEED` to explore others.
fn seed(default: u64) -> u64 {
    std::env::var("VMTA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A simulated receiving MX host.
#[derive(Default)]
struct Mx {
    host: &'static str,
    /// Refuses a session with 421 above this many open connections.
    max_conns: u32,
    /// Answers 451 4.7.1 to a message above `count` accepted in the last `window` nanoseconds.
    rate: Option<(usize, u64)>,
    /// Refuses every connection (a dead host).
    down: bool,
    open: u32,
    max_open: u32,
    recent: VecDeque<u64>,
    /// Time of every MAIL FROM that reached it.
    mail_times: Vec<u64>,
    /// Time of every accepted message.
    accepted: Vec<u64>,
    /// Time of every session that was accepted (greeting 220).
    session_times: Vec<u64>,
    /// Time of every connection attempt (accepted, refused or failed).
    connect_attempts: Vec<u64>,
    refused_sessions: u64,
    /// Time of every refused session.
    refused_times: Vec<u64>,
    throttled_messages: u64,
    max_per_session: u32,
}

struct Queue {
    shard: usize,
    route: RouteId,
    mx: usize,
    backlog: u64,
    open: u32,
    connect_at: Option<u64>,
    waiting_for_close: bool,
}

struct Conn {
    queue: usize,
    permit: ConnectionPermit,
    sent: u32,
    at_mx: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    TryConnect(usize),
    Connected(usize),
    SendNext(usize),
    Delivered(usize, u64),
}

struct Sim {
    now: u64,
    shapers: Vec<Shaper>,
    mxs: Vec<Mx>,
    queues: Vec<Queue>,
    conns: Vec<Option<Conn>>,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    rng: Rng,
    /// Deferrals seen, by reason (for assertions).
    deferrals: Vec<(u64, Reason, u64)>,
}

impl Sim {
    fn new(rules: &str, shards: usize, unix_at_epoch: u64, seed: u64) -> Sim {
        let rules = RuleSet::from_toml(rules).expect("sim rules");
        let shared = ShapingShared::new(rules, shards, unix_at_epoch);
        Sim {
            now: 0,
            shapers: (0..shards).map(|_| Shaper::new(shared.clone())).collect(),
            mxs: Vec::new(),
            queues: Vec::new(),
            conns: Vec::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            rng: Rng(seed | 1),
            deferrals: Vec::new(),
        }
    }

    fn mx(&mut self, mx: Mx) -> usize {
        self.mxs.push(mx);
        self.mxs.len() - 1
    }

    fn queue(
        &mut self,
        shard: usize,
        source: &str,
        domain: &str,
        mx: usize,
        backlog: u64,
    ) -> usize {
        let host = self.mxs[mx].host;
        let sh = &mut self.shapers[shard];
        let src = sh.source(source);
        let route = sh.route(src, domain, host, Nanos(0));
        self.queues.push(Queue {
            shard,
            route,
            mx,
            backlog,
            open: 0,
            connect_at: None,
            waiting_for_close: false,
        });
        let q = self.queues.len() - 1;
        self.schedule_connect(q, 0);
        q
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn schedule_connect(&mut self, q: usize, t: u64) {
        let queue = &mut self.queues[q];
        if queue.connect_at.is_some_and(|c| c <= t) {
            return;
        }
        queue.connect_at = Some(t);
        self.at(t, Ev::TryConnect(q));
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse((t, _, ev))) = self.heap.peek().copied() {
            if t > end {
                break;
            }
            self.heap.pop();
            self.now = t;
            match ev {
                Ev::TryConnect(q) => {
                    if self.queues[q].connect_at != Some(t) {
                        continue; // superseded by an earlier attempt
                    }
                    self.queues[q].connect_at = None;
                    self.try_connect(q);
                }
                Ev::Connected(c) => self.connected(c),
                Ev::SendNext(c) => self.send_next(c),
                Ev::Delivered(c, granted) => self.delivered(c, granted),
            }
        }
        self.now = end;
    }

    fn try_connect(&mut self, q: usize) {
        let now = self.now;
        let queue = &self.queues[q];
        if queue.backlog <= u64::from(queue.open) {
            return;
        }
        let (shard, route) = (queue.shard, queue.route);
        match self.shapers[shard].may_connect(route, Nanos(now)) {
            Ok(permit) => {
                self.queues[q].open += 1;
                self.conns.push(Some(Conn {
                    queue: q,
                    permit,
                    sent: 0,
                    at_mx: false,
                }));
                let c = self.conns.len() - 1;
                let latency = self.rng.between(5 * MS, 40 * MS);
                self.at(now + latency, Ev::Connected(c));
                // Open further connections in parallel while there is work for them.
                self.schedule_connect(q, now);
            }
            Err(Deferral::NotBefore(t, reason)) => {
                self.deferrals.push((now, reason, t.0));
                assert!(t.0 > now, "not-before in the past: {reason:?}");
                self.schedule_connect(q, t.0);
            }
            Err(Deferral::ConnectionsBusy) => self.queues[q].waiting_for_close = true,
            Err(Deferral::ConnectionSpent) => unreachable!("only may_send says that"),
        }
    }

    fn connected(&mut self, c: usize) {
        let now = self.now;
        let conn = self.conns[c].as_mut().expect("live connection");
        let q = conn.queue;
        let (shard, mx) = (self.queues[q].shard, self.queues[q].mx);
        let m = &mut self.mxs[mx];
        m.connect_attempts.push(now);
        if m.down {
            let conn = self.conns[c].take().expect("conn");
            self.shapers[shard].on_connect_failed(conn.permit, Nanos(now));
            self.closed(q);
            self.schedule_connect(q, now + 5 * S);
            return;
        }
        if m.open >= m.max_conns {
            m.refused_sessions += 1;
            m.refused_times.push(now);
            let e = EnhancedCode::parse("4.7.0");
            self.shapers[shard].on_reply(
                &conn.permit,
                Phase::Greeting,
                reply_signal(
                    421,
                    e,
                    b"Too many connections from your IP, try again later",
                ),
                Nanos(now),
            );
            let conn = self.conns[c].take().expect("conn");
            self.shapers[shard].on_connection_closed(conn.permit, Nanos(now));
            self.closed(q);
            self.schedule_connect(q, now + S);
            return;
        }
        m.open += 1;
        m.max_open = m.max_open.max(m.open);
        m.session_times.push(now);
        conn.at_mx = true;
        self.shapers[shard].on_reply(
            &conn.permit,
            Phase::Greeting,
            reply_signal(220, None, b"ready"),
            Nanos(now),
        );
        self.at(now, Ev::SendNext(c));
    }

    fn close(&mut self, c: usize) {
        let conn = self.conns[c].take().expect("conn");
        let q = conn.queue;
        let mx = self.queues[q].mx;
        if conn.at_mx {
            self.mxs[mx].open -= 1;
            self.mxs[mx].max_per_session = self.mxs[mx].max_per_session.max(conn.sent);
        }
        let shard = self.queues[q].shard;
        self.shapers[shard].on_connection_closed(conn.permit, Nanos(self.now));
        self.closed(q);
    }

    fn closed(&mut self, q: usize) {
        self.queues[q].open -= 1;
        let now = self.now;
        for w in 0..self.queues.len() {
            if self.queues[w].waiting_for_close {
                self.queues[w].waiting_for_close = false;
                self.schedule_connect(w, now);
            }
        }
        self.schedule_connect(q, now);
    }

    fn send_next(&mut self, c: usize) {
        let now = self.now;
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        let q = conn.queue;
        if self.queues[q].backlog == 0 {
            self.close(c);
            return;
        }
        let shard = self.queues[q].shard;
        match self.shapers[shard].may_send(&mut conn.permit, Nanos(now)) {
            Ok(()) => {
                conn.sent += 1;
                self.queues[q].backlog -= 1;
                let mx = self.queues[q].mx;
                self.mxs[mx].mail_times.push(now);
                let latency = self.rng.between(10 * MS, 60 * MS);
                self.at(now + latency, Ev::Delivered(c, now));
            }
            Err(Deferral::NotBefore(t, reason)) => {
                self.deferrals.push((now, reason, t.0));
                assert!(t.0 > now, "not-before in the past: {reason:?}");
                if t.0 - now <= 2 * S {
                    self.at(t.0, Ev::SendNext(c));
                } else {
                    // Do not hold an idle connection for long: close it and come back at t.
                    self.close(c);
                    self.queues[q].connect_at = None;
                    self.schedule_connect(q, t.0);
                }
            }
            Err(Deferral::ConnectionSpent) => self.close(c),
            Err(Deferral::ConnectionsBusy) => unreachable!("only may_connect says that"),
        }
    }

    fn delivered(&mut self, c: usize, _granted: u64) {
        let now = self.now;
        let conn = self.conns[c].as_ref().expect("conn");
        let q = conn.queue;
        let (shard, mx) = (self.queues[q].shard, self.queues[q].mx);
        let m = &mut self.mxs[mx];
        let throttled = match m.rate {
            Some((count, window)) => {
                while m.recent.front().is_some_and(|&t| t + window <= now) {
                    m.recent.pop_front();
                }
                m.recent.len() >= count
            }
            None => false,
        };
        if throttled {
            m.throttled_messages += 1;
            self.queues[q].backlog += 1; // retried later, never bounced
            let e = EnhancedCode::parse("4.7.1");
            self.shapers[shard].on_reply(
                &conn.permit,
                Phase::Mail,
                reply_signal(451, e, b"Rate limited, slow down"),
                Nanos(now),
            );
        } else {
            m.recent.push_back(now);
            m.accepted.push(now);
        }
        self.at(now, Ev::SendNext(c));
    }
}

/// Every time in `times` conforms to a token bucket of `p` (the reference model grants each one).
fn assert_conforms(times: &[u64], p: BucketParams, what: &str) {
    let mut b = TokenBucket::new(p, Nanos(0));
    for (i, &t) in times.iter().enumerate() {
        assert!(
            b.try_take(p, Nanos(t), 1).is_ok(),
            "{what}: event #{i} at {t} ns exceeds {}/s burst {}",
            p.per_second(),
            p.burst
        );
    }
}

fn per_window(times: &[u64], len: u64, windows: u64) -> Vec<u64> {
    let mut v = vec![0; windows as usize];
    for &t in times {
        if let Some(slot) = v.get_mut((t / len) as usize) {
            *slot += 1;
        }
    }
    v
}

/// Two days, one provider MX reached from two domains on two shards (so the lane is the shared, atomic
/// one), a receiver that accepts everything: what reaches the receiver never exceeds the configured
/// connections, message rate, connection rate, messages per connection or hourly cap, and the hourly
/// cap is used to the message.
#[test]
fn two_days_never_exceed_the_configured_limits() {
    let rules = r#"
        [defaults]
        max_connections = 50
        [[provider]]
        name = "bigmail"
        mx_suffixes = [".bigmail.test"]
        max_connections = 4
        message_rate = "5/s"
        message_burst = 5
        connection_rate = "30/min"
        connection_burst = 2
        max_messages_per_connection = 20
        hourly_cap = 3000
    "#;
    let mut sim = Sim::new(rules, 2, 0, seed(7));
    let mx = sim.mx(Mx {
        host: "mx1.bigmail.test",
        max_conns: 1_000,
        ..Mx::default()
    });
    // Enough work for three days; the caps hold it back.
    sim.queue(0, "192.0.2.1", "a.example", mx, 200_000);
    sim.queue(1, "192.0.2.1", "b.example", mx, 200_000);
    sim.run_until(2 * DAY);
    let m = &sim.mxs[mx];
    assert!(m.max_open <= 4, "max open {}", m.max_open);
    assert!(
        m.max_open >= 3,
        "the connection cap was not used: {}",
        m.max_open
    );
    assert_eq!(m.refused_sessions, 0);
    assert!(m.max_per_session <= 20);
    assert_conforms(&m.mail_times, BucketParams::new(200 * MS, 5), "messages");
    assert_conforms(
        &m.connect_attempts,
        BucketParams::new(2 * S, 2),
        "connections",
    );
    let hours = per_window(&m.mail_times, H, 48);
    for (h, n) in hours.iter().enumerate() {
        assert_eq!(
            *n, 3000,
            "hour {h}: the hourly cap is met exactly (5/s would allow 18,000)"
        );
    }
    assert!(sim.deferrals.iter().any(|d| d.1 == Reason::HourlyCap));
    // Every connection slot came back: nothing leaked across 2 days of open/close.
    sim.run_until(2 * DAY + H); // the backlog keeps it busy; close everything by draining queues
    for q in &mut sim.queues {
        q.backlog = 0;
    }
    sim.run_until(2 * DAY + 2 * H);
    let route = sim.queues[0].route;
    assert_eq!(
        sim.shapers[0].connections(route),
        0,
        "a connection slot leaked"
    );
}

/// A receiver stricter than the configuration (3 connections, 4 messages/s) against a sender configured
/// for 10 connections and 20 messages/s: adaptive backoff brings the sender down to what the receiver
/// accepts. After the first hour, throttling replies are rare and throughput stays near the receiver's
/// limit, over six hours.
#[test]
fn adaptive_backoff_converges_to_what_the_receiver_accepts() {
    let rules = r#"
        [defaults]
        max_connections = 10
        message_rate = "20/s"
        message_burst = 20
        max_messages_per_connection = 100
    "#;
    let mut sim = Sim::new(rules, 1, 0, seed(11));
    let mx = sim.mx(Mx {
        host: "mx.strict.test",
        max_conns: 3,
        rate: Some((40, 10 * S)),
        ..Mx::default()
    });
    sim.queue(0, "192.0.2.2", "strict.test", mx, u64::MAX / 2);
    sim.run_until(6 * H);
    let m = &sim.mxs[mx];
    let attempts_late = m.mail_times.iter().filter(|&&t| t >= H).count() as f64;
    let accepted_late = m.accepted.iter().filter(|&&t| t >= H).count() as f64;
    let rejected_late = attempts_late - accepted_late;
    let seconds = (5 * H / S) as f64;
    assert!(
        rejected_late / attempts_late < 0.03,
        "still throttled after convergence: {rejected_late} of {attempts_late}"
    );
    let rate = accepted_late / seconds;
    eprintln!(
        "refused sessions per minute, first hour: {:?}",
        per_window(&m.refused_times, MIN, 60)
    );
    eprintln!(
        "converged: {rate:.2} msg/s accepted of 4/s, {:.2} % throttled, {} sessions refused, max open {}",
        100.0 * rejected_late / attempts_late,
        m.refused_sessions,
        m.max_open
    );
    assert!(rate <= 4.0 + 1e-9, "receiver's limit exceeded? {rate}/s");
    assert!(rate >= 2.0, "backed off too far: {rate}/s accepted of 4/s");
    // Refused sessions stop too: the connection cap came down below the receiver's 3. A refusal holds
    // new connections for the cooldown, so the sender does not answer "too many connections" by
    // reconnecting at once.
    assert!(m.max_open <= 3);
    assert!(
        m.refused_sessions <= 30,
        "{} sessions refused",
        m.refused_sessions
    );
    let late_refusals = m.refused_sessions;
    sim.run_until(7 * H);
    let m = &sim.mxs[mx];
    assert!(
        m.refused_sessions - late_refusals <= 2,
        "connections still refused"
    );
    assert!(
        m.throttled_messages > 0,
        "the receiver never had to throttle: test is too easy"
    );
    let snap = sim.shapers[0].snapshot(sim.queues[0].route, Nanos(7 * H));
    let live = snap.live.expect("live");
    assert!(live.throttles > 0 && live.throttles <= m.throttled_messages + m.refused_sessions);
}

/// A new IP on the standard warm-up schedule with far more mail queued than it may send: over 14 days,
/// the receivers see exactly the schedule's volume each day (1,000 ×5, 2,000 ×3, 5,000 ×2, 10,000,
/// 13,000, 16,000, 19,000), to the message, with nothing bounced: everything over the cap waits.
/// The source started at midnight UTC two days before the engine's epoch (10:00 UTC), so day boundaries
/// fall at 14:00 engine time.
#[test]
fn warmup_is_followed_to_the_message_for_two_weeks() {
    let rules = r#"
        [defaults]
        max_connections = 20
        message_rate = "100/s"
        message_burst = 50
        max_messages_per_connection = 500
        [[warmup]]
        name = "standard"
        steps = [[5, 1000], [3, 2000], [2, 5000], [1, 10000]]
        increase = 3000
        [[source]]
        name = "198.51.100.7"
        warmup = "standard"
        warmup_started = "2026-11-21"
    "#;
    let start_day = 20_778u64; // 2026-11-21
    let epoch = (start_day + 2) * 86_400 + 10 * 3_600; // 2026-11-23 10:00 UTC
    let mut sim = Sim::new(rules, 2, epoch, seed(3));
    let a = sim.mx(Mx {
        host: "mx.a.test",
        max_conns: 100,
        ..Mx::default()
    });
    let b = sim.mx(Mx {
        host: "mx.b.test",
        max_conns: 100,
        ..Mx::default()
    });
    // Two domains on two shards draw from the same source budget.
    sim.queue(0, "198.51.100.7", "a.test", a, 1_000_000);
    sim.queue(1, "198.51.100.7", "b.test", b, 1_000_000);
    sim.run_until(14 * DAY);
    let offset = 14 * H; // day 2 of the schedule ends at engine time 14:00
    let mut all: Vec<u64> = sim.mxs[a].mail_times.clone();
    all.extend(&sim.mxs[b].mail_times);
    all.sort_unstable();
    let day_of = |t: u64| {
        if t < offset {
            2
        } else {
            3 + (t - offset) / DAY
        }
    };
    let mut per_day = std::collections::BTreeMap::new();
    for &t in &all {
        *per_day.entry(day_of(t)).or_insert(0u64) += 1;
    }
    let schedule = super::WarmupSchedule::standard();
    for day in 2..=15u64 {
        let sent = per_day.get(&day).copied().unwrap_or(0);
        let want = schedule.allowance(day);
        assert_eq!(sent, want, "day {day} of the schedule");
    }
    // Deferrals for the warm-up name the next day's start exactly.
    for &(at, _, t) in sim.deferrals.iter().filter(|d| d.1 == Reason::Warmup) {
        assert_eq!(day_of(t), day_of(at) + 1, "deferred at {at} to {t}");
        assert!(
            t == offset || (t - offset).is_multiple_of(DAY),
            "not a day boundary: {t}"
        );
    }
    // Nothing was lost: what was not sent is still queued.
    let queued: u64 = sim.queues.iter().map(|q| q.backlog).sum();
    assert_eq!(queued + all.len() as u64, 2_000_000);
}

/// A domain whose two MX hosts are both down is backed off as a whole: attempts come at growing
/// intervals (1, 2, 4, ... minutes up to the hour), not every few seconds.
#[test]
fn a_destination_whose_mx_hosts_all_fail_is_backed_off_as_a_whole() {
    let rules = "[defaults]\nmax_connections = 5\n";
    let mut sim = Sim::new(rules, 1, 0, seed(5));
    let m1 = sim.mx(Mx {
        host: "mx1.dead.test",
        down: true,
        max_conns: 10,
        ..Mx::default()
    });
    let m2 = sim.mx(Mx {
        host: "mx2.dead.test",
        down: true,
        max_conns: 10,
        ..Mx::default()
    });
    sim.queue(0, "192.0.2.3", "dead.test", m1, 100);
    sim.queue(0, "192.0.2.3", "dead.test", m2, 100);
    sim.run_until(6 * H);
    let attempts = sim.mxs[m1].connect_attempts.len() + sim.mxs[m2].connect_attempts.len();
    // Without destination backoff: a retry every 5 s per MX = 8,640 attempts.
    assert!(
        attempts < 50,
        "{attempts} connection attempts to a dead destination"
    );
    let backoffs: Vec<u64> = sim
        .deferrals
        .iter()
        .filter(|d| d.1 == Reason::DestinationBackoff)
        .map(|d| d.2)
        .collect();
    assert!(!backoffs.is_empty());
    // Growing gaps between the destination's not-before times, capped at one hour.
    let mut distinct: Vec<u64> = backoffs.clone();
    distinct.dedup();
    let gaps: Vec<u64> = distinct.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] + 10 * S >= g[0]),
        "gaps shrink: {gaps:?}"
    );
    // Each gap is the backoff plus, at most, the one-minute probe window of the first MX host.
    assert!(gaps.iter().all(|&g| g <= H + 2 * MIN), "{gaps:?}");
    // The MX host comes back: delivery resumes after the current backoff.
    sim.mxs[m1].down = false;
    sim.run_until(8 * H);
    assert_eq!(
        sim.mxs[m1].accepted.len(),
        100,
        "mail for the host that came back was delivered"
    );
    assert!(sim.mxs[m2].accepted.is_empty());
}

/// Reloading the rules mid-run changes the limits the next decisions use.
#[test]
fn a_reload_takes_effect_at_the_next_decision() {
    let slow = "[defaults]\nmax_connections = 2\nmessage_rate = \"1/s\"\nmessage_burst = 1\n";
    let fast = "[defaults]\nmax_connections = 2\nmessage_rate = \"10/s\"\nmessage_burst = 1\n";
    let mut sim = Sim::new(slow, 1, 0, seed(9));
    let mx = sim.mx(Mx {
        host: "mx.r.test",
        max_conns: 10,
        ..Mx::default()
    });
    sim.queue(0, "192.0.2.4", "r.test", mx, 1_000_000);
    sim.run_until(10 * MIN);
    let before = sim.mxs[mx].mail_times.len();
    assert!((590..=601).contains(&before), "{before}");
    let shared = {
        // Every shard was made from the same shared state; reach it through a fresh shaper's rules.
        RuleSet::from_toml(fast).expect("fast")
    };
    sim.shapers[0].shared_for_tests().reload(shared);
    sim.run_until(20 * MIN);
    let after = sim.mxs[mx].mail_times.len() - before;
    assert!((5_900..=6_010).contains(&after), "{after}");
    let p = BucketParams::new(100 * MS, 1);
    let late: Vec<u64> = sim.mxs[mx].mail_times[before + 1..].to_vec();
    let mut b = TokenBucket::new(p, Nanos(late[0]));
    for &t in &late[1..] {
        assert!(b.try_take(p, Nanos(t), 1).is_ok());
    }
}

/// Random sequences of every hook from three shards on one provider lane (connect, send, replies of all
/// kinds, connect failures, closes, drops, reloads), at random times: the lane's connection count always
/// equals the permits held, never exceeds the cap, and grants never exceed the bucket's bound.
#[test]
fn random_hook_sequences_keep_the_books_exact() {
    let rules = r#"
        [defaults]
        max_connections = 9
        [[provider]]
        name = "p"
        mx_suffixes = [".p.test"]
        max_connections = 3
        message_rate = "50/s"
        message_burst = 4
        max_messages_per_connection = 5
    "#;
    let shared = ShapingShared::new(RuleSet::from_toml(rules).expect("rules"), 3, 0);
    let mut rng = Rng(seed(13) | 1);
    let mut shapers: Vec<Shaper> = (0..3).map(|_| Shaper::new(shared.clone())).collect();
    let mut routes = Vec::new();
    for (i, s) in shapers.iter_mut().enumerate() {
        let src = s.source("ip");
        let mx = ["mx1.p.test", "mx2.p.test"][i % 2];
        routes.push(s.route(src, &format!("d{i}.test"), mx, Nanos(0)));
    }
    let mut held: Vec<(usize, ConnectionPermit)> = Vec::new();
    let mut grants: Vec<u64> = Vec::new();
    let mut now = 0u64;
    let replies: [(u16, &str, &[u8]); 5] = [
        (250, "2.0.0", b"ok"),
        (421, "4.7.0", b"too many connections"),
        (451, "4.7.1", b"rate limited"),
        (450, "4.2.0", b"mailbox busy"),
        (550, "5.1.1", b"no such user"),
    ];
    for step in 0..200_000u32 {
        now += rng.next() % (30 * MS);
        let sh = (rng.next() % 3) as usize;
        match rng.next() % 10 {
            0..=2 => {
                if let Ok(p) = shapers[sh].may_connect(routes[sh], Nanos(now)) {
                    held.push((sh, p));
                }
            }
            3..=5 if !held.is_empty() => {
                let i = (rng.next() % held.len() as u64) as usize;
                let (s, p) = &mut held[i];
                if shapers[*s].may_send(p, Nanos(now)).is_ok() {
                    grants.push(now);
                }
            }
            6 if !held.is_empty() => {
                let i = (rng.next() % held.len() as u64) as usize;
                let (s, p) = &held[i];
                // Mostly acceptances, some trouble of every kind.
                let (code, e, text) = replies[(rng.next() % 100).saturating_sub(95) as usize];
                let phase = if rng.next().is_multiple_of(4) {
                    Phase::Greeting
                } else {
                    Phase::Mail
                };
                shapers[*s].on_reply(
                    p,
                    phase,
                    reply_signal(code, EnhancedCode::parse(e), text),
                    Nanos(now),
                );
            }
            7 if !held.is_empty() => {
                let i = (rng.next() % held.len() as u64) as usize;
                let (s, p) = held.swap_remove(i);
                match rng.next() % 30 {
                    0 => shapers[s].on_connect_failed(p, Nanos(now)),
                    1..=14 => drop(p),
                    _ => shapers[s].on_connection_closed(p, Nanos(now)),
                }
            }
            8 if step.is_multiple_of(1_000) => {
                shared.reload(RuleSet::from_toml(rules).expect("rules"))
            }
            _ => {}
        }
        let count = shapers[0].connections(routes[0]);
        assert_eq!(
            count as usize,
            held.len(),
            "step {step}: the books disagree"
        );
        assert!(count <= 3, "step {step}: {count} connections");
    }
    eprintln!(
        "{} grants, {} permits held at the end",
        grants.len(),
        held.len()
    );
    assert!(
        grants.len() > 1_000,
        "too few grants for a meaningful check"
    );
    assert_conforms(&grants, BucketParams::new(20 * MS, 4), "grants");
    held.clear();
    assert_eq!(shapers[1].connections(routes[1]), 0);
}

/// What the shaper is told of a reply: the shipped bounce rules' verdict, as the engine gives it.
fn reply_signal(code: u16, enhanced: Option<EnhancedCode>, text: &[u8]) -> ReplySignal {
    use std::sync::OnceLock;
    static RULES: OnceLock<crate::bounce::Classifier> = OnceLock::new();
    let rules = RULES.get_or_init(crate::bounce::Classifier::default_rules);
    let text = String::from_utf8_lossy(text);
    let c = rules.classify(&crate::bounce::Diagnostic {
        code: Some(code),
        enhanced,
        text: &text,
        ..crate::bounce::Diagnostic::default()
    });
    super::signal(code, c.throttle)
}
