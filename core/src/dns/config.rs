//! Resolver configuration: nameservers, per-query timeout and attempts, cache bounds, address family
//! preference; read from `/etc/resolv.conf` (resolv.conf(5): `nameserver`, `options timeout:n attempts:n
//! ndots:n rotate`) or built in code, with `host:port` nameservers for tests and non-standard setups.
//!
//! `options rotate` is honoured. Not implemented from resolv.conf: `search`/`domain` lists (mail domains
//! are always absolute, so `ndots` is parsed and kept but never applied), `sortlist`, `edns0`/`use-vc`
//! (EDNS0 is on unless [`Config::edns_payload`] is 0, TCP is used after truncation).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Which address families MX hosts are resolved to, and in which order addresses are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressFamily {
    /// A and AAAA, IPv4 addresses listed first (the default).
    #[default]
    Ipv4First,
    /// A and AAAA, IPv6 addresses listed first.
    Ipv6First,
    /// A only.
    Ipv4Only,
    /// AAAA only.
    Ipv6Only,
}

impl AddressFamily {
    pub(crate) fn wants_v4(self) -> bool {
        self != AddressFamily::Ipv6Only
    }
    pub(crate) fn wants_v6(self) -> bool {
        self != AddressFamily::Ipv4Only
    }
}

/// Resolver settings. [`Config::default`] gives the glibc defaults (5 s timeout, 2 attempts) with
/// `127.0.0.1:53` as nameserver; [`Config::from_resolv_conf`] reads resolv.conf text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Nameservers (recursive resolvers), tried in order; each try of a question goes to the next one.
    pub nameservers: Vec<SocketAddr>,
    /// How long one try (one datagram or one TCP exchange) waits for its answer.
    pub timeout: Duration,
    /// How many rounds over all nameservers a question gets: a question is sent at most
    /// `attempts * nameservers.len()` times before it fails temporarily.
    pub attempts: u32,
    /// `options ndots:n` from resolv.conf. Kept for display only: mail domains are absolute names and no
    /// search list is applied.
    pub ndots: u32,
    /// Positive and negative TTLs below this are raised to it.
    pub min_ttl: Duration,
    /// Positive TTLs above this are lowered to it.
    pub max_ttl: Duration,
    /// Negative TTLs (RFC 2308, from the SOA) above this are lowered to it.
    pub max_negative_ttl: Duration,
    /// Maximum number of cache entries (one per name and type); the entry closest to expiry is evicted.
    pub cache_capacity: usize,
    /// `options rotate`: new questions start at the next nameserver in turn instead of the first.
    pub rotate: bool,
    /// After a try to a nameserver times out, new questions start at another nameserver for this long
    /// (the timed-out one is still tried when the others fail); an answer from it ends the hold-down.
    pub server_holddown: Duration,
    /// Maximum number of exchanges (sockets) open at once; further questions wait in a queue. The mio
    /// driver needs this many consecutive tokens.
    pub max_in_flight: usize,
    /// Maximum number of lookups in progress; a lookup beyond it fails at once (temporary, `systemerror`).
    pub max_lookups: usize,
    /// Address families for MX hosts and address lookups.
    pub family: AddressFamily,
    /// Maximum number of CNAME records followed for one question.
    pub cname_limit: u32,
    /// Maximum number of MX hosts (after sorting) whose addresses are resolved; the rest are dropped.
    pub max_mx_hosts: usize,
    /// EDNS0 UDP payload size advertised in queries (RFC 6891); 0 sends queries without EDNS0.
    pub edns_payload: u16,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            nameservers: vec![SocketAddr::from(([127, 0, 0, 1], 53))],
            timeout: Duration::from_secs(5),
            attempts: 2,
            ndots: 1,
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(3_600),
            rotate: false,
            server_holddown: Duration::from_secs(30),
            cache_capacity: 10_000,
            max_in_flight: 64,
            max_lookups: 100_000,
            family: AddressFamily::Ipv4First,
            cname_limit: 8,
            max_mx_hosts: 64,
            edns_payload: 1232,
        }
    }
}

/// A configuration value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Limits applied to resolv.conf values (glibc caps timeout at 30 and attempts at 5).
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;
/// glibc reads at most three nameservers (MAXNS); we allow a few more but not an unbounded list.
const MAX_NAMESERVERS: usize = 8;

impl Config {
    /// A configuration with the given nameservers and all other values at their defaults.
    pub fn with_nameservers(nameservers: Vec<SocketAddr>) -> Config {
        Config {
            nameservers,
            ..Config::default()
        }
    }

    /// Reads resolv.conf text: `nameserver` lines (IPv4 or IPv6, a `%scope` suffix is dropped) and
    /// `options timeout:n attempts:n ndots:n`. Unknown lines and options are ignored, like glibc does.
    /// Without any nameserver line the default `127.0.0.1:53` is kept.
    pub fn from_resolv_conf(text: &str) -> Config {
        let mut config = Config::default();
        let mut servers = Vec::new();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(addr) = words.next() {
                        let addr = addr.split('%').next().unwrap_or(addr);
                        if let Ok(ip) = addr.parse::<IpAddr>()
                            && servers.len() < MAX_NAMESERVERS
                        {
                            servers.push(SocketAddr::new(ip, 53));
                        }
                    }
                }
                Some("options") => {
                    for option in words {
                        if option == "rotate" {
                            config.rotate = true;
                            continue;
                        }
                        let (key, value) = option.split_once(':').unwrap_or((option, ""));
                        let Ok(n) = value.parse::<u32>() else {
                            continue;
                        };
                        match key {
                            "timeout" => {
                                config.timeout =
                                    Duration::from_secs(u64::from(n.max(1)).min(MAX_TIMEOUT_SECS))
                            }
                            "attempts" => config.attempts = n.clamp(1, MAX_ATTEMPTS),
                            "ndots" => config.ndots = n.min(15),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !servers.is_empty() {
            config.nameservers = servers;
        }
        config
    }

    /// Reads `/etc/resolv.conf`; a missing file gives [`Config::default`].
    pub fn from_system() -> std::io::Result<Config> {
        match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(text) => Ok(Config::from_resolv_conf(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e),
        }
    }

    /// Checks the values the resolver relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nameservers.is_empty() {
            return Err(ConfigError("no nameserver configured".into()));
        }
        if self.attempts == 0 {
            return Err(ConfigError("attempts must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError("timeout must not be zero".into()));
        }
        if self.max_in_flight == 0 || self.cache_capacity == 0 || self.max_lookups == 0 {
            return Err(ConfigError(
                "max_in_flight, cache_capacity and max_lookups must be at least 1".into(),
            ));
        }
        if self.min_ttl > self.max_ttl {
            return Err(ConfigError("min_ttl is above max_ttl".into()));
        }
        Ok(())
    }
}

/// Parses a nameserver given as `IP`, `IP:PORT`, `[IPv6]` or `[IPv6]:PORT` (port 53 when absent).
pub fn parse_nameserver(text: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            ConfigError(format!(
                "not a nameserver address (IP or IP:PORT): {text:?}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let c = Config::from_resolv_conf(
            "# comment\nsearch example.com\nnameserver 10.0.0.1\nnameserver fe80::1%eth0 ; x\n\
             nameserver bogus\noptions ndots:2 timeout:3 attempts:9 rotate\n",
        );
        assert_eq!(
            c.nameservers,
            vec![
                "10.0.0.1:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.attempts, 5);
        assert_eq!(c.ndots, 2);
        assert!(c.rotate);
        let empty = Config::from_resolv_conf("");
        assert_eq!(empty.nameservers, Config::default().nameservers);
        assert!(empty.validate().is_ok());
    }

    #[test]
    fn nameserver_forms() {
        assert_eq!(
            parse_nameserver("127.0.10.1:5353").unwrap(),
            "127.0.10.1:5353".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.10.1").unwrap(),
            "127.0.10.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]:53").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("::1").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("[::1]").unwrap(),
            "[::1]:53".parse().unwrap()
        );
        assert!(parse_nameserver("ns.example").is_err());
    }
}
