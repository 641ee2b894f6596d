//! A hashed timer wheel for a shard's deferred work (Varghese and Lauck's scheme 6).
//!
//! Deadlines are whole seconds on the shard's clock. A deadline within the wheel's span goes into the
//! slot `deadline % SLOTS`; a later one carries the number of turns left. Advancing visits each second
//! passed once, so inserting and expiring cost O(1) per entry whatever the queue size, which a binary
//! heap cannot offer with millions of deferred recipients. Expired entries come out in deadline order
//! in insertion order among equal deadlines. The shard wakes once a second while the wheel holds
//! anything: deadlines are whole seconds.

/// Slots in the wheel: one per second, a little over 18 hours per turn.
const SLOTS: usize = 1 << 16;

/// A timer wheel of `T` keyed by second.
#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Every second before this has been expired.
    cursor: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose clock starts at `now` seconds.
    pub fn new(now: u64) -> TimerWheel<T> {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: now,
            len: 0,
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `item` at `deadline` seconds (a past deadline fires at the next advance).
    pub fn insert(&mut self, deadline: u64, item: T) {
        let deadline = deadline.max(self.cursor);
        self.slots[(deadline % SLOTS as u64) as usize].push((deadline, item));
        self.len += 1;
    }

    /// Moves the clock to `now` and hands every entry due at or before it to `fire`.
    pub fn advance(&mut self, now: u64, mut fire: impl FnMut(T)) {
        if self.len == 0 {
            self.cursor = self.cursor.max(now + 1);
            return;
        }
        // Visiting more than a full turn is pointless: every slot is seen once.
        let end = now.min(self.cursor + SLOTS as u64 - 1);
        let mut t = self.cursor;
        while t <= end && self.len > 0 {
            let slot = &mut self.slots[(t % SLOTS as u64) as usize];
            if slot.iter().any(|(d, _)| *d <= now) {
                for (d, item) in std::mem::take(slot) {
                    if d <= now {
                        self.len -= 1;
                        fire(item);
                    } else {
                        slot.push((d, item));
                    }
                }
            }
            t += 1;
        }
        self.cursor = self.cursor.max(now + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_only_when_due() {
        let mut w = TimerWheel::new(100);
        w.insert(105, "b");
        w.insert(103, "a");
        w.insert(105, "c");
        w.insert(100 + 3 * SLOTS as u64, "far");
        w.insert(50, "past");
        assert_eq!(w.len(), 5);
        let mut out = Vec::new();
        w.advance(104, |x| out.push(x));
        assert_eq!(out, vec!["past", "a"]);
        w.advance(105, |x| out.push(x));
        assert_eq!(out, vec!["past", "a", "b", "c"]);
        w.advance(100 + 2 * SLOTS as u64, |x| out.push(x));
        assert_eq!(out.len(), 4);
        w.advance(100 + 3 * SLOTS as u64, |x| out.push(x));
        assert_eq!(out.last(), Some(&"far"));
        assert!(w.is_empty());
    }

    #[test]
    fn agrees_with_a_sorted_reference() {
        let mut w = TimerWheel::new(0);
        let mut reference = Vec::new();
        let mut x: u64 = 12345;
        for i in 0..5000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let d = (x >> 33) % 200_000;
            w.insert(d, i);
            reference.push((d, i));
        }
        let mut fired = Vec::new();
        let mut now = 0;
        while !w.is_empty() {
            now += 977;
            w.advance(now, |i| fired.push(i));
        }
        assert_eq!(fired.len(), 5000);
        // Every entry fired at the first advance at or after its deadline.
        let mut check = TimerWheel::new(0);
        for (d, i) in &reference {
            check.insert(*d, *i);
        }
        let mut t = 0;
        while !check.is_empty() {
            t += 977;
            check.advance(t, |i| {
                let d = reference.iter().find(|r| r.1 == i).unwrap().0;
                assert!(d <= t && d + 977 > t, "entry {i} due {d} fired at {t}");
            });
        }
    }
}
