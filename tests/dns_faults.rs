//! The resolver against in-process fake nameservers doing what real servers will not: staying silent,
//! answering with the wrong ID or question, sending garbage, SERVFAIL, answering after the timeout,
//! truncating and then misbehaving over TCP. Real sockets and the real mio driver; only the server is
//! scripted.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};
use vmta::dns::{BlockingResolver, Config, Reason};
use vmta_tests::dns::{FakeServer, Script};

const NOW: Duration = Duration::ZERO;

/// A correct answer: an A question gets 192.0.2.1, any other question an empty NOERROR answer.
fn good(query: &[u8]) -> Message {
    let q = Message::from_vec(query).expect("query decodes");
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.add_query(q.queries[0].clone());
    if q.queries[0].query_type() == hickory_proto::rr::RecordType::A {
        m.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        ));
    }
    m
}

fn bytes(m: &Message) -> Vec<u8> {
    m.to_vec().unwrap()
}

fn framed(m: &Message) -> Vec<u8> {
    let b = bytes(m);
    let mut out = (b.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

fn script(f: impl Fn(&[u8]) -> Vec<(Duration, Vec<u8>)> + Send + Sync + 'static) -> Arc<Script> {
    Arc::new(f)
}

fn silent() -> Arc<Script> {
    script(|_| vec![])
}

fn resolver(servers: &[&FakeServer], timeout_ms: u64, attempts: u32) -> BlockingResolver {
    BlockingResolver::new(Config {
        timeout: Duration::from_millis(timeout_ms),
        attempts,
        ..Config::with_nameservers(servers.iter().map(|s| s.addr).collect())
    })
    .unwrap()
}

fn v4() -> Vec<IpAddr> {
    vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]
}

#[test]
fn no_answer_is_a_temporary_failure_after_all_tries() {
    let server = FakeServer::start("127.0.10.10", silent(), silent());
    let mut r = resolver(&[&server], 150, 2);
    let start = Instant::now();
    let f = r.lookup_ip("host.example").unwrap_err();
    assert_eq!(
        (f.reason, f.permanent),
        (Reason::NetworkError, false),
        "{f}"
    );
    assert!(start.elapsed() >= Duration::from_millis(300));
    // A and AAAA, two tries each.
    assert_eq!(r.stats().timeouts, 4);
}

#[test]
fn wrong_id_and_wrong_question_are_dropped_then_the_right_answer_wins() {
    let udp = script(|q| {
        let right = good(q);
        let mut wrong_id = right.clone();
        wrong_id.metadata.id = right.metadata.id.wrapping_add(1);
        let mut wrong_q = right.clone();
        wrong_q.queries[0].set_name(Name::from_ascii("other.example.").unwrap());
        vec![
            (NOW, bytes(&wrong_id)),
            (NOW, bytes(&wrong_q)),
            (Duration::from_millis(30), bytes(&right)),
        ]
    });
    let server = FakeServer::start("127.0.10.11", udp, silent());
    let mut r = resolver(&[&server], 2_000, 1);
    assert_eq!(r.lookup_ip("host.example").unwrap(), v4());
    let s = r.stats();
    assert_eq!(s.mismatched, 4, "{s:?}");
    assert_eq!(s.timeouts, 0);
}

#[test]
fn only_wrong_ids_time_out() {
    let udp = script(|q| {
        let mut m = good(q);
        m.metadata.id = m.metadata.id.wrapping_add(1);
        vec![(NOW, bytes(&m))]
    });
    let server = FakeServer::start("127.0.10.12", udp, silent());
    let mut r = resolver(&[&server], 150, 1);
    let f = r.lookup_ip("host.example").unwrap_err();
    assert!(!f.permanent);
    assert_eq!(r.stats().mismatched, 2);
    assert_eq!(r.stats().answers, 0);
}

#[test]
fn garbage_is_counted_and_dropped() {
    let udp = script(|q| {
        let mut cut = bytes(&good(q));
        cut.truncate(cut.len() - 3);
        let mut header_only = q[..2].to_vec();
        header_only
            .extend_from_slice(&[0x81, 0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        vec![
            (NOW, vec![]),
            (NOW, vec![0xde, 0xad]),
            (NOW, cut),
            (NOW, header_only),
            (Duration::from_millis(30), bytes(&good(q))),
        ]
    });
    let server = FakeServer::start("127.0.10.13", udp, silent());
    let mut r = resolver(&[&server], 2_000, 1);
    assert_eq!(r.lookup_ip("host.example").unwrap(), v4());
    assert_eq!(r.stats().malformed, 8, "{:?}", r.stats());
}

#[test]
fn servfail_is_temporary_without_waiting() {
    let udp = script(|q| {
        let mut m = good(q);
        m.answers.clear();
        m.metadata.response_code = ResponseCode::ServFail;
        vec![(NOW, bytes(&m))]
    });
    let server = FakeServer::start("127.0.10.14", udp, silent());
    let mut r = resolver(&[&server], 5_000, 2);
    let start = Instant::now();
    let f = r.lookup_mx("example.test").unwrap_err();
    assert_eq!(
        (f.reason, f.permanent),
        (Reason::NetworkError, false),
        "{f}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(r.stats().server_errors, 2);
}

#[test]
fn late_answers_are_ignored_and_the_next_server_answers() {
    let late = script(|q| vec![(Duration::from_millis(400), bytes(&good(q)))]);
    let slow = FakeServer::start("127.0.10.15", late, silent());
    let fast_count = Arc::new(AtomicUsize::new(0));
    let c = fast_count.clone();
    let fast = FakeServer::start(
        "127.0.10.16",
        script(move |q| {
            c.fetch_add(1, Ordering::Relaxed);
            vec![(NOW, bytes(&good(q)))]
        }),
        silent(),
    );
    let mut r = resolver(&[&slow, &fast], 150, 1);
    assert_eq!(r.lookup_ip("host.example").unwrap(), v4());
    assert_eq!(r.stats().timeouts, 2);
    assert_eq!(fast_count.load(Ordering::Relaxed), 2);

    // Alone, the late server never counts: its answers reach closed sockets.
    let mut alone = resolver(&[&slow], 150, 2);
    assert!(alone.lookup_ip("other.example").is_err());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(alone.stats().answers, 0);
}

#[test]
fn truncated_udp_answer_is_asked_again_over_tcp_split_in_pieces() {
    let udp = script(|q| {
        let mut m = good(q);
        m.answers.clear();
        m.metadata.truncation = true;
        vec![(NOW, bytes(&m))]
    });
    let tcp = script(|q| {
        let f = framed(&good(q));
        f.chunks(3)
            .map(|c| (Duration::from_millis(2), c.to_vec()))
            .collect()
    });
    let server = FakeServer::start("127.0.10.17", udp, tcp);
    let mut r = resolver(&[&server], 2_000, 1);
    assert_eq!(r.lookup_ip("host.example").unwrap(), v4());
    let s = r.stats();
    assert_eq!((s.truncated, s.tcp_queries), (2, 2), "{s:?}");
}

#[test]
fn tcp_garbage_or_early_close_fails_the_try() {
    let udp = script(|q| {
        let mut m = good(q);
        m.metadata.truncation = true;
        vec![(NOW, bytes(&m))]
    });
    let tcp = script(|q| {
        let mut f = framed(&good(q));
        // A length that promises more than is sent, then the connection closes.
        f.truncate(f.len() / 2);
        vec![(NOW, f)]
    });
    let server = FakeServer::start("127.0.10.18", udp, tcp);
    let mut r = resolver(&[&server], 2_000, 1);
    let start = Instant::now();
    let f = r.lookup_ip("host.example").unwrap_err();
    assert!(!f.permanent, "{f}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "EOF ends the try early"
    );
    assert_eq!(r.stats().io_errors, 2);

    let tcp_garbage = script(|_| vec![(NOW, vec![0, 4, 1, 2, 3, 4])]);
    let udp = script(|q| {
        let mut m = good(q);
        m.metadata.truncation = true;
        vec![(NOW, bytes(&m))]
    });
    let server = FakeServer::start("127.0.10.19", udp, tcp_garbage);
    let mut r = resolver(&[&server], 2_000, 1);
    assert!(r.lookup_ip("host.example").is_err());
    assert_eq!(r.stats().malformed, 2);
}
