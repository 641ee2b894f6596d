//! The resolver against real nameservers started by the test: dnsmasq and nsd serving the zone in
//! `tests/data/dns` (preferences, equal preferences, implicit MX, null MX, dangling MX, CNAME, NXDOMAIN,
//! TXT, PTR, and the 40-MX `many.test` whose answer nsd truncates without EDNS0, so TCP is needed).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use vmta::dns::{
    AddressFamily, Answer, BlockingResolver, Config, Driver, MxHost, Query, Reason, Resolver,
};
use vmta_tests::dns::{DnsServer, start_dnsmasq, start_nsd};

fn config(server: SocketAddr) -> Config {
    Config {
        timeout: Duration::from_secs(2),
        ..Config::with_nameservers(vec![server])
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn summary(hosts: &[MxHost]) -> Vec<(String, u16, Vec<IpAddr>)> {
    hosts
        .iter()
        .map(|h| (h.name.clone(), h.preference, h.addresses.clone()))
        .collect()
}

/// The zone's MX cases, identical in dnsmasq.conf and test.zone. `uncached_rerun` is how many questions
/// a rerun of two lookups must send again: dnsmasq's NODATA answers carry no SOA, and RFC 2308 §5 says
/// not to cache those (the AAAA questions of mx1/mx2.alpha.test); nsd's carry one.
fn check_mx_cases(server: &DnsServer, uncached_rerun: u64) {
    let mut r = BlockingResolver::new(config(server.addr)).unwrap();

    assert_eq!(
        summary(&r.lookup_mx("alpha.test").unwrap()),
        vec![
            ("mx1.alpha.test".into(), 10, vec![ip("127.0.0.2")]),
            ("mx2.alpha.test".into(), 20, vec![ip("127.0.0.3")]),
        ]
    );

    let beta = r.lookup_mx("beta.test").unwrap();
    assert_eq!(beta.len(), 2);
    assert!(beta.iter().all(|h| h.preference == 10));
    let names: HashSet<_> = beta.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, HashSet::from(["mx-a.beta.test", "mx-b.beta.test"]));
    let b = beta.iter().find(|h| h.name == "mx-b.beta.test").unwrap();
    assert_eq!(b.addresses, vec![ip("127.0.0.5"), ip("::1")], "IPv4 first");

    let nomx = r.lookup_mx("nomx.test").unwrap();
    assert_eq!(
        summary(&nomx),
        vec![("nomx.test".into(), 0, vec![ip("127.0.0.6")])]
    );
    assert!(nomx[0].implicit);

    let null = r.lookup_mx("nullmx.test").unwrap_err();
    assert_eq!(
        (null.reason, null.permanent),
        (Reason::NotAccept, true),
        "{null}"
    );

    let dangling = r.lookup_mx("dangling.test").unwrap_err();
    assert_eq!(
        (dangling.reason, dangling.permanent),
        (Reason::NetworkError, false),
        "{dangling}"
    );

    let cname = r.lookup_mx("cname.test").unwrap();
    assert_eq!(
        summary(&cname),
        vec![("mxalias.cname.test".into(), 10, vec![ip("127.0.0.2")])]
    );

    let nx = r.lookup_mx("does-not-exist.test").unwrap_err();
    assert_eq!(
        (nx.reason, nx.permanent),
        (Reason::HostUnknown, true),
        "{nx}"
    );

    assert_eq!(
        r.lookup_ip("mx2.alpha.test").unwrap(),
        vec![ip("127.0.0.3")]
    );
    let s = r.stats();
    assert_eq!((s.malformed, s.mismatched, s.timeouts), (0, 0, 0), "{s:?}");
    assert!(s.answers > 0);

    // The answers are cached now: the same lookups ask again only what was not cacheable.
    let sent = s.udp_queries + s.tcp_queries;
    assert_eq!(summary(&r.lookup_mx("alpha.test").unwrap()).len(), 2);
    assert_eq!(summary(&r.lookup_mx("cname.test").unwrap()).len(), 1);
    let s = r.stats();
    assert_eq!(s.udp_queries + s.tcp_queries, sent + uncached_rerun);
}

#[test]
fn dnsmasq_mx_cases() {
    let server = start_dnsmasq();
    check_mx_cases(&server, 3);
}

#[test]
fn nsd_mx_cases() {
    let server = start_nsd();
    check_mx_cases(&server, 0);
}

#[test]
fn dnsmasq_txt_and_ptr() {
    let server = start_dnsmasq();
    let mut r = BlockingResolver::new(config(server.addr)).unwrap();
    let txt = r.lookup_txt("alpha.test").unwrap();
    assert_eq!(txt.len(), 1);
    assert_eq!(txt[0].concatenated(), b"v=spf1 ip4:127.0.0.0/8 -all");
    // host-record= also publishes the reverse name.
    assert_eq!(
        r.lookup_ptr(ip("127.0.0.2")).unwrap(),
        vec!["mx1.alpha.test".to_string()]
    );
    assert_eq!(r.lookup_txt("nomx.test").unwrap(), vec![]);
    let nx = r.lookup_txt("nothing.test").unwrap_err();
    assert_eq!(nx.reason, Reason::HostUnknown);
}

#[test]
fn nsd_many_mx_over_udp_with_edns_and_over_tcp_after_truncation() {
    let server = start_nsd();
    let expected: Vec<String> = (0..40)
        .map(|i| format!("mx{i:02}.a-rather-long-label-to-inflate-the-response.many.test"))
        .collect();

    // With EDNS0 (1232 bytes) nsd fits the 40 MX records into one datagram.
    let mut edns = BlockingResolver::new(config(server.addr)).unwrap();
    let hosts = edns.lookup_mx("many.test").unwrap();
    assert_eq!(
        hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(edns.stats().truncated, 0);

    // Without EDNS0 the answer is over 512 bytes: nsd sets TC and the resolver asks again over TCP.
    let mut plain = BlockingResolver::new(Config {
        edns_payload: 0,
        ..config(server.addr)
    })
    .unwrap();
    let hosts = plain.lookup_mx("many.test").unwrap();
    assert_eq!(
        hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>(),
        expected
    );
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h.preference, i as u16);
        assert_eq!(h.addresses, vec![ip(&format!("127.0.1.{}", i + 1))]);
    }
    let s = plain.stats();
    assert_eq!(s.truncated, 1, "{s:?}");
    assert_eq!(s.tcp_queries, 1, "{s:?}");
}

#[test]
fn dead_first_nameserver_is_skipped() {
    let server = start_dnsmasq();
    // Nothing listens on this port: ICMP port unreachable ends the first try at once.
    let dead: SocketAddr = format!("127.0.10.3:{}", vmta_tests::free_udp_tcp_port("127.0.10.3"))
        .parse()
        .unwrap();
    let mut r = BlockingResolver::new(Config {
        timeout: Duration::from_secs(3),
        ..Config::with_nameservers(vec![dead, server.addr])
    })
    .unwrap();
    let start = Instant::now();
    assert_eq!(r.lookup_mx("alpha.test").unwrap().len(), 2);
    assert!(r.stats().io_errors + r.stats().timeouts >= 1);
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn ipv6_first_family() {
    let server = start_nsd();
    let mut r = BlockingResolver::new(Config {
        family: AddressFamily::Ipv6First,
        ..config(server.addr)
    })
    .unwrap();
    assert_eq!(
        r.lookup_ip("mx-b.beta.test").unwrap(),
        vec![ip("::1"), ip("127.0.0.5")]
    );
}

/// The driver in a caller's own mio loop with caller-chosen tokens, many lookups at once.
#[test]
fn driver_in_external_poll_with_coalescing() {
    let server = start_dnsmasq();
    let mut poll = mio::Poll::new().unwrap();
    let own = mio::net::UdpSocket::bind("127.0.10.4:0".parse().unwrap()).unwrap();
    let mut own = own;
    poll.registry()
        .register(&mut own, mio::Token(7), mio::Interest::READABLE)
        .unwrap();
    let resolver = Resolver::new(config(server.addr), [9; 32]).unwrap();
    let mut dns = Driver::new(resolver, 500);
    assert_eq!(dns.tokens(), 500..564);
    assert!(!dns.owns(mio::Token(7)));

    let domains = ["alpha.test", "beta.test", "nomx.test", "nullmx.test"];
    let now = Instant::now();
    for i in 0..100u64 {
        let d = domains[i as usize % domains.len()];
        dns.lookup(poll.registry(), now, i, Query::Mx(d.into()));
    }
    let mut events = mio::Events::with_capacity(64);
    let mut answers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answers.len() < 100 {
        assert!(Instant::now() < deadline, "lookups did not finish");
        let timeout = dns
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        poll.poll(&mut events, timeout).unwrap();
        let now = Instant::now();
        for e in events.iter() {
            assert!(dns.owns(e.token()), "the caller's own socket stays quiet");
            dns.handle_ready(poll.registry(), now, e.token());
        }
        dns.handle_timeout(poll.registry(), now);
        while let Some(ev) = dns.poll_event() {
            answers.push(ev);
        }
    }
    answers.sort_by_key(|e| e.token);
    for e in &answers {
        let d = domains[e.token as usize % domains.len()];
        match (&e.answer, d) {
            (Answer::Mx(Err(f)), "nullmx.test") => assert_eq!(f.reason, Reason::NotAccept),
            (Answer::Mx(Ok(h)), _) => assert!(!h.is_empty()),
            other => panic!("{other:?}"),
        }
    }
    let s = dns.stats();
    // 4 MX questions, then A/AAAA for 5 distinct hosts plus nomx.test: 16 questions at most.
    assert!(s.udp_queries <= 16, "{s:?}");
    assert!(s.coalesced >= 96, "{s:?}");
}
