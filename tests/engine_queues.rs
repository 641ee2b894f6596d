//! Operator views and actions on a running engine against real peers (127.0.52.0/24): the queue by
//! destination and tenant, one destination's state and why it waits, pausing and resuming a
//! destination or a tenant, and bouncing the queued mail of a destination, tenant or campaign.
//! Every domain goes to a smarthost: a Postfix `smtp-sink`, or a port nobody listens on.

use std::collections::HashSet;
use std::time::{Duration, Instant};
use vmta::engine::config::{Durability, SmarthostConfig, TlsPolicy};
use vmta::engine::queues::Selector;
use vmta::engine::{DeliveryEvent, Engine, EngineConfig, EventKind, Submission};
use vmta_tests::TempDir;
use vmta_tests::engine::{common_port, sink_at, test_engine};

fn config(spool: &TempDir, smarthost: &str) -> EngineConfig {
    let mut c = test_engine(spool, "127.0.52.1:53".parse().unwrap(), 2525)
        .durability(Durability::Sync)
        .with(|c| {
            c.retry.policy = vmta::engine::config::RetryKind::Exponential;
            c.delivery.connect_timeout_s = 2;
            c.delivery.idle_timeout_s = 1;
        })
        .build();
    c.smarthost = Some(SmarthostConfig {
        address: smarthost.into(),
        domains: vec![],
        username: String::new(),
        password: String::new(),
        tls: TlsPolicy::Disabled,
        allow_plaintext_auth: false,
    });
    c
}

fn submit(e: &Engine, to: &str, tenant: &str, campaign: &str) -> u64 {
    e.submit(&Submission {
        sender: "bounces@sender.test".into(),
        recipients: vec![to.into()],
        tenant: tenant.into(),
        tags: vec![("campaign".into(), campaign.into())],
        body: format!("From: a@sender.test\r\nTo: {to}\r\nSubject: q\r\n\r\nbody\r\n").into_bytes(),
        ..Submission::default()
    })
    .expect("submission accepted")
}

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

fn count(events: &[DeliveryEvent], kind: EventKind, domain: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind == kind && e.recipient.ends_with(domain))
        .count()
}

#[test]
fn queues_are_summed_by_destination_and_tenant_and_bounced_by_selector() {
    let spool = TempDir::new("engine-queues");
    // Nobody listens on the smarthost's port: every attempt fails and is deferred.
    let dead = format!("127.0.52.2:{}", vmta_tests::free_tcp_port("127.0.52.2"));
    let e = Engine::start(&config(&spool, &dead)).unwrap();
    for i in 0..10 {
        submit(&e, &format!("u{i}@alpha.test"), "t1", "spring");
    }
    for i in 0..5 {
        submit(&e, &format!("u{i}@beta.test"), "t2", "spring");
    }
    for i in 0..3 {
        submit(&e, &format!("u{i}@gamma.test"), "t1", "autumn");
    }
    let events = collect(&e, Duration::from_secs(30), |ev| {
        ev.iter().filter(|x| x.kind == EventKind::Deferred).count() >= 18
    });
    assert!(
        events
            .iter()
            .filter(|x| x.kind == EventKind::Deferred)
            .count()
            >= 18,
        "{events:#?}"
    );

    let q = e.queues();
    assert_eq!(q.total.recipients, 18, "{q:#?}");
    assert_eq!(q.domains["alpha.test"].recipients, 10);
    assert_eq!(q.domains["beta.test"].recipients, 5);
    assert_eq!(q.domains["gamma.test"].recipients, 3);
    assert_eq!(q.tenants["t1"].recipients, 13);
    assert_eq!(q.tenants["t2"].recipients, 5);
    assert_eq!(
        q.total.ready + q.total.deferred + q.total.in_flight + q.total.held,
        18
    );
    assert!(q.total.deferred > 0, "{q:#?}");
    assert!(q.total.next_retry.is_some() && q.total.oldest_submitted.is_some());

    let d = e.destination("Alpha.Test.").expect("the shard answers");
    assert_eq!(d.domain, "alpha.test");
    assert_eq!(d.queue.recipients, 10);
    assert!(!d.paused);
    assert!(!d.slow_because.is_empty(), "{d:#?}");
    assert!(!d.last_error.is_empty(), "{d:#?}");
    let unknown = e.destination("nowhere.test").unwrap();
    assert_eq!(unknown.queue.recipients, 0);

    // Bounce by campaign, destination, tenant: each recipient cancelled once, with the reason.
    let r = e.bounce_queued(&Selector::Campaign("autumn".into()), "campaign withdrawn");
    assert_eq!(r.cancelled + r.in_flight, 3);
    let again = e.bounce_queued(&Selector::Campaign("autumn".into()), "campaign withdrawn");
    assert_eq!(again.cancelled, 0);
    let r = e.bounce_queued(&Selector::Domain("BETA.test".into()), "destination retired");
    assert_eq!(r.cancelled + r.in_flight, 5);
    let r = e.bounce_queued(&Selector::Tenant("t1".into()), "account closed");
    assert!(r.cancelled + r.in_flight <= 10);
    let events = collect(&e, Duration::from_secs(30), |ev| {
        ev.iter().filter(|x| x.kind == EventKind::Cancelled).count() >= 18
    });
    let cancelled: Vec<&DeliveryEvent> = events
        .iter()
        .filter(|x| x.kind == EventKind::Cancelled)
        .collect();
    let unique: HashSet<(u64, u16)> = cancelled
        .iter()
        .map(|x| (x.message_id, x.recipient_index))
        .collect();
    // Recipients in flight at the call finish their attempt (deferred) and are bounced on a later call.
    let mut left = e.queues().total.recipients;
    let deadline = Instant::now() + Duration::from_secs(30);
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        e.bounce_queued(&Selector::Tenant("t1".into()), "account closed");
        e.bounce_queued(&Selector::Tenant("t2".into()), "account closed");
        left = e.queues().total.recipients;
    }
    assert_eq!(left, 0);
    let mut all = events.clone();
    e.poll_events(&mut all, 10_000);
    let all_cancelled: Vec<&DeliveryEvent> = all
        .iter()
        .filter(|x| x.kind == EventKind::Cancelled)
        .collect();
    let all_unique: HashSet<(u64, u16)> = all_cancelled
        .iter()
        .map(|x| (x.message_id, x.recipient_index))
        .collect();
    assert_eq!(all_cancelled.len(), 18, "each recipient once");
    assert_eq!(all_unique.len(), 18);
    assert!(unique.len() <= 18);
    assert!(
        cancelled
            .iter()
            .any(|x| x.text == "campaign withdrawn" && x.recipient.ends_with("gamma.test"))
    );
    assert!(
        cancelled
            .iter()
            .any(|x| x.text == "destination retired" && x.recipient.ends_with("beta.test"))
    );
    assert_eq!(e.metrics().total().cancelled, 18);
    assert_eq!(e.metrics().total().queued, 0);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn paused_destinations_and_tenants_wait_until_resumed() {
    let port = common_port(&["127.0.52.10"]);
    let sink = sink_at("127.0.52.10", port, &[]);
    let spool = TempDir::new("engine-holds");
    let e = Engine::start(&config(&spool, &format!("127.0.52.10:{port}"))).unwrap();
    assert!(e.pause_destination("alpha.test", true));
    assert!(!e.pause_destination("ALPHA.test", true), "already paused");
    assert!(e.pause_tenant("t2", true));
    assert_eq!(
        e.paused(),
        (vec!["alpha.test".to_string()], vec!["t2".to_string()])
    );
    for i in 0..5 {
        submit(&e, &format!("u{i}@alpha.test"), "t1", "c");
        submit(&e, &format!("u{i}@beta.test"), "t2", "c");
        submit(&e, &format!("u{i}@gamma.test"), "t1", "c");
    }
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered, "gamma.test") >= 5
    });
    assert_eq!(count(&events, EventKind::Delivered, "gamma.test"), 5);
    std::thread::sleep(Duration::from_millis(1500));
    let mut events = events;
    e.poll_events(&mut events, 10_000);
    assert_eq!(count(&events, EventKind::Delivered, "alpha.test"), 0);
    assert_eq!(count(&events, EventKind::Delivered, "beta.test"), 0);
    assert_eq!(sink.received(), 5);
    let d = e.destination("alpha.test").unwrap();
    assert!(d.paused);
    assert_eq!(d.queue.recipients, 5);
    assert!(
        d.slow_because.iter().any(|w| w.contains("paused")),
        "{d:#?}"
    );
    let b = e.destination("beta.test").unwrap();
    assert!(!b.paused);
    assert_eq!(b.paused_tenants, vec!["t2".to_string()]);

    assert!(e.pause_destination("alpha.test", false));
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered, "alpha.test") >= 5
    });
    assert_eq!(count(&events, EventKind::Delivered, "alpha.test"), 5);
    assert_eq!(count(&events, EventKind::Delivered, "beta.test"), 0);
    assert!(e.pause_tenant("t2", false));
    let events = collect(&e, Duration::from_secs(20), |ev| {
        count(ev, EventKind::Delivered, "beta.test") >= 5
    });
    assert_eq!(count(&events, EventKind::Delivered, "beta.test"), 5);
    assert_eq!(e.paused(), (vec![], vec![]));
    e.shutdown(Duration::from_secs(5));
}

/// The sending domain and the tenant reach the bounce rules: the same `552 5.2.2` from the same
/// receiver is retried for the sender domain a rule names, held for the tenant another rule names,
/// and bounced for everyone else. (`cargo test sender_domain` runs this.)
#[test]
fn sender_domain_and_tenant_rules_give_one_reply_three_outcomes() {
    let port = common_port(&["127.0.52.20"]);
    let _full = sink_at(
        "127.0.52.20",
        port,
        &["-f", "RCPT", "-B", "552 5.2.2 Mailbox full"],
    );
    let spool = TempDir::new("engine-sender-rules");
    let mut cfg = config(&spool, &format!("127.0.52.20:{port}"));
    cfg.retry.policy = vmta::engine::config::RetryKind::Classified;
    cfg.retry.rules = r#"
[policy]
default_retry = "1h"

[[rule]]
name = "acme-full-is-transient"
reason = "mailboxfull"
action = "retry"
sender = ["acme.test"]
code = ["552"]

[[rule]]
name = "vip-full-is-on-hold"
reason = "onhold"
action = "retry"
tenant = ["vip"]
code = ["552"]

[[rule]]
name = "full"
reason = "mailboxfull"
action = "bounce"
code = ["552"]
"#
    .into();
    let e = Engine::start(&cfg).unwrap();
    let send = |sender: &str, to: &str, tenant: &str| {
        e.submit(&Submission {
            sender: sender.into(),
            recipients: vec![to.into()],
            tenant: tenant.into(),
            body: format!("From: {sender}\r\nTo: {to}\r\nSubject: s\r\n\r\nbody\r\n").into_bytes(),
            ..Submission::default()
        })
        .unwrap()
    };
    let acme = send("news@mail.acme.test", "a@dest.test", "t1");
    let vip = send("news@other.test", "b@dest.test", "vip");
    let other = send("news@other.test", "c@dest.test", "t2");
    let events = collect(&e, Duration::from_secs(30), |ev| ev.len() >= 3);
    let of = |id: u64| {
        events
            .iter()
            .find(|x| x.message_id == id)
            .unwrap_or_else(|| panic!("no event for {id:x}: {events:#?}"))
    };
    assert_eq!(of(acme).kind, EventKind::Deferred, "{events:#?}");
    assert_eq!(of(acme).reason, "mailboxfull");
    assert_eq!(of(vip).kind, EventKind::Deferred, "{events:#?}");
    assert_eq!(of(vip).reason, "onhold");
    assert_eq!(of(other).kind, EventKind::Bounced, "{events:#?}");
    assert_eq!(of(other).reason, "mailboxfull");
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn retry_keys_of_the_other_policy_are_refused() {
    let spool = TempDir::new("engine-retry-keys");
    let mut cfg = config(&spool, "127.0.52.21:25");
    cfg.retry.policy = vmta::engine::config::RetryKind::Classified;
    cfg.retry.first_s = 60;
    let e = Engine::start(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("retry.first_s") && e.contains("exponential"),
        "{e}"
    );
    cfg.retry.first_s = vmta::engine::config::RetrySection::default().first_s;
    cfg.retry.rules = "[[rule]]\nname = \"x\"\nreason = \"nonsense\"\n".into();
    let e = Engine::start(&cfg).unwrap_err().to_string();
    assert!(e.contains("retry.rules"), "{e}");
}

/// A reload applies new bounce rules to the very next reply and new shaping rules to the next
/// decision, refuses a broken configuration with its key while delivery goes on, and names what
/// needs a restart without applying it.
#[test]
fn reload_applies_rules_refuses_a_broken_config_and_names_restart_keys() {
    let port = common_port(&["127.0.52.30"]);
    let _sink = sink_at(
        "127.0.52.30",
        port,
        &["-f", "RCPT", "-B", "550 5.7.1 Refused by site policy XQ17"],
    );
    let spool = TempDir::new("engine-reload");
    let mut cfg = config(&spool, &format!("127.0.52.30:{port}"));
    cfg.retry.policy = vmta::engine::config::RetryKind::Classified;
    let e = Engine::start(&cfg).unwrap();
    let send = |to: &str| {
        e.submit(&Submission {
            sender: "news@sender.test".into(),
            recipients: vec![to.into()],
            tenant: "t".into(),
            body: format!("From: news@sender.test\r\nTo: {to}\r\nSubject: s\r\n\r\nb\r\n")
                .into_bytes(),
            ..Submission::default()
        })
        .unwrap()
    };
    let first = send("a@dest.test");
    let events = collect(&e, Duration::from_secs(20), |ev| {
        ev.iter().any(|x| x.message_id == first)
    });
    let ev = events.iter().find(|x| x.message_id == first).unwrap();
    assert_eq!(ev.kind, EventKind::Bounced, "{ev:?}");

    // New bounce rules: that site's policy refusal is a temporary hold.
    let mut next = cfg.clone();
    next.retry.rules = format!(
        "[[rule]]\nname = \"xq17-is-temporary\"\nreason = \"onhold\"\naction = \"retry\"\ntext = 'XQ17'\n\n{}",
        vmta::bounce::classify::DEFAULT_RULES
    );
    next.shaping.rules = "[defaults]\nmax_connections = 3\nmessage_rate = \"7/s\"\n".into();
    let report = e.reload(&next).unwrap();
    assert_eq!(report.applied, ["shaping", "bounce rules"], "{report:?}");
    assert!(report.needs_restart.is_empty(), "{report:?}");
    let second = send("b@dest.test");
    let events = collect(&e, Duration::from_secs(20), |ev| {
        ev.iter().any(|x| x.message_id == second)
    });
    let ev = events.iter().find(|x| x.message_id == second).unwrap();
    assert_eq!(
        (ev.kind, ev.reason.as_str()),
        (EventKind::Deferred, "onhold"),
        "{ev:?}"
    );
    let d = e.destination("dest.test").unwrap();
    assert!(
        d.routes
            .iter()
            .all(|r| r.effective.max_connections == Some(3)),
        "{:?}",
        d.routes
    );

    // A broken configuration is refused with its key; the running one stays whole.
    let mut broken = next.clone();
    broken.shaping.rules = "[defaults]\nmessage_rate = \"fast\"\n".into();
    let err = e.reload(&broken).unwrap_err().to_string();
    assert!(err.contains("shaping.rules"), "{err}");
    let mut broken = next.clone();
    broken.retry.rules = "[[rule]]\nname = \"x\"\nreason = \"nonsense\"\n".into();
    assert!(
        e.reload(&broken)
            .unwrap_err()
            .to_string()
            .contains("retry.rules")
    );
    let third = send("c@dest.test");
    let events = collect(&e, Duration::from_secs(20), |ev| {
        ev.iter().any(|x| x.message_id == third)
    });
    let ev = events.iter().find(|x| x.message_id == third).unwrap();
    assert_eq!(
        ev.reason, "onhold",
        "the reloaded rules are still in force: {ev:?}"
    );

    // What cannot change while running is named and left alone.
    let mut restart = next.clone();
    restart.engine.shards = 3;
    restart.dns.timeout_ms += 1;
    let report = e.reload(&restart).unwrap();
    assert_eq!(report.needs_restart, ["engine", "dns"], "{report:?}");
    assert_eq!(e.metrics().shards.len(), 2);
    e.shutdown(Duration::from_secs(5));
}
