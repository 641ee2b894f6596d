//! Message validation, From address parsing, DKIM canonicalization and signing, and SPF record
//! evaluation never panic on arbitrary bytes; a message that validates comes out with CRLF line
//! endings only and lines of at most 998 octets, and signs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use vmta::dkim::{Signer, SignerConfig, SigningKey};
use vmta::policy::{Stamp, ValidationOptions, validate};
use vmta::preflight::{DnsLookup, Lookup, LookupError, spf};

/// A zone where every name has the fuzz input as its TXT record.
struct Echo(String);

impl DnsLookup for Echo {
    fn txt(&self, _: &str) -> Lookup<String> {
        Ok(vec![self.0.clone()])
    }
    fn a(&self, _: &str) -> Lookup<Ipv4Addr> {
        Ok(vec![Ipv4Addr::new(192, 0, 2, 1)])
    }
    fn aaaa(&self, _: &str) -> Lookup<Ipv6Addr> {
        Err(LookupError::NxDomain)
    }
    fn mx(&self, name: &str) -> Lookup<(u16, String)> {
        Ok(vec![(10, format!("mx.{name}"))])
    }
    fn ptr(&self, _: IpAddr) -> Lookup<String> {
        Ok(vec!["mx.example.com".into()])
    }
}

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        Signer::new(
            SigningKey::ed25519_from_seed(&[7; 32]),
            SignerConfig::new("example.com", "s"),
        )
        .expect("signer")
    })
}

fuzz_target!(|data: &[u8]| {
    let stamp = Stamp {
        now: 1_790_000_000,
        unique_id: "fuzz",
        trace: None,
    };
    if let Ok(m) = validate(data, &ValidationOptions::default(), &stamp) {
        for line in m.bytes.split(|&b| b == b'\n') {
            assert!(line.len() <= 999);
            assert!(!line[..line.len().saturating_sub(1)].contains(&b'\r'));
        }
        signer()
            .sign(&m.bytes, 0)
            .expect("a validated message has a From field");
    }
    // Raw bytes too: the signer must not panic on anything.
    let _ = signer().sign(data, 0);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = vmta::policy::address::mailbox_addresses(text);
        let record = format!("v=spf1 {text}");
        let _ = spf::check_host(
            &Echo(record),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            "example.com",
            "a@example.com",
            "h",
        );
        let _ = vmta::preflight::dmarc::DmarcRecord::parse(text);
        let _ = vmta::dkim::KeyRecord::parse(text);
    }
});
