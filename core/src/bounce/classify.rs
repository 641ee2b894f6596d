//! The reply classifier: an ordered, data-driven rule set compiled into one [`regex::RegexSet`].
//!
//! Input is a [`Diagnostic`]: the SMTP reply code (RFC 5321 §4.2), the enhanced status code (RFC 3463),
//! the reply or error text, the [`Phase`] of the conversation (including [`Phase::Resolve`] and
//! [`Phase::Connect`] for failures before any reply), the sending domain and the receiving domain or MX
//! host. Output is a [`Classification`]: a [`Reason`] in Sisimai's vocabulary, a [`Kind`], an
//! [`Action`] (bounce, or retry after an interval) and whether the traffic shaper should slow down.
//!
//! Rules are TOML (see `default_rules.toml` next to this file for the format and the shipped set):
//! each `[[rule]]` may match on reply codes or code ranges, enhanced codes or their prefixes, a
//! case-insensitive regex on the text, phases and domain suffixes; the first rule whose every condition
//! holds wins. All text regexes are compiled once into a single `RegexSet`, so a reply's text is scanned
//! once whatever the number of rules; the remaining conditions are integer compares. A [`Classifier`] is
//! immutable; [`ClassifierHandle`] swaps in a newly compiled one (`arc-swap`), so reloading never takes a
//! lock on the classifying path.
//!
//! `\b` and `\B` in a rule's text are ASCII word boundaries (`(?-u:\b)`): with Unicode ones the lazy
//! DFA gives up on any non-ASCII text and the set falls back to an engine a thousand times slower
//! (about 600 µs instead of 0.6 for a German reply, `cargo bench --bench bounce non_ascii_reply`). A
//! letter like `é` next to a boundary therefore counts as a non-word character.
//!
//! What it does not do: it does not look at the message body (see [`super::report`] for DSNs), and it
//! keeps no history: counting repeated soft failures is [`super::suppression`]'s job, giving up at the
//! maximum age is [`super::retry`]'s.

#![forbid(unsafe_code)]

use super::reason::{Action, Kind, Reason};
use crate::smtp::{EnhancedCode, Phase};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The default rule set shipped with vmta.
pub const DEFAULT_RULES: &str = include_str!("default_rules.toml");

/// Most rules in one file.
pub const MAX_RULES: usize = 4096;
/// Longest text the classifier scans; longer texts are cut (at a character boundary).
pub const MAX_TEXT: usize = 4096;

/// Everything known about one failure (or success) of one recipient.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diagnostic<'a> {
    /// The three-digit reply code, if a reply was received.
    pub code: Option<u16>,
    /// The RFC 3463 enhanced status code, if any.
    pub enhanced: Option<EnhancedCode>,
    /// The reply text (without code), or the text of a local error (DNS, connection).
    pub text: &'a str,
    /// Where in the conversation it happened, if known.
    pub phase: Option<Phase>,
    /// The sending (envelope sender) domain.
    pub sender_domain: &'a str,
    /// The tenant the message was sent for (empty when unknown).
    pub tenant: &'a str,
    /// The recipient's domain.
    pub recipient_domain: &'a str,
    /// The MX host that answered, if any.
    pub mx_host: &'a str,
}

impl<'a> Diagnostic<'a> {
    /// A diagnostic with a code and text only.
    pub fn reply(code: u16, text: &'a str) -> Diagnostic<'a> {
        Diagnostic {
            code: Some(code),
            text,
            ..Diagnostic::default()
        }
    }

    /// Splits `CODE [X.Y.Z] TEXT` (either part may be missing) into a diagnostic, as `vmta classify`
    /// reads it. A line starting `550-` (a multi-line reply's first line) is accepted too.
    pub fn from_line(line: &'a str) -> Diagnostic<'a> {
        let mut d = Diagnostic::default();
        let mut rest = line.trim_start();
        let b = rest.as_bytes();
        if b.len() >= 3
            && (b'2'..=b'5').contains(&b[0])
            && b[1].is_ascii_digit()
            && b[2].is_ascii_digit()
            && matches!(b.get(3), None | Some(b' ') | Some(b'-') | Some(b'\t'))
        {
            d.code = Some(
                u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0'),
            );
            rest = rest.get(4..).unwrap_or("").trim_start();
        }
        if let Some((e, n)) = EnhancedCode::parse_prefix(rest.as_bytes()) {
            d.enhanced = Some(e);
            rest = rest[n..].trim_start();
        }
        d.text = rest.trim_end();
        d
    }

    /// The class of the failure: 2, 4 or 5 from the reply code, else from the enhanced code.
    pub fn class(&self) -> Option<u8> {
        self.code
            .map(|c| (c / 100) as u8)
            .or(self.enhanced.map(|e| e.class))
    }
}

/// The verdict on a reply: what the retry schedule, the traffic shaper, the suppression list and the
/// events all read (see `default_rules.toml`'s header). [`Classification`] by its older name.
pub type Verdict = Classification;

/// The classifier's answer: the [`Verdict`] on one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// Why.
    pub reason: Reason,
    /// What sort of failure.
    pub kind: Kind,
    /// Bounce or retry (after an interval).
    pub action: Action,
    /// Tell the traffic shaper to slow down towards this destination.
    pub throttle: bool,
    /// How hard, when throttling: the share of its rate the destination's lane keeps, per mille
    /// (500 halves it; `throttle_factor` of the rule or `[policy.throttle] factor`); 0 otherwise.
    pub slow_down: u16,
    /// The index of the rule that matched, `None` for the built-in last resort.
    pub rule: Option<u32>,
}

impl Classification {
    /// The retry interval in seconds, or `None` when the action is not a retry.
    pub fn retry_after_s(&self) -> Option<u64> {
        self.action.retry_after().map(|d| d.as_secs())
    }
}

/// Why a rule file was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesError {
    /// Not valid TOML or not the expected shape.
    Toml(String),
    /// A rule is wrong; `rule` is its 0-based index (or name when it has one).
    Rule {
        /// Which rule.
        rule: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The regexes did not compile together (too big).
    Regex(String),
    /// More than [`MAX_RULES`] rules.
    TooManyRules,
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulesError::Toml(e) => write!(f, "rule file: {e}"),
            RulesError::Rule { rule, problem } => write!(f, "rule {rule}: {problem}"),
            RulesError::Regex(e) => write!(f, "rule regexes: {e}"),
            RulesError::TooManyRules => write!(f, "more than {MAX_RULES} rules"),
        }
    }
}

impl std::error::Error for RulesError {}

// ---------------------------------------------------------------------------------------------------
// The TOML shape.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    policy: PolicyFile,
    #[serde(default)]
    rule: Vec<RuleToml>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Retry interval per reason name.
    #[serde(default)]
    retry: HashMap<String, String>,
    /// Retry interval per reply code (wins over the reason's).
    #[serde(default)]
    code_retry: HashMap<String, String>,
    /// Reasons that retry even on a permanent (5xx) reply.
    #[serde(default)]
    retry_permanent: Vec<String>,
    /// Interval used when neither code nor reason has one.
    default_retry: Option<String>,
    /// Shortest allowed interval.
    min_retry: Option<String>,
    /// Longest allowed interval.
    max_retry: Option<String>,
    /// Which temporary failures ask the sender to slow down (besides rules with `throttle`).
    #[serde(default)]
    throttle: ThrottleFile,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThrottleFile {
    #[serde(default)]
    codes: Vec<String>,
    #[serde(default)]
    status: Vec<String>,
    text: Option<String>,
    #[serde(default)]
    never: Vec<String>,
    factor: Option<f64>,
}

/// `[policy.throttle]` compiled: a 4xx reply whose code, enhanced code or text says so throttles,
/// unless its reason is one waiting does not help.
#[derive(Debug, Default, Clone)]
struct Throttle {
    codes: Vec<(u16, u16)>,
    status: Vec<StatusPattern>,
    text: Option<regex::Regex>,
    never: Vec<Reason>,
    /// The share of the rate a throttled lane keeps, per mille.
    factor: u16,
}

impl Throttle {
    fn says(&self, d: &Diagnostic<'_>, reason: Reason) -> bool {
        if d.class() != Some(4) || self.never.contains(&reason) {
            return false;
        }
        d.code
            .is_some_and(|c| self.codes.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)))
            || d.enhanced
                .is_some_and(|e| self.status.iter().any(|p| p.matches(e)))
            || self
                .text
                .as_ref()
                .is_some_and(|t| t.is_match(&d.text[..floor_char_boundary(d.text, MAX_TEXT)]))
    }
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    let mut i = at;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: Option<String>,
    reason: String,
    kind: Option<String>,
    action: Option<String>,
    retry_after: Option<String>,
    #[serde(default)]
    throttle: bool,
    throttle_factor: Option<f64>,
    text: Option<String>,
    #[serde(default)]
    code: Vec<String>,
    #[serde(default)]
    status: Vec<String>,
    #[serde(default)]
    phase: Vec<String>,
    #[serde(default)]
    not_phase: Vec<String>,
    /// Match only when there is no reply code (a failure before any reply).
    no_code: Option<bool>,
    #[serde(default)]
    receiver: Vec<String>,
    #[serde(default)]
    sender: Vec<String>,
    #[serde(default)]
    tenant: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------
// The compiled form.

#[derive(Debug, Clone, Copy)]
struct StatusPattern {
    class: Option<u8>,
    subject: Option<u16>,
    detail: Option<u16>,
}

impl StatusPattern {
    fn parse(s: &str) -> Option<StatusPattern> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        let any = |p: &str| p == "x" || p == "X" || p == "*";
        let class = match parts[0] {
            p if any(p) => None,
            "2" => Some(2),
            "4" => Some(4),
            "5" => Some(5),
            _ => return None,
        };
        let num = |i: usize| -> Option<Option<u16>> {
            match parts.get(i) {
                None => Some(None),
                Some(p) if any(p) => Some(None),
                Some(p) => p.parse::<u16>().ok().filter(|n| *n <= 999).map(Some),
            }
        };
        Some(StatusPattern {
            class,
            subject: num(1)?,
            detail: num(2)?,
        })
    }

    fn matches(&self, e: EnhancedCode) -> bool {
        self.class.is_none_or(|c| c == e.class)
            && self.subject.is_none_or(|s| s == e.subject)
            && self.detail.is_none_or(|d| d == e.detail)
    }
}

/// `550`, `55x`, `5xx`, `421-451`.
fn parse_code_pattern(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let a: u16 = a.trim().parse().ok()?;
        let b: u16 = b.trim().parse().ok()?;
        return ((200..=599).contains(&a) && (a..=599).contains(&b)).then_some((a, b));
    }
    if s.len() != 3 {
        return None;
    }
    let lo: String = s
        .chars()
        .map(|c| if c == 'x' || c == 'X' { '0' } else { c })
        .collect();
    let hi: String = s
        .chars()
        .map(|c| if c == 'x' || c == 'X' { '9' } else { c })
        .collect();
    let lo: u16 = lo.parse().ok()?;
    let hi: u16 = hi.parse().ok()?;
    ((200..=599).contains(&lo) && hi <= 599).then_some((lo, hi))
}

/// Parses `90s`, `15m`, `20min`, `24h`, `2d` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult).map(Duration::from_secs)
}

#[derive(Debug, Clone)]
enum RuleAction {
    Default,
    Bounce,
    Retry,
    None,
}

#[derive(Debug, Clone)]
struct Rule {
    name: Option<String>,
    reason: Reason,
    kind: Option<Kind>,
    action: RuleAction,
    retry_after: Option<Duration>,
    throttle: bool,
    /// How hard this rule throttles (per mille kept), if it says.
    throttle_factor: Option<u16>,
    /// Index into the regex set.
    text: Option<usize>,
    codes: Vec<(u16, u16)>,
    no_code: Option<bool>,
    status: Vec<StatusPattern>,
    phases: Vec<Phase>,
    not_phases: Vec<Phase>,
    receiver: Vec<String>,
    sender: Vec<String>,
    tenant: Vec<String>,
}

fn domain_matches(suffixes: &[String], names: &[&str]) -> bool {
    names.iter().any(|name| {
        let name = name.trim_end_matches('.');
        suffixes.iter().any(|s| {
            name.len() >= s.len()
                && name[name.len() - s.len()..].eq_ignore_ascii_case(s)
                && (name.len() == s.len()
                    || s.starts_with('.')
                    || name.as_bytes()[name.len() - s.len() - 1] == b'.')
        })
    })
}

impl Rule {
    fn matches(&self, d: &Diagnostic<'_>, text_hits: &regex::SetMatches) -> bool {
        if let Some(want) = self.no_code
            && want != d.code.is_none()
        {
            return false;
        }
        if !self.codes.is_empty() {
            match d.code {
                Some(c) if self.codes.iter().any(|&(lo, hi)| (lo..=hi).contains(&c)) => {}
                _ => return false,
            }
        }
        if !self.status.is_empty() {
            match d.enhanced {
                Some(e) if self.status.iter().any(|p| p.matches(e)) => {}
                _ => return false,
            }
        }
        if !self.phases.is_empty() {
            match d.phase {
                Some(p) if self.phases.contains(&p) => {}
                _ => return false,
            }
        }
        if let Some(p) = d.phase
            && self.not_phases.contains(&p)
        {
            return false;
        }
        if !self.receiver.is_empty()
            && !domain_matches(&self.receiver, &[d.recipient_domain, d.mx_host])
        {
            return false;
        }
        if !self.sender.is_empty() && !domain_matches(&self.sender, &[d.sender_domain]) {
            return false;
        }
        if !self.tenant.is_empty() && !self.tenant.iter().any(|t| t == d.tenant) {
            return false;
        }
        if let Some(i) = self.text
            && !text_hits.matched(i)
        {
            return false;
        }
        true
    }
}

/// Retry intervals: per reply code, per reason, a default, and the bounds they are clamped to.
#[derive(Debug, Clone)]
pub struct RetryIntervals {
    by_code: HashMap<u16, Duration>,
    by_reason: HashMap<Reason, Duration>,
    retry_permanent: Vec<Reason>,
    default: Duration,
    min: Duration,
    max: Duration,
}

impl RetryIntervals {
    /// The interval for a failure with this code and reason, clamped to the bounds.
    pub fn interval(&self, code: Option<u16>, reason: Reason) -> Duration {
        let d = code
            .and_then(|c| self.by_code.get(&c).copied())
            .or_else(|| self.by_reason.get(&reason).copied())
            .unwrap_or(self.default);
        self.clamp(d)
    }

    /// Clamps an interval to the configured bounds (15 minutes to 30 hours by default).
    pub fn clamp(&self, d: Duration) -> Duration {
        d.clamp(self.min, self.max)
    }

    /// The longest interval allowed.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// Whether a permanent (5xx) failure with this reason is retried anyway (mailbox full).
    pub fn retries_permanent(&self, reason: Reason) -> bool {
        self.retry_permanent.contains(&reason)
    }
}

/// A compiled rule set. Immutable; build a new one to change rules.
#[derive(Debug, Clone)]
pub struct Classifier {
    rules: Vec<Rule>,
    set: regex::RegexSet,
    intervals: RetryIntervals,
    throttle: Throttle,
}

fn rule_error(i: usize, name: &Option<String>, problem: impl Into<String>) -> RulesError {
    RulesError::Rule {
        rule: name.clone().unwrap_or_else(|| format!("#{i}")),
        problem: problem.into(),
    }
}

/// `pattern` with each `\b` and `\B` made an ASCII word boundary (see the module documentation);
/// escaped backslashes, character classes and the `\b{start}` family are left as they are.
fn ascii_word_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    let mut class = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '[' => class += 1,
            ']' => class = class.saturating_sub(1),
            _ => {}
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(b @ ('b' | 'B')) if class == 0 && chars.peek() != Some(&'{') => {
                out.push_str("(?-u:\\");
                out.push(b);
                out.push(')');
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

impl Classifier {
    /// The default rule set (compiled once per process, then cloned: the compiled patterns are
    /// shared).
    pub fn default_rules() -> Classifier {
        static DEFAULT: std::sync::OnceLock<Classifier> = std::sync::OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Classifier::from_toml(DEFAULT_RULES).expect("the shipped rule set compiles")
            })
            .clone()
    }

    /// Compiles a rule file.
    pub fn from_toml(src: &str) -> Result<Classifier, RulesError> {
        let file: RuleFile = toml::from_str(src).map_err(|e| RulesError::Toml(e.to_string()))?;
        if file.rule.len() > MAX_RULES {
            return Err(RulesError::TooManyRules);
        }
        let mut patterns = Vec::new();
        let mut rules = Vec::with_capacity(file.rule.len());
        for (i, r) in file.rule.into_iter().enumerate() {
            let err = |p: String| rule_error(i, &r.name, p);
            let reason = Reason::parse(&r.reason)
                .ok_or_else(|| err(format!("unknown reason {:?}", r.reason)))?;
            let kind = match &r.kind {
                None => None,
                Some(k) => Some(Kind::parse(k).ok_or_else(|| err(format!("unknown kind {k:?}")))?),
            };
            let action = match r.action.as_deref() {
                None => RuleAction::Default,
                Some("bounce") => RuleAction::Bounce,
                Some("retry") => RuleAction::Retry,
                Some("none") => RuleAction::None,
                Some(a) => return Err(err(format!("unknown action {a:?}"))),
            };
            let retry_after = match &r.retry_after {
                None => None,
                Some(s) => {
                    Some(parse_duration(s).ok_or_else(|| err(format!("bad duration {s:?}")))?)
                }
            };
            let text = match &r.text {
                None => None,
                Some(t) => {
                    let t = ascii_word_boundaries(t);
                    regex::RegexBuilder::new(&t)
                        .case_insensitive(true)
                        .build()
                        .map_err(|e| err(format!("regex: {e}")))?;
                    patterns.push(t);
                    Some(patterns.len() - 1)
                }
            };
            let codes = r
                .code
                .iter()
                .map(|c| {
                    parse_code_pattern(c).ok_or_else(|| err(format!("bad code pattern {c:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let status = r
                .status
                .iter()
                .map(|c| {
                    StatusPattern::parse(c).ok_or_else(|| err(format!("bad status pattern {c:?}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let phase = |v: &Vec<String>| {
                v.iter()
                    .map(|p| Phase::parse(p).ok_or_else(|| err(format!("unknown phase {p:?}"))))
                    .collect::<Result<Vec<_>, _>>()
            };
            let lower = |v: &Vec<String>| {
                v.iter()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            };
            rules.push(Rule {
                reason,
                kind,
                action,
                retry_after,
                throttle: r.throttle,
                throttle_factor: r
                    .throttle_factor
                    .map(|f| {
                        factor_permille(f).ok_or_else(|| {
                            err(format!("throttle_factor {f} is not between 0.05 and 0.95"))
                        })
                    })
                    .transpose()?,
                text,
                codes,
                no_code: r.no_code,
                status,
                phases: phase(&r.phase)?,
                not_phases: phase(&r.not_phase)?,
                receiver: lower(&r.receiver),
                sender: lower(&r.sender),
                tenant: r.tenant.iter().map(|t| t.trim().to_string()).collect(),
                name: r.name,
            });
        }
        let set = regex::RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .size_limit(64 << 20)
            .dfa_size_limit(16 << 20)
            .build()
            .map_err(|e| RulesError::Regex(e.to_string()))?;
        let intervals = compile_policy(&file.policy)?;
        let throttle = compile_throttle(&file.policy.throttle)?;
        Ok(Classifier {
            rules,
            set,
            intervals,
            throttle,
        })
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (everything falls to the built-in last resort).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The name of rule `i`, if it has one.
    pub fn rule_name(&self, i: u32) -> Option<&str> {
        self.rules.get(i as usize)?.name.as_deref()
    }

    /// The retry intervals of this rule set.
    pub fn intervals(&self) -> &RetryIntervals {
        &self.intervals
    }

    /// Classifies one diagnostic.
    pub fn classify(&self, d: &Diagnostic<'_>) -> Classification {
        let mut text = d.text;
        if text.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text = &text[..cut];
        }
        let hits = self.set.matches(text);
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(d, &hits) {
                return self.finish(
                    d,
                    rule.reason,
                    rule.kind,
                    &rule.action,
                    rule.retry_after,
                    (rule.throttle, rule.throttle_factor),
                    Some(i as u32),
                );
            }
        }
        // Last resort: only the class is known.
        let reason = match d.class() {
            Some(2) => Reason::Delivered,
            _ => Reason::Undefined,
        };
        self.finish(
            d,
            reason,
            None,
            &RuleAction::Default,
            None,
            (false, None),
            None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        d: &Diagnostic<'_>,
        reason: Reason,
        kind: Option<Kind>,
        action: &RuleAction,
        retry_after: Option<Duration>,
        (throttle, factor): (bool, Option<u16>),
        rule: Option<u32>,
    ) -> Classification {
        let kind = kind.unwrap_or_else(|| reason.default_kind());
        let interval = || {
            retry_after
                .map(|r| self.intervals.clamp(r))
                .unwrap_or_else(|| self.intervals.interval(d.code, reason))
        };
        let action = match action {
            RuleAction::Bounce => Action::Bounce,
            RuleAction::Retry => Action::Retry(interval()),
            RuleAction::None => Action::None,
            RuleAction::Default => match (d.class(), reason) {
                (Some(2), _) | (_, Reason::Delivered | Reason::Vacation | Reason::Feedback) => {
                    Action::None
                }
                (Some(4), _) => Action::Retry(interval()),
                // A failure before any reply (DNS, connect): retry unless the rule says the address is bad.
                (None, _) if matches!(kind, Kind::Transient | Kind::Soft) => {
                    Action::Retry(interval())
                }
                (_, r) if self.intervals.retries_permanent(r) => Action::Retry(interval()),
                (
                    None,
                    Reason::RateLimited
                    | Reason::NetworkError
                    | Reason::SystemError
                    | Reason::SystemFull,
                ) => Action::Retry(interval()),
                _ => Action::Bounce,
            },
        };
        let throttle =
            throttle || matches!(action, Action::Retry(_)) && self.throttle.says(d, reason);
        Classification {
            reason,
            kind,
            action,
            throttle,
            slow_down: if throttle {
                factor.unwrap_or(self.throttle.factor)
            } else {
                0
            },
            rule,
        }
    }
}

/// A throttle factor (0.05 to 0.95 of the rate kept) in per mille.
fn factor_permille(f: f64) -> Option<u16> {
    (0.05..=0.95)
        .contains(&f)
        .then(|| (f * 1000.0).round() as u16)
}

fn compile_throttle(t: &ThrottleFile) -> Result<Throttle, RulesError> {
    let err = |problem: String| RulesError::Rule {
        rule: "policy.throttle".into(),
        problem,
    };
    Ok(Throttle {
        codes: t
            .codes
            .iter()
            .map(|c| parse_code_pattern(c).ok_or_else(|| err(format!("bad code pattern {c:?}"))))
            .collect::<Result<_, _>>()?,
        status: t
            .status
            .iter()
            .map(|c| {
                StatusPattern::parse(c).ok_or_else(|| err(format!("bad status pattern {c:?}")))
            })
            .collect::<Result<_, _>>()?,
        text: t
            .text
            .as_deref()
            .map(|x| {
                regex::RegexBuilder::new(x)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| err(e.to_string()))
            })
            .transpose()?,
        never: t
            .never
            .iter()
            .map(|r| Reason::parse(r).ok_or_else(|| err(format!("unknown reason {r:?}"))))
            .collect::<Result<_, _>>()?,
        factor: match t.factor {
            None => 500,
            Some(f) => factor_permille(f)
                .ok_or_else(|| err(format!("factor {f} is not between 0.05 and 0.95")))?,
        },
    })
}

fn compile_policy(p: &PolicyFile) -> Result<RetryIntervals, RulesError> {
    let dur = |what: &str, s: &str| {
        parse_duration(s).ok_or_else(|| RulesError::Rule {
            rule: format!("policy.{what}"),
            problem: format!("bad duration {s:?}"),
        })
    };
    let mut by_reason = HashMap::new();
    for (k, v) in &p.retry {
        let r = Reason::parse(k).ok_or_else(|| RulesError::Rule {
            rule: "policy.retry".into(),
            problem: format!("unknown reason {k:?}"),
        })?;
        by_reason.insert(r, dur("retry", v)?);
    }
    let mut by_code = HashMap::new();
    for (k, v) in &p.code_retry {
        let c: u16 = k
            .parse()
            .ok()
            .filter(|c| (200..=599).contains(c))
            .ok_or_else(|| RulesError::Rule {
                rule: "policy.code_retry".into(),
                problem: format!("bad code {k:?}"),
            })?;
        by_code.insert(c, dur("code_retry", v)?);
    }
    let retry_permanent = p
        .retry_permanent
        .iter()
        .map(|k| {
            Reason::parse(k).ok_or_else(|| RulesError::Rule {
                rule: "policy.retry_permanent".into(),
                problem: format!("unknown reason {k:?}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let min = p
        .min_retry
        .as_deref()
        .map(|s| dur("min_retry", s))
        .transpose()?
        .unwrap_or(Duration::from_secs(5 * 60));
    let max = p
        .max_retry
        .as_deref()
        .map(|s| dur("max_retry", s))
        .transpose()?
        .unwrap_or(Duration::from_secs(30 * 3600));
    if min > max {
        return Err(RulesError::Rule {
            rule: "policy".into(),
            problem: "min_retry is longer than max_retry".into(),
        });
    }
    let default = p
        .default_retry
        .as_deref()
        .map(|s| dur("default_retry", s))
        .transpose()?
        .unwrap_or(Duration::from_secs(3600));
    Ok(RetryIntervals {
        by_code,
        by_reason,
        retry_permanent,
        default,
        min,
        max,
    })
}

/// A classifier that can be replaced while other threads classify with it.
///
/// Readers call [`ClassifierHandle::load`] (a lock-free `arc-swap` load) and classify with the snapshot;
/// [`ClassifierHandle::reload`] compiles a new rule file off the hot path and swaps it in. A rule file
/// that does not compile leaves the running rules in place.
#[derive(Debug)]
pub struct ClassifierHandle {
    current: arc_swap::ArcSwap<Classifier>,
    /// Bumped by every reload: caches of verdicts compare it.
    generation: std::sync::atomic::AtomicU64,
}

impl ClassifierHandle {
    /// A handle holding `c`.
    pub fn new(c: Classifier) -> ClassifierHandle {
        ClassifierHandle {
            current: arc_swap::ArcSwap::from_pointee(c),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many times the rules were replaced: a verdict cached under another generation is stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The rules in force now.
    pub fn load(&self) -> Arc<Classifier> {
        self.current.load_full()
    }

    /// Classifies with the rules in force now.
    pub fn classify(&self, d: &Diagnostic<'_>) -> Classification {
        self.current.load().classify(d)
    }

    /// Compiles `src` and, if it compiles, makes it the rules in force.
    pub fn reload(&self, src: &str) -> Result<(), RulesError> {
        let c = Classifier::from_toml(src)?;
        self.store(c);
        Ok(())
    }

    /// Replaces the rules with an already compiled set.
    pub fn store(&self, c: Classifier) {
        self.current.store(Arc::new(c));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(c: &Classifier, s: &str) -> Classification {
        c.classify(&Diagnostic::from_line(s))
    }

    #[test]
    fn word_boundaries_become_ascii() {
        assert_eq!(
            ascii_word_boundaries(r"try again in \d+ ?(s|min)\b"),
            r"try again in \d+ ?(s|min)(?-u:\b)"
        );
        assert_eq!(
            ascii_word_boundaries(r"\Bx\\b[\b]\b{start}"),
            r"(?-u:\B)x\\b[\b]\b{start}"
        );
        assert_eq!(ascii_word_boundaries("plain"), "plain");
        // Replies with non-ASCII text are classified (by the lazy DFA, not the slow fall-back) and
        // boundaries still hold next to ASCII letters.
        let c = Classifier::default_rules();
        let german = line(
            &c,
            "550 5.1.1 <jürgen@beispiel.de>: Empfängeradresse unbekannt, user unknown",
        );
        assert_eq!(german.reason, Reason::UserUnknown, "{german:?}");
        let custom =
            Classifier::from_toml("[[rule]]\ntext = '''\\bblöd\\b'''\nreason = \"blocked\"\n")
                .unwrap();
        assert_eq!(line(&custom, "550 ganz blöd hier").reason, Reason::Blocked);
        assert_ne!(line(&custom, "550 ganzblöd hier").reason, Reason::Blocked);
    }

    #[test]
    fn from_line_splits() {
        let d = Diagnostic::from_line("550 5.1.1 <a@b>: Recipient address rejected");
        assert_eq!(d.code, Some(550));
        assert_eq!(d.enhanced, EnhancedCode::new(5, 1, 1));
        assert_eq!(d.text, "<a@b>: Recipient address rejected");
        let d = Diagnostic::from_line("Host or domain name not found");
        assert_eq!(d.code, None);
        assert_eq!(d.text, "Host or domain name not found");
        let d = Diagnostic::from_line("5.7.1 blocked");
        assert_eq!((d.code, d.enhanced.map(|e| e.subject)), (None, Some(7)));
        let d = Diagnostic::from_line("5500 nope");
        assert_eq!(d.code, None);
    }

    #[test]
    fn user_unknown_is_hard_bounce() {
        let c = Classifier::default_rules();
        let r = line(
            &c,
            "550 5.1.1 The email account that you tried to reach does not exist.",
        );
        assert_eq!(
            (r.reason, r.kind, r.action),
            (Reason::UserUnknown, Kind::Hard, Action::Bounce)
        );
    }

    #[test]
    fn mailbox_full_5xx_retries_in_a_day() {
        let c = Classifier::default_rules();
        let r = line(
            &c,
            "552 5.2.2 The email account that you tried to reach is over quota.",
        );
        assert_eq!(r.reason, Reason::MailboxFull);
        assert_eq!(r.action, Action::Retry(Duration::from_secs(24 * 3600)));
        let r = line(&c, "550 Mailbox full");
        assert_eq!(r.reason, Reason::MailboxFull);
        assert_eq!(r.action, Action::Retry(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn code_421_retries_in_20_minutes() {
        let c = Classifier::default_rules();
        let r = line(
            &c,
            "421 Service not available, closing transmission channel",
        );
        assert_eq!(r.action, Action::Retry(Duration::from_secs(20 * 60)));
    }

    #[test]
    fn unclear_554_retries_in_a_day() {
        let c = Classifier::default_rules();
        let r = line(&c, "554 Transaction failed");
        assert_eq!(r.action, Action::Retry(Duration::from_secs(24 * 3600)));
        let r = line(
            &c,
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        );
        assert_eq!((r.reason, r.action), (Reason::Blocked, Action::Bounce));
    }

    #[test]
    fn rate_limit_throttles() {
        let c = Classifier::default_rules();
        let r = line(
            &c,
            "421 4.7.0 Try again later, closing connection. (rate limited)",
        );
        assert_eq!(r.reason, Reason::RateLimited);
        assert!(r.throttle);
        assert!(matches!(r.action, Action::Retry(_)));
        let r = line(
            &c,
            "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
        );
        // One mailbox's rate: retried with backoff, but the destination does not ask the sender
        // to slow down.
        assert_eq!(r.reason, Reason::RateLimited);
        assert!(!r.throttle);
        let r = line(&c, "452 4.5.3 Too many recipients");
        assert!(!r.throttle, "{r:?}");
        // [policy.throttle]: any 421 but greylisting and the like, a 4.7.x, a rate-limit text.
        for (reply, want) in [
            (
                "421 Service not available, closing transmission channel",
                true,
            ),
            ("451 4.7.500 Server busy. Please try again later", true),
            ("451 Too many messages from your IP, slow down", true),
            ("421 4.7.0 Greylisted, please try again later", false),
            ("450 4.7.1 SPF temporary error, try again later", false),
            (
                "451 4.7.0 Temporary authentication failure (DKIM lookup)",
                false,
            ),
            ("452 4.3.1 Insufficient system storage", false),
        ] {
            assert_eq!(line(&c, reply).throttle, want, "{reply}");
        }
    }

    #[test]
    fn the_verdict_says_how_hard_to_slow_down() {
        let c = Classifier::default_rules();
        assert_eq!(line(&c, "421 4.7.0 Too many connections").slow_down, 500);
        assert_eq!(
            line(&c, "452 4.3.1 Insufficient system storage").slow_down,
            0
        );
        let rules = Classifier::from_toml(
            "[policy.throttle]\ncodes = [\"421\"]\nfactor = 0.75\n\
             [[rule]]\nname = \"complaints\"\nreason = \"badreputation\"\nthrottle = true\n\
             throttle_factor = 0.25\ntext = 'complaints'\n",
        )
        .unwrap();
        assert_eq!(
            line(&rules, "421 4.7.0 deferred: user complaints").slow_down,
            250
        );
        assert_eq!(
            line(&rules, "421 4.7.0 Too many connections").slow_down,
            750
        );
        for bad in ["factor = 1.5", "factor = 0.0"] {
            let e = Classifier::from_toml(&format!("[policy.throttle]\n{bad}\n")).unwrap_err();
            assert!(e.to_string().contains("between 0.05 and 0.95"), "{e}");
        }
    }

    #[test]
    fn intervals_are_bounded() {
        let c = Classifier::default_rules();
        for &reason in Reason::ALL {
            let d = c.intervals().interval(Some(450), reason);
            // Greylisting alone retries after 5 minutes; every other reason waits 15 or more.
            let min = if reason == Reason::Greylisted { 5 } else { 15 };
            assert!(
                d >= Duration::from_secs(min * 60) && d <= Duration::from_secs(30 * 3600),
                "{reason}: {d:?}"
            );
        }
    }

    #[test]
    fn phase_and_domains() {
        let src = r#"
            [[rule]]
            reason = "filtered"
            text = "user unknown"
            phase = ["end-of-data"]
            [[rule]]
            reason = "userunknown"
            text = "user unknown"
            receiver = ["example.net"]
            [[rule]]
            reason = "rejected"
            code = ["55x"]
            status = ["x.1.8"]
        "#;
        let c = Classifier::from_toml(src).unwrap();
        let mut d = Diagnostic::reply(550, "User unknown");
        d.phase = Some(Phase::EndOfData);
        assert_eq!(c.classify(&d).reason, Reason::Filtered);
        d.phase = Some(Phase::Rcpt);
        assert_eq!(c.classify(&d).reason, Reason::Undefined);
        d.mx_host = "mx1.EXAMPLE.net";
        assert_eq!(c.classify(&d).reason, Reason::UserUnknown);
        d.mx_host = "mx1.notexample.net";
        assert_eq!(c.classify(&d).reason, Reason::Undefined);
        let d = Diagnostic::from_line("553 5.1.8 sender domain does not exist");
        assert_eq!(c.classify(&d).reason, Reason::Rejected);
    }

    #[test]
    fn bad_rules_are_named() {
        assert!(matches!(
            Classifier::from_toml("[[rule]]\nreason = \"nope\""),
            Err(RulesError::Rule { .. })
        ));
        assert!(matches!(
            Classifier::from_toml("[[rule]]\nreason = \"blocked\"\ntext = \"(\""),
            Err(RulesError::Rule { .. })
        ));
        assert!(matches!(
            Classifier::from_toml("[[rule]]\nreason = \"blocked\"\ncode = [\"6xx\"]"),
            Err(RulesError::Rule { .. })
        ));
        assert!(matches!(
            Classifier::from_toml("[[rule]]\nreason = \"blocked\"\nfoo = 1"),
            Err(RulesError::Toml(_))
        ));
        assert!(matches!(
            Classifier::from_toml("[[rule]"),
            Err(RulesError::Toml(_))
        ));
    }

    #[test]
    fn reload_swaps_rules() {
        let h = ClassifierHandle::new(
            Classifier::from_toml("[[rule]]\nreason = \"blocked\"\ncode = [\"5xx\"]").unwrap(),
        );
        assert_eq!(
            h.classify(&Diagnostic::reply(550, "x")).reason,
            Reason::Blocked
        );
        h.reload("[[rule]]\nreason = \"userunknown\"\ncode = [\"5xx\"]")
            .unwrap();
        assert_eq!(
            h.classify(&Diagnostic::reply(550, "x")).reason,
            Reason::UserUnknown
        );
        assert!(h.reload("[[rule]]\nreason = \"nope\"").is_err());
        assert_eq!(
            h.classify(&Diagnostic::reply(550, "x")).reason,
            Reason::UserUnknown
        );
    }

    #[test]
    fn failures_before_any_reply() {
        let c = Classifier::default_rules();
        let mut d = Diagnostic {
            text: "connect to mx.example.com[192.0.2.1]:25: Connection refused",
            phase: Some(Phase::Connect),
            ..Diagnostic::default()
        };
        let r = c.classify(&d);
        assert_eq!(r.reason, Reason::NetworkError);
        assert!(matches!(r.action, Action::Retry(_)));
        d.text = "Host or domain name not found. Name service error for name=example.invalid type=MX: Host not found, try again";
        d.phase = Some(Phase::Resolve);
        let r = c.classify(&d);
        assert_eq!(r.reason, Reason::NetworkError);
        assert!(matches!(r.action, Action::Retry(_)));
        d.text = "Host or domain name not found. Name service error for name=example.invalid type=MX: Host not found";
        assert_eq!(c.classify(&d).reason, Reason::HostUnknown);
    }

    #[test]
    fn provider_replies() {
        let c = Classifier::default_rules();
        let cases = [
            (
                "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
                Reason::Blocked,
            ),
            (
                "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints",
                Reason::BadReputation,
            ),
            (
                "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0]",
                Reason::UserUnknown,
            ),
            (
                "550 5.7.26 This message does not have authentication information or fails to pass authentication checks (SPF or DKIM).",
                Reason::AuthFailure,
            ),
            (
                "550 5.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]",
                Reason::RequirePtr,
            ),
            (
                "552 5.3.4 Your message exceeded Google's message size limits.",
                Reason::MesgTooBig,
            ),
            (
                "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using Barracuda Reputation",
                Reason::Blocked,
            ),
            (
                "550 5.1.1 <x@mail.ru>: Recipient address rejected: User unknown in virtual mailbox table",
                Reason::UserUnknown,
            ),
            (
                "554 5.7.1 [2] Message rejected under suspicion of SPAM",
                Reason::SpamDetected,
            ),
            (
                "550 Requested action not taken: mailbox unavailable",
                Reason::UserUnknown,
            ),
            ("554 Relay access denied", Reason::NoRelaying),
            (
                "556 5.1.10 Recipient address has null MX",
                Reason::NotAccept,
            ),
        ];
        for (line, want) in cases {
            let mut d = Diagnostic::from_line(line);
            d.phase = Some(Phase::Rcpt);
            assert_eq!(c.classify(&d).reason, want, "{line}");
        }
    }

    #[test]
    fn kddi_reception_filter_is_not_an_unknown_user() {
        let c = Classifier::default_rules();
        let mut d = Diagnostic::from_line("550 : User unknown");
        d.recipient_domain = "ezweb.ne.jp";
        assert_eq!(c.classify(&d).reason, Reason::Filtered);
        let mut d = Diagnostic::from_line("550 <someone@ezweb.ne.jp>: User unknown");
        d.recipient_domain = "ezweb.ne.jp";
        assert_eq!(c.classify(&d).reason, Reason::UserUnknown);
    }

    #[test]
    fn spectrum_aup_codes() {
        let c = Classifier::default_rules();
        for (line, want) in [
            (
                "550 5.1.0 sender rejected. AUP#In-1310",
                Reason::RateLimited,
            ),
            ("554 5.7.1 blocked AUP#I-1000", Reason::Blocked),
            ("550 5.7.1 AUP#O-1100 rDNS", Reason::RequirePtr),
            ("552 5.3.4 AUP#I-1530", Reason::MesgTooBig),
        ] {
            assert_eq!(
                c.classify(&Diagnostic::from_line(line)).reason,
                want,
                "{line}"
            );
        }
    }

    #[test]
    fn orange_and_laposte_codes() {
        let c = Classifier::default_rules();
        for (line, want) in [
            (
                "550 5.2.0 Mail rejete. Mail rejected. OFR_506 [506]",
                Reason::SpamDetected,
            ),
            (
                "421 4.2.0 Service refuse. Veuillez essayer plus tard. OFR005_505 [505]",
                Reason::SystemError,
            ),
            (
                "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. LPN416",
                Reason::UserUnknown,
            ),
            (
                "554 5.7.1 <h[192.0.2.1]:4930>: Client host rejected: LPN000_630",
                Reason::PolicyViolation,
            ),
            (
                "421 Too many connections, slow down. OFR005_104 [104]",
                Reason::RateLimited,
            ),
        ] {
            assert_eq!(
                c.classify(&Diagnostic::from_line(line)).reason,
                want,
                "{line}"
            );
        }
    }

    #[test]
    fn provider_phrases_added_for_the_corpus_families() {
        let c = Classifier::default_rules();
        for (line, want) in [
            (
                "Your email to group g@example.com was rejected due to spam classification. Set up SPF records",
                Reason::SpamDetected,
            ),
            (
                "501 5.7.1 This system is not configured to relay mail from <a@b.example> to <c@d.example>",
                Reason::NoRelaying,
            ),
            ("500 Line limit exceeded", Reason::MesgTooBig),
            (
                "Unable to deliver message to <a@b.example>. Please check if address is correct.",
                Reason::UserUnknown,
            ),
            ("554 Host network not allowed", Reason::PolicyViolation),
        ] {
            assert_eq!(
                c.classify(&Diagnostic::from_line(line)).reason,
                want,
                "{line}"
            );
        }
    }

    #[test]
    fn huge_and_odd_text_is_fine() {
        let c = Classifier::default_rules();
        let big = "é".repeat(10_000);
        let _ = c.classify(&Diagnostic::reply(550, &big));
        let _ = c.classify(&Diagnostic::default());
    }
}
