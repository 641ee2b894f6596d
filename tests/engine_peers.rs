//! The engine end to end against real peers on loopback (127.0.50.0/24): MX records from a real
//! dnsmasq, Postfix `smtp-sink` processes as MX hosts.

use std::collections::HashMap;
use std::time::{Duration, Instant};
use vmta::engine::config::{Durability, TlsPolicy};
use vmta::engine::{DeliveryEvent, Engine, EngineConfig, EventKind, Submission};
use vmta_tests::TempDir;
use vmta_tests::engine::{Zone, common_port, sink_at, test_engine};

fn body(n: usize) -> Vec<u8> {
    format!("From: a@sender.test\r\nTo: x@y\r\nSubject: engine {n}\r\n\r\nbody {n}\r\n")
        .into_bytes()
}

fn config(spool: &TempDir, dns: std::net::SocketAddr, port: u16) -> EngineConfig {
    test_engine(spool, dns, port)
        .durability(Durability::Sync)
        .max_connections_per_host(4)
        .with(|c| {
            // Tests that wait for retries use short exponential intervals; the bounce test uses the
            // classified schedule.
            c.retry.policy = vmta::engine::config::RetryKind::Exponential;
            c.delivery.connect_timeout_s = 5;
            c.delivery.idle_timeout_s = 1;
            c.delivery.host_down_s = 30;
            c.dns.timeout_ms = 500;
        })
        .build()
}

fn submit(e: &Engine, to: &str, n: usize) -> u64 {
    e.submit(&Submission {
        sender: "bounces@sender.test".into(),
        recipients: vec![to.into()],
        tenant: "t".into(),
        body: body(n),
        ..Submission::default()
    })
    .expect("submission accepted")
}

/// Collects events until `done` says so or the time runs out.
fn collect(
    e: &Engine,
    limit: Duration,
    mut done: impl FnMut(&[DeliveryEvent]) -> bool,
) -> Vec<DeliveryEvent> {
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    while Instant::now() < deadline {
        e.wait(Duration::from_millis(100));
        e.poll_events(&mut all, 10_000);
        if done(&all) {
            break;
        }
    }
    all
}

fn count(events: &[DeliveryEvent], kind: EventKind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

#[test]
fn delivers_through_mx_records_with_preference_and_reuses_connections() {
    let ips = ["127.0.50.2", "127.0.50.3", "127.0.50.4", "127.0.50.5"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.1",
        &[
            "mx-host=alpha.engine.test,mx1.alpha.engine.test,10".into(),
            "mx-host=alpha.engine.test,mx2.alpha.engine.test,20".into(),
            "host-record=mx1.alpha.engine.test,127.0.50.2".into(),
            "host-record=mx2.alpha.engine.test,127.0.50.3".into(),
            "mx-host=beta.engine.test,mx.beta.engine.test,10".into(),
            "host-record=mx.beta.engine.test,127.0.50.4".into(),
            // No MX: the domain's own address is the implicit MX (RFC 5321 5.1).
            "host-record=gamma.engine.test,127.0.50.5".into(),
        ],
    );
    let s1 = sink_at(ips[0], port, &[]);
    let s2 = sink_at(ips[1], port, &[]);
    let s3 = sink_at(ips[2], port, &[]);
    let s4 = sink_at(ips[3], port, &[]);
    let spool = TempDir::new("engine-mx");
    let e = Engine::start(&config(&spool, zone.addr, port)).unwrap();
    let per = 40;
    for n in 0..per {
        submit(&e, &format!("u{n}@alpha.engine.test"), n);
        submit(&e, &format!("u{n}@beta.engine.test"), n);
        submit(&e, &format!("u{n}@gamma.engine.test"), n);
    }
    let events = collect(&e, Duration::from_secs(30), |ev| {
        count(ev, EventKind::Delivered) >= 3 * per
    });
    assert_eq!(count(&events, EventKind::Delivered), 3 * per, "{events:#?}");
    // Each shard's segments have the configured size (2 MiB, pre-allocated).
    for shard in ["shard-0", "shard-1"] {
        let segments: Vec<u64> = std::fs::read_dir(spool.path().join(shard))
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .collect();
        assert!(!segments.is_empty(), "{shard} has no segment");
        assert!(
            segments.iter().all(|&len| len == 2 << 20),
            "{shard}: {segments:?}"
        );
    }
    // The preferred MX took alpha's mail; the backup none.
    assert_eq!(s1.received(), per);
    assert_eq!(s2.received(), 0);
    assert_eq!(s3.received(), per);
    assert_eq!(s4.received(), per);
    let alpha = events
        .iter()
        .find(|e| e.recipient.ends_with("@alpha.engine.test"))
        .unwrap();
    assert_eq!(alpha.mx, "mx1.alpha.engine.test");
    assert_eq!(alpha.ip, Some("127.0.50.2".parse().unwrap()));
    assert_eq!(alpha.code, 250);
    assert_eq!(alpha.attempts, 1);
    let m = e.metrics().total();
    assert_eq!(m.delivered, 3 * per as u64);
    assert_eq!(m.queued, 0);
    // Connections are reused: at most the per-host cap for each of the three hosts, far fewer than
    // the 120 messages.
    assert!(
        m.connections_opened <= 3 * 4,
        "{} connections opened",
        m.connections_opened
    );
    assert!(
        e.metrics()
            .prometheus()
            .contains("vmta_delivered_total{shard=\"0\"}")
    );
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn fails_over_to_the_backup_mx_when_the_primary_refuses_connections() {
    let ips = ["127.0.50.10", "127.0.50.11"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.9",
        &[
            "mx-host=delta.engine.test,mx1.delta.engine.test,10".into(),
            "mx-host=delta.engine.test,mx2.delta.engine.test,20".into(),
            "host-record=mx1.delta.engine.test,127.0.50.10".into(),
            "host-record=mx2.delta.engine.test,127.0.50.11".into(),
        ],
    );
    // Nothing listens on the primary.
    let backup = sink_at(ips[1], port, &[]);
    let spool = TempDir::new("engine-failover");
    let e = Engine::start(&config(&spool, zone.addr, port)).unwrap();
    for n in 0..10 {
        submit(&e, &format!("u{n}@delta.engine.test"), n);
    }
    let events = collect(&e, Duration::from_secs(30), |ev| {
        count(ev, EventKind::Delivered) >= 10
    });
    assert_eq!(count(&events, EventKind::Delivered), 10, "{events:#?}");
    assert_eq!(count(&events, EventKind::Deferred), 0);
    assert!(events.iter().all(|e| e.mx == "mx2.delta.engine.test"));
    assert_eq!(backup.received(), 10);
    assert!(e.metrics().total().connection_failures >= 1);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn bounces_5xx_without_retry_and_dns_failures_by_kind() {
    let ips = ["127.0.50.20"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.19",
        &[
            "mx-host=hard.engine.test,mx.hard.engine.test,10".into(),
            "host-record=mx.hard.engine.test,127.0.50.20".into(),
            // RFC 7505 null MX.
            "mx-host=nullmx.engine.test,.,0".into(),
        ],
    );
    let _sink = sink_at(
        ips[0],
        port,
        &["-f", "RCPT", "-B", "550 5.1.1 No such user"],
    );
    let spool = TempDir::new("engine-bounce");
    let mut cfg = config(&spool, zone.addr, port);
    // The default schedule: per reason, from the bounce classifier.
    cfg.retry.policy = vmta::engine::config::RetryKind::Classified;
    let e = Engine::start(&cfg).unwrap();
    submit(&e, "nobody@hard.engine.test", 0);
    submit(&e, "x@nullmx.engine.test", 1);
    submit(&e, "x@nxdomain.engine.test", 2);
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Bounced) >= 3
    });
    let by_rcpt: HashMap<&str, &DeliveryEvent> =
        events.iter().map(|e| (e.recipient.as_str(), e)).collect();
    let hard = by_rcpt["nobody@hard.engine.test"];
    assert_eq!(hard.kind, EventKind::Bounced);
    assert_eq!(hard.code, 550);
    assert_eq!(
        hard.enhanced.map(|c| c.to_string()).as_deref(),
        Some("5.1.1")
    );
    assert_eq!(hard.attempts, 1);
    assert_eq!(hard.reason, "userunknown");
    let null = by_rcpt["x@nullmx.engine.test"];
    assert_eq!(null.kind, EventKind::Bounced);
    assert!(null.text.contains("notaccept"), "{}", null.text);
    assert_eq!(null.reason, "notaccept");
    let nx = by_rcpt["x@nxdomain.engine.test"];
    assert_eq!(nx.kind, EventKind::Bounced);
    assert!(nx.text.contains("hostunknown"), "{}", nx.text);
    assert_eq!(nx.reason, "hostunknown");
    // Nothing more happens to them.
    let more = collect(&e, Duration::from_millis(1500), |_| false);
    assert!(more.is_empty(), "{more:#?}");
    assert_eq!(e.metrics().total().queued, 0);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn retries_a_4xx_then_delivers() {
    let ips = ["127.0.50.30"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.29",
        &[
            "mx-host=grey.engine.test,mx.grey.engine.test,10".into(),
            "host-record=mx.grey.engine.test,127.0.50.30".into(),
        ],
    );
    let spool = TempDir::new("engine-retry");
    let cfg = {
        let mut c = config(&spool, zone.addr, port);
        c.retry.first_s = 1;
        c.retry.max_s = 2;
        c.retry.jitter = 0.0;
        c
    };
    let e = Engine::start(&cfg).unwrap();
    let greylist = sink_at(ips[0], port, &["-r", "RCPT"]);
    let id = submit(&e, "user@grey.engine.test", 0);
    let first = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Deferred) >= 1
    });
    let deferred = first
        .iter()
        .find(|e| e.kind == EventKind::Deferred)
        .expect("a deferral");
    assert_eq!(deferred.message_id, id);
    assert_eq!(deferred.code, 450);
    assert!(deferred.next_attempt > 0);
    drop(greylist);
    let sink = sink_at(ips[0], port, &[]);
    let later = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered) >= 1
    });
    let delivered = later
        .iter()
        .find(|e| e.kind == EventKind::Delivered)
        .expect("delivered");
    assert_eq!(delivered.message_id, id);
    assert!(delivered.attempts >= 2);
    assert_eq!(sink.received(), 1);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_restart_mid_queue_delivers_the_rest_once() {
    let ips = ["127.0.50.40"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.39",
        &[
            "mx-host=later.engine.test,mx.later.engine.test,10".into(),
            "host-record=mx.later.engine.test,127.0.50.40".into(),
        ],
    );
    let spool = TempDir::new("engine-restart");
    let cfg = {
        let mut c = config(&spool, zone.addr, port);
        c.retry.first_s = 1;
        c.retry.max_s = 1;
        c.retry.jitter = 0.0;
        c.delivery.host_down_s = 1;
        c
    };
    // The MX is down: everything is deferred and stays in the spool.
    let e = Engine::start(&cfg).unwrap();
    let n = 25;
    for i in 0..n {
        submit(&e, &format!("u{i}@later.engine.test"), i);
    }
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Deferred) >= n
    });
    assert!(count(&events, EventKind::Deferred) >= n);
    assert_eq!(count(&events, EventKind::Delivered), 0);
    e.shutdown(Duration::from_secs(2));
    drop(e);
    // The MX comes up; a new engine on the same spool delivers each message exactly once.
    let sink = sink_at(ips[0], port, &[]);
    let e = Engine::start(&cfg).unwrap();
    let events = collect(&e, Duration::from_secs(30), |ev| {
        count(ev, EventKind::Delivered) >= n
    });
    assert_eq!(count(&events, EventKind::Delivered), n, "{events:#?}");
    let more = collect(&e, Duration::from_secs(3), |_| false);
    assert_eq!(count(&more, EventKind::Delivered), 0);
    assert_eq!(sink.received(), n);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn recovered_backlog_is_in_the_metrics_from_the_first_call() {
    // The MX never answers: everything submitted stays in the spool, deferred.
    let zone = Zone::start(
        "127.0.50.51",
        &[
            "mx-host=backlog.engine.test,mx.backlog.engine.test,10".into(),
            "host-record=mx.backlog.engine.test,127.0.50.52".into(),
        ],
    );
    let spool = TempDir::new("engine-backlog");
    let cfg = config(&spool, zone.addr, common_port(&["127.0.50.52"]));
    let e = Engine::start(&cfg).unwrap();
    e.pause();
    let n = 3000;
    let batch: Vec<Submission> = (0..n)
        .map(|i| Submission {
            sender: "a@x.test".into(),
            recipients: vec![format!("u{i}@backlog.engine.test")],
            body: body(i),
            ..Default::default()
        })
        .collect();
    for chunk in batch.chunks(100) {
        for r in e.submit_batch(chunk) {
            r.unwrap();
        }
    }
    assert_eq!(e.metrics().total().queued, n as u64);
    e.shutdown(Duration::from_secs(2));
    drop(e);
    // Reopened: the backlog is counted before `start` returns, not once the shards get to it, and
    // the first event says what recovery found, with the same counts as `Engine::recovery`.
    let e = Engine::start(&cfg).unwrap();
    assert_eq!(e.metrics().total().queued, n as u64);
    let mut events = Vec::new();
    e.poll_events(&mut events, 1);
    let r = events.first().expect("a recovered event at once");
    assert_eq!(r.kind, EventKind::Recovered, "{r:?}");
    assert_eq!(r.message_id, 0);
    let tag = |k: &str| r.tags.iter().find(|(t, _)| t == k).map(|(_, v)| v.clone());
    assert_eq!(tag("messages"), Some(n.to_string()));
    assert_eq!(tag("recipients"), Some(n.to_string()));
    assert_eq!(tag("records"), Some(e.recovery().records.to_string()));
    assert_eq!(tag("corrupt_records").as_deref(), Some("0"));
    assert!(
        r.text.starts_with(&format!("recovered {n} messages")),
        "{}",
        r.text
    );
    assert!(r.to_json().contains("\"event\":\"recovered\""));
    e.shutdown(Duration::from_secs(2));
}

#[test]
fn refuses_bad_submissions_with_named_errors() {
    let spool = TempDir::new("engine-refuse");
    let cfg = config(&spool, "127.0.50.49:53".parse().unwrap(), 2525);
    let e = Engine::start(&cfg).unwrap();
    let mut s = Submission {
        sender: "a@x.test".into(),
        recipients: vec![],
        body: body(0),
        ..Submission::default()
    };
    assert!(matches!(
        e.submit(&s),
        Err(vmta::engine::SubmitError::Invalid(_))
    ));
    s.recipients = vec!["no-at-sign".into()];
    assert!(matches!(
        e.submit(&s),
        Err(vmta::engine::SubmitError::Invalid(_))
    ));
    s.recipients = vec!["a b@x.test".into()];
    assert!(matches!(
        e.submit(&s),
        Err(vmta::engine::SubmitError::Invalid(_))
    ));
    s.recipients = vec!["ok@x.test".into()];
    s.body.clear();
    assert!(matches!(
        e.submit(&s),
        Err(vmta::engine::SubmitError::Invalid(_))
    ));
    e.shutdown(Duration::from_secs(1));
    s.body = body(1);
    assert_eq!(e.submit(&s), Err(vmta::engine::SubmitError::ShuttingDown));
    // A second engine on a spool in use is refused: its suppression log, opened first, is locked
    // (with the suppression list off, the spool's lock refuses it).
    let e1 = Engine::start(&cfg).unwrap();
    let e2 = Engine::start(&cfg);
    let text = format!("{e2:?}");
    assert!(
        matches!(e2, Err(vmta::engine::EngineError::Config(ref c)) if c.key == "suppression.path")
            && text.contains(&format!("in use by process {}", std::process::id())),
        "{text}"
    );
    let mut unlisted = cfg.clone();
    unlisted.suppression.enabled = false;
    let e3 = Engine::start(&unlisted);
    assert!(
        matches!(e3, Err(vmta::engine::EngineError::Spool { .. })),
        "{e3:?}"
    );
    drop(e1);
}

#[test]
fn a_full_ring_is_busy_for_the_submitter_and_nothing_stalls() {
    let spool = TempDir::new("engine-busy");
    let mut cfg = config(&spool, "127.0.50.59:53".parse().unwrap(), 2525);
    cfg.engine.submission_queue = 2;
    let e = Engine::start(&cfg).unwrap();
    let batch: Vec<Submission> = (0..300)
        .map(|n| Submission {
            sender: "a@x.test".into(),
            // Two domains: parts land on both shards.
            recipients: vec![
                format!("u{n}@one.engine.test"),
                format!("u{n}@two.engine.test"),
            ],
            body: body(n),
            ..Submission::default()
        })
        .collect();
    let started = Instant::now();
    let results = e.submit_batch(&batch);
    assert!(started.elapsed() < Duration::from_secs(20));
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(vmta::engine::SubmitError::Busy)))
        .count();
    assert_eq!(ok + busy, 300, "{results:?}");
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    // Only accepted submissions stay queued (two recipients each); a part written before its sibling
    // was refused is cancelled.
    let t = e.metrics().total();
    assert_eq!(t.submitted - t.cancelled, 2 * ok as u64);
    e.shutdown(Duration::from_secs(1));
}

#[test]
fn relays_through_a_smarthost_from_the_configured_source_and_logs_json_events() {
    let port = common_port(&["127.0.50.70"]);
    let relay = sink_at("127.0.50.70", port, &[]);
    let spool = TempDir::new("engine-smarthost");
    let log = spool.path().join("events.jsonl");
    // No DNS is needed: every domain goes to the smarthost.
    let mut cfg = config(&spool, "127.0.50.69:53".parse().unwrap(), port);
    cfg.smarthost = Some(vmta::engine::config::SmarthostConfig {
        address: format!("127.0.50.70:{port}"),
        domains: vec![],
        username: String::new(),
        password: String::new(),
        tls: TlsPolicy::Disabled,
        allow_plaintext_auth: false,
    });
    cfg.sources = vec![vmta::engine::config::SourceConfig {
        name: "mta7".into(),
        ip: "127.0.50.71".into(),
        ehlo: "mta7.sender.test".into(),
    }];
    cfg.engine.event_log = log.clone();
    let e = Engine::start(&cfg).unwrap();
    for n in 0..5 {
        submit(&e, &format!("u{n}@anywhere.example"), n);
    }
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered) >= 5
    });
    assert_eq!(count(&events, EventKind::Delivered), 5, "{events:#?}");
    assert!(
        events
            .iter()
            .all(|e| e.source == "mta7" && e.ip == Some("127.0.50.70".parse().unwrap()))
    );
    e.shutdown(Duration::from_secs(5));
    // The relay saw the configured source address and EHLO name.
    let messages = relay.messages();
    assert_eq!(messages.len(), 5);
    for m in &messages {
        assert!(m.contains("X-Client-Addr: 127.0.50.71"), "{m}");
        assert!(m.contains("X-Helo-Args: mta7.sender.test"), "{m}");
    }
    // One JSON object per event in the log.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    for l in lines {
        assert!(l.starts_with("{\"event\":\"delivered\""), "{l}");
        assert!(l.contains("\"source\":\"mta7\""), "{l}");
    }
}

#[test]
fn transactional_mail_goes_ahead_of_a_bulk_backlog() {
    let ips = ["127.0.50.81"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.80",
        &[
            "mx-host=prio.engine.test,mx.prio.engine.test,10".into(),
            "host-record=mx.prio.engine.test,127.0.50.81".into(),
        ],
    );
    let spool = TempDir::new("engine-priority");
    let mut cfg = config(&spool, zone.addr, port);
    // One connection, and the MX is down at first so everything queues up.
    cfg.delivery.max_connections_per_host = 1;
    cfg.delivery.host_down_s = 1;
    cfg.retry.first_s = 2;
    cfg.retry.jitter = 0.0;
    let e = Engine::start(&cfg).unwrap();
    let mut batch: Vec<Submission> = (0..60)
        .map(|n| Submission {
            sender: "news@sender.test".into(),
            recipients: vec![format!("bulk{n}@prio.engine.test")],
            priority: vmta::spool::Priority::Bulk,
            body: body(n),
            ..Submission::default()
        })
        .collect();
    batch.push(Submission {
        sender: "auth@sender.test".into(),
        recipients: vec!["reset@prio.engine.test".into()],
        priority: vmta::spool::Priority::Transactional,
        body: body(999),
        ..Submission::default()
    });
    assert!(e.submit_batch(&batch).iter().all(|r| r.is_ok()));
    let _ = collect(&e, Duration::from_secs(10), |ev| {
        count(ev, EventKind::Deferred) >= 61
    });
    let _sink = sink_at(ips[0], port, &[]);
    let events = collect(&e, Duration::from_secs(30), |ev| {
        count(ev, EventKind::Delivered) >= 61
    });
    let delivered: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == EventKind::Delivered)
        .map(|e| e.recipient.as_str())
        .collect();
    assert_eq!(delivered.len(), 61);
    let pos = delivered
        .iter()
        .position(|r| *r == "reset@prio.engine.test")
        .unwrap();
    assert!(pos < 5, "the password reset went out in position {pos}");
    e.shutdown(Duration::from_secs(5));
}

fn tenant_config(spool: &TempDir, dns: std::net::SocketAddr, port: u16) -> EngineConfig {
    let key = vmta_tests::data_dir().join("policy/ed25519.pem");
    let mut cfg = config(spool, dns, port);
    let policy = vmta::policy::PolicyConfig::from_toml(&format!(
        "[[tenant]]\nname = \"acme\"\npool = \"default\"\nsender_domains = [\"acme.engine.test\"]\n\
         [[tenant.dkim]]\ndomain = \"acme.engine.test\"\nselector = \"ed\"\nkey_file = \"{}\"\n\
         [tenant.unsubscribe]\nurl = \"https://u.acme.engine.test/{{token}}\"\none_click = true\nsecret = \"s\"\n",
        key.display()
    ))
    .unwrap();
    cfg.tenants = policy.tenants;
    cfg
}

fn acme(to: &str, from: &str, n: usize) -> Submission {
    Submission {
        sender: "bounces@acme.engine.test".into(),
        recipients: vec![to.into()],
        tenant: "acme".into(),
        body: format!(
            "From: Acme <{from}>\r\nTo: <{to}>\r\nSubject: policy {n}\r\n\r\nhello {n}\r\n"
        )
        .into_bytes(),
        client_host: "app1.acme.engine.test".into(),
        client_ip: Some("192.0.2.7".parse().unwrap()),
        ..Submission::default()
    }
}

#[test]
fn tenants_are_enforced_and_messages_leave_dkim_signed() {
    let ips = ["127.0.50.91"];
    let port = common_port(&ips);
    let key = vmta_tests::policy::key("ed25519.pem");
    let zone = Zone::start(
        "127.0.50.90",
        &[
            "mx-host=dest.engine.test,mx.dest.engine.test,10".into(),
            "host-record=mx.dest.engine.test,127.0.50.91".into(),
            vmta_tests::policy::txt_record(
                "ed._domainkey.acme.engine.test",
                &key.public_key_record(),
            ),
        ],
    );
    let sink = sink_at(ips[0], port, &[]);
    let spool = TempDir::new("engine-tenants");
    let e = Engine::start(&tenant_config(&spool, zone.addr, port)).unwrap();
    use vmta::engine::SubmitError;
    // Refusals, each named.
    let mut s = acme("a@dest.engine.test", "news@acme.engine.test", 0);
    s.tenant = "nobody".into();
    assert!(matches!(e.submit(&s), Err(SubmitError::UnknownTenant(_))));
    let s = acme("a@dest.engine.test", "ceo@elsewhere.test", 0);
    assert!(
        matches!(e.submit(&s), Err(SubmitError::SenderNotApproved(_))),
        "{:?}",
        e.submit(&s)
    );
    let mut s = acme("a@dest.engine.test", "news@acme.engine.test", 0);
    s.body = format!(
        "From: <news@acme.engine.test>\r\nSubject: x\r\n\r\n{}\r\n",
        "y".repeat(1200)
    )
    .into_bytes();
    match e.submit(&s) {
        Err(SubmitError::Invalid(why)) => assert!(why.contains("line 4"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Accepted messages are signed, get Date, Message-ID, Received and one-click unsubscribe.
    for n in 0..3 {
        e.submit(&acme(
            &format!("u{n}@dest.engine.test"),
            "news@acme.engine.test",
            n,
        ))
        .unwrap();
    }
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered) >= 3
    });
    assert_eq!(count(&events, EventKind::Delivered), 3, "{events:#?}");
    let dumps = sink.messages();
    assert_eq!(dumps.len(), 3);
    let dir = TempDir::new("engine-dkim");
    let mut files = Vec::new();
    for (i, d) in dumps.iter().enumerate() {
        // Drop what smtp-sink adds on top (its X- lines and its own folded Received field).
        let sink_received = d.find("by smtp-sink").expect("smtp-sink's Received field");
        let mut start = sink_received + d[sink_received..].find('\n').unwrap() + 1;
        while d[start..].starts_with([' ', '\t']) {
            start += d[start..].find('\n').unwrap() + 1;
        }
        let message = d[start..].replace("\r\n", "\n").replace('\n', "\r\n");
        assert!(message.starts_with("DKIM-Signature:"), "{message}");
        assert!(
            message.contains("Received: from app1.acme.engine.test ([192.0.2.7])"),
            "{message}"
        );
        for field in [
            "DKIM-Signature: v=1; a=ed25519-sha256",
            "Message-ID: <",
            "Date: ",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ] {
            assert!(message.contains(field), "{field} missing in {message}");
        }
        let path = dir.path().join(format!("m{i}.eml"));
        std::fs::write(&path, message).unwrap();
        files.push(path);
    }
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, out) = vmta_tests::policy::dkimpy_verify(zone.addr, &refs);
    assert!(ok, "dkimpy: {out}");
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_locked_tenant_is_refused_and_its_queued_mail_held_until_unlocked() {
    let ips = ["127.0.50.96"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.95",
        &[
            "mx-host=dest.engine.test,mx.dest.engine.test,10".into(),
            "host-record=mx.dest.engine.test,127.0.50.96".into(),
        ],
    );
    let spool = TempDir::new("engine-locked");
    let mut cfg = tenant_config(&spool, zone.addr, port);
    cfg.retry.first_s = 1;
    cfg.retry.max_s = 1;
    cfg.retry.jitter = 0.0;
    cfg.delivery.host_down_s = 1;
    let e = Engine::start(&cfg).unwrap();
    // Queue mail while the MX is down, then lock the tenant.
    for n in 0..5 {
        e.submit(&acme(
            &format!("u{n}@dest.engine.test"),
            "news@acme.engine.test",
            n,
        ))
        .unwrap();
    }
    let _ = collect(&e, Duration::from_secs(10), |ev| {
        count(ev, EventKind::Deferred) >= 5
    });
    e.tenants().unwrap().lock("acme").unwrap();
    assert!(matches!(
        e.submit(&acme("x@dest.engine.test", "news@acme.engine.test", 9)),
        Err(vmta::engine::SubmitError::AccountLocked(_))
    ));
    let sink = sink_at(ips[0], port, &[]);
    // Held: nothing is sent, nothing is lost.
    let held = collect(&e, Duration::from_secs(4), |_| false);
    assert_eq!(count(&held, EventKind::Delivered), 0, "{held:#?}");
    assert_eq!(sink.received(), 0);
    assert_eq!(e.metrics().total().queued, 5);
    e.tenants().unwrap().unlock("acme").unwrap();
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered) >= 5
    });
    assert_eq!(count(&events, EventKind::Delivered), 5, "{events:#?}");
    assert_eq!(sink.received(), 5);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn the_per_host_connection_cap_holds_on_the_sink_side() {
    let ip = "127.0.50.101";
    let port = common_port(&[ip]);
    let zone = Zone::start(
        "127.0.50.100",
        &[
            "mx-host=cap.engine.test,mx.cap.engine.test,10".into(),
            "host-record=mx.cap.engine.test,127.0.50.101".into(),
        ],
    );
    let sink = sink_at(ip, port, &[]);
    let spool = TempDir::new("engine-cap");
    let mut cfg = config(&spool, zone.addr, port);
    cfg.delivery.max_connections_per_host = 3;
    let e = Engine::start(&cfg).unwrap();
    let batch: Vec<Submission> = (0..150)
        .map(|n| Submission {
            sender: "a@x.test".into(),
            recipients: vec![format!("u{n}@cap.engine.test")],
            body: body(n),
            ..Submission::default()
        })
        .collect();
    assert!(e.submit_batch(&batch).iter().all(|r| r.is_ok()));
    let server: std::net::SocketAddrV4 = format!("{ip}:{port}").parse().unwrap();
    let mut peak = 0;
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&events, EventKind::Delivered) < 150 && Instant::now() < deadline {
        peak = peak.max(vmta_tests::shaping::established_at(server));
        e.poll_events(&mut events, 10_000);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(count(&events, EventKind::Delivered), 150);
    assert_eq!(sink.received(), 150);
    assert!(peak >= 1, "the sampler saw no connection");
    assert!(peak <= 3, "{peak} connections at once at the sink");
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn cancelled_recipients_are_reported_with_the_message_id_tenant_and_tags() {
    let spool = TempDir::new("engine-cancel");
    // No DNS server answers: the recipients wait in the queue.
    let cfg = config(&spool, "127.0.50.109:53".parse().unwrap(), 2525);
    let e = Engine::start(&cfg).unwrap();
    let id = e
        .submit(&Submission {
            sender: "a@x.test".into(),
            recipients: vec!["one@c1.engine.test".into(), "two@c2.engine.test".into()],
            tenant: "acme".into(),
            tags: vec![("campaign".into(), "spring".into())],
            body: body(1),
            ..Submission::default()
        })
        .unwrap();
    assert_eq!(e.cancel(id), 2);
    let events = collect(&e, Duration::from_secs(5), |ev| {
        count(ev, EventKind::Cancelled) >= 2
    });
    let cancelled: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::Cancelled)
        .collect();
    assert_eq!(cancelled.len(), 2, "{events:#?}");
    for c in cancelled {
        assert_eq!(c.message_id, id);
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.tags, vec![("campaign".to_string(), "spring".to_string())]);
    }
    assert_eq!(e.cancel(id), 0, "a second cancel finds nothing");
    e.shutdown(Duration::from_secs(1));
}

#[test]
fn a_paused_engine_queues_without_sending_and_delivers_everything_on_resume() {
    let ips = ["127.0.50.111"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.110",
        &[
            "mx-host=pause.engine.test,mx.pause.engine.test,10".into(),
            "host-record=mx.pause.engine.test,127.0.50.111".into(),
        ],
    );
    let sink = sink_at(ips[0], port, &[]);
    let spool = TempDir::new("engine-pause");
    let e = Engine::start(&config(&spool, zone.addr, port)).unwrap();
    e.pause();
    let n = 30;
    for i in 0..n {
        submit(&e, &format!("u{i}@pause.engine.test"), i);
    }
    // Paused: accepted and spooled, nothing sent (the lookup itself may run).
    let early = collect(&e, Duration::from_millis(1500), |_| false);
    assert_eq!(count(&early, EventKind::Delivered), 0, "{early:#?}");
    assert_eq!(sink.received(), 0);
    assert_eq!(e.metrics().total().queued, n as u64);
    e.resume();
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered) >= n
    });
    assert_eq!(count(&events, EventKind::Delivered), n, "{events:#?}");
    assert_eq!(sink.received(), n);
    e.shutdown(Duration::from_secs(2));
}

#[test]
fn a_connection_cap_shared_by_two_shards_never_strands_a_queue() {
    // One MX host for two domains that live on different shards, with a shaping rule of one
    // connection and five messages per connection: each shard must get its turn when the other's
    // connection closes, and a connection that ends on QUIT (its id reused at once by the next)
    // must not fail the next one with its end of stream.
    let ips = ["127.0.50.113"];
    let port = common_port(&ips);
    let mut names = Vec::new();
    let mut i = 0;
    while names.len() < 2 {
        let d = format!("lane{i}.engine.test");
        if vmta::engine::shard_of(&d, 2) == names.len() {
            names.push(d);
        }
        i += 1;
    }
    let mut zone_lines = vec!["host-record=mx.lane.engine.test,127.0.50.113".to_string()];
    for d in &names {
        zone_lines.push(format!("mx-host={d},mx.lane.engine.test,10"));
    }
    let zone = Zone::start("127.0.50.112", &zone_lines);
    let sink = sink_at(ips[0], port, &[]);
    let spool = TempDir::new("engine-lane");
    let rules = format!(
        "{}[[mx]]\nname = \"one-connection\"\npatterns = [\"mx.lane.engine.test\"]\nmax_connections = 1\nmax_messages_per_connection = 5\n",
        vmta_testworld::world::UNSHAPED
    );
    let cfg = test_engine(&spool, zone.addr, port)
        .durability(Durability::None)
        .shaping_rules(&rules)
        .build();
    let e = Engine::start(&cfg).unwrap();
    let per = 30;
    for n in 0..per {
        for d in &names {
            submit(&e, &format!("u{n}@{d}"), n);
        }
    }
    let events = collect(&e, Duration::from_secs(30), |ev| {
        count(ev, EventKind::Delivered) >= 2 * per
    });
    assert_eq!(count(&events, EventKind::Delivered), 2 * per, "{events:#?}");
    assert_eq!(sink.received(), 2 * per);
    e.shutdown(Duration::from_secs(2));
}

#[test]
fn the_group_commit_window_never_holds_back_a_submission() {
    // A three-second window between state-only commits: each synchronous submission is still
    // committed and acknowledged at once, and the deliveries' events come out with a later commit.
    let ips = ["127.0.50.115"];
    let port = common_port(&ips);
    let zone = Zone::start(
        "127.0.50.114",
        &[
            "mx-host=window.engine.test,mx.window.engine.test,10".into(),
            "host-record=mx.window.engine.test,127.0.50.115".into(),
        ],
    );
    let sink = sink_at(ips[0], port, &[]);
    let spool = TempDir::new("engine-window");
    let mut cfg = config(&spool, zone.addr, port);
    cfg.engine.group_commit_window_us = 3_000_000;
    let e = Engine::start(&cfg).unwrap();
    let n = 12;
    let started = Instant::now();
    for i in 0..n {
        submit(&e, &format!("u{i}@window.engine.test"), i);
    }
    // Twelve acknowledgements held by the window would take over half a minute.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "submissions waited for the window: {:?}",
        started.elapsed()
    );
    let events = collect(&e, Duration::from_secs(30), |ev| {
        count(ev, EventKind::Delivered) >= n
    });
    assert_eq!(count(&events, EventKind::Delivered), n, "{events:#?}");
    assert_eq!(sink.received(), n);
    e.shutdown(Duration::from_secs(2));
    // Every delivery was committed before its event: reopened, the spool holds nothing live.
    let e = Engine::start(&cfg).unwrap();
    assert_eq!(e.metrics().total().queued, 0);
    e.shutdown(Duration::from_secs(1));
}
