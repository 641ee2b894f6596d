//! Warm-up schedules: how many messages a new source (an IP address, or a sending domain's pool) may
//! send on each day since it started sending.
//!
//! A schedule is a list of steps `(days, volume)` followed by an open end that grows by `increase` a
//! day from the last step's volume, optionally up to `ceiling` (after which the source is warm and the
//! schedule stops limiting it). The example of the issue, "1,000/day for 5 days, 2,000 for 3, 5,000 for
//! 2, 10,000 then +3,000 a day", is `[(5, 1000), (3, 2000), (2, 5000), (1, 10000)]` with
//! `increase = 3000`: day 0..=4 allow 1,000, day 10 allows 10,000, day 11 allows 13,000.
//!
//! Days are 24-hour windows counted from the moment the source started (a monotonic [`Nanos`] the
//! engine derives from the stored start date), not calendar days in any time zone.

use super::Nanos;

/// Nanoseconds in a day.
pub const DAY_NS: u64 = 86_400 * 1_000_000_000;

/// One step of a schedule: `volume` messages a day for `days` days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct WarmupStep {
    /// How many days the step lasts (at least 1).
    pub days: u32,
    /// Messages allowed on each of those days.
    pub volume: u64,
}

/// A warm-up schedule of daily volumes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WarmupSchedule {
    /// The name rules refer to it by.
    pub name: String,
    /// The steps, in order.
    pub steps: Vec<WarmupStep>,
    /// After the last step: added to the daily volume each further day.
    pub increase: u64,
    /// Once the daily volume reaches this, the schedule no longer limits (`None`: it grows forever).
    pub ceiling: Option<u64>,
}

impl WarmupSchedule {
    /// The schedule from the issue: 1,000/day for 5 days, 2,000 for 3, 5,000 for 2, 10,000, then +3,000 a
    /// day, warm at 1,000,000 a day.
    pub fn standard() -> WarmupSchedule {
        WarmupSchedule {
            name: "standard".into(),
            steps: vec![
                WarmupStep {
                    days: 5,
                    volume: 1_000,
                },
                WarmupStep {
                    days: 3,
                    volume: 2_000,
                },
                WarmupStep {
                    days: 2,
                    volume: 5_000,
                },
                WarmupStep {
                    days: 1,
                    volume: 10_000,
                },
            ],
            increase: 3_000,
            ceiling: Some(1_000_000),
        }
    }

    /// Messages allowed on `day` (0 = the first day); `u64::MAX` once warm.
    pub fn allowance(&self, day: u64) -> u64 {
        let mut d = day;
        let mut last = 0;
        for s in &self.steps {
            let days = u64::from(s.days.max(1));
            if d < days {
                return self.cap(s.volume);
            }
            d -= days;
            last = s.volume;
        }
        // `d` days past the last step.
        let v = last.saturating_add(self.increase.saturating_mul(d + 1));
        if self.increase == 0 && self.steps.is_empty() {
            return u64::MAX;
        }
        self.cap(v)
    }

    fn cap(&self, v: u64) -> u64 {
        match self.ceiling {
            Some(c) if v >= c => u64::MAX,
            _ => v,
        }
    }

    /// The day index of `now` for a source that started at `started`.
    pub fn day(started: Nanos, now: Nanos) -> u64 {
        now.0.saturating_sub(started.0) / DAY_NS
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date `YYYY-MM-DD` (Howard Hinnant's `days_from_civil`).
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// The monotonic time at which a source that started on `start_unix_day` (days since 1970, UTC midnight)
/// started, given the current wall-clock time in Unix seconds and the current monotonic time. A start
/// further back than the monotonic epoch saturates at `Nanos(0)`, and the schedule's day index is then
/// counted from there: callers with such an old start should pass the warm-up as already elapsed.
pub fn started_at(start_unix_day: i64, unix_now_secs: u64, mono_now: Nanos) -> Nanos {
    let start_secs = start_unix_day.saturating_mul(86_400);
    let ago_secs = (unix_now_secs as i64).saturating_sub(start_secs).max(0) as u64;
    Nanos(
        mono_now
            .0
            .saturating_sub(ago_secs.saturating_mul(1_000_000_000)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_schedule_follows_the_issue() {
        let s = WarmupSchedule::standard();
        let want = [
            1_000, 1_000, 1_000, 1_000, 1_000, 2_000, 2_000, 2_000, 5_000, 5_000, 10_000, 13_000,
            16_000,
        ];
        for (day, v) in want.iter().enumerate() {
            assert_eq!(s.allowance(day as u64), *v, "day {day}");
        }
        // 10,000 + 3,000·k reaches 1,000,000 at k = 330 (day 340): warm from then on.
        assert_eq!(s.allowance(339), 997_000);
        assert_eq!(s.allowance(340), u64::MAX);
    }

    #[test]
    fn dates_convert_to_unix_days() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2026-11-23"), Some(20_780));
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("yesterday"), None);
        // Started two days ago at midnight, it is now 06:00: 2.25 days of monotonic time back.
        let now_unix = 20_780 * 86_400 + 6 * 3_600;
        let mono = Nanos(10 * DAY_NS);
        let at = started_at(20_778, now_unix, mono);
        assert_eq!(WarmupSchedule::day(at, mono), 2);
        assert_eq!(mono.0 - at.0, 2 * DAY_NS + 6 * 3_600_000_000_000);
    }
}
