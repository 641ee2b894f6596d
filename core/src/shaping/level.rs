//! Throughput levels: six named steps that scale every limit of a source, so an operator ramps a source
//! up by changing one value.
//!
//! | level      | scale |
//! |------------|-------|
//! | `new`      | 10 %  |
//! | `low`      | 25 %  |
//! | `moderate` | 40 %  |
//! | `medium`   | 60 %  |
//! | `high`     | 80 %  |
//! | `full`     | 100 % |
//!
//! The scale multiplies connection caps, message and connection rates, bursts and hourly/daily caps
//! (each rounded up, never below 1). It leaves messages per connection alone (a receiver's limit per
//! session does not depend on the sender's reputation) and does not touch warm-up schedules, which are
//! absolute volumes.

use std::fmt;

/// A named throughput level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum ThroughputLevel {
    /// 10 %: a source nobody knows yet.
    New,
    /// 25 %.
    Low,
    /// 40 %.
    Moderate,
    /// 60 %.
    Medium,
    /// 80 %.
    High,
    /// 100 %: the rules' limits as written.
    #[default]
    Full,
}

impl ThroughputLevel {
    /// All levels, slowest first.
    pub const ALL: [ThroughputLevel; 6] = [
        ThroughputLevel::New,
        ThroughputLevel::Low,
        ThroughputLevel::Moderate,
        ThroughputLevel::Medium,
        ThroughputLevel::High,
        ThroughputLevel::Full,
    ];

    /// The scale in per mille.
    pub fn permille(self) -> u32 {
        match self {
            ThroughputLevel::New => 100,
            ThroughputLevel::Low => 250,
            ThroughputLevel::Moderate => 400,
            ThroughputLevel::Medium => 600,
            ThroughputLevel::High => 800,
            ThroughputLevel::Full => 1000,
        }
    }

    /// The name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            ThroughputLevel::New => "new",
            ThroughputLevel::Low => "low",
            ThroughputLevel::Moderate => "moderate",
            ThroughputLevel::Medium => "medium",
            ThroughputLevel::High => "high",
            ThroughputLevel::Full => "full",
        }
    }

    /// Parses a name produced by [`ThroughputLevel::as_str`] (case-insensitive).
    pub fn parse(s: &str) -> Option<ThroughputLevel> {
        let s = s.trim();
        ThroughputLevel::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
    }

    /// Scales a count, rounding up, never below 1.
    pub fn scale(self, v: u64) -> u64 {
        scale_up(v, self.permille())
    }
}

/// `v · permille / 1000`, rounded up, at least 1.
pub(crate) fn scale_up(v: u64, permille: u32) -> u64 {
    let p = u128::from(permille.min(1000));
    let r = (u128::from(v) * p).div_ceil(1000);
    (r as u64).max(1)
}

impl fmt::Display for ThroughputLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ThroughputLevel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_order_and_scale() {
        for l in ThroughputLevel::ALL {
            assert_eq!(ThroughputLevel::parse(&l.as_str().to_uppercase()), Some(l));
        }
        assert_eq!(ThroughputLevel::parse("turbo"), None);
        assert!(ThroughputLevel::New < ThroughputLevel::Full);
        assert_eq!(ThroughputLevel::New.scale(5), 1);
        assert_eq!(ThroughputLevel::New.scale(100), 10);
        assert_eq!(ThroughputLevel::Medium.scale(10), 6);
        assert_eq!(ThroughputLevel::Full.scale(7), 7);
        assert_eq!(ThroughputLevel::Low.scale(1), 1);
    }
}
