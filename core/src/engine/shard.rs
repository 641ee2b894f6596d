//! One shard's delivery logic, without I/O: queues, routing, connection pools, SMTP sessions, retries.
//!
//! [`ShardCore`] owns the shard's spool and everything scheduled from it. It never touches a socket,
//! a DNS server or the clock: it asks for those through [`Action`]s and is told what happened through
//! its `on_*` methods, with the time passed in. The shard thread (`io.rs`) carries the actions out with
//! mio; the deterministic simulation carries them out against simulated MX hosts on a virtual clock.
//! Both drive the same code.
//!
//! # Model
//!
//! - A *queue* is keyed by (destination domain, source): PowerMTA's domain/VMTA queue. It holds
//!   [`RecipientId`]s ready to go, transactional mail ahead of bulk. Everything else about a recipient
//!   (address, attempts, state) stays in the spool's index, and its message in the spool's mapping.
//! - A domain's *route* is its ordered MX targets (or the smarthost), resolved on demand and kept for
//!   [`ROUTE_TTL`] (the resolver caches records by their own TTLs).
//! - A *host pool* is keyed by (source, MX address): its connections serve every queue whose route
//!   leads there, so domains sharing an MX host share connections. It holds idle sessions, counts open
//!   and connecting ones against `max_connections_per_host`, and keeps the queues waiting for it.
//! - A queue is dispatched to the first target whose pool is not marked down; a connection that fails
//!   before its session is ready (refused, timeout, 4xx or 5xx greeting, TLS failure) marks the pool
//!   down for `host_down_s` when it has no other open connection, and its waiting queues move to the
//!   next MX. When every target is down, the queue's recipients are deferred.
//! - Deferred recipients wait in a [`TimerWheel`] until their next attempt.
//!
//! Outcomes are recorded in the spool first; the events that report them are released by the shard
//! thread once the spool has committed those records ([`ShardCore::take_commit`]).

use super::config::{Resolved, TlsPolicy};
use super::event::{DeliveryEvent, EventKind};
use super::metrics::ShardMetrics;
use super::retry::{Decision, FailedAttempt, RetryPolicy};
use super::suppression::Observation;
use super::timer::TimerWheel;
use crate::bounce::{ClassifierHandle, Reason as BounceReason};
use crate::dns::{Failure as DnsFailure, MxHost, Reason as DnsReason};
use crate::shaping::{ConnectionPermit, Deferral, Nanos, RouteId, Shaper, SourceId};
use crate::smtp::session::Tls;
use crate::smtp::{
    CloseCause, Credentials, EnhancedCode, Envelope, Event as SessionEvent, MessageFailure, Phase,
    Recipient, Reply, Session, SessionConfig, TlsSettings, Transaction,
};
use crate::spool::{
    MessageFlags, MessageId, Priority, RecipientId, RecipientState, Spool, SpoolError, StateChange,
    Ticket,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a resolved route is used before it is resolved again.
pub const ROUTE_TTL: Duration = Duration::from_secs(60);

/// The tag carrying the engine-wide message id in the spool.
pub(crate) const ID_TAG: &str = "x-vmta-id";

/// The tenant the suppression list knows a message's tenant by (the default one for none).
fn suppression_tenant(tenant: &str, default: &str) -> String {
    if tenant.is_empty() {
        default.to_string()
    } else {
        tenant.to_string()
    }
}

/// A connection number, unique within the shard while the connection lives.
pub(crate) type ConnId = usize;

/// The time, twice: monotonic for timers, Unix seconds for what is persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic.
    pub mono: Instant,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// The current time.
    pub fn system() -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// Unix seconds.
    pub fn unix(&self) -> u64 {
        self.unix_ms / 1000
    }
}

/// What the shard asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Resolve the MX targets of a domain; answer with [`ShardCore::on_resolved`].
    Resolve { domain: u32, name: String },
    /// Open a TCP connection; answer with [`ShardCore::on_connected`] or
    /// [`ShardCore::on_connect_failed`].
    Connect {
        conn: ConnId,
        local: Option<IpAddr>,
        remote: SocketAddr,
    },
    /// Close a connection (after writing what [`ShardCore::transmit`] still gives).
    Close { conn: ConnId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct QueueKey {
    domain: u32,
    source: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PoolKey {
    source: u16,
    addr: SocketAddr,
    relay: bool,
}

#[derive(Debug, Clone)]
struct Target {
    mx: Arc<str>,
    addr: SocketAddr,
    relay: bool,
}

#[derive(Debug)]
enum Route {
    Unresolved,
    Resolving,
    Ready {
        targets: Arc<[Target]>,
        expires: Instant,
    },
}

#[derive(Debug)]
struct Domain {
    name: Arc<str>,
    route: Route,
    /// Sources with a queue for this domain.
    sources: Vec<u16>,
    /// The last connection-level failure, for deferrals when every target is down.
    last_error: String,
}

#[derive(Debug, Default)]
struct Queue {
    ready: [VecDeque<RecipientId>; 2],
    /// The pool whose waiter list holds this queue.
    waiting_on: Option<PoolKey>,
}

impl Queue {
    fn len(&self) -> usize {
        self.ready[0].len() + self.ready[1].len()
    }

    fn pop(&mut self) -> Option<RecipientId> {
        self.ready[0]
            .pop_front()
            .or_else(|| self.ready[1].pop_front())
    }

    fn peek_same_message(&mut self, msg: MessageId) -> Option<RecipientId> {
        for q in &mut self.ready {
            if q.front().is_some_and(|r| r.message == msg) {
                return q.pop_front();
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct HostPool {
    idle: Vec<ConnId>,
    connecting: usize,
    open: usize,
    down_until: Option<Instant>,
    /// The shaper said "not before" for a message on this pool's connections.
    paused_until: Option<Instant>,
    waiters: VecDeque<QueueKey>,
}

#[derive(Debug)]
struct InFlight {
    /// The transaction's recipients, each with whether its outcome is settled.
    rcpts: Vec<(RecipientId, bool)>,
}

impl InFlight {
    /// Recipients whose outcome is not settled yet.
    fn unsettled(&self) -> usize {
        self.rcpts.iter().filter(|(_, done)| !done).count()
    }
}

#[derive(Debug)]
struct Conn {
    key: PoolKey,
    mx: Arc<str>,
    /// The shaping layer's leave to hold this connection (released when dropped).
    permit: ConnectionPermit,
    session: Option<Session>,
    ready: bool,
    connect_deadline: Instant,
    /// Transactions handed to the session whose outcome is not in, oldest first (the session
    /// reports outcomes in this order).
    txns: VecDeque<InFlight>,
}

/// What is left of a connection once its permit went back to the shaping layer.
#[derive(Debug)]
struct ClosedConn {
    key: PoolKey,
    mx: Arc<str>,
    session: Option<Session>,
    ready: bool,
    txns: VecDeque<InFlight>,
    _deadline: Instant,
}

/// The last reply the shaping step classified, and how hard it throttles.
#[derive(Debug)]
struct ShapingVerdict {
    generation: u64,
    code: u16,
    enhanced: Option<EnhancedCode>,
    phase: Phase,
    mx: Arc<str>,
    text: String,
    slow_down: u16,
}

/// A final outcome the spool could not record yet.
#[derive(Debug)]
struct Unrecorded {
    rid: RecipientId,
    state: RecipientState,
    attempts: u16,
    reply: String,
}

/// An attempt's outcome for one recipient.
#[derive(Debug, Clone)]
enum Outcome {
    Delivered(Reply),
    Failed {
        permanent: bool,
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: String,
        phase: Phase,
        /// For a failed MX lookup, the resolver's reason.
        dns: Option<DnsReason>,
    },
}

impl Outcome {
    fn from_reply(reply: &Reply, phase: Phase) -> Outcome {
        Outcome::Failed {
            permanent: reply.is_permanent(),
            code: reply.code,
            enhanced: reply.enhanced,
            text: reply.text.replace('\n', " "),
            phase,
            dns: None,
        }
    }

    fn from_failure(f: &MessageFailure, phase: Phase) -> Outcome {
        match f {
            MessageFailure::Reply(r) => Outcome::from_reply(r, phase),
            MessageFailure::TooLarge { .. } => Outcome::Failed {
                permanent: true,
                code: 552,
                enhanced: EnhancedCode::new(5, 3, 4),
                text: f.to_string(),
                phase,
                dns: None,
            },
            MessageFailure::Smtputf8Unsupported => Outcome::Failed {
                permanent: true,
                code: 553,
                enhanced: EnhancedCode::new(5, 6, 7),
                text: f.to_string(),
                phase,
                dns: None,
            },
            MessageFailure::NoValidRecipients | MessageFailure::SessionClosed(_) => {
                Outcome::Failed {
                    permanent: false,
                    code: 0,
                    enhanced: None,
                    text: f.to_string(),
                    phase,
                    dns: None,
                }
            }
        }
    }

    fn temporary(text: String, phase: Phase) -> Outcome {
        Outcome::Failed {
            permanent: false,
            code: 0,
            enhanced: None,
            text,
            phase,
            dns: None,
        }
    }
}

/// One shard's delivery state machine. See the module documentation.
#[derive(Debug)]
pub(crate) struct ShardCore {
    shard: usize,
    cfg: Arc<Resolved>,
    spool: Spool,
    retry: Arc<dyn RetryPolicy>,
    rng: StdRng,
    mx_configs: Vec<Arc<SessionConfig>>,
    relay_configs: Vec<Arc<SessionConfig>>,
    domain_ids: crate::FastMap<Arc<str>, u32>,
    domains: Vec<Domain>,
    queues: crate::FastMap<QueueKey, Queue>,
    pools: crate::FastMap<PoolKey, HostPool>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<ConnId>,
    live_conns: usize,
    wheel: TimerWheel<RecipientId>,
    /// Queues with new work to dispatch.
    pending: VecDeque<QueueKey>,
    /// Recipients in the ready queues (bounded by `active_recipients`, give or take a message).
    ready_count: usize,
    /// The first spool message not yet admitted to the queues: it and every later one wait in the
    /// spool ([`ShardCore::admit_backlog`]). `None` when everything is admitted.
    backlog: Option<MessageId>,
    /// The recipients waiting in the spool when it was opened, counted by
    /// [`ShardCore::count_recovered`] before the shard thread starts.
    recovered: Option<usize>,
    /// The largest engine id given to a message so far: the spool key of the newest message.
    last_key: u64,
    /// How far below `last_key` an engine id has arrived at most ([`ShardCore::remember_id`]).
    max_lag: u64,
    actions: VecDeque<Action>,
    /// Connections that may have output.
    dirty: Vec<ConnId>,
    events: Vec<DeliveryEvent>,
    /// The event log's shard side: each outcome's line is rendered before its spool record.
    log: Option<Arc<super::eventlog::ShardLog>>,
    /// Recipients in a transaction now, kept across a crash ([`super::attempts`]).
    journal: Option<super::attempts::AttemptJournal>,
    commit: Option<Ticket>,
    /// The last reply's text as the spool records it, reused from one outcome to the next.
    reply_scratch: String,
    metrics: Arc<ShardMetrics>,
    shutting_down: bool,
    shaper: Shaper,
    /// Shaping time zero.
    epoch: Instant,
    shaping_sources: Vec<SourceId>,
    routes: crate::FastMap<(u16, u32, Arc<str>), RouteId>,
    /// Queues to dispatch again at a time (shaping said "not before").
    wakeups: BinaryHeap<Reverse<(Instant, u32, u16)>>,
    /// Tenants, to hold a locked tenant's mail.
    tenants: Option<Arc<crate::policy::TenantRegistry>>,
    tenants_generation: u64,
    /// Recipients held because their tenant is locked; looked at again when the tenants change.
    held: Vec<RecipientId>,
    /// Delivery paused by the host: no transaction starts.
    paused: bool,
    /// Destinations and tenants paused by an operator.
    holds: Arc<super::queues::Holds>,
    /// The last failure's classification, reused while the same reply comes back.
    verdicts: super::retry::VerdictCache,
    /// The last reply the shaping step classified.
    shaping_verdict: Option<ShapingVerdict>,
    /// Final outcomes the spool could not record (a full disk), written again by
    /// [`ShardCore::maintain`].
    unrecorded: Vec<Unrecorded>,
    /// The last throttling reply per MX host, for [`ShardCore::destination_state`].
    throttles: crate::FastMap<Arc<str>, super::queues::SlowingReply>,
    /// MX addresses where pipelining transactions went wrong ([`Session::pipelining_failed`]), and
    /// until when their sessions send one transaction at a time.
    pipelining_off: crate::FastMap<SocketAddr, Instant>,
    /// With a suppression list: the default tenant's name (outcomes are observed for the list).
    observe: Option<Arc<str>>,
    /// Reasons for failures the retry policy does not classify (for the suppression list).
    classifier: Option<Arc<ClassifierHandle>>,
    /// What attempts taught, for the suppression list ([`ShardCore::take_observations`]).
    observations: Vec<Observation>,
    /// With a suppression writer: the addresses that may have soft-bounce counters, the writer's
    /// tally of this shard's batches, and the `Failed` observations this shard has made. A
    /// delivery is observed only when it may reset a counter (see [`ShardCore::may_reset`]).
    writer: Option<WriterLink>,
}

/// What a shard knows of the suppression writer (see [`ShardCore::set_writer`]).
#[derive(Debug)]
struct WriterLink {
    filter: Arc<crate::bounce::suppression::SoftCounterFilter>,
    tally: Arc<super::suppression::WriterTally>,
    failures: u64,
}

/// How soon a queue whose shaping lane is full with other shards' connections looks again.
const LANE_BUSY_RECHECK: Duration = Duration::from_millis(200);

/// How long an MX address whose server mishandled pipelined transactions gets one transaction at a
/// time on every connection (its sessions still pipeline the commands of one transaction).
pub(crate) const PIPELINING_FALLBACK: Duration = Duration::from_secs(3600);

impl ShardCore {
    /// A shard over an opened spool. Call [`ShardCore::recover`] next.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shard: usize,
        cfg: Arc<Resolved>,
        spool: Spool,
        retry: Arc<dyn RetryPolicy>,
        tls: Option<&TlsSettings>,
        seed: u64,
        metrics: Arc<ShardMetrics>,
        mut shaper: Shaper,
        epoch: Instant,
        tenants: Option<Arc<crate::policy::TenantRegistry>>,
        now: Now,
    ) -> ShardCore {
        // A source is known to the rules by its address (or its name when it binds none).
        let shaping_sources = cfg
            .sources
            .iter()
            .map(|s| match s.ip {
                Some(ip) => shaper.source(&ip.to_string()),
                None => shaper.source(&s.name),
            })
            .collect();
        let d = &cfg.config.delivery;
        let make = |ehlo: &str, policy: TlsPolicy, auth: Option<(String, String)>, plain: bool| {
            let mut s = SessionConfig::new(ehlo);
            s.tls = match (policy, tls) {
                (TlsPolicy::Opportunistic, Some(t)) => Tls::Opportunistic(t.opportunistic()),
                (TlsPolicy::Required, Some(t)) => Tls::Required(t.verified()),
                _ => Tls::Disabled,
            };
            s.timeouts.idle = Duration::from_secs(d.idle_timeout_s.max(1));
            s.transactions_in_flight = d.transactions_in_flight;
            s.auth = auth.map(|(username, password)| Credentials { username, password });
            s.allow_plaintext_auth = plain;
            Arc::new(s)
        };
        let mx_configs = cfg
            .sources
            .iter()
            .map(|s| make(&s.ehlo, d.tls, None, false))
            .collect();
        let relay_configs = cfg
            .sources
            .iter()
            .map(|s| match &cfg.smarthost {
                Some(h) => make(&s.ehlo, h.tls, h.auth.clone(), h.allow_plaintext_auth),
                None => make(&s.ehlo, d.tls, None, false),
            })
            .collect();
        ShardCore {
            shard,
            spool,
            retry,
            rng: StdRng::seed_from_u64(seed),
            mx_configs,
            relay_configs,
            domain_ids: crate::FastMap::default(),
            domains: Vec::new(),
            queues: crate::FastMap::default(),
            pools: crate::FastMap::default(),
            conns: Vec::new(),
            free_conns: Vec::new(),
            live_conns: 0,
            wheel: TimerWheel::new(now.unix()),
            pending: VecDeque::new(),
            ready_count: 0,
            backlog: None,
            recovered: None,
            last_key: 0,
            max_lag: 0,
            actions: VecDeque::new(),
            dirty: Vec::new(),
            events: Vec::new(),
            log: None,
            journal: None,
            commit: None,
            reply_scratch: String::new(),
            metrics,
            shutting_down: false,
            shaper,
            epoch,
            shaping_sources,
            routes: crate::FastMap::default(),
            wakeups: BinaryHeap::new(),
            tenants_generation: tenants.as_ref().map_or(0, |t| t.generation()),
            tenants,
            held: Vec::new(),
            paused: false,
            holds: Arc::default(),
            unrecorded: Vec::new(),
            verdicts: super::retry::VerdictCache::default(),
            shaping_verdict: None,
            throttles: crate::FastMap::default(),
            pipelining_off: crate::FastMap::default(),
            observe: cfg
                .suppression
                .as_ref()
                .map(|_| Arc::from(cfg.config.suppression.default_tenant.as_str())),
            // The shipped rules until the engine gives its own (`set_classifier`): every shard
            // reads replies through the bounce rules, for shaping as for retries.
            classifier: Some(Arc::new(ClassifierHandle::new(
                crate::bounce::Classifier::default_rules(),
            ))),
            observations: Vec::new(),
            writer: None,
            cfg,
        }
    }

    /// Links the shard to the suppression writer that records its observations: its filter of
    /// addresses with soft-bounce counters and its tally of this shard's batches. Without it every
    /// delivery is observed.
    pub(crate) fn set_writer(
        &mut self,
        filter: Arc<crate::bounce::suppression::SoftCounterFilter>,
        tally: Arc<super::suppression::WriterTally>,
    ) {
        self.writer = Some(WriterLink {
            filter,
            tally,
            failures: 0,
        });
    }

    /// Notes a delivery for the suppression list when it may reset soft-bounce counters.
    fn observe_delivery(&mut self, tenant: &str, address: &str) {
        let Some(default) = &self.observe else {
            return;
        };
        let tenant = if tenant.is_empty() { default } else { tenant };
        if self.may_reset(tenant, address) {
            let o = Observation::Delivered {
                tenant: tenant.to_string(),
                address: address.to_string(),
            };
            self.observations.push(o);
        }
    }

    /// Whether a delivery to `address` may reset soft-bounce counters, so must be observed: always,
    /// unless every failure this shard observed is recorded (the writer's tally has caught up) and
    /// the filter knows no counter of the address. A domain belongs to one shard, so no other
    /// shard's failure can have created a counter the filter does not show yet. (A report applied
    /// through the API races with deliveries as it always did: its counter is reset or not by a
    /// delivery recorded about the same time.)
    fn may_reset(&self, tenant: &str, address: &str) -> bool {
        match &self.writer {
            None => true,
            Some(w) => {
                w.tally.failures.load(Ordering::Acquire) != w.failures
                    || w.filter.may_have(tenant, address)
            }
        }
    }

    /// The classifier used for the suppression list when the retry policy gives no reason.
    /// Shares the engine's paused destinations and tenants.
    /// Writes each outcome's event-log line ahead of its spool record (see
    /// [`super::eventlog`]); the spool's before-write hook must flush `log`.
    pub(crate) fn set_log(&mut self, log: Arc<super::eventlog::ShardLog>) {
        self.log = Some(log);
    }

    /// Journals each attempt while it is under way ([`super::attempts`]).
    pub(crate) fn set_attempt_journal(&mut self, journal: super::attempts::AttemptJournal) {
        self.journal = Some(journal);
    }

    /// Counts attempts that were under way when the engine last stopped: a recipient the spool
    /// still has as queued or deferred with fewer attempts gets the interrupted attempt's number
    /// (its state and next attempt unchanged). Returns how many were raised. Call after
    /// [`ShardCore::reconcile_log`] and before [`ShardCore::count_recovered`].
    pub(crate) fn reconcile_attempts(
        &mut self,
        interrupted: &[super::attempts::Interrupted],
    ) -> usize {
        if interrupted.is_empty() {
            return 0;
        }
        self.remember_ids();
        let mut raised = 0;
        for a in interrupted {
            let Some((rid, r)) = self.recovered_recipient(a.message_id, a.index) else {
                continue;
            };
            if r.state.is_final() || r.state == RecipientState::Held || r.attempts >= a.attempts {
                continue;
            }
            let change = StateChange {
                state: r.state,
                attempts: a.attempts,
                next_attempt: r.next_attempt,
                reply: "attempt interrupted by a restart",
            };
            if self.spool.record_state(rid, &change).is_ok() {
                raised += 1;
            }
        }
        if raised > 0 {
            let _ = self.spool.flush();
        }
        raised
    }

    /// Clears the journal entries of attempts whose outcome records are all written to the
    /// spool's file (nothing while records are still held).
    pub(crate) fn settle_attempts(&mut self) {
        if let Some(j) = &mut self.journal
            && !self.spool.holds_records()
        {
            j.settle();
        }
    }

    /// Whether the spool holds appended records in memory, not yet written to its file.
    pub(crate) fn spool_holds_records(&self) -> bool {
        self.spool.holds_records()
    }

    /// The event log's shard side, if there is a log.
    pub(crate) fn log(&self) -> Option<&Arc<super::eventlog::ShardLog>> {
        self.log.as_ref()
    }

    /// Applies outcomes the event log has but the spool may not (the last log write before a
    /// crash: [`super::eventlog::unconfirmed`]) to recipients the spool still has as queued or
    /// deferred: they happened and are logged, so they are recorded and not attempted again.
    /// Returns how many were applied. Call before [`ShardCore::count_recovered`].
    pub(crate) fn reconcile_log(&mut self, logged: &[super::eventlog::Logged]) -> usize {
        if logged.is_empty() {
            return 0;
        }
        self.remember_ids();
        let mut applied = 0;
        for l in logged {
            let Some((rid, r)) = self.recovered_recipient(l.message_id, l.recipient_index) else {
                continue;
            };
            let state = match l.kind.as_str() {
                "delivered" => RecipientState::Delivered,
                "bounced" => RecipientState::Bounced,
                "expired" => RecipientState::Expired,
                "cancelled" => RecipientState::Cancelled,
                _ => RecipientState::Deferred,
            };
            let behind = match r.state {
                RecipientState::Queued => true,
                // A deferral is behind when the log has a later attempt of it.
                RecipientState::Deferred => state.is_final() || l.attempts > r.attempts,
                _ => false,
            };
            if !behind {
                continue;
            }
            let change = StateChange {
                state,
                attempts: l.attempts,
                next_attempt: if state.is_final() { 0 } else { l.next_attempt },
                reply: &l.reply,
            };
            if self.spool.record_state(rid, &change).is_ok() {
                applied += 1;
            }
        }
        if applied > 0 {
            let _ = self.spool.flush();
        }
        applied
    }

    /// Recipient `index` of the message of engine id `id`, with its status, as a reopened spool
    /// holds it (after [`ShardCore::remember_ids`]).
    fn recovered_recipient(
        &self,
        id: u64,
        index: u16,
    ) -> Option<(RecipientId, crate::spool::RecipientStatus<'_>)> {
        let rid = RecipientId {
            message: self.message_of(id)?,
            index,
        };
        Some((rid, self.spool.recipient_status(rid).ok()?))
    }

    pub(crate) fn set_holds(&mut self, holds: Arc<super::queues::Holds>) {
        self.holds = holds;
    }

    pub(crate) fn set_classifier(&mut self, c: Arc<ClassifierHandle>) {
        self.classifier = Some(c);
    }

    /// Takes what attempts taught since the last call, for the suppression list (hand it over with
    /// the events of the same pass: the writer records it before releasing them).
    pub(crate) fn take_observations(&mut self, into: &mut Vec<Observation>) {
        into.append(&mut self.observations);
    }

    fn nanos(&self, now: Now) -> Nanos {
        Nanos::since(self.epoch, now.mono)
    }

    fn instant(&self, t: Nanos) -> Instant {
        self.epoch + Duration::from_nanos(t.0)
    }

    /// Dispatches `key` again at `at` (at least a millisecond from `now`, so a "not before now" can
    /// never spin the loop).
    fn wake_at(&mut self, now: Now, at: Instant, key: QueueKey) {
        let at = at.max(now.mono + Duration::from_millis(1));
        self.wakeups.push(Reverse((at, key.domain, key.source)));
    }

    /// The shaping route of (source, domain, MX host).
    fn shaping_route(&mut self, key: QueueKey, mx: &Arc<str>, now: Now) -> RouteId {
        if let Some(r) = self.routes.get(&(key.source, key.domain, mx.clone())) {
            return *r;
        }
        let source = self.shaping_sources[key.source as usize];
        let domain = self.domains[key.domain as usize].name.clone();
        let nanos = self.nanos(now);
        let r = self.shaper.route(source, &domain, mx, nanos);
        self.routes.insert((key.source, key.domain, mx.clone()), r);
        r
    }

    /// The spool, for submission.
    pub(crate) fn spool_mut(&mut self) -> &mut Spool {
        &mut self.spool
    }

    /// Counts the recipients a reopened spool holds (queued or deferred) and publishes the count as
    /// the `queued` metric, so that it is right from the engine's first moment, before the shard
    /// thread has scheduled them; [`ShardCore::recover`] uses the count.
    pub(crate) fn count_recovered(&mut self) -> usize {
        let n = self
            .spool
            .queued()
            .filter(|q| matches!(q.state, RecipientState::Queued | RecipientState::Deferred))
            .count();
        self.metrics.queued.store(n as u64, Ordering::Relaxed);
        self.recovered = Some(n);
        n
    }

    /// Schedules everything the spool holds (after a restart): queued recipients now, deferred ones at
    /// their next attempt. Held recipients stay where they are.
    pub(crate) fn recover(&mut self, now: Now) -> usize {
        let n = match self.recovered.take() {
            Some(n) => n,
            None => self.count_recovered(),
        };
        self.remember_ids();
        // Everything in the spool is backlog: admitted in id order as the active limit allows.
        self.backlog = Some(MessageId(0));
        self.admit_backlog(now);
        self.dispatch_pending(now);
        n
    }

    /// Admits messages from the spool's backlog ([`ShardCore::backlog`]) in id order until the
    /// ready queues hold `active_recipients` or the backlog is empty: queued recipients (and deferred
    /// ones now due) go to their queues, deferred ones to the timer wheel, held ones stay put.
    fn admit_backlog(&mut self, now: Now) {
        let limit = self.cfg.config.engine.active_recipients;
        let mut batch = Vec::with_capacity(256);
        while let Some(from) = self.backlog {
            if self.ready_count >= limit {
                return;
            }
            batch.clear();
            let more = self.spool.live_messages(from, 256, &mut batch);
            for &m in &batch {
                if self.ready_count >= limit {
                    self.backlog = Some(m);
                    return;
                }
                self.admit(m, now);
            }
            self.backlog = match batch.last() {
                Some(last) if more => Some(MessageId(last.0 + 1)),
                _ => None,
            };
        }
    }

    /// Puts a message's recipients where they belong: queued ones (and deferred ones now due) in
    /// their ready queues, deferred ones in the timer wheel; held and final ones stay put.
    fn admit(&mut self, m: MessageId, now: Now) {
        let count = self.spool.recipient_count(m).unwrap_or(0);
        for index in 0..count {
            let rid = RecipientId { message: m, index };
            let Ok(r) = self.spool.recipient_status(rid) else {
                continue;
            };
            match r.state {
                RecipientState::Queued => self.make_ready(rid),
                RecipientState::Deferred if r.next_attempt <= now.unix() => self.make_ready(rid),
                RecipientState::Deferred => self.wheel.insert(r.next_attempt, rid),
                _ => {}
            }
        }
    }

    /// Recipients in the ready queues now.
    pub(crate) fn ready_count(&self) -> usize {
        self.ready_count
    }

    /// Admits backlog once the ready queues are down to half of `active_recipients` (called by the
    /// shard loop every pass; cheap when there is nothing to do), then dispatches.
    pub(crate) fn refill(&mut self, now: Now) {
        if self.backlog.is_none()
            || self.paused
            || self.ready_count >= self.cfg.config.engine.active_recipients / 2
        {
            return;
        }
        self.admit_backlog(now);
        self.dispatch_pending(now);
    }

    /// Gives every live message its engine id as spool key, in id order (after a restart).
    fn remember_ids(&mut self) {
        let mut batch = Vec::with_capacity(1024);
        let mut from = MessageId(0);
        loop {
            batch.clear();
            let more = self.spool.live_messages(from, 1024, &mut batch);
            for &m in &batch {
                let id = self.engine_id(m);
                self.remember_id(id, m);
            }
            match batch.last() {
                Some(last) if more => from = MessageId(last.0 + 1),
                _ => break,
            }
        }
    }

    /// Keeps the way from engine id `id` to spool message `m` for [`ShardCore::cancel`]: the spool
    /// key of each message is the largest engine id given so far, so keys never decrease and a binary
    /// search finds a message by its id. A message whose id arrives below that (two submitters racing
    /// to the shard) is keyed with the largest id, at most `max_lag` above its own.
    fn remember_id(&mut self, id: u64, m: MessageId) {
        if id > self.last_key || self.last_key == 0 {
            self.last_key = id;
        } else {
            self.max_lag = self.max_lag.max(self.last_key - id);
        }
        self.spool.set_key(m, self.last_key);
    }

    /// The live spool message of engine id `id`, if this shard has one: among the messages keyed
    /// `id ..= id + max_lag` (usually one), the one whose record carries that id.
    fn message_of(&self, id: u64) -> Option<MessageId> {
        self.spool
            .keyed(id, id.saturating_add(self.max_lag))
            .find(|&m| self.engine_id(m) == id)
    }

    /// Schedules a message just appended to the spool.
    /// Call [`ShardCore::dispatch_pending`] after a batch of these.
    pub(crate) fn enqueue(&mut self, engine_id: u64, m: MessageId) {
        self.remember_id(engine_id, m);
        let count = self.spool.recipient_count(m).unwrap_or(0);
        if self.backlog.is_none() && self.ready_count < self.cfg.config.engine.active_recipients {
            for index in 0..count {
                self.make_ready(RecipientId { message: m, index });
            }
        } else {
            // Over the active limit: the message waits in the spool, and so does every later one,
            // so that admission keeps submission order.
            self.backlog.get_or_insert(m);
        }
        self.metrics
            .submitted
            .fetch_add(u64::from(count), Ordering::Relaxed);
        self.metrics
            .queued
            .fetch_add(u64::from(count), Ordering::Relaxed);
    }

    /// Messages that can be cancelled (those with a recipient still to deliver).
    pub(crate) fn cancellable(&self) -> usize {
        self.spool.stats().messages as usize
    }

    /// Cancels the shard's part of a message. Returns the recipients cancelled.
    pub(crate) fn cancel(&mut self, now: Now, engine_id: u64) -> usize {
        let Some(m) = self.message_of(engine_id) else {
            return 0;
        };
        let live: Vec<(u16, String)> =
            (0..self.spool.message(m).map_or(0, |v| v.recipient_count()))
                .filter_map(|index| {
                    let r = self
                        .spool
                        .recipient(RecipientId { message: m, index })
                        .ok()?;
                    (!r.state.is_final()).then(|| (index, r.address.to_string()))
                })
                .collect();
        // The events are built while the message is still readable (engine id, tenant, tags).
        let events: Vec<DeliveryEvent> = live
            .iter()
            .map(|(index, address)| {
                let rid = RecipientId {
                    message: m,
                    index: *index,
                };
                let mut e = self.event_base(rid, now);
                e.kind = EventKind::Cancelled;
                e.recipient = address.clone();
                e
            })
            .collect();
        let rendered = self
            .log
            .as_ref()
            .map(|log| (log, events.iter().map(|e| log.render(e)).min()));
        match self.spool.remove(m) {
            Ok(t) => self.commit = Some(t),
            Err(_) => {
                if let Some((log, Some(len))) = rendered {
                    log.unrender(len);
                }
                return 0;
            }
        }
        self.events.extend(events);
        self.metrics
            .cancelled
            .fetch_add(live.len() as u64, Ordering::Relaxed);
        self.metrics
            .queued
            .fetch_sub(live.len() as u64, Ordering::Relaxed);
        live.len()
    }

    fn domain_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.domain_ids.get(name) {
            return id;
        }
        let name: Arc<str> = Arc::from(name);
        let id = self.domains.len() as u32;
        self.domains.push(Domain {
            name: name.clone(),
            route: Route::Unresolved,
            sources: Vec::new(),
            last_error: String::new(),
        });
        self.domain_ids.insert(name, id);
        id
    }

    /// Puts a recipient in its queue (still live in the spool) and marks the queue for dispatch.
    fn make_ready(&mut self, rid: RecipientId) {
        let Ok(view) = self.spool.message(rid.message) else {
            return;
        };
        let priority = view.priority();
        let pool = self
            .cfg
            .tenant_pools
            .get(view.tenant())
            .copied()
            .unwrap_or(self.cfg.default_pool);
        let Ok(r) = self.spool.recipient_status(rid) else {
            return;
        };
        if r.state.is_final() || r.state == RecipientState::Held {
            return;
        }
        // The spool interns domains lower-cased.
        let d = match self.domain_ids.get(r.domain) {
            Some(&d) => d,
            None => {
                let domain = r.domain.to_ascii_lowercase();
                self.domain_id(&domain)
            }
        };
        let sources = &self.cfg.pools[pool].1;
        let source = sources[(rid.message.0 as usize) % sources.len()] as u16;
        if !self.domains[d as usize].sources.contains(&source) {
            self.domains[d as usize].sources.push(source);
        }
        let key = QueueKey { domain: d, source };
        let q = self.queues.entry(key).or_default();
        let lane = usize::from(priority == Priority::Bulk);
        q.ready[lane].push_back(rid);
        self.ready_count += 1;
        if q.waiting_on.is_none() {
            self.pending.push_back(key);
        }
    }

    /// Pauses or resumes delivery ([`crate::engine::Engine::pause`]). On resume every queue with
    /// ready recipients is dispatched.
    pub(crate) fn set_paused(&mut self, now: Now, paused: bool) {
        if self.paused == paused {
            return;
        }
        self.paused = paused;
        if !paused {
            let mut keys: Vec<QueueKey> = self
                .queues
                .iter()
                .filter(|(_, q)| q.len() > 0)
                .map(|(k, _)| *k)
                .collect();
            keys.sort_unstable_by_key(|k| (k.domain, k.source));
            self.pending.extend(keys);
            self.dispatch_pending(now);
        }
    }

    /// Dispatches every queue marked ready (after [`ShardCore::enqueue`]s, say).
    pub(crate) fn dispatch_pending(&mut self, now: Now) {
        if self.shutting_down || self.paused {
            // Paused: the queues keep their recipients; resuming dispatches every queue again.
            self.pending.clear();
            return;
        }
        while let Some(key) = self.pending.pop_front() {
            self.dispatch(now, key);
        }
    }

    /// Finds a way for a queue's recipients: a route, a pool, a connection.
    fn dispatch(&mut self, now: Now, key: QueueKey) {
        if self.paused
            || self
                .holds
                .domain_paused(&self.domains[key.domain as usize].name)
        {
            // Held: the queue keeps its recipients until `holds_changed`.
            return;
        }
        let Some(q) = self.queues.get(&key) else {
            return;
        };
        let ready = q.len();
        if ready == 0 {
            return;
        }
        let waiting_on = q.waiting_on;
        let relay = self.relay_target(key.domain);
        let domain = &mut self.domains[key.domain as usize];
        let targets = match &domain.route {
            Route::Ready { targets, expires } if *expires > now.mono => targets.clone(),
            Route::Resolving => return,
            _ => {
                if let Some(relay) = relay {
                    let targets: Arc<[Target]> = Arc::from(vec![relay]);
                    self.domains[key.domain as usize].route = Route::Ready {
                        targets: targets.clone(),
                        expires: now.mono + Duration::from_secs(3600 * 24 * 365),
                    };
                    targets
                } else {
                    domain.route = Route::Resolving;
                    let name = domain.name.to_string();
                    self.actions.push_back(Action::Resolve {
                        domain: key.domain,
                        name,
                    });
                    return;
                }
            }
        };
        let target = targets.iter().find(|t| {
            let pk = PoolKey {
                source: key.source,
                addr: t.addr,
                relay: t.relay,
            };
            self.pools
                .get(&pk)
                .and_then(|p| p.down_until)
                .is_none_or(|until| until <= now.mono)
        });
        let Some(target) = target.cloned() else {
            // Every MX host failed recently: defer this queue's recipients.
            let why = format!(
                "all MX hosts of {} failed: {}",
                self.domains[key.domain as usize].name,
                self.domains[key.domain as usize].last_error
            );
            self.defer_queue(now, key, &why);
            return;
        };
        let pk = PoolKey {
            source: key.source,
            addr: target.addr,
            relay: target.relay,
        };
        if waiting_on != Some(pk) {
            if let Some(old) = waiting_on
                && let Some(p) = self.pools.get_mut(&old)
            {
                p.waiters.retain(|k| *k != key);
            }
            self.pools.entry(pk).or_default().waiters.push_back(key);
            if let Some(q) = self.queues.get_mut(&key) {
                q.waiting_on = Some(pk);
            }
        }
        // The shaper paused this pool's messages: come back when it allows.
        if let Some(until) = self.pools.get(&pk).and_then(|p| p.paused_until) {
            if until > now.mono {
                self.wake_at(now, until, key);
                return;
            }
            if let Some(p) = self.pools.get_mut(&pk) {
                p.paused_until = None;
            }
        }
        // Idle connections first.
        while let Some(conn) = self.pools.get_mut(&pk).and_then(|p| p.idle.pop()) {
            self.assign_work(now, conn);
            if self.queues.get(&key).is_none_or(|q| q.len() == 0) {
                return;
            }
            if self
                .pools
                .get(&pk)
                .is_some_and(|p| p.paused_until.is_some())
            {
                // The shaper paused the pool; its wake-up dispatches again.
                return;
            }
        }
        // Then new connections, up to the cap, no more at once than there is work, each with the
        // shaping layer's leave.
        let cap = self.cfg.config.delivery.max_connections_per_host;
        let remaining = self.queues.get(&key).map_or(0, |q| q.len());
        let route = self.shaping_route(key, &target.mx, now);
        loop {
            let p = self.pools.entry(pk).or_default();
            if p.open + p.connecting >= cap || p.connecting >= remaining {
                break;
            }
            let nanos = self.nanos(now);
            match self.shaper.may_connect(route, nanos) {
                Ok(permit) => {
                    self.pools.entry(pk).or_default().connecting += 1;
                    self.open_connection(now, pk, target.mx.clone(), permit);
                }
                Err(Deferral::NotBefore(t, _)) => {
                    let at = self.instant(t);
                    self.wake_at(now, at, key);
                    break;
                }
                // Wait for one of the lane's connections to close (the queue waits on its pool).
                // The lane's connections may all be another shard's (the cap is shared): then no
                // close will come through this pool, so look again shortly.
                Err(Deferral::ConnectionsBusy) | Err(Deferral::ConnectionSpent) => {
                    let p = self.pools.entry(pk).or_default();
                    if p.open + p.connecting == 0 {
                        self.wake_at(now, now.mono + LANE_BUSY_RECHECK, key);
                    }
                    break;
                }
            }
        }
    }

    fn relay_target(&self, domain: u32) -> Option<Target> {
        let h = self.cfg.smarthost.as_ref()?;
        let name = &self.domains[domain as usize].name;
        if h.domains.is_empty() || h.domains.iter().any(|d| d.as_str() == &**name) {
            Some(Target {
                mx: Arc::from(h.host.as_str()),
                addr: h.address,
                relay: true,
            })
        } else {
            None
        }
    }

    fn open_connection(&mut self, now: Now, key: PoolKey, mx: Arc<str>, permit: ConnectionPermit) {
        let conn = Conn {
            key,
            mx,
            permit,
            session: None,
            ready: false,
            connect_deadline: now.mono
                + Duration::from_secs(self.cfg.config.delivery.connect_timeout_s),
            txns: VecDeque::new(),
        };
        let id = match self.free_conns.pop() {
            Some(id) => {
                self.conns[id] = Some(conn);
                id
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.live_conns += 1;
        self.metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let local = self.cfg.sources[key.source as usize].ip;
        self.actions.push_back(Action::Connect {
            conn: id,
            local,
            remote: key.addr,
        });
    }

    /// DNS answered for a domain.
    pub(crate) fn on_resolved(
        &mut self,
        now: Now,
        domain: u32,
        answer: Result<Vec<MxHost>, DnsFailure>,
    ) {
        let Some(d) = self.domains.get_mut(domain as usize) else {
            return;
        };
        let port = self.cfg.config.delivery.port;
        match answer {
            Ok(hosts) => {
                let targets: Vec<Target> = hosts
                    .iter()
                    .flat_map(|h| {
                        let mx: Arc<str> = Arc::from(h.name.trim_end_matches('.'));
                        h.addresses.iter().map(move |ip| Target {
                            mx: mx.clone(),
                            addr: SocketAddr::new(*ip, port),
                            relay: false,
                        })
                    })
                    .collect();
                if targets.is_empty() {
                    d.route = Route::Unresolved;
                    let why = format!("no address for any MX host of {}", d.name);
                    self.fail_domain(now, domain, false, &why, DnsReason::NetworkError);
                    return;
                }
                let mut names: Vec<Arc<str>> = targets.iter().map(|t| t.mx.clone()).collect();
                names.dedup();
                d.route = Route::Ready {
                    targets: Arc::from(targets),
                    expires: now.mono + ROUTE_TTL,
                };
                let sources = d.sources.clone();
                for source in sources {
                    let key = QueueKey { domain, source };
                    // The shaping layer learns every MX host of the destination, so one failing host
                    // is not taken for the whole destination failing.
                    for mx in &names {
                        self.shaping_route(key, mx, now);
                    }
                    self.pending.push_back(key);
                }
                self.dispatch_pending(now);
            }
            Err(f) => {
                d.route = Route::Unresolved;
                let why = format!("{} ({})", f.detail, f.reason);
                self.fail_domain(now, domain, f.permanent, &why, f.reason);
            }
        }
    }

    /// Every queued recipient of a domain fails the same way (DNS).
    fn fail_domain(&mut self, now: Now, domain: u32, permanent: bool, why: &str, dns: DnsReason) {
        let sources = self.domains[domain as usize].sources.clone();
        for source in sources {
            let key = QueueKey { domain, source };
            let rcpts = self.drain_queue(key);
            for rid in rcpts {
                let outcome = Outcome::Failed {
                    permanent,
                    code: 0,
                    enhanced: None,
                    text: why.to_string(),
                    phase: Phase::Resolve,
                    dns: Some(dns),
                };
                self.finish(now, rid, outcome, None, source);
            }
        }
    }

    fn drain_queue(&mut self, key: QueueKey) -> Vec<RecipientId> {
        let Some(q) = self.queues.get_mut(&key) else {
            return Vec::new();
        };
        let mut out: Vec<RecipientId> = q.ready[0].drain(..).collect();
        out.extend(q.ready[1].drain(..));
        self.ready_count -= out.len();
        if let Some(pk) = q.waiting_on.take()
            && let Some(p) = self.pools.get_mut(&pk)
        {
            p.waiters.retain(|k| *k != key);
        }
        out
    }

    fn defer_queue(&mut self, now: Now, key: QueueKey, why: &str) {
        for rid in self.drain_queue(key) {
            self.finish(
                now,
                rid,
                Outcome::temporary(why.to_string(), Phase::Connect),
                None,
                key.source,
            );
        }
    }

    /// The TCP connection is open.
    pub(crate) fn on_connected(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn).and_then(|c| c.as_mut()) else {
            return;
        };
        let cfg = if c.key.relay {
            self.relay_configs[c.key.source as usize].clone()
        } else {
            self.mx_configs[c.key.source as usize].clone()
        };
        let mut session = Session::new(cfg, &c.mx, now.mono);
        if let Some(&until) = self.pipelining_off.get(&c.key.addr) {
            if until > now.mono {
                session.limit_in_flight(1);
            } else {
                self.pipelining_off.remove(&c.key.addr);
            }
        }
        c.session = Some(session);
        self.metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        self.dirty.push(conn);
    }

    /// The TCP connection could not be opened.
    pub(crate) fn on_connect_failed(&mut self, now: Now, conn: ConnId, error: &str) {
        let Some(c) = self.conns.get(conn).and_then(|c| c.as_ref()) else {
            return;
        };
        let why = format!("connect to {} ({}): {error}", c.mx, c.key.addr);
        self.connection_gone(now, conn, Some(why));
    }

    /// Bytes arrived on a connection.
    pub(crate) fn on_input(&mut self, now: Now, conn: ConnId, bytes: &[u8]) {
        if let Some(s) = self.session_mut(conn) {
            s.handle_input(now.mono, bytes);
        }
        self.pump(now, conn);
        self.dispatch_pending(now);
    }

    /// Connections that may have output since the last call (write what [`ShardCore::transmit`]
    /// gives for each).
    pub(crate) fn take_dirty(&mut self, into: &mut Vec<ConnId>) {
        into.append(&mut self.dirty);
    }

    /// The peer closed the connection (or it broke).
    pub(crate) fn on_eof(&mut self, now: Now, conn: ConnId) {
        match self.session_mut(conn) {
            Some(s) => s.handle_eof(now.mono),
            None => return self.on_connect_failed(now, conn, "connection closed"),
        }
        self.pump(now, conn);
        self.dispatch_pending(now);
    }

    /// Bytes to write on a connection.
    pub(crate) fn transmit(&mut self, now: Now, conn: ConnId, out: &mut Vec<u8>) {
        if let Some(s) = self.session_mut(conn) {
            s.poll_transmit(now.mono, out);
        }
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        self.conns.get_mut(conn)?.as_mut()?.session.as_mut()
    }

    /// Has the core asked the driver to close this connection id (not yet done)? Its socket then
    /// belongs to a connection that is over, even if the id was given to a new one meanwhile.
    pub(crate) fn close_pending(&self, conn: ConnId) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Close { conn: c } if *c == conn))
    }

    /// The next action for the driver.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes the events produced so far (release them after [`ShardCore::take_commit`] is durable).
    pub(crate) fn take_events(&mut self, into: &mut Vec<DeliveryEvent>) {
        into.append(&mut self.events);
    }

    /// The last spool ticket of state changes not yet committed.
    pub(crate) fn take_commit(&mut self) -> Option<Ticket> {
        self.commit.take()
    }

    /// When [`ShardCore::handle_timeout`] must run next.
    pub(crate) fn poll_timeout(&self, now: Now) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        for c in self.conns.iter().flatten() {
            match &c.session {
                Some(s) => {
                    if let Some(x) = s.poll_timeout() {
                        min(x);
                    }
                }
                None => min(c.connect_deadline),
            }
        }
        if let Some(Reverse((at, _, _))) = self.wakeups.peek() {
            min(*at);
        }
        if !self.wheel.is_empty() || !self.held.is_empty() {
            // Deadlines are whole seconds (and held mail is looked at once a second): wake at the
            // next second.
            let into = Duration::from_millis(1000 - now.unix_ms % 1000);
            min(now.mono + into);
        }
        t
    }

    /// Runs timers: session timeouts, connect timeouts, due retries.
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        for id in 0..self.conns.len() {
            let (expired, connecting) = match self.conns[id].as_ref() {
                Some(c) => match &c.session {
                    Some(s) => (s.poll_timeout().is_some_and(|t| t <= now.mono), false),
                    None => (c.connect_deadline <= now.mono, true),
                },
                None => continue,
            };
            if !expired {
                continue;
            }
            if connecting {
                self.actions.push_back(Action::Close { conn: id });
                self.on_connect_failed(now, id, "connect timeout");
            } else {
                if let Some(s) = self.session_mut(id) {
                    s.handle_timeout(now.mono);
                }
                self.pump(now, id);
            }
        }
        while let Some(Reverse((at, domain, source))) = self.wakeups.peek().copied() {
            if at > now.mono {
                break;
            }
            self.wakeups.pop();
            self.pending.push_back(QueueKey { domain, source });
        }
        if let Some(t) = &self.tenants
            && t.generation() != self.tenants_generation
        {
            // Tenants changed (an unlock, say): held mail is looked at again.
            self.tenants_generation = t.generation();
            for rid in std::mem::take(&mut self.held) {
                self.make_ready(rid);
            }
        }
        let mut due = Vec::new();
        self.wheel.advance(now.unix(), |rid| due.push(rid));
        for rid in due {
            self.make_ready(rid);
        }
        self.dispatch_pending(now);
    }

    /// Handles what a session has to say after input, a timeout or a send.
    fn pump(&mut self, now: Now, conn: ConnId) {
        if !self.dirty.contains(&conn) {
            self.dirty.push(conn);
        }
        while let Some(ev) = self.session_mut(conn).and_then(|s| s.poll_event()) {
            match ev {
                SessionEvent::Ready => {
                    self.shaping_reply(now, conn, Phase::Ehlo, 250, None, "");
                    if let Some(c) = self.conns[conn].as_mut() {
                        c.ready = true;
                        let key = c.key;
                        if let Some(p) = self.pools.get_mut(&key) {
                            p.connecting = p.connecting.saturating_sub(1);
                            p.open += 1;
                            p.down_until = None;
                        }
                    }
                    self.assign_work(now, conn);
                }
                SessionEvent::TlsEstablished { .. } => {}
                SessionEvent::RcptAccepted { .. } => {}
                SessionEvent::RcptRejected { index, reply } => {
                    self.shaping_reply(
                        now,
                        conn,
                        Phase::Rcpt,
                        reply.code,
                        reply.enhanced,
                        &reply.text,
                    );
                    self.finish_in_flight(
                        now,
                        conn,
                        Some(index),
                        Outcome::from_reply(&reply, Phase::Rcpt),
                    );
                }
                SessionEvent::MessageAccepted { reply } => {
                    self.finish_in_flight(now, conn, None, Outcome::Delivered(reply));
                    self.after_transaction(now, conn);
                }
                SessionEvent::MessageFailed { phase, failure } => {
                    if let MessageFailure::Reply(r) = &failure {
                        self.shaping_reply(now, conn, phase, r.code, r.enhanced, &r.text);
                    }
                    let outcome = Outcome::from_failure(&failure, phase);
                    self.finish_in_flight(now, conn, None, outcome);
                    self.after_transaction(now, conn);
                }
                SessionEvent::Closed(cause) => {
                    if let CloseCause::Refused(phase, r) = &cause {
                        self.shaping_reply(now, conn, *phase, r.code, r.enhanced, &r.text);
                    }
                    if let Some(c) = self.conns[conn].as_ref()
                        && c.session.as_ref().is_some_and(Session::pipelining_failed)
                    {
                        self.pipelining_off
                            .insert(c.key.addr, now.mono + PIPELINING_FALLBACK);
                    }
                    let ready = self.conns[conn].as_ref().is_some_and(|c| c.ready);
                    let failure = (!ready && cause != CloseCause::Quit).then(|| {
                        let c = self.conns[conn].as_ref().expect("live connection");
                        format!("{} ({}): {cause}", c.mx, c.key.addr)
                    });
                    self.actions.push_back(Action::Close { conn });
                    self.connection_gone(now, conn, failure);
                    return;
                }
            }
        }
    }

    /// Tells the shaping layer about a reply (throttling lowers the lane's limits; setup failures mark
    /// the MX host failing; a good EHLO marks it healthy).
    fn shaping_reply(
        &mut self,
        now: Now,
        conn: ConnId,
        phase: Phase,
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: &str,
    ) {
        let nanos = self.nanos(now);
        let slow_down = if code / 100 == 4 {
            self.reply_slow_down(conn, phase, code, enhanced, text)
        } else {
            0
        };
        let signal = crate::shaping::signal(code, slow_down > 0);
        if let Some(c) = self.conns.get(conn).and_then(|c| c.as_ref()) {
            let signal =
                self.shaper
                    .on_reply_with(&c.permit, phase, signal, u32::from(slow_down), nanos);
            if signal == crate::shaping::ReplySignal::Throttled {
                let note = super::queues::SlowingReply {
                    mx: c.mx.to_string(),
                    code,
                    enhanced: enhanced.map(|e| e.to_string()),
                    text: text.chars().take(512).collect(),
                    at: now.unix(),
                };
                self.throttles.insert(c.mx.clone(), note);
            }
        }
    }

    /// How hard a 4xx reply asks this sender to slow down (the share of the rate kept, per mille;
    /// 0: it does not): the bounce verdict's `slow_down`, from the same rules the retry step reads,
    /// classified once per distinct reply.
    fn reply_slow_down(
        &mut self,
        conn: ConnId,
        phase: Phase,
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: &str,
    ) -> u16 {
        let Some(mx) = self
            .conns
            .get(conn)
            .and_then(|c| c.as_ref())
            .map(|c| c.mx.clone())
        else {
            return 0;
        };
        // With a transaction in flight, the verdict is the one its recipients' retry step reads:
        // classified here with their message's sender and tenant, found in the cache there.
        let first = self.conns[conn]
            .as_ref()
            .and_then(|c| c.txns.front())
            .and_then(|t| t.rcpts.iter().find(|(_, settled)| !settled))
            .map(|(rid, _)| *rid);
        if let Some(rid) = first
            && let (Ok(m), Ok(st)) = (
                self.spool.message(rid.message),
                self.spool.recipient_status(rid),
            )
        {
            let sender_domain = m
                .sender()
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            let (tenant, domain) = (m.tenant().to_string(), st.domain.to_string());
            let text = text.replace('\n', " ");
            let attempt = FailedAttempt {
                permanent: code >= 500,
                code: Some(code),
                enhanced,
                text: &text,
                phase: Some(phase),
                domain: &domain,
                mx: &mx,
                sender_domain: &sender_domain,
                tenant: &tenant,
                attempts: 0,
                submitted_at: 0,
                now: 0,
            };
            if let Some(c) = self.verdicts.classify(self.retry.as_ref(), &attempt) {
                return c.slow_down;
            }
        }
        let generation = self.classifier.as_ref().map_or(0, |c| c.generation());
        if let Some(v) = &self.shaping_verdict
            && v.generation == generation
            && v.code == code
            && v.enhanced == enhanced
            && v.phase == phase
            && v.mx == mx
            && v.text == text
        {
            return v.slow_down;
        }
        let Some(classifier) = &self.classifier else {
            return 0;
        };
        let c = classifier.classify(&crate::bounce::Diagnostic {
            code: Some(code),
            enhanced,
            text,
            phase: Some(phase),
            mx_host: &mx,
            ..crate::bounce::Diagnostic::default()
        });
        self.shaping_verdict = Some(ShapingVerdict {
            generation,
            code,
            enhanced,
            phase,
            mx,
            text: text.to_string(),
            slow_down: c.slow_down,
        });
        c.slow_down
    }

    /// Records outcomes for the oldest transaction in flight: for one recipient (`Some(index)`) or
    /// every recipient still without one (`None`, which ends the transaction; accepted-at-RCPT ones
    /// get `outcome`, others were already finished by their RCPT reply).
    fn finish_in_flight(&mut self, now: Now, conn: ConnId, index: Option<usize>, outcome: Outcome) {
        let Some(c) = self.conns.get_mut(conn).and_then(|c| c.as_mut()) else {
            return;
        };
        let (mx, ip, source) = (c.mx.clone(), c.key.addr.ip(), c.key.source);
        let Some(t) = c.txns.front_mut() else {
            return;
        };
        match index {
            Some(i) => {
                // One recipient's outcome (the usual case): no list, no copy of the outcome.
                let Some((rid, done)) = t.rcpts.get_mut(i).filter(|(_, done)| !*done) else {
                    return;
                };
                *done = true;
                let rid = *rid;
                self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.finish(now, rid, outcome, Some((&mx, ip)), source);
            }
            None => {
                let todo: Vec<RecipientId> = t
                    .rcpts
                    .iter_mut()
                    .filter(|(_, done)| !*done)
                    .map(|(rid, done)| {
                        *done = true;
                        *rid
                    })
                    .collect();
                c.txns.pop_front();
                self.metrics
                    .in_flight
                    .fetch_sub(todo.len() as u64, Ordering::Relaxed);
                for rid in todo {
                    self.finish(now, rid, outcome.clone(), Some((&mx, ip)), source);
                }
            }
        }
    }

    /// Notes a failed attempt for the suppression list when its reason can suppress: a DNS failure
    /// by the resolver's reason (a definite NXDOMAIN or null MX, or a domain that did not resolve
    /// without one), a reply by the retry policy's reason (or the classifier's, when the policy gives
    /// none). Local failures (connection refused, the resolver's own errors) are not the recipient's.
    fn observe_failure(
        &mut self,
        tenant: &str,
        address: &str,
        attempt: &FailedAttempt<'_>,
        reason: Option<&str>,
        dns: Option<DnsReason>,
    ) {
        let (Some(default), Some(policy)) = (&self.observe, &self.cfg.suppression) else {
            return;
        };
        let (reason, definite) = match dns {
            Some(DnsReason::HostUnknown) if attempt.permanent => (BounceReason::HostUnknown, true),
            Some(DnsReason::NotAccept) => (BounceReason::NotAccept, true),
            Some(DnsReason::HostUnknown | DnsReason::NetworkError) => {
                (BounceReason::HostUnknown, false)
            }
            Some(DnsReason::SystemError) => return,
            None => {
                if attempt.code.is_none() {
                    // No server answered (a refused or dropped connection): nothing about the
                    // recipient.
                    return;
                }
                let reason = match reason.and_then(BounceReason::parse) {
                    Some(r) => r,
                    None => match &self.classifier {
                        Some(c) => c.classify(&super::retry::diagnostic(attempt)).reason,
                        None => return,
                    },
                };
                let definite =
                    reason == BounceReason::HostUnknown && attempt.code.is_some_and(|c| c >= 500);
                (reason, definite)
            }
        };
        let tenant = suppression_tenant(tenant, default);
        if policy.threshold(&tenant, reason, definite).is_some() {
            if let Some(w) = &mut self.writer {
                w.failures += 1;
            }
            self.observations.push(Observation::Failed {
                tenant,
                address: address.to_string(),
                reason,
                definite_nxdomain: definite,
            });
        }
    }

    /// Records one recipient's outcome in the spool and as an event.
    fn finish(
        &mut self,
        now: Now,
        rid: RecipientId,
        outcome: Outcome,
        via: Option<(&str, IpAddr)>,
        source: u16,
    ) {
        if let Some(j) = &mut self.journal {
            j.end(rid);
        }
        let Ok(view) = self.spool.recipient_status(rid) else {
            return;
        };
        if view.state.is_final() {
            return;
        }
        let attempts = view.attempts.saturating_add(1);
        let domain = view.domain.to_string();
        let mut event = self.event_base(rid, now);
        event.attempts = attempts;
        event.source = self.cfg.sources[source as usize].name.clone();
        if let Some((mx, ip)) = via {
            event.mx = mx.to_string();
            event.ip = Some(ip);
        }
        let mut reply_text = std::mem::take(&mut self.reply_scratch);
        reply_text.clear();
        let (state, next) = match &outcome {
            Outcome::Delivered(reply) => {
                self.observe_delivery(&event.tenant, &event.recipient);
                event.kind = EventKind::Delivered;
                event.code = reply.code;
                event.enhanced = reply.enhanced;
                event.text = reply.text.replace('\n', " ");
                event.phase = Some(Phase::EndOfData);
                let _ = write!(reply_text, "{reply}");
                (RecipientState::Delivered, 0)
            }
            Outcome::Failed {
                permanent,
                code,
                enhanced,
                text,
                phase,
                dns,
            } => {
                event.code = *code;
                event.enhanced = *enhanced;
                event.text = text.clone();
                event.phase = Some(*phase);
                let sender_domain = self
                    .spool
                    .message(rid.message)
                    .map(|m| m.sender().rsplit_once('@').map_or("", |(_, d)| d))
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let attempt = FailedAttempt {
                    permanent: *permanent,
                    code: (*code > 0).then_some(*code),
                    enhanced: *enhanced,
                    text,
                    phase: Some(*phase),
                    domain: &domain,
                    mx: via.map_or("", |(mx, _)| mx),
                    sender_domain: &sender_domain,
                    tenant: &event.tenant,
                    attempts,
                    submitted_at: event.submitted_at,
                    now: now.unix(),
                };
                // One classification per distinct reply: the recipients of a failed transaction
                // share it.
                let verdict = self.verdicts.classify(self.retry.as_ref(), &attempt);
                let decision =
                    self.retry
                        .decide_classified(&attempt, verdict.as_ref(), &mut self.rng);
                let reason = match &verdict {
                    Some(c) => Some(c.reason.as_str()),
                    None => self.retry.reason(&attempt),
                };
                event.reason = reason.unwrap_or_default().to_string();
                if self.observe.is_some() {
                    self.observe_failure(&event.tenant, &event.recipient, &attempt, reason, *dns);
                }
                let _ = match enhanced {
                    _ if *code == 0 => write!(reply_text, "{text}"),
                    Some(e) => write!(reply_text, "{code} {e} {text}"),
                    None => write!(reply_text, "{code} {text}"),
                };
                match decision {
                    Decision::Bounce => {
                        event.kind = EventKind::Bounced;
                        (RecipientState::Bounced, 0)
                    }
                    Decision::Expire => {
                        event.kind = EventKind::Expired;
                        (RecipientState::Expired, 0)
                    }
                    Decision::RetryAt(t) => {
                        event.kind = EventKind::Deferred;
                        event.next_attempt = t;
                        (RecipientState::Deferred, t)
                    }
                }
            }
        };
        let change = StateChange {
            state,
            attempts,
            next_attempt: next,
            reply: &reply_text,
        };
        // The line first: no record reaches the spool's file before its line is in the log. A
        // final outcome that cannot be recorded now is recorded later (below), so its line stays.
        if let Some(log) = &self.log {
            log.render(&event);
        }
        match self.spool.record_state(rid, &change) {
            Ok(t) => self.commit = Some(t),
            Err(_) => {
                self.metrics.spool_errors.fetch_add(1, Ordering::Relaxed);
                // A final outcome must reach the spool (else a restart repeats the delivery and its
                // segment is never freed): kept and written again once maintenance frees room. A
                // deferral not recorded only means the retry time is not remembered across a
                // restart; the timer wheel below still has it.
                if state.is_final() {
                    self.unrecorded.push(Unrecorded {
                        rid,
                        state,
                        attempts,
                        reply: reply_text.clone(),
                    });
                }
            }
        }
        self.reply_scratch = reply_text;
        let m = &self.metrics;
        match event.kind {
            EventKind::Delivered => {
                m.delivered.fetch_add(1, Ordering::Relaxed);
                m.count(&domain, &event.source, |c| c.delivered += 1);
            }
            EventKind::Deferred => {
                m.deferred.fetch_add(1, Ordering::Relaxed);
                m.count(&domain, &event.source, |c| c.deferred += 1);
            }
            EventKind::Bounced => {
                m.bounced.fetch_add(1, Ordering::Relaxed);
                m.count(&domain, &event.source, |c| c.bounced += 1);
            }
            EventKind::Expired => {
                m.expired.fetch_add(1, Ordering::Relaxed);
                m.count(&domain, &event.source, |c| c.expired += 1);
            }
            EventKind::Cancelled
            | EventKind::Suppressed
            | EventKind::LateBounce
            | EventKind::LateDeferral
            | EventKind::Complaint
            | EventKind::Recovered
            | EventKind::Refused => {}
        }
        if state.is_final() {
            m.queued.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.wheel.insert(next, rid);
        }
        self.events.push(event);
    }

    /// The engine-wide id of a message of this shard.
    fn engine_id(&self, m: MessageId) -> u64 {
        self.spool
            .message(m)
            .ok()
            .and_then(|v| {
                v.tags()
                    .find(|(k, _)| *k == ID_TAG)
                    .and_then(|(_, v)| u64::from_str_radix(v, 16).ok())
            })
            .unwrap_or(m.0)
    }

    fn event_base(&self, rid: RecipientId, now: Now) -> DeliveryEvent {
        let (message_id, recipient, tenant, tags, submitted_at) =
            match self.spool.message(rid.message) {
                Ok(v) => {
                    let mut id = rid.message.0;
                    let mut tags = Vec::new();
                    for (k, val) in v.tags() {
                        if k == ID_TAG {
                            id = u64::from_str_radix(val, 16).unwrap_or(id);
                        } else {
                            tags.push((k.to_string(), val.to_string()));
                        }
                    }
                    let recipient = v.recipient_address(rid.index).unwrap_or_default();
                    (
                        id,
                        recipient.to_string(),
                        v.tenant().to_string(),
                        tags,
                        v.submitted_at(),
                    )
                }
                Err(_) => (rid.message.0, String::new(), String::new(), Vec::new(), 0),
            };
        DeliveryEvent {
            recipient_index: rid.index,
            recipient,
            tenant,
            submitted_at,
            tags,
            ..DeliveryEvent::unattempted(EventKind::Deferred, message_id, now.unix_ms)
        }
    }

    /// After a transaction: the next one on the same connection, or QUIT at the per-connection cap.
    fn after_transaction(&mut self, now: Now, conn: ConnId) {
        let max = self.cfg.config.delivery.max_messages_per_connection;
        let shutting_down = self.shutting_down;
        let Some(s) = self.session_mut(conn) else {
            return;
        };
        if !s.is_ready() {
            return;
        }
        if s.messages_sent() >= max || shutting_down {
            s.quit(now.mono);
            self.pump(now, conn);
            return;
        }
        self.assign_work(now, conn);
    }

    /// Gives a ready connection its next transaction from the queues waiting for its pool, or parks it
    /// as idle.
    fn assign_work(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get(conn).and_then(|c| c.as_ref()) else {
            return;
        };
        let pk = c.key;
        let max_messages = self.cfg.config.delivery.max_messages_per_connection;
        if self.shutting_down {
            if let Some(s) = self.session_mut(conn) {
                s.quit(now.mono);
            }
            self.pump(now, conn);
            return;
        }
        loop {
            let Some(key) = self.pools.get_mut(&pk).and_then(|p| p.waiters.pop_front()) else {
                if let Some(p) = self.pools.get_mut(&pk)
                    && !p.idle.contains(&conn)
                {
                    p.idle.push(conn);
                }
                return;
            };
            if self.queues.get(&key).is_none_or(|q| q.len() == 0) {
                if let Some(q) = self.queues.get_mut(&key) {
                    q.waiting_on = None;
                }
                continue;
            }
            // The shaping layer decides whether this connection may carry another message now.
            let nanos = self.nanos(now);
            let decision = match self.conns[conn].as_mut() {
                Some(c) => self.shaper.may_send(&mut c.permit, nanos),
                None => return,
            };
            match decision {
                Ok(()) => {}
                Err(Deferral::NotBefore(t, _)) => {
                    let at = self.instant(t);
                    if let Some(p) = self.pools.get_mut(&pk) {
                        p.waiters.push_front(key);
                        p.paused_until = Some(at);
                        if !p.idle.contains(&conn) {
                            p.idle.push(conn);
                        }
                    }
                    self.wake_at(now, at, key);
                    return;
                }
                Err(Deferral::ConnectionSpent) | Err(Deferral::ConnectionsBusy) => {
                    if let Some(p) = self.pools.get_mut(&pk) {
                        p.waiters.push_front(key);
                    }
                    if let Some(s) = self.session_mut(conn) {
                        s.quit(now.mono);
                    }
                    self.pump(now, conn);
                    return;
                }
            }
            let Some(tx) = self.build_transaction(key) else {
                if let Some(q) = self.queues.get_mut(&key) {
                    q.waiting_on = None;
                }
                continue;
            };
            // Round robin among the queues sharing this pool.
            let more = self.queues.get(&key).is_some_and(|q| q.len() > 0);
            if let Some(p) = self.pools.get_mut(&pk) {
                if more {
                    p.waiters.push_back(key);
                } else if let Some(q) = self.queues.get_mut(&key) {
                    q.waiting_on = None;
                }
            }
            let (transaction, inflight) = tx;
            self.metrics
                .in_flight
                .fetch_add(inflight.rcpts.len() as u64, Ordering::Relaxed);
            // Journalled before the session can send a byte; `finish` ends each entry. A
            // transaction's recipients are all of one message: its engine id is read once.
            if self.journal.is_some()
                && let Some(&(first, _)) = inflight.rcpts.first()
            {
                let id = self.engine_id(first.message);
                for (rid, _) in &inflight.rcpts {
                    let attempts = self
                        .spool
                        .recipient_status(*rid)
                        .map_or(1, |r| r.attempts.saturating_add(1));
                    if let Some(j) = &mut self.journal {
                        j.start(*rid, id, attempts);
                    }
                }
            }
            let c = self.conns[conn].as_mut().expect("live connection");
            let sent = c.session.as_mut().map(|s| s.send(now.mono, transaction));
            match sent {
                Some(Ok(())) => c.txns.push_back(inflight),
                _ => {
                    let (mx, ip, source) = (c.mx.clone(), c.key.addr.ip(), c.key.source);
                    self.metrics
                        .in_flight
                        .fetch_sub(inflight.rcpts.len() as u64, Ordering::Relaxed);
                    for (rid, _) in inflight.rcpts {
                        let outcome = Outcome::temporary("session not ready".into(), Phase::Mail);
                        self.finish(now, rid, outcome, Some((&mx, ip)), source);
                    }
                }
            }
            self.pump(now, conn);
            if more {
                // Another queue-mate may need a connection of its own.
                self.pending.push_back(key);
            }
            // With transactions in flight allowed, the connection takes the next message at once.
            let room = !self.shutting_down
                && self.conns[conn]
                    .as_ref()
                    .is_some_and(|c| !c.txns.is_empty())
                && self
                    .session_mut(conn)
                    .is_some_and(|s| s.is_ready() && s.messages_sent() < max_messages);
            if !room {
                return;
            }
        }
    }

    /// Takes the next recipients of one message from a queue (up to the per-transaction limit).
    fn build_transaction(&mut self, key: QueueKey) -> Option<(Transaction, InFlight)> {
        if self.paused
            || self
                .holds
                .domain_paused(&self.domains[key.domain as usize].name)
        {
            return None;
        }
        let max = self.cfg.config.engine.max_recipients_per_transaction;
        let q = self.queues.get_mut(&key)?;
        let first = loop {
            let rid = q.pop()?;
            self.ready_count -= 1;
            match self.spool.recipient_status(rid) {
                Ok(r) if !r.state.is_final() && r.state != RecipientState::Held => {
                    // A locked or paused tenant's mail is held here, not sent and not lost.
                    let check = self.tenants.is_some() || self.holds.any_tenant();
                    let locked = check
                        && self.spool.message(rid.message).is_ok_and(|m| {
                            self.tenants
                                .as_ref()
                                .is_some_and(|t| t.is_locked(m.tenant()))
                                || self.holds.tenant_paused(m.tenant())
                        });
                    if locked {
                        self.held.push(rid);
                        continue;
                    }
                    break rid;
                }
                _ => {}
            }
        };
        let mut rcpts = vec![(first, false)];
        // With VERP every recipient gets its own return path, so its own transaction (the null
        // sender stays null).
        let verp = self.cfg.verp.as_ref().filter(|_| {
            self.spool
                .message(first.message)
                .is_ok_and(|m| !m.sender().is_empty())
        });
        let max = if verp.is_some() { 1 } else { max };
        while rcpts.len() < max {
            let Some(next) = q.peek_same_message(first.message) else {
                break;
            };
            self.ready_count -= 1;
            if let Ok(r) = self.spool.recipient_status(next)
                && !r.state.is_final()
                && r.state != RecipientState::Held
            {
                rcpts.push((next, false));
            }
        }
        let msg = self.spool.message(first.message).ok()?;
        let recipients: Vec<Recipient> = rcpts
            .iter()
            .map(|(r, _)| {
                Recipient::new(
                    msg.recipient_address(r.index)
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let flags = msg.flags();
        let mail_from = match verp {
            Some(v) => {
                let tenant = match &self.observe {
                    Some(default) => suppression_tenant(msg.tenant(), default),
                    None => msg.tenant().to_string(),
                };
                let id = super::suppression::verp_id(self.engine_id(first.message), &tenant);
                // A recipient VERP cannot carry (quotes, say) keeps the plain sender.
                v.encode(&id, &recipients[0].address)
                    .unwrap_or_else(|_| msg.sender().to_string())
            }
            None => msg.sender().to_string(),
        };
        let envelope = Envelope {
            mail_from,
            recipients,
            eight_bit: flags.contains(MessageFlags::EIGHT_BIT),
            smtputf8: flags.contains(MessageFlags::SMTPUTF8),
            dsn_ret: None,
            dsn_envid: None,
        };
        // The body shares the segment's mapping (no copy), which it keeps mapped: the spool may
        // compact, seal or delete the segment meanwhile.
        let body = Arc::new(msg.shared_body());
        let crlf_clean = flags.contains(MessageFlags::CRLF);
        Some((
            Transaction {
                envelope,
                body,
                crlf_clean,
            },
            InFlight { rcpts },
        ))
    }

    /// A connection ended: pool accounting, failover if it failed before its session was ready.
    fn connection_gone(&mut self, now: Now, conn: ConnId, failure: Option<String>) {
        let Some(c) = self.conns.get_mut(conn).and_then(|c| c.take()) else {
            return;
        };
        self.free_conns.push(conn);
        self.live_conns -= 1;
        let nanos = self.nanos(now);
        let c = {
            let Conn {
                key,
                mx,
                permit,
                session,
                ready,
                connect_deadline,
                txns,
            } = c;
            if !ready && failure.is_some() {
                self.shaper.on_connect_failed(permit, nanos);
            } else {
                self.shaper.on_connection_closed(permit, nanos);
            }
            ClosedConn {
                key,
                mx,
                session,
                ready,
                txns,
                _deadline: connect_deadline,
            }
        };
        if c.session.is_some() {
            self.metrics
                .connections_open
                .fetch_sub(1, Ordering::Relaxed);
        }
        if !c.txns.is_empty() {
            // The session always fails its transactions before closing; this is a safety net.
            let left: Vec<RecipientId> = c
                .txns
                .iter()
                .flat_map(|t| t.rcpts.iter())
                .filter(|(_, done)| !done)
                .map(|(r, _)| *r)
                .collect();
            self.metrics
                .in_flight
                .fetch_sub(left.len() as u64, Ordering::Relaxed);
            for rid in left {
                let o = Outcome::temporary("connection closed".into(), Phase::Connect);
                self.finish(now, rid, o, Some((&c.mx, c.key.addr.ip())), c.key.source);
            }
        }
        let down = self.cfg.config.delivery.host_down_s;
        let Some(p) = self.pools.get_mut(&c.key) else {
            return;
        };
        p.idle.retain(|x| *x != conn);
        if c.ready {
            p.open = p.open.saturating_sub(1);
        } else {
            p.connecting = p.connecting.saturating_sub(1);
        }
        let waiters: Vec<QueueKey> = p.waiters.iter().copied().collect();
        if let Some(why) = failure {
            self.metrics
                .connection_failures
                .fetch_add(1, Ordering::Relaxed);
            if p.open == 0 {
                // This MX address is failing: skip it for a while; waiting queues fail over.
                p.down_until = Some(now.mono + Duration::from_secs(down));
                p.waiters.clear();
                for key in &waiters {
                    if let Some(q) = self.queues.get_mut(key) {
                        q.waiting_on = None;
                    }
                    self.domains[key.domain as usize].last_error = why.clone();
                }
            }
        }
        // Whoever waits for this pool (or failed over) gets another try.
        self.pending.extend(waiters);
        self.dispatch_pending(now);
    }

    /// Stops taking new transactions; idle connections quit, in-flight ones finish.
    pub(crate) fn begin_shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        self.pending.clear();
        for id in 0..self.conns.len() {
            let idle = self.conns[id].as_ref().is_some_and(|c| {
                c.txns.is_empty() && c.session.as_ref().is_some_and(|s| s.is_ready())
            });
            if idle {
                if let Some(s) = self.session_mut(id) {
                    s.quit(now.mono);
                }
                self.pump(now, id);
            }
            let connecting = self.conns[id].as_ref().is_some_and(|c| c.session.is_none());
            if connecting {
                self.actions.push_back(Action::Close { conn: id });
                self.connection_gone(now, id, None);
            }
        }
    }

    /// Ends every connection at once (the grace period is over). Unfinished recipients stay queued in
    /// the spool as they were.
    pub(crate) fn abort_all(&mut self, now: Now) {
        for id in 0..self.conns.len() {
            if let Some(c) = self.conns[id].as_mut() {
                // Forget the transaction: its recipients keep their spool state.
                for t in std::mem::take(&mut c.txns) {
                    self.metrics
                        .in_flight
                        .fetch_sub(t.unsettled() as u64, Ordering::Relaxed);
                }
                self.actions.push_back(Action::Close { conn: id });
                self.connection_gone(now, id, None);
            }
        }
    }

    /// Is any connection still open?
    pub(crate) fn has_connections(&self) -> bool {
        self.live_conns > 0
    }

    /// The shard number.
    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    /// Spool maintenance (segment deletion and compaction).
    /// Frees spool space, then writes the final outcomes a full disk refused before.
    pub(crate) fn maintain(&mut self) {
        let _ = self.spool.maintain();
        let mut kept = Vec::new();
        for u in std::mem::take(&mut self.unrecorded) {
            let change = StateChange {
                state: u.state,
                attempts: u.attempts,
                next_attempt: 0,
                reply: &u.reply,
            };
            match self.spool.record_state(u.rid, &change) {
                Ok(t) => self.commit = Some(t),
                // Gone or already final (a cancel got there): nothing left to record.
                Err(
                    SpoolError::AlreadyFinal(_)
                    | SpoolError::UnknownRecipient(_)
                    | SpoolError::UnknownMessage(_),
                ) => {}
                Err(_) => kept.push(u),
            }
        }
        self.unrecorded = kept;
    }

    /// Failures classified so far (the verdict cache's misses).
    pub(crate) fn classifications(&self) -> u64 {
        self.verdicts.classified
    }

    /// Whether final outcomes wait for room in the spool (maintenance is then due sooner).
    pub(crate) fn has_unrecorded(&self) -> bool {
        !self.unrecorded.is_empty()
    }
}

/// Operator views and actions ([`super::queues`]).
impl ShardCore {
    /// The recipients in an SMTP transaction now.
    fn in_flight_set(&self) -> crate::FastMap<RecipientId, ()> {
        let mut set = crate::FastMap::default();
        for c in self.conns.iter().flatten() {
            for t in &c.txns {
                for (rid, done) in &t.rcpts {
                    if !done {
                        set.insert(*rid, ());
                    }
                }
            }
        }
        set
    }

    /// This shard's queue by destination and tenant.
    pub(crate) fn queue_report(&self, now: Now) -> super::queues::QueueReport {
        use super::queues::QueueCounts;
        let mut report = super::queues::QueueReport::default();
        let in_flight = self.in_flight_set();
        let unix = now.unix();
        let mut tenant: (Option<MessageId>, String) = (None, String::new());
        for q in self.spool.queued() {
            if tenant.0 != Some(q.id.message) {
                tenant = (
                    Some(q.id.message),
                    self.spool
                        .message(q.id.message)
                        .map_or_else(|_| String::new(), |m| m.tenant().to_string()),
                );
            }
            let flying = in_flight.contains_key(&q.id);
            let held = q.state == RecipientState::Held;
            let waiting = !flying && !held && q.next_attempt > unix;
            let one = QueueCounts {
                recipients: 1,
                ready: u64::from(!flying && !held && !waiting),
                deferred: u64::from(waiting),
                held: u64::from(held),
                in_flight: u64::from(flying),
                oldest_submitted: Some(q.submitted_at),
                next_retry: waiting.then_some(q.next_attempt),
            };
            report.count(q.domain, &tenant.1, &one);
        }
        report
    }

    /// One destination's state, with the reasons its mail waits.
    pub(crate) fn destination_state(
        &mut self,
        now: Now,
        domain: &str,
    ) -> super::queues::DestinationState {
        use super::queues::QueueCounts;
        let in_flight = self.in_flight_set();
        let unix = now.unix();
        let mut queue = QueueCounts::default();
        for q in self.spool.queued().filter(|q| q.domain == domain) {
            let flying = in_flight.contains_key(&q.id);
            let held = q.state == RecipientState::Held;
            let waiting = !flying && !held && q.next_attempt > unix;
            queue.recipients += 1;
            queue.ready += u64::from(!flying && !held && !waiting);
            queue.deferred += u64::from(waiting);
            queue.held += u64::from(held);
            queue.in_flight += u64::from(flying);
            queue.oldest_submitted = Some(
                queue
                    .oldest_submitted
                    .map_or(q.submitted_at, |o| o.min(q.submitted_at)),
            );
            if waiting {
                queue.next_retry = Some(
                    queue
                        .next_retry
                        .map_or(q.next_attempt, |o| o.min(q.next_attempt)),
                );
            }
        }
        let nanos = self.nanos(now);
        let unix_of = |n: Nanos| unix + n.0.saturating_sub(nanos.0).div_ceil(1_000_000_000);
        let id = self.domain_ids.get(domain).copied();
        let (mx, last_error, resolving) = match id.map(|d| &self.domains[d as usize]) {
            Some(d) => (
                match &d.route {
                    Route::Ready { targets, .. } => {
                        let mut v: Vec<String> = targets.iter().map(|t| t.mx.to_string()).collect();
                        v.dedup();
                        v
                    }
                    _ => Vec::new(),
                },
                d.last_error.clone(),
                matches!(d.route, Route::Resolving),
            ),
            None => (Vec::new(), String::new(), false),
        };
        let mut route_ids: Vec<((u16, Arc<str>), RouteId)> = match id {
            Some(d) => self
                .routes
                .iter()
                .filter(|((_, dom, _), _)| *dom == d)
                .map(|((src, _, mx), r)| ((*src, mx.clone()), *r))
                .collect(),
            None => Vec::new(),
        };
        route_ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let routes: Vec<crate::shaping::Snapshot> = route_ids
            .into_iter()
            .map(|(_, r)| self.shaper.snapshot(r, nanos))
            .collect();
        let backoff_until = routes
            .iter()
            .filter_map(|r| r.live.as_ref()?.destination_not_before)
            .max()
            .map(unix_of);
        let last_throttle = mx
            .iter()
            .filter_map(|m| self.throttles.get(m.as_str()))
            .max_by_key(|t| t.at)
            .cloned();
        let paused_here = self.holds.domain_paused(domain);
        let paused_tenants = self.holds.paused_tenants();
        let mut why = Vec::new();
        if self.paused {
            why.push("all delivery is paused".to_string());
        }
        if paused_here {
            why.push("this destination is paused by an operator".to_string());
        }
        if !paused_tenants.is_empty() {
            why.push(format!(
                "paused tenants' mail waits: {}",
                paused_tenants.join(", ")
            ));
        }
        if let Some(t) = backoff_until {
            let streak = routes
                .iter()
                .filter_map(|r| r.live.as_ref().map(|l| l.destination_streak))
                .max()
                .unwrap_or(0);
            why.push(format!(
                "every MX host failed ({streak} times in a row): backed off until {t} (last error: {})",
                if last_error.is_empty() { "none recorded" } else { &last_error }
            ));
        }
        if resolving {
            why.push("its MX hosts are being looked up".to_string());
        }
        for r in &routes {
            let Some(l) = &r.live else { continue };
            let via = format!(
                "{} via {}",
                r.source.as_deref().unwrap_or("any source"),
                r.mx.as_deref().unwrap_or("?")
            );
            if l.backoff_permille < 1000 {
                let cause = last_throttle.as_ref().map_or_else(String::new, |t| {
                    format!(
                        " after `{} {}{}` from {} at {}",
                        t.code,
                        t.enhanced
                            .as_deref()
                            .map_or(String::new(), |e| format!("{e} ")),
                        t.text,
                        t.mx,
                        t.at
                    )
                });
                why.push(format!(
                    "{via}: rate lowered to {}.{}% by adaptive backoff{cause}",
                    l.backoff_permille / 10,
                    l.backoff_permille % 10
                ));
            }
            if let Some(cap) = r.effective.max_connections
                && l.connections >= cap
            {
                why.push(format!(
                    "{via}: all {cap} connections in use (rule {})",
                    r.rule_name
                ));
            }
            if l.message_tokens == Some(0) {
                why.push(format!(
                    "{via}: message bucket empty ({:.2} messages/s, rule {})",
                    r.effective.messages_per_second.unwrap_or(0.0),
                    r.rule_name
                ));
            }
            if let Some(cap) = r.effective.hourly_cap
                && l.hour_count >= cap
            {
                why.push(format!("{via}: hourly cap of {cap} reached"));
            }
            if let Some(cap) = r.effective.daily_cap
                && l.day_count >= cap
            {
                why.push(format!("{via}: daily cap of {cap} reached"));
            }
            if let Some(w) = &r.warmup
                && let (Some(allowed), Some(sent)) = (w.allowance_today, w.sent_today)
                && sent >= allowed
            {
                why.push(format!(
                    "{via}: warm-up `{}` allows {allowed} messages today, all sent",
                    w.schedule
                ));
            }
        }
        if queue.ready == 0 && queue.deferred > 0 {
            why.push(format!(
                "{} recipients wait for their retry (the next at {})",
                queue.deferred,
                queue.next_retry.unwrap_or(0)
            ));
        }
        super::queues::DestinationState {
            domain: domain.to_string(),
            shard: self.shard,
            queue,
            paused: self.paused || paused_here,
            paused_tenants,
            mx,
            routes,
            backoff_until,
            last_throttle,
            last_error,
            slow_because: why,
        }
    }

    /// Cancels the queued recipients `which` selects (those in a transaction are left to finish).
    pub(crate) fn bounce_queued(
        &mut self,
        now: Now,
        which: &super::queues::Selector,
        reason: &str,
    ) -> super::queues::BounceReport {
        use super::queues::{CAMPAIGN_TAG, Selector};
        let in_flight = self.in_flight_set();
        let mut report = super::queues::BounceReport::default();
        let mut chosen: Vec<(RecipientId, u16)> = Vec::new();
        let mut verdict: (Option<MessageId>, bool) = (None, false);
        for q in self.spool.queued() {
            let hit = match which {
                Selector::Domain(d) => q.domain == d,
                Selector::Tenant(_) | Selector::Campaign(_) => {
                    if verdict.0 != Some(q.id.message) {
                        let m = self.spool.message(q.id.message);
                        let yes = m.is_ok_and(|m| match which {
                            Selector::Tenant(t) => m.tenant() == t,
                            Selector::Campaign(c) => {
                                m.tags().any(|(k, v)| k == CAMPAIGN_TAG && v == c)
                            }
                            Selector::Domain(_) => false,
                        });
                        verdict = (Some(q.id.message), yes);
                    }
                    verdict.1
                }
            };
            if !hit {
                continue;
            }
            if in_flight.contains_key(&q.id) {
                report.in_flight += 1;
                continue;
            }
            chosen.push((q.id, q.attempts));
        }
        let text: String = reason.chars().take(512).collect();
        for (rid, attempts) in chosen {
            // The event is built while the message is still readable (the last recipient's
            // change may remove it).
            let mut event = self.event_base(rid, now);
            event.kind = EventKind::Cancelled;
            event.attempts = attempts;
            event.text = text.clone();
            event.reason = "cancelled".into();
            let change = StateChange {
                state: RecipientState::Cancelled,
                attempts,
                next_attempt: 0,
                reply: &text,
            };
            let rendered = self.log.as_ref().map(|log| (log, log.render(&event)));
            match self.spool.record_state(rid, &change) {
                Ok(t) => self.commit = Some(t),
                Err(_) => {
                    if let Some((log, len)) = rendered {
                        log.unrender(len);
                    }
                    self.metrics.spool_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            self.events.push(event);
            report.cancelled += 1;
        }
        self.metrics
            .cancelled
            .fetch_add(report.cancelled, Ordering::Relaxed);
        self.metrics
            .queued
            .fetch_sub(report.cancelled, Ordering::Relaxed);
        report
    }

    /// A destination or tenant was paused or resumed: held mail is looked at again and every
    /// queue with recipients is dispatched (those still paused stay put).
    pub(crate) fn holds_changed(&mut self, now: Now) {
        for rid in std::mem::take(&mut self.held) {
            self.make_ready(rid);
        }
        let mut keys: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(_, q)| q.len() > 0 && q.waiting_on.is_none())
            .map(|(k, _)| *k)
            .collect();
        keys.sort_unstable_by_key(|k| (k.domain, k.source));
        self.pending.extend(keys);
        self.dispatch_pending(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::engine::retry::ExponentialRetry;
    use crate::spool::{Envelope, Options, SyncPolicy};

    fn core(dir: &std::path::Path, now: Now) -> ShardCore {
        let config = EngineConfig::default();
        let resolved = Arc::new(config.resolve().expect("default configuration"));
        let opts = Options {
            policy: SyncPolicy::None,
            ..Options::default()
        };
        let (spool, _) = Spool::open(dir, opts).expect("spool");
        let rules = config.shaping.rule_set().expect("rules");
        let shaping = crate::shaping::ShapingShared::new(rules, 1, now.unix());
        ShardCore::new(
            0,
            resolved,
            spool,
            Arc::new(ExponentialRetry::default()),
            None,
            1,
            Arc::new(ShardMetrics::default()),
            crate::shaping::Shaper::new(shaping),
            now.mono,
            None,
            now,
        )
    }

    fn submit(core: &mut ShardCore, engine_id: u64, now: Now) {
        let hex = format!("{engine_id:016x}");
        let tags = [(ID_TAG, hex.as_str())];
        let env = Envelope {
            sender: "s@example.test",
            recipients: &["a@one.test", "b@two.test"],
            tenant: "t",
            tags: &tags,
            submitted_at: now.unix(),
            ..Envelope::default()
        };
        let (m, _) = core
            .spool_mut()
            .append(&env, b"Subject: x\r\n\r\nx\r\n")
            .expect("append");
        core.enqueue(engine_id, m);
    }

    #[test]
    fn cancel_finds_messages_by_engine_id_in_and_out_of_order_and_after_a_restart() {
        let dir = crate::TestDir::new("shard-cancel");
        let now = Now::system();
        let mut c = core(&dir.0, now);
        // Two submitters racing: ids reach the shard as 10, 12, 11, 13, 9, 14.
        for id in [10, 12, 11, 13, 9, 14] {
            submit(&mut c, id, now);
        }
        assert_eq!(c.cancellable(), 6);
        assert_eq!(c.cancel(now, 11), 2, "out of order");
        assert_eq!(c.cancel(now, 12), 2, "in order, sharing its key with 11");
        assert_eq!(c.cancel(now, 12), 0, "already cancelled");
        assert_eq!(c.cancel(now, 15), 0, "never given");
        assert_eq!(c.cancel(now, 1), 0, "below every key");
        assert_eq!(c.cancellable(), 4);
        drop(c);
        // After a restart the keys are rebuilt from the ids in the records.
        let mut c = core(&dir.0, now);
        assert_eq!(c.recover(now), 8);
        for id in [9, 14, 10, 13] {
            assert_eq!(c.cancel(now, id), 2, "engine id {id} after the restart");
        }
        assert_eq!(c.cancellable(), 0);
    }
}
