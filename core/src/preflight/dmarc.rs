//! DMARC (RFC 7489): record discovery (§6.6.3: the From domain, then its organizational domain),
//! record parsing (§6.3) and identifier alignment (§3.1, relaxed and strict).
//!
//! The organizational domain (§3.2) is found with a small built-in list of public suffixes that have
//! two labels (`co.uk`, `com.au`, ...) instead of the full Public Suffix List: the domain's last two
//! labels, or three when the last two are in the list. This is right for the common cases and wrong
//! for private suffixes (`github.io`, `herokuapp.com`) and rarer country registries; a sender on such
//! a domain gets a stricter alignment answer than a receiver with the full list would give.
//!
//! Not done: reporting (`rua`/`ruf` are read, not used), `pct` sampling, `fo`.

use std::fmt;

use super::{DnsLookup, LookupError};
use crate::dkim::record::parse_tag_list;

/// Public suffixes of two labels known to the organizational-domain rule (see the module doc).
const TWO_LABEL_SUFFIXES: &[&str] = &[
    "ac.uk", "co.uk", "gov.uk", "ltd.uk", "me.uk", "net.uk", "org.uk", "plc.uk", "sch.uk",
    "com.au", "net.au", "org.au", "edu.au", "gov.au", "asn.au", "id.au", "co.nz", "net.nz",
    "org.nz", "govt.nz", "ac.nz", "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp", "ad.jp", "co.kr",
    "or.kr", "ne.kr", "com.br", "net.br", "org.br", "gov.br", "com.mx", "org.mx", "com.ar",
    "com.cn", "net.cn", "org.cn", "gov.cn", "com.hk", "com.tw", "com.sg", "com.my", "co.id",
    "co.in", "net.in", "org.in", "gov.in", "co.il", "org.il", "co.za", "org.za", "com.tr",
    "com.ua", "com.pl", "com.es", "com.pt", "co.th", "in.th", "com.vn", "com.ph", "com.pk",
    "com.sa", "com.eg", "com.ng", "co.ke", "com.co", "com.pe", "com.ve", "com.uy", "co.at",
    "or.at", "gv.at",
];

/// The organizational domain of `domain` (RFC 7489 §3.2, with the built-in suffix list).
pub fn organizational_domain(domain: &str) -> String {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() <= 2 {
        return d;
    }
    let last_two = labels[labels.len() - 2..].join(".");
    let keep = if TWO_LABEL_SUFFIXES.contains(&last_two.as_str()) {
        3
    } else {
        2
    };
    labels[labels.len().saturating_sub(keep)..].join(".")
}

/// Alignment mode (`adkim`, `aspf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alignment {
    /// Same organizational domain.
    Relaxed,
    /// Identical domains.
    Strict,
}

/// Whether `a` and `b` are aligned under `mode` (RFC 7489 §3.1.1, §3.1.2).
pub fn aligned(a: &str, b: &str, mode: Alignment) -> bool {
    let a = a.trim_end_matches('.').to_ascii_lowercase();
    let b = b.trim_end_matches('.').to_ascii_lowercase();
    match mode {
        Alignment::Strict => a == b,
        Alignment::Relaxed => organizational_domain(&a) == organizational_domain(&b),
    }
}

/// The requested policy (`p=`, `sp=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Monitor only.
    None,
    /// Treat failing mail as suspicious.
    Quarantine,
    /// Reject failing mail.
    Reject,
}

impl Policy {
    fn parse(s: &str) -> Option<Policy> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Policy::None),
            "quarantine" => Some(Policy::Quarantine),
            "reject" => Some(Policy::Reject),
            _ => None,
        }
    }

    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed DMARC record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcRecord {
    /// `p=`.
    pub policy: Policy,
    /// `sp=`, the policy for subdomains.
    pub subdomain_policy: Option<Policy>,
    /// `adkim=`.
    pub dkim_alignment: Alignment,
    /// `aspf=`.
    pub spf_alignment: Alignment,
    /// `pct=`.
    pub percent: u8,
    /// `rua=` addresses.
    pub aggregate_reports: Vec<String>,
}

impl DmarcRecord {
    /// Parses a record (§6.3, §6.6.3: a missing or invalid `p=` with a valid `rua=` counts as
    /// `p=none`).
    pub fn parse(text: &str) -> Result<DmarcRecord, String> {
        let tags = parse_tag_list(text).map_err(|e| e.to_string())?;
        match tags.first() {
            Some((n, v)) if n == "v" && v == "DMARC1" => {}
            _ => return Err("the first tag is not v=DMARC1".into()),
        }
        let get = |name: &str| {
            tags.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let align = |name: &str| -> Result<Alignment, String> {
            match get(name).map(str::to_ascii_lowercase).as_deref() {
                None | Some("r") => Ok(Alignment::Relaxed),
                Some("s") => Ok(Alignment::Strict),
                Some(other) => Err(format!("{name}={other} is neither r nor s")),
            }
        };
        let rua: Vec<String> = get("rua")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let policy = match get("p").and_then(Policy::parse) {
            Some(p) => p,
            None if !rua.is_empty() => Policy::None,
            None => return Err("no valid p= tag".into()),
        };
        let percent = match get("pct") {
            None => 100,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= 100)
                .ok_or_else(|| format!("pct={p} is not 0-100"))?,
        };
        Ok(DmarcRecord {
            policy,
            subdomain_policy: get("sp").and_then(Policy::parse),
            dkim_alignment: align("adkim")?,
            spf_alignment: align("aspf")?,
            percent,
            aggregate_reports: rua,
        })
    }
}

/// What DMARC discovery found for a From domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A record, where it was found and its text.
    Found {
        /// The parsed record.
        record: DmarcRecord,
        /// The name it was read at (`_dmarc.<domain>`).
        at: String,
        /// Its text.
        text: String,
    },
    /// A record exists but does not parse.
    Invalid {
        /// Where.
        at: String,
        /// Its text.
        text: String,
        /// Why.
        why: String,
    },
    /// No record at the domain or its organizational domain.
    None,
    /// DNS failed.
    TempError(String),
}

/// Discovers the DMARC record for `from_domain` (RFC 7489 §6.6.3).
pub fn discover(dns: &dyn DnsLookup, from_domain: &str) -> Discovery {
    let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
    let org = organizational_domain(&from);
    let mut names = vec![from.clone()];
    if org != from {
        names.push(org);
    }
    for d in names {
        let at = format!("_dmarc.{d}");
        let txts = match dns.txt(&at) {
            Ok(t) => t,
            Err(LookupError::NxDomain) => continue,
            Err(LookupError::Temporary(e)) => {
                return Discovery::TempError(format!("TXT {at}: {e}"));
            }
        };
        let records: Vec<String> = txts.into_iter().filter(|t| is_dmarc(t)).collect();
        // §6.6.3 step 5: more than one record means none.
        if records.len() != 1 {
            continue;
        }
        let text = records.into_iter().next().unwrap_or_default();
        return match DmarcRecord::parse(&text) {
            Ok(record) => Discovery::Found { record, at, text },
            Err(why) => Discovery::Invalid { at, text, why },
        };
    }
    Discovery::None
}

/// Whether a TXT record is a DMARC record (starts with the `v=DMARC1` tag).
fn is_dmarc(text: &str) -> bool {
    match text.trim_start().strip_prefix("v") {
        Some(rest) => match rest.trim_start().strip_prefix('=') {
            Some(v) => match v.trim_start().strip_prefix("DMARC1") {
                Some(after) => {
                    let after = after.trim_start();
                    after.is_empty() || after.starts_with(';')
                }
                None => false,
            },
            None => false,
        },
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Zone;
    use super::*;

    #[test]
    fn organizational_domains() {
        assert_eq!(organizational_domain("mail.example.com"), "example.com");
        assert_eq!(organizational_domain("example.com"), "example.com");
        assert_eq!(organizational_domain("a.b.example.co.uk."), "example.co.uk");
        assert_eq!(organizational_domain("com"), "com");
        assert!(aligned(
            "news.example.com",
            "example.com",
            Alignment::Relaxed
        ));
        assert!(!aligned(
            "news.example.com",
            "example.com",
            Alignment::Strict
        ));
        assert!(!aligned("example.org", "example.com", Alignment::Relaxed));
        assert!(!aligned("a.co.uk", "b.co.uk", Alignment::Relaxed));
    }

    #[test]
    fn records() {
        let r = DmarcRecord::parse(
            "v=DMARC1; p=reject; sp=none; adkim=s; pct=50; rua=mailto:a@x.example",
        )
        .unwrap();
        assert_eq!(r.policy, Policy::Reject);
        assert_eq!(r.subdomain_policy, Some(Policy::None));
        assert_eq!(r.dkim_alignment, Alignment::Strict);
        assert_eq!(r.spf_alignment, Alignment::Relaxed);
        assert_eq!(r.percent, 50);
        assert_eq!(
            DmarcRecord::parse("v=DMARC1; rua=mailto:a@x.example")
                .unwrap()
                .policy,
            Policy::None
        );
        for bad in [
            "p=reject",
            "v=DMARC1",
            "v=DMARC1; p=maybe",
            "v=DMARC1; p=none; pct=101",
            "v=DMARC1; p=none; adkim=x",
        ] {
            assert!(DmarcRecord::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery() {
        let mut z = Zone::default();
        z.add_txt("_dmarc.example.com", "v=DMARC1; p=quarantine");
        z.add_txt("_dmarc.example.com", "some other text");
        z.add_txt("_dmarc.two.example", "v=DMARC1; p=none");
        z.add_txt("_dmarc.two.example", "v=DMARC1; p=reject");
        z.add_txt("_dmarc.bad.example", "v=DMARC1; p=bogus");
        z.add_temp("_dmarc.temp.example");
        match discover(&z, "news.example.com") {
            Discovery::Found { record, at, .. } => {
                assert_eq!(record.policy, Policy::Quarantine);
                assert_eq!(at, "_dmarc.example.com");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(discover(&z, "two.example"), Discovery::None);
        assert!(matches!(
            discover(&z, "bad.example"),
            Discovery::Invalid { .. }
        ));
        assert!(matches!(
            discover(&z, "temp.example"),
            Discovery::TempError(_)
        ));
        assert_eq!(discover(&z, "nothing.example"), Discovery::None);
    }
}
