//! The shaper: per-shard decisions ([`Shaper`]) over cross-shard state ([`ShapingShared`]).
//!
//! The hook sequence the engine follows is in the [parent module's doc](super). Here:
//!
//! - a *source* is a sending IP or domain, with its level and warm-up from the rule set;
//! - a *route* is (source, recipient domain, MX host), resolved once to a *lane*, (source, scope), where
//!   the budgets live, and to a *destination* (the domain), whose MX hosts' health decides whole-domain
//!   backoff;
//! - a decision touches only vectors indexed by those ids, the lane's atomics, and, for warm-up, the
//!   source's counter: no hashing, no allocation, no lock per message.
//!
//! Decision order in `may_send`: messages per connection, warm-up, daily cap, hourly cap, message bucket;
//! a later refusal refunds what the earlier steps counted, so a refused message costs nothing.
//! `may_connect` checks the destination's backoff and probe, the warm-up and caps (without counting),
//! the lane's throttle hold, the connection cap (after level and backoff) and the connection bucket.

use super::Nanos;
use super::backoff::{DestinationBackoff, LaneBackoff, ReplySignal};
use super::bucket::{BucketParams, SharedTokenBucket, TokenBucket};
use super::level::{ThroughputLevel, scale_up};
use super::rules::{Limits, RuleKind, RuleSet, Scope};
use super::warmup::{DAY_NS, WarmupSchedule};
use super::window::{SharedWindowCounter, WindowCounter, Windows};
use crate::smtp::Phase;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const HOUR_NS: u64 = 3_600 * 1_000_000_000;
/// How long a probe connection to a recovering destination holds off the others at most.
const PROBE_NS: u64 = 60 * 1_000_000_000;

/// State shared by all shards of one engine: the current rule set (swapped whole on reload), the lanes
/// whose limits cross shards, and the sources' warm-up counters.
///
/// The mutexes here are taken only when a shard meets a lane or source for the first time and on reload,
/// never on a per-message decision.
#[derive(Debug)]
pub struct ShapingShared {
    rules: Mutex<Arc<RuleSet>>,
    generation: AtomicU64,
    shards: usize,
    unix_secs_at_epoch: u64,
    lanes: Mutex<HashMap<(String, Scope), Arc<LaneShared>>>,
    sources: Mutex<HashMap<String, Arc<SourceShared>>>,
}

impl ShapingShared {
    /// Shared state for an engine with `shards` shards whose monotonic epoch (`Nanos(0)`) was the wall-clock
    /// time `unix_secs_at_epoch` (used only to place warm-up start dates on the monotonic clock).
    pub fn new(rules: RuleSet, shards: usize, unix_secs_at_epoch: u64) -> Arc<ShapingShared> {
        Arc::new(ShapingShared {
            rules: Mutex::new(Arc::new(rules)),
            generation: AtomicU64::new(1),
            shards: shards.max(1),
            unix_secs_at_epoch,
            lanes: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes a new rule set. Each shard switches to it at its next decision; lanes keep their tokens,
    /// counters and backoff, and take the new limits.
    pub fn reload(&self, rules: RuleSet) {
        *self.rules.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current rule set.
    pub fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.rules.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many rule sets have been published (1 for the initial one).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    fn lane(&self, source: &str, scope: &Scope, eff: &Effective, now: Nanos) -> Arc<LaneShared> {
        let mut map = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            map.entry((source.to_string(), scope.clone()))
                .or_insert_with(|| Arc::new(LaneShared::new(eff, now))),
        )
    }

    fn source(&self, name: &str) -> Arc<SourceShared> {
        let mut map = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(map.entry(name.to_string()).or_default())
    }
}

/// The atomics of one lane: always its open connections and backoff; its buckets and caps too when the
/// lane is shared by several shards.
#[derive(Debug)]
struct LaneShared {
    connections: AtomicU32,
    backoff: LaneBackoff,
    /// No new connection before this (nanoseconds): set by a throttling reply for the backoff cooldown.
    hold_until: AtomicU64,
    throttles: AtomicU64,
    messages: SharedTokenBucket,
    connects: SharedTokenBucket,
    hourly: SharedWindowCounter,
    daily: SharedWindowCounter,
}

impl LaneShared {
    fn new(eff: &Effective, now: Nanos) -> LaneShared {
        let one = BucketParams::new(1, 1);
        LaneShared {
            connections: AtomicU32::new(0),
            backoff: LaneBackoff::default(),
            hold_until: AtomicU64::new(0),
            throttles: AtomicU64::new(0),
            messages: SharedTokenBucket::new(eff.messages.unwrap_or(one), now),
            connects: SharedTokenBucket::new(eff.connects.unwrap_or(one), now),
            hourly: SharedWindowCounter::default(),
            daily: SharedWindowCounter::default(),
        }
    }
}

#[derive(Debug, Default)]
struct SourceShared {
    warmup_sent: SharedWindowCounter,
}

/// A rule's limits after the source's throughput level, as buckets and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Effective {
    max_connections: Option<u32>,
    messages: Option<BucketParams>,
    connects: Option<BucketParams>,
    per_connection: Option<u32>,
    hourly: Option<u64>,
    daily: Option<u64>,
}

impl Effective {
    fn new(l: &Limits, level: ThroughputLevel) -> Effective {
        let p = level.permille();
        Effective {
            max_connections: l.max_connections.map(|c| scale_up(u64::from(c), p) as u32),
            messages: l.message_rate.map(|r| {
                BucketParams::new(r.interval_ns(p), scale_up(u64::from(l.message_burst), p))
            }),
            connects: l.connection_rate.map(|r| {
                BucketParams::new(r.interval_ns(p), scale_up(u64::from(l.connection_burst), p))
            }),
            per_connection: l.max_messages_per_connection,
            hourly: l.hourly_cap.map(|c| scale_up(c, p)),
            daily: l.daily_cap.map(|c| scale_up(c, p)),
        }
    }
}

/// A sending source known to a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(u32);

/// A (source, recipient domain, MX host) triple known to a shard: what the engine passes to
/// [`Shaper::may_connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(u32);

#[derive(Debug)]
struct Source {
    name: String,
    level: ThroughputLevel,
    warmup: Option<Warmup>,
    shared: Arc<SourceShared>,
}

#[derive(Debug, Clone)]
struct Warmup {
    schedule: WarmupSchedule,
    windows: Windows,
    /// Days between the schedule's day 0 and window 0 (when the start precedes the monotonic epoch).
    day_offset: u64,
}

impl Warmup {
    fn cap(&self, k: u64) -> u64 {
        self.schedule.allowance(k + self.day_offset)
    }
}

#[derive(Debug)]
struct LocalMeters {
    messages: TokenBucket,
    connects: TokenBucket,
    hourly: WindowCounter,
    daily: WindowCounter,
}

#[derive(Debug)]
struct Lane {
    source: SourceId,
    scope: Scope,
    rule_kind: RuleKind,
    rule_name: String,
    limits: Limits,
    eff: Effective,
    shared: Arc<LaneShared>,
    /// `None` when the lane's buckets and caps live in `shared` (several shards draw from them).
    local: Option<LocalMeters>,
    /// A domain and MX host that led here, to re-resolve the rule on reload.
    domain: String,
    mx: String,
}

#[derive(Debug)]
struct Route {
    source: SourceId,
    lane: usize,
    destination: usize,
    mx: usize,
    domain: String,
    mx_host: String,
}

#[derive(Debug)]
struct Destination {
    mx: Vec<usize>,
    backoff: DestinationBackoff,
}

#[derive(Debug)]
struct MxHealth {
    failing: bool,
}

/// Why a decision says "not now".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The message rate's bucket is empty.
    MessageRate,
    /// The connection rate's bucket is empty.
    ConnectionRate,
    /// The hourly cap is reached.
    HourlyCap,
    /// The daily cap is reached.
    DailyCap,
    /// The source's warm-up volume for today is reached.
    Warmup,
    /// All MX hosts of the destination failed recently.
    DestinationBackoff,
    /// The destination is recovering from a backoff and one probe connection is under way.
    DestinationProbe,
    /// The receiver just sent a throttling reply: no new connection for the backoff cooldown.
    Throttled,
}

impl Reason {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MessageRate => "message-rate",
            Reason::ConnectionRate => "connection-rate",
            Reason::HourlyCap => "hourly-cap",
            Reason::DailyCap => "daily-cap",
            Reason::Warmup => "warmup",
            Reason::DestinationBackoff => "destination-backoff",
            Reason::DestinationProbe => "destination-probe",
            Reason::Throttled => "throttled",
        }
    }
}

/// "Not now": what the engine does instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// Ask again at (or after) this time. The message waits in its queue; it is never bounced for this.
    NotBefore(Nanos, Reason),
    /// The lane has all the connections it may have: ask again when one of them closes.
    ConnectionsBusy,
    /// This connection has carried its maximum of messages: close it (QUIT) and ask for a new one.
    ConnectionSpent,
}

/// Leave to hold one connection open: returned by [`Shaper::may_connect`], given back by dropping it
/// (or through [`Shaper::on_connection_closed`] / [`Shaper::on_connect_failed`]). The lane's connection
/// count is released in `Drop`, so no path — error, panic unwinding, a forgotten close — leaks a slot.
#[derive(Debug)]
#[must_use = "dropping the permit closes the connection slot"]
pub struct ConnectionPermit {
    route: RouteId,
    lane: usize,
    shared: Arc<LaneShared>,
    messages: u32,
}

impl ConnectionPermit {
    /// The route the connection serves.
    pub fn route(&self) -> RouteId {
        self.route
    }

    /// Messages granted on this connection so far.
    pub fn messages(&self) -> u32 {
        self.messages
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One shard's shaping state and decisions. Not `Sync`: each shard owns one; cross-shard limits go
/// through the [`ShapingShared`] it was made with.
#[derive(Debug)]
pub struct Shaper {
    shared: Arc<ShapingShared>,
    rules: Arc<RuleSet>,
    generation: u64,
    sources: Vec<Source>,
    source_index: HashMap<String, SourceId>,
    lanes: Vec<Lane>,
    lane_index: HashMap<(SourceId, Scope), usize>,
    routes: Vec<Route>,
    route_index: HashMap<(SourceId, String, String), RouteId>,
    destinations: Vec<Destination>,
    destination_index: HashMap<String, usize>,
    mx: Vec<MxHealth>,
    mx_index: HashMap<String, usize>,
}

impl Shaper {
    /// A shard's shaper over the engine-wide shared state.
    pub fn new(shared: Arc<ShapingShared>) -> Shaper {
        let rules = shared.rules();
        let generation = shared.generation();
        Shaper {
            shared,
            rules,
            generation,
            sources: Vec::new(),
            source_index: HashMap::new(),
            lanes: Vec::new(),
            lane_index: HashMap::new(),
            routes: Vec::new(),
            route_index: HashMap::new(),
            destinations: Vec::new(),
            destination_index: HashMap::new(),
            mx: Vec::new(),
            mx_index: HashMap::new(),
        }
    }

    /// The engine-wide state this shard was made from.
    #[cfg(test)]
    pub(crate) fn shared_for_tests(&self) -> &Arc<ShapingShared> {
        &self.shared
    }

    /// The rule set this shard currently uses.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// The source named `name` (an IP address or a sending domain), registering it on first use with the
    /// level and warm-up its `[[source]]` entry gives (or level `full` and no warm-up).
    pub fn source(&mut self, name: &str) -> SourceId {
        if let Some(&id) = self.source_index.get(name) {
            return id;
        }
        let id = SourceId(self.sources.len() as u32);
        let (level, warmup) = self.source_config(name);
        self.sources.push(Source {
            name: name.to_string(),
            level,
            warmup,
            shared: self.shared.source(name),
        });
        self.source_index.insert(name.to_string(), id);
        id
    }

    fn source_config(&self, name: &str) -> (ThroughputLevel, Option<Warmup>) {
        let Some(s) = self.rules.source(name) else {
            return (ThroughputLevel::Full, None);
        };
        let warmup = match (s.warmup, s.warmup_started) {
            (Some(i), Some(day)) => {
                let start = i128::from(day) * 86_400 - i128::from(self.shared.unix_secs_at_epoch);
                let start_ns = start * 1_000_000_000;
                let day_ns = i128::from(DAY_NS);
                let windows = if start_ns >= 0 {
                    (Windows::new(Nanos(start_ns as u64), DAY_NS), 0)
                } else {
                    // Started before the epoch: day `(-start) / DAY` is under way at `Nanos(0)`.
                    let ago = -start_ns;
                    let shift = (ago % day_ns) as u64;
                    (
                        Windows::shifted(Nanos(0), shift, DAY_NS),
                        (ago / day_ns) as u64,
                    )
                };
                let (windows, day_offset) = windows;
                Some(Warmup {
                    schedule: self.rules.warmups[i].clone(),
                    windows,
                    day_offset,
                })
            }
            _ => None,
        };
        (s.level, warmup)
    }

    /// The route for mail from `source` to `domain` through the MX host `mx`, resolving the rule that
    /// applies on first use. Create routes for every MX host of a domain the engine may use: a
    /// destination is backed off as a whole when all the MX hosts it has routes to are failing.
    pub fn route(&mut self, source: SourceId, domain: &str, mx: &str, now: Nanos) -> RouteId {
        self.refresh(now);
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let mx_host = mx.trim().trim_end_matches('.').to_ascii_lowercase();
        let key = (source, domain, mx_host);
        if let Some(&id) = self.route_index.get(&key) {
            return id;
        }
        let (source, domain, mx_host) = key;
        let lane = self.lane_for(source, &domain, &mx_host, now);
        let destination = match self.destination_index.get(&domain) {
            Some(&d) => d,
            None => {
                self.destinations.push(Destination {
                    mx: Vec::new(),
                    backoff: DestinationBackoff::default(),
                });
                self.destination_index
                    .insert(domain.clone(), self.destinations.len() - 1);
                self.destinations.len() - 1
            }
        };
        let mx = match self.mx_index.get(&mx_host) {
            Some(&m) => m,
            None => {
                self.mx.push(MxHealth { failing: false });
                self.mx_index.insert(mx_host.clone(), self.mx.len() - 1);
                self.mx.len() - 1
            }
        };
        if !self.destinations[destination].mx.contains(&mx) {
            self.destinations[destination].mx.push(mx);
        }
        let id = RouteId(self.routes.len() as u32);
        self.routes.push(Route {
            source,
            lane,
            destination,
            mx,
            domain: domain.clone(),
            mx_host: mx_host.clone(),
        });
        self.route_index.insert((source, domain, mx_host), id);
        id
    }

    fn lane_for(&mut self, source: SourceId, domain: &str, mx: &str, now: Nanos) -> usize {
        let resolved = self.rules.resolve(domain, mx);
        let key = (source, resolved.scope.clone());
        if let Some(&l) = self.lane_index.get(&key) {
            return l;
        }
        let src = &self.sources[source.0 as usize];
        let eff = Effective::new(&resolved.rule.limits, src.level);
        let cross_shard = self.shared.shards > 1 && !matches!(resolved.scope, Scope::Domain(_));
        let (shared, local) = if cross_shard {
            (
                self.shared.lane(&src.name, &resolved.scope, &eff, now),
                None,
            )
        } else {
            let one = BucketParams::new(1, 1);
            (
                Arc::new(LaneShared::new(&eff, now)),
                Some(LocalMeters {
                    messages: TokenBucket::new(eff.messages.unwrap_or(one), now),
                    connects: TokenBucket::new(eff.connects.unwrap_or(one), now),
                    hourly: WindowCounter::default(),
                    daily: WindowCounter::default(),
                }),
            )
        };
        self.lanes.push(Lane {
            source,
            scope: resolved.scope.clone(),
            rule_kind: resolved.rule.kind,
            rule_name: resolved.rule.name.clone(),
            limits: resolved.rule.limits,
            eff,
            shared,
            local,
            domain: domain.to_string(),
            mx: mx.to_string(),
        });
        self.lane_index.insert(key, self.lanes.len() - 1);
        self.lanes.len() - 1
    }

    /// Picks up a reloaded rule set (one relaxed atomic load when nothing changed).
    fn refresh(&mut self, now: Nanos) {
        if self.shared.generation.load(Ordering::Relaxed) == self.generation {
            return;
        }
        self.rules = self.shared.rules();
        self.generation = self.shared.generation();
        for i in 0..self.sources.len() {
            let (level, warmup) = self.source_config(&self.sources[i].name.clone());
            self.sources[i].level = level;
            self.sources[i].warmup = warmup;
        }
        // Existing lanes take the limits of the rule that now applies to them.
        for lane in &mut self.lanes {
            let r = self.rules.resolve(&lane.domain, &lane.mx);
            lane.rule_kind = r.rule.kind;
            lane.rule_name = r.rule.name.clone();
            lane.limits = r.rule.limits;
            lane.eff = Effective::new(&lane.limits, self.sources[lane.source.0 as usize].level);
            if let Some(m) = &mut lane.local {
                if let Some(p) = lane.eff.messages {
                    m.messages.reconfigure(p);
                }
                if let Some(p) = lane.eff.connects {
                    m.connects.reconfigure(p);
                }
            }
        }
        // Routes whose rule scope changed move to the matching lane; permits keep the lane they hold.
        for i in 0..self.routes.len() {
            let (s, d, m) = {
                let r = &self.routes[i];
                (r.source, r.domain.clone(), r.mx_host.clone())
            };
            let lane = self.lane_for(s, &d, &m, now);
            self.routes[i].lane = lane;
        }
    }

    /// The connection cap of a lane at `now`, after level and backoff.
    fn connection_cap(&self, lane: &Lane, factor: u32) -> Option<u32> {
        lane.eff
            .max_connections
            .map(|c| scale_up(u64::from(c), factor) as u32)
    }

    /// Hook: before opening a connection for `route`. On `Ok` the engine connects and keeps the permit for
    /// as long as the connection lives.
    pub fn may_connect(
        &mut self,
        route: RouteId,
        now: Nanos,
    ) -> Result<ConnectionPermit, Deferral> {
        self.refresh(now);
        let r = &self.routes[route.0 as usize];
        let dest = r.destination;
        if let Err((t, probe)) = self.destinations[dest].backoff.check(now) {
            let reason = if probe {
                Reason::DestinationProbe
            } else {
                Reason::DestinationBackoff
            };
            return Err(Deferral::NotBefore(t, reason));
        }
        let src = &self.sources[r.source.0 as usize];
        if let Some(w) = &src.warmup {
            let k = w.windows.index(now);
            if src.shared.warmup_sent.count(w.windows, now) >= w.cap(k) {
                return Err(Deferral::NotBefore(w.windows.start(k + 1), Reason::Warmup));
            }
        }
        let lane_ix = r.lane;
        let lane = &self.lanes[lane_ix];
        let hours = Windows::new(Nanos(0), HOUR_NS);
        let days = Windows::new(Nanos(0), DAY_NS);
        for (cap, win, reason, is_daily) in [
            (lane.eff.daily, days, Reason::DailyCap, true),
            (lane.eff.hourly, hours, Reason::HourlyCap, false),
        ] {
            if let Some(cap) = cap {
                let n = match (&lane.local, is_daily) {
                    (Some(m), true) => m.daily.count(win, now),
                    (Some(m), false) => m.hourly.count(win, now),
                    (None, true) => lane.shared.daily.count(win, now),
                    (None, false) => lane.shared.hourly.count(win, now),
                };
                if n >= cap {
                    return Err(Deferral::NotBefore(win.start(win.index(now) + 1), reason));
                }
            }
        }
        let hold = lane.shared.hold_until.load(Ordering::Acquire);
        if hold > now.0 {
            return Err(Deferral::NotBefore(Nanos(hold), Reason::Throttled));
        }
        let factor = lane.shared.backoff.factor(&self.rules.backoff, now);
        let cap = self.connection_cap(lane, factor).unwrap_or(u32::MAX);
        let shared = Arc::clone(&lane.shared);
        if shared
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < cap).then_some(c + 1)
            })
            .is_err()
        {
            return Err(Deferral::ConnectionsBusy);
        }
        // From here on the slot is held by the permit: an early return drops it and frees the slot.
        let permit = ConnectionPermit {
            route,
            lane: lane_ix,
            shared,
            messages: 0,
        };
        let lane = &mut self.lanes[lane_ix];
        if let Some(p) = lane.eff.connects {
            let p = p.slowed(factor);
            let got = match &mut lane.local {
                Some(m) => m.connects.try_take(p, now, 1),
                None => lane.shared.connects.try_take(p, now, 1),
            };
            if let Err(t) = got {
                return Err(Deferral::NotBefore(t, Reason::ConnectionRate));
            }
        }
        self.destinations[dest].backoff.attempt(now, PROBE_NS);
        Ok(permit)
    }

    /// Hook: before each transaction (message) on an open connection. On `Ok` the engine sends `MAIL FROM`;
    /// the message counts against every rate, cap and warm-up volume whatever the receiver answers.
    pub fn may_send(&mut self, permit: &mut ConnectionPermit, now: Nanos) -> Result<(), Deferral> {
        self.refresh(now);
        let lane = &mut self.lanes[permit.lane];
        if let Some(max) = lane.eff.per_connection
            && permit.messages >= max
        {
            return Err(Deferral::ConnectionSpent);
        }
        let src = &self.sources[lane.source.0 as usize];
        let warm = src.warmup.as_ref();
        if let Some(w) = warm
            && let Err(t) = src.shared.warmup_sent.try_add(w.windows, now, |k| w.cap(k))
        {
            return Err(Deferral::NotBefore(t, Reason::Warmup));
        }
        let refund_warmup = |src: &Source| {
            if let Some(w) = &src.warmup {
                src.shared.warmup_sent.refund(w.windows, now);
            }
        };
        let hours = Windows::new(Nanos(0), HOUR_NS);
        let days = Windows::new(Nanos(0), DAY_NS);
        if let Some(cap) = lane.eff.daily {
            let got = match &mut lane.local {
                Some(m) => m.daily.try_add(days, now, |_| cap),
                None => lane.shared.daily.try_add(days, now, |_| cap),
            };
            if let Err(t) = got {
                refund_warmup(src);
                return Err(Deferral::NotBefore(t, Reason::DailyCap));
            }
        }
        let refund_daily = |lane: &mut Lane| {
            if lane.eff.daily.is_some() {
                match &mut lane.local {
                    Some(m) => m.daily.refund(days, now),
                    None => lane.shared.daily.refund(days, now),
                }
            }
        };
        if let Some(cap) = lane.eff.hourly {
            let got = match &mut lane.local {
                Some(m) => m.hourly.try_add(hours, now, |_| cap),
                None => lane.shared.hourly.try_add(hours, now, |_| cap),
            };
            if let Err(t) = got {
                refund_daily(lane);
                refund_warmup(src);
                return Err(Deferral::NotBefore(t, Reason::HourlyCap));
            }
        }
        if let Some(p) = lane.eff.messages {
            let factor = lane.shared.backoff.factor(&self.rules.backoff, now);
            let p = p.slowed(factor);
            let got = match &mut lane.local {
                Some(m) => m.messages.try_take(p, now, 1),
                None => lane.shared.messages.try_take(p, now, 1),
            };
            if let Err(t) = got {
                if lane.eff.hourly.is_some() {
                    match &mut lane.local {
                        Some(m) => m.hourly.refund(hours, now),
                        None => lane.shared.hourly.refund(hours, now),
                    }
                }
                refund_daily(lane);
                refund_warmup(src);
                return Err(Deferral::NotBefore(t, Reason::MessageRate));
            }
        }
        permit.messages += 1;
        Ok(())
    }

    /// Hook: a reply arrived on the connection `permit` holds, in `phase`, meaning `signal` (the bounce
    /// verdict's reading, [`super::signal`]). Throttling replies lower the lane's rate and connection
    /// cap; failures while setting up the session (greeting, EHLO) mark the MX host failing, and when
    /// all MX hosts of the destination are failing the destination is backed off. Returns `signal`.
    pub fn on_reply(
        &mut self,
        permit: &ConnectionPermit,
        phase: Phase,
        signal: ReplySignal,
        now: Nanos,
    ) -> ReplySignal {
        let d = self.rules.backoff.decrease_permille;
        self.on_reply_with(permit, phase, signal, d, now)
    }

    /// [`Shaper::on_reply`] with how hard a throttling reply lowers the lane's rate: the share kept,
    /// per mille (the bounce verdict's `slow_down`).
    pub fn on_reply_with(
        &mut self,
        permit: &ConnectionPermit,
        phase: Phase,
        signal: ReplySignal,
        decrease_permille: u32,
        now: Nanos,
    ) -> ReplySignal {
        let r = &self.routes[permit.route.0 as usize];
        let (dest, mx) = (r.destination, r.mx);
        if signal == ReplySignal::Throttled {
            permit
                .shared
                .backoff
                .throttled_by(&self.rules.backoff, decrease_permille, now);
            permit.shared.throttles.fetch_add(1, Ordering::Relaxed);
            // Connections already open carry on at the lowered rate; new ones wait out the cooldown, so
            // "too many connections" is not answered by reconnecting at once.
            let hold = now.0.saturating_add(self.rules.backoff.cooldown_ns);
            permit.shared.hold_until.fetch_max(hold, Ordering::AcqRel);
        }
        let setup = matches!(phase, Phase::Connect | Phase::Greeting | Phase::Ehlo);
        match signal {
            ReplySignal::Accepted if setup => {
                self.mx[mx].failing = false;
                self.destinations[dest].backoff.succeeded();
            }
            // A throttling greeting ("421 too many connections") is the receiver working and asking for
            // fewer connections: the lane backs off, the MX host is not counted as failing.
            ReplySignal::Transient | ReplySignal::Permanent if setup => {
                self.mx_failed(dest, mx, now);
            }
            _ => {}
        }
        signal
    }

    /// Hook: the TCP connection (or TLS handshake) for `permit` failed. Releases the slot.
    pub fn on_connect_failed(&mut self, permit: ConnectionPermit, now: Nanos) {
        let r = &self.routes[permit.route.0 as usize];
        let (dest, mx) = (r.destination, r.mx);
        drop(permit);
        self.mx_failed(dest, mx, now);
    }

    /// Hook: the connection for `permit` closed (QUIT, or the peer went away). Releases the slot; the same
    /// as dropping the permit.
    pub fn on_connection_closed(&mut self, permit: ConnectionPermit, _now: Nanos) {
        drop(permit);
    }

    fn mx_failed(&mut self, dest: usize, mx: usize, now: Nanos) {
        let d = &mut self.destinations[dest];
        if d.backoff.not_before.is_some_and(|t| t > now) {
            // An attempt that started before the destination was backed off: already counted.
            return;
        }
        self.mx[mx].failing = true;
        if d.mx.iter().all(|&m| self.mx[m].failing) {
            d.backoff.all_failed(&self.rules.backoff, now);
            // Each MX host gets another chance when the backoff ends.
            for &m in &d.mx {
                self.mx[m].failing = false;
            }
        }
    }

    /// Open connections on the lane of `route` (across shards if the lane is shared).
    pub fn connections(&self, route: RouteId) -> u32 {
        let lane = &self.lanes[self.routes[route.0 as usize].lane];
        lane.shared.connections.load(Ordering::Acquire)
    }

    /// The live state of `route` for `vmta shaping show` and the engine's status output.
    pub fn snapshot(&mut self, route: RouteId, now: Nanos) -> Snapshot {
        self.refresh(now);
        let r = &self.routes[route.0 as usize];
        let src = &self.sources[r.source.0 as usize];
        let dest = &self.destinations[r.destination];
        let lane = &mut self.lanes[r.lane];
        let factor = lane.shared.backoff.factor(&self.rules.backoff, now);
        let hours = Windows::new(Nanos(0), HOUR_NS);
        let days = Windows::new(Nanos(0), DAY_NS);
        let (message_tokens, connection_tokens, hour, day) = match &mut lane.local {
            Some(m) => (
                lane.eff
                    .messages
                    .map(|p| m.messages.available(p.slowed(factor), now)),
                lane.eff
                    .connects
                    .map(|p| m.connects.available(p.slowed(factor), now)),
                m.hourly.count(hours, now),
                m.daily.count(days, now),
            ),
            None => (
                lane.eff
                    .messages
                    .map(|p| lane.shared.messages.available(p.slowed(factor), now)),
                lane.eff
                    .connects
                    .map(|p| lane.shared.connects.available(p.slowed(factor), now)),
                lane.shared.hourly.count(hours, now),
                lane.shared.daily.count(days, now),
            ),
        };
        let warmup = src.warmup.as_ref().map(|w| {
            let k = w.windows.index(now);
            WarmupView {
                schedule: w.schedule.name.clone(),
                day: Some(k + w.day_offset),
                allowance_today: Some(w.cap(k)),
                sent_today: Some(src.shared.warmup_sent.count(w.windows, now)),
            }
        });
        Snapshot {
            domain: r.domain.clone(),
            mx: Some(r.mx_host.clone()),
            source: Some(src.name.clone()),
            level: src.level,
            rule_kind: lane.rule_kind,
            rule_name: lane.rule_name.clone(),
            scope: Some(lane.scope.clone()),
            limits: lane.limits,
            effective: EffectiveLimits::new(&lane.limits, src.level, factor),
            warmup,
            live: Some(LiveState {
                connections: lane.shared.connections.load(Ordering::Acquire),
                shared_across_shards: lane.local.is_none(),
                message_tokens,
                connection_tokens,
                backoff_permille: factor,
                throttles: lane.shared.throttles.load(Ordering::Relaxed),
                hour_count: hour,
                day_count: day,
                destination_streak: dest.backoff.streak,
                destination_not_before: dest.backoff.not_before.filter(|&t| t > now),
            }),
        }
    }
}

/// A rule's limits after a throughput level and a backoff factor, in display units.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EffectiveLimits {
    /// Concurrent connections.
    pub max_connections: Option<u32>,
    /// Messages per second.
    pub messages_per_second: Option<f64>,
    /// Message burst.
    pub message_burst: Option<u64>,
    /// Connections per second.
    pub connections_per_second: Option<f64>,
    /// Connection burst.
    pub connection_burst: Option<u64>,
    /// Messages per connection.
    pub max_messages_per_connection: Option<u32>,
    /// Messages per hour.
    pub hourly_cap: Option<u64>,
    /// Messages per day.
    pub daily_cap: Option<u64>,
}

impl EffectiveLimits {
    /// `limits` at `level`, slowed by a backoff `factor` (per mille; 1000 = none).
    pub fn new(limits: &Limits, level: ThroughputLevel, factor: u32) -> EffectiveLimits {
        let e = Effective::new(limits, level);
        EffectiveLimits {
            max_connections: e
                .max_connections
                .map(|c| scale_up(u64::from(c), factor) as u32),
            messages_per_second: e.messages.map(|p| p.slowed(factor).per_second()),
            message_burst: e.messages.map(|p| p.burst),
            connections_per_second: e.connects.map(|p| p.slowed(factor).per_second()),
            connection_burst: e.connects.map(|p| p.burst),
            max_messages_per_connection: e.per_connection,
            hourly_cap: e.hourly,
            daily_cap: e.daily,
        }
    }
}

/// A source's warm-up as shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmupView {
    /// The schedule's name.
    pub schedule: String,
    /// Days since the source started (when known).
    pub day: Option<u64>,
    /// Messages allowed today (`u64::MAX`: warm).
    pub allowance_today: Option<u64>,
    /// Messages sent today (live state only).
    pub sent_today: Option<u64>,
}

/// The live counters of one lane (see [`Shaper::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveState {
    /// Open connections.
    pub connections: u32,
    /// Whether the lane's buckets are shared atomics (several shards) or shard-local.
    pub shared_across_shards: bool,
    /// Tokens in the message bucket.
    pub message_tokens: Option<u64>,
    /// Tokens in the connection bucket.
    pub connection_tokens: Option<u64>,
    /// The backoff factor (per mille; 1000 = none).
    pub backoff_permille: u32,
    /// Throttling replies seen.
    pub throttles: u64,
    /// Messages this hour.
    pub hour_count: u64,
    /// Messages today.
    pub day_count: u64,
    /// Times in a row all MX hosts of the destination failed.
    pub destination_streak: u32,
    /// The destination is backed off until then.
    pub destination_not_before: Option<Nanos>,
}

/// What `vmta shaping show DOMAIN` prints: the rule that applies, its limits, and (from a running engine)
/// the live state. Built from a rule set alone by [`Snapshot::configured`], or from a shard by
/// [`Shaper::snapshot`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// The recipient domain.
    pub domain: String,
    /// The MX host, when known.
    pub mx: Option<String>,
    /// The source, when given.
    pub source: Option<String>,
    /// The source's throughput level.
    pub level: ThroughputLevel,
    /// The kind of rule that applies.
    pub rule_kind: RuleKind,
    /// Its name.
    pub rule_name: String,
    /// What one budget covers (needs the MX host for provider and default rules).
    pub scope: Option<Scope>,
    /// The rule's limits as configured.
    pub limits: Limits,
    /// The limits after the level (and, live, the backoff).
    pub effective: EffectiveLimits,
    /// The source's warm-up.
    pub warmup: Option<WarmupView>,
    /// Live counters; `None` without a running engine.
    pub live: Option<LiveState>,
}

impl Snapshot {
    /// The configured view: the rule for `domain` (through `mx` if known) and, for `source`, its level and
    /// warm-up day (`unix_now` places the start date).
    pub fn configured(
        rules: &RuleSet,
        domain: &str,
        mx: Option<&str>,
        source: Option<&str>,
        unix_now: u64,
    ) -> Snapshot {
        let (rule, scope) = match mx {
            Some(m) => {
                let r = rules.resolve(domain, m);
                (r.rule, Some(r.scope))
            }
            None => {
                let rule = rules.resolve_domain(domain);
                let scope = match rule.kind {
                    RuleKind::Domain => Some(Scope::Domain(domain.to_ascii_lowercase())),
                    RuleKind::Provider => Some(Scope::Provider(rule.name.clone())),
                    _ => None,
                };
                (rule, scope)
            }
        };
        let src = source.and_then(|s| rules.source(s));
        let level = src.map_or(ThroughputLevel::Full, |s| s.level);
        let warmup = src.and_then(|s| {
            let w = &rules.warmups[s.warmup?];
            let today = (unix_now / 86_400) as i64;
            let day = s
                .warmup_started
                .map(|d| today.saturating_sub(d).max(0) as u64);
            Some(WarmupView {
                schedule: w.name.clone(),
                day,
                allowance_today: day.map(|d| w.allowance(d)),
                sent_today: None,
            })
        });
        Snapshot {
            domain: domain.to_ascii_lowercase(),
            mx: mx.map(str::to_ascii_lowercase),
            source: source.map(str::to_string),
            level,
            rule_kind: rule.kind,
            rule_name: rule.name.clone(),
            scope,
            limits: rule.limits,
            effective: EffectiveLimits::new(&rule.limits, level, 1000),
            warmup,
            live: None,
        }
    }
}

impl Snapshot {
    /// The same view at another throughput level (what `--level` previews): effective limits recomputed,
    /// live counters left as they are.
    pub fn at_level(mut self, level: ThroughputLevel) -> Snapshot {
        let factor = self.live.as_ref().map_or(1000, |l| l.backoff_permille);
        self.level = level;
        self.effective = EffectiveLimits::new(&self.limits, level, factor);
        self
    }
}

fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain:        {}", self.domain)?;
        if let Some(mx) = &self.mx {
            write!(f, " via {mx}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "rule:          {} ({})",
            self.rule_name,
            self.rule_kind.as_str()
        )?;
        match &self.scope {
            Some(s) => writeln!(f, "budget per:    source × {s}")?,
            None => writeln!(
                f,
                "budget per:    source × MX host (give --mx to see which rule the MX selects)"
            )?,
        }
        if self.source.is_some() || self.level != ThroughputLevel::Full {
            writeln!(
                f,
                "source:        {} (level {}, {}%)",
                self.source.as_deref().unwrap_or("any"),
                self.level,
                self.level.permille() / 10
            )?;
        }
        let l = &self.limits;
        let e = &self.effective;
        writeln!(
            f,
            "limits:                      configured             effective"
        )?;
        writeln!(
            f,
            "  max connections            {:<22} {}",
            opt(l.max_connections),
            opt(e.max_connections)
        )?;
        writeln!(
            f,
            "  message rate               {:<22} {}",
            l.message_rate.map_or("unlimited".into(), |r| format!(
                "{r} (burst {})",
                l.message_burst
            )),
            e.messages_per_second
                .map_or("unlimited".into(), |r| format!(
                    "{r:.3}/s (burst {})",
                    e.message_burst.unwrap_or(1)
                ))
        )?;
        writeln!(
            f,
            "  connection rate            {:<22} {}",
            l.connection_rate.map_or("unlimited".into(), |r| format!(
                "{r} (burst {})",
                l.connection_burst
            )),
            e.connections_per_second
                .map_or("unlimited".into(), |r| format!(
                    "{r:.3}/s (burst {})",
                    e.connection_burst.unwrap_or(1)
                ))
        )?;
        writeln!(
            f,
            "  messages per connection    {:<22} {}",
            opt(l.max_messages_per_connection),
            opt(e.max_messages_per_connection)
        )?;
        writeln!(
            f,
            "  hourly cap                 {:<22} {}",
            opt(l.hourly_cap),
            opt(e.hourly_cap)
        )?;
        writeln!(
            f,
            "  daily cap                  {:<22} {}",
            opt(l.daily_cap),
            opt(e.daily_cap)
        )?;
        if let Some(w) = &self.warmup {
            let allow = match w.allowance_today {
                Some(u64::MAX) => "warm (no limit)".to_string(),
                Some(a) => a.to_string(),
                None => "?".into(),
            };
            writeln!(
                f,
                "warm-up:       schedule {}, day {}, allowance today {}{}",
                w.schedule,
                opt(w.day),
                allow,
                w.sent_today
                    .map_or(String::new(), |s| format!(", sent {s}"))
            )?;
        }
        match &self.live {
            None => writeln!(
                f,
                "live state:    none (no running engine; configured limits shown)"
            )?,
            Some(s) => {
                writeln!(
                    f,
                    "live:          {} connections, tokens msg {} conn {}, backoff {}%, {} throttles",
                    s.connections,
                    opt(s.message_tokens),
                    opt(s.connection_tokens),
                    s.backoff_permille / 10,
                    s.throttles
                )?;
                writeln!(
                    f,
                    "               {} this hour, {} today{}{}",
                    s.hour_count,
                    s.day_count,
                    if s.shared_across_shards {
                        ", shared across shards"
                    } else {
                        ", shard-local"
                    },
                    s.destination_not_before.map_or(String::new(), |t| format!(
                        ", destination backed off until {t}"
                    ))
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn shaper(rules: &str, shards: usize) -> Shaper {
        Shaper::new(ShapingShared::new(
            RuleSet::from_toml(rules).expect("rules"),
            shards,
            0,
        ))
    }

    const RULES: &str = r#"
        [defaults]
        max_connections = 3
        max_messages_per_connection = 2
        [[domain]]
        domains = ["local.test"]
        [[source]]
        name = "new-ip"
        level = "new"
    "#;

    #[test]
    fn permits_count_connections_and_give_them_back_when_dropped() {
        let mut s = shaper(RULES, 1);
        let src = s.source("192.0.2.1");
        let r = s.route(src, "example.com", "mx.example.com", Nanos(0));
        let a = s.may_connect(r, Nanos(0)).expect("1");
        let b = s.may_connect(r, Nanos(0)).expect("2");
        let c = s.may_connect(r, Nanos(0)).expect("3");
        assert_eq!(
            s.may_connect(r, Nanos(0)).err(),
            Some(Deferral::ConnectionsBusy)
        );
        assert_eq!(s.connections(r), 3);
        drop(a);
        s.on_connection_closed(b, Nanos(1));
        s.on_connect_failed(c, Nanos(1));
        assert_eq!(s.connections(r), 0);
        // The only MX host failed to connect: the destination waits a minute.
        assert_eq!(
            s.may_connect(r, Nanos(2)).err(),
            Some(Deferral::NotBefore(
                Nanos(60 * S + 1),
                Reason::DestinationBackoff
            ))
        );
        // A permit dropped during unwinding still gives its slot back.
        let p = s.may_connect(r, Nanos(60 * S + 1)).expect("again");
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = p;
            panic!("session code failed");
        }));
        assert_eq!(s.connections(r), 0);
    }

    #[test]
    fn a_connection_is_spent_after_its_maximum_of_messages() {
        let mut s = shaper(RULES, 1);
        let src = s.source("192.0.2.1");
        let r = s.route(src, "example.com", "mx.example.com", Nanos(0));
        let mut p = s.may_connect(r, Nanos(0)).expect("permit");
        assert_eq!(s.may_send(&mut p, Nanos(1)), Ok(()));
        assert_eq!(s.may_send(&mut p, Nanos(2)), Ok(()));
        assert_eq!(s.may_send(&mut p, Nanos(3)), Err(Deferral::ConnectionSpent));
        assert_eq!(p.messages(), 2);
    }

    #[test]
    fn levels_scale_limits_and_throttles_lower_the_connection_cap() {
        let mut s = shaper(RULES, 1);
        let new = s.source("new-ip");
        let r = s.route(new, "example.com", "mx.example.com", Nanos(0));
        let p = s.may_connect(r, Nanos(0)).expect("1");
        assert_eq!(
            s.may_connect(r, Nanos(0)).err(),
            Some(Deferral::ConnectionsBusy),
            "10 % of 3 is 1"
        );
        drop(p);
        let full = s.source("192.0.2.1");
        let r = s.route(full, "example.com", "mx.example.com", Nanos(0));
        let p = s.may_connect(r, Nanos(0)).expect("permit");
        let sig = s.on_reply(&p, Phase::Greeting, ReplySignal::Throttled, Nanos(S));
        assert_eq!(sig, ReplySignal::Throttled);
        // No new connection for the cooldown (10 s) ...
        assert_eq!(
            s.may_connect(r, Nanos(S)).err(),
            Some(Deferral::NotBefore(Nanos(11 * S), Reason::Throttled))
        );
        // ... then the cap is halved: 3 → 2 connections (rounded up).
        let q = s.may_connect(r, Nanos(11 * S)).expect("second");
        assert_eq!(
            s.may_connect(r, Nanos(11 * S)).err(),
            Some(Deferral::ConnectionsBusy)
        );
        let snap = s.snapshot(r, Nanos(11 * S));
        assert_eq!(snap.effective.max_connections, Some(2));
        let live = snap.live.expect("live");
        assert_eq!(
            (live.backoff_permille, live.throttles, live.connections),
            (500, 1, 2)
        );
        drop((p, q));
        // Recovered after 10 quiet minutes (+5 % a minute).
        let snap = s.snapshot(r, Nanos(11 * 60 * S));
        assert_eq!(snap.live.expect("live").backoff_permille, 1000);
    }

    #[test]
    fn domain_lanes_stay_shard_local_and_mx_lanes_are_shared_between_shards() {
        let shared = ShapingShared::new(RuleSet::from_toml(RULES).expect("rules"), 2, 0);
        let mut a = Shaper::new(Arc::clone(&shared));
        let mut b = Shaper::new(Arc::clone(&shared));
        let (sa, sb) = (a.source("ip"), b.source("ip"));
        let ra = a.route(sa, "one.test", "mx.shared.test", Nanos(0));
        let rb = b.route(sb, "two.test", "mx.shared.test", Nanos(0));
        let _p1 = a.may_connect(ra, Nanos(0)).expect("1");
        let _p2 = b.may_connect(rb, Nanos(0)).expect("2");
        let _p3 = a.may_connect(ra, Nanos(0)).expect("3");
        assert_eq!(
            b.may_connect(rb, Nanos(0)).err(),
            Some(Deferral::ConnectionsBusy),
            "cap is across shards"
        );
        assert!(
            a.snapshot(ra, Nanos(0))
                .live
                .expect("live")
                .shared_across_shards
        );
        let rl = a.route(sa, "local.test", "mx.shared.test", Nanos(0));
        let snap = a.snapshot(rl, Nanos(0));
        assert_eq!(snap.rule_kind, RuleKind::Domain);
        assert!(!snap.live.expect("live").shared_across_shards);
    }

    #[test]
    fn live_snapshots_render_their_counters() {
        let mut s = shaper(
            "[defaults]\nmax_connections = 4\nmessage_rate = \"10/s\"\nmessage_burst = 5\nhourly_cap = 100\n",
            1,
        );
        let src = s.source("192.0.2.1");
        let r = s.route(src, "example.com", "mx.example.com", Nanos(0));
        let mut p = s.may_connect(r, Nanos(0)).expect("permit");
        for i in 0..3 {
            s.may_send(&mut p, Nanos(i)).expect("send");
        }
        let snap = s.snapshot(r, Nanos(3));
        let live = snap.live.clone().expect("live");
        assert_eq!(
            (live.connections, live.message_tokens, live.hour_count),
            (1, Some(2), 3)
        );
        let text = snap.to_string();
        assert!(text.contains("1 connections, tokens msg 2"), "{text}");
        assert!(text.contains("3 this hour"), "{text}");
        assert!(text.contains("shard-local"), "{text}");
        let slow = snap.at_level(ThroughputLevel::Low);
        assert_eq!(slow.effective.max_connections, Some(1));
        assert_eq!(slow.effective.hourly_cap, Some(25));
        assert!(slow.to_string().contains("level low"), "{}", slow);
    }

    #[test]
    fn a_throttle_seen_by_one_shard_slows_the_others_and_reloads_reach_every_shard() {
        let shared = ShapingShared::new(RuleSet::from_toml(RULES).expect("rules"), 2, 0);
        let mut a = Shaper::new(Arc::clone(&shared));
        let mut b = Shaper::new(Arc::clone(&shared));
        let (sa, sb) = (a.source("ip"), b.source("ip"));
        let ra = a.route(sa, "one.test", "mx.shared.test", Nanos(0));
        let rb = b.route(sb, "two.test", "mx.shared.test", Nanos(0));
        let p = a.may_connect(ra, Nanos(0)).expect("permit");
        a.on_reply(&p, Phase::Mail, ReplySignal::Throttled, Nanos(S));
        let live = b.snapshot(rb, Nanos(S)).live.expect("live");
        assert_eq!((live.backoff_permille, live.throttles), (500, 1));
        assert_eq!(
            b.may_connect(rb, Nanos(2 * S)).err(),
            Some(Deferral::NotBefore(Nanos(11 * S), Reason::Throttled))
        );
        drop(p);
        shared.reload(
            RuleSet::from_toml(
                "[defaults]\nmax_connections = 1\n[[source]]\nname = \"ip\"\nlevel = \"high\"\n",
            )
            .expect("new rules"),
        );
        let sa_snap = a.snapshot(ra, Nanos(12 * S));
        let sb_snap = b.snapshot(rb, Nanos(12 * S));
        for snap in [&sa_snap, &sb_snap] {
            assert_eq!(snap.limits.max_connections, Some(1));
            assert_eq!(snap.level, ThroughputLevel::High);
            assert_eq!(
                snap.limits.max_messages_per_connection,
                Some(100),
                "built-in default"
            );
        }
        let _one = b.may_connect(rb, Nanos(12 * S)).expect("one connection");
        assert_eq!(
            a.may_connect(ra, Nanos(12 * S)).err(),
            Some(Deferral::ConnectionsBusy)
        );
    }

    #[test]
    fn configured_snapshot_of_the_shipped_rules_names_the_provider() {
        let rules = RuleSet::shipped();
        let snap = Snapshot::configured(&rules, "GMAIL.com", None, None, 0);
        assert_eq!(
            (snap.rule_kind, snap.rule_name.as_str()),
            (RuleKind::Provider, "google")
        );
        assert_eq!(snap.scope, Some(Scope::Provider("google".into())));
        assert!(snap.live.is_none());
        let text = snap.to_string();
        assert!(text.contains("google (provider)"), "{text}");
        assert!(text.contains("no running engine"), "{text}");
        let other = Snapshot::configured(&rules, "example.net", Some("mx.example.net"), None, 0);
        assert_eq!(other.rule_kind, RuleKind::Default);
    }
}
