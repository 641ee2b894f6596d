//! Token buckets: [`TokenBucket`] is plain shard-local state, [`SharedTokenBucket`] is the lock-free
//! version for a limit that several shards draw from (Seastar's shared token bucket: an atomic `taken`
//! counter plus an `allowance` that grows by compare-and-swap as time passes).
//!
//! Both mint whole tokens from an integer interval (nanoseconds per token) and carry the fractional
//! progress forward, so over any run the number of tokens granted never exceeds
//! `burst + (now - start) / interval` — exactly, not approximately. Both are refilled eagerly on every
//! call, so given the same sequence of calls they make the same decisions (a test checks this).
//!
//! Time is a [`Nanos`] passed in by the caller; nothing here reads a clock.

use super::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a bucket fills: one token every `interval_ns`, holding at most `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketParams {
    /// Nanoseconds per token (at least 1).
    pub interval_ns: u64,
    /// Capacity in tokens (at least 1).
    pub burst: u64,
}

impl BucketParams {
    /// Parameters with both fields clamped to at least 1.
    pub fn new(interval_ns: u64, burst: u64) -> BucketParams {
        BucketParams {
            interval_ns: interval_ns.max(1),
            burst: burst.max(1),
        }
    }

    /// The same bucket slowed down by `factor_permille` (1000 = unchanged, 500 = half the rate).
    pub fn slowed(self, factor_permille: u32) -> BucketParams {
        let f = u64::from(factor_permille.clamp(1, 1000));
        BucketParams {
            interval_ns: self.interval_ns.saturating_mul(1000) / f,
            burst: self.burst,
        }
    }

    /// Tokens per second (for display).
    pub fn per_second(&self) -> f64 {
        1e9 / self.interval_ns as f64
    }
}

/// A shard-local token bucket: two integers, no atomics.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: u64,
    /// Time up to which tokens have been minted.
    minted_until: u64,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(params: BucketParams, now: Nanos) -> TokenBucket {
        TokenBucket {
            tokens: params.burst,
            minted_until: now.0,
        }
    }

    fn refill(&mut self, p: BucketParams, now: Nanos) {
        if now.0 < self.minted_until.saturating_add(p.interval_ns) {
            return; // not a whole token yet: skip the division
        }
        let n = (now.0 - self.minted_until) / p.interval_ns;
        if n == 0 {
            return;
        }
        self.minted_until += n * p.interval_ns;
        self.tokens = (self.tokens.saturating_add(n)).min(p.burst);
    }

    /// Takes `n` tokens, or says when they will be there (assuming nobody else takes any).
    pub fn try_take(&mut self, p: BucketParams, now: Nanos, n: u64) -> Result<(), Nanos> {
        self.refill(p, now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            let missing = n - self.tokens;
            Err(Nanos(
                self.minted_until
                    .saturating_add(missing.saturating_mul(p.interval_ns)),
            ))
        }
    }

    /// Gives back `n` tokens taken by a decision that was abandoned (capped at the burst).
    pub fn refund(&mut self, p: BucketParams, n: u64) {
        self.tokens = (self.tokens + n).min(p.burst);
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, p: BucketParams, now: Nanos) -> u64 {
        self.refill(p, now);
        self.tokens
    }

    /// Applies new parameters (a rule reload): the tokens held are clamped to the new burst.
    pub fn reconfigure(&mut self, p: BucketParams) {
        self.tokens = self.tokens.min(p.burst);
    }
}

/// A token bucket shared by several threads through three atomics and no lock.
///
/// - `taken`: tokens ever granted (minus refunds); grows by CAS only when `taken + n <= allowance`.
/// - `allowance`: tokens ever made available (the initial burst plus everything minted), capped so that
///   it never runs more than `burst` ahead of `taken`.
/// - `minted_until`: time up to which tokens have been minted; whoever moves it forward by CAS adds the
///   tokens for that span to `allowance`, so no span is counted twice and none is lost.
///
/// Between a refiller's two CAS operations another thread may see the new `minted_until` but the old
/// `allowance` and be refused for a moment; that can only under-grant, never over-grant.
#[derive(Debug)]
pub struct SharedTokenBucket {
    taken: AtomicU64,
    allowance: AtomicU64,
    minted_until: AtomicU64,
}

impl SharedTokenBucket {
    /// A full bucket at `now`.
    pub fn new(params: BucketParams, now: Nanos) -> SharedTokenBucket {
        SharedTokenBucket {
            taken: AtomicU64::new(0),
            allowance: AtomicU64::new(params.burst),
            minted_until: AtomicU64::new(now.0),
        }
    }

    fn refill(&self, p: BucketParams, now: Nanos) {
        let last = self.minted_until.load(Ordering::Acquire);
        if now.0 < last.saturating_add(p.interval_ns) {
            return; // not a whole token yet: skip the division
        }
        let n = (now.0 - last) / p.interval_ns;
        if n == 0 {
            return;
        }
        if self
            .minted_until
            .compare_exchange(
                last,
                last + n * p.interval_ns,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return; // another thread minted this span
        }
        let _ = self
            .allowance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |a| {
                let cap = self.taken.load(Ordering::Acquire).saturating_add(p.burst);
                Some(a.saturating_add(n).min(cap).max(a))
            });
    }

    /// Takes `n` tokens, or says when they should be there.
    pub fn try_take(&self, p: BucketParams, now: Nanos, n: u64) -> Result<(), Nanos> {
        self.refill(p, now);
        loop {
            let t = self.taken.load(Ordering::Acquire);
            let a = self.allowance.load(Ordering::Acquire);
            if t + n <= a {
                if self
                    .taken
                    .compare_exchange_weak(t, t + n, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            let last = self.minted_until.load(Ordering::Acquire);
            let missing = (t + n).saturating_sub(a);
            return Err(Nanos(
                last.saturating_add(missing.saturating_mul(p.interval_ns)),
            ));
        }
    }

    /// Gives back `n` tokens taken by a decision that was abandoned.
    pub fn refund(&self, n: u64) {
        let _ = self
            .taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(n))
            });
    }

    /// Tokens available at `now` (a racy snapshot for display).
    pub fn available(&self, p: BucketParams, now: Nanos) -> u64 {
        self.refill(p, now);
        let a = self.allowance.load(Ordering::Acquire);
        a.saturating_sub(self.taken.load(Ordering::Acquire))
    }

    /// Tokens granted so far, minus refunds.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Tokens made available so far (initial burst plus everything minted, as capped).
    pub fn allowance(&self) -> u64 {
        self.allowance.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The reference model: the textbook bucket in 128-bit arithmetic with no shortcuts.
    struct Model {
        tokens: u128,
        minted_until: u128,
    }

    impl Model {
        fn take(&mut self, p: BucketParams, now: u64, n: u64) -> bool {
            let now = u128::from(now);
            let iv = u128::from(p.interval_ns);
            while self.minted_until + iv <= now {
                self.minted_until += iv;
                self.tokens = (self.tokens + 1).min(u128::from(p.burst));
            }
            if self.tokens >= u128::from(n) {
                self.tokens -= u128::from(n);
                true
            } else {
                false
            }
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn local_and_shared_match_the_reference_model_step_by_step() {
        for seed in 1..40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let p = BucketParams::new(1 + rng.next() % 5_000, 1 + rng.next() % 7);
            let mut now = rng.next() % 1_000;
            let mut local = TokenBucket::new(p, Nanos(now));
            let shared = SharedTokenBucket::new(p, Nanos(now));
            let mut model = Model {
                tokens: u128::from(p.burst),
                minted_until: u128::from(now),
            };
            for _ in 0..5_000 {
                now += rng.next() % (p.interval_ns * 3);
                let n = (1 + rng.next() % 2).min(p.burst);
                let m = model.take(p, now, n);
                let l = local.try_take(p, Nanos(now), n);
                let s = shared.try_take(p, Nanos(now), n);
                assert_eq!(m, l.is_ok(), "seed {seed} local at {now}");
                assert_eq!(m, s.is_ok(), "seed {seed} shared at {now}");
                if let Err(t) = l {
                    assert!(t.0 > now, "not-before must lie in the future");
                    // Taking exactly at the announced time succeeds on a copy.
                    let mut c = local.clone();
                    assert!(
                        c.try_take(p, t, n).is_ok(),
                        "seed {seed}: announced time too early"
                    );
                }
            }
        }
    }

    #[test]
    fn a_full_bucket_does_not_grow_past_its_burst() {
        let p = BucketParams::new(1_000, 3);
        let mut b = TokenBucket::new(p, Nanos(0));
        assert_eq!(b.available(p, Nanos(1_000_000)), 3);
        let s = SharedTokenBucket::new(p, Nanos(0));
        assert_eq!(s.available(p, Nanos(1_000_000)), 3);
        for _ in 0..3 {
            assert!(s.try_take(p, Nanos(1_000_000), 1).is_ok());
        }
        assert_eq!(s.try_take(p, Nanos(1_000_000), 1), Err(Nanos(1_001_000)));
    }

    #[test]
    fn slowing_scales_the_interval() {
        let p = BucketParams::new(1_000, 2);
        assert_eq!(p.slowed(500).interval_ns, 2_000);
        assert_eq!(p.slowed(1000), p);
        assert_eq!(p.slowed(0).interval_ns, 1_000_000);
    }

    /// Several threads hammer one shared bucket with their own (slightly disagreeing) clocks. Whatever the
    /// interleaving: the grants counted by the threads equal the bucket's `taken` (no lost update), and
    /// never exceed `burst + elapsed / interval` for the latest time anybody passed in.
    #[test]
    fn shared_bucket_under_contention_never_over_grants_and_loses_nothing() {
        let p = BucketParams::new(20_000, 50); // 50k tokens/s, burst 50
        let start = std::time::Instant::now();
        let bucket = Arc::new(SharedTokenBucket::new(p, Nanos(0)));
        let threads = 4;
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let b = Arc::clone(&bucket);
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    let mut max_now = 0u64;
                    let mut calls = 0u64;
                    while calls < 400_000 {
                        calls += 1;
                        let now = start.elapsed().as_nanos() as u64;
                        max_now = max_now.max(now);
                        if b.try_take(p, Nanos(now), 1).is_ok() {
                            granted += 1;
                        }
                        if start.elapsed().as_millis() > 300 {
                            break;
                        }
                    }
                    (granted, max_now)
                })
            })
            .collect();
        let mut granted = 0;
        let mut max_now = 0;
        for h in handles {
            let (g, m) = h.join().expect("thread");
            granted += g;
            max_now = max_now.max(m);
        }
        assert_eq!(
            granted,
            bucket.taken(),
            "a grant was lost or double counted"
        );
        let bound = p.burst + max_now / p.interval_ns;
        assert!(granted <= bound, "granted {granted} > bound {bound}");
        assert!(bucket.allowance() <= bound);
        assert!(bucket.allowance() >= granted);
        // The threads hammered without pause, so the bucket was drained: every token minted up to the last
        // refill was granted, except at most one burst left at the end.
        assert!(
            granted + p.burst >= bucket.allowance(),
            "tokens were minted but never granted: granted {granted}, allowance {}",
            bucket.allowance()
        );
        assert!(granted > p.burst, "the bucket never refilled");
    }

    /// The same with a virtual clock every thread advances: an exact check of `allowance`.
    #[test]
    fn shared_bucket_with_a_shared_virtual_clock_grants_exactly_what_was_minted() {
        let p = BucketParams::new(7, 5);
        let bucket = Arc::new(SharedTokenBucket::new(p, Nanos(0)));
        let clock = Arc::new(AtomicU64::new(0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&bucket);
                let c = Arc::clone(&clock);
                std::thread::spawn(move || {
                    let mut g = 0u64;
                    for _ in 0..200_000 {
                        let now = c.fetch_add(1, Ordering::AcqRel) + 1;
                        if b.try_take(p, Nanos(now), 1).is_ok() {
                            g += 1;
                        }
                    }
                    g
                })
            })
            .collect();
        let granted: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        let end = clock.load(Ordering::Acquire);
        assert_eq!(granted, bucket.taken());
        assert!(granted <= p.burst + end / p.interval_ns);
        // Demand (one call per ns) far exceeds supply (one token per 7 ns): all but the tail is granted.
        // Drain what is left at the end single-threaded and the totals must match exactly.
        let mut tail = 0;
        while bucket.try_take(p, Nanos(end), 1).is_ok() {
            tail += 1;
        }
        assert!(tail <= p.burst);
        assert_eq!(granted + tail, bucket.allowance());
        assert!(
            bucket.allowance() >= end / p.interval_ns,
            "tokens minted were lost"
        );
    }
}
