//! When to try a recipient again: the default exponential schedule for temporary failures.
//!
//! A temporary failure (4xx, a connection or DNS failure, a session that ended mid-transaction) is
//! retried after `first`, then doubling up to `max`, each delay spread by a random `±jitter` so a batch
//! deferred together does not come back together. The last attempt is made when the message reaches
//! `max_age`; a failure at or after that age expires the recipient, with its last reason. Permanent failures (5xx, a null MX, NXDOMAIN) are never
//! retried.
//!
//! This is the engine's fallback. A per-reason policy (bounce classification) plugs in through
//! [`RetryPolicy`].

use rand::RngExt;
use rand::rngs::StdRng;

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
    /// The reply or failure text.
    pub text: &'a str,
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

    /// The maximum age in seconds.
    fn max_age(&self) -> u64;
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
            text: "try later",
            attempts,
            submitted_at: 0,
            now,
        }
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
