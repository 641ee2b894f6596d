//! The retry schedule: when to try a deferred recipient again, and when to give up.
//!
//! The classifier's [`Action::Retry`] carries the interval for the reason (15 minutes to 30 hours,
//! see `[policy]` in the rule file); this module adds what depends on history: rate-limited replies back
//! off exponentially with the attempt number (RFC 5321 §4.5.4.1 asks senders to wait longer after each
//! failure), and a recipient whose first attempt is older than the maximum age (72 hours by default,
//! within the 4–5 days RFC 5321 §4.5.4.1 suggests) expires with the last reason. The last attempt is
//! placed exactly at the deadline rather than skipped, so a short outage near the end still gets a
//! chance.
//!
//! Time is passed in and generic (`Instant`, `SystemTime` or any type that adds a `Duration`), so the
//! engine and a simulation on a virtual clock use the same code.

#![forbid(unsafe_code)]

use super::classify::Classification;
use super::reason::{Action, Reason};
use std::ops::Add;
use std::time::Duration;

/// What to do with a recipient after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision<T> {
    /// Try again at this time.
    RetryAt(T),
    /// Give up now: report the recipient bounced with the classification's reason.
    Bounce,
    /// Give up now: the maximum age is reached; report `expired` with `last` as the last reason.
    Expire {
        /// The reason of the last failure.
        last: Reason,
    },
    /// Nothing to retry (a success).
    Done,
}

/// The per-reason schedule: intervals from a classification, backoff with the attempt number, the
/// maximum age. The engine's one retry policy (`engine::retry::RetryPolicy`, implemented by
/// `ClassifiedRetry` around this schedule and by `ExponentialRetry`) is what the shards ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// After this long since the first attempt, give up (default 72 hours).
    pub max_age: Duration,
    /// Longest wait between two attempts, also the cap of backoff (default 30 hours).
    pub max_interval: Duration,
    /// Shortest wait between two attempts (default 5 minutes, greylisting's usual delay).
    pub min_interval: Duration,
    /// Factor applied per attempt to rate-limited retries (default 2).
    pub backoff_factor: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule {
            max_age: Duration::from_secs(72 * 3600),
            max_interval: Duration::from_secs(30 * 3600),
            min_interval: Duration::from_secs(5 * 60),
            backoff_factor: 2,
        }
    }
}

impl RetrySchedule {
    /// The interval before the next attempt after failed attempt number `attempt` (1 for the first
    /// attempt), or `None` if the classification says not to retry.
    pub fn interval(&self, c: &Classification, attempt: u32) -> Option<Duration> {
        let base = c.action.retry_after()?;
        // Rate limits and greylisting back off with each attempt: a greylisting server lets the
        // second or third attempt through, and one that keeps deferring is not greylisting.
        let grows = c.throttle || matches!(c.reason, Reason::RateLimited | Reason::Greylisted);
        let d = if grows {
            let exp = attempt.saturating_sub(1).min(16);
            let factor = u64::from(self.backoff_factor.max(1)).saturating_pow(exp);
            Duration::from_secs(base.as_secs().saturating_mul(factor))
        } else {
            base
        };
        Some(d.clamp(self.min_interval, self.max_interval.max(self.min_interval)))
    }

    /// Decides what follows failed attempt number `attempt` (1-based) of a recipient first tried at
    /// `first_attempt`, at time `now`.
    pub fn next<T>(
        &self,
        c: &Classification,
        attempt: u32,
        first_attempt: T,
        now: T,
    ) -> RetryDecision<T>
    where
        T: Copy + Ord + Add<Duration, Output = T>,
    {
        match c.action {
            Action::None => return RetryDecision::Done,
            Action::Bounce => return RetryDecision::Bounce,
            Action::Retry(_) => {}
        }
        let deadline = first_attempt + self.max_age;
        if now >= deadline {
            return RetryDecision::Expire { last: c.reason };
        }
        let interval = self.interval(c, attempt).unwrap_or(self.min_interval);
        let at = now + interval;
        RetryDecision::RetryAt(if at > deadline { deadline } else { at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::classify::{Classifier, Diagnostic};

    const H: u64 = 3600;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn user_unknown_bounces_at_once() {
        let c =
            Classifier::default_rules().classify(&Diagnostic::from_line("550 5.1.1 user unknown"));
        assert_eq!(
            RetrySchedule::default().next(&c, 1, secs(0), secs(0)),
            RetryDecision::Bounce
        );
    }

    #[test]
    fn mailbox_full_retries_daily_then_expires() {
        let c =
            Classifier::default_rules().classify(&Diagnostic::from_line("552 5.2.2 mailbox full"));
        let p = RetrySchedule::default();
        let (first, mut now, mut attempt) = (secs(1000), secs(1000), 1);
        let mut times = Vec::new();
        loop {
            match p.next(&c, attempt, first, now) {
                RetryDecision::RetryAt(t) => {
                    times.push(t - first);
                    now = t;
                    attempt += 1;
                }
                RetryDecision::Expire { last } => {
                    assert_eq!(last, Reason::MailboxFull);
                    break;
                }
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(times, vec![secs(24 * H), secs(48 * H), secs(72 * H)]);
    }

    #[test]
    fn rate_limit_backs_off_and_is_capped() {
        let c = Classifier::default_rules().classify(&Diagnostic::from_line(
            "450 4.7.0 too many connections from your host, slow down",
        ));
        assert!(c.throttle);
        let p = RetrySchedule::default();
        let steps: Vec<_> = (1..=10)
            .map(|a| p.interval(&c, a).unwrap().as_secs())
            .collect();
        assert_eq!(steps[0], 15 * 60);
        assert_eq!(steps[1], 30 * 60);
        assert_eq!(steps[2], 60 * 60);
        assert!(steps.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*steps.last().unwrap(), 30 * H);
    }

    #[test]
    fn last_attempt_lands_on_the_deadline() {
        let c = Classifier::default_rules()
            .classify(&Diagnostic::from_line("451 4.3.0 temporary failure"));
        let p = RetrySchedule::default();
        let first = secs(0);
        assert_eq!(
            p.next(&c, 9, first, secs(72 * H - 60)),
            RetryDecision::RetryAt(secs(72 * H))
        );
        assert_eq!(
            p.next(&c, 10, first, secs(72 * H)),
            RetryDecision::Expire { last: c.reason }
        );
    }

    #[test]
    fn works_with_instants() {
        let c = Classifier::default_rules().classify(&Diagnostic::from_line("421 try later"));
        let t0 = std::time::Instant::now();
        match RetrySchedule::default().next(&c, 1, t0, t0) {
            RetryDecision::RetryAt(t) => assert_eq!(t - t0, secs(20 * 60)),
            d => panic!("{d:?}"),
        }
    }
}
