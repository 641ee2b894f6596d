//! What is queued and why it waits: queue summaries by destination and tenant, one destination's
//! live state (its shaping rule, buckets, connections, backoff and the reply that caused it,
//! warm-up, pauses) with the reason it is slow right now, pausing and resuming a destination or a
//! tenant, and bouncing (cancelling) the queued mail of a destination, tenant or campaign.
//!
//! Everything here is answered by the shard threads between two loop passes (a control message
//! each), from the spool's index and the shard's own state, so what it says is what the shard is
//! doing. A summary walks every queued recipient of every shard: meant for operators and
//! dashboards, not for a tight loop (about 10 ms per million recipients).
//!
//! Pauses live in memory, as [`crate::engine::Engine::pause`] does: a restarted engine delivers.

use super::{Control, Engine, shard_of};
use crate::shaping::Snapshot;
use std::collections::{BTreeMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a caller waits for a shard's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Recipients of one queue (a destination, a tenant, or everything), by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Recipients not yet delivered, bounced, expired or cancelled.
    pub recipients: u64,
    /// Of those: due now (never tried, or their retry time has come).
    pub ready: u64,
    /// Of those: waiting for a retry after a temporary failure.
    pub deferred: u64,
    /// Of those: held by an operator.
    pub held: u64,
    /// Of those: in an SMTP transaction now.
    pub in_flight: u64,
    /// Unix time the oldest was submitted.
    pub oldest_submitted: Option<u64>,
    /// Unix time of the soonest retry of a deferred one.
    pub next_retry: Option<u64>,
}

impl QueueCounts {
    fn add(&mut self, o: &QueueCounts) {
        self.recipients += o.recipients;
        self.ready += o.ready;
        self.deferred += o.deferred;
        self.held += o.held;
        self.in_flight += o.in_flight;
        self.oldest_submitted = min_opt(self.oldest_submitted, o.oldest_submitted);
        self.next_retry = min_opt(self.next_retry, o.next_retry);
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The queue by destination domain and by tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueReport {
    /// Everything queued.
    pub total: QueueCounts,
    /// Per destination domain.
    pub domains: BTreeMap<String, QueueCounts>,
    /// Per tenant.
    pub tenants: BTreeMap<String, QueueCounts>,
}

impl QueueReport {
    pub(crate) fn merge(&mut self, o: QueueReport) {
        self.total.add(&o.total);
        for (map, other) in [
            (&mut self.domains, o.domains),
            (&mut self.tenants, o.tenants),
        ] {
            for (k, c) in other {
                map.entry(k).or_default().add(&c);
            }
        }
    }

    /// Counts one recipient.
    pub(crate) fn count(&mut self, domain: &str, tenant: &str, one: &QueueCounts) {
        self.total.add(one);
        match self.domains.get_mut(domain) {
            Some(c) => c.add(one),
            None => {
                self.domains.insert(domain.to_string(), *one);
            }
        }
        match self.tenants.get_mut(tenant) {
            Some(c) => c.add(one),
            None => {
                self.tenants.insert(tenant.to_string(), *one);
            }
        }
    }
}

/// A reply that slowed a destination down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SlowingReply {
    /// The MX host that gave it.
    pub mx: String,
    /// The reply code.
    pub code: u16,
    /// The enhanced status code, if any.
    pub enhanced: Option<String>,
    /// The reply text.
    pub text: String,
    /// Unix time it arrived.
    pub at: u64,
}

/// One destination domain as its shard sees it now.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DestinationState {
    /// The domain.
    pub domain: String,
    /// The shard that owns it.
    pub shard: usize,
    /// Its queued recipients.
    pub queue: QueueCounts,
    /// Paused by an operator (this destination, or all delivery).
    pub paused: bool,
    /// Tenants paused by an operator (their mail here waits too).
    pub paused_tenants: Vec<String>,
    /// The MX hosts (or the smarthost) it resolved to, if resolved.
    pub mx: Vec<String>,
    /// Per route (source × MX host) met so far: the shaping rule, its limits after level and
    /// backoff, the buckets' tokens, connections against the cap, warm-up, hourly and daily counts.
    pub routes: Vec<Snapshot>,
    /// The destination is backed off (every MX host failing) until this Unix time.
    pub backoff_until: Option<u64>,
    /// The last throttling reply (`421 too many connections`, `451 rate limited`...), which lowered
    /// the rate, and when.
    pub last_throttle: Option<SlowingReply>,
    /// The last connection-level failure (DNS, TCP, TLS, greeting).
    pub last_error: String,
    /// Why mail to it waits right now, most decisive first; empty when nothing holds it back.
    pub slow_because: Vec<String>,
}

/// Which queued mail [`Engine::bounce_queued`] cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Recipients at this destination domain.
    Domain(String),
    /// Recipients of this tenant's messages.
    Tenant(String),
    /// Recipients of messages tagged `campaign` with this value.
    Campaign(String),
}

/// The tag that names a message's campaign.
pub const CAMPAIGN_TAG: &str = "campaign";

/// What [`Engine::bounce_queued`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BounceReport {
    /// Recipients cancelled (a `cancelled` event each).
    pub cancelled: u64,
    /// Recipients that matched but were in an SMTP transaction, left to finish.
    pub in_flight: u64,
}

/// Destinations and tenants paused by an operator, shared by the shards.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    domains: RwLock<HashSet<String>>,
    tenants: RwLock<HashSet<String>>,
    /// Whether either set is non-empty (read on every transaction without a lock).
    any_domain: AtomicBool,
    any_tenant: AtomicBool,
}

impl Holds {
    pub(crate) fn domain_paused(&self, domain: &str) -> bool {
        self.any_domain.load(Ordering::Acquire)
            && self
                .domains
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(domain)
    }

    pub(crate) fn tenant_paused(&self, tenant: &str) -> bool {
        self.any_tenant.load(Ordering::Acquire)
            && self
                .tenants
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(tenant)
    }

    pub(crate) fn any_tenant(&self) -> bool {
        self.any_tenant.load(Ordering::Acquire)
    }

    pub(crate) fn paused_tenants(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn set(&self, tenant: bool, name: &str, paused: bool) -> bool {
        let (set, any) = if tenant {
            (&self.tenants, &self.any_tenant)
        } else {
            (&self.domains, &self.any_domain)
        };
        let mut s = set.write().unwrap_or_else(|e| e.into_inner());
        let changed = if paused {
            s.insert(name.to_string())
        } else {
            s.remove(name)
        };
        any.store(!s.is_empty(), Ordering::Release);
        changed
    }

    fn list(&self, tenant: bool) -> Vec<String> {
        let set = if tenant { &self.tenants } else { &self.domains };
        let mut v: Vec<String> = set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        v.sort();
        v
    }
}

impl Engine {
    /// The queue by destination and by tenant, summed over shards.
    pub fn queues(&self) -> QueueReport {
        let mut report = QueueReport::default();
        let mut waiting = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let (tx, rx) = crossbeam::channel::bounded(1);
            if s.control.send(Control::Inspect(tx)).is_ok() {
                let _ = s.waker.wake();
                waiting.push(rx);
            }
        }
        for rx in waiting {
            if let Ok(r) = rx.recv_timeout(ANSWER_WITHIN) {
                report.merge(r);
            }
        }
        report
    }

    /// One destination domain's live state, from the shard that owns it (`None` if that shard
    /// did not answer: the engine is shutting down).
    pub fn destination(&self, domain: &str) -> Option<DestinationState> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let s = &self.shards[shard_of(&domain, self.shards.len())];
        let (tx, rx) = crossbeam::channel::bounded(1);
        s.control.send(Control::Destination(domain, tx)).ok()?;
        let _ = s.waker.wake();
        rx.recv_timeout(ANSWER_WITHIN).ok()
    }

    /// Pauses (`true`) or resumes delivery to a destination domain: its queued mail waits (no new
    /// connection or transaction; transactions under way finish). Returns whether this changed
    /// anything.
    pub fn pause_destination(&self, domain: &str, paused: bool) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.changed_holds(self.holds.set(false, &domain, paused))
    }

    /// Pauses (`true`) or resumes delivery of a tenant's mail (submissions are still taken and
    /// queued). Returns whether this changed anything.
    pub fn pause_tenant(&self, tenant: &str, paused: bool) -> bool {
        self.changed_holds(self.holds.set(true, tenant, paused))
    }

    /// The destinations and the tenants paused now.
    pub fn paused(&self) -> (Vec<String>, Vec<String>) {
        (self.holds.list(false), self.holds.list(true))
    }

    fn changed_holds(&self, changed: bool) -> bool {
        if changed {
            for s in &self.shards {
                if s.control.send(Control::HoldsChanged).is_ok() {
                    let _ = s.waker.wake();
                }
            }
        }
        changed
    }

    /// Cancels the queued recipients `which` selects, with `reason` as the reply text of each one's
    /// `cancelled` event (one event per recipient, never two). Recipients in an SMTP transaction
    /// are left to finish and counted apart.
    pub fn bounce_queued(&self, which: &Selector, reason: &str) -> BounceReport {
        let mut total = BounceReport::default();
        let mut waiting = Vec::with_capacity(self.shards.len());
        let shards: Vec<usize> = match which {
            Selector::Domain(d) => vec![shard_of(
                &d.trim_end_matches('.').to_ascii_lowercase(),
                self.shards.len(),
            )],
            _ => (0..self.shards.len()).collect(),
        };
        let which = match which {
            Selector::Domain(d) => Selector::Domain(d.trim_end_matches('.').to_ascii_lowercase()),
            other => other.clone(),
        };
        for i in shards {
            let s = &self.shards[i];
            let (tx, rx) = crossbeam::channel::bounded(1);
            if s.control
                .send(Control::Bounce(which.clone(), reason.to_string(), tx))
                .is_ok()
            {
                let _ = s.waker.wake();
                waiting.push(rx);
            }
        }
        for rx in waiting {
            if let Ok(r) = rx.recv_timeout(ANSWER_WITHIN) {
                total.cancelled += r.cancelled;
                total.in_flight += r.in_flight;
            }
        }
        total
    }
}
