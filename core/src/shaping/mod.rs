//! Traffic shaping: keeps every sending source inside each receiver's limits without a lock on the
//! delivery path.
//!
//! Receivers judge a sender by how it behaves: too many connections, too many messages per connection,
//! too fast a rate, and an IP is deferred, then blocked. This module decides, for each connection and
//! each message the engine wants to send, "now" or "not before T", from:
//!
//! - [`rules`]: limits matched by MX host pattern, recipient domain or provider (MX suffix such as
//!   `.google.com`), with defaults — concurrent connections, message and connection rates (token
//!   buckets), messages per connection, hourly and daily caps — all per source (each sending IP keeps
//!   its own budget). A rule set is TOML data, reloadable while the engine runs
//!   ([`ShapingShared::reload`] swaps it whole), with a shipped default for the large providers
//!   ([`rules::DEFAULT_RULES`]).
//! - [`bucket`]: token buckets, shard-local ([`TokenBucket`]) or shared by shards through atomics
//!   ([`SharedTokenBucket`], Seastar's "taken counter + CAS-refilled allowance").
//! - [`window`]: hourly/daily caps and warm-up days as fixed-window counters, local or atomic.
//! - [`warmup`]: daily volumes by day since a source started; over-cap messages wait for the next day.
//! - [`backoff`]: throttling replies (421, 4.7.x, "too many connections") lower rate and concurrency for
//!   that (receiver, source) and recover additively (AIMD), and hold new connections on that lane for
//!   the backoff cooldown; a destination whose MX hosts all fail is backed off as a whole, exponentially.
//! - [`level`]: six named throughput levels (`new` .. `full`) that scale a source's limits.
//!
//! # The engine's hooks
//!
//! One [`Shaper`] per shard, all made from one [`ShapingShared`]. Time is a [`Nanos`] the engine passes
//! in (monotonic nanoseconds since an epoch it chooses; the deterministic simulation passes virtual
//! time): nothing here reads a clock, sleeps, or blocks.
//!
//! ```text
//! setup      shared = ShapingShared::new(rules, shards, unix_secs_at_epoch)   once per engine
//!            shaper = Shaper::new(shared.clone())                             once per shard
//!            src    = shaper.source("192.0.2.10")                             per sending IP/domain
//!            route  = shaper.route(src, domain, mx_host, now)                 per MX host of a domain
//! connect    shaper.may_connect(route, now)
//!              Ok(permit)                         open the TCP connection; keep the permit with it
//!              Err(NotBefore(t, reason))          wait until t (a timer), never bounce
//!              Err(ConnectionsBusy)               wait until a connection of this lane closes
//!            shaper.on_connect_failed(permit, now)        TCP/TLS failure: slot freed, MX marked failing
//! session    shaper.on_reply(&permit, phase, code, enhanced, text, now)   every reply that is not 2xx,
//!                                                  and the greeting/EHLO replies (marks the MX healthy)
//! message    shaper.may_send(&mut permit, now)    before each MAIL FROM
//!              Ok(())                             send the transaction
//!              Err(NotBefore(t, reason))          keep the connection idle or close it, retry at t
//!              Err(ConnectionSpent)               messages-per-connection reached: QUIT, connect again
//! close      shaper.on_connection_closed(permit, now)  or simply drop the permit
//! reload     shared.reload(new_rules)             any thread; shards switch at their next decision
//! status     shaper.snapshot(route, now)          rule, limits, tokens, connections, backoff, warm-up
//! ```
//!
//! Connection slots are counted in the lane's atomic and released in the permit's `Drop`, so no error
//! path can leak one. A message counts against rates, caps and warm-up when `may_send` grants it,
//! whatever the receiver answers (receivers count attempts too).
//!
//! # Local and shared state
//!
//! A lane is (source, scope): scope is one MX host (MX and default rules), one domain (domain rules) or
//! one provider (provider rules). A recipient domain belongs to exactly one shard, so a domain-scoped lane
//! keeps plain shard-local buckets and counters. MX-host and provider lanes can be reached from domains on
//! several shards, so with more than one shard their buckets and caps are the lock-free shared versions.
//! Connection counts and backoff factors are always atomics (one per lane, touched per connection and per
//! throttling reply, read with a relaxed load per message), because a permit must be able to release its
//! slot from wherever it is dropped. Warm-up counters are per source and always atomic (a source sends on
//! every shard). The mutexes in [`ShapingShared`] are taken when a shard meets a lane or source for the
//! first time and on reload, never per decision.
//!
//! # Not implemented
//!
//! - Limits per MX IP address (rules see host names; the engine may pass an IP as the MX host name).
//! - Fairness between queues waiting on the same lane: the engine decides who asks first.
//! - Persisting counters across restarts: daily caps and warm-up counts start at zero after a restart
//!   (warm-up *days* do survive, as they come from the configured start date).
//! - Reputation feedback loops (FBL complaint rates, Postmaster Tools) driving levels automatically.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod bucket;
pub mod level;
pub mod rules;
mod shaper;
pub mod warmup;
pub mod window;

#[cfg(test)]
mod sim;

pub use backoff::{BackoffPolicy, ReplySignal, signal};
pub use bucket::{BucketParams, SharedTokenBucket, TokenBucket};
pub use level::ThroughputLevel;
pub use rules::{Limits, Rate, Rule, RuleKind, RuleSet, RulesError, Scope};
pub use shaper::{
    ConnectionPermit, Deferral, EffectiveLimits, LiveState, Reason, RouteId, Shaper, ShapingShared,
    Snapshot, SourceId, WarmupView,
};
pub use warmup::WarmupSchedule;

use std::fmt;

/// A point in monotonic time: nanoseconds since an epoch the engine chooses (its start, or zero in a
/// simulation). The engine converts with `Nanos::since(epoch, Instant::now())`; shaping code only ever
/// receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Nanos(pub u64);

impl Nanos {
    /// `secs` seconds after the epoch.
    pub const fn from_secs(secs: u64) -> Nanos {
        Nanos(secs * 1_000_000_000)
    }

    /// `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms * 1_000_000)
    }

    /// The time of `now` relative to `epoch` (zero if `now` is earlier).
    pub fn since(epoch: std::time::Instant, now: std::time::Instant) -> Nanos {
        Nanos(now.saturating_duration_since(epoch).as_nanos() as u64)
    }

    /// This time plus a duration.
    pub fn after(self, d: std::time::Duration) -> Nanos {
        Nanos(self.0.saturating_add(d.as_nanos() as u64))
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(self, earlier: Nanos) -> std::time::Duration {
        std::time::Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Nanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0 as f64 / 1e9)
    }
}
