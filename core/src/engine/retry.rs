//! When to try a recipient again: the default exponential schedule for temporary failures.
//!
//! A temporary failure (4xx, a connection or DNS failure, a session that ended mid-transaction) is
//! retried after `first`, then doubling up to `max`, each delay spread by a random `±jitter` so a batch
//! deferred together does not come back together. The last attempt is made when the message reaches
//! `max_age`; a failure at or after that age expires the recipient, with its last reason. Permanent failures (5xx, a null MX, NXDOMAIN) are never
//! retried.
//!
//! [`ClassifiedRetry`] is the engine's default: it asks the bounce classifier (`crate::bounce`) what
//! the failure means (code, enhanced code, text, phase, receiving domain and MX host) and retries per
//! reason (421 in about 20 minutes, an unclear 554 or a full mailbox in 24 hours, rate limits with
//! backoff, intervals between 15 minutes and 30 hours, user unknown never), up to the same maximum age.
//! [`ExponentialRetry`] stays for `[retry] policy = "exponential"`.

use crate::smtp::{EnhancedCode, Phase};
use rand::RngExt;
use rand::rngs::StdRng;
use std::time::Duration;

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this Unix time (seconds).
    RetryAt(u64),
    /// Give up now: a permanent failure.
    Bounce,
    /// Give up: the message is past its maximum age.
    Expire,
}

/// A failed attempt, as the retry policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct FailedAttempt<'a> {
    /// Will it fail again the same way (5xx, null MX, NXDOMAIN)?
    pub permanent: bool,
    /// The SMTP code, if a server answered.
    pub code: Option<u16>,
    /// The enhanced status code, if the server sent one.
    pub enhanced: Option<EnhancedCode>,
    /// The reply or failure text.
    pub text: &'a str,
    /// Where in the conversation it failed.
    pub phase: Option<Phase>,
    /// The recipient's domain.
    pub domain: &'a str,
    /// The MX host that answered, if any.
    pub mx: &'a str,
    /// The envelope sender's domain (empty for the null sender).
    pub sender_domain: &'a str,
    /// The tenant the message was sent for.
    pub tenant: &'a str,
    /// Attempts made so far, this one included.
    pub attempts: u16,
    /// When the message was submitted (Unix seconds).
    pub submitted_at: u64,
    /// Now (Unix seconds).
    pub now: u64,
}

/// Decides what follows a failed attempt.
pub trait RetryPolicy: Send + Sync + std::fmt::Debug {
    /// The decision for `attempt`; `rng` spreads delays.
    fn decide(&self, attempt: &FailedAttempt<'_>, rng: &mut StdRng) -> Decision;

    /// What the failure means, when the policy classifies failures (`None` otherwise). The engine
    /// classifies each distinct reply once ([`VerdictCache`]) and hands the result to
    /// [`RetryPolicy::decide_classified`].
    fn classify(&self, _attempt: &FailedAttempt<'_>) -> Option<crate::bounce::Classification> {
        None
    }

    /// Which set of rules [`RetryPolicy::classify`] uses: a verdict cached under another is stale
    /// (the rules were reloaded).
    fn rules_generation(&self) -> u64 {
        0
    }

    /// [`RetryPolicy::decide`] with the classification [`RetryPolicy::classify`] gave.
    fn decide_classified(
        &self,
        attempt: &FailedAttempt<'_>,
        _classification: Option<&crate::bounce::Classification>,
        rng: &mut StdRng,
    ) -> Decision {
        self.decide(attempt, rng)
    }

    /// The maximum age in seconds.
    fn max_age(&self) -> u64;

    /// The reason of the failure in the field's words (Sisimai's names: `userunknown`, `mailboxfull`,
    /// `ratelimited`, ...), when the policy knows it.
    fn reason(&self, _attempt: &FailedAttempt<'_>) -> Option<&'static str> {
        None
    }
}

/// Retries per reason, as the bounce classifier says.
#[derive(Debug)]
pub struct ClassifiedRetry {
    /// The classifier (reloadable).
    pub classifier: std::sync::Arc<crate::bounce::ClassifierHandle>,
    /// Intervals and maximum age.
    pub policy: crate::bounce::RetrySchedule,
    /// Random spread of each interval, 0.0–0.5.
    pub jitter: f64,
}

impl ClassifiedRetry {
    /// The shipped rules with a maximum age in seconds.
    pub fn new(max_age: u64, jitter: f64) -> ClassifiedRetry {
        ClassifiedRetry {
            classifier: std::sync::Arc::new(crate::bounce::ClassifierHandle::new(
                crate::bounce::Classifier::default_rules(),
            )),
            policy: crate::bounce::RetrySchedule {
                max_age: Duration::from_secs(max_age),
                ..crate::bounce::RetrySchedule::default()
            },
            jitter,
        }
    }

    fn classification(&self, a: &FailedAttempt<'_>) -> crate::bounce::Classification {
        self.classifier.classify(&diagnostic(a))
    }
}

/// The classifier's view of a failed attempt.
pub fn diagnostic<'a>(a: &FailedAttempt<'a>) -> crate::bounce::Diagnostic<'a> {
    crate::bounce::Diagnostic {
        code: a.code,
        enhanced: a.enhanced,
        text: a.text,
        phase: a.phase,
        sender_domain: a.sender_domain,
        tenant: a.tenant,
        recipient_domain: a.domain,
        mx_host: a.mx,
    }
}

impl RetryPolicy for ClassifiedRetry {
    fn decide(&self, a: &FailedAttempt<'_>, rng: &mut StdRng) -> Decision {
        self.decide_classified(a, None, rng)
    }

    fn classify(&self, a: &FailedAttempt<'_>) -> Option<crate::bounce::Classification> {
        Some(self.classification(a))
    }

    fn rules_generation(&self) -> u64 {
        self.classifier.generation()
    }

    fn decide_classified(
        &self,
        a: &FailedAttempt<'_>,
        given: Option<&crate::bounce::Classification>,
        rng: &mut StdRng,
    ) -> Decision {
        use crate::bounce::RetryDecision;
        // A permanent failure without a server reply (NXDOMAIN, a null MX, a message the server's SIZE
        // or SMTPUTF8 support rules out) is final whatever its text.
        if a.permanent && a.code.is_none() {
            return Decision::Bounce;
        }
        let c = match given {
            Some(c) => *c,
            None => self.classification(a),
        };
        // For a server's reply the classifier decides: a 5xx "mailbox full" or an unclear 554 is
        // retried, a 4xx "user unknown" is not.
        let now = Duration::from_secs(a.now);
        let first = Duration::from_secs(a.submitted_at);
        match self.policy.next(&c, u32::from(a.attempts), first, now) {
            RetryDecision::Bounce => Decision::Bounce,
            RetryDecision::Expire { .. } => Decision::Expire,
            RetryDecision::Done => Decision::RetryAt(a.now + self.policy.min_interval.as_secs()),
            RetryDecision::RetryAt(at) => {
                let deadline = a.submitted_at.saturating_add(self.policy.max_age.as_secs());
                let delay = at.as_secs().saturating_sub(a.now) as f64;
                let spread = if self.jitter > 0.0 {
                    rng.random_range(-self.jitter..=self.jitter)
                } else {
                    0.0
                };
                let at = a.now + (delay * (1.0 + spread)).max(1.0) as u64;
                Decision::RetryAt(at.min(deadline))
            }
        }
    }

    fn max_age(&self) -> u64 {
        self.policy.max_age.as_secs()
    }

    fn reason(&self, a: &FailedAttempt<'_>) -> Option<&'static str> {
        Some(self.classification(a).reason.as_str())
    }
}

/// The last classification a shard made, kept while the same reply comes back: the recipients of
/// one failed transaction (or one refused connection) share their reply, so a transaction of N
/// recipients failing alike costs one classification, not N. A reply naming its recipient is a
/// distinct reply and classified on its own.
#[derive(Debug, Default)]
pub struct VerdictCache {
    last: Option<(Key, Option<crate::bounce::Classification>)>,
    /// Classifications made (misses), for tests and benchmarks.
    pub classified: u64,
}

#[derive(Debug)]
struct Key {
    generation: u64,
    code: Option<u16>,
    enhanced: Option<EnhancedCode>,
    phase: Option<Phase>,
    permanent: bool,
    text: String,
    domain: String,
    mx: String,
    sender_domain: String,
    tenant: String,
}

impl Key {
    fn is(&self, generation: u64, a: &FailedAttempt<'_>) -> bool {
        self.generation == generation
            && self.code == a.code
            && self.enhanced == a.enhanced
            && self.phase == a.phase
            && self.permanent == a.permanent
            && self.text == a.text
            && self.domain == a.domain
            && self.mx == a.mx
            && self.sender_domain == a.sender_domain
            && self.tenant == a.tenant
    }
}

impl VerdictCache {
    /// What `policy` makes of `a`, classified only if the last attempt seen differed.
    pub fn classify(
        &mut self,
        policy: &dyn RetryPolicy,
        a: &FailedAttempt<'_>,
    ) -> Option<crate::bounce::Classification> {
        let generation = policy.rules_generation();
        if let Some((k, c)) = &self.last
            && k.is(generation, a)
        {
            return *c;
        }
        let c = policy.classify(a);
        self.classified += 1;
        self.last = Some((
            Key {
                generation,
                code: a.code,
                enhanced: a.enhanced,
                phase: a.phase,
                permanent: a.permanent,
                text: a.text.to_string(),
                domain: a.domain.to_string(),
                mx: a.mx.to_string(),
                sender_domain: a.sender_domain.to_string(),
                tenant: a.tenant.to_string(),
            },
            c,
        ));
        c
    }
}

/// Exponential backoff with jitter and a maximum age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialRetry {
    /// First delay in seconds.
    pub first: u64,
    /// Largest delay in seconds.
    pub max: u64,
    /// Spread, 0.0–0.5.
    pub jitter: f64,
    /// Maximum age in seconds.
    pub max_age: u64,
}

impl Default for ExponentialRetry {
    fn default() -> Self {
        ExponentialRetry {
            first: 15 * 60,
            max: 4 * 3600,
            jitter: 0.2,
            max_age: 72 * 3600,
        }
    }
}

impl ExponentialRetry {
    /// The delay before attempt `attempts + 1`, without jitter.
    pub fn base_delay(&self, attempts: u16) -> u64 {
        let doublings = u32::from(attempts.saturating_sub(1)).min(32);
        self.first.saturating_mul(1u64 << doublings).min(self.max)
    }
}

impl RetryPolicy for ExponentialRetry {
    fn decide(&self, a: &FailedAttempt<'_>, rng: &mut StdRng) -> Decision {
        if a.permanent {
            return Decision::Bounce;
        }
        let base = self.base_delay(a.attempts) as f64;
        let spread = if self.jitter > 0.0 {
            rng.random_range(-self.jitter..=self.jitter)
        } else {
            0.0
        };
        let delay = (base * (1.0 + spread)).max(1.0) as u64;
        let deadline = a.submitted_at.saturating_add(self.max_age);
        if a.now >= deadline {
            Decision::Expire
        } else {
            // The last attempt is made at the maximum age itself, not skipped.
            Decision::RetryAt(a.now.saturating_add(delay).min(deadline))
        }
    }

    fn max_age(&self) -> u64 {
        self.max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn attempt(attempts: u16, now: u64) -> FailedAttempt<'static> {
        FailedAttempt {
            permanent: false,
            code: Some(451),
            enhanced: None,
            text: "try later",
            phase: Some(Phase::Rcpt),
            domain: "example.test",
            mx: "mx.example.test",
            sender_domain: "sender.test",
            tenant: "t",
            attempts,
            submitted_at: 0,
            now,
        }
    }

    #[test]
    fn the_verdict_cache_classifies_each_distinct_reply_once() {
        let r = ClassifiedRetry::new(72 * 3600, 0.0);
        let mut cache = VerdictCache::default();
        let mut a = attempt(1, 1000);
        a.text = "mailbox full";
        a.code = Some(452);
        for _ in 0..100 {
            assert_eq!(
                cache.classify(&r, &a).map(|c| c.reason),
                Some(crate::bounce::Reason::MailboxFull)
            );
        }
        assert_eq!(cache.classified, 1);
        // Another reply, another tenant: classified again.
        a.text = "user unknown";
        a.code = Some(550);
        cache.classify(&r, &a);
        a.tenant = "other";
        cache.classify(&r, &a);
        assert_eq!(cache.classified, 3);
        // The exponential policy does not classify.
        let mut fresh = VerdictCache::default();
        assert_eq!(fresh.classify(&ExponentialRetry::default(), &a), None);
    }

    #[test]
    fn classified_retries_follow_the_reason() {
        let r = ClassifiedRetry::new(72 * 3600, 0.0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = attempt(1, 1000);
        a.code = Some(550);
        a.enhanced = EnhancedCode::new(5, 1, 1);
        a.text = "<x@example.test>: Recipient address rejected: User unknown";
        a.permanent = true;
        assert_eq!(r.decide(&a, &mut rng), Decision::Bounce);
        assert_eq!(r.reason(&a), Some("userunknown"));
        let mut a = attempt(1, 1000);
        a.code = Some(421);
        a.text = "Service not available, closing transmission channel";
        match r.decide(&a, &mut rng) {
            Decision::RetryAt(t) => assert!((1000 + 15 * 60..=1000 + 30 * 60).contains(&t), "{t}"),
            d => panic!("{d:?}"),
        }
        let mut a = attempt(1, 1000);
        a.code = Some(552);
        a.enhanced = EnhancedCode::new(5, 2, 2);
        a.text = "Mailbox full";
        a.permanent = true;
        match r.decide(&a, &mut rng) {
            Decision::RetryAt(t) => assert!(
                t >= 1000 + 20 * 3600,
                "mailbox full retries in about a day: {t}"
            ),
            d => panic!("{d:?}"),
        }
        assert_eq!(r.reason(&a), Some("mailboxfull"));
        let a = attempt(30, 72 * 3600);
        assert_eq!(r.decide(&a, &mut rng), Decision::Expire);
    }

    #[test]
    fn doubles_from_15_minutes_to_4_hours() {
        let r = ExponentialRetry::default();
        let delays: Vec<u64> = (1..=7).map(|a| r.base_delay(a)).collect();
        assert_eq!(delays, vec![900, 1800, 3600, 7200, 14400, 14400, 14400]);
    }

    #[test]
    fn jitter_stays_within_bounds_and_expiry_is_at_max_age() {
        let r = ExponentialRetry::default();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            match r.decide(&attempt(1, 1000), &mut rng) {
                Decision::RetryAt(t) => assert!((1000 + 720..=1000 + 1080).contains(&t), "{t}"),
                d => panic!("{d:?}"),
            }
        }
        // Near the maximum age the next attempt is at the maximum age itself, then it expires.
        assert_eq!(
            r.decide(&attempt(20, 72 * 3600 - 60), &mut rng),
            Decision::RetryAt(72 * 3600)
        );
        assert_eq!(
            r.decide(&attempt(21, 72 * 3600), &mut rng),
            Decision::Expire
        );
        let mut p = attempt(1, 10);
        p.permanent = true;
        assert_eq!(r.decide(&p, &mut rng), Decision::Bounce);
    }
}
