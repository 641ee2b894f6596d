//! Fixed-window counters for hourly and daily caps and for warm-up days.
//!
//! A window is `[origin + k·len, origin + (k+1)·len)`; a counter holds the index `k` of the window it
//! counts and the count, and starts again at zero when time enters a later window. A cap refused in
//! window `k` answers "not before the start of window `k+1`": over-cap messages wait, they never bounce.
//!
//! [`WindowCounter`] is shard-local; [`SharedWindowCounter`] packs index and count into one `AtomicU64`
//! (24 bits of window index, 40 bits of count) and updates it by compare-and-swap, so a cap shared by
//! several shards holds exactly, to the message. 24 bits of hour indexes last 1,900 years.

use super::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};

const INDEX_BITS: u32 = 24;
const COUNT_BITS: u32 = 64 - INDEX_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// Where windows start and how long they last: window `k` is
/// `[origin + k·len - shift, origin + (k+1)·len - shift)`, and everything before `origin` counts as
/// window 0. `shift` (less than `len`) lets window boundaries fall at any phase after the origin, for
/// windows that began before the monotonic epoch (a warm-up day that started yesterday at midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// The earliest time counted.
    pub origin: Nanos,
    /// How far window 0 started before `origin` (nanoseconds, less than `len_ns`).
    pub shift_ns: u64,
    /// The length of a window in nanoseconds (at least 1).
    pub len_ns: u64,
}

impl Windows {
    /// Windows of `len_ns` starting at `origin`.
    pub const fn new(origin: Nanos, len_ns: u64) -> Windows {
        Windows {
            origin,
            shift_ns: 0,
            len_ns,
        }
    }

    /// Windows of `len_ns` whose window 0 started `shift_ns` before `origin`.
    pub const fn shifted(origin: Nanos, shift_ns: u64, len_ns: u64) -> Windows {
        Windows {
            origin,
            shift_ns,
            len_ns,
        }
    }

    /// The index of the window holding `now` (0 before the origin).
    pub fn index(&self, now: Nanos) -> u64 {
        now.0
            .saturating_sub(self.origin.0)
            .saturating_add(self.shift_ns)
            / self.len_ns.max(1)
    }

    /// The start of window `k` (`k` at least 1, or the origin for 0).
    pub fn start(&self, k: u64) -> Nanos {
        Nanos(
            self.origin
                .0
                .saturating_add(k.saturating_mul(self.len_ns))
                .saturating_sub(self.shift_ns)
                .max(self.origin.0),
        )
    }
}

/// A shard-local fixed-window counter.
#[derive(Debug, Clone, Default)]
pub struct WindowCounter {
    index: u64,
    count: u64,
}

impl WindowCounter {
    /// Counts one more unless `cap` is reached in the current window; refused, says when the next window
    /// starts. `cap` may differ from window to window (a warm-up schedule).
    pub fn try_add(
        &mut self,
        w: Windows,
        now: Nanos,
        cap: impl Fn(u64) -> u64,
    ) -> Result<(), Nanos> {
        let k = w.index(now);
        if k != self.index {
            self.index = k;
            self.count = 0;
        }
        if self.count < cap(k) {
            self.count += 1;
            Ok(())
        } else {
            Err(w.start(k + 1))
        }
    }

    /// Takes back one count made in the window holding `now` (an abandoned decision).
    pub fn refund(&mut self, w: Windows, now: Nanos) {
        if w.index(now) == self.index {
            self.count = self.count.saturating_sub(1);
        }
    }

    /// The count in the window holding `now`.
    pub fn count(&self, w: Windows, now: Nanos) -> u64 {
        if w.index(now) == self.index {
            self.count
        } else {
            0
        }
    }
}

/// A fixed-window counter shared by several threads, without a lock.
#[derive(Debug, Default)]
pub struct SharedWindowCounter(AtomicU64);

fn pack(index: u64, count: u64) -> u64 {
    ((index & INDEX_MASK) << COUNT_BITS) | (count & COUNT_MASK)
}

fn unpack(v: u64) -> (u64, u64) {
    (v >> COUNT_BITS, v & COUNT_MASK)
}

impl SharedWindowCounter {
    /// Counts one more unless `cap` is reached in the current window (see [`WindowCounter::try_add`]).
    pub fn try_add(&self, w: Windows, now: Nanos, cap: impl Fn(u64) -> u64) -> Result<(), Nanos> {
        let k = w.index(now);
        let kk = k & INDEX_MASK;
        let limit = cap(k).min(COUNT_MASK);
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let (idx, count) = unpack(cur);
            let count = if idx == kk {
                count
            } else if is_later(kk, idx) {
                0
            } else {
                // A thread with an older clock than the counter: count it in the current window.
                count
            };
            if count >= limit {
                return Err(w.start(k + 1));
            }
            let idx = if is_later(kk, idx) { kk } else { idx };
            match self.0.compare_exchange_weak(
                cur,
                pack(idx, count + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Takes back one count made in the window holding `now`.
    pub fn refund(&self, w: Windows, now: Nanos) {
        let kk = w.index(now) & INDEX_MASK;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (idx, count) = unpack(v);
                (idx == kk).then(|| pack(idx, count.saturating_sub(1)))
            });
    }

    /// The count in the window holding `now`.
    pub fn count(&self, w: Windows, now: Nanos) -> u64 {
        let (idx, count) = unpack(self.0.load(Ordering::Acquire));
        if idx == w.index(now) & INDEX_MASK {
            count
        } else {
            0
        }
    }
}

/// Whether window index `a` is later than `b` modulo 2^24 (indexes are compared on a circle, so the
/// wrap after 1,900 years of hours is harmless).
fn is_later(a: u64, b: u64) -> bool {
    let d = a.wrapping_sub(b) & INDEX_MASK;
    d != 0 && d < (1 << (INDEX_BITS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const H: u64 = 3_600_000_000_000;

    #[test]
    fn local_counter_caps_each_window_and_names_the_next() {
        let w = Windows::new(Nanos(0), H);
        let mut c = WindowCounter::default();
        for _ in 0..3 {
            assert!(c.try_add(w, Nanos(10), |_| 3).is_ok());
        }
        assert_eq!(c.try_add(w, Nanos(H - 1), |_| 3), Err(Nanos(H)));
        assert!(c.try_add(w, Nanos(H), |_| 3).is_ok());
        assert_eq!(c.count(w, Nanos(H + 5)), 1);
        c.refund(w, Nanos(H + 5));
        assert_eq!(c.count(w, Nanos(H + 5)), 0);
    }

    #[test]
    fn shared_counter_matches_local_counter() {
        let w = Windows::new(Nanos(1_000), 1_000);
        let mut l = WindowCounter::default();
        let s = SharedWindowCounter::default();
        let mut now = 1_000;
        let mut x = 88172645463325252u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += x % 300;
            let cap = |k: u64| k % 5 + 1;
            assert_eq!(l.try_add(w, Nanos(now), cap), s.try_add(w, Nanos(now), cap));
            assert_eq!(l.count(w, Nanos(now)), s.count(w, Nanos(now)));
        }
    }

    #[test]
    fn shared_counter_holds_its_cap_to_the_message_under_contention() {
        let w = Windows::new(Nanos(0), u64::MAX / 4);
        let s = Arc::new(SharedWindowCounter::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    (0..50_000)
                        .filter(|_| s.try_add(w, Nanos(5), |_| 77_777).is_ok())
                        .count()
                })
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().expect("thread")).sum();
        assert_eq!(total, 77_777);
        assert_eq!(s.count(w, Nanos(5)), 77_777);
    }

    #[test]
    fn shifted_windows_start_before_the_origin() {
        // Window 0 began 10 ns before the origin: window 1 starts at origin + 90.
        let w = Windows::shifted(Nanos(1_000), 10, 100);
        assert_eq!(w.index(Nanos(0)), 0);
        assert_eq!(w.index(Nanos(1_089)), 0);
        assert_eq!(w.index(Nanos(1_090)), 1);
        assert_eq!(w.start(1), Nanos(1_090));
        assert_eq!(w.start(0), Nanos(1_000));
        let mut c = WindowCounter::default();
        assert!(c.try_add(w, Nanos(1_050), |_| 1).is_ok());
        assert_eq!(c.try_add(w, Nanos(1_051), |_| 1), Err(Nanos(1_090)));
    }

    #[test]
    fn window_indexes_compare_across_the_wrap() {
        assert!(is_later(1, 0));
        assert!(!is_later(0, 1));
        assert!(is_later(0, INDEX_MASK));
        assert!(!is_later(5, 5));
    }
}
