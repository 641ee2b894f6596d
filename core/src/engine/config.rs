//! Engine configuration: a TOML file or string (serde), or a Rust builder ([`EngineConfig::builder`]).
//!
//! A running engine takes a changed configuration with `Engine::reload` (C: `vmta_engine_reload`;
//! `vmta serve`: SIGHUP, `vmta reload` or `POST /api/v1/reload`):
//!
//! | reloads at once | applies to |
//! |---|---|
//! | `[shaping]` (`rules`, `rules_file`) | the next token taken, connection opened, cap counted |
//! | `[retry]` `rules` / `rules_file` (bounce rules) | the next reply classified |
//! | `[[tenant]]` (approved senders, DKIM keys, limits, locks) | the next message admitted |
//! | `vmta serve`: `[[user]]`, `[[api_token]]`, certificate files | the next login, request, handshake |
//!
//! Every other section needs a restart (`[engine]` with the spool and shard count, `[dns]`, `[tls]`,
//! `[suppression]`, `[verp]`, `[smarthost]`, ...; in `vmta serve` also `[serve]`, the listeners'
//! addresses and limits, and `[http]` but for its tokens): it is named in the reload's report and
//! stays as it was, and so does turning tenants on or off. A configuration that does not check is
//! refused whole, with the key at fault, and nothing changes.
//!
//! Every option, its default and its meaning:
//!
//! ```toml
//! [engine]
//! shards = 0                  # shard threads; 0 = one per CPU
//! pin_shards = true           # pin shard i to CPU i % CPUs
//! spool_dir = "vmta-spool"    # one sub-directory per shard: shard-0, shard-1, ...
//! spool_segment_mb = 64       # size of a new spool segment file, pre-allocated (1 to 4096)
//! durability = "sync"         # "sync" (fdatasync + group commit), "interval", "none"
//! durability_interval_ms = 50 # flush period for "interval"
//! group_commit_window_us = 2000 # "sync": state-only commits of a shard at least this far apart
//! submission_queue = 4096     # bounded ring per shard; full = Busy for the submitter
//! helo_name = "localhost"     # EHLO name when a source has none
//! max_recipients_per_transaction = 100
//! active_recipients = 100000  # per shard: recipients held in memory ready to send; the rest wait in the spool
//! event_log = ""              # path of a JSON-lines event log; empty = none. Each line is written
//!                             # ahead of its spool record: every final outcome in it exactly once,
//!                             # across kill -9 too (see engine::eventlog); `<shard dir>/events.mark`
//!                             # says where each shard's last lines went
//!
//! [dns]
//! nameservers = []            # "host:port" list; empty = /etc/resolv.conf
//! timeout_ms = 2000           # per try
//! attempts = 2                # rounds over the nameservers
//! min_ttl_s = 30              # cached records live at least this long ...
//! max_ttl_s = 86400           # ... and at most this long
//! prefer_ipv6 = false         # address order of each MX host
//!
//! [delivery]
//! port = 25                   # destination SMTP port (tests and labs use another)
//! connect_timeout_s = 30
//! idle_timeout_s = 5          # an idle pooled connection is closed (QUIT) after this
//! max_connections_per_host = 20   # per (source, MX address); the shaping layer refines it
//! max_messages_per_connection = 1000
//! transactions_in_flight = 1  # messages sent on a connection before the first's end-of-data reply
//!                             # (above 1 only to servers offering PIPELINING and CHUNKING)
//! tls = "opportunistic"       # "disabled", "opportunistic", "required"
//! ca_file = ""                # extra CA certificates (PEM) for "required"
//! host_down_s = 60            # after a connection failure, skip that MX address this long
//!
//! [retry]
//! policy = "classified"       # per reason, from the bounce classifier; or "exponential" (below)
//! first_s = 900               # exponential: first retry after 15 minutes ...
//! max_s = 14400               # ... doubling up to 4 hours ...
//! jitter = 0.2                # ... each spread by up to ±20% ...
//! max_age_s = 259200          # ... until the message is 72 hours old: then it expires
//! min_interval_s = 300        # classified: per-reason intervals are kept between 5 minutes ...
//! max_interval_s = 108000     # ... and 30 hours (first_s and max_s belong to "exponential", the
//!                             # interval bounds to "classified": the other policy's keys are refused)
//! rules_file = ""             # classified: the bounce rules (core/src/bounce/default_rules.toml's
//! rules = ""                  # format); inline `rules` wins; empty = the shipped rules
//!
//! [shaping]                   # traffic shaping (see core/src/shaping): limits per source and receiver
//! rules_file = ""             # a TOML rule set; empty = the shipped provider defaults
//! rules = ""                  # an inline TOML rule set (wins over rules_file), e.g. for tests
//!
//! [suppression]               # per-tenant suppression list (see docs/suppression.md)
//! enabled = true              # checked at submission; bounces and reports feed it
//! path = ""                   # its log file; empty = <spool_dir>/suppression.log
//! sync = true                 # fsync each batch of changes before events are released
//! default_tenant = "default"  # the tenant of submissions that name none
//! unresolved_threshold = 3    # a domain failing to resolve without a definite NXDOMAIN
//! thresholds = { mailboxfull = 3 }    # occurrences that suppress, per reason (0 = never); merged
//!                             # over userunknown/notaccept/hostunknown = 1, mailboxfull/suspend = 3
//! expiry_s = { mailboxfull = 2592000 }  # how long a suppression for a reason lasts (0 = forever)
//! tenants = { acme = { mailboxfull = 5 } }  # per-tenant threshold overrides
//!
//! [verp]                      # optional: signed VERP return paths, one transaction per recipient
//! prefix = "bounces"          # bounces+<id>.<tag>.<local>=<domain>@<domain>
//! domain = "bounce.example.com"
//! keys = ["current secret", "previous secret"]   # the first signs, any verifies
//! trust_unsigned = false      # apply reports that come back to no VERP address (matched by address)
//!
//! [[tenant]]                  # sender policy (see docs/policy.md); with none configured, the engine
//! name = "acme"               # accepts any tenant name and sends messages as submitted. With tenants,
//! pool = "default"            # unknown tenants are refused, messages are validated (RFC 5322), senders
//! sender_domains = ["acme.example"]   # must be approved, DKIM keys sign, a locked tenant is held.
//!
//! [[sources]]                 # sending identities ("virtual MTAs")
//! name = "mta1"
//! ip = "192.0.2.10"           # local address to bind; "" = let the kernel choose
//! ehlo = "mta1.example.com"
//!
//! [[pools]]
//! name = "default"
//! sources = ["mta1"]
//!
//! [routing]
//! default_pool = "default"    # pool for tenants not listed below
//! tenants = { acme = "default" }
//!
//! [smarthost]                 # optional: relay instead of MX delivery
//! address = "relay.example.net:587"
//! domains = []                # only these recipient domains; empty = all mail
//! username = ""
//! password = ""
//! tls = "required"
//! allow_plaintext_auth = false
//! ```
//!
//! Without `[[sources]]`, one source named `default` binding no address is used. Unknown keys, wrong
//! types and impossible values are refused with an error naming the key.

use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A configuration error naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key, such as `delivery.port` or `sources[1].ip`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "configuration: {}", self.message)
        } else {
            write!(f, "configuration key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// Durability of accepted submissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fdatasync before acknowledging, shared by concurrent submissions (group commit).
    #[default]
    Sync,
    /// Acknowledge after the write, flush every `durability_interval_ms`.
    Interval,
    /// Never flush (tests, benchmarks).
    None,
}

/// STARTTLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never use STARTTLS.
    Disabled,
    /// Use it when offered, without checking certificates (RFC 7435).
    #[default]
    Opportunistic,
    /// Require it with a verified certificate.
    Required,
}

/// `[engine]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Shard threads; 0 = one per CPU.
    pub shards: usize,
    /// Pin shard threads to CPUs.
    pub pin_shards: bool,
    /// Spool directory (one sub-directory per shard).
    pub spool_dir: PathBuf,
    /// Size of a new spool segment file in MiB, pre-allocated with `fallocate` (so a full disk is
    /// found when a segment is created). Each shard holds at least one; small values suit tests and
    /// small hosts, large ones mean fewer files and fewer segment switches.
    pub spool_segment_mb: u32,
    /// Durability policy.
    pub durability: Durability,
    /// Flush period for `interval`.
    pub durability_interval_ms: u64,
    /// Under `sync`, the least time between two commits (`fdatasync`) of one shard that carry
    /// only state changes (deliveries, deferrals): those wait for the next commit (and their events
    /// with them), so one flush covers more of them. Submissions are committed at once; a commit
    /// after a quiet spell is never delayed. 0 commits every loop pass.
    pub group_commit_window_us: u64,
    /// Submission ring capacity per shard.
    pub submission_queue: usize,
    /// EHLO name when a source has none.
    pub helo_name: String,
    /// Most recipients in one SMTP transaction.
    pub max_recipients_per_transaction: usize,
    /// Per shard, the most recipients held in memory in the ready queues (Postfix's active queue
    /// limit). Beyond it, submitted messages wait in the spool, whose index is paged by the kernel,
    /// and are admitted in submission order as the queues drain below half of it, so the process's
    /// memory stays flat however deep the queue. Deferred recipients waiting for their retry are not
    /// counted.
    pub active_recipients: usize,
    /// JSON-lines event log path; empty for none. Lines are written ahead of their spool records,
    /// so every final outcome is in it exactly once, across crashes too.
    pub event_log: PathBuf,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            shards: 0,
            pin_shards: true,
            spool_dir: PathBuf::from("vmta-spool"),
            spool_segment_mb: 64,
            durability: Durability::Sync,
            durability_interval_ms: 50,
            group_commit_window_us: 2000,
            submission_queue: 4096,
            helo_name: "localhost".into(),
            max_recipients_per_transaction: 100,
            active_recipients: 100_000,
            event_log: PathBuf::new(),
        }
    }
}

/// `[dns]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Nameservers as `host:port`; empty = /etc/resolv.conf.
    pub nameservers: Vec<String>,
    /// Timeout per try.
    pub timeout_ms: u64,
    /// Rounds over the nameservers.
    pub attempts: u32,
    /// Minimum cache TTL.
    pub min_ttl_s: u32,
    /// Maximum cache TTL.
    pub max_ttl_s: u32,
    /// Try IPv6 addresses of an MX host first.
    pub prefer_ipv6: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            nameservers: Vec::new(),
            timeout_ms: 2000,
            attempts: 2,
            min_ttl_s: 30,
            max_ttl_s: 86400,
            prefer_ipv6: false,
        }
    }
}

/// The most transactions a connection may have in flight (`delivery.transactions_in_flight`).
pub const MAX_TRANSACTIONS_IN_FLIGHT: usize = 64;

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Destination SMTP port.
    pub port: u16,
    /// TCP connect timeout.
    pub connect_timeout_s: u64,
    /// Idle pooled connections are closed after this.
    pub idle_timeout_s: u64,
    /// Concurrent connections per (source, MX address).
    pub max_connections_per_host: usize,
    /// Messages per connection before it is closed.
    pub max_messages_per_connection: u32,
    /// The most transactions in flight on one connection (see
    /// [`crate::smtp::SessionConfig::transactions_in_flight`]; default 8); 1 waits for each
    /// end-of-data reply. Each connection starts at 1 and doubles with each accepted message while
    /// the server offers PIPELINING and CHUNKING and answers in order; where pipelined transactions
    /// go wrong (a connection lost or a reply out of sequence with several in flight), the MX
    /// address gets one at a time for an hour.
    pub transactions_in_flight: usize,
    /// STARTTLS policy.
    pub tls: TlsPolicy,
    /// Extra CA certificates for `required`.
    pub ca_file: PathBuf,
    /// How long an MX address is skipped after a connection failure.
    pub host_down_s: u64,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            port: 25,
            connect_timeout_s: 30,
            idle_timeout_s: 5,
            max_connections_per_host: 20,
            max_messages_per_connection: 1000,
            transactions_in_flight: 8,
            tls: TlsPolicy::Opportunistic,
            ca_file: PathBuf::new(),
            host_down_s: 60,
        }
    }
}

/// Which retry schedule the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetryKind {
    /// Per reason, from the bounce classifier.
    #[default]
    Classified,
    /// Exponential from `first_s` to `max_s`, whatever the reason.
    Exponential,
}

/// `[retry]`: the schedule for temporary failures.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Which schedule.
    pub policy: RetryKind,
    /// First retry delay.
    pub first_s: u64,
    /// Largest delay.
    pub max_s: u64,
    /// Random spread, 0.0–0.5.
    pub jitter: f64,
    /// Age after which a message expires.
    pub max_age_s: u64,
    /// Classified: the shortest interval between attempts, whatever the reason.
    pub min_interval_s: u64,
    /// Classified: the longest interval between attempts.
    pub max_interval_s: u64,
    /// Classified: a bounce rule file; empty = the shipped rules.
    pub rules_file: PathBuf,
    /// Classified: inline bounce rules; win over `rules_file`.
    pub rules: String,
}

impl RetrySection {
    /// The bounce classifier the rules configure (the shipped one by default).
    pub fn classifier(&self) -> Result<crate::bounce::Classifier, ConfigError> {
        if !self.rules.trim().is_empty() {
            return crate::bounce::Classifier::from_toml(&self.rules)
                .map_err(|e| err("retry.rules", e.to_string()));
        }
        if self.rules_file.as_os_str().is_empty() {
            return Ok(crate::bounce::Classifier::default_rules());
        }
        let text = std::fs::read_to_string(&self.rules_file).map_err(|e| {
            err(
                "retry.rules_file",
                format!("{}: {e}", self.rules_file.display()),
            )
        })?;
        crate::bounce::Classifier::from_toml(&text)
            .map_err(|e| err("retry.rules_file", e.to_string()))
    }
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            policy: RetryKind::Classified,
            first_s: 15 * 60,
            max_s: 4 * 3600,
            jitter: 0.2,
            max_age_s: 72 * 3600,
            min_interval_s: 5 * 60,
            max_interval_s: 30 * 3600,
            rules_file: PathBuf::new(),
            rules: String::new(),
        }
    }
}

/// `[shaping]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShapingSection {
    /// A TOML rule set file; empty = the shipped defaults.
    pub rules_file: PathBuf,
    /// An inline TOML rule set; wins over `rules_file`.
    pub rules: String,
}

impl ShapingSection {
    /// The rule set this section names.
    pub fn rule_set(&self) -> Result<crate::shaping::RuleSet, ConfigError> {
        if !self.rules.trim().is_empty() {
            return crate::shaping::RuleSet::from_toml(&self.rules)
                .map_err(|e| err("shaping.rules", e.to_string()));
        }
        if self.rules_file.as_os_str().is_empty() {
            return Ok(crate::shaping::RuleSet::shipped());
        }
        let text = std::fs::read_to_string(&self.rules_file).map_err(|e| {
            err(
                "shaping.rules_file",
                format!("{}: {e}", self.rules_file.display()),
            )
        })?;
        crate::shaping::RuleSet::from_toml(&text)
            .map_err(|e| err("shaping.rules_file", e.to_string()))
    }
}

/// `[suppression]`: the per-tenant suppression list the engine checks at submission and feeds with
/// bounces and inbound reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionSection {
    /// Check and record at all.
    pub enabled: bool,
    /// The log file; empty = `suppression.log` in the spool directory.
    pub path: PathBuf,
    /// fsync each batch of changes.
    pub sync: bool,
    /// The tenant of submissions that name none.
    pub default_tenant: String,
    /// Occurrences of `hostunknown` without a definite NXDOMAIN that suppress.
    pub unresolved_threshold: u32,
    /// Occurrences per reason that suppress (0 = never), merged over the defaults.
    pub thresholds: std::collections::BTreeMap<String, u32>,
    /// Lifetime of a suppression per reason, in seconds (0 = forever), merged over the defaults.
    pub expiry_s: std::collections::BTreeMap<String, u64>,
    /// Per-tenant threshold overrides.
    pub tenants: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>,
}

impl Default for SuppressionSection {
    fn default() -> Self {
        SuppressionSection {
            enabled: true,
            path: PathBuf::new(),
            sync: true,
            default_tenant: "default".into(),
            unresolved_threshold: 3,
            thresholds: Default::default(),
            expiry_s: Default::default(),
            tenants: Default::default(),
        }
    }
}

fn reason_key(key: String, name: &str) -> Result<crate::bounce::Reason, ConfigError> {
    crate::bounce::Reason::parse(name).ok_or_else(|| err(key, format!("unknown reason {name:?}")))
}

impl SuppressionSection {
    /// The log file: `path`, or `suppression.log` in `spool_dir` when `path` is empty.
    pub fn log_path(&self, spool_dir: &std::path::Path) -> PathBuf {
        if self.path.as_os_str().is_empty() {
            spool_dir.join("suppression.log")
        } else {
            self.path.clone()
        }
    }

    /// The policy this section describes (the defaults of [`crate::bounce::SuppressionPolicy`] with
    /// the section's changes). Reputation reasons cannot be given a threshold: they never suppress.
    pub fn policy(&self) -> Result<crate::bounce::SuppressionPolicy, ConfigError> {
        let mut p = crate::bounce::SuppressionPolicy::default();
        let thresholds = |map: &std::collections::BTreeMap<String, u32>,
                          prefix: &str,
                          into: &mut std::collections::HashMap<crate::bounce::Reason, u32>|
         -> Result<(), ConfigError> {
            for (name, n) in map {
                let key = format!("{prefix}.{name}");
                let reason = reason_key(key.clone(), name)?;
                if reason.is_reputation() && *n > 0 {
                    return Err(err(key, "reputation blocks never suppress the recipient"));
                }
                into.insert(reason, *n);
            }
            Ok(())
        };
        thresholds(
            &self.thresholds,
            "suppression.thresholds",
            &mut p.thresholds,
        )?;
        // 0 = never: a reason absent from the map never suppresses.
        p.thresholds.retain(|_, n| *n > 0);
        if self.unresolved_threshold == 0 {
            return Err(err(
                "suppression.unresolved_threshold",
                "must be at least 1",
            ));
        }
        p.unresolved_threshold = self.unresolved_threshold;
        for (name, s) in &self.expiry_s {
            let reason = reason_key(format!("suppression.expiry_s.{name}"), name)?;
            if *s == 0 {
                p.expiry.remove(&reason);
            } else {
                p.expiry.insert(reason, Duration::from_secs(*s));
            }
        }
        for (tenant, map) in &self.tenants {
            let mut m = std::collections::HashMap::new();
            thresholds(map, &format!("suppression.tenants.{tenant}"), &mut m)?;
            // A per-tenant 0 means never for that tenant.
            p.tenant_thresholds.insert(tenant.clone(), m);
        }
        Ok(p)
    }
}

/// `[verp]`: signed VERP return paths (`prefix+<id>.<tag>.<local>=<domain>@<domain>`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerpSection {
    /// The local-part prefix.
    pub prefix: String,
    /// The domain that receives bounces.
    pub domain: String,
    /// HMAC keys: the first signs, every one verifies (rotation).
    pub keys: Vec<String>,
    /// Apply reports that came back to no VERP address, matched by recipient and tenant only.
    #[serde(default)]
    pub trust_unsigned: bool,
}

impl VerpSection {
    /// The scheme, checked.
    pub fn scheme(&self) -> Result<crate::bounce::Verp, ConfigError> {
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !word(&self.prefix) || self.prefix.contains('+') {
            return Err(err(
                "verp.prefix",
                "must be 1-64 letters, digits, '.', '-' or '_'",
            ));
        }
        if !word(&self.domain) || !self.domain.contains('.') {
            return Err(err("verp.domain", "must be a domain name"));
        }
        if self.keys.is_empty() {
            return Err(err("verp.keys", "at least one key is needed"));
        }
        if let Some(i) = self.keys.iter().position(|k| k.len() < 16) {
            return Err(err(
                format!("verp.keys[{i}]"),
                "a key needs at least 16 bytes",
            ));
        }
        let keys: Vec<&[u8]> = self.keys.iter().map(|k| k.as_bytes()).collect();
        Ok(crate::bounce::Verp::new(&self.prefix, &self.domain, &keys))
    }
}

/// `[[sources]]`: a sending identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Its name.
    pub name: String,
    /// Local address to bind; empty = any.
    #[serde(default)]
    pub ip: String,
    /// EHLO name; empty = `engine.helo_name`.
    #[serde(default)]
    pub ehlo: String,
}

/// `[[pools]]`: a set of sources used in turn.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Its name.
    pub name: String,
    /// Source names.
    pub sources: Vec<String>,
}

/// `[routing]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSection {
    /// Pool for tenants not listed.
    pub default_pool: String,
    /// Tenant → pool.
    pub tenants: std::collections::BTreeMap<String, String>,
}

/// `[smarthost]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmarthostConfig {
    /// `host:port` of the relay.
    pub address: String,
    /// Recipient domains relayed; empty = all.
    #[serde(default)]
    pub domains: Vec<String>,
    /// AUTH user name; empty = no AUTH.
    #[serde(default)]
    pub username: String,
    /// AUTH password.
    #[serde(default)]
    pub password: String,
    /// STARTTLS policy towards the relay.
    #[serde(default = "required")]
    pub tls: TlsPolicy,
    /// Allow AUTH without TLS.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

fn required() -> TlsPolicy {
    TlsPolicy::Required
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `[engine]`.
    pub engine: EngineSection,
    /// `[dns]`.
    pub dns: DnsSection,
    /// `[delivery]`.
    pub delivery: DeliverySection,
    /// `[retry]`.
    pub retry: RetrySection,
    /// `[shaping]`.
    pub shaping: ShapingSection,
    /// `[[sources]]`.
    pub sources: Vec<SourceConfig>,
    /// `[[pools]]`.
    pub pools: Vec<PoolConfig>,
    /// `[routing]`.
    pub routing: RoutingSection,
    /// `[smarthost]`.
    pub smarthost: Option<SmarthostConfig>,
    /// `[suppression]`.
    pub suppression: SuppressionSection,
    /// `[verp]`.
    pub verp: Option<VerpSection>,
    /// `[[tenant]]`: sender policy per tenant.
    #[serde(rename = "tenant")]
    pub tenants: Vec<crate::policy::TenantConfig>,
    /// Where relative paths in the configuration (DKIM key files) start: the configuration file's
    /// directory, or the working directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// A source after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Its name.
    pub name: String,
    /// Local address to bind.
    pub ip: Option<IpAddr>,
    /// EHLO name.
    pub ehlo: String,
}

/// The smarthost after validation.
#[derive(Debug, Clone)]
pub struct Smarthost {
    /// The relay.
    pub address: SocketAddr,
    /// The host part, for SNI.
    pub host: String,
    /// Domains relayed (lower-case); empty = all.
    pub domains: Vec<String>,
    /// Credentials.
    pub auth: Option<(String, String)>,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Allow AUTH without TLS.
    pub allow_plaintext_auth: bool,
}

/// A configuration checked and resolved into what the shards use.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The configuration as given.
    pub config: EngineConfig,
    /// Shard count.
    pub shards: usize,
    /// Sources by index.
    pub sources: Vec<Source>,
    /// Pools: name and source indexes.
    pub pools: Vec<(String, Vec<usize>)>,
    /// Default pool index.
    pub default_pool: usize,
    /// Tenant → pool index.
    pub tenant_pools: std::collections::HashMap<String, usize>,
    /// DNS nameservers (empty = system).
    pub nameservers: Vec<SocketAddr>,
    /// The smarthost.
    pub smarthost: Option<Smarthost>,
    /// The suppression policy (`None` when `[suppression] enabled = false`).
    pub suppression: Option<crate::bounce::SuppressionPolicy>,
    /// The VERP scheme, when `[verp]` is configured.
    pub verp: Option<crate::bounce::Verp>,
}

impl EngineConfig {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<EngineConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            // toml names unknown keys in the message; point at the table for type errors.
            let key = e.span().map(|s| key_at(text, s.start)).unwrap_or_default();
            err(key, msg)
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<EngineConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        let mut c = EngineConfig::from_toml(&text)?;
        c.base_dir = path.parent().map(PathBuf::from).unwrap_or_default();
        Ok(c)
    }

    /// A builder starting from the defaults.
    pub fn builder() -> EngineConfigBuilder {
        EngineConfigBuilder(EngineConfig::default())
    }

    /// Checks every value and resolves names into indexes.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let e = &self.engine;
        let shards = if e.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            e.shards
        };
        if shards > 256 {
            return Err(err("engine.shards", "at most 256 shards"));
        }
        if e.submission_queue == 0 || e.submission_queue > 1 << 20 {
            return Err(err(
                "engine.submission_queue",
                "must be between 1 and 1048576",
            ));
        }
        if e.max_recipients_per_transaction == 0 {
            return Err(err(
                "engine.max_recipients_per_transaction",
                "must be at least 1",
            ));
        }
        if e.helo_name.trim().is_empty() || e.helo_name.contains(char::is_whitespace) {
            return Err(err(
                "engine.helo_name",
                "must be a host name without spaces",
            ));
        }
        if e.spool_dir.as_os_str().is_empty() {
            return Err(err("engine.spool_dir", "must not be empty"));
        }
        if e.active_recipients == 0 {
            return Err(err("engine.active_recipients", "must be at least 1"));
        }
        if !(1..=4096).contains(&e.spool_segment_mb) {
            return Err(err("engine.spool_segment_mb", "must be between 1 and 4096"));
        }
        let d = &self.delivery;
        if d.port == 0 {
            return Err(err("delivery.port", "must not be 0"));
        }
        if d.max_connections_per_host == 0 {
            return Err(err(
                "delivery.max_connections_per_host",
                "must be at least 1",
            ));
        }
        if d.max_messages_per_connection == 0 {
            return Err(err(
                "delivery.max_messages_per_connection",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_TRANSACTIONS_IN_FLIGHT).contains(&d.transactions_in_flight) {
            return Err(err(
                "delivery.transactions_in_flight",
                format!("must be between 1 and {MAX_TRANSACTIONS_IN_FLIGHT}"),
            ));
        }
        if d.connect_timeout_s == 0 {
            return Err(err("delivery.connect_timeout_s", "must be at least 1"));
        }
        let r = &self.retry;
        if r.min_interval_s == 0 || r.max_interval_s < r.min_interval_s {
            return Err(err(
                "retry.max_interval_s",
                "need 0 < retry.min_interval_s <= retry.max_interval_s",
            ));
        }
        if r.first_s == 0 || r.max_s < r.first_s {
            return Err(err("retry.max_s", "need 0 < retry.first_s <= retry.max_s"));
        }
        // Each policy has its own keys; the other's would be silently ignored, so they are refused.
        let d = RetrySection::default();
        match r.policy {
            RetryKind::Classified => {
                for (key, set) in [
                    ("retry.first_s", r.first_s != d.first_s),
                    ("retry.max_s", r.max_s != d.max_s),
                ] {
                    if set {
                        return Err(err(
                            key,
                            "applies to policy = \"exponential\" only; with the per-reason \
                             schedules bound the intervals with retry.min_interval_s and \
                             retry.max_interval_s",
                        ));
                    }
                }
                r.classifier()?;
            }
            RetryKind::Exponential => {
                for (key, set) in [
                    ("retry.min_interval_s", r.min_interval_s != d.min_interval_s),
                    ("retry.max_interval_s", r.max_interval_s != d.max_interval_s),
                    (
                        "retry.rules",
                        !r.rules.is_empty() || !r.rules_file.as_os_str().is_empty(),
                    ),
                ] {
                    if set {
                        return Err(err(
                            key,
                            "applies to policy = \"classified\" only; the exponential schedule \
                             is set by retry.first_s and retry.max_s",
                        ));
                    }
                }
            }
        }
        if !(0.0..=0.5).contains(&r.jitter) {
            return Err(err("retry.jitter", "must be between 0.0 and 0.5"));
        }
        self.shaping.rule_set()?;
        let mut nameservers = Vec::new();
        for (i, ns) in self.dns.nameservers.iter().enumerate() {
            let addr = crate::dns::parse_nameserver(ns)
                .map_err(|e| err(format!("dns.nameservers[{i}]"), e.to_string()))?;
            nameservers.push(addr);
        }
        if self.dns.timeout_ms == 0 || self.dns.attempts == 0 {
            return Err(err(
                "dns.timeout_ms",
                "timeout and attempts must be at least 1",
            ));
        }
        let mut sources = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            if s.name.is_empty() {
                return Err(err(format!("sources[{i}].name"), "must not be empty"));
            }
            if sources.iter().any(|x: &Source| x.name == s.name) {
                return Err(err(
                    format!("sources[{i}].name"),
                    format!("duplicate source {:?}", s.name),
                ));
            }
            let ip = if s.ip.is_empty() {
                None
            } else {
                Some(s.ip.parse::<IpAddr>().map_err(|_| {
                    err(
                        format!("sources[{i}].ip"),
                        format!("{:?} is not an IP address", s.ip),
                    )
                })?)
            };
            let ehlo = if s.ehlo.is_empty() {
                e.helo_name.clone()
            } else {
                s.ehlo.clone()
            };
            sources.push(Source {
                name: s.name.clone(),
                ip,
                ehlo,
            });
        }
        if sources.is_empty() {
            sources.push(Source {
                name: "default".into(),
                ip: None,
                ehlo: e.helo_name.clone(),
            });
        }
        let mut pools = Vec::new();
        for (i, p) in self.pools.iter().enumerate() {
            if p.sources.is_empty() {
                return Err(err(
                    format!("pools[{i}].sources"),
                    "a pool needs at least one source",
                ));
            }
            let mut idx = Vec::new();
            for (j, name) in p.sources.iter().enumerate() {
                let k = sources
                    .iter()
                    .position(|s| &s.name == name)
                    .ok_or_else(|| {
                        err(
                            format!("pools[{i}].sources[{j}]"),
                            format!("no source named {name:?}"),
                        )
                    })?;
                idx.push(k);
            }
            pools.push((p.name.clone(), idx));
        }
        if pools.is_empty() {
            pools.push(("default".into(), (0..sources.len()).collect()));
        }
        let pool_index = |name: &str, key: String| {
            pools
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| err(key, format!("no pool named {name:?}")))
        };
        let default_pool = if self.routing.default_pool.is_empty() {
            0
        } else {
            pool_index(&self.routing.default_pool, "routing.default_pool".into())?
        };
        let mut tenant_pools = std::collections::HashMap::new();
        for (tenant, pool) in &self.routing.tenants {
            tenant_pools.insert(
                tenant.clone(),
                pool_index(pool, format!("routing.tenants.{tenant}"))?,
            );
        }
        // A tenant's `pool` chooses its source pool too (routing.tenants wins where both are given).
        for (i, t) in self.tenants.iter().enumerate() {
            if !tenant_pools.contains_key(&t.name) {
                tenant_pools.insert(
                    t.name.clone(),
                    pool_index(&t.pool, format!("tenant[{i}].pool"))?,
                );
            }
        }
        let smarthost = match &self.smarthost {
            None => None,
            Some(s) => {
                use std::net::ToSocketAddrs;
                let address = s
                    .address
                    .to_socket_addrs()
                    .map_err(|e| err("smarthost.address", e.to_string()))?
                    .next()
                    .ok_or_else(|| err("smarthost.address", "no address"))?;
                let host = s
                    .address
                    .rsplit_once(':')
                    .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string())
                    .unwrap_or_default();
                Some(Smarthost {
                    address,
                    host,
                    domains: s.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
                    auth: if s.username.is_empty() {
                        None
                    } else {
                        Some((s.username.clone(), s.password.clone()))
                    },
                    tls: s.tls,
                    allow_plaintext_auth: s.allow_plaintext_auth,
                })
            }
        };
        let suppression = if self.suppression.enabled {
            let t = &self.suppression.default_tenant;
            if t.is_empty() || t.len() > 512 || t.contains(['\t', '\r', '\n']) {
                return Err(err(
                    "suppression.default_tenant",
                    "must be a name without tabs or line ends",
                ));
            }
            Some(self.suppression.policy()?)
        } else {
            None
        };
        let verp = match &self.verp {
            Some(v) => Some(v.scheme()?),
            None => None,
        };
        Ok(Resolved {
            config: self.clone(),
            suppression,
            verp,
            shards,
            sources,
            pools,
            default_pool,
            tenant_pools,
            nameservers,
            smarthost,
        })
    }
}

/// The dotted key around a byte offset of the TOML text (the table header and the key on that line).
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.rsplit('\n').next().unwrap_or("");
    let line_end = text[offset.min(text.len())..]
        .split('\n')
        .next()
        .unwrap_or("");
    let whole = format!("{line}{line_end}");
    let key = whole.split('=').next().unwrap_or("").trim().to_string();
    let table = before
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.strip_prefix('[')
                .map(|t| t.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    match (table.is_empty(), key.starts_with('[') || key.is_empty()) {
        (_, true) => table,
        (true, false) => key,
        (false, false) => format!("{table}.{key}"),
    }
}

/// Builds an [`EngineConfig`] in code.
#[derive(Debug, Clone)]
pub struct EngineConfigBuilder(EngineConfig);

impl EngineConfigBuilder {
    /// Shard count (0 = one per CPU).
    pub fn shards(mut self, n: usize) -> Self {
        self.0.engine.shards = n;
        self
    }
    /// Pin shards to CPUs.
    pub fn pin_shards(mut self, on: bool) -> Self {
        self.0.engine.pin_shards = on;
        self
    }
    /// Spool directory.
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.0.engine.spool_dir = dir.into();
        self
    }
    /// Size of a new spool segment file in MiB.
    pub fn spool_segment_mb(mut self, mb: u32) -> Self {
        self.0.engine.spool_segment_mb = mb;
        self
    }
    /// Per shard, the most recipients held in memory ready to send.
    pub fn active_recipients(mut self, n: usize) -> Self {
        self.0.engine.active_recipients = n;
        self
    }
    /// Durability policy.
    pub fn durability(mut self, d: Durability) -> Self {
        self.0.engine.durability = d;
        self
    }
    /// DNS nameservers (`host:port`).
    pub fn nameservers(mut self, ns: &[&str]) -> Self {
        self.0.dns.nameservers = ns.iter().map(|s| s.to_string()).collect();
        self
    }
    /// Destination port.
    pub fn port(mut self, port: u16) -> Self {
        self.0.delivery.port = port;
        self
    }
    /// STARTTLS policy.
    pub fn tls(mut self, tls: TlsPolicy) -> Self {
        self.0.delivery.tls = tls;
        self
    }
    /// Connections per (source, MX address).
    pub fn max_connections_per_host(mut self, n: usize) -> Self {
        self.0.delivery.max_connections_per_host = n;
        self
    }
    /// Messages per connection.
    pub fn max_messages_per_connection(mut self, n: u32) -> Self {
        self.0.delivery.max_messages_per_connection = n;
        self
    }
    /// Transactions in flight per connection.
    pub fn transactions_in_flight(mut self, n: usize) -> Self {
        self.0.delivery.transactions_in_flight = n;
        self
    }
    /// Retry schedule.
    pub fn retry(mut self, first: Duration, max: Duration, jitter: f64, max_age: Duration) -> Self {
        self.0.retry = RetrySection {
            policy: RetryKind::Exponential,
            first_s: first.as_secs(),
            max_s: max.as_secs(),
            jitter,
            max_age_s: max_age.as_secs(),
            ..RetrySection::default()
        };
        self
    }
    /// Classified retries (the default) with every per-reason interval kept between `min` and `max`.
    pub fn retry_intervals(mut self, min: Duration, max: Duration) -> Self {
        self.0.retry.policy = RetryKind::Classified;
        self.0.retry.min_interval_s = min.as_secs();
        self.0.retry.max_interval_s = max.as_secs();
        self
    }
    /// Adds a source.
    pub fn source(mut self, name: &str, ip: &str, ehlo: &str) -> Self {
        self.0.sources.push(SourceConfig {
            name: name.into(),
            ip: ip.into(),
            ehlo: ehlo.into(),
        });
        self
    }
    /// An inline shaping rule set (TOML).
    pub fn shaping_rules(mut self, rules: &str) -> Self {
        self.0.shaping.rules = rules.into();
        self
    }
    /// Turns the suppression list on or off (on by default).
    pub fn suppression(mut self, enabled: bool) -> Self {
        self.0.suppression.enabled = enabled;
        self
    }
    /// The suppression log file (default: `suppression.log` in the spool directory).
    pub fn suppression_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.suppression.path = path.into();
        self
    }
    /// Occurrences of `reason` (a name such as `mailboxfull`) that suppress; 0 = never.
    pub fn suppression_threshold(mut self, reason: &str, occurrences: u32) -> Self {
        self.0
            .suppression
            .thresholds
            .insert(reason.to_string(), occurrences);
        self
    }
    /// Occurrences of `reason` that suppress for one tenant.
    pub fn tenant_suppression_threshold(
        mut self,
        tenant: &str,
        reason: &str,
        occurrences: u32,
    ) -> Self {
        self.0
            .suppression
            .tenants
            .entry(tenant.to_string())
            .or_default()
            .insert(reason.to_string(), occurrences);
        self
    }
    /// How long a suppression for `reason` lasts (zero = forever).
    pub fn suppression_expiry(mut self, reason: &str, lifetime: Duration) -> Self {
        self.0
            .suppression
            .expiry_s
            .insert(reason.to_string(), lifetime.as_secs());
        self
    }
    /// Signed VERP return paths `prefix+...@domain`; `keys[0]` signs, every key verifies.
    pub fn verp(mut self, prefix: &str, domain: &str, keys: &[&str]) -> Self {
        self.0.verp = Some(VerpSection {
            prefix: prefix.into(),
            domain: domain.into(),
            keys: keys.iter().map(|k| k.to_string()).collect(),
            trust_unsigned: false,
        });
        self
    }
    /// JSON-lines event log.
    pub fn event_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.engine.event_log = path.into();
        self
    }
    /// Any other change.
    pub fn with(mut self, f: impl FnOnce(&mut EngineConfig)) -> Self {
        f(&mut self.0);
        self
    }
    /// The configuration.
    pub fn build(self) -> EngineConfig {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let r = EngineConfig::default().resolve().unwrap();
        assert!(r.shards >= 1);
        assert_eq!(r.sources.len(), 1);
        assert_eq!(r.pools, vec![("default".to_string(), vec![0])]);
        assert_eq!(r.config.retry.max_age_s, 72 * 3600);
    }

    #[test]
    fn a_full_file_parses() {
        let c = EngineConfig::from_toml(
            r#"
            [engine]
            shards = 2
            durability = "none"
            [dns]
            nameservers = ["127.0.0.53:5353"]
            [delivery]
            port = 2525
            tls = "disabled"
            [[sources]]
            name = "a"
            ip = "127.0.0.1"
            ehlo = "a.example"
            [[sources]]
            name = "b"
            [[pools]]
            name = "p"
            sources = ["a", "b"]
            [routing]
            default_pool = "p"
            tenants = { acme = "p" }
            [smarthost]
            address = "127.0.0.1:587"
            username = "u"
            password = "p"
            "#,
        )
        .unwrap();
        let r = c.resolve().unwrap();
        assert_eq!(r.shards, 2);
        assert_eq!(r.sources[1].ehlo, "localhost");
        assert_eq!(r.tenant_pools["acme"], 0);
        assert_eq!(r.nameservers[0].port(), 5353);
        let s = r.smarthost.unwrap();
        assert_eq!(s.auth, Some(("u".into(), "p".into())));
        assert_eq!(s.tls, TlsPolicy::Required);
    }

    #[test]
    fn errors_name_the_key() {
        let e = EngineConfig::from_toml("[delivery]\nprot = 25\n").unwrap_err();
        assert!(e.message.contains("prot"), "{e}");
        let e = EngineConfig::from_toml("[delivery]\nport = \"x\"\n").unwrap_err();
        assert_eq!(e.key, "delivery.port", "{e}");
        let e = EngineConfig::from_toml("[engine]\ndurability = \"sometimes\"\n").unwrap_err();
        assert_eq!(e.key, "engine.durability", "{e}");
        let c = EngineConfig::from_toml("[[sources]]\nname = \"a\"\nip = \"nope\"\n").unwrap();
        assert_eq!(c.resolve().unwrap_err().key, "sources[0].ip");
        let c =
            EngineConfig::from_toml("[[pools]]\nname = \"p\"\nsources = [\"ghost\"]\n").unwrap();
        assert_eq!(c.resolve().unwrap_err().key, "pools[0].sources[0]");
        let c = EngineConfig::from_toml("[retry]\njitter = 0.9\n").unwrap();
        assert_eq!(c.resolve().unwrap_err().key, "retry.jitter");
        let c = EngineConfig::from_toml("[dns]\nnameservers = [\"not an address\"]\n").unwrap();
        assert_eq!(c.resolve().unwrap_err().key, "dns.nameservers[0]");
        for mb in [0, 4097] {
            let c =
                EngineConfig::from_toml(&format!("[engine]\nspool_segment_mb = {mb}\n")).unwrap();
            assert_eq!(c.resolve().unwrap_err().key, "engine.spool_segment_mb");
        }
        let c = EngineConfig::from_toml("[engine]\nactive_recipients = 0\n").unwrap();
        assert_eq!(c.resolve().unwrap_err().key, "engine.active_recipients");
    }

    #[test]
    fn suppression_and_verp_sections() {
        use crate::bounce::Reason;
        let c = EngineConfig::from_toml(
            r#"
            [suppression]
            thresholds = { mailboxfull = 5, suspend = 0 }
            expiry_s = { mailboxfull = 0, suspend = 60 }
            tenants = { acme = { userunknown = 2, mailboxfull = 0 } }
            [verp]
            prefix = "bounces"
            domain = "bounce.example.com"
            keys = ["0123456789abcdef"]
            "#,
        )
        .unwrap();
        let r = c.resolve().unwrap();
        let p = r.suppression.unwrap();
        assert_eq!(p.threshold("t", Reason::MailboxFull, false), Some(5));
        assert_eq!(p.threshold("t", Reason::Suspend, false), None);
        assert_eq!(p.threshold("t", Reason::UserUnknown, false), Some(1));
        assert_eq!(p.threshold("acme", Reason::UserUnknown, false), Some(2));
        assert_eq!(p.threshold("acme", Reason::MailboxFull, false), None);
        assert_eq!(p.threshold("t", Reason::HostUnknown, false), Some(3));
        assert!(!p.expiry.contains_key(&Reason::MailboxFull));
        assert_eq!(p.expiry[&Reason::Suspend], Duration::from_secs(60));
        assert!(r.verp.is_some());
        // Defaults: on, the issue's thresholds, no VERP.
        let d = EngineConfig::default().resolve().unwrap();
        assert_eq!(
            d.suppression.unwrap(),
            crate::bounce::SuppressionPolicy::default()
        );
        assert!(d.verp.is_none());
        let off = EngineConfig::builder().suppression(false).build();
        assert!(off.resolve().unwrap().suppression.is_none());
        let bad = |t: &str| {
            EngineConfig::from_toml(t)
                .unwrap()
                .resolve()
                .unwrap_err()
                .key
        };
        assert_eq!(
            bad("[suppression]\nthresholds = { blocked = 1 }\n"),
            "suppression.thresholds.blocked"
        );
        assert_eq!(
            bad("[suppression]\nthresholds = { nosuch = 1 }\n"),
            "suppression.thresholds.nosuch"
        );
        assert_eq!(
            bad("[suppression]\ntenants = { a = { badreputation = 2 } }\n"),
            "suppression.tenants.a.badreputation"
        );
        assert_eq!(
            bad("[verp]\nprefix = \"b\"\ndomain = \"x.example\"\nkeys = [\"short\"]\n"),
            "verp.keys[0]"
        );
        assert_eq!(
            bad("[verp]\nprefix = \"b+c\"\ndomain = \"x.example\"\nkeys = []\n"),
            "verp.prefix"
        );
    }

    #[test]
    fn the_builder_sets_what_it_says() {
        let c = EngineConfig::builder()
            .shards(3)
            .port(2526)
            .durability(Durability::None)
            .source("s", "127.0.0.9", "s.example")
            .build();
        let r = c.resolve().unwrap();
        assert_eq!(r.shards, 3);
        assert_eq!(r.config.delivery.port, 2526);
        assert_eq!(r.sources[0].ip, Some("127.0.0.9".parse().unwrap()));
    }
}
