//! Transactions in flight (`delivery.transactions_in_flight`) end to end: the engine against the
//! test world's SMTP sink (it offers PIPELINING and CHUNKING; Postfix's `smtp-sink` on this system
//! offers no CHUNKING) on 127.0.50.121, MX records from a real dnsmasq on 127.0.50.120.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vmta::engine::config::Durability;
use vmta::engine::{DeliveryEvent, Engine, EventKind, Submission};
use vmta_tests::TempDir;
use vmta_tests::engine::{Zone, common_port, test_engine};
use vmta_testworld::sink::Sink;

#[test]
fn messages_behind_each_other_are_each_delivered_or_bounced_once() {
    let ip = "127.0.50.121";
    let port = common_port(&[ip]);
    let zone = Zone::start(
        "127.0.50.120",
        &[
            "mx-host=pipe.engine.test,mx.pipe.engine.test,10".into(),
            format!("host-record=mx.pipe.engine.test,{ip}"),
        ],
    );
    let sink = Sink::start(SocketAddr::new(ip.parse().unwrap(), port)).unwrap();
    let spool = TempDir::new("engine-pipelining");
    let config = test_engine(&spool, zone.addr, port)
        .durability(Durability::Sync)
        // One connection, so the queue builds up behind it and messages go out behind each other.
        .max_connections_per_host(1)
        .transactions_in_flight(4)
        .with(|c| {
            c.delivery.connect_timeout_s = 5;
            c.delivery.idle_timeout_s = 1;
        })
        .build();
    let e = Engine::start(&config).unwrap();
    // Every fifth recipient is unknown to the sink (550 5.1.1 at RCPT): its transaction has no
    // valid recipient, and the next one behind it starts with RSET.
    let total = 400;
    let rcpt = |n: usize| {
        if n.is_multiple_of(5) {
            format!("unknown{n}@pipe.engine.test")
        } else {
            format!("u{n}@pipe.engine.test")
        }
    };
    let submissions: Vec<Submission> = (0..total)
        .map(|n| Submission {
            sender: "bounces@sender.test".into(),
            recipients: vec![rcpt(n)],
            tenant: "t".into(),
            body: format!("From: a@sender.test\r\nTo: x@y\r\nSubject: {n}\r\n\r\nbody {n}\r\n")
                .into_bytes(),
            ..Submission::default()
        })
        .collect();
    for r in e.submit_batch(&submissions) {
        r.expect("submission accepted");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events: Vec<DeliveryEvent> = Vec::new();
    let finals = |ev: &[DeliveryEvent]| {
        ev.iter()
            .filter(|e| matches!(e.kind, EventKind::Delivered | EventKind::Bounced))
            .count()
    };
    while Instant::now() < deadline && finals(&events) < total {
        e.wait(Duration::from_millis(100));
        e.poll_events(&mut events, 10_000);
    }
    // Each recipient has exactly one outcome, the one its address calls for, at the first attempt.
    let mut by_rcpt: HashMap<&str, Vec<&DeliveryEvent>> = HashMap::new();
    for ev in &events {
        by_rcpt.entry(ev.recipient.as_str()).or_default().push(ev);
    }
    for n in 0..total {
        let r = rcpt(n);
        let evs = by_rcpt.get(r.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(evs.len(), 1, "{r}: {evs:#?}");
        let ev = evs[0];
        assert_eq!(ev.attempts, 1, "{r}: {ev:#?}");
        if n.is_multiple_of(5) {
            assert_eq!(ev.kind, EventKind::Bounced, "{r}: {ev:#?}");
            assert_eq!(ev.code, 550);
            assert_eq!(ev.reason, "userunknown");
        } else {
            assert_eq!(ev.kind, EventKind::Delivered, "{r}: {ev:#?}");
            assert_eq!(ev.code, 250);
        }
    }
    let c = sink.counters();
    assert_eq!(c.messages.load(Ordering::Relaxed), total as u64 * 4 / 5);
    assert_eq!(c.refused.load(Ordering::Relaxed), total as u64 / 5);
    // The messages did go out behind each other (the receiving side saw several transactions in
    // one read), over at most one connection per shard.
    let per_read = c.max_transactions_per_read.load(Ordering::Relaxed);
    assert!(per_read > 1, "at most {per_read} transaction per read");
    assert!(
        per_read <= 4,
        "{per_read} transactions in one read, 4 allowed"
    );
    assert!(c.connections.load(Ordering::Relaxed) <= 2);
    let m = e.metrics().total();
    assert_eq!(m.queued, 0);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_receiver_that_drops_pipelined_transactions_gets_one_at_a_time_from_then_on() {
    // The sink on 127.0.50.123 closes a connection, its replies unsent, as soon as one read holds a
    // transaction sent behind another's end of data. The engine runs at its default window (grows
    // from 1 with each accepted message): the first connection drops once the window opens, its
    // transactions in flight are deferred and retried, and the shard then sends one transaction at
    // a time to that address, so no later connection drops.
    let ip = "127.0.50.123";
    let port = common_port(&[ip]);
    let zone = Zone::start(
        "127.0.50.122",
        &[
            "mx-host=fragile.engine.test,mx.fragile.engine.test,10".into(),
            format!("host-record=mx.fragile.engine.test,{ip}"),
        ],
    );
    let sink = Sink::start_with(
        SocketAddr::new(ip.parse().unwrap(), port),
        vmta_testworld::sink::Behaviour {
            drop_pipelined: true,
            ..Default::default()
        },
    )
    .unwrap();
    let spool = TempDir::new("engine-pipelining-drop");
    let config = test_engine(&spool, zone.addr, port)
        .durability(Durability::Sync)
        .max_connections_per_host(1)
        .with(|c| {
            c.delivery.connect_timeout_s = 5;
            c.delivery.idle_timeout_s = 1;
            c.retry.policy = vmta::engine::config::RetryKind::Exponential;
            c.retry.first_s = 1;
            c.retry.max_s = 2;
            c.retry.jitter = 0.0;
        })
        .build();
    assert!(
        config.delivery.transactions_in_flight > 1,
        "the default pipelines"
    );
    let e = Engine::start(&config).unwrap();
    let total = 200;
    let submissions: Vec<Submission> = (0..total)
        .map(|n| Submission {
            sender: "bounces@sender.test".into(),
            recipients: vec![format!("u{n}@fragile.engine.test")],
            tenant: "t".into(),
            body: format!("From: a@sender.test\r\nTo: x@y\r\nSubject: {n}\r\n\r\nbody {n}\r\n")
                .into_bytes(),
            ..Submission::default()
        })
        .collect();
    for r in e.submit_batch(&submissions) {
        r.expect("submission accepted");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events: Vec<DeliveryEvent> = Vec::new();
    let delivered =
        |ev: &[DeliveryEvent]| ev.iter().filter(|e| e.kind == EventKind::Delivered).count();
    while Instant::now() < deadline && delivered(&events) < total {
        e.wait(Duration::from_millis(100));
        e.poll_events(&mut events, 10_000);
    }
    let mut finals: HashMap<&str, usize> = HashMap::new();
    for ev in &events {
        assert!(
            matches!(ev.kind, EventKind::Delivered | EventKind::Deferred),
            "{ev:#?}"
        );
        if ev.kind == EventKind::Delivered {
            *finals.entry(ev.recipient.as_str()).or_default() += 1;
        }
    }
    assert_eq!(finals.len(), total, "every recipient delivered");
    assert!(finals.values().all(|&n| n == 1), "delivered once each");
    // The drop cut short the transactions in flight: they were deferred and went through later.
    let deferred = events
        .iter()
        .filter(|e| e.kind == EventKind::Deferred)
        .count();
    assert!(
        (1..=8).contains(&deferred),
        "{deferred} deferrals for one dropped connection"
    );
    // One drop: after it, the shard sent one transaction at a time to that address (without the
    // fall-back each new connection would open its window and be dropped again).
    let c = sink.counters();
    assert_eq!(c.dropped_connections.load(Ordering::Relaxed), 1);
    assert!(c.connections.load(Ordering::Relaxed) >= 2);
    e.shutdown(Duration::from_secs(5));
}
