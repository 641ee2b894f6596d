//! Tests of the sans-IO core against scripted nameservers on a virtual clock: every datagram the core
//! sends is answered (or not) by a zone in memory, time only moves when the test moves it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;

/// How a scripted server treats a query.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behaviour {
    Answer,
    Silent,
    ServFail,
    /// Sets TC over UDP, answers over TCP.
    Truncate,
}

fn n(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn zone() -> Vec<Record> {
    let rr = |name: &str, ttl: u32, data: RData| Record::from_rdata(n(name), ttl, data);
    let a = |s: &str| RData::A(A(s.parse().unwrap()));
    vec![
        rr(
            "alpha.test.",
            300,
            RData::MX(MX::new(20, n("mx2.alpha.test."))),
        ),
        rr(
            "alpha.test.",
            300,
            RData::MX(MX::new(10, n("mx1.alpha.test."))),
        ),
        rr("mx1.alpha.test.", 300, a("127.0.0.2")),
        rr("mx2.alpha.test.", 300, a("127.0.0.3")),
        rr(
            "beta.test.",
            300,
            RData::MX(MX::new(10, n("mx-a.beta.test."))),
        ),
        rr(
            "beta.test.",
            300,
            RData::MX(MX::new(10, n("mx-b.beta.test."))),
        ),
        rr("mx-a.beta.test.", 300, a("127.0.0.4")),
        rr("mx-b.beta.test.", 300, a("127.0.0.5")),
        rr(
            "mx-b.beta.test.",
            300,
            RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
        ),
        rr("nomx.test.", 300, a("127.0.0.6")),
        rr("nullmx.test.", 300, RData::MX(MX::new(0, Name::root()))),
        rr(
            "dangling.test.",
            300,
            RData::MX(MX::new(10, n("missing.dangling.test."))),
        ),
        rr(
            "cname.test.",
            300,
            RData::MX(MX::new(10, n("mxalias.cname.test."))),
        ),
        rr(
            "mxalias.cname.test.",
            300,
            RData::CNAME(CNAME(n("mx1.alpha.test."))),
        ),
        rr(
            "loop.test.",
            300,
            RData::MX(MX::new(10, n("l1.loop.test."))),
        ),
        rr(
            "l1.loop.test.",
            300,
            RData::CNAME(CNAME(n("l2.loop.test."))),
        ),
        rr(
            "l2.loop.test.",
            300,
            RData::CNAME(CNAME(n("l1.loop.test."))),
        ),
        rr("short.test.", 1, a("127.0.0.9")),
        rr(
            "alpha.test.",
            300,
            RData::TXT(TXT::new(vec!["v=spf1 ".into(), "-all".into()])),
        ),
        rr(
            "2.0.0.127.in-addr.arpa.",
            300,
            RData::PTR(PTR(n("mx1.alpha.test."))),
        ),
    ]
}

/// A recursive server's answer from `zone()`: CNAMEs chased, NXDOMAIN/NODATA with the SOA (minimum 60).
fn answer(query: &Message) -> Message {
    let q = &query.queries[0];
    let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    m.add_query(q.clone());
    let zone = zone();
    let mut name = q.name().clone();
    for _ in 0..4 {
        let hits: Vec<_> = zone
            .iter()
            .filter(|r| r.name == name && r.record_type() == q.query_type())
            .cloned()
            .collect();
        if !hits.is_empty() {
            m.add_answers(hits);
            return m;
        }
        match zone
            .iter()
            .find(|r| r.name == name && r.record_type() == RecordType::CNAME)
        {
            Some(c) => {
                m.add_answer(c.clone());
                if let RData::CNAME(t) = &c.data {
                    name = t.0.clone();
                }
            }
            None => break,
        }
    }
    if !zone.iter().any(|r| r.name == name) {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    m.add_authority(Record::from_rdata(
        n("test."),
        300,
        RData::SOA(SOA::new(
            n("ns.test."),
            n("h.test."),
            1,
            3600,
            600,
            86400,
            60,
        )),
    ));
    m
}

const S1: &str = "127.0.10.201:53";
const S2: &str = "127.0.10.202:53";

struct Sim {
    r: Resolver,
    now: Instant,
    servers: HashMap<SocketAddr, Behaviour>,
    /// Every query sent: (server, transport, name, type).
    sent: Vec<(SocketAddr, Transport, String, RecordType)>,
    /// Exchanges currently open.
    open: HashMap<usize, (SocketAddr, Transport)>,
    events: Vec<Event>,
    /// When set, every query gets a random behaviour (including garbage and wrong IDs).
    chaos: Option<rand::rngs::StdRng>,
}

impl Sim {
    fn new(config: Config) -> Sim {
        Sim::seeded(config, [7; 32])
    }

    fn seeded(config: Config, seed: [u8; 32]) -> Sim {
        let servers = config
            .nameservers
            .iter()
            .map(|s| (*s, Behaviour::Answer))
            .collect();
        Sim {
            r: Resolver::new(config, seed).unwrap(),
            now: Instant::now(),
            servers,
            sent: Vec::new(),
            open: HashMap::new(),
            events: Vec::new(),
            chaos: None,
        }
    }

    fn config() -> Config {
        Config {
            nameservers: vec![S1.parse().unwrap(), S2.parse().unwrap()],
            timeout: Duration::from_secs(2),
            attempts: 2,
            ..Config::default()
        }
    }

    /// Runs the transmits the core asks for, answering per server behaviour, until nothing is left;
    /// moves the clock to the next timeout while lookups remain.
    fn settle(&mut self) {
        loop {
            while let Some(t) = self.r.poll_transmit() {
                match t {
                    Transmit::Close { exchange } => {
                        assert!(self.open.remove(&exchange.0).is_some(), "close of unknown");
                    }
                    Transmit::Send {
                        exchange,
                        server,
                        transport,
                        payload,
                    } => {
                        assert!(
                            self.open.insert(exchange.0, (server, transport)).is_none(),
                            "exchange {exchange:?} reused before close"
                        );
                        assert!(exchange.0 < self.r.config().max_in_flight);
                        let bytes = match transport {
                            Transport::Udp => &payload[..],
                            Transport::Tcp => {
                                let len = u16::from_be_bytes([payload[0], payload[1]]);
                                assert_eq!(usize::from(len), payload.len() - 2);
                                &payload[2..]
                            }
                        };
                        let query = Message::from_vec(bytes).unwrap();
                        let q = &query.queries[0];
                        self.sent
                            .push((server, transport, q.name().to_ascii(), q.query_type()));
                        self.respond(exchange, server, transport, &query);
                    }
                }
            }
            while let Some(e) = self.r.poll_event() {
                self.events.push(e);
            }
            match self.r.poll_timeout() {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.r.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        assert!(self.open.is_empty(), "exchanges left open: {:?}", self.open);
    }

    fn respond(&mut self, exchange: ExchangeId, server: SocketAddr, t: Transport, query: &Message) {
        let mut behaviour = self.servers[&server];
        if let Some(rng) = self.chaos.as_mut() {
            use rand::RngExt;
            let id = query.metadata.id;
            match rng.random_range(0..8u8) {
                0 => behaviour = Behaviour::Silent,
                1 => behaviour = Behaviour::ServFail,
                2 => behaviour = Behaviour::Truncate,
                3 => {
                    let len = rng.random_range(0..40usize);
                    let mut junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    if junk.len() >= 2 {
                        junk[..2].copy_from_slice(&id.to_be_bytes());
                    }
                    match t {
                        Transport::Udp => self.r.handle_datagram(self.now, exchange, server, &junk),
                        Transport::Tcp => {
                            let mut framed = (junk.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&junk);
                            self.r.handle_stream(self.now, exchange, &framed);
                        }
                    }
                    return;
                }
                4 if t == Transport::Udp => {
                    let mut wrong = answer(query);
                    wrong.metadata.id = id.wrapping_add(1);
                    self.r
                        .handle_datagram(self.now, exchange, server, &wrong.to_vec().unwrap());
                    return;
                }
                _ => behaviour = Behaviour::Answer,
            }
        }
        let mut reply = match behaviour {
            Behaviour::Silent => return,
            Behaviour::ServFail => {
                let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                m.add_query(query.queries[0].clone());
                m.metadata.response_code = ResponseCode::ServFail;
                m
            }
            Behaviour::Answer | Behaviour::Truncate => answer(query),
        };
        if behaviour == Behaviour::Truncate && t == Transport::Udp {
            reply.answers.clear();
            reply.metadata.truncation = true;
        }
        let bytes = reply.to_vec().unwrap();
        match t {
            Transport::Udp => self.r.handle_datagram(self.now, exchange, server, &bytes),
            Transport::Tcp => {
                let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&bytes);
                // One byte at a time: the core must reassemble any split.
                for b in framed.chunks(1) {
                    self.r.handle_stream(self.now, exchange, b);
                }
            }
        }
    }

    fn lookup(&mut self, token: u64, q: Query) -> Answer {
        self.r.lookup(self.now, token, q);
        self.settle();
        let i = self
            .events
            .iter()
            .position(|e| e.token == token)
            .expect("lookup finished");
        self.events.remove(i).answer
    }

    fn mx(&mut self, domain: &str) -> Result<Vec<MxHost>, Failure> {
        match self.lookup(0, Query::Mx(domain.into())) {
            Answer::Mx(r) => r,
            other => panic!("{other:?}"),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn mx_in_preference_order() {
    let mut sim = Sim::new(Sim::config());
    let hosts = sim.mx("alpha.test").unwrap();
    let got: Vec<_> = hosts
        .iter()
        .map(|h| (h.name.as_str(), h.preference, h.addresses.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("mx1.alpha.test", 10, vec![ip("127.0.0.2")]),
            ("mx2.alpha.test", 20, vec![ip("127.0.0.3")])
        ]
    );
    assert!(!hosts[0].implicit);
    // MX, then A and AAAA for two hosts.
    assert_eq!(sim.sent.len(), 5);
    assert!(sim.sent.iter().all(|s| s.0 == S1.parse().unwrap()));
}

#[test]
fn equal_preferences_are_shuffled_by_seed() {
    let mut orders = std::collections::HashSet::new();
    for seed in 0..32u8 {
        let order = |seed| {
            let mut sim = Sim::seeded(Sim::config(), [seed; 32]);
            sim.mx("beta.test")
                .unwrap()
                .into_iter()
                .map(|h| h.name)
                .collect::<Vec<_>>()
        };
        let first = order(seed);
        assert_eq!(first, order(seed), "same seed, same order");
        orders.insert(first);
    }
    assert_eq!(orders.len(), 2, "both orders appear over 32 seeds");
}

#[test]
fn address_family_order() {
    let mut sim = Sim::new(Sim::config());
    let b = sim.lookup(1, Query::Ip("mx-b.beta.test".into()));
    assert_eq!(b, Answer::Ip(Ok(vec![ip("127.0.0.5"), ip("::1")])));
    let mut v6 = Sim::new(Config {
        family: AddressFamily::Ipv6First,
        ..Sim::config()
    });
    let b = v6.lookup(1, Query::Ip("mx-b.beta.test".into()));
    assert_eq!(b, Answer::Ip(Ok(vec![ip("::1"), ip("127.0.0.5")])));
    let mut v4 = Sim::new(Config {
        family: AddressFamily::Ipv4Only,
        ..Sim::config()
    });
    let b = v4.lookup(1, Query::Ip("mx-b.beta.test".into()));
    assert_eq!(b, Answer::Ip(Ok(vec![ip("127.0.0.5")])));
    assert!(v4.sent.iter().all(|s| s.3 == RecordType::A));
}

#[test]
fn implicit_mx() {
    let mut sim = Sim::new(Sim::config());
    let hosts = sim.mx("nomx.test.").unwrap();
    assert_eq!(
        hosts,
        vec![MxHost {
            name: "nomx.test".into(),
            preference: 0,
            addresses: vec![ip("127.0.0.6")],
            implicit: true
        }]
    );
}

#[test]
fn null_mx_is_notaccept() {
    let f = Sim::new(Sim::config()).mx("nullmx.test").unwrap_err();
    assert_eq!((f.reason, f.permanent), (Reason::NotAccept, true));
}

#[test]
fn nxdomain_is_hostunknown_and_negatively_cached() {
    let mut sim = Sim::new(Sim::config());
    let f = sim.mx("nowhere.test").unwrap_err();
    assert_eq!((f.reason, f.permanent), (Reason::HostUnknown, true));
    assert_eq!(sim.sent.len(), 1);
    // Cached for the SOA minimum (60 s): no second query.
    sim.now += Duration::from_secs(59);
    assert!(sim.mx("nowhere.test").is_err());
    assert_eq!(sim.sent.len(), 1);
    assert_eq!(sim.r.stats().cache_hits, 1);
    sim.now += Duration::from_secs(2);
    assert!(sim.mx("nowhere.test").is_err());
    assert_eq!(sim.sent.len(), 2);
}

#[test]
fn dangling_mx_is_temporary() {
    let f = Sim::new(Sim::config()).mx("dangling.test").unwrap_err();
    assert_eq!((f.reason, f.permanent), (Reason::NetworkError, false));
    assert!(f.detail.contains("missing.dangling.test"), "{}", f.detail);
}

#[test]
fn mx_host_behind_cname() {
    let mut sim = Sim::new(Sim::config());
    let hosts = sim.mx("cname.test").unwrap();
    assert_eq!(hosts[0].name, "mxalias.cname.test");
    assert_eq!(hosts[0].addresses, vec![ip("127.0.0.2")]);
    // The CNAME is cached: the address of the alias is answered without the wire.
    let before = sim.sent.len();
    let again = sim.lookup(2, Query::Ip("mxalias.cname.test".into()));
    assert_eq!(again, Answer::Ip(Ok(vec![ip("127.0.0.2")])));
    assert_eq!(sim.sent.len(), before);
}

#[test]
fn cname_loop_fails_temporarily() {
    let mut sim = Sim::new(Sim::config());
    let f = sim.mx("loop.test").unwrap_err();
    assert_eq!((f.reason, f.permanent), (Reason::NetworkError, false));
    assert!(f.detail.contains("CNAME"), "{}", f.detail);
}

#[test]
fn txt_and_ptr() {
    let mut sim = Sim::new(Sim::config());
    match sim.lookup(1, Query::Txt("alpha.test".into())) {
        Answer::Txt(Ok(t)) => {
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].concatenated(), b"v=spf1 -all");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sim.lookup(2, Query::Txt("nomx.test".into())),
        Answer::Txt(Ok(vec![]))
    );
    assert_eq!(
        sim.lookup(3, Query::Ptr(ip("127.0.0.2"))),
        Answer::Ptr(Ok(vec!["mx1.alpha.test".into()]))
    );
    assert!(matches!(
        sim.lookup(4, Query::Ptr(ip("127.0.0.99"))),
        Answer::Ptr(Err(Failure {
            reason: Reason::HostUnknown,
            ..
        }))
    ));
}

#[test]
fn cached_answers_need_no_wire() {
    let mut sim = Sim::new(Sim::config());
    let first = sim.mx("alpha.test").unwrap();
    let sent = sim.sent.len();
    sim.r.lookup(sim.now, 9, Query::Mx("ALPHA.test".into()));
    assert!(sim.r.poll_transmit().is_none());
    let e = sim.r.poll_event().expect("answered at once");
    assert_eq!(e.answer, Answer::Mx(Ok(first)));
    assert_eq!(sim.sent.len(), sent);
}

#[test]
fn ttls_are_clamped() {
    let mut sim = Sim::new(Config {
        min_ttl: Duration::from_secs(30),
        ..Sim::config()
    });
    sim.lookup(1, Query::Ip("short.test".into()));
    assert_eq!(sim.sent.len(), 2);
    sim.now += Duration::from_secs(29);
    sim.lookup(2, Query::Ip("short.test".into()));
    assert_eq!(sim.sent.len(), 2, "TTL 1 raised to min_ttl 30");
    sim.now += Duration::from_secs(2);
    sim.lookup(3, Query::Ip("short.test".into()));
    // Only A is asked again: the NODATA for AAAA is cached for the SOA minimum (60 s).
    assert_eq!(sim.sent.len(), 3);
    assert_eq!(sim.sent[2].3, RecordType::A);
}

#[test]
fn concurrent_identical_questions_are_coalesced() {
    let mut sim = Sim::new(Sim::config());
    for token in 0..50 {
        sim.r.lookup(sim.now, token, Query::Mx("alpha.test".into()));
    }
    sim.settle();
    assert_eq!(sim.events.len(), 50);
    assert!(
        sim.events
            .iter()
            .all(|e| matches!(&e.answer, Answer::Mx(Ok(h)) if h.len() == 2))
    );
    assert_eq!(sim.sent.len(), 5, "one MX, two A, two AAAA on the wire");
    assert_eq!(sim.r.stats().coalesced, 49 * 5);
}

#[test]
fn timeout_moves_to_next_server() {
    let mut sim = Sim::new(Sim::config());
    sim.servers.insert(S1.parse().unwrap(), Behaviour::Silent);
    let start = sim.now;
    let hosts = sim.mx("nomx.test").unwrap();
    assert_eq!(hosts[0].addresses, vec![ip("127.0.0.6")]);
    assert_eq!(sim.sent[0].0, S1.parse().unwrap());
    assert_eq!(sim.sent[1].0, S2.parse().unwrap());
    assert!(sim.r.stats().timeouts >= 1);
    assert!(sim.now >= start + Duration::from_secs(2));
}

#[test]
fn all_servers_silent_is_temporary_after_all_tries() {
    let mut sim = Sim::new(Sim::config());
    for b in sim.servers.values_mut() {
        *b = Behaviour::Silent;
    }
    let start = sim.now;
    let f = sim.mx("alpha.test").unwrap_err();
    assert_eq!((f.reason, f.permanent), (Reason::NetworkError, false));
    // attempts (2) x servers (2) tries of 2 s each.
    assert_eq!(sim.sent.len(), 4);
    assert_eq!(sim.now - start, Duration::from_secs(8));
    assert_eq!(sim.r.lookups_in_progress(), 0);
}

#[test]
fn servfail_is_temporary_and_tries_the_next_server() {
    let mut sim = Sim::new(Sim::config());
    sim.servers.insert(S1.parse().unwrap(), Behaviour::ServFail);
    assert!(sim.mx("alpha.test").is_ok());
    assert!(sim.r.stats().server_errors >= 1);
    let mut all = Sim::new(Sim::config());
    for b in all.servers.values_mut() {
        *b = Behaviour::ServFail;
    }
    let start = all.now;
    let f = all.mx("alpha.test").unwrap_err();
    assert_eq!((f.reason, f.permanent), (Reason::NetworkError, false));
    assert!(
        f.detail.contains("SERVFAIL") || f.detail.contains("Server Failure"),
        "{}",
        f.detail
    );
    assert_eq!(all.now, start, "SERVFAIL does not wait for the timeout");
}

#[test]
fn truncation_switches_to_tcp() {
    let mut sim = Sim::new(Sim::config());
    sim.servers.insert(S1.parse().unwrap(), Behaviour::Truncate);
    let hosts = sim.mx("alpha.test").unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(sim.sent[0].1, Transport::Udp);
    assert_eq!(sim.sent[1].1, Transport::Tcp);
    assert_eq!(sim.sent[1].0, S1.parse().unwrap());
    assert_eq!(sim.r.stats().truncated, 5);
    assert_eq!(sim.r.stats().tcp_queries, 5);
}

/// Sends the single pending query's exchange, returning (exchange, server, query).
fn take_send(r: &mut Resolver) -> (ExchangeId, SocketAddr, Message) {
    match r.poll_transmit() {
        Some(Transmit::Send {
            exchange,
            server,
            payload,
            transport: Transport::Udp,
        }) => (exchange, server, Message::from_vec(&payload).unwrap()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn forged_and_garbage_answers_are_dropped() {
    let mut r = Resolver::new(Sim::config(), [1; 32]).unwrap();
    let now = Instant::now();
    r.lookup(now, 1, Query::Ip("nomx.test".into()));
    let (ex, server, query) = take_send(&mut r);
    // The AAAA question is on another exchange; leave it unanswered.
    let (ex6, _, _) = take_send(&mut r);

    let good = answer(&query);
    let mut wrong_id = good.clone();
    wrong_id.metadata.id = good.metadata.id.wrapping_add(1);
    let mut wrong_q = answer(&query);
    wrong_q.queries[0].set_name(n("other.test."));
    let mut not_response = good.clone();
    not_response.metadata.message_type = MessageType::Query;

    r.handle_datagram(now, ex, server, &wrong_id.to_vec().unwrap());
    r.handle_datagram(now, ex, server, &wrong_q.to_vec().unwrap());
    r.handle_datagram(now, ex, server, &not_response.to_vec().unwrap());
    r.handle_datagram(
        now,
        ex,
        "127.0.10.99:53".parse().unwrap(),
        &good.to_vec().unwrap(),
    );
    r.handle_datagram(now, ex, server, b"\x00");
    let mut garbage = good.to_vec().unwrap();
    garbage.truncate(garbage.len() - 2);
    r.handle_datagram(now, ex, server, &garbage);
    let s = r.stats();
    assert_eq!((s.mismatched, s.malformed, s.answers), (4, 2, 0));
    assert!(
        r.poll_transmit().is_none(),
        "still waiting on the same exchange"
    );

    r.handle_datagram(now, ex, server, &good.to_vec().unwrap());
    assert_eq!(r.stats().answers, 1);
    assert_eq!(r.poll_transmit(), Some(Transmit::Close { exchange: ex }));
    // A second copy (or a late answer) for the closed exchange is stray.
    r.handle_datagram(now, ex, server, &good.to_vec().unwrap());
    assert_eq!(r.stats().stray, 1);
    r.handle_error(now, ex6, "connection refused");
    // The AAAA question moves to the second server.
    let (_, server2, _) = match r.poll_transmit() {
        Some(Transmit::Close { .. }) => take_send(&mut r),
        other => panic!("{other:?}"),
    };
    assert_eq!(server2, S2.parse().unwrap());
}

#[test]
fn late_answer_after_timeout_is_ignored() {
    let mut r = Resolver::new(Sim::config(), [2; 32]).unwrap();
    let t0 = Instant::now();
    r.lookup(t0, 1, Query::Txt("alpha.test".into()));
    let (ex, server, query) = take_send(&mut r);
    let t1 = r.poll_timeout().unwrap();
    assert_eq!(t1, t0 + Duration::from_secs(2));
    r.handle_timeout(t1);
    assert_eq!(r.poll_transmit(), Some(Transmit::Close { exchange: ex }));
    let (ex2, server2, query2) = take_send(&mut r);
    assert_ne!(
        ex2, ex,
        "a just-closed exchange number is not reused at once"
    );
    assert_eq!(server2, S2.parse().unwrap());
    // The first server's answer arrives late, on the old exchange.
    r.handle_datagram(t1, ex, server, &answer(&query).to_vec().unwrap());
    assert_eq!(r.stats().stray, 1);
    assert!(r.poll_event().is_none());
    r.handle_datagram(t1, ex2, server2, &answer(&query2).to_vec().unwrap());
    assert!(matches!(
        r.poll_event(),
        Some(Event {
            token: 1,
            answer: Answer::Txt(Ok(_))
        })
    ));
}

#[test]
fn exchanges_are_bounded_and_queued() {
    let mut sim = Sim::new(Config {
        max_in_flight: 1,
        ..Sim::config()
    });
    for token in 0..3 {
        sim.r.lookup(
            sim.now,
            token,
            Query::Mx(["alpha.test", "beta.test", "nomx.test"][token as usize].into()),
        );
    }
    sim.settle();
    assert_eq!(sim.events.len(), 3);
    assert!(sim.events.iter().all(|e| e.answer.failure().is_none()));
}

#[test]
fn busy_and_invalid_names_fail_at_once() {
    let mut r = Resolver::new(
        Config {
            max_lookups: 1,
            ..Sim::config()
        },
        [0; 32],
    )
    .unwrap();
    let now = Instant::now();
    r.lookup(now, 1, Query::Mx("alpha.test".into()));
    r.lookup(now, 2, Query::Mx("beta.test".into()));
    let e = r.poll_event().unwrap();
    assert_eq!(e.token, 2);
    assert_eq!(e.answer.failure().unwrap().reason, Reason::SystemError);
    r.lookup(now, 3, Query::Mx("bad..name".into()));
    let f = r.poll_event().unwrap();
    assert_eq!(f.token, 3);
    assert!(f.answer.failure().unwrap().permanent);
}

#[test]
fn resolver_and_driver_can_move_to_a_shard_thread() {
    fn is_send<T: Send>() {}
    is_send::<Resolver>();
    is_send::<Driver>();
    is_send::<BlockingResolver>();
}

#[test]
fn null_mx_mixed_with_real_hosts_keeps_the_real_ones_once() {
    let mut r = Resolver::new(Sim::config(), [4; 32]).unwrap();
    let now = Instant::now();
    r.lookup(now, 1, Query::Mx("mixed.test".into()));
    let (ex, server, query) = take_send(&mut r);
    let mut m = answer(&query);
    m.answers.clear();
    m.authorities.clear();
    m.metadata.response_code = ResponseCode::NoError;
    let dup = n("MX1.Alpha.test.");
    for (p, h) in [(0, Name::root()), (10, n("mx1.alpha.test.")), (20, dup)] {
        m.add_answer(Record::from_rdata(
            n("mixed.test."),
            60,
            RData::MX(MX::new(p, h)),
        ));
    }
    r.handle_datagram(now, ex, server, &m.to_vec().unwrap());
    // Answer the address questions from the zone.
    while let Some(t) = r.poll_transmit() {
        if let Transmit::Send {
            exchange,
            server,
            payload,
            ..
        } = t
        {
            let q = Message::from_vec(&payload).unwrap();
            r.handle_datagram(now, exchange, server, &answer(&q).to_vec().unwrap());
        }
    }
    match r.poll_event().unwrap().answer {
        Answer::Mx(Ok(hosts)) => {
            assert_eq!(hosts.len(), 1);
            assert_eq!(hosts[0].name, "mx1.alpha.test");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cname_answer_without_target_records_asks_for_the_target() {
    let mut r = Resolver::new(Sim::config(), [5; 32]).unwrap();
    let now = Instant::now();
    r.lookup(now, 1, Query::Ip("alias.example".into()));
    let (ex_a, server, qa) = take_send(&mut r);
    let (ex_aaaa, _, qaaaa) = take_send(&mut r);
    for (ex, q) in [(ex_a, qa), (ex_aaaa, qaaaa)] {
        let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        m.add_query(q.queries[0].clone());
        m.add_answer(Record::from_rdata(
            n("alias.example."),
            60,
            RData::CNAME(CNAME(n("mx1.alpha.test."))),
        ));
        r.handle_datagram(now, ex, server, &m.to_vec().unwrap());
    }
    let mut asked = Vec::new();
    while let Some(t) = r.poll_transmit() {
        if let Transmit::Send {
            exchange,
            server,
            payload,
            ..
        } = t
        {
            let q = Message::from_vec(&payload).unwrap();
            asked.push((q.queries[0].name().to_ascii(), q.queries[0].query_type()));
            r.handle_datagram(now, exchange, server, &answer(&q).to_vec().unwrap());
        }
    }
    asked.sort();
    assert_eq!(
        asked,
        vec![
            ("mx1.alpha.test.".to_string(), RecordType::A),
            ("mx1.alpha.test.".to_string(), RecordType::AAAA)
        ]
    );
    assert_eq!(
        r.poll_event().unwrap().answer,
        Answer::Ip(Ok(vec![ip("127.0.0.2")]))
    );
}

#[test]
fn full_cache_evicts_and_stays_bounded() {
    let mut sim = Sim::new(Config {
        cache_capacity: 4,
        ..Sim::config()
    });
    for (i, d) in ["alpha.test", "beta.test", "nomx.test", "cname.test"]
        .iter()
        .enumerate()
    {
        assert!(
            sim.lookup(i as u64, Query::Mx((*d).into()))
                .failure()
                .is_none()
        );
    }
    let s = sim.r.stats();
    assert_eq!(s.cache_entries, 4);
    assert!(s.evictions > 0);
    // Still correct after evictions.
    assert_eq!(sim.mx("alpha.test").unwrap().len(), 2);
}

#[test]
fn cancelled_lookup_sends_no_event_but_its_answers_are_cached() {
    let mut sim = Sim::new(Sim::config());
    sim.r.lookup(sim.now, 1, Query::Mx("alpha.test".into()));
    sim.r.lookup(sim.now, 2, Query::Mx("beta.test".into()));
    assert_eq!(sim.r.cancel(1), 1);
    assert_eq!(sim.r.cancel(1), 0);
    sim.settle();
    assert_eq!(sim.events.len(), 1);
    assert_eq!(sim.events[0].token, 2);
    assert_eq!(sim.r.lookups_in_progress(), 0);
    // The cancelled lookup's MX question still completed and was cached.
    let sent = sim.sent.len();
    sim.r.lookup(sim.now, 3, Query::Mx("alpha.test".into()));
    sim.settle();
    assert!(
        sim.sent.len() > sent,
        "host addresses were never asked: more questions now"
    );
    assert!(sim.sent[sent..].iter().all(|s| s.3 != RecordType::MX));
}

#[test]
fn mx_record_with_empty_rdata_is_malformed() {
    let mut r = Resolver::new(Sim::config(), [6; 32]).unwrap();
    let now = Instant::now();
    r.lookup(now, 1, Query::Mx("empty.test".into()));
    let (ex, server, query) = take_send(&mut r);
    let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    m.add_query(query.queries[0].clone());
    m.add_answer(Record::update0(n("empty.test."), 60, RecordType::MX));
    r.handle_datagram(now, ex, server, &m.to_vec().unwrap());
    assert_eq!(r.stats().malformed, 1);
    assert!(r.poll_event().is_none());
    // The try still times out and the lookup ends after the last one.
    let mut t = now;
    while let Some(deadline) = r.poll_timeout() {
        t = deadline;
        r.handle_timeout(t);
        while let Some(Transmit::Send { .. } | Transmit::Close { .. }) = r.poll_transmit() {}
    }
    let f = r.poll_event().expect("the lookup ends").answer;
    assert!(!f.failure().unwrap().permanent);
    assert_eq!(t - now, Duration::from_secs(8));
}

#[test]
fn tcp_answer_split_at_every_position() {
    let mut sim_answer = None;
    for cut in 0.. {
        let mut r = Resolver::new(
            Config {
                family: AddressFamily::Ipv4Only,
                ..Sim::config()
            },
            [8; 32],
        )
        .unwrap();
        let now = Instant::now();
        r.lookup(now, 1, Query::Ip("mx1.alpha.test".into()));
        let (ex, server, query) = take_send(&mut r);
        let mut tc = answer(&query);
        tc.answers.clear();
        tc.metadata.truncation = true;
        r.handle_datagram(now, ex, server, &tc.to_vec().unwrap());
        assert_eq!(r.poll_transmit(), Some(Transmit::Close { exchange: ex }));
        let (tcp_ex, payload) = match r.poll_transmit() {
            Some(Transmit::Send {
                exchange,
                transport: Transport::Tcp,
                payload,
                ..
            }) => (exchange, payload),
            other => panic!("{other:?}"),
        };
        let q = Message::from_vec(&payload[2..]).unwrap();
        let bytes = answer(&q).to_vec().unwrap();
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        if cut > framed.len() {
            break;
        }
        r.handle_stream(now, tcp_ex, &framed[..cut]);
        if cut < framed.len() {
            assert!(
                r.poll_event().is_none(),
                "complete before the last byte at cut {cut}"
            );
        }
        r.handle_stream(now, tcp_ex, &framed[cut..]);
        let e = r.poll_event().expect("answer after the whole message");
        match &sim_answer {
            None => sim_answer = Some(e.answer),
            Some(a) => assert_eq!(a, &e.answer, "cut {cut}"),
        }
    }
    assert_eq!(sim_answer, Some(Answer::Ip(Ok(vec![ip("127.0.0.2")]))));
}

#[test]
fn timed_out_server_is_held_down_for_new_questions() {
    let mut sim = Sim::new(Sim::config());
    sim.servers.insert(S1.parse().unwrap(), Behaviour::Silent);
    let t0 = sim.now;
    sim.lookup(1, Query::Txt("alpha.test".into()));
    assert_eq!(sim.now - t0, Duration::from_secs(2), "one timeout on S1");
    // A new question starts at S2 at once.
    let t1 = sim.now;
    let n = sim.sent.len();
    sim.lookup(2, Query::Txt("nomx.test".into()));
    assert_eq!(sim.now, t1);
    assert_eq!(sim.sent[n].0, S2.parse().unwrap());
    // After the hold-down S1 is first again (and, still silent, held down again).
    sim.now += Duration::from_secs(31);
    let n = sim.sent.len();
    sim.lookup(3, Query::Txt("beta.test".into()));
    assert_eq!(sim.sent[n].0, S1.parse().unwrap());
    // S1 answers again: an answer ends its hold-down.
    sim.servers.insert(S1.parse().unwrap(), Behaviour::Answer);
    sim.now += Duration::from_secs(31);
    sim.lookup(4, Query::Txt("mx1.alpha.test".into()));
    let n = sim.sent.len();
    sim.lookup(5, Query::Txt("mx2.alpha.test".into()));
    assert_eq!(sim.sent[n].0, S1.parse().unwrap());
}

#[test]
fn rotate_spreads_first_tries() {
    let mut sim = Sim::new(Config {
        rotate: true,
        ..Sim::config()
    });
    for (i, d) in ["alpha.test", "beta.test", "nomx.test", "nullmx.test"]
        .iter()
        .enumerate()
    {
        sim.lookup(i as u64, Query::Txt((*d).into()));
    }
    let servers: Vec<_> = sim.sent.iter().map(|s| s.0.to_string()).collect();
    assert_eq!(servers, vec![S1, S2, S1, S2]);
}

#[test]
fn formerr_to_edns_is_asked_again_without_it() {
    let mut r = Resolver::new(Sim::config(), [10; 32]).unwrap();
    let now = Instant::now();
    r.lookup(now, 1, Query::Txt("alpha.test".into()));
    let (ex, server, query) = take_send(&mut r);
    assert!(query.edns.is_some());
    let mut formerr = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    formerr.add_query(query.queries[0].clone());
    formerr.metadata.response_code = ResponseCode::FormErr;
    r.handle_datagram(now, ex, server, &formerr.to_vec().unwrap());
    assert_eq!(r.poll_transmit(), Some(Transmit::Close { exchange: ex }));
    let (ex2, server2, query2) = take_send(&mut r);
    assert_eq!(server2, server, "same server, same try");
    assert!(query2.edns.is_none());
    // A second FORMERR (without EDNS0) is a failed try: the next server is asked.
    let mut again = formerr.clone();
    again.metadata.id = query2.metadata.id;
    r.handle_datagram(now, ex2, server2, &again.to_vec().unwrap());
    assert_eq!(r.poll_transmit(), Some(Transmit::Close { exchange: ex2 }));
    let (ex3, server3, query3) = take_send(&mut r);
    assert_eq!(server3, S2.parse().unwrap());
    assert!(query3.edns.is_none());
    r.handle_datagram(now, ex3, server3, &answer(&query3).to_vec().unwrap());
    assert!(matches!(r.poll_event().unwrap().answer, Answer::Txt(Ok(ref t)) if t.len() == 1));
}

/// Random faults on every query across many seeds: every lookup still ends with one event, every
/// exchange is closed, permanent failures only come from the zone's own answers.
#[test]
fn chaos_every_lookup_ends() {
    use rand::SeedableRng;
    let domains = [
        "alpha.test",
        "beta.test",
        "nomx.test",
        "nullmx.test",
        "dangling.test",
        "cname.test",
        "loop.test",
        "nowhere.test",
    ];
    for seed in 0..64u64 {
        let mut sim = Sim::seeded(
            Config {
                max_in_flight: 4,
                ..Sim::config()
            },
            [seed as u8; 32],
        );
        sim.chaos = Some(rand::rngs::StdRng::seed_from_u64(seed));
        for (i, d) in domains.iter().enumerate() {
            sim.r.lookup(sim.now, i as u64, Query::Mx((*d).into()));
        }
        sim.r.lookup(sim.now, 100, Query::Ptr(ip("127.0.0.2")));
        sim.settle();
        assert_eq!(sim.events.len(), domains.len() + 1, "seed {seed}");
        assert_eq!(sim.r.lookups_in_progress(), 0);
        for e in &sim.events {
            if let Some(f) = e.answer.failure()
                && f.permanent
            {
                let d = domains.get(e.token as usize).copied().unwrap_or("ptr");
                assert!(
                    matches!(d, "nullmx.test" | "nowhere.test"),
                    "seed {seed}: permanent failure for {d}: {f}"
                );
            }
        }
    }
}
