//! Resolver throughput (lookups/s, one core):
//!
//! - `dns/cached_mx`: MX lookups answered from the cache by the sans-IO core (`Resolver::lookup` then
//!   `poll_event`), the cost every queued message pays once its domain is warm.
//! - `dns/dnsmasq_mx_uncached`: MX lookups against a local dnsmasq (started by the bench on
//!   127.0.10.1) through the mio driver with the cache disabled (max TTL 0), one lookup at a time: the
//!   MX question and the A/AAAA questions of both MX hosts (5 UDP exchanges per lookup), through
//!   `BlockingResolver`.
//! - `dns/nsd_ip_40_concurrent_uncached`: 40 address lookups (80 questions) in flight at once through
//!   the mio driver against a local nsd (127.0.10.2), cache disabled: throughput with many exchanges
//!   open, as a shard resolving many domains sees it.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use vmta::dns::{Answer, BlockingResolver, Config, Driver, Query, Resolver, Transmit};

/// Answers any query the way a recursive resolver would for `dN.bench.`: two MX hosts, one A each, no
/// AAAA.
fn answer(query: &[u8]) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let question = q.queries[0].clone();
    let name = question.name().clone();
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.add_query(question.clone());
    match question.query_type() {
        RecordType::MX => {
            for (pref, host) in [(10, "mx1"), (20, "mx2")] {
                let target = Name::from_ascii(host)
                    .unwrap()
                    .append_domain(&name)
                    .unwrap();
                m.add_answer(Record::from_rdata(
                    name.clone(),
                    3600,
                    RData::MX(MX::new(pref, target)),
                ));
            }
        }
        RecordType::A => {
            m.add_answer(Record::from_rdata(
                name,
                3600,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
        }
        _ => {
            // NODATA with the zone's SOA, as a recursive resolver sends it (negatively cacheable).
            let soa = SOA::new(
                Name::from_ascii("ns.bench.").unwrap(),
                Name::from_ascii("hostmaster.bench.").unwrap(),
                1,
                3600,
                600,
                86400,
                3600,
            );
            m.add_authority(Record::from_rdata(
                Name::from_ascii("bench.").unwrap(),
                3600,
                RData::SOA(soa),
            ));
        }
    }
    m.to_vec().unwrap()
}

fn cached_mx(c: &mut Criterion) {
    let domains: Vec<String> = (0..1000).map(|i| format!("d{i}.bench")).collect();
    let config = Config {
        nameservers: vec!["127.0.10.1:53".parse().unwrap()],
        cache_capacity: 100_000,
        ..Config::default()
    };
    let mut r = Resolver::new(config, [3; 32]).unwrap();
    let now = Instant::now();
    // Warm the cache: answer every question the core asks.
    for d in &domains {
        r.lookup(now, 0, Query::Mx(d.clone()));
        while let Some(t) = r.poll_transmit() {
            if let Transmit::Send {
                exchange,
                server,
                payload,
                ..
            } = t
            {
                r.handle_datagram(now, exchange, server, &answer(&payload));
            }
        }
        match r.poll_event() {
            Some(e) => assert!(matches!(e.answer, Answer::Mx(Ok(ref h)) if h.len() == 2)),
            None => panic!("warm-up lookup of {d} did not finish"),
        }
    }
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("cached_mx", |b| {
        b.iter(|| {
            i = (i + 1) % domains.len();
            r.lookup(now, i as u64, Query::Mx(domains[i].clone()));
            black_box(r.poll_event().unwrap())
        })
    });
    g.finish();
}

fn uncached(overrides: Config) -> Config {
    Config {
        min_ttl: Duration::ZERO,
        max_ttl: Duration::ZERO,
        max_negative_ttl: Duration::ZERO,
        timeout: Duration::from_secs(2),
        ..overrides
    }
}

fn dnsmasq(c: &mut Criterion) {
    let server = vmta_tests::dns::start_dnsmasq();
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    let mut r =
        BlockingResolver::new(uncached(Config::with_nameservers(vec![server.addr]))).unwrap();
    g.bench_function("dnsmasq_mx_uncached", |b| {
        b.iter(|| {
            let hosts = r.lookup_mx("alpha.test").unwrap();
            assert_eq!(hosts.len(), 2);
        })
    });
    g.finish();
    let s = r.stats();
    assert_eq!((s.timeouts, s.malformed, s.mismatched), (0, 0, 0), "{s:?}");
}

fn nsd_concurrent(c: &mut Criterion) {
    let server = vmta_tests::dns::start_nsd();
    let names: Vec<String> = (0..40)
        .map(|i| format!("mx{i:02}.a-rather-long-label-to-inflate-the-response.many.test"))
        .collect();
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(256);
    let resolver = Resolver::new(
        uncached(Config::with_nameservers(vec![server.addr])),
        [1; 32],
    )
    .unwrap();
    let mut dns = Driver::new(resolver, 0);
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function("nsd_ip_40_concurrent_uncached", |b| {
        b.iter(|| {
            let now = Instant::now();
            for (i, n) in names.iter().enumerate() {
                dns.lookup(poll.registry(), now, i as u64, Query::Ip(n.clone()));
            }
            let mut done = 0;
            while done < names.len() {
                let timeout = dns
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()));
                poll.poll(&mut events, timeout).unwrap();
                let now = Instant::now();
                for e in events.iter() {
                    dns.handle_ready(poll.registry(), now, e.token());
                }
                dns.handle_timeout(poll.registry(), now);
                while let Some(e) = dns.poll_event() {
                    assert!(matches!(e.answer, Answer::Ip(Ok(ref a)) if a.len() == 1));
                    done += 1;
                }
            }
        })
    });
    g.finish();
    let s = dns.stats();
    assert_eq!((s.timeouts, s.malformed, s.mismatched), (0, 0, 0), "{s:?}");
}

criterion_group!(benches, cached_mx, dnsmasq, nsd_concurrent);
criterion_main!(benches);
