//! Adaptive backoff: replies that say "slow down" lower the message rate and the connection cap of one
//! (source, receiver) lane; quiet time brings them back (additive increase, multiplicative decrease, as
//! in TCP congestion control). A destination whose MX hosts all fail is backed off as a whole,
//! exponentially; when the backoff ends, one probe connection goes first, and the others wait until
//! it gets a greeting (or fails, or a minute passes).
//!
//! What counts as "slow down" is not decided here: the bounce rules classify each reply once, and
//! their verdict's `throttle` (`[policy.throttle]` and the rules' own `throttle` in
//! `core/src/bounce/default_rules.toml`: any 421, a 4.7.x, a text naming a rate or connection limit,
//! but never greylisting or a TLS, authentication or reverse-DNS refusal) becomes the
//! [`ReplySignal`] the shaper reads ([`signal`]).
//!
//! The lane state is one `AtomicU64`: the factor (per mille of the configured limits, 16 bits) and the
//! time of the last decrease (milliseconds since the engine epoch, 48 bits). Recovery is computed when
//! read: `factor + step · (now - last_decrease) / recover_every`, capped at 1000. A decrease halves the
//! factor as it stands now, at most once per `cooldown` (several connections hit by the same throttle
//! count once), and never below `floor`.

use super::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};

/// How lanes back off and recover, and how destinations back off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackoffPolicy {
    /// A throttling reply multiplies the factor by this (per mille; 500 = halve).
    pub decrease_permille: u32,
    /// The factor never goes below this (per mille).
    pub floor_permille: u32,
    /// Added to the factor (per mille) ...
    pub recover_step_permille: u32,
    /// ... for each such span without a throttling reply (nanoseconds).
    pub recover_every_ns: u64,
    /// Throttling replies within this span of a decrease count as the same event (nanoseconds).
    pub cooldown_ns: u64,
    /// A destination whose MX hosts all failed waits this long the first time (nanoseconds) ...
    pub destination_base_ns: u64,
    /// ... doubling each time up to this (nanoseconds).
    pub destination_max_ns: u64,
}

impl Default for BackoffPolicy {
    fn default() -> BackoffPolicy {
        const S: u64 = 1_000_000_000;
        BackoffPolicy {
            decrease_permille: 500,
            floor_permille: 50,
            recover_step_permille: 50,
            recover_every_ns: 60 * S,
            cooldown_ns: 10 * S,
            destination_base_ns: 60 * S,
            destination_max_ns: 3_600 * S,
        }
    }
}

/// What a reply means for shaping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplySignal {
    /// 2xx/3xx: the receiver is happy.
    Accepted,
    /// The receiver asks this source to slow down: the lane backs off.
    Throttled,
    /// Another transient failure (greylisting, mailbox busy, ...): the retry schedule's business.
    Transient,
    /// A permanent failure: bounce classification's business.
    Permanent,
}

/// What a reply means for shaping: its class, and for a 4xx whether the bounce verdict says the
/// destination asks this sender to slow down.
pub fn signal(code: u16, throttle: bool) -> ReplySignal {
    match code / 100 {
        2 | 3 => ReplySignal::Accepted,
        5 => ReplySignal::Permanent,
        4 if throttle => ReplySignal::Throttled,
        _ => ReplySignal::Transient,
    }
}

const MS: u64 = 1_000_000;
const TIME_MASK: u64 = (1 << 48) - 1;

fn pack(factor: u32, at_ms: u64) -> u64 {
    (u64::from(factor.min(1000)) << 48) | (at_ms & TIME_MASK)
}

fn unpack(v: u64) -> (u32, u64) {
    ((v >> 48) as u32, v & TIME_MASK)
}

/// The backoff state of one lane: a factor (per mille) applied to its rates and connection cap.
#[derive(Debug)]
pub struct LaneBackoff(AtomicU64);

impl Default for LaneBackoff {
    fn default() -> LaneBackoff {
        LaneBackoff(AtomicU64::new(pack(1000, 0)))
    }
}

fn recovered(p: &BackoffPolicy, factor: u32, at_ms: u64, now: Nanos) -> u32 {
    if factor >= 1000 {
        return 1000;
    }
    let since = (now.0 / MS).saturating_sub(at_ms).saturating_mul(MS);
    let steps = since / p.recover_every_ns.max(1);
    let f = u64::from(factor) + steps.saturating_mul(u64::from(p.recover_step_permille));
    f.min(1000) as u32
}

impl LaneBackoff {
    /// The factor at `now` (1000 = no backoff).
    pub fn factor(&self, p: &BackoffPolicy, now: Nanos) -> u32 {
        let (f, at) = unpack(self.0.load(Ordering::Relaxed));
        recovered(p, f, at, now)
    }

    /// A throttling reply arrived at `now`: lower the factor (once per cooldown). Returns the new factor.
    pub fn throttled(&self, p: &BackoffPolicy, now: Nanos) -> u32 {
        self.throttled_by(p, p.decrease_permille, now)
    }

    /// [`LaneBackoff::throttled`] multiplying the factor by `decrease_permille` (how hard the reply
    /// asked: the bounce verdict's `slow_down`) instead of the policy's.
    pub fn throttled_by(&self, p: &BackoffPolicy, decrease_permille: u32, now: Nanos) -> u32 {
        let now_ms = now.0 / MS;
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (f, at) = unpack(cur);
            let f_now = recovered(p, f, at, now);
            if f < 1000 && now_ms.saturating_sub(at).saturating_mul(MS) < p.cooldown_ns {
                return f_now;
            }
            let lowered = (u64::from(f_now) * u64::from(decrease_permille.min(1000)) / 1000) as u32;
            let lowered = lowered.max(p.floor_permille.clamp(1, 1000));
            match self.0.compare_exchange_weak(
                cur,
                pack(lowered, now_ms),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return lowered,
                Err(v) => cur = v,
            }
        }
    }

    /// Forgets all backoff (an operator reset).
    pub fn reset(&self) {
        self.0.store(pack(1000, 0), Ordering::Release);
    }
}

/// The backoff state of one destination (recipient domain): shard-local, since a domain belongs to one
/// shard.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DestinationBackoff {
    /// How many times in a row all MX hosts failed.
    pub streak: u32,
    /// No new connection before this.
    pub not_before: Option<Nanos>,
    /// After a backoff, one probe connection at a time: no other until it succeeds, fails, or this time.
    pub probe_until: Option<Nanos>,
}

impl DestinationBackoff {
    /// All MX hosts failed at `now`: back off the whole destination. Returns the time it may try again.
    pub fn all_failed(&mut self, p: &BackoffPolicy, now: Nanos) -> Nanos {
        let shift = self.streak.min(30);
        self.streak = self.streak.saturating_add(1);
        let wait = p
            .destination_base_ns
            .saturating_mul(1u64 << shift)
            .min(p.destination_max_ns);
        let t = Nanos(now.0.saturating_add(wait));
        self.not_before = Some(t);
        self.probe_until = None;
        t
    }

    /// Whether a connection may start at `now`: `Err((t, false))` while backed off, `Err((t, true))` while
    /// a probe is under way. Call [`DestinationBackoff::attempt`] when the connection does start.
    pub fn check(&self, now: Nanos) -> Result<(), (Nanos, bool)> {
        if let Some(t) = self.not_before
            && t > now
        {
            return Err((t, false));
        }
        if self.streak > 0
            && let Some(t) = self.probe_until
            && t > now
        {
            return Err((t, true));
        }
        Ok(())
    }

    /// A connection starts at `now`: while the destination recovers from a backoff it is the probe, and
    /// others wait until it succeeds or fails (at most `probe_ns`).
    pub fn attempt(&mut self, now: Nanos, probe_ns: u64) {
        if self.streak > 0 {
            self.probe_until = Some(Nanos(now.0.saturating_add(probe_ns)));
        }
    }

    /// The probe (or another attempt) failed at one MX host: the next MX host may be probed at once.
    pub fn probe_failed(&mut self) {
        self.probe_until = None;
    }

    /// An MX host of the destination accepted a session.
    pub fn succeeded(&mut self) {
        self.streak = 0;
        self.not_before = None;
        self.probe_until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::EnhancedCode;

    const S: u64 = 1_000_000_000;

    /// The shaper's reading of a reply through the shipped bounce rules' verdict.
    fn shaped(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> ReplySignal {
        let c = crate::bounce::Classifier::default_rules().classify(&crate::bounce::Diagnostic {
            code: Some(code),
            enhanced,
            text,
            ..crate::bounce::Diagnostic::default()
        });
        signal(code, c.throttle)
    }

    #[test]
    fn replies_are_classified() {
        let e = EnhancedCode::parse;
        assert_eq!(shaped(250, None, "ok"), ReplySignal::Accepted);
        assert_eq!(
            shaped(550, e("5.1.1"), "no such user"),
            ReplySignal::Permanent
        );
        assert_eq!(
            shaped(421, e("4.7.0"), "Too many connections"),
            ReplySignal::Throttled
        );
        assert_eq!(
            shaped(421, None, "Service not available"),
            ReplySignal::Throttled
        );
        assert_eq!(
            shaped(451, e("4.7.500"), "Server busy. Please try again later"),
            ReplySignal::Throttled
        );
        assert_eq!(
            shaped(450, None, "4.7.1 rate limit exceeded"),
            ReplySignal::Throttled
        );
        assert_eq!(
            shaped(451, e("4.7.1"), "Greylisted, please try again later"),
            ReplySignal::Transient
        );
        assert_eq!(
            shaped(
                450,
                e("4.2.1"),
                "The user you are trying to contact is receiving mail at a rate"
            ),
            ReplySignal::Transient
        );
        assert_eq!(
            shaped(452, e("4.3.1"), "Insufficient system storage"),
            ReplySignal::Transient
        );
        assert_eq!(
            shaped(451, None, "Too many messages from your IP, slow down"),
            ReplySignal::Throttled
        );
    }

    /// Deferrals as the big receivers word them (texts as commonly reported; codes as sent).
    #[test]
    fn real_world_deferrals_are_classified() {
        let e = EnhancedCode::parse;
        let cases: &[(u16, &str, &str, ReplySignal)] = &[
            (
                421,
                "4.7.28",
                "Our system has detected an unusual rate of unsolicited mail originating from your IP address",
                ReplySignal::Throttled,
            ),
            (
                421,
                "4.7.0",
                "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
                ReplySignal::Throttled,
            ),
            (
                451,
                "4.7.650",
                "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation",
                ReplySignal::Throttled,
            ),
            (
                421,
                "",
                "mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many connections, slow down. OFR005_104",
                ReplySignal::Throttled,
            ),
            (
                421,
                "4.1.0",
                "Throttled: RL000001 rate limited",
                ReplySignal::Throttled,
            ),
            (
                451,
                "4.7.1",
                "Please try again later, greylisted for 5 minutes",
                ReplySignal::Transient,
            ),
            (
                450,
                "4.7.1",
                "SPF temporary error, try again later",
                ReplySignal::Transient,
            ),
            (
                451,
                "4.7.0",
                "Temporary authentication failure (DKIM lookup)",
                ReplySignal::Transient,
            ),
            (452, "4.5.3", "Too many recipients", ReplySignal::Transient),
            (
                450,
                "4.2.1",
                "The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered",
                ReplySignal::Transient,
            ),
            (
                452,
                "",
                "Too many connections from your host",
                ReplySignal::Throttled,
            ),
            (
                550,
                "5.7.1",
                "Rate limit exceeded, message rejected",
                ReplySignal::Permanent,
            ),
        ];
        for (code, enh, text, want) in cases {
            assert_eq!(shaped(*code, e(enh), text), *want, "{code} {enh} {text}");
        }
    }

    #[test]
    fn a_harder_throttle_lowers_the_factor_more() {
        let p = BackoffPolicy::default();
        let (gentle, hard) = (LaneBackoff::default(), LaneBackoff::default());
        assert_eq!(gentle.throttled_by(&p, 750, Nanos(S)), 750);
        assert_eq!(hard.throttled_by(&p, 250, Nanos(S)), 250);
        assert_eq!(LaneBackoff::default().throttled(&p, Nanos(S)), 500);
    }

    #[test]
    fn aimd_halves_once_per_cooldown_and_recovers_linearly() {
        let p = BackoffPolicy::default();
        let b = LaneBackoff::default();
        let t0 = Nanos(1_000 * S);
        assert_eq!(b.factor(&p, t0), 1000);
        assert_eq!(b.throttled(&p, t0), 500);
        // A burst of throttles from other connections within the cooldown counts once.
        assert_eq!(b.throttled(&p, Nanos(t0.0 + 5 * S)), 500);
        assert_eq!(b.throttled(&p, Nanos(t0.0 + 11 * S)), 250);
        let t1 = Nanos(t0.0 + 11 * S);
        // +50 per minute.
        assert_eq!(b.factor(&p, Nanos(t1.0 + 59 * S)), 250);
        assert_eq!(b.factor(&p, Nanos(t1.0 + 60 * S)), 300);
        assert_eq!(b.factor(&p, Nanos(t1.0 + 15 * 60 * S)), 1000);
        for i in 0..20 {
            b.throttled(&p, Nanos(t1.0 + i * 11 * S));
        }
        assert_eq!(b.factor(&p, Nanos(t1.0 + 19 * 11 * S)), p.floor_permille);
        b.reset();
        assert_eq!(b.factor(&p, t1), 1000);
    }

    #[test]
    fn destination_backoff_doubles_up_to_the_maximum() {
        let p = BackoffPolicy::default();
        let mut d = DestinationBackoff::default();
        assert_eq!(d.all_failed(&p, Nanos(0)), Nanos(60 * S));
        assert_eq!(d.all_failed(&p, Nanos(0)), Nanos(120 * S));
        for _ in 0..10 {
            d.all_failed(&p, Nanos(0));
        }
        assert_eq!(d.not_before, Some(Nanos(3_600 * S)));
        // Recovering: one probe at a time.
        let t = d.not_before.expect("backed off");
        assert_eq!(d.check(Nanos(t.0 - 1)), Err((t, false)));
        assert_eq!(d.check(t), Ok(()));
        d.attempt(t, 60 * S);
        assert_eq!(d.check(t), Err((Nanos(t.0 + 60 * S), true)));
        d.probe_failed();
        assert_eq!(d.check(t), Ok(()));
        d.succeeded();
        d.attempt(t, 60 * S);
        assert_eq!(d.check(t), Ok(()), "healthy again: no probe");
        assert_eq!(d.streak, 0);
        assert_eq!(d.not_before, None);
    }
}
