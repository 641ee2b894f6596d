//! `vmta serve`'s configuration: the engine's TOML file (see `vmta::engine::config`) with a `[serve]`
//! table and one `[[listener]]` table per listening socket.
//!
//! ```toml
//! [serve]
//! hostname = ""               # greeting, EHLO and Received name; "" = [engine] helo_name
//! event_log = "-"             # JSON lines: "-" = standard output, a path (reopened on SIGHUP), "" = none
//! listener_threads = 1        # threads running the listeners (never a shard thread)
//! intake_threads = 2          # threads handing finished messages to the engine in batches
//! intake_queue = 4096         # messages waiting for an intake thread; full = 451 4.3.0
//! shutdown_grace_s = 30       # SIGTERM: how long transactions in progress may take to finish
//! auth_failures_free = 3      # failed logins per client address answered at once; each further
//!                             # one 0.5 s later than the one before (at most 5 s) ...
//! auth_failures_max = 10      # ... and at this many the address is refused (421 4.7.0) ...
//! auth_lockout_s = 600        # ... for this long
//! received_auth = false       # name the login in the Received field: (Authenticated sender: x)
//!
//! [[user]]                    # who may log in on submission listeners (see users.rs)
//! name = "demo"
//! password = "$argon2id$..."  # the hash `vmta passwd` prints
//! tenant = "demo"             # the [[tenant]] whose policies apply to this login
//!
//! [http]                      # the HTTP API (see http.rs); without this table there is none
//! address = "127.0.0.1:8025"  # never all interfaces unless written here
//! threads = 2                 # threads answering requests (submissions wait on others)
//! max_connections = 1000      # at once; more are answered 503 and closed
//! max_request_size = 16777216 # octets of one request body; larger is answered 413
//! max_messages = 1000         # messages in one request
//! header_timeout_s = 10       # a request's headers must arrive within this (slow senders are cut)
//! request_timeout_s = 60      # a request's body must arrive within this
//! tenant = "default"          # the tenant of messages an admin token injects without naming one
//! public_metrics = false      # GET /metrics without a token
//! tls_cert = ""               # PEM certificate chain and key: HTTPS (relative: this file's directory)
//! tls_key = ""
//!
//! [[api_token]]               # who may call the API: the token's SHA-256 (`vmta token` makes both)
//! name = "ops"
//! sha256 = "9f86d0..."        # 64 hex digits
//! tenant = ""                 # empty: an admin token (every endpoint, any tenant); a tenant name:
//!                             # inject and manage suppressions for that tenant only
//!
//! [[listener]]
//! address = "127.0.0.1:2525"
//! role = "relay"              # relay: accepts mail from allowed_networks for any destination;
//!                             # submission: TLS, then AUTH (a [[user]]), then mail from the
//!                             # login's tenant's approved senders (RFC 6409)
//! tenant = "default"          # the engine tenant its mail is submitted under
//! allowed_networks = ["127.0.0.0/8", "::1/128"]   # CIDR; others get 550 5.7.1 at RCPT (a relay
//!                             # with none relays for nobody; a submission listener with none takes
//!                             # logins from anywhere)
//! max_connections = 1000      # at once on this listener; more are answered 421 4.7.0 and closed
//! max_connections_per_client = 50   # at once from one client address
//! max_message_size = 52428800 # octets (SIZE); larger is answered 552 5.3.4
//! max_recipients = 1000       # per message; more are answered 452 4.5.3
//! max_line = 2048             # command line octets; longer is answered 500 5.5.2
//! max_batch = 100             # commands handled per pipelined read before other clients' turn
//! max_errors = 20             # bad commands, then 421 4.7.0 and close
//! idle_timeout_s = 300        # waiting for a whole command line (bytes trickling in do not extend it)
//! data_timeout_s = 180        # silence inside message data
//! message_timeout_s = 600     # all of one message's data
//! tls_cert = ""               # PEM certificate chain (relative paths: from this file's directory)
//! tls_key = ""                # PEM private key
//! starttls = true             # offer STARTTLS (RFC 3207); default: when a certificate is given
//! implicit_tls = false        # TLS from the first byte (RFC 8314, port 465) instead of STARTTLS
//! ```
//!
//! Unknown keys, wrong types and impossible values are refused with an error naming the key.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vmta::engine::EngineConfig;
use vmta::smtp::server::{ServerConfig, ServerTimeouts};

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

/// `message` about the configuration file `path` (whose text is `text`) as `FILE:LINE: message`:
/// the line is the one of the key the message names (`engine.shards`, `tenant[1].pool`,
/// `listener[0].address`), when it can be found, or the one a syntax error gave (`line N: `).
pub fn locate(path: &Path, text: &str, message: &str) -> String {
    if let Some(rest) = message.strip_prefix("line ")
        && let Some((n, msg)) = rest.split_once(": ")
        && n.parse::<usize>().is_ok()
    {
        return format!("{}:{n}: {msg}", path.display());
    }
    match named_key(message).and_then(|k| key_line(text, &k)) {
        Some(n) => format!("{}:{n}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

/// The key a message names: the first `` `a.b` `` in it, or its `a[n].b: ` prefix.
fn named_key(message: &str) -> Option<String> {
    let is_key = |k: &str| {
        !k.is_empty()
            && k.contains(['.', '['])
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b))
    };
    let mut parts = message.split('`');
    parts.next();
    if let Some(k) = parts.step_by(2).find(|k| is_key(k)) {
        return Some(k.to_string());
    }
    let head = message.split(": ").next()?;
    is_key(head).then(|| head.to_string())
}

/// The 1-based line of `key` (`table.field`, `table[n].field`, `table`, `table[n]`) in `text`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (table, field) = match key.split_once('.') {
        Some((t, f)) => (t, Some(f.split(['.', '[']).next().unwrap_or(f))),
        None => (key, None),
    };
    let (name, index) = match table.split_once('[') {
        Some((n, i)) => (n, Some(i.trim_end_matches(']').parse::<usize>().ok()?)),
        None => (table, None),
    };
    let header = match index {
        Some(_) => format!("[[{name}]]"),
        None => format!("[{name}]"),
    };
    let mut seen = 0usize;
    let mut inside = false;
    let mut in_string = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        // Skip the inside of multi-line strings (rules written inline).
        if t.matches("\'\'\'").count() % 2 == 1 || t.matches("\"\"\"").count() % 2 == 1 {
            in_string = !in_string;
            if !in_string {
                continue;
            }
        } else if in_string {
            continue;
        }
        if t.starts_with('[') {
            inside = t == header
                && index.is_none_or(|n| {
                    seen += 1;
                    seen == n + 1
                });
            if inside && field.is_none() {
                return Some(i + 1);
            }
            continue;
        }
        if inside
            && let Some(f) = field
            && t.strip_prefix(f)
                .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Mail from the allowed networks, for any destination (a smarthost for existing mailers).
    Relay,
    /// Mail from users who log in (RFC 6409): TLS, then AUTH, then MAIL; the login chooses the
    /// tenant, whose approved senders apply.
    Submission,
}

/// `[serve]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// Greeting, EHLO and Received name; empty = `[engine] helo_name`.
    pub hostname: String,
    /// `-` = standard output, a path, or empty for none.
    pub event_log: String,
    /// Listener threads.
    pub listener_threads: usize,
    /// Intake threads.
    pub intake_threads: usize,
    /// Messages waiting for an intake thread.
    pub intake_queue: usize,
    /// Seconds transactions in progress get at shutdown.
    pub shutdown_grace_s: u64,
    /// Failed logins from one address answered without delay.
    pub auth_failures_free: u32,
    /// Failed logins after which the address is refused.
    pub auth_failures_max: u32,
    /// How long a refused address stays refused, in seconds.
    pub auth_lockout_s: u64,
    /// Name the authenticated sender in the Received field (it always reaches the events).
    pub received_auth: bool,
}

impl Default for ServeSection {
    fn default() -> Self {
        ServeSection {
            hostname: String::new(),
            event_log: "-".into(),
            listener_threads: 1,
            intake_threads: 2,
            intake_queue: 4096,
            shutdown_grace_s: 30,
            auth_failures_free: 3,
            auth_failures_max: 10,
            auth_lockout_s: 600,
            received_auth: false,
        }
    }
}

/// `[http]`: the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Where to listen.
    pub address: String,
    /// Threads answering requests.
    pub threads: usize,
    /// Connections at once.
    pub max_connections: usize,
    /// Octets of one request body.
    pub max_request_size: usize,
    /// Messages in one request.
    pub max_messages: usize,
    /// Seconds a request's headers may take.
    pub header_timeout_s: u64,
    /// Seconds a request's body may take.
    pub request_timeout_s: u64,
    /// The tenant of admin injections that name none.
    pub tenant: String,
    /// `GET /metrics` without a token.
    pub public_metrics: bool,
    /// PEM certificate chain.
    pub tls_cert: String,
    /// PEM private key.
    pub tls_key: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            address: "127.0.0.1:8025".into(),
            threads: 2,
            max_connections: 1000,
            max_request_size: 16 << 20,
            max_messages: 1000,
            header_timeout_s: 10,
            request_timeout_s: 60,
            tenant: "default".into(),
            public_metrics: false,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

/// The HTTP API as configured.
#[derive(Debug, Clone)]
pub struct Http {
    /// `[http]` as written.
    pub section: HttpSection,
    /// The address.
    pub address: SocketAddr,
    /// Certificate and key files, for HTTPS.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// `[[api_token]]`.
    pub tokens: Vec<ApiToken>,
}

/// One `[[api_token]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// A name for logs.
    pub name: String,
    /// The token's SHA-256, 64 hex digits.
    pub sha256: String,
    /// Empty for an admin token; else the only tenant it acts for.
    #[serde(default)]
    pub tenant: String,
}

/// One `[[listener]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerToml {
    address: String,
    role: Role,
    #[serde(default = "default_tenant")]
    tenant: String,
    #[serde(default)]
    allowed_networks: Vec<String>,
    #[serde(default = "d_max_connections")]
    max_connections: usize,
    #[serde(default = "d_per_client")]
    max_connections_per_client: usize,
    #[serde(default = "d_size")]
    max_message_size: usize,
    #[serde(default = "d_rcpts")]
    max_recipients: usize,
    #[serde(default = "d_line")]
    max_line: usize,
    #[serde(default = "d_batch")]
    max_batch: usize,
    #[serde(default = "d_errors")]
    max_errors: u32,
    #[serde(default = "d_idle")]
    idle_timeout_s: u64,
    #[serde(default = "d_data")]
    data_timeout_s: u64,
    #[serde(default = "d_message")]
    message_timeout_s: u64,
    #[serde(default)]
    tls_cert: String,
    #[serde(default)]
    tls_key: String,
    #[serde(default)]
    starttls: Option<bool>,
    #[serde(default)]
    implicit_tls: bool,
}

fn default_tenant() -> String {
    "default".into()
}
fn d_max_connections() -> usize {
    1000
}
fn d_per_client() -> usize {
    50
}
fn d_size() -> usize {
    50 * 1024 * 1024
}
fn d_rcpts() -> usize {
    1000
}
fn d_line() -> usize {
    2048
}
fn d_batch() -> usize {
    100
}
fn d_errors() -> u32 {
    20
}
fn d_idle() -> u64 {
    300
}
fn d_data() -> u64 {
    180
}
fn d_message() -> u64 {
    600
}

/// The largest message a listener may take: the spool's record limit less room for the trace and
/// signature fields the engine adds.
pub const MAX_MESSAGE_SIZE: usize = (64 << 20) - (64 << 10);

/// A listener after validation.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Where it listens.
    pub address: SocketAddr,
    /// The address as text, for events and log lines (formatted once, not per message).
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// The tenant its mail is submitted under.
    pub tenant: String,
    /// Client networks that may relay.
    pub allowed_networks: Vec<IpNet>,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one address.
    pub max_connections_per_client: usize,
    /// The server session's settings.
    pub session: ServerConfig,
    /// The certificate chain and private key (PEM files) for TLS, if it offers TLS.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// TLS from the first byte (RFC 8314, port 465) rather than STARTTLS.
    pub implicit_tls: bool,
}

impl Listener {
    /// Whether `ip` may relay through this listener.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.allowed_networks.iter().any(|n| n.contains(&ip))
    }
}

/// The whole `vmta serve` configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// `[serve]`.
    pub serve: ServeSection,
    /// The listeners.
    pub listeners: Vec<Listener>,
    /// `[[user]]`: who may log in.
    pub users: Vec<crate::users::UserConfig>,
    /// `[http]` and `[[api_token]]`, if there is an HTTP API.
    pub http: Option<Http>,
    /// Everything else: the engine's configuration.
    pub engine: EngineConfig,
    /// The file it was read from (what a reload reads again).
    pub path: Option<PathBuf>,
}

impl ServeConfig {
    /// A path from the configuration, relative to the configuration file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.engine.base_dir.join(p)
        }
    }
}

impl ServeConfig {
    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut c =
            ServeConfig::from_toml(&text).map_err(|e| ConfigError(locate(path, &text, &e.0)))?;
        c.engine.base_dir = path.parent().map(PathBuf::from).unwrap_or_default();
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text.
    pub fn from_toml(text: &str) -> Result<ServeConfig, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError(match line {
                Some(l) => format!("line {l}: {}", e.message().trim_end()),
                None => format!("configuration: {}", e.message().trim_end()),
            })
        })?;
        let serve: ServeSection = match table.remove("serve") {
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError(format!("[serve]: {}", e.message())))?,
            None => ServeSection::default(),
        };
        let users: Vec<crate::users::UserConfig> = match table.remove("user") {
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError(format!("[[user]]: {}", e.message())))?,
            None => Vec::new(),
        };
        let listeners: Vec<ListenerToml> = match table.remove("listener") {
            Some(v) => v.try_into().map_err(|e: toml::de::Error| {
                ConfigError(format!("[[listener]]: {}", e.message()))
            })?,
            None => Vec::new(),
        };
        let http: Option<HttpSection> =
            match table.remove("http") {
                Some(v) => Some(v.try_into().map_err(|e: toml::de::Error| {
                    ConfigError(format!("[http]: {}", e.message()))
                })?),
                None => None,
            };
        let tokens: Vec<ApiToken> = match table.remove("api_token") {
            Some(v) => v.try_into().map_err(|e: toml::de::Error| {
                ConfigError(format!("[[api_token]]: {}", e.message()))
            })?,
            None => Vec::new(),
        };
        drop(table);
        // The engine reads the text itself, without the daemon's tables, so its errors name keys
        // at the lines the user wrote.
        let engine = EngineConfig::from_toml(&without_daemon_tables(text))
            .map_err(|e| ConfigError(e.to_string()))?;
        let hostname = if serve.hostname.is_empty() {
            engine.engine.helo_name.clone()
        } else {
            serve.hostname.clone()
        };
        if serve.listener_threads == 0 || serve.listener_threads > 64 {
            return Err(ConfigError(
                "[serve] listener_threads: must be 1 to 64".into(),
            ));
        }
        if serve.intake_threads == 0 || serve.intake_threads > 64 {
            return Err(ConfigError(
                "[serve] intake_threads: must be 1 to 64".into(),
            ));
        }
        if serve.intake_queue == 0 {
            return Err(ConfigError(
                "[serve] intake_queue: must be at least 1".into(),
            ));
        }
        let mut out = Vec::with_capacity(listeners.len());
        for (i, l) in listeners.into_iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            let address: SocketAddr = l.address.parse().map_err(|_| {
                ConfigError(format!(
                    "{}: `{}` is not an IP address and port",
                    key("address"),
                    l.address
                ))
            })?;
            let mut nets = Vec::new();
            for n in &l.allowed_networks {
                let net: IpNet = n
                    .parse()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ConfigError(format!(
                            "{}: `{n}` is not a CIDR network",
                            key("allowed_networks")
                        ))
                    })?;
                nets.push(net);
            }
            if l.tenant.is_empty() {
                return Err(ConfigError(format!("{}: must not be empty", key("tenant"))));
            }
            let checks: [(&str, usize, usize, usize); 6] = [
                ("max_connections", l.max_connections, 1, 1_000_000),
                (
                    "max_connections_per_client",
                    l.max_connections_per_client,
                    1,
                    1_000_000,
                ),
                (
                    "max_message_size",
                    l.max_message_size,
                    1024,
                    MAX_MESSAGE_SIZE,
                ),
                ("max_recipients", l.max_recipients, 1, 100_000),
                ("max_line", l.max_line, 512, 1 << 20),
                ("max_batch", l.max_batch, 1, 100_000),
            ];
            for (k, v, lo, hi) in checks {
                if v < lo || v > hi {
                    return Err(ConfigError(format!(
                        "{}: must be {lo} to {hi}, not {v}",
                        key(k)
                    )));
                }
            }
            for (k, v) in [
                ("idle_timeout_s", l.idle_timeout_s),
                ("data_timeout_s", l.data_timeout_s),
                ("message_timeout_s", l.message_timeout_s),
            ] {
                if v == 0 || v > 86_400 {
                    return Err(ConfigError(format!(
                        "{}: must be 1 to 86400 seconds",
                        key(k)
                    )));
                }
            }
            let tls_files = match (l.tls_cert.is_empty(), l.tls_key.is_empty()) {
                (true, true) => None,
                (false, false) => Some((PathBuf::from(&l.tls_cert), PathBuf::from(&l.tls_key))),
                _ => {
                    return Err(ConfigError(format!(
                        "{}: tls_cert and tls_key go together",
                        key("tls_cert")
                    )));
                }
            };
            let starttls = l.starttls.unwrap_or(tls_files.is_some() && !l.implicit_tls);
            if (starttls || l.implicit_tls) && tls_files.is_none() {
                return Err(ConfigError(format!(
                    "{}: STARTTLS and implicit TLS need tls_cert and tls_key",
                    key("tls_cert")
                )));
            }
            if starttls && l.implicit_tls {
                return Err(ConfigError(format!(
                    "{}: a listener with implicit TLS does not offer STARTTLS",
                    key("starttls")
                )));
            }
            if l.role == Role::Submission && tls_files.is_none() {
                return Err(ConfigError(format!(
                    "{}: a submission listener needs tls_cert and tls_key (AUTH only over TLS)",
                    key("role")
                )));
            }
            let mut session = ServerConfig::new(hostname.clone());
            session.starttls = starttls;
            session.auth = l.role == Role::Submission;
            session.auth_required = l.role == Role::Submission;
            session.max_message_size = l.max_message_size;
            session.max_recipients = l.max_recipients;
            session.max_line = l.max_line;
            session.max_batch = l.max_batch;
            session.max_errors = l.max_errors;
            session.timeouts = ServerTimeouts {
                idle: Duration::from_secs(l.idle_timeout_s),
                data: Duration::from_secs(l.data_timeout_s),
                message: Duration::from_secs(l.message_timeout_s),
            };
            out.push(Listener {
                address,
                name: address.to_string(),
                role: l.role,
                tenant: l.tenant,
                allowed_networks: nets,
                max_connections: l.max_connections,
                max_connections_per_client: l.max_connections_per_client,
                session,
                tls_files,
                implicit_tls: l.implicit_tls,
            });
        }
        if out.iter().any(|l| l.role == Role::Submission) {
            if engine.tenants.is_empty() {
                return Err(ConfigError(
                    "[[listener]]: a submission listener needs [[tenant]] tables (the login chooses \
                     the tenant whose approved senders apply)"
                        .into(),
                ));
            }
            if users.is_empty() {
                return Err(ConfigError(
                    "[[user]]: a submission listener needs at least one user".into(),
                ));
            }
        }
        for (i, u) in users.iter().enumerate() {
            if !engine.tenants.iter().any(|t| t.name == u.tenant) {
                return Err(ConfigError(format!(
                    "user[{i}].tenant: `{}` is not among the [[tenant]] tables",
                    u.tenant
                )));
            }
        }
        let http = match http {
            None if tokens.is_empty() => None,
            None => {
                return Err(ConfigError(
                    "[[api_token]]: tokens without an [http] table".into(),
                ));
            }
            Some(h) => Some(http_config(h, tokens, &engine)?),
        };
        if out.is_empty() && http.is_none() {
            return Err(ConfigError(
                "[[listener]]: at least one listener (or an [http] table) is needed".into(),
            ));
        }
        Ok(ServeConfig {
            serve,
            listeners: out,
            users,
            http,
            engine,
            path: None,
        })
    }
}

fn http_config(
    h: HttpSection,
    tokens: Vec<ApiToken>,
    engine: &EngineConfig,
) -> Result<Http, ConfigError> {
    let address: SocketAddr = h.address.parse().map_err(|_| {
        ConfigError(format!(
            "http.address: `{}` is not an IP address and port",
            h.address
        ))
    })?;
    for (k, v, lo, hi) in [
        ("threads", h.threads, 1, 64),
        ("max_connections", h.max_connections, 1, 1_000_000),
        ("max_request_size", h.max_request_size, 4096, 1 << 30),
        ("max_messages", h.max_messages, 1, 100_000),
    ] {
        if v < lo || v > hi {
            return Err(ConfigError(format!(
                "http.{k}: must be {lo} to {hi}, not {v}"
            )));
        }
    }
    for (k, v) in [
        ("header_timeout_s", h.header_timeout_s),
        ("request_timeout_s", h.request_timeout_s),
    ] {
        if v == 0 || v > 86_400 {
            return Err(ConfigError(format!("http.{k}: must be 1 to 86400 seconds")));
        }
    }
    if h.tenant.is_empty() {
        return Err(ConfigError("http.tenant: must not be empty".into()));
    }
    let tls_files = match (h.tls_cert.is_empty(), h.tls_key.is_empty()) {
        (true, true) => None,
        (false, false) => Some((PathBuf::from(&h.tls_cert), PathBuf::from(&h.tls_key))),
        _ => {
            return Err(ConfigError(
                "http.tls_cert: tls_cert and tls_key go together".into(),
            ));
        }
    };
    if tokens.is_empty() {
        return Err(ConfigError(
            "[[api_token]]: the HTTP API needs at least one token".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tokens.iter().enumerate() {
        if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError(format!(
                "api_token[{i}].sha256: must be 64 hex digits (the SHA-256 `vmta token` prints)"
            )));
        }
        if !seen.insert(t.sha256.to_ascii_lowercase()) {
            return Err(ConfigError(format!(
                "api_token[{i}].sha256: the same token is configured twice"
            )));
        }
        if !t.tenant.is_empty()
            && !engine.tenants.is_empty()
            && !engine.tenants.iter().any(|x| x.name == t.tenant)
        {
            return Err(ConfigError(format!(
                "api_token[{i}].tenant: `{}` is not among the [[tenant]] tables",
                t.tenant
            )));
        }
    }
    Ok(Http {
        section: h,
        address,
        tls_files,
        tokens,
    })
}

/// `text` with the `[serve]` and `[[listener]]` tables blanked out line by line (line numbers kept),
/// skipping table headers inside multi-line strings.
fn without_daemon_tables(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    let mut in_string: Option<&str> = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if in_string.is_none() && trimmed.starts_with('[') {
            let header = trimmed.split('#').next().unwrap_or("").trim();
            let name: String = header
                .trim_matches(|c| c == '[' || c == ']')
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            skipping = matches!(
                name.as_str(),
                "serve" | "listener" | "user" | "http" | "api_token"
            );
        }
        for delim in ["\"\"\"", "'''"] {
            if line.matches(delim).count() % 2 == 1 {
                in_string = match in_string {
                    None => Some(delim),
                    Some(d) if d == delim => None,
                    other => other,
                };
            }
        }
        if skipping {
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[engine]
spool_dir = "s"
[serve]
hostname = "relay.test"
[[listener]]
address = "127.0.0.1:2525"
role = "relay"
allowed_networks = ["127.0.0.0/8", "::1"]
"#;

    #[test]
    fn the_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serve");
        for name in ["vmta.toml", "submission.toml"] {
            let c = ServeConfig::from_file(&dir.join(name))
                .unwrap_or_else(|e| panic!("examples/serve/{name}: {e}"));
            assert!(!c.listeners.is_empty());
        }
        let sub = ServeConfig::from_file(&dir.join("submission.toml")).unwrap();
        let users = crate::users::Users::new(sub.users).unwrap();
        assert_eq!(
            users.verify("demo", "demo-password").as_deref(),
            Some("demo")
        );
    }

    #[test]
    fn errors_name_the_file_and_the_line_of_their_key() {
        let text = "[engine]\nspool_dir = \"s\"\n[shaping]\nrules = \'\'\'\n[engine]\nshards = 1\n\'\'\'\n\
                    [engine2]\n[[tenant]]\nname = \"a\"\n[[tenant]]\nname = \"b\"\npool = \"x\"\n\
                    [engine]\nshards = \"x\"\n";
        let p = Path::new("/etc/vmta.toml");
        assert_eq!(
            locate(p, text, "configuration key `engine.shards`: invalid"),
            "/etc/vmta.toml:15: configuration key `engine.shards`: invalid"
        );
        assert_eq!(
            locate(p, text, "tenant[1].pool: unknown pool"),
            "/etc/vmta.toml:13: tenant[1].pool: unknown pool"
        );
        assert_eq!(
            locate(p, text, "x `shaping.rules`: bad"),
            "/etc/vmta.toml:4: x `shaping.rules`: bad"
        );
        assert_eq!(locate(p, text, "line 7: oops"), "/etc/vmta.toml:7: oops");
        assert_eq!(
            locate(p, text, "no key here"),
            "/etc/vmta.toml: no key here"
        );
        let e = ServeConfig::from_toml("[serve]\nx = [\n").unwrap_err();
        assert!(e.0.starts_with("line "), "{e}");
    }

    #[test]
    fn parses_listeners_beside_the_engine() {
        let c = ServeConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let l = &c.listeners[0];
        assert_eq!(l.session.hostname, "relay.test");
        assert!(l.allows("127.0.0.2".parse().unwrap()));
        assert!(l.allows("::1".parse().unwrap()));
        assert!(l.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!l.allows("10.0.0.1".parse().unwrap()));
        assert_eq!(c.engine.engine.spool_dir, PathBuf::from("s"));
    }

    #[test]
    fn engine_tables_are_read_from_the_text_as_written() {
        let text = format!(
            "{GOOD}[shaping]\nrules = \'\'\'\n[serve]\n[defaults]\nmax_connections = 1\n\'\'\'\n[[tenant]]\nname = \"t\"\n"
        );
        let e = ServeConfig::from_toml(&format!("{GOOD}[[tenant]]\nname = \"t\"\n")).unwrap_err();
        assert!(e.0.contains("missing field `pool`"), "{e}");
        let stripped = without_daemon_tables(&text);
        assert!(stripped.contains("[serve]\n[defaults]"), "{stripped}");
        assert!(!stripped.contains("relay.test"), "{stripped}");
        assert_eq!(stripped.lines().count(), text.lines().count());
    }

    #[test]
    fn refuses_bad_values_naming_the_key() {
        let e = ServeConfig::from_toml(&GOOD.replace("127.0.0.0/8", "127.0.0.0/99")).unwrap_err();
        assert!(e.0.contains("listener[0].allowed_networks"), "{e}");
        let e = ServeConfig::from_toml(&GOOD.replace("role = \"relay\"", "role = \"open\""))
            .unwrap_err();
        assert!(e.0.contains("[[listener]]"), "{e}");
        let e = ServeConfig::from_toml(&format!("{GOOD}max_line = 10\n")).unwrap_err();
        assert!(e.0.contains("listener[0].max_line"), "{e}");
        let e =
            ServeConfig::from_toml(&GOOD.replace("[engine]", "[engine]\nbogus = 1")).unwrap_err();
        assert!(e.0.contains("bogus"), "{e}");
        let e = ServeConfig::from_toml("[engine]\n").unwrap_err();
        assert!(e.0.contains("at least one listener"), "{e}");
    }

    #[test]
    fn parses_the_http_api_and_refuses_bad_tokens() {
        let token = format!(
            "[[api_token]]\nname = \"ops\"\nsha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        let c = ServeConfig::from_toml(&format!("{GOOD}[http]\nthreads = 3\n{token}")).unwrap();
        let h = c.http.expect("an HTTP API");
        assert_eq!(h.address, "127.0.0.1:8025".parse().unwrap());
        assert_eq!(h.section.threads, 3);
        assert_eq!(h.tokens.len(), 1);
        // Without [http], no API; tokens alone are a mistake.
        assert!(ServeConfig::from_toml(GOOD).unwrap().http.is_none());
        let e = ServeConfig::from_toml(&format!("{GOOD}{token}")).unwrap_err();
        assert!(e.0.contains("without an [http]"), "{e}");
        for (extra, key) in [
            ("[http]\n", "at least one token"),
            (
                "[http]\n[[api_token]]\nname = \"x\"\nsha256 = \"12\"\n",
                "api_token[0].sha256",
            ),
            (
                &format!("[http]\naddress = \"nowhere\"\n{token}"),
                "http.address",
            ),
            (&format!("[http]\nthreads = 0\n{token}"), "http.threads"),
            (&format!("[http]\ncolour = 1\n{token}"), "unknown field"),
            (&format!("[http]\ntls_cert = \"a\"\n{token}"), "go together"),
            (&format!("[http]\n{token}{token}"), "twice"),
        ] {
            let e = ServeConfig::from_toml(&format!("{GOOD}{extra}")).unwrap_err();
            assert!(e.0.contains(key), "{extra}: {e}");
        }
    }
}
