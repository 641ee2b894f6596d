//! Deterministic simulation of a shard: the real [`ShardCore`] (queues, routing, pools, SMTP sessions,
//! retries, spool) on a virtual clock, against simulated DNS and MX hosts driven by a seeded RNG.
//!
//! Everything the shard asks for ([`Action`]s) becomes a scheduled simulation event: DNS answers after
//! a latency, connections that open or fail, SMTP servers that answer each command after a latency
//! with 250, 4xx or 5xx at the rates configured, or drop the connection. Events are ordered by
//! (virtual time, sequence number), so the same seed gives the same run, event for event. Days of
//! virtual time take seconds: nothing waits for real time.
//!
//! Simplifications: the simulated servers speak PIPELINING and CHUNKING only (no DATA path, no TLS),
//! one MX address per MX host, and a dropped connection is dropped before the end of data (so an
//! accepted message is never delivered twice).

use super::config::{EngineConfig, TlsPolicy};
use super::event::{DeliveryEvent, EventKind};
use super::metrics::ShardMetrics;
use super::retry::RetryPolicy;
use super::shard::{Action, ConnId, Now, ShardCore};
use crate::dns::{Failure, MxHost, Reason};
use crate::spool::{Envelope, MessageFlags, Options, Priority, Spool, SyncPolicy};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a simulated MX host behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBehaviour {
    /// One-way latency of each reply.
    pub latency: Duration,
    /// Share of RCPT commands answered 451.
    pub rcpt_4xx: f64,
    /// Share of RCPT commands answered 550 5.1.1.
    pub rcpt_5xx: f64,
    /// Share of transactions where the connection drops before the end of data.
    pub drop: f64,
    /// The host refuses connections.
    pub down: bool,
    /// The first attempt for each recipient gets 451 (greylisting).
    pub greylist: bool,
}

impl Default for HostBehaviour {
    fn default() -> Self {
        HostBehaviour {
            latency: Duration::from_millis(5),
            rcpt_4xx: 0.0,
            rcpt_5xx: 0.0,
            drop: 0.0,
            down: false,
            greylist: false,
        }
    }
}

/// A simulated domain: its MX hosts in preference order (empty: NXDOMAIN).
#[derive(Debug, Clone)]
pub struct SimDomain {
    /// The domain.
    pub name: String,
    /// MX host indexes into [`World::hosts`], in preference order.
    pub mx: Vec<usize>,
}

/// The simulated world.
#[derive(Debug, Clone)]
pub struct World {
    /// MX hosts; host `i` has the address 10.0.x.y (never used as a real address).
    pub hosts: Vec<HostBehaviour>,
    /// Domains.
    pub domains: Vec<SimDomain>,
    /// DNS latency.
    pub dns_latency: Duration,
}

/// What a run produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Every event in order.
    pub events: Vec<DeliveryEvent>,
    /// Messages each host accepted, per recipient address.
    pub accepted: HashMap<String, u32>,
    /// Most connections open at once per host.
    pub peak_connections: Vec<usize>,
    /// Connections opened per host.
    pub connections: Vec<usize>,
    /// Virtual time at the end.
    pub elapsed: Duration,
    /// Simulation events processed.
    pub steps: u64,
    /// What the shard handed the suppression list (with `[suppression]` enabled), in order.
    pub observations: Vec<super::suppression::Observation>,
    /// The envelope sender (MAIL FROM) of each accepted message, per recipient address.
    pub mail_from: HashMap<String, String>,
    /// Messages the shard still tracks for cancellation at the end (only those with a live recipient).
    pub cancellable: usize,
    /// The most recipients the shard held in its ready queues at once (after any step).
    pub peak_ready: usize,
    /// The most transactions (MAIL commands) a server received in one delivery of bytes: above 1
    /// only with transactions in flight.
    pub max_transactions_per_read: usize,
    /// Failures the shard classified (each distinct reply once, shaping and retries together).
    pub classifications: u64,
}

impl Outcome {
    /// Events of one kind.
    pub fn count(&self, kind: EventKind) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }

    /// A digest of the run for determinism checks.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for e in &self.events {
            for b in e.to_json().bytes().chain(e.at_ms.to_le_bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x100000001b3);
            }
        }
        h
    }
}

#[derive(Debug)]
enum SimEvent {
    Resolved(u32, String),
    Connected(ConnId, usize),
    ConnectFailed(ConnId),
    Bytes(ConnId, Vec<u8>),
    Eof(ConnId),
    Timer,
    Submit(usize),
}

/// A simulated SMTP server on one connection (PIPELINING + CHUNKING).
#[derive(Debug)]
struct SimServer {
    host: usize,
    inbuf: Vec<u8>,
    bdat_left: usize,
    rcpts: Vec<String>,
    ok_rcpts: Vec<String>,
    dropped: bool,
    mail_from: String,
}

/// Runs the simulation.
#[derive(Debug)]
pub struct Simulation {
    world: World,
    core: ShardCore,
    rng: StdRng,
    base: Instant,
    base_unix_ms: u64,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    pending: HashMap<usize, SimEvent>,
    servers: HashMap<ConnId, SimServer>,
    timer_at: Option<Duration>,
    greylisted: HashMap<String, bool>,
    open: Vec<usize>,
    out: Outcome,
    submissions: Vec<(Duration, Vec<String>)>,
}

fn host_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8))
}

impl Simulation {
    /// A simulation with a fresh spool in `spool_dir`, the engine configuration `config` (its
    /// `[delivery]`, `[retry]` and sources apply) and a retry policy.
    pub fn new(
        world: World,
        config: &EngineConfig,
        retry: Arc<dyn RetryPolicy>,
        spool_dir: &Path,
        seed: u64,
    ) -> Simulation {
        let mut config = config.clone();
        config.delivery.tls = TlsPolicy::Disabled;
        config.delivery.port = 25;
        let resolved = Arc::new(config.resolve().expect("valid simulation configuration"));
        let opts = Options {
            policy: SyncPolicy::None,
            fixed_salt: Some(seed),
            ..Options::default()
        };
        let (spool, _) = Spool::open(spool_dir, opts).expect("simulation spool");
        let base = Instant::now();
        let base_unix_ms = 1_800_000_000_000;
        let now = Now {
            mono: base,
            unix_ms: base_unix_ms,
        };
        let rules = config.shaping.rule_set().expect("valid shaping rules");
        let shaping = crate::shaping::ShapingShared::new(rules, 1, base_unix_ms / 1000);
        let core = ShardCore::new(
            0,
            resolved,
            spool,
            retry,
            None,
            seed,
            Arc::new(ShardMetrics::default()),
            crate::shaping::Shaper::new(shaping),
            base,
            None,
            now,
        );
        let hosts = world.hosts.len();
        Simulation {
            world,
            core,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            base,
            base_unix_ms,
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            servers: HashMap::new(),
            timer_at: None,
            greylisted: HashMap::new(),
            open: vec![0; hosts],
            out: Outcome {
                peak_connections: vec![0; hosts],
                connections: vec![0; hosts],
                ..Outcome::default()
            },
            submissions: Vec::new(),
        }
    }

    fn at(&self) -> Now {
        Now {
            mono: self.base + self.now,
            unix_ms: self.base_unix_ms + self.now.as_millis() as u64,
        }
    }

    fn schedule(&mut self, after: Duration, ev: SimEvent) {
        self.seq += 1;
        let id = self.seq as usize;
        self.queue.push(Reverse((self.now + after, self.seq, id)));
        self.pending.insert(id, ev);
    }

    /// Submits a message with these recipients at virtual time `at`.
    pub fn submit_at(&mut self, at: Duration, recipients: Vec<String>) {
        let i = self.submissions.len();
        self.submissions.push((at, recipients));
        let after = at.saturating_sub(self.now);
        self.schedule(after, SimEvent::Submit(i));
    }

    /// Runs until `limit` of virtual time has passed or nothing is left to do.
    pub fn run(mut self, limit: Duration) -> Outcome {
        self.after_step();
        while let Some(Reverse((t, _, id))) = self.queue.pop() {
            if t > limit {
                break;
            }
            self.now = t;
            self.out.steps += 1;
            if std::env::var_os("VMTA_SIM_TRACE").is_some()
                && self.out.steps.is_multiple_of(100_000)
            {
                eprintln!(
                    "sim: step {} at {:?}, {} events",
                    self.out.steps,
                    self.now,
                    self.out.events.len()
                );
            }
            let Some(ev) = self.pending.remove(&id) else {
                continue;
            };
            self.step(ev);
            self.after_step();
        }
        self.out.elapsed = self.now;
        self.out.cancellable = self.core.cancellable();
        self.out.classifications = self.core.classifications();
        self.out
    }

    fn step(&mut self, ev: SimEvent) {
        let now = self.at();
        match ev {
            SimEvent::Submit(i) => {
                let rcpts = self.submissions[i].1.clone();
                let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
                let id = format!("{:016x}", i + 1);
                let tags = [(super::shard::ID_TAG, id.as_str())];
                let env = Envelope {
                    sender: "sender@sim.test",
                    recipients: &refs,
                    tenant: "sim",
                    tags: &tags,
                    priority: Priority::Bulk,
                    flags: MessageFlags::default(),
                    submitted_at: now.unix(),
                };
                let body = b"Subject: simulated\r\n\r\nbody\r\n";
                let (m, _) = self
                    .core
                    .spool_mut()
                    .append(&env, body)
                    .expect("spool append");
                self.core.enqueue((i + 1) as u64, m);
                self.core.dispatch_pending(now);
            }
            SimEvent::Resolved(domain, name) => {
                let answer = match self.world.domains.iter().find(|d| d.name == name) {
                    Some(d) if !d.mx.is_empty() => Ok(d
                        .mx
                        .iter()
                        .enumerate()
                        .map(|(pref, &h)| MxHost {
                            name: format!("mx{h}.sim.test"),
                            preference: (pref as u16 + 1) * 10,
                            addresses: vec![host_addr(h)],
                            implicit: false,
                        })
                        .collect()),
                    _ => Err(Failure {
                        reason: Reason::HostUnknown,
                        permanent: true,
                        detail: format!("{name}: NXDOMAIN"),
                    }),
                };
                self.core.on_resolved(now, domain, answer);
            }
            SimEvent::Connected(conn, host) => {
                self.servers.insert(
                    conn,
                    SimServer {
                        host,
                        inbuf: Vec::new(),
                        bdat_left: 0,
                        rcpts: Vec::new(),
                        ok_rcpts: Vec::new(),
                        dropped: false,
                        mail_from: String::new(),
                    },
                );
                self.open[host] += 1;
                self.out.connections[host] += 1;
                self.out.peak_connections[host] =
                    self.out.peak_connections[host].max(self.open[host]);
                self.core.on_connected(now, conn);
                let latency = self.world.hosts[host].latency;
                self.schedule(
                    latency,
                    SimEvent::Bytes(conn, b"220 sim ESMTP\r\n".to_vec()),
                );
            }
            SimEvent::ConnectFailed(conn) => {
                self.core.on_connect_failed(now, conn, "connection refused")
            }
            SimEvent::Bytes(conn, bytes) => {
                if self.servers.contains_key(&conn) {
                    self.core.on_input(now, conn, &bytes);
                }
            }
            SimEvent::Eof(conn) => {
                if let Some(s) = self.servers.remove(&conn) {
                    self.open[s.host] -= 1;
                    self.core.on_eof(now, conn);
                }
            }
            SimEvent::Timer => {
                self.timer_at = None;
                self.core.handle_timeout(now);
            }
        }
    }

    fn after_step(&mut self) {
        let now = self.at();
        self.core.refill(now);
        self.out.peak_ready = self.out.peak_ready.max(self.core.ready_count());
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Resolve { domain, name } => {
                    let l = self.world.dns_latency;
                    self.schedule(l, SimEvent::Resolved(domain, name));
                }
                Action::Connect { conn, remote, .. } => {
                    let host = (0..self.world.hosts.len()).find(|h| host_addr(*h) == remote.ip());
                    match host {
                        Some(h) if !self.world.hosts[h].down => {
                            let l = self.world.hosts[h].latency;
                            self.schedule(l, SimEvent::Connected(conn, h));
                        }
                        _ => self.schedule(Duration::from_millis(1), SimEvent::ConnectFailed(conn)),
                    }
                }
                Action::Close { conn } => {
                    let mut rest = Vec::new();
                    self.core.transmit(now, conn, &mut rest);
                    if let Some(s) = self.servers.remove(&conn) {
                        self.open[s.host] -= 1;
                    }
                }
            }
        }
        let mut dirty = Vec::new();
        self.core.take_dirty(&mut dirty);
        for conn in dirty {
            let mut bytes = Vec::new();
            self.core.transmit(now, conn, &mut bytes);
            if !bytes.is_empty() {
                self.serve(conn, &bytes);
            }
        }
        let mut events = Vec::new();
        self.core.take_events(&mut events);
        self.out.events.extend(events);
        self.core.take_observations(&mut self.out.observations);
        if let Some(t) = self.core.poll_timeout(now) {
            let at = t.saturating_duration_since(self.base).max(self.now);
            if self.timer_at.is_none_or(|x| at < x) {
                self.timer_at = Some(at);
                let after = at - self.now;
                self.schedule(after, SimEvent::Timer);
            }
        }
    }

    /// The simulated server reads client bytes and schedules its replies.
    fn serve(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(s) = self.servers.get_mut(&conn) else {
            return;
        };
        let b = self.world.hosts[s.host].clone();
        s.inbuf.extend_from_slice(bytes);
        let mut replies = Vec::new();
        let mut eof = false;
        let mut mails = 0;
        loop {
            if s.bdat_left > 0 {
                let n = s.bdat_left.min(s.inbuf.len());
                s.inbuf.drain(..n);
                s.bdat_left -= n;
                if s.bdat_left > 0 {
                    break;
                }
                if s.dropped {
                    eof = true;
                    break;
                }
                if s.ok_rcpts.is_empty() {
                    replies.extend_from_slice(b"554 5.5.1 no valid recipients\r\n");
                } else {
                    for r in s.ok_rcpts.drain(..) {
                        self.out.mail_from.insert(r.clone(), s.mail_from.clone());
                        *self.out.accepted.entry(r).or_default() += 1;
                    }
                    replies.extend_from_slice(b"250 2.0.0 queued\r\n");
                }
                s.rcpts.clear();
                continue;
            }
            let Some(lf) = s.inbuf.iter().position(|c| *c == b'\n') else {
                break;
            };
            let line: Vec<u8> = s.inbuf.drain(..=lf).collect();
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let verb = text
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => replies.extend_from_slice(
                    b"250-sim\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
                ),
                "MAIL" => {
                    mails += 1;
                    s.rcpts.clear();
                    s.ok_rcpts.clear();
                    s.mail_from = text
                        .split('<')
                        .nth(1)
                        .and_then(|x| x.split('>').next())
                        .unwrap_or("")
                        .to_string();
                    s.dropped = self.rng.random_bool(b.drop.clamp(0.0, 1.0));
                    replies.extend_from_slice(b"250 2.1.0 ok\r\n");
                }
                "RCPT" => {
                    let addr = text
                        .split('<')
                        .nth(1)
                        .and_then(|x| x.split('>').next())
                        .unwrap_or("")
                        .to_string();
                    let first = b.greylist && !self.greylisted.contains_key(&addr);
                    if first {
                        self.greylisted.insert(addr.clone(), true);
                    }
                    let roll: f64 = self.rng.random_range(0.0..1.0);
                    if first || roll < b.rcpt_4xx {
                        replies.extend_from_slice(b"451 4.7.1 try again later\r\n");
                    } else if roll < b.rcpt_4xx + b.rcpt_5xx {
                        replies.extend_from_slice(b"550 5.1.1 no such user\r\n");
                    } else {
                        s.ok_rcpts.push(addr);
                        replies.extend_from_slice(b"250 2.1.5 ok\r\n");
                    }
                    s.rcpts.push(text);
                }
                "BDAT" => {
                    s.bdat_left = text
                        .split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    if s.bdat_left == 0 {
                        replies.extend_from_slice(b"250 2.0.0 queued\r\n");
                    }
                }
                "RSET" => replies.extend_from_slice(b"250 2.0.0 ok\r\n"),
                "QUIT" => {
                    replies.extend_from_slice(b"221 2.0.0 bye\r\n");
                    eof = true;
                    break;
                }
                _ => replies.extend_from_slice(b"502 5.5.2 unknown\r\n"),
            }
        }
        self.out.max_transactions_per_read = self.out.max_transactions_per_read.max(mails);
        let latency = b.latency;
        if !replies.is_empty() {
            self.schedule(latency, SimEvent::Bytes(conn, replies));
        }
        if eof {
            self.schedule(latency + Duration::from_micros(1), SimEvent::Eof(conn));
        }
    }

    /// Per-host statistics so far, keyed by host index.
    pub fn hosts(&self) -> BTreeMap<usize, usize> {
        self.open.iter().copied().enumerate().collect()
    }

    /// The address of simulated host `i`.
    pub fn host_address(i: usize) -> SocketAddr {
        SocketAddr::new(host_addr(i), 25)
    }
}
