//! SPF evaluation (RFC 7208): `check_host(ip, domain, sender)` with every mechanism (`all`, `include`,
//! `a`, `mx`, `ptr`, `ip4`, `ip6`, `exists`), the `redirect` modifier, macros (§7), the limit of 10
//! DNS-querying terms (§4.6.4), the limit of 10 MX or PTR names per mechanism, and the limit of 2 void
//! lookups (§4.6.4).
//!
//! Not done: the `exp` modifier's explanation text (it is parsed and ignored: preflight reports its
//! own reason), the `p` macro (expands to `unknown`, which §7.3 permits), DNS-name length truncation of
//! expanded names beyond dropping left labels.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{DnsLookup, LookupError};

/// The result of an SPF evaluation (RFC 7208 §2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpfResult {
    /// The IP is authorized.
    Pass,
    /// The IP is not authorized (`-`).
    Fail,
    /// Probably not authorized (`~`).
    SoftFail,
    /// No assertion (`?`, or nothing matched).
    Neutral,
    /// No SPF record.
    None,
    /// The record is broken (syntax, limits).
    PermError,
    /// A DNS error; try later.
    TempError,
}

impl SpfResult {
    /// The lower-case name of RFC 7208 §2.6.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::PermError => "permerror",
            SpfResult::TempError => "temperror",
        }
    }
}

impl fmt::Display for SpfResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`check_host`]: the result, why, the top-level record and the DNS terms used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    /// The result.
    pub result: SpfResult,
    /// What decided it, in words.
    pub reason: String,
    /// The SPF record of the domain checked, when there was one.
    pub record: Option<String>,
    /// How many DNS-querying terms were evaluated.
    pub lookups: u32,
}

/// The most DNS-querying terms one evaluation may use (§4.6.4).
pub const MAX_LOOKUPS: u32 = 10;
/// The most void lookups (NXDOMAIN or no answer) one evaluation may see (§4.6.4).
pub const MAX_VOID_LOOKUPS: u32 = 2;

/// Evaluates SPF for a message from `ip` with envelope sender `sender` (`local@domain`, or empty for
/// the null sender, then `postmaster@helo`), checking `domain` (RFC 7208 §4). `helo` feeds the `%{h}`
/// macro.
pub fn check_host(
    dns: &dyn DnsLookup,
    ip: IpAddr,
    domain: &str,
    sender: &str,
    helo: &str,
) -> SpfOutcome {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let sender = if sender.contains('@') {
        sender.to_string()
    } else {
        format!(
            "postmaster@{}",
            if domain.is_empty() { helo } else { &domain }
        )
    };
    let (local, sender_domain) = sender.rsplit_once('@').unwrap_or(("postmaster", ""));
    let mut eval = Eval {
        dns,
        ip,
        local: if local.is_empty() {
            "postmaster".to_string()
        } else {
            local.to_string()
        },
        sender: sender.clone(),
        sender_domain: sender_domain.to_ascii_lowercase(),
        helo: helo.to_string(),
        lookups: 0,
        voids: 0,
        top_record: None,
    };
    let (result, reason) = eval.check(&domain, 0);
    SpfOutcome {
        result,
        reason,
        record: eval.top_record,
        lookups: eval.lookups,
    }
}

struct Eval<'a> {
    dns: &'a dyn DnsLookup,
    ip: IpAddr,
    local: String,
    sender: String,
    sender_domain: String,
    helo: String,
    lookups: u32,
    voids: u32,
    top_record: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

impl Qualifier {
    fn result(self) -> SpfResult {
        match self {
            Qualifier::Pass => SpfResult::Pass,
            Qualifier::Fail => SpfResult::Fail,
            Qualifier::SoftFail => SpfResult::SoftFail,
            Qualifier::Neutral => SpfResult::Neutral,
        }
    }
}

/// An early end of evaluation: a result with its reason.
type Stop = (SpfResult, String);

fn perm(why: impl Into<String>) -> Stop {
    (SpfResult::PermError, why.into())
}

fn valid_domain(d: &str) -> bool {
    let labels: Vec<&str> = d.split('.').collect();
    labels.len() >= 2 && d.len() <= 253 && labels.iter().all(|l| !l.is_empty() && l.len() <= 63)
}

/// Splits `/n` and `//m` CIDR suffixes off a mechanism argument.
fn split_cidr(arg: &str) -> Result<(&str, Option<u8>, Option<u8>), Stop> {
    let mut rest = arg;
    let mut v6 = None;
    let mut v4 = None;
    if let Some(i) = rest.rfind("//") {
        let n = &rest[i + 2..];
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            v6 = Some(
                n.parse::<u8>()
                    .ok()
                    .filter(|&n| n <= 128)
                    .ok_or_else(|| perm(format!("bad ip6-cidr-length /{n}")))?,
            );
            rest = &rest[..i];
        }
    }
    if let Some(i) = rest.rfind('/') {
        let n = &rest[i + 1..];
        if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            v4 = Some(
                n.parse::<u8>()
                    .ok()
                    .filter(|&n| n <= 32)
                    .ok_or_else(|| perm(format!("bad ip4-cidr-length /{n}")))?,
            );
            rest = &rest[..i];
        }
    }
    Ok((rest, v4, v6))
}

fn in_v4(net: Ipv4Addr, len: u8, ip: Ipv4Addr) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(net) & mask == u32::from(ip) & mask
}

fn in_v6(net: Ipv6Addr, len: u8, ip: Ipv6Addr) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(net) & mask == u128::from(ip) & mask
}

impl Eval<'_> {
    fn count_lookup(&mut self, term: &str) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(perm(format!(
                "more than {MAX_LOOKUPS} DNS-querying terms (at `{term}`)"
            )));
        }
        Ok(())
    }

    fn void(&mut self, what: &str) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(perm(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups (at {what})"
            )));
        }
        Ok(())
    }

    /// The SPF record of `domain`: Ok(None) when there is none.
    fn record(&mut self, domain: &str) -> Result<Option<String>, Stop> {
        let txts = match self.dns.txt(domain) {
            Ok(t) => t,
            Err(LookupError::NxDomain) => return Ok(None),
            Err(LookupError::Temporary(e)) => {
                return Err((SpfResult::TempError, format!("TXT {domain}: {e}")));
            }
        };
        let spf: Vec<String> = txts
            .into_iter()
            .filter(|t| {
                let l = t.to_ascii_lowercase();
                l == "v=spf1" || l.starts_with("v=spf1 ")
            })
            .collect();
        match spf.len() {
            0 => Ok(None),
            1 => Ok(spf.into_iter().next()),
            n => Err(perm(format!("{domain} publishes {n} SPF records"))),
        }
    }

    fn check(&mut self, domain: &str, depth: u32) -> Stop {
        match self.check_inner(domain, depth) {
            Ok(stop) | Err(stop) => stop,
        }
    }

    fn check_inner(&mut self, domain: &str, depth: u32) -> Result<Stop, Stop> {
        if !valid_domain(domain) {
            return Ok((SpfResult::None, format!("{domain:?} is not a domain name")));
        }
        let Some(record) = self.record(domain)? else {
            return Ok((SpfResult::None, format!("{domain} publishes no SPF record")));
        };
        if depth == 0 {
            self.top_record = Some(record.clone());
        }
        let mut redirect: Option<String> = None;
        let mut exp_seen = false;
        let terms: Vec<&str> = record.split_ascii_whitespace().skip(1).collect();
        // Syntax first for the modifiers (§6: redirect applies only if no mechanism matched).
        for term in &terms {
            if let Some((name, value)) = modifier(term) {
                match name.to_ascii_lowercase().as_str() {
                    "redirect" if redirect.is_some() => {
                        return Err(perm(format!("{domain}: redirect given twice")));
                    }
                    "redirect" => redirect = Some(value.to_string()),
                    "exp" if exp_seen => {
                        return Err(perm(format!("{domain}: exp given twice")));
                    }
                    "exp" => exp_seen = true,
                    _ => {}
                }
            }
        }
        for term in &terms {
            if modifier(term).is_some() {
                continue;
            }
            let (qualifier, mech) = match term.as_bytes()[0] {
                b'+' => (Qualifier::Pass, &term[1..]),
                b'-' => (Qualifier::Fail, &term[1..]),
                b'~' => (Qualifier::SoftFail, &term[1..]),
                b'?' => (Qualifier::Neutral, &term[1..]),
                _ => (Qualifier::Pass, *term),
            };
            if self.matches(domain, mech, depth)? {
                return Ok((
                    qualifier.result(),
                    format!("{} matched `{term}` in {domain}", self.ip),
                ));
            }
        }
        if let Some(target) = redirect {
            self.count_lookup("redirect")?;
            let target = self.expand(&target, domain)?;
            let (result, reason) = self.check(&target, depth + 1);
            if result == SpfResult::None {
                return Err(perm(format!("redirect={target} from {domain}: {reason}")));
            }
            return Ok((result, format!("redirect={target}: {reason}")));
        }
        Ok((
            SpfResult::Neutral,
            format!("no mechanism matched {} in {domain}", self.ip),
        ))
    }

    fn target(&self, arg: Option<&str>, domain: &str) -> Result<String, Stop> {
        match arg {
            None => Ok(domain.to_string()),
            Some(spec) => self.expand(spec, domain),
        }
    }

    fn matches(&mut self, domain: &str, mech: &str, depth: u32) -> Result<bool, Stop> {
        let (name, arg) = match mech.find([':', '/']) {
            Some(i) if mech.as_bytes()[i] == b':' => (&mech[..i], Some(&mech[i + 1..])),
            Some(i) => (&mech[..i], Some(&mech[i..])),
            None => (mech, None),
        };
        let lname = name.to_ascii_lowercase();
        match lname.as_str() {
            "all" => {
                if arg.is_some() {
                    return Err(perm(format!("`{mech}`: all takes no argument")));
                }
                Ok(true)
            }
            "include" => {
                let spec = arg.ok_or_else(|| perm("include without a domain"))?;
                self.count_lookup(mech)?;
                let target = self.expand(spec, domain)?;
                let (result, reason) = self.check(&target, depth + 1);
                match result {
                    SpfResult::Pass => Ok(true),
                    SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => Ok(false),
                    SpfResult::TempError => Err((result, reason)),
                    SpfResult::PermError | SpfResult::None => {
                        Err(perm(format!("include:{target}: {reason}")))
                    }
                }
            }
            "a" | "mx" => {
                let (spec, c4, c6) = match arg {
                    Some(a) => {
                        let (s, c4, c6) = split_cidr(a)?;
                        (if s.is_empty() { None } else { Some(s) }, c4, c6)
                    }
                    None => (None, None, None),
                };
                self.count_lookup(mech)?;
                let target = self.target(spec, domain)?;
                let hosts: Vec<String> = if lname == "a" {
                    vec![target.clone()]
                } else {
                    match self.dns.mx(&target) {
                        Ok(mx) if mx.is_empty() => {
                            self.void(&format!("MX {target}"))?;
                            Vec::new()
                        }
                        Ok(mx) => {
                            if mx.len() > 10 {
                                return Err(perm(format!("{target} has more than 10 MX records")));
                            }
                            let mut mx = mx;
                            mx.sort_by_key(|(p, _)| *p);
                            mx.into_iter().map(|(_, h)| h).collect()
                        }
                        Err(LookupError::NxDomain) => {
                            self.void(&format!("MX {target}"))?;
                            Vec::new()
                        }
                        Err(LookupError::Temporary(e)) => {
                            return Err((SpfResult::TempError, format!("MX {target}: {e}")));
                        }
                    }
                };
                let primary = lname == "a";
                for host in hosts {
                    if self.address_match(&host, c4, c6, primary)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            "ptr" => {
                self.count_lookup(mech)?;
                let target = self.target(arg, domain)?;
                let names = match self.dns.ptr(self.ip) {
                    Ok(n) => n,
                    Err(_) => return Ok(false), // §5.5: a PTR failure is just no match
                };
                for name in names.into_iter().take(10) {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    if (name == target || name.ends_with(&format!(".{target}")))
                        && self
                            .address_match(&name, None, None, false)
                            .unwrap_or(false)
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            "ip4" => {
                let a = arg.ok_or_else(|| perm("ip4 without an address"))?;
                let (addr, len) = match a.split_once('/') {
                    Some((ad, l)) => (
                        ad,
                        l.parse::<u8>()
                            .ok()
                            .filter(|&l| l <= 32)
                            .ok_or_else(|| perm(format!("bad `{mech}`")))?,
                    ),
                    None => (a, 32),
                };
                let net: Ipv4Addr = addr.parse().map_err(|_| perm(format!("bad `{mech}`")))?;
                Ok(matches!(self.ip, IpAddr::V4(ip) if in_v4(net, len, ip)))
            }
            "ip6" => {
                let a = arg.ok_or_else(|| perm("ip6 without an address"))?;
                let (addr, len) = match a.split_once('/') {
                    Some((ad, l)) => (
                        ad,
                        l.parse::<u8>()
                            .ok()
                            .filter(|&l| l <= 128)
                            .ok_or_else(|| perm(format!("bad `{mech}`")))?,
                    ),
                    None => (a, 128),
                };
                let net: Ipv6Addr = addr.parse().map_err(|_| perm(format!("bad `{mech}`")))?;
                Ok(matches!(self.ip, IpAddr::V6(ip) if in_v6(net, len, ip)))
            }
            "exists" => {
                let spec = arg.ok_or_else(|| perm("exists without a domain"))?;
                self.count_lookup(mech)?;
                let target = self.expand(spec, domain)?;
                match self.dns.a(&target) {
                    Ok(a) if !a.is_empty() => Ok(true),
                    Ok(_) | Err(LookupError::NxDomain) => {
                        self.void(&format!("A {target}"))?;
                        Ok(false)
                    }
                    Err(LookupError::Temporary(e)) => {
                        Err((SpfResult::TempError, format!("A {target}: {e}")))
                    }
                }
            }
            _ => Err(perm(format!("unknown mechanism `{mech}`"))),
        }
    }

    /// Whether `host` has an address of the client's family inside the CIDR. `primary` counts a void
    /// answer (the `a` mechanism's own query; MX and PTR names do not count).
    fn address_match(
        &mut self,
        host: &str,
        c4: Option<u8>,
        c6: Option<u8>,
        primary: bool,
    ) -> Result<bool, Stop> {
        let host = host.trim_end_matches('.');
        match self.ip {
            IpAddr::V4(ip) => match self.dns.a(host) {
                Ok(addrs) => {
                    if addrs.is_empty() && primary {
                        self.void(&format!("A {host}"))?;
                    }
                    Ok(addrs.iter().any(|&a| in_v4(a, c4.unwrap_or(32), ip)))
                }
                Err(LookupError::NxDomain) => {
                    if primary {
                        self.void(&format!("A {host}"))?;
                    }
                    Ok(false)
                }
                Err(LookupError::Temporary(e)) => {
                    Err((SpfResult::TempError, format!("A {host}: {e}")))
                }
            },
            IpAddr::V6(ip) => match self.dns.aaaa(host) {
                Ok(addrs) => {
                    if addrs.is_empty() && primary {
                        self.void(&format!("AAAA {host}"))?;
                    }
                    Ok(addrs.iter().any(|&a| in_v6(a, c6.unwrap_or(128), ip)))
                }
                Err(LookupError::NxDomain) => {
                    if primary {
                        self.void(&format!("AAAA {host}"))?;
                    }
                    Ok(false)
                }
                Err(LookupError::Temporary(e)) => {
                    Err((SpfResult::TempError, format!("AAAA {host}: {e}")))
                }
            },
        }
    }

    /// Expands a domain-spec's macros (§7) for the current `domain`.
    fn expand(&self, spec: &str, domain: &str) -> Result<String, Stop> {
        let bad = || perm(format!("bad macro in {spec:?}"));
        let mut out = String::with_capacity(spec.len() + 32);
        let mut chars = spec.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                if !c.is_ascii_graphic() {
                    return Err(bad());
                }
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some('_') => out.push(' '),
                Some('-') => out.push_str("%20"),
                Some('{') => {
                    let mut body = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(x) => body.push(x),
                            None => return Err(bad()),
                        }
                    }
                    let mut bc = body.chars();
                    let letter = bc.next().ok_or_else(bad)?;
                    let rest: String = bc.collect();
                    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                    let after = &rest[digits.len()..];
                    let (reverse, delims) = match after.strip_prefix(['r', 'R']) {
                        Some(d) => (true, d),
                        None => (false, after),
                    };
                    if !delims.chars().all(|c| ".-+,/_=".contains(c)) {
                        return Err(bad());
                    }
                    let value = match letter.to_ascii_lowercase() {
                        's' => self.sender.clone(),
                        'l' => self.local.clone(),
                        'o' => self.sender_domain.clone(),
                        'd' => domain.to_string(),
                        'i' => match self.ip {
                            IpAddr::V4(v4) => v4.to_string(),
                            IpAddr::V6(v6) => nibbles(v6).join("."),
                        },
                        'p' => "unknown".to_string(),
                        'v' => match self.ip {
                            IpAddr::V4(_) => "in-addr".to_string(),
                            IpAddr::V6(_) => "ip6".to_string(),
                        },
                        'h' => self.helo.clone(),
                        _ => return Err(bad()),
                    };
                    let delims: Vec<char> = if delims.is_empty() {
                        vec!['.']
                    } else {
                        delims.chars().collect()
                    };
                    let mut parts: Vec<&str> = value.split(|c| delims.contains(&c)).collect();
                    if reverse {
                        parts.reverse();
                    }
                    if !digits.is_empty() {
                        let n: usize = digits.parse().map_err(|_| bad())?;
                        if n == 0 {
                            return Err(bad());
                        }
                        if parts.len() > n {
                            parts = parts.split_off(parts.len() - n);
                        }
                    }
                    let joined = parts.join(".");
                    if letter.is_ascii_uppercase() {
                        for b in joined.bytes() {
                            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                                out.push(b as char);
                            } else {
                                out.push_str(&format!("%{b:02X}"));
                            }
                        }
                    } else {
                        out.push_str(&joined);
                    }
                }
                _ => return Err(bad()),
            }
        }
        // §7.3: drop left labels until the name fits.
        let mut name = out.trim_end_matches('.').to_ascii_lowercase();
        while name.len() > 253 {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_string(),
                None => return Err(bad()),
            }
        }
        Ok(name)
    }
}

/// The nibbles of an IPv6 address, most significant first (`%{i}` for IPv6, §7.3).
pub(crate) fn nibbles(ip: Ipv6Addr) -> Vec<String> {
    ip.octets()
        .iter()
        .flat_map(|o| [o >> 4, o & 0xf])
        .map(|n| format!("{n:x}"))
        .collect()
}

/// `name=value` when the term is a modifier (§4.6.1: a name of ALPHA then ALPHA/DIGIT/-/_/. before
/// `=`, with no `:` or `/` before it).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let eq = term.find('=')?;
    let name = &term[..eq];
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| (name, &term[eq + 1..]))
}

#[cfg(test)]
mod tests {
    use super::super::tests::Zone;
    use super::*;

    fn run(zone: &Zone, ip: &str, domain: &str) -> SpfOutcome {
        check_host(
            zone,
            ip.parse().unwrap(),
            domain,
            &format!("bounce@{domain}"),
            "helo.example",
        )
    }

    #[test]
    fn mechanisms() {
        let mut z = Zone::default();
        z.add_txt(
            "example.com",
            "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a mx/30 include:_spf.partner.example ~all",
        );
        z.add_a("example.com", "198.51.100.7");
        z.add_mx("example.com", 10, "mx.example.com");
        z.add_a("mx.example.com", "203.0.113.4");
        z.add_txt(
            "_spf.partner.example",
            "v=spf1 ip4:100.64.0.0/10 exists:%{ir}.allow.partner.example -all",
        );
        z.add_a("9.9.99.100.allow.partner.example", "127.0.0.2");
        for (ip, want) in [
            ("192.0.2.55", SpfResult::Pass),
            ("2001:db8::5", SpfResult::Pass),
            ("198.51.100.7", SpfResult::Pass),
            ("203.0.113.6", SpfResult::Pass),
            ("203.0.113.8", SpfResult::SoftFail),
            ("100.64.1.1", SpfResult::Pass),
            ("10.0.0.1", SpfResult::SoftFail),
            ("::ffff:192.0.2.1", SpfResult::Pass),
        ] {
            let o = run(&z, ip, "example.com");
            assert_eq!(o.result, want, "{ip}: {}", o.reason);
        }
        let o = run(&z, "10.0.0.1", "example.com");
        assert_eq!(o.lookups, 4);
        assert!(o.record.unwrap().starts_with("v=spf1 ip4:192.0.2.0/24"));
    }

    #[test]
    fn exists_with_macros() {
        let mut z = Zone::default();
        z.add_txt("m.example", "v=spf1 exists:%{l1r-}.%{o}._spf.%{d2} -all");
        z.add_a("bounce.m.example._spf.m.example", "127.0.0.2");
        assert_eq!(run(&z, "192.0.2.1", "m.example").result, SpfResult::Pass);
        let mut z = Zone::default();
        z.add_txt("m.example", "v=spf1 exists:%{i}.%{v}.%{d} -all");
        z.add_a("192.0.2.1.in-addr.m.example", "127.0.0.2");
        assert_eq!(run(&z, "192.0.2.1", "m.example").result, SpfResult::Pass);
        assert_eq!(run(&z, "192.0.2.2", "m.example").result, SpfResult::Fail);
    }

    #[test]
    fn redirect_and_results() {
        let mut z = Zone::default();
        z.add_txt("a.example", "v=spf1 redirect=b.example");
        z.add_txt("b.example", "v=spf1 ip4:192.0.2.1 ?all");
        z.add_txt("c.example", "v=spf1 redirect=nowhere.example");
        z.add_txt("d.example", "v=spf1 -all");
        z.add_txt("e.example", "v=spf1 ip4:192.0.2.1");
        z.add_txt("f.example", "v=spf1 include:nospf.example -all");
        assert_eq!(run(&z, "192.0.2.1", "a.example").result, SpfResult::Pass);
        assert_eq!(run(&z, "192.0.2.2", "a.example").result, SpfResult::Neutral);
        assert_eq!(
            run(&z, "192.0.2.2", "c.example").result,
            SpfResult::PermError
        );
        assert_eq!(run(&z, "192.0.2.2", "d.example").result, SpfResult::Fail);
        assert_eq!(run(&z, "192.0.2.2", "e.example").result, SpfResult::Neutral);
        assert_eq!(
            run(&z, "192.0.2.2", "nospf.example").result,
            SpfResult::None
        );
        assert_eq!(
            run(&z, "192.0.2.2", "f.example").result,
            SpfResult::PermError
        );
    }

    #[test]
    fn errors() {
        let mut z = Zone::default();
        z.add_txt("two.example", "v=spf1 -all");
        z.add_txt("two.example", "v=spf1 +all");
        z.add_txt("syntax.example", "v=spf1 ip4:300.1.1.1 -all");
        z.add_txt("unknown.example", "v=spf1 foo:bar -all");
        z.add_txt("cidr.example", "v=spf1 a/33 -all");
        z.add_temp("temp.example");
        z.add_txt("inctemp.example", "v=spf1 include:temp.example -all");
        z.add_txt("notspf.example", "v=spf10 -all");
        for (d, want) in [
            ("two.example", SpfResult::PermError),
            ("syntax.example", SpfResult::PermError),
            ("unknown.example", SpfResult::PermError),
            ("cidr.example", SpfResult::PermError),
            ("temp.example", SpfResult::TempError),
            ("inctemp.example", SpfResult::TempError),
            ("notspf.example", SpfResult::None),
        ] {
            assert_eq!(run(&z, "192.0.2.1", d).result, want, "{d}");
        }
    }

    #[test]
    fn lookup_limits() {
        let mut z = Zone::default();
        // A chain of 11 includes.
        for i in 0..11 {
            z.add_txt(
                &format!("l{i}.example"),
                &format!("v=spf1 include:l{}.example -all", i + 1),
            );
        }
        z.add_txt("l11.example", "v=spf1 +all");
        let o = run(&z, "192.0.2.1", "l0.example");
        assert_eq!(o.result, SpfResult::PermError, "{}", o.reason);
        assert!(o.reason.contains("more than 10"), "{}", o.reason);
        // Ten are fine.
        let o = run(&z, "192.0.2.1", "l1.example");
        assert_eq!(o.result, SpfResult::Pass, "{}", o.reason);
        // Three void lookups.
        let mut z = Zone::default();
        z.add_txt(
            "void.example",
            "v=spf1 a:x1.void.example a:x2.void.example a:x3.void.example -all",
        );
        let o = run(&z, "192.0.2.1", "void.example");
        assert_eq!(o.result, SpfResult::PermError, "{}", o.reason);
        assert!(o.reason.contains("void"));
        // More than 10 MX names.
        let mut z = Zone::default();
        z.add_txt("mx.example", "v=spf1 mx -all");
        for i in 0..11 {
            z.add_mx("mx.example", i, &format!("m{i}.mx.example"));
        }
        assert_eq!(
            run(&z, "192.0.2.1", "mx.example").result,
            SpfResult::PermError
        );
    }

    #[test]
    fn ptr_mechanism() {
        let mut z = Zone::default();
        z.add_txt("p.example", "v=spf1 ptr -all");
        z.add_ptr("192.0.2.9", "mail.p.example");
        z.add_a("mail.p.example", "192.0.2.9");
        z.add_ptr("192.0.2.10", "liar.p.example");
        assert_eq!(run(&z, "192.0.2.9", "p.example").result, SpfResult::Pass);
        assert_eq!(run(&z, "192.0.2.10", "p.example").result, SpfResult::Fail);
    }

    #[test]
    fn macro_expansion() {
        let z = Zone::default();
        let e = Eval {
            dns: &z,
            ip: "192.0.2.3".parse().unwrap(),
            local: "strong-bad".into(),
            sender: "strong-bad@email.example.com".into(),
            sender_domain: "email.example.com".into(),
            helo: "h.example".into(),
            lookups: 0,
            voids: 0,
            top_record: None,
        };
        // RFC 7208 §7.4 examples.
        let d = "email.example.com";
        assert_eq!(e.expand("%{s}", d).unwrap(), "strong-bad@email.example.com");
        assert_eq!(e.expand("%{o}", d).unwrap(), "email.example.com");
        assert_eq!(e.expand("%{d4}", d).unwrap(), "email.example.com");
        assert_eq!(e.expand("%{d2}", d).unwrap(), "example.com");
        assert_eq!(e.expand("%{d1}", d).unwrap(), "com");
        assert_eq!(e.expand("%{dr}", d).unwrap(), "com.example.email");
        assert_eq!(e.expand("%{d2r}", d).unwrap(), "example.email");
        assert_eq!(e.expand("%{l}", d).unwrap(), "strong-bad");
        assert_eq!(e.expand("%{l-}", d).unwrap(), "strong.bad");
        assert_eq!(e.expand("%{lr}", d).unwrap(), "strong-bad");
        assert_eq!(e.expand("%{lr-}", d).unwrap(), "bad.strong");
        assert_eq!(e.expand("%{l1r-}", d).unwrap(), "strong");
        assert_eq!(
            e.expand("%{ir}.%{v}._spf.%{d2}", d).unwrap(),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            e.expand("%{lr-}.lp._spf.%{d2}", d).unwrap(),
            "bad.strong.lp._spf.example.com"
        );
        assert!(e.expand("%{x}", d).is_err());
        assert!(e.expand("%{d0}", d).is_err());
        assert!(e.expand("%", d).is_err());
        assert!(e.expand("%{d", d).is_err());
        let v6 = Eval {
            ip: "2001:db8::cb01".parse().unwrap(),
            ..e
        };
        assert_eq!(
            v6.expand("%{ir}.%{v}._spf.%{d2}", d).unwrap(),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
    }
}
