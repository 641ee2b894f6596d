//! Resolver throughput (lookups/s, one core):
//!
//! - `dns/cached_mx`: MX lookups answered from the cache by the sans-IO core (`Resolver::lookup` then
//!   `poll_event`), the cost every queued message pays once its domain is warm.
//! - `dns/dnsmasq_mx_uncached`: MX lookups against a local dnsmasq (started by the bench on
//!   127.0.10.1) through the mio driver with the cache disabled (max TTL 0), one lookup at a time: the
//!   MX question and the A/AAAA questions of both MX hosts (5 UDP exchanges per lookup).
//! - `dns/dnsmasq_mx_cached_blocking`: the same through `BlockingResolver` with a warm cache (the
//!   front end's own overhead).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use vmta::dns::{Answer, BlockingResolver, Config, Query, Resolver, Transmit};

/// Answers any query the way a server for `dN.bench.` would: two MX hosts, one A each, no AAAA.
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
        _ => {}
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

fn dnsmasq(c: &mut Criterion) {
    let server = vmta_tests::dns::start_dnsmasq();
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    let mut uncached = BlockingResolver::new(Config {
        min_ttl: Duration::ZERO,
        max_ttl: Duration::ZERO,
        max_negative_ttl: Duration::ZERO,
        timeout: Duration::from_secs(2),
        ..Config::with_nameservers(vec![server.addr])
    })
    .unwrap();
    g.bench_function("dnsmasq_mx_uncached", |b| {
        b.iter(|| {
            let hosts = uncached.lookup_mx("alpha.test").unwrap();
            assert_eq!(hosts.len(), 2);
        })
    });
    let mut cached = BlockingResolver::new(Config::with_nameservers(vec![server.addr])).unwrap();
    cached.lookup_mx("alpha.test").unwrap();
    g.bench_function("dnsmasq_mx_cached_blocking", |b| {
        b.iter(|| black_box(cached.lookup_mx("alpha.test").unwrap()))
    });
    g.finish();
    let s = uncached.stats();
    assert_eq!((s.timeouts, s.malformed, s.mismatched), (0, 0, 0), "{s:?}");
}

criterion_group!(benches, cached_mx, dnsmasq);
criterion_main!(benches);
