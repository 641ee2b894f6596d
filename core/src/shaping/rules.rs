//! Rule sets: which limits apply to a (recipient domain, MX host) pair, read from TOML.
//!
//! A rule matches in one of four ways, tried from the most specific:
//!
//! 1. `[[mx]]`: an MX host name pattern (`*` matches any run of characters: `mx*.example.net`);
//!    limits are kept per matching MX host.
//! 2. `[[domain]]`: a recipient domain, exact or `*.example.com` for its subdomains; limits are kept
//!    per domain.
//! 3. `[[provider]]`: a mailbox provider, recognised by an MX host suffix (`.google.com`) or by one of
//!    its well-known domains (`gmail.com`); limits are kept per provider, across all its MX hosts and
//!    all the domains it hosts.
//! 4. `[defaults]`: everything else; limits are kept per MX host.
//!
//! Every limit is per source (each sending IP keeps its own budget): the "scope" above says what one
//! budget covers on the receiving side. A limit a rule leaves out is taken from `[defaults]`; `0` (or
//! `"unlimited"` for rates) removes it.
//!
//! ```toml
//! [defaults]
//! max_connections = 10
//! message_rate = "100/min"          # token bucket, burst defaults to one second's worth (at least 1)
//! message_burst = 5
//! connection_rate = "60/min"
//! max_messages_per_connection = 100
//! hourly_cap = 0                    # 0: no cap
//! daily_cap = 0
//!
//! [backoff]
//! decrease_percent = 50             # a throttling reply halves rate and connection cap ...
//! floor_percent = 5                 # ... down to 5 % of the configured limits
//! recover_percent = 5               # +5 % ...
//! recover_every = "1m"              # ... per minute without throttling
//! cooldown = "10s"                  # throttles within 10 s of a decrease count once
//! destination_base = "1m"           # all MX hosts failed: wait 1 min, doubling ...
//! destination_max = "1h"            # ... up to 1 h
//!
//! [[provider]]
//! name = "google"
//! mx_suffixes = [".google.com", ".googlemail.com"]
//! domains = ["gmail.com", "googlemail.com"]
//! max_connections = 5
//!
//! [[domain]]
//! domains = ["example.com", "*.example.org"]
//! message_rate = "10/s"
//!
//! [[mx]]
//! patterns = ["mx*.example.net"]
//! max_connections = 2
//!
//! [[warmup]]
//! name = "standard"
//! steps = [[5, 1000], [3, 2000], [2, 5000], [1, 10000]]   # [days, messages per day]
//! increase = 3000                   # then +3,000 a day ...
//! ceiling = 1000000                 # ... until 1,000,000 a day, after which the source is warm
//!
//! [[source]]
//! name = "192.0.2.10"               # an IP address or a sending domain, as the engine names sources
//! level = "new"                     # new, low, moderate, medium, high, full
//! warmup = "standard"
//! warmup_started = "2026-11-20"
//! ```
//!
//! Not implemented: regular expressions in patterns, per-source overrides inside a rule (use levels),
//! rules keyed on MX IP addresses.

use super::backoff::BackoffPolicy;
use super::level::ThroughputLevel;
use super::warmup::{WarmupSchedule, WarmupStep, parse_date};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;

/// The shipped rule set for the large mailbox providers (`default.toml`).
pub const DEFAULT_RULES: &str = include_str!("default.toml");

/// A rate: `count` events per `period_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Events per period.
    pub count: u64,
    /// The period in nanoseconds.
    pub period_ns: u64,
}

impl Rate {
    /// Parses `N/s`, `N/sec`, `N/second`, `N/min`, `N/minute`, `N/h`, `N/hour`, `N/d`, `N/day` (also
    /// `N/5min`-style multiples).
    pub fn parse(s: &str) -> Option<Rate> {
        let (n, unit) = s.trim().split_once('/')?;
        let count: u64 = n.trim().replace('_', "").parse().ok()?;
        let unit = unit.trim();
        let digits = unit.bytes().take_while(u8::is_ascii_digit).count();
        let mult: u64 = if digits == 0 {
            1
        } else {
            unit[..digits].parse().ok()?
        };
        let period_ns = parse_duration(&format!("1{}", &unit[digits..]))?.checked_mul(mult)?;
        (count > 0 && period_ns > 0).then_some(Rate { count, period_ns })
    }

    /// Per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 * 1e9 / self.period_ns as f64
    }

    /// Nanoseconds per event, scaled by a level (per mille).
    pub fn interval_ns(&self, permille: u32) -> u64 {
        let p = u128::from(permille.clamp(1, 1000));
        let iv = u128::from(self.period_ns) * 1000 / (u128::from(self.count) * p);
        (iv.max(1)).min(u128::from(u64::MAX)) as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const S: u64 = 1_000_000_000;
        let unit = match self.period_ns {
            S => "s",
            p if p == 60 * S => "min",
            p if p == 3_600 * S => "h",
            p if p == 86_400 * S => "day",
            _ => return write!(f, "{:.3}/s", self.per_second()),
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `10s`, `500ms`, `5m`/`5min`, `2h`, `1d`, `1 day`, `90 minutes` into nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    const S: u64 = 1_000_000_000;
    let unit = match s[digits..].trim().to_ascii_lowercase().as_str() {
        "ms" | "msec" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => S,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * S,
        "h" | "hr" | "hour" | "hours" => 3_600 * S,
        "d" | "day" | "days" => 86_400 * S,
        _ => return None,
    };
    n.checked_mul(unit)
}

/// The limits one rule sets, with `None` meaning "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Limits {
    /// Concurrent connections.
    pub max_connections: Option<u32>,
    /// Messages (transactions) per time.
    pub message_rate: Option<Rate>,
    /// How many messages may go at once after a quiet spell.
    pub message_burst: u32,
    /// New connections per time.
    pub connection_rate: Option<Rate>,
    /// How many connections may open at once after a quiet spell.
    pub connection_burst: u32,
    /// Messages on one connection before it is closed and another opened.
    pub max_messages_per_connection: Option<u32>,
    /// Messages per clock hour (windows counted from the engine epoch).
    pub hourly_cap: Option<u64>,
    /// Messages per 24 hours (windows counted from the engine epoch).
    pub daily_cap: Option<u64>,
}

/// Which kind of rule applies, as `vmta shaping show` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// `[[mx]]`: an MX host pattern.
    Mx,
    /// `[[domain]]`: a recipient domain.
    Domain,
    /// `[[provider]]`: a mailbox provider.
    Provider,
    /// `[defaults]`.
    Default,
}

impl RuleKind {
    /// The name printed for it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Mx => "mx",
            RuleKind::Domain => "domain",
            RuleKind::Provider => "provider",
            RuleKind::Default => "default",
        }
    }
}

/// One rule: how it matches and the limits it sets (with the defaults already filled in).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    /// Its kind.
    pub kind: RuleKind,
    /// A name for messages: the provider's name, or the first pattern.
    pub name: String,
    /// MX host suffixes (providers) or patterns (mx rules), lower case.
    pub mx_patterns: Vec<String>,
    /// Recipient domains (domain rules, or providers' well-known domains), lower case.
    pub domains: Vec<String>,
    /// The limits.
    pub limits: Limits,
}

/// What one budget covers on the receiving side: the key of a lane together with the source.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Scope {
    /// One MX host.
    MxHost(String),
    /// One recipient domain.
    Domain(String),
    /// One provider (all its MX hosts).
    Provider(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::MxHost(h) => write!(f, "mx host {h}"),
            Scope::Domain(d) => write!(f, "domain {d}"),
            Scope::Provider(p) => write!(f, "provider {p}"),
        }
    }
}

/// Configuration of one source (sending IP or sending domain).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceRule {
    /// The source's name as the engine passes it.
    pub name: String,
    /// Its throughput level.
    pub level: ThroughputLevel,
    /// Its warm-up schedule's index in [`RuleSet::warmups`].
    pub warmup: Option<usize>,
    /// The day it started sending (days since 1970-01-01, UTC).
    pub warmup_started: Option<i64>,
}

/// A complete rule set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RuleSet {
    /// `[defaults]`.
    pub defaults: Rule,
    /// `[[mx]]` rules in file order.
    pub mx: Vec<Rule>,
    /// `[[domain]]` rules in file order.
    pub domains: Vec<Rule>,
    /// `[[provider]]` rules in file order.
    pub providers: Vec<Rule>,
    /// `[[warmup]]` schedules.
    pub warmups: Vec<WarmupSchedule>,
    /// `[[source]]` entries.
    pub sources: Vec<SourceRule>,
    /// `[backoff]`.
    pub backoff: BackoffPolicy,
    #[serde(skip)]
    exact_domains: HashMap<String, (RuleKind, usize)>,
}

/// The rule that applies to a (domain, MX host) pair and what its budget covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Its scope.
    pub scope: Scope,
}

/// A rule file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesError {
    /// Not valid TOML, or a field of the wrong type or unknown (the parser's message).
    Syntax(String),
    /// Valid TOML, but a value that makes no sense (which, and why).
    Invalid(String),
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulesError::Syntax(m) => write!(f, "shaping rules: {m}"),
            RulesError::Invalid(m) => write!(f, "shaping rules: {m}"),
        }
    }
}

impl std::error::Error for RulesError {}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    defaults: Option<RuleToml>,
    backoff: Option<BackoffToml>,
    #[serde(default)]
    provider: Vec<RuleToml>,
    #[serde(default)]
    domain: Vec<RuleToml>,
    #[serde(default)]
    mx: Vec<RuleToml>,
    #[serde(default)]
    warmup: Vec<WarmupToml>,
    #[serde(default)]
    source: Vec<SourceToml>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: Option<String>,
    #[serde(default)]
    mx_suffixes: Vec<String>,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default)]
    patterns: Vec<String>,
    max_connections: Option<u32>,
    message_rate: Option<String>,
    message_burst: Option<u32>,
    connection_rate: Option<String>,
    connection_burst: Option<u32>,
    max_messages_per_connection: Option<u32>,
    hourly_cap: Option<u64>,
    daily_cap: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackoffToml {
    decrease_percent: Option<u32>,
    floor_percent: Option<u32>,
    recover_percent: Option<u32>,
    recover_every: Option<String>,
    cooldown: Option<String>,
    destination_base: Option<String>,
    destination_max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmupToml {
    name: String,
    steps: Vec<(u32, u64)>,
    #[serde(default)]
    increase: u64,
    ceiling: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceToml {
    name: String,
    level: Option<String>,
    warmup: Option<String>,
    warmup_started: Option<String>,
}

fn invalid(m: impl Into<String>) -> RulesError {
    RulesError::Invalid(m.into())
}

fn parse_rate(field: &str, v: &Option<String>) -> Result<Option<Option<Rate>>, RulesError> {
    match v.as_deref() {
        None => Ok(None),
        Some(s) if s.trim().eq_ignore_ascii_case("unlimited") || s.trim() == "0" => Ok(Some(None)),
        Some(s) => Rate::parse(s)
            .map(|r| Some(Some(r)))
            .ok_or_else(|| invalid(format!("{field} = {s:?}: expected like \"100/min\""))),
    }
}

fn nonzero<T: PartialEq + Default>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

fn default_burst(rate: Option<Rate>) -> u32 {
    rate.map_or(1, |r| (r.per_second().ceil() as u32).max(1))
}

fn merge(base: &Limits, t: &RuleToml, what: &str) -> Result<Limits, RulesError> {
    let message_rate = parse_rate("message_rate", &t.message_rate)
        .map_err(|e| invalid(format!("{what}: {e}")))?
        .unwrap_or(base.message_rate);
    let connection_rate = parse_rate("connection_rate", &t.connection_rate)
        .map_err(|e| invalid(format!("{what}: {e}")))?
        .unwrap_or(base.connection_rate);
    // A burst follows the rate it belongs to unless given: a rule that changes the rate gets that rate's
    // default burst, not the defaults' burst for another rate.
    let message_burst = match (t.message_burst, &t.message_rate) {
        (Some(b), _) => b.max(1),
        (None, Some(_)) => default_burst(message_rate),
        (None, None) => base.message_burst,
    };
    let connection_burst = match (t.connection_burst, &t.connection_rate) {
        (Some(b), _) => b.max(1),
        (None, Some(_)) => default_burst(connection_rate),
        (None, None) => base.connection_burst,
    };
    Ok(Limits {
        max_connections: t.max_connections.map_or(base.max_connections, nonzero),
        message_rate,
        message_burst,
        connection_rate,
        connection_burst,
        max_messages_per_connection: t
            .max_messages_per_connection
            .map_or(base.max_messages_per_connection, nonzero),
        hourly_cap: t.hourly_cap.map_or(base.hourly_cap, nonzero),
        daily_cap: t.daily_cap.map_or(base.daily_cap, nonzero),
    })
}

fn norm_host(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `*` matches any run of characters (including dots); everything else literally, case-insensitively.
/// Both arguments are already lower case.
pub fn glob_match(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.as_bytes(), host.as_bytes());
    let (mut pi, mut hi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while hi < h.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, hi));
            pi += 1;
        } else if pi < p.len() && p[pi] == h[hi] {
            pi += 1;
            hi += 1;
        } else if let Some((sp, sh)) = star {
            pi = sp + 1;
            hi = sh + 1;
            star = Some((sp, sh + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn suffix_match(suffix: &str, host: &str) -> bool {
    // ".google.com" matches "aspmx.l.google.com"; "google.com" also matches "google.com" itself.
    let bare = suffix.trim_start_matches('.');
    host == bare
        || (host.len() > bare.len() && host.ends_with(bare) && {
            let cut = host.len() - bare.len();
            host.as_bytes()[cut - 1] == b'.'
        })
}

fn domain_match(pattern: &str, domain: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => suffix_match(parent, domain) && domain != parent,
        None => pattern == domain,
    }
}

impl RuleSet {
    /// The shipped rules (`default.toml`), parsed once per process: every engine start and reload
    /// without a rule file of its own asks for them.
    pub fn shipped() -> RuleSet {
        static SHIPPED: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
        SHIPPED
            .get_or_init(|| {
                RuleSet::from_toml(DEFAULT_RULES).expect("the shipped default.toml is valid")
            })
            .clone()
    }

    /// Reads a rule set from TOML text.
    pub fn from_toml(text: &str) -> Result<RuleSet, RulesError> {
        let file: RuleFile = toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
        let builtin = Limits {
            max_connections: Some(10),
            message_rate: None,
            message_burst: 1,
            connection_rate: None,
            connection_burst: 1,
            max_messages_per_connection: Some(100),
            hourly_cap: None,
            daily_cap: None,
        };
        let d = file.defaults.unwrap_or_default();
        if d.name.is_some()
            || !d.mx_suffixes.is_empty()
            || !d.domains.is_empty()
            || !d.patterns.is_empty()
        {
            return Err(invalid("[defaults] takes limits only, no name or patterns"));
        }
        let defaults = Rule {
            kind: RuleKind::Default,
            name: "defaults".into(),
            mx_patterns: vec![],
            domains: vec![],
            limits: merge(&builtin, &d, "[defaults]")?,
        };
        let base = defaults.limits;
        let mut providers = Vec::new();
        for (i, t) in file.provider.iter().enumerate() {
            let name = t
                .name
                .clone()
                .ok_or_else(|| invalid(format!("provider #{}: missing name", i + 1)))?;
            if t.mx_suffixes.is_empty() && t.domains.is_empty() {
                return Err(invalid(format!(
                    "provider {name}: needs mx_suffixes or domains"
                )));
            }
            if !t.patterns.is_empty() {
                return Err(invalid(format!(
                    "provider {name}: use mx_suffixes, not patterns"
                )));
            }
            providers.push(Rule {
                kind: RuleKind::Provider,
                limits: merge(&base, t, &format!("provider {name}"))?,
                mx_patterns: t.mx_suffixes.iter().map(|s| norm_host(s)).collect(),
                domains: t.domains.iter().map(|s| norm_host(s)).collect(),
                name,
            });
        }
        let mut domains = Vec::new();
        for (i, t) in file.domain.iter().enumerate() {
            if t.domains.is_empty() || !t.mx_suffixes.is_empty() || !t.patterns.is_empty() {
                return Err(invalid(format!(
                    "domain rule #{}: needs domains (and only domains)",
                    i + 1
                )));
            }
            let name = t.name.clone().unwrap_or_else(|| norm_host(&t.domains[0]));
            domains.push(Rule {
                kind: RuleKind::Domain,
                limits: merge(&base, t, &format!("domain rule {name}"))?,
                mx_patterns: vec![],
                domains: t.domains.iter().map(|s| norm_host(s)).collect(),
                name,
            });
        }
        let mut mx = Vec::new();
        for (i, t) in file.mx.iter().enumerate() {
            if t.patterns.is_empty() || !t.mx_suffixes.is_empty() || !t.domains.is_empty() {
                return Err(invalid(format!(
                    "mx rule #{}: needs patterns (and only patterns)",
                    i + 1
                )));
            }
            let name = t.name.clone().unwrap_or_else(|| norm_host(&t.patterns[0]));
            mx.push(Rule {
                kind: RuleKind::Mx,
                limits: merge(&base, t, &format!("mx rule {name}"))?,
                mx_patterns: t.patterns.iter().map(|s| norm_host(s)).collect(),
                domains: vec![],
                name,
            });
        }
        let mut warmups: Vec<WarmupSchedule> = Vec::new();
        for w in &file.warmup {
            if w.steps.iter().any(|&(days, _)| days == 0) {
                return Err(invalid(format!("warmup {}: a step of 0 days", w.name)));
            }
            if warmups.iter().any(|x| x.name == w.name) {
                return Err(invalid(format!("warmup {}: defined twice", w.name)));
            }
            warmups.push(WarmupSchedule {
                name: w.name.clone(),
                steps: w
                    .steps
                    .iter()
                    .map(|&(days, volume)| WarmupStep { days, volume })
                    .collect(),
                increase: w.increase,
                ceiling: w.ceiling,
            });
        }
        let mut sources = Vec::new();
        for s in &file.source {
            let level = match &s.level {
                None => ThroughputLevel::Full,
                Some(l) => ThroughputLevel::parse(l).ok_or_else(|| {
                    invalid(format!(
                        "source {}: level {l:?} is not one of new, low, moderate, medium, high, full",
                        s.name
                    ))
                })?,
            };
            let warmup = match &s.warmup {
                None => None,
                Some(w) if w == "standard" && !warmups.iter().any(|x| x.name == "standard") => {
                    warmups.push(WarmupSchedule::standard());
                    Some(warmups.len() - 1)
                }
                Some(w) => {
                    Some(warmups.iter().position(|x| &x.name == w).ok_or_else(|| {
                        invalid(format!("source {}: no warmup named {w:?}", s.name))
                    })?)
                }
            };
            let warmup_started = match &s.warmup_started {
                None => None,
                Some(d) => Some(parse_date(d).ok_or_else(|| {
                    invalid(format!(
                        "source {}: warmup_started {d:?} is not YYYY-MM-DD",
                        s.name
                    ))
                })?),
            };
            if warmup.is_some() != warmup_started.is_some() {
                return Err(invalid(format!(
                    "source {}: warmup and warmup_started go together",
                    s.name
                )));
            }
            sources.push(SourceRule {
                name: s.name.clone(),
                level,
                warmup,
                warmup_started,
            });
        }
        let backoff = match &file.backoff {
            None => BackoffPolicy::default(),
            Some(b) => {
                let mut p = BackoffPolicy::default();
                let dur = |field: &str, v: &Option<String>, cur: u64| -> Result<u64, RulesError> {
                    match v {
                        None => Ok(cur),
                        Some(s) => parse_duration(s).filter(|&n| n > 0).ok_or_else(|| {
                            invalid(format!("backoff.{field} = {s:?}: expected like \"10s\""))
                        }),
                    }
                };
                let pct = |field: &str, v: Option<u32>, cur: u32| -> Result<u32, RulesError> {
                    match v {
                        None => Ok(cur),
                        Some(n @ 1..=100) => Ok(n * 10),
                        Some(n) => Err(invalid(format!("backoff.{field} = {n}: expected 1..=100"))),
                    }
                };
                p.decrease_permille =
                    pct("decrease_percent", b.decrease_percent, p.decrease_permille)?;
                p.floor_permille = pct("floor_percent", b.floor_percent, p.floor_permille)?;
                p.recover_step_permille = pct(
                    "recover_percent",
                    b.recover_percent,
                    p.recover_step_permille,
                )?;
                p.recover_every_ns = dur("recover_every", &b.recover_every, p.recover_every_ns)?;
                p.cooldown_ns = dur("cooldown", &b.cooldown, p.cooldown_ns)?;
                p.destination_base_ns = dur(
                    "destination_base",
                    &b.destination_base,
                    p.destination_base_ns,
                )?;
                p.destination_max_ns =
                    dur("destination_max", &b.destination_max, p.destination_max_ns)?;
                p
            }
        };
        let mut exact_domains = HashMap::new();
        for (kind, rules) in [
            (RuleKind::Domain, &domains),
            (RuleKind::Provider, &providers),
        ] {
            for (i, r) in rules.iter().enumerate() {
                for d in r.domains.iter().filter(|d| !d.starts_with("*.")) {
                    exact_domains.entry(d.clone()).or_insert((kind, i));
                }
            }
        }
        Ok(RuleSet {
            defaults,
            mx,
            domains,
            providers,
            warmups,
            sources,
            backoff,
            exact_domains,
        })
    }

    /// The rule that applies to mail for `domain` sent to the MX host `mx`, and what its budget covers.
    pub fn resolve(&self, domain: &str, mx: &str) -> Resolved<'_> {
        let domain = norm_host(domain);
        let mx = norm_host(mx);
        if let Some(r) = self
            .mx
            .iter()
            .find(|r| r.mx_patterns.iter().any(|p| glob_match(p, &mx)))
        {
            return Resolved {
                rule: r,
                scope: Scope::MxHost(mx),
            };
        }
        if let Some(r) = self.domain_rule(&domain) {
            return Resolved {
                rule: r,
                scope: Scope::Domain(domain),
            };
        }
        if let Some(r) = self
            .provider_by_mx(&mx)
            .or_else(|| self.provider_by_domain(&domain))
        {
            return Resolved {
                rule: r,
                scope: Scope::Provider(r.name.clone()),
            };
        }
        Resolved {
            rule: &self.defaults,
            scope: Scope::MxHost(mx),
        }
    }

    /// The rule that applies to `domain` when its MX hosts are not known (the CLI without a resolver):
    /// a domain rule, or a provider listing the domain, or the defaults. MX rules and MX-suffix provider
    /// matches need the MX host: see [`RuleSet::resolve`].
    pub fn resolve_domain(&self, domain: &str) -> &Rule {
        let domain = norm_host(domain);
        self.domain_rule(&domain)
            .or_else(|| self.provider_by_domain(&domain))
            .unwrap_or(&self.defaults)
    }

    fn domain_rule(&self, domain: &str) -> Option<&Rule> {
        if let Some(&(RuleKind::Domain, i)) = self.exact_domains.get(domain) {
            return Some(&self.domains[i]);
        }
        self.domains
            .iter()
            .find(|r| r.domains.iter().any(|p| domain_match(p, domain)))
    }

    fn provider_by_domain(&self, domain: &str) -> Option<&Rule> {
        if let Some(&(RuleKind::Provider, i)) = self.exact_domains.get(domain) {
            return Some(&self.providers[i]);
        }
        self.providers
            .iter()
            .find(|r| r.domains.iter().any(|p| domain_match(p, domain)))
    }

    fn provider_by_mx(&self, mx: &str) -> Option<&Rule> {
        self.providers
            .iter()
            .find(|r| r.mx_patterns.iter().any(|s| suffix_match(s, mx)))
    }

    /// The `[[source]]` entry for a source name.
    pub fn source(&self, name: &str) -> Option<&SourceRule> {
        self.sources.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        const S: u64 = 1_000_000_000;
        assert_eq!(
            Rate::parse("100/min"),
            Some(Rate {
                count: 100,
                period_ns: 60 * S
            })
        );
        assert_eq!(
            Rate::parse("5/s"),
            Some(Rate {
                count: 5,
                period_ns: S
            })
        );
        assert_eq!(
            Rate::parse("10_000/hour"),
            Some(Rate {
                count: 10_000,
                period_ns: 3_600 * S
            })
        );
        assert_eq!(
            Rate::parse("3/5min"),
            Some(Rate {
                count: 3,
                period_ns: 300 * S
            })
        );
        assert_eq!(Rate::parse("0/s"), None);
        assert_eq!(Rate::parse("fast"), None);
        assert_eq!(Rate::parse("5/fortnight"), None);
        assert_eq!(
            Rate::parse("100/min").map(|r| r.to_string()),
            Some("100/min".into())
        );
        assert_eq!(
            Rate::parse("100/min").map(|r| r.interval_ns(1000)),
            Some(600_000_000)
        );
        assert_eq!(
            Rate::parse("100/min").map(|r| r.interval_ns(100)),
            Some(6_000_000_000)
        );
        assert_eq!(parse_duration("90m"), Some(5_400 * S));
        assert_eq!(parse_duration("1 day"), Some(86_400 * S));
        assert_eq!(parse_duration("250ms"), Some(250_000_000));
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn globs_and_suffixes_match() {
        assert!(glob_match("mx*.example.net", "mx1.example.net"));
        assert!(glob_match("mx*.example.net", "mx.a.example.net"));
        assert!(!glob_match("mx*.example.net", "mail.example.net"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(suffix_match(".google.com", "aspmx.l.google.com"));
        assert!(!suffix_match(".google.com", "notgoogle.com"));
        assert!(!suffix_match(".google.com", "google.com.evil.example"));
        assert!(domain_match("*.example.org", "a.example.org"));
        assert!(!domain_match("*.example.org", "example.org"));
    }

    const RULES: &str = r#"
        [defaults]
        max_connections = 8
        message_rate = "120/min"
        max_messages_per_connection = 100
        daily_cap = 50000

        [[provider]]
        name = "google"
        mx_suffixes = [".google.com"]
        domains = ["gmail.com"]
        max_connections = 5
        daily_cap = 0

        [[domain]]
        domains = ["example.com", "*.example.org"]
        message_rate = "10/s"

        [[mx]]
        patterns = ["mx*.example.net"]
        max_connections = 2

        [[source]]
        name = "192.0.2.10"
        level = "new"
        warmup = "standard"
        warmup_started = "2026-11-20"
    "#;

    #[test]
    fn rules_resolve_most_specific_first_and_inherit_defaults() {
        let r = RuleSet::from_toml(RULES).expect("valid");
        let g = r.resolve("Gmail.com", "gmail-smtp-in.l.google.com.");
        assert_eq!(g.rule.kind, RuleKind::Provider);
        assert_eq!(g.scope, Scope::Provider("google".into()));
        assert_eq!(g.rule.limits.max_connections, Some(5));
        assert_eq!(g.rule.limits.daily_cap, None, "0 removes a default");
        assert_eq!(
            g.rule.limits.message_rate,
            Rate::parse("120/min"),
            "inherited"
        );
        // A Workspace domain is recognised by its MX.
        let w = r.resolve("corp.example", "aspmx.l.google.com");
        assert_eq!(w.scope, Scope::Provider("google".into()));
        // gmail.com with an unknown MX is still Google (by domain).
        assert_eq!(
            r.resolve("gmail.com", "mx.other").rule.kind,
            RuleKind::Provider
        );
        let d = r.resolve("sub.example.org", "mail.example.org");
        assert_eq!(d.rule.kind, RuleKind::Domain);
        assert_eq!(d.scope, Scope::Domain("sub.example.org".into()));
        assert_eq!(
            d.rule.limits.message_burst, 10,
            "burst follows the rule's own rate"
        );
        let m = r.resolve("example.com", "mx7.example.net");
        assert_eq!(m.rule.kind, RuleKind::Mx, "mx rules win over domain rules");
        assert_eq!(m.rule.limits.max_connections, Some(2));
        let other = r.resolve("random.test", "mx.random.test");
        assert_eq!(other.rule.kind, RuleKind::Default);
        assert_eq!(other.scope, Scope::MxHost("mx.random.test".into()));
        assert_eq!(other.rule.limits.daily_cap, Some(50_000));
        assert_eq!(r.resolve_domain("gmail.com").name, "google");
        assert_eq!(r.resolve_domain("example.com").kind, RuleKind::Domain);
        let s = r.source("192.0.2.10").expect("source");
        assert_eq!(s.level, ThroughputLevel::New);
        assert_eq!(r.warmups[s.warmup.expect("warmup")].allowance(0), 1_000);
    }

    #[test]
    fn bad_rule_files_are_named_errors() {
        for (text, want) in [
            ("[defaults]\nmax_conections = 3", "unknown field"),
            ("[defaults]\nmessage_rate = \"lots\"", "message_rate"),
            ("[[provider]]\nmx_suffixes = [\".x\"]", "missing name"),
            ("[[provider]]\nname = \"x\"", "needs mx_suffixes"),
            ("[[domain]]\npatterns = [\"x\"]", "needs domains"),
            ("[[source]]\nname = \"a\"\nlevel = \"turbo\"", "level"),
            (
                "[[source]]\nname = \"a\"\nwarmup = \"nope\"\nwarmup_started = \"2026-01-01\"",
                "no warmup",
            ),
            (
                "[[source]]\nname = \"a\"\nwarmup = \"standard\"",
                "go together",
            ),
            ("[backoff]\ndecrease_percent = 0", "1..=100"),
            ("[backoff]\ncooldown = \"soon\"", "cooldown"),
            ("[[warmup]]\nname = \"w\"\nsteps = [[0, 5]]", "0 days"),
            ("not toml at all [", ""),
        ] {
            let e = RuleSet::from_toml(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn shipped_rules_parse_and_cover_the_big_providers() {
        let r = RuleSet::shipped();
        for (domain, mx, provider) in [
            ("gmail.com", "gmail-smtp-in.l.google.com", "google"),
            ("workspace.example", "aspmx.l.google.com", "google"),
            (
                "outlook.com",
                "outlook-com.olc.protection.outlook.com",
                "outlook",
            ),
            (
                "contoso.example",
                "contoso-example.mail.protection.outlook.com",
                "office365",
            ),
            ("yahoo.com", "mta5.am0.yahoodns.net", "yahoo"),
            ("aol.com", "mx-aol.mail.gm0.yahoodns.net", "yahoo"),
            ("icloud.com", "mx01.mail.icloud.com", "apple"),
            ("gmx.de", "mx00.emig.gmx.net", "gmx-webde"),
            ("web.de", "mx-ha03.web.de", "gmx-webde"),
            ("mail.ru", "mxs.mail.ru", "mailru"),
            ("yandex.ru", "mx.yandex.ru", "yandex"),
            ("comcast.net", "mx1a1.comcast.net", "comcast"),
            ("orange.fr", "smtp-in.orange.fr", "orange"),
        ] {
            let res = r.resolve(domain, mx);
            assert_eq!(res.rule.kind, RuleKind::Provider, "{domain} via {mx}");
            assert_eq!(res.rule.name, provider, "{domain} via {mx}");
            assert!(res.rule.limits.max_connections.is_some());
            assert!(res.rule.limits.message_rate.is_some());
        }
    }
}
