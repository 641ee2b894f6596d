//! Preflight against a real DNS server: dnsmasq on 127.0.20.2 serves a good sender zone and a broken
//! zone for each check (SPF fail, lookup-limit and void-lookup permerrors, no SPF; wrong, revoked and
//! missing DKIM keys; no DMARC, `p=none`, misaligned From; no PTR, PTR not forward-confirmed, HELO
//! mismatch; listed IP and domain on a fake blocklist; null MX, no MX, nonexistent domain), queried
//! through vmta's own resolver.

use std::net::IpAddr;
use std::time::Duration;

use vmta::dkim::SigningKey;
use vmta::dns::{BlockingResolver, Config};
use vmta::preflight::resolver::ResolverLookup;
use vmta::preflight::spf::{self, SpfResult};
use vmta::preflight::{
    CheckResult, PreflightInput, Verdict, check_dkim, check_domain_blocklist, check_helo,
    check_ip_blocklist, check_mx, check_rdns, run,
};
use vmta_tests::data_dir;
use vmta_tests::policy::{Zone, preflight_zone};

fn key(file: &str) -> SigningKey {
    SigningKey::from_pem(&std::fs::read_to_string(data_dir().join("policy").join(file)).unwrap())
        .unwrap()
}

fn zone() -> Zone {
    preflight_zone("127.0.20.2")
}

fn dns(zone: &Zone) -> ResolverLookup {
    let mut config = Config::with_nameservers(vec![zone.addr]);
    config.timeout = Duration::from_secs(2);
    config.min_ttl = Duration::ZERO;
    ResolverLookup::new(BlockingResolver::new(config).unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn input(domain: &str, ip_addr: &str) -> PreflightInput {
    let ed = key("ed25519.pem");
    PreflightInput {
        helo: Some("mta.good.test".into()),
        public_key: Some((ed.algorithm(), ed.public_key_bytes())),
        ip_blocklists: vec!["bl.test".into()],
        domain_blocklists: vec!["dbl.test".into()],
        ..PreflightInput::new(domain, ip(ip_addr), "ed")
    }
}

fn get<'a>(r: &'a [CheckResult], check: &str) -> &'a CheckResult {
    r.iter().find(|c| c.check == check).unwrap()
}

#[test]
fn a_good_sender_passes_everything() {
    let z = zone();
    let d = dns(&z);
    let r = run(&d, &input("good.test", "192.0.2.10"));
    for c in &r {
        assert_eq!(c.verdict, Verdict::Pass, "{c:?}\nall: {r:#?}");
    }
    assert_eq!(r.len(), 8);
    assert_eq!(
        get(&r, "spf").record.as_deref(),
        Some("v=spf1 include:_spf.good.test -all")
    );
    assert!(
        get(&r, "dkim")
            .record
            .as_deref()
            .unwrap()
            .starts_with("v=DKIM1; k=ed25519; p=")
    );
    assert_eq!(get(&r, "mx").record.as_deref(), Some("10 mx.good.test"));
    assert!(get(&r, "rdns").reason.contains("mta.good.test"));
}

#[test]
fn spf_results_over_real_dns() {
    let z = zone();
    let d = dns(&z);
    let check = |domain: &str, addr: &str| {
        spf::check_host(
            &d,
            ip(addr),
            domain,
            &format!("bounce@{domain}"),
            "mta.good.test",
        )
    };
    for (domain, addr, want) in [
        ("good.test", "192.0.2.10", SpfResult::Pass), // a: in the include
        ("good.test", "192.0.2.25", SpfResult::Pass), // mx in the include
        ("good.test", "192.0.2.9", SpfResult::Pass),  // ip4 CIDR
        ("good.test", "203.0.113.1", SpfResult::Fail),
        ("spf-fail.test", "192.0.2.10", SpfResult::Fail),
        ("void.test", "192.0.2.10", SpfResult::PermError),
        ("redir.test", "192.0.2.10", SpfResult::Pass),
        ("exists.test", "192.0.2.10", SpfResult::Pass),
        ("exists.test", "192.0.2.11", SpfResult::Fail),
        ("nospf.test", "192.0.2.10", SpfResult::None),
        ("missing.test", "192.0.2.10", SpfResult::None),
        ("twospf.test", "192.0.2.10", SpfResult::PermError),
        ("l0.loop.test", "192.0.2.10", SpfResult::PermError),
        ("l1.loop.test", "192.0.2.10", SpfResult::Pass),
    ] {
        let o = check(domain, addr);
        assert_eq!(o.result, want, "{domain} {addr}: {}", o.reason);
    }
    assert!(
        check("l0.loop.test", "192.0.2.10")
            .reason
            .contains("more than 10")
    );
    assert!(check("void.test", "192.0.2.10").reason.contains("void"));
    // The preflight verdicts.
    let r = run(&d, &input("spf-fail.test", "192.0.2.10"));
    assert_eq!(get(&r, "spf").verdict, Verdict::Fail);
    let r = run(&d, &input("nospf.test", "192.0.2.10"));
    assert_eq!(get(&r, "spf").verdict, Verdict::Fail);
}

#[test]
fn dkim_keys_wrong_revoked_missing() {
    let z = zone();
    let d = dns(&z);
    let mut i = input("good.test", "192.0.2.10");
    i.selector = "rsa".into();
    let c = check_dkim(&d, &i);
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
    assert!(c.reason.contains("not the public half"), "{}", c.reason);
    // The RSA key itself matches its record.
    let rsa = key("rsa2048.pem");
    i.public_key = Some((rsa.algorithm(), rsa.public_key_bytes()));
    let c = check_dkim(&d, &i);
    assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
    assert!(c.reason.contains("RSA 2048-bit"), "{}", c.reason);
    i.selector = "old".into();
    assert!(check_dkim(&d, &i).reason.contains("revoked"));
    i.selector = "nope".into();
    assert_eq!(check_dkim(&d, &i).verdict, Verdict::Fail);
}

#[test]
fn dmarc_missing_monitoring_misaligned() {
    let z = zone();
    let d = dns(&z);
    let mut i = input("spf-fail.test", "192.0.2.10");
    i.selector = "none".into();
    let r = run(&d, &i);
    let c = get(&r, "dmarc");
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
    assert!(c.reason.contains("no DMARC record"));
    let mut i = input("monitor.test", "192.0.2.10");
    i.selector = "none".into();
    let c = get(&run(&d, &i), "dmarc").clone();
    assert_eq!(c.verdict, Verdict::Warn, "{c:?}");
    assert!(c.reason.contains("p=none"));
    // Good SPF and DKIM for good.test, but the From domain is other.test: not aligned.
    let mut i = input("good.test", "192.0.2.10");
    i.from_domain = Some("other.test".into());
    let c = get(&run(&d, &i), "dmarc").clone();
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
    assert!(c.reason.contains("neither SPF nor DKIM"), "{}", c.reason);
}

#[test]
fn reverse_dns_and_helo() {
    let z = zone();
    let d = dns(&z);
    let (c, _) = check_rdns(&d, ip("192.0.2.20"));
    assert_eq!(c.verdict, Verdict::Fail);
    assert!(c.reason.contains("no PTR"), "{}", c.reason);
    let (c, _) = check_rdns(&d, ip("192.0.2.30"));
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
    assert_eq!(c.record.as_deref(), Some("liar.good.test"));
    let (c, confirmed) = check_rdns(&d, ip("192.0.2.10"));
    assert_eq!(c.verdict, Verdict::Pass);
    assert_eq!(
        check_helo(&d, ip("192.0.2.10"), "alias.good.test", &confirmed).verdict,
        Verdict::Warn
    );
    assert_eq!(
        check_helo(&d, ip("192.0.2.10"), "nowhere.good.test", &confirmed).verdict,
        Verdict::Fail
    );
}

#[test]
fn blocklists_on_a_fake_zone() {
    let z = zone();
    let d = dns(&z);
    let c = check_ip_blocklist(&d, ip("192.0.2.66"), "bl.test");
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
    assert!(c.reason.contains("sent spam to our traps"), "{}", c.reason);
    assert_eq!(c.record.as_deref(), Some("66.2.0.192.bl.test A 127.0.0.2"));
    assert_eq!(
        check_ip_blocklist(&d, ip("192.0.2.10"), "bl.test").verdict,
        Verdict::Pass
    );
    assert_eq!(
        check_ip_blocklist(&d, ip("192.0.2.77"), "bl.test").verdict,
        Verdict::Warn
    );
    assert_eq!(
        check_domain_blocklist(&d, "listed.test", "dbl.test").verdict,
        Verdict::Fail
    );
    assert_eq!(
        check_domain_blocklist(&d, "good.test", "dbl.test").verdict,
        Verdict::Pass
    );
    let r = run(&d, &input("good.test", "192.0.2.66"));
    assert_eq!(
        r.iter()
            .filter(|c| c.check == "blocklist" && c.verdict == Verdict::Fail)
            .count(),
        1
    );
}

#[test]
fn mx_null_missing_nonexistent() {
    let z = zone();
    let d = dns(&z);
    let c = check_mx(&d, "nullmx.test");
    assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
    assert!(c.reason.contains("null MX"));
    assert_eq!(check_mx(&d, "nomx.test").verdict, Verdict::Warn);
    assert_eq!(check_mx(&d, "missing.test").verdict, Verdict::Fail);
    assert_eq!(check_mx(&d, "good.test").verdict, Verdict::Pass);
}
