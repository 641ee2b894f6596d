//! Preflight: the checks receivers apply to a sender, run before sending so an operator sees what a
//! receiver will see.
//!
//! Each check gives [`Verdict::Pass`], [`Verdict::Warn`] or [`Verdict::Fail`] with a reason and the DNS
//! record it read:
//!
//! - `spf`: SPF (RFC 7208, [`spf`]) for the IP and the sending domain: pass is a pass; neutral,
//!   softfail and temperror warn; fail, none and permerror fail.
//! - `dkim`: the selector's key record (RFC 6376 §3.6.1) is published, not revoked, of a known type,
//!   and, when the configured private key is given, is its public key.
//! - `dmarc`: a DMARC record (RFC 7489, [`dmarc`]) exists for the From domain; its policy; SPF or DKIM
//!   (as the checks above found them, with `d=` the sending domain) aligned with the From domain.
//!   `p=none` warns (monitoring only).
//! - `rdns`: the IP has a PTR record whose name resolves back to the IP (forward-confirmed reverse DNS,
//!   RFC 8601 §3's `iprev`).
//! - `helo`: the HELO name resolves to the IP and is the forward-confirmed PTR name.
//! - `blocklist`: the IP (reversed octets, or nibbles for IPv6) and the domain are not listed on the
//!   configured DNS blocklists (RFC 5782); an answer in 127.255.255.0/24 means the list refused the
//!   query (Spamhaus' convention) and warns.
//! - `mx`: the sending domain has an MX (or at least an address for the implicit MX of RFC 5321
//!   §5.1, which warns) so bounces and replies reach someone; a null MX (RFC 7505) fails.
//!
//! The checks are written against [`DnsLookup`], a five-method trait, so they are sans-IO: the unit
//! tests use an in-memory zone; the CLI and the integration tests use [`resolver::ResolverLookup`],
//! vmta's own resolver, against real DNS servers.

#![forbid(unsafe_code)]

pub mod dmarc;
pub mod resolver;
pub mod spf;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::dkim::{Algorithm, KeyRecord};
use spf::SpfResult;

/// A DNS lookup that did not produce records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist (RCODE 3).
    NxDomain,
    /// SERVFAIL, timeout, refused, malformed answer: try again later.
    Temporary(String),
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NxDomain => f.write_str("NXDOMAIN"),
            LookupError::Temporary(e) => write!(f, "temporary DNS error: {e}"),
        }
    }
}

impl std::error::Error for LookupError {}

/// The result of a lookup: the records (empty for NODATA) or an error.
pub type Lookup<T> = Result<Vec<T>, LookupError>;

/// The DNS queries preflight needs. Names are given without a trailing dot.
pub trait DnsLookup {
    /// TXT records, each record's character-strings joined (RFC 7208 §3.3), invalid UTF-8 replaced.
    fn txt(&self, name: &str) -> Lookup<String>;
    /// A records.
    fn a(&self, name: &str) -> Lookup<Ipv4Addr>;
    /// AAAA records.
    fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr>;
    /// MX records: (preference, exchange without trailing dot; `""` for a null MX's `.`).
    fn mx(&self, name: &str) -> Lookup<(u16, String)>;
    /// PTR records of an address, names without trailing dot.
    fn ptr(&self, ip: IpAddr) -> Lookup<String>;
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Receivers will be satisfied.
    Pass,
    /// Not fatal, but worth fixing (or could not be decided).
    Warn,
    /// Receivers will hold this against the sender.
    Fail,
}

impl Verdict {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name (`spf`, `dkim`, `dmarc`, `rdns`, `helo`, `blocklist`, `mx`).
    pub check: &'static str,
    /// How it came out.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    /// The DNS record(s) read, as text.
    pub record: Option<String>,
}

fn result(
    check: &'static str,
    verdict: Verdict,
    reason: impl Into<String>,
    record: Option<String>,
) -> CheckResult {
    CheckResult {
        check,
        verdict,
        reason: reason.into(),
        record,
    }
}

/// Blocklists of IP addresses used when none are configured.
pub const DEFAULT_IP_BLOCKLISTS: &[&str] = &[
    "zen.spamhaus.org",
    "bl.spamcop.net",
    "b.barracudacentral.org",
];
/// Blocklists of domains used when none are configured.
pub const DEFAULT_DOMAIN_BLOCKLISTS: &[&str] = &["dbl.spamhaus.org"];

/// What to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightInput {
    /// The sending domain: envelope sender domain and DKIM `d=`.
    pub domain: String,
    /// The From domain for DMARC; the sending domain when `None`.
    pub from_domain: Option<String>,
    /// The sending IP address.
    pub ip: IpAddr,
    /// The DKIM selector.
    pub selector: String,
    /// The HELO name the sender uses.
    pub helo: Option<String>,
    /// The configured key's algorithm and public key bytes, to compare with the published one.
    pub public_key: Option<(Algorithm, Vec<u8>)>,
    /// DNS blocklist zones for the IP.
    pub ip_blocklists: Vec<String>,
    /// DNS blocklist zones for the domain.
    pub domain_blocklists: Vec<String>,
}

impl PreflightInput {
    /// An input with the default blocklists.
    pub fn new(domain: &str, ip: IpAddr, selector: &str) -> PreflightInput {
        PreflightInput {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            from_domain: None,
            ip,
            selector: selector.to_string(),
            helo: None,
            public_key: None,
            ip_blocklists: DEFAULT_IP_BLOCKLISTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            domain_blocklists: DEFAULT_DOMAIN_BLOCKLISTS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// Runs every check, in the order of the module documentation (one `blocklist` result per zone).
pub fn run(dns: &dyn DnsLookup, input: &PreflightInput) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let (spf_check, spf_result) = check_spf(dns, input);
    out.push(spf_check);
    let dkim = check_dkim(dns, input);
    let dkim_ok = dkim.verdict != Verdict::Fail;
    out.push(dkim);
    out.push(check_dmarc(dns, input, spf_result, dkim_ok));
    let (rdns, confirmed) = check_rdns(dns, input.ip);
    out.push(rdns);
    if let Some(helo) = &input.helo {
        out.push(check_helo(dns, input.ip, helo, &confirmed));
    }
    for zone in &input.ip_blocklists {
        out.push(check_ip_blocklist(dns, input.ip, zone));
    }
    for zone in &input.domain_blocklists {
        out.push(check_domain_blocklist(dns, &input.domain, zone));
    }
    out.push(check_mx(dns, &input.domain));
    out
}

/// The SPF check; also returns the SPF result for DMARC.
pub fn check_spf(dns: &dyn DnsLookup, input: &PreflightInput) -> (CheckResult, SpfResult) {
    let helo = input.helo.as_deref().unwrap_or(&input.domain);
    let o = spf::check_host(
        dns,
        input.ip,
        &input.domain,
        &format!("postmaster@{}", input.domain),
        helo,
    );
    let verdict = match o.result {
        SpfResult::Pass => Verdict::Pass,
        SpfResult::Neutral | SpfResult::SoftFail | SpfResult::TempError => Verdict::Warn,
        SpfResult::Fail | SpfResult::None | SpfResult::PermError => Verdict::Fail,
    };
    (
        result(
            "spf",
            verdict,
            format!("{}: {} ({} DNS lookups)", o.result, o.reason, o.lookups),
            o.record,
        ),
        o.result,
    )
}

/// The DKIM key check.
pub fn check_dkim(dns: &dyn DnsLookup, input: &PreflightInput) -> CheckResult {
    let name = format!("{}._domainkey.{}", input.selector, input.domain);
    let txts = match dns.txt(&name) {
        Ok(t) => t,
        Err(LookupError::NxDomain) => {
            return result(
                "dkim",
                Verdict::Fail,
                format!("no key record at {name} (NXDOMAIN)"),
                None,
            );
        }
        Err(e) => return result("dkim", Verdict::Warn, format!("TXT {name}: {e}"), None),
    };
    let keys: Vec<&String> = txts
        .iter()
        .filter(|t| t.contains("p=") || t.trim_start().starts_with("v=DKIM1"))
        .collect();
    let text = match keys.as_slice() {
        [] => {
            return result(
                "dkim",
                Verdict::Fail,
                format!("no key record at {name}"),
                txts.first().cloned(),
            );
        }
        [one] => (*one).clone(),
        _ => {
            return result(
                "dkim",
                Verdict::Fail,
                format!(
                    "{} key records at {name}: receivers may pick any",
                    keys.len()
                ),
                Some(txts.join(" | ")),
            );
        }
    };
    let record = match KeyRecord::parse(&text) {
        Ok(r) => r,
        Err(e) => {
            return result(
                "dkim",
                Verdict::Fail,
                format!("bad key record at {name}: {e}"),
                Some(text),
            );
        }
    };
    if record.is_revoked() {
        return result(
            "dkim",
            Verdict::Fail,
            format!("the key at {name} is revoked (empty p=)"),
            Some(text),
        );
    }
    let described = match record.key_type.as_str() {
        "rsa" => match rsa_bits(&record.public_key) {
            Some(bits) if bits < 1024 => {
                return result(
                    "dkim",
                    Verdict::Fail,
                    format!(
                        "RSA key of {bits} bits: receivers ignore keys under 1024 bits (RFC 8301)"
                    ),
                    Some(text),
                );
            }
            Some(bits) => format!("RSA {bits}-bit key"),
            None => {
                return result(
                    "dkim",
                    Verdict::Fail,
                    "p= is not an RSA public key",
                    Some(text),
                );
            }
        },
        "ed25519" if record.public_key.len() == 32 => "Ed25519 key".to_string(),
        "ed25519" => {
            return result(
                "dkim",
                Verdict::Fail,
                "p= is not a 32-byte Ed25519 key",
                Some(text),
            );
        }
        other => {
            return result(
                "dkim",
                Verdict::Fail,
                format!("unknown key type k={other}"),
                Some(text),
            );
        }
    };
    if let Some((alg, public)) = &input.public_key
        && (alg.key_type() != record.key_type || *public != record.public_key)
    {
        return result(
            "dkim",
            Verdict::Fail,
            format!(
                "the {described} at {name} is not the public half of the configured {alg} key; publish: v=DKIM1; k={}; p={}",
                alg.key_type(),
                BASE64.encode(public)
            ),
            Some(text),
        );
    }
    if record.testing {
        return result(
            "dkim",
            Verdict::Warn,
            format!("{described} at {name} is in test mode (t=y)"),
            Some(text),
        );
    }
    let compared = if input.public_key.is_some() {
        "matches the configured private key"
    } else {
        "published (no private key given to compare)"
    };
    let verdict = if input.public_key.is_some() {
        Verdict::Pass
    } else {
        Verdict::Warn
    };
    if let Some(bits) = rsa_bits(&record.public_key).filter(|_| record.key_type == "rsa")
        && bits < 2048
    {
        return result(
            "dkim",
            Verdict::Warn,
            format!("{described} at {name} {compared}; use 2048 bits or more"),
            Some(text),
        );
    }
    result(
        "dkim",
        verdict,
        format!("{described} at {name} {compared}"),
        Some(text),
    )
}

/// The modulus length of an RSA public key in `p=` (SubjectPublicKeyInfo, or a bare RSAPublicKey as
/// some publish it).
fn rsa_bits(der: &[u8]) -> Option<usize> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::PublicKey::from_public_key_der(der)
        .or_else(|_| rsa::PublicKey::from_pkcs1_der(der))
        .ok()?;
    Some(key.size() * 8)
}

/// The DMARC check, given the SPF result (for the sending domain) and whether DKIM (`d=` the sending
/// domain) is in order.
pub fn check_dmarc(
    dns: &dyn DnsLookup,
    input: &PreflightInput,
    spf: SpfResult,
    dkim_ok: bool,
) -> CheckResult {
    let from = input
        .from_domain
        .as_deref()
        .unwrap_or(&input.domain)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match dmarc::discover(dns, &from) {
        dmarc::Discovery::None => result(
            "dmarc",
            Verdict::Fail,
            format!(
                "no DMARC record for {from} or its organizational domain {}",
                dmarc::organizational_domain(&from)
            ),
            None,
        ),
        dmarc::Discovery::TempError(e) => result("dmarc", Verdict::Warn, e, None),
        dmarc::Discovery::Invalid { at, text, why } => result(
            "dmarc",
            Verdict::Fail,
            format!("bad record at {at}: {why}"),
            Some(text),
        ),
        dmarc::Discovery::Found { record, at, text } => {
            let spf_aligned = spf == SpfResult::Pass
                && dmarc::aligned(&input.domain, &from, record.spf_alignment);
            let dkim_aligned =
                dkim_ok && dmarc::aligned(&input.domain, &from, record.dkim_alignment);
            let policy =
                if from != dmarc::organizational_domain(&from) && at != format!("_dmarc.{from}") {
                    record.subdomain_policy.unwrap_or(record.policy)
                } else {
                    record.policy
                };
            let how = match (spf_aligned, dkim_aligned) {
                (true, true) => "SPF and DKIM aligned",
                (true, false) => "SPF aligned, DKIM not",
                (false, true) => "DKIM aligned, SPF not",
                (false, false) => "neither SPF nor DKIM passes aligned",
            };
            let reason = format!(
                "p={policy} at {at} for From domain {from}; {how} with {}",
                input.domain
            );
            let verdict = if !spf_aligned && !dkim_aligned {
                Verdict::Fail
            } else if policy == dmarc::Policy::None || !(spf_aligned && dkim_aligned) {
                Verdict::Warn
            } else {
                Verdict::Pass
            };
            let reason = if policy == dmarc::Policy::None && verdict == Verdict::Warn {
                format!("{reason}; p=none only monitors")
            } else {
                reason
            };
            result("dmarc", verdict, reason, Some(text))
        }
    }
}

fn forward_has(dns: &dyn DnsLookup, name: &str, ip: IpAddr) -> Result<bool, LookupError> {
    match ip {
        IpAddr::V4(v4) => match dns.a(name) {
            Ok(a) => Ok(a.contains(&v4)),
            Err(LookupError::NxDomain) => Ok(false),
            Err(e) => Err(e),
        },
        IpAddr::V6(v6) => match dns.aaaa(name) {
            Ok(a) => Ok(a.contains(&v6)),
            Err(LookupError::NxDomain) => Ok(false),
            Err(e) => Err(e),
        },
    }
}

/// The reverse DNS check; also returns the forward-confirmed names.
pub fn check_rdns(dns: &dyn DnsLookup, ip: IpAddr) -> (CheckResult, Vec<String>) {
    let names = match dns.ptr(ip) {
        Ok(n) if n.is_empty() => {
            return (
                result(
                    "rdns",
                    Verdict::Fail,
                    format!("{ip} has no PTR record"),
                    None,
                ),
                vec![],
            );
        }
        Ok(n) => n,
        Err(LookupError::NxDomain) => {
            return (
                result(
                    "rdns",
                    Verdict::Fail,
                    format!("{ip} has no PTR record (NXDOMAIN)"),
                    None,
                ),
                vec![],
            );
        }
        Err(e) => {
            return (
                result("rdns", Verdict::Warn, format!("PTR {ip}: {e}"), None),
                vec![],
            );
        }
    };
    let record = Some(names.join(", "));
    let mut confirmed = Vec::new();
    let mut errors = Vec::new();
    for n in names.iter().take(10) {
        match forward_has(dns, n, ip) {
            Ok(true) => confirmed.push(n.to_ascii_lowercase()),
            Ok(false) => {}
            Err(e) => errors.push(format!("{n}: {e}")),
        }
    }
    let r = if !confirmed.is_empty() {
        result(
            "rdns",
            Verdict::Pass,
            format!("PTR {} resolves back to {ip}", confirmed.join(", ")),
            record,
        )
    } else if !errors.is_empty() {
        result(
            "rdns",
            Verdict::Warn,
            format!("could not confirm the PTR names: {}", errors.join("; ")),
            record,
        )
    } else {
        result(
            "rdns",
            Verdict::Fail,
            format!("no PTR name of {ip} resolves back to it (not forward-confirmed)"),
            record,
        )
    };
    (r, confirmed)
}

/// The HELO check against the forward-confirmed PTR names.
pub fn check_helo(
    dns: &dyn DnsLookup,
    ip: IpAddr,
    helo: &str,
    confirmed: &[String],
) -> CheckResult {
    let helo = helo.trim_end_matches('.').to_ascii_lowercase();
    let record = Some(helo.clone());
    match forward_has(dns, &helo, ip) {
        Err(e) => result("helo", Verdict::Warn, format!("HELO {helo}: {e}"), record),
        Ok(false) => result(
            "helo",
            Verdict::Fail,
            format!("HELO name {helo} does not resolve to {ip}"),
            record,
        ),
        Ok(true) if confirmed.contains(&helo) => result(
            "helo",
            Verdict::Pass,
            format!("HELO name {helo} resolves to {ip} and is its PTR name"),
            record,
        ),
        Ok(true) => result(
            "helo",
            Verdict::Warn,
            format!(
                "HELO name {helo} resolves to {ip} but is not its forward-confirmed PTR name ({})",
                if confirmed.is_empty() {
                    "none".to_string()
                } else {
                    confirmed.join(", ")
                }
            ),
            record,
        ),
    }
}

/// The blocklist query name for an IP: reversed octets, or reversed nibbles for IPv6 (RFC 5782 §2.1,
/// §2.4).
pub fn blocklist_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut n = spf::nibbles(v6);
            n.reverse();
            format!("{}.{zone}", n.join("."))
        }
    }
}

fn blocklist_query(dns: &dyn DnsLookup, subject: &str, name: &str, zone: &str) -> CheckResult {
    match dns.a(name) {
        Err(LookupError::NxDomain) => result(
            "blocklist",
            Verdict::Pass,
            format!("{subject} is not listed on {zone}"),
            None,
        ),
        Ok(a) if a.is_empty() => result(
            "blocklist",
            Verdict::Pass,
            format!("{subject} is not listed on {zone}"),
            None,
        ),
        Err(e) => result("blocklist", Verdict::Warn, format!("{zone}: {e}"), None),
        Ok(addrs) => {
            let listed: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            let record = Some(format!("{name} A {}", listed.join(" ")));
            if addrs.iter().all(|a| a.octets()[..3] == [127, 255, 255]) {
                return result(
                    "blocklist",
                    Verdict::Warn,
                    format!(
                        "{zone} refused the query ({}): use a resolver it allows",
                        listed.join(" ")
                    ),
                    record,
                );
            }
            if !addrs.iter().any(|a| a.octets()[0] == 127) {
                return result(
                    "blocklist",
                    Verdict::Warn,
                    format!(
                        "{zone} answered outside 127.0.0.0/8 ({}): the zone may be defunct or wildcarded",
                        listed.join(" ")
                    ),
                    record,
                );
            }
            let why = dns.txt(name).ok().and_then(|t| t.into_iter().next());
            let reason = match &why {
                Some(w) => format!("{subject} is LISTED on {zone} ({}): {w}", listed.join(" ")),
                None => format!("{subject} is LISTED on {zone} ({})", listed.join(" ")),
            };
            result("blocklist", Verdict::Fail, reason, record)
        }
    }
}

/// Checks one IP blocklist zone.
pub fn check_ip_blocklist(dns: &dyn DnsLookup, ip: IpAddr, zone: &str) -> CheckResult {
    blocklist_query(dns, &ip.to_string(), &blocklist_name(ip, zone), zone)
}

/// Checks one domain blocklist zone.
pub fn check_domain_blocklist(dns: &dyn DnsLookup, domain: &str, zone: &str) -> CheckResult {
    blocklist_query(dns, domain, &format!("{domain}.{zone}"), zone)
}

/// The MX check.
pub fn check_mx(dns: &dyn DnsLookup, domain: &str) -> CheckResult {
    match dns.mx(domain) {
        Err(LookupError::NxDomain) => result(
            "mx",
            Verdict::Fail,
            format!("{domain} does not exist (NXDOMAIN)"),
            None,
        ),
        Err(e) => result("mx", Verdict::Warn, format!("MX {domain}: {e}"), None),
        Ok(mx) if mx.is_empty() => {
            let a = dns.a(domain).map(|v| !v.is_empty()).unwrap_or(false)
                || dns.aaaa(domain).map(|v| !v.is_empty()).unwrap_or(false);
            if a {
                result(
                    "mx",
                    Verdict::Warn,
                    format!(
                        "{domain} has no MX; mail goes to its address record (implicit MX, RFC 5321 §5.1)"
                    ),
                    None,
                )
            } else {
                result(
                    "mx",
                    Verdict::Fail,
                    format!(
                        "{domain} has no MX and no address: bounces and replies cannot reach it"
                    ),
                    None,
                )
            }
        }
        Ok(mut mx) => {
            mx.sort();
            let record = Some(
                mx.iter()
                    .map(|(p, h)| format!("{p} {}", if h.is_empty() { "." } else { h }))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            if mx.len() == 1 && mx[0].1.is_empty() {
                return result(
                    "mx",
                    Verdict::Fail,
                    format!(
                        "{domain} publishes a null MX (RFC 7505): it accepts no mail, so bounces and replies cannot reach it"
                    ),
                    record,
                );
            }
            let mut reachable = Vec::new();
            let mut dangling = Vec::new();
            for (_, host) in &mx {
                if host.is_empty() {
                    continue;
                }
                let ok = dns.a(host).map(|v| !v.is_empty()).unwrap_or(false)
                    || dns.aaaa(host).map(|v| !v.is_empty()).unwrap_or(false);
                if ok {
                    reachable.push(host.clone())
                } else {
                    dangling.push(host.clone())
                }
            }
            if reachable.is_empty() {
                result(
                    "mx",
                    Verdict::Fail,
                    format!(
                        "no MX host of {domain} has an address ({})",
                        dangling.join(", ")
                    ),
                    record,
                )
            } else if !dangling.is_empty() {
                result(
                    "mx",
                    Verdict::Warn,
                    format!("MX hosts without an address: {}", dangling.join(", ")),
                    record,
                )
            } else {
                result(
                    "mx",
                    Verdict::Pass,
                    format!("{domain} receives mail at {}", reachable.join(", ")),
                    record,
                )
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    /// An in-memory zone for the sans-IO tests.
    #[derive(Debug, Default)]
    pub(crate) struct Zone {
        txt: HashMap<String, Vec<String>>,
        a: HashMap<String, Vec<Ipv4Addr>>,
        aaaa: HashMap<String, Vec<Ipv6Addr>>,
        mx: HashMap<String, Vec<(u16, String)>>,
        ptr: HashMap<IpAddr, Vec<String>>,
        temp: HashSet<String>,
    }

    impl Zone {
        pub(crate) fn add_txt(&mut self, name: &str, text: &str) {
            self.txt.entry(name.into()).or_default().push(text.into());
        }
        pub(crate) fn add_a(&mut self, name: &str, ip: &str) {
            self.a
                .entry(name.into())
                .or_default()
                .push(ip.parse().unwrap());
        }
        pub(crate) fn add_aaaa(&mut self, name: &str, ip: &str) {
            self.aaaa
                .entry(name.into())
                .or_default()
                .push(ip.parse().unwrap());
        }
        pub(crate) fn add_mx(&mut self, name: &str, pref: u16, host: &str) {
            self.mx
                .entry(name.into())
                .or_default()
                .push((pref, host.into()));
        }
        pub(crate) fn add_ptr(&mut self, ip: &str, name: &str) {
            self.ptr
                .entry(ip.parse().unwrap())
                .or_default()
                .push(name.into());
        }
        pub(crate) fn add_temp(&mut self, name: &str) {
            self.temp.insert(name.into());
        }
        fn exists(&self, name: &str) -> bool {
            self.txt.contains_key(name)
                || self.a.contains_key(name)
                || self.aaaa.contains_key(name)
                || self.mx.contains_key(name)
        }
        fn get<T: Clone>(&self, map: &HashMap<String, Vec<T>>, name: &str) -> Lookup<T> {
            if self.temp.contains(name) {
                return Err(LookupError::Temporary("SERVFAIL".into()));
            }
            match map.get(name) {
                Some(v) => Ok(v.clone()),
                None if self.exists(name) => Ok(vec![]),
                None => Err(LookupError::NxDomain),
            }
        }
    }

    impl DnsLookup for Zone {
        fn txt(&self, name: &str) -> Lookup<String> {
            self.get(&self.txt, name)
        }
        fn a(&self, name: &str) -> Lookup<Ipv4Addr> {
            self.get(&self.a, name)
        }
        fn aaaa(&self, name: &str) -> Lookup<Ipv6Addr> {
            self.get(&self.aaaa, name)
        }
        fn mx(&self, name: &str) -> Lookup<(u16, String)> {
            self.get(&self.mx, name)
        }
        fn ptr(&self, ip: IpAddr) -> Lookup<String> {
            self.ptr.get(&ip).cloned().ok_or(LookupError::NxDomain)
        }
    }

    const ED_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn good_zone() -> Zone {
        let mut z = Zone::default();
        z.add_txt("example.com", "v=spf1 ip4:192.0.2.0/24 -all");
        z.add_txt(
            "s1._domainkey.example.com",
            &format!("v=DKIM1; k=ed25519; p={ED_PUBLIC}"),
        );
        z.add_txt(
            "_dmarc.example.com",
            "v=DMARC1; p=reject; rua=mailto:d@example.com",
        );
        z.add_ptr("192.0.2.5", "mta.example.com");
        z.add_a("mta.example.com", "192.0.2.5");
        z.add_mx("example.com", 10, "mx.example.com");
        z.add_a("mx.example.com", "192.0.2.25");
        z.add_a("2.0.0.127.bl.example", "127.0.0.2");
        z.add_txt("2.0.0.127.bl.example", "listed for testing");
        z.add_a("bad.example.dbl.example", "127.0.1.2");
        z
    }

    fn input() -> PreflightInput {
        PreflightInput {
            helo: Some("mta.example.com".into()),
            public_key: Some((Algorithm::Ed25519Sha256, BASE64.decode(ED_PUBLIC).unwrap())),
            ip_blocklists: vec!["bl.example".into()],
            domain_blocklists: vec!["dbl.example".into()],
            ..PreflightInput::new("example.com", "192.0.2.5".parse().unwrap(), "s1")
        }
    }

    fn verdicts(r: &[CheckResult]) -> Vec<(&'static str, Verdict)> {
        r.iter().map(|c| (c.check, c.verdict)).collect()
    }

    #[test]
    fn all_good() {
        let r = run(&good_zone(), &input());
        assert_eq!(
            verdicts(&r),
            [
                ("spf", Verdict::Pass),
                ("dkim", Verdict::Pass),
                ("dmarc", Verdict::Pass),
                ("rdns", Verdict::Pass),
                ("helo", Verdict::Pass),
                ("blocklist", Verdict::Pass),
                ("blocklist", Verdict::Pass),
                ("mx", Verdict::Pass),
            ],
            "{r:#?}"
        );
        assert_eq!(r[0].record.as_deref(), Some("v=spf1 ip4:192.0.2.0/24 -all"));
    }

    #[test]
    fn broken_things_fail() {
        let z = good_zone();
        let mut i = input();
        i.ip = "198.51.100.1".parse().unwrap();
        let r = run(&z, &i);
        assert_eq!(r[0].verdict, Verdict::Fail, "{:?}", r[0]);
        // DKIM still aligned, so DMARC passes on DKIM alone, with a warning.
        assert_eq!(r[2].verdict, Verdict::Warn, "{:?}", r[2]);
        assert_eq!(r[3].verdict, Verdict::Fail);
        assert_eq!(r[4].verdict, Verdict::Fail);
        // Wrong key.
        let mut i = input();
        i.public_key = Some((Algorithm::Ed25519Sha256, vec![7; 32]));
        let d = check_dkim(&z, &i);
        assert_eq!(d.verdict, Verdict::Fail);
        assert!(d.reason.contains("not the public half"), "{}", d.reason);
        // Listed IP and domain.
        let listed = check_ip_blocklist(&z, "127.0.0.2".parse().unwrap(), "bl.example");
        assert_eq!(listed.verdict, Verdict::Fail);
        assert!(listed.reason.contains("listed for testing"));
        assert_eq!(
            check_domain_blocklist(&z, "bad.example", "dbl.example").verdict,
            Verdict::Fail
        );
        // No DMARC, null MX, no MX.
        let mut z = good_zone();
        z.add_txt("other.example", "v=spf1 +all");
        z.add_mx("nullmx.example", 0, "");
        z.add_a("nomx.example", "192.0.2.1");
        z.add_mx("dangling.example", 10, "nowhere.dangling.example");
        let mut i = input();
        i.from_domain = Some("other.example".into());
        assert_eq!(run(&z, &i)[2].verdict, Verdict::Fail);
        assert_eq!(check_mx(&z, "nullmx.example").verdict, Verdict::Fail);
        assert_eq!(check_mx(&z, "nomx.example").verdict, Verdict::Warn);
        assert_eq!(check_mx(&z, "dangling.example").verdict, Verdict::Fail);
        assert_eq!(check_mx(&z, "missing.example").verdict, Verdict::Fail);
    }

    #[test]
    fn dkim_records() {
        let mut z = Zone::default();
        z.add_txt("rev._domainkey.example.com", "v=DKIM1; p=");
        z.add_txt("junk._domainkey.example.com", "v=DKIM1; k=rsa; p=AQAB");
        z.add_txt(
            "test._domainkey.example.com",
            &format!("v=DKIM1; k=ed25519; t=y; p={ED_PUBLIC}"),
        );
        z.add_temp("temp._domainkey.example.com");
        let check = |sel: &str| {
            let mut i = input();
            i.selector = sel.into();
            check_dkim(&z, &i).verdict
        };
        assert_eq!(check("rev"), Verdict::Fail);
        assert_eq!(check("junk"), Verdict::Fail);
        assert_eq!(check("test"), Verdict::Warn);
        assert_eq!(check("temp"), Verdict::Warn);
        assert_eq!(check("absent"), Verdict::Fail);
    }

    #[test]
    fn blocklist_names() {
        assert_eq!(
            blocklist_name("192.0.2.1".parse().unwrap(), "zen.example"),
            "1.2.0.192.zen.example"
        );
        assert_eq!(
            blocklist_name("2001:db8::1".parse().unwrap(), "bl.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
        let mut z = Zone::default();
        z.add_a("1.2.0.192.zen.example", "127.255.255.254");
        assert_eq!(
            check_ip_blocklist(&z, "192.0.2.1".parse().unwrap(), "zen.example").verdict,
            Verdict::Warn
        );
    }

    #[test]
    fn helo_and_rdns() {
        let mut z = good_zone();
        z.add_a("other.example.com", "192.0.2.5");
        let (r, confirmed) = check_rdns(&z, "192.0.2.5".parse().unwrap());
        assert_eq!(r.verdict, Verdict::Pass);
        assert_eq!(
            check_helo(
                &z,
                "192.0.2.5".parse().unwrap(),
                "other.example.com",
                &confirmed
            )
            .verdict,
            Verdict::Warn
        );
        z.add_ptr("192.0.2.6", "liar.example.com");
        assert_eq!(
            check_rdns(&z, "192.0.2.6".parse().unwrap()).0.verdict,
            Verdict::Fail
        );
        z.add_aaaa("v6.example.com", "2001:db8::6");
        z.add_ptr("2001:db8::6", "v6.example.com");
        assert_eq!(
            check_rdns(&z, "2001:db8::6".parse().unwrap()).0.verdict,
            Verdict::Pass
        );
    }
}
