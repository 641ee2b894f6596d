//! Suppression in the running engine against real peers on loopback (127.0.80.0/24): a real dnsmasq
//! for MX records, Postfix `smtp-sink` processes that accept, refuse with 550 5.1.1 or answer
//! "mailbox full". Bounces feed the list, the list refuses later submissions, inbound DSN and ARF
//! reports are matched through signed VERP return paths, and a forged one changes nothing.

use std::time::{Duration, Instant};
use vmta::bounce::{Reason, Verp};
use vmta::engine::config::Durability;
use vmta::engine::{
    DeliveryEvent, Engine, EngineConfig, EventKind, InboundError, Submission, SubmitError,
};
use vmta_tests::TempDir;
use vmta_tests::engine::{Zone, common_port, sink_at, test_engine};
use vmta_tests::smtp::SmtpSink;

const VERP_KEY: &str = "suppression test key 0001";

/// `smtp-sink` flags answering every RCPT with "mailbox full".
const FULL_FLAGS: &[&str] = &[
    "-f",
    "RCPT",
    "-B",
    "552 5.2.2 Mailbox full, try again later",
];

/// The loopback world: ok.sup.engine.test accepts, hard.sup.engine.test refuses every recipient
/// with 550 5.1.1, full.sup.engine.test says the mailbox is full (552 5.2.2); noaddr.sup.engine.test
/// has an MX host without an address (it never resolves, without an NXDOMAIN for the domain), and
/// gone.sup.engine.test does not exist.
struct World {
    zone: Zone,
    port: u16,
    ok: SmtpSink,
    _hard: SmtpSink,
    /// The "mailbox full" sink (taken down and replaced by tests that change its answer).
    full: Option<SmtpSink>,
}

impl World {
    fn start(base: u8) -> World {
        let ip = |n: u8| format!("127.0.80.{}", base + n);
        let (dns, ok, hard, full) = (ip(0), ip(1), ip(2), ip(3));
        let port = common_port(&[&ok, &hard, &full]);
        let zone = Zone::start(
            &dns,
            &[
                "mx-host=ok.sup.engine.test,mx.ok.sup.engine.test,10".into(),
                format!("host-record=mx.ok.sup.engine.test,{ok}"),
                "mx-host=hard.sup.engine.test,mx.hard.sup.engine.test,10".into(),
                format!("host-record=mx.hard.sup.engine.test,{hard}"),
                "mx-host=full.sup.engine.test,mx.full.sup.engine.test,10".into(),
                format!("host-record=mx.full.sup.engine.test,{full}"),
                "mx-host=noaddr.sup.engine.test,mx.nowhere.sup.engine.test,10".into(),
            ],
        );
        World {
            zone,
            port,
            ok: sink_at(&ok, port, &[]),
            _hard: sink_at(&hard, port, &["-f", "RCPT", "-B", "550 5.1.1 No such user"]),
            full: Some(sink_at(&full, port, FULL_FLAGS)),
        }
    }

    /// Replaces the "mailbox full" sink by one started with `flags` on the same address, once the
    /// engine has let go of its connections to the old one (so no message goes down a dead one).
    fn restart_full(&mut self, e: &Engine, flags: &[&str]) {
        let addr = self.full.take().expect("the full sink").addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        while e.metrics().total().connections_open > 0 {
            assert!(
                Instant::now() < deadline,
                "the engine kept a connection to the stopped sink"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.full = Some(SmtpSink::start_on(addr, flags));
    }

    fn config(&self, spool: &TempDir) -> EngineConfig {
        test_engine(spool, self.zone.addr, self.port)
            .durability(Durability::Sync)
            .with(|c| {
                c.delivery.connect_timeout_s = 5;
                c.delivery.idle_timeout_s = 1;
                c.dns.timeout_ms = 500;
                c.dns.attempts = 1;
            })
            .build()
    }

    fn verp_config(&self, spool: &TempDir) -> EngineConfig {
        let mut c = self.config(spool);
        c.verp = EngineConfig::builder()
            .verp("bounces", "bounce.sender.test", &[VERP_KEY])
            .build()
            .verp;
        c
    }
}

fn message(to: &str, tenant: &str, stream: Option<&str>) -> Submission {
    let mut tags = vec![("campaign".to_string(), "c7".to_string())];
    if let Some(s) = stream {
        tags.push(("stream".into(), s.into()));
    }
    Submission {
        sender: "news@sender.test".into(),
        recipients: vec![to.into()],
        tenant: tenant.into(),
        tags,
        body: format!("From: news@sender.test\r\nTo: <{to}>\r\nSubject: hello\r\n\r\nbody\r\n")
            .into_bytes(),
        ..Submission::default()
    }
}

/// Collects events until `done` says so or the time runs out.
fn collect(
    e: &Engine,
    all: &mut Vec<DeliveryEvent>,
    limit: Duration,
    mut done: impl FnMut(&[DeliveryEvent]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !done(all) {
        e.wait(Duration::from_millis(100));
        e.poll_events(all, 10_000);
    }
}

fn of<'a>(events: &'a [DeliveryEvent], kind: EventKind, rcpt: &str) -> Vec<&'a DeliveryEvent> {
    events
        .iter()
        .filter(|e| e.kind == kind && e.recipient == rcpt)
        .collect()
}

fn dsn(to: &str, recipient: &str, status: &str, diagnostic: &str) -> Vec<u8> {
    format!(
        "From: MAILER-DAEMON@mx.ok.sup.engine.test\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.ok.sup.engine.test\r\n\r\nFinal-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n--B--\r\n"
    )
    .into_bytes()
}

/// The return path the sink saw for `rcpt`.
fn return_path(sink: &SmtpSink, rcpt: &str) -> String {
    let m = sink
        .messages()
        .into_iter()
        .find(|m| m.contains(&format!("X-Rcpt-Args: <{rcpt}>")))
        .unwrap_or_else(|| panic!("the sink has no message for {rcpt}"));
    m.lines()
        .find_map(|l| l.strip_prefix("X-Mail-Args: <"))
        .and_then(|l| l.split('>').next())
        .expect("X-Mail-Args")
        .to_string()
}

#[test]
fn a_hard_bounce_suppresses_at_once_and_later_submissions_are_refused() {
    let w = World::start(1);
    let spool = TempDir::new("supp-hard");
    let e = Engine::start(&w.config(&spool)).unwrap();
    let gone = "nobody@hard.sup.engine.test";
    let id = e.submit(&message(gone, "", None)).unwrap();
    let mut events = Vec::new();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Bounced, gone).is_empty()
    });
    let b = of(&events, EventKind::Bounced, gone);
    assert_eq!(b.len(), 1, "{events:#?}");
    assert_eq!((b[0].message_id, b[0].code), (id, 550));
    assert_eq!(b[0].reason, "userunknown");
    // The bounce event is out only once the list has recorded it.
    let hit = e.suppression("", gone, None).expect("suppressed");
    assert_eq!(hit.reason, Reason::UserUnknown);
    assert_eq!(hit.expires, None);
    // The default tenant is the empty one's; another tenant is not affected.
    assert!(e.suppression("default", gone, None).is_some());
    assert!(e.suppression("other", gone, None).is_none());
    match e.submit(&message(gone, "", None)) {
        Err(SubmitError::Suppressed(why)) => assert!(why.contains(gone), "{why}"),
        r => panic!("expected Suppressed, got {r:?}"),
    }
    let batch = e.submit_batch(&[message(gone, "", None), message(gone, "other", None)]);
    assert!(matches!(batch[0], Err(SubmitError::Suppressed(_))));
    assert!(batch[1].is_ok(), "{batch:?}");
    // A submission with another recipient goes ahead; the suppressed one gets its event.
    let mut both = message("fine@ok.sup.engine.test", "", None);
    both.recipients.push(gone.to_uppercase());
    let id2 = e.submit(&both).unwrap();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Delivered, "fine@ok.sup.engine.test").is_empty()
    });
    let s = of(&events, EventKind::Suppressed, &gone.to_uppercase());
    assert_eq!(s.len(), 1, "{events:#?}");
    assert_eq!(s[0].message_id, id2);
    assert_eq!(s[0].recipient_index, 1);
    assert_eq!(s[0].reason, "userunknown");
    assert!(s[0].tags.contains(&("campaign".into(), "c7".into())));
    assert_eq!(w.ok.received(), 1);
    assert_eq!(e.suppression_counts().0, 3);
    // The list survives a restart; removing by hand lets mail through again.
    e.shutdown(Duration::from_secs(5));
    drop(e);
    let e = Engine::start(&w.config(&spool)).unwrap();
    assert!(e.suppression("", gone, None).is_some());
    assert_eq!(e.suppressions(Some("")).unwrap().len(), 1);
    assert!(e.unsuppress("", gone, None).unwrap());
    assert!(!e.unsuppress("", gone, None).unwrap());
    e.submit(&message(gone, "", None)).unwrap();
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn three_mailbox_full_deferrals_suppress_for_thirty_days() {
    let w = World::start(11);
    let spool = TempDir::new("supp-full");
    let e = Engine::start(&w.config(&spool)).unwrap();
    let full = "busy@full.sup.engine.test";
    let mut events = Vec::new();
    for n in 1..=3 {
        e.submit(&message(full, "acme", None)).unwrap();
        collect(&e, &mut events, Duration::from_secs(20), |ev| {
            of(ev, EventKind::Deferred, full).len() >= n
        });
        assert_eq!(
            of(&events, EventKind::Deferred, full).len(),
            n,
            "{events:#?}"
        );
        if n < 3 {
            assert!(e.suppression("acme", full, None).is_none(), "after {n}");
        }
    }
    assert!(
        of(&events, EventKind::Deferred, full)
            .iter()
            .all(|d| d.reason == "mailboxfull" && d.code == 552)
    );
    let hit = e
        .suppression("acme", full, None)
        .expect("suppressed at the third");
    assert_eq!(hit.reason, Reason::MailboxFull);
    let expires = hit.expires.expect("mailboxfull suppressions expire");
    assert_eq!(expires - hit.created, 30 * 86400);
    assert!(matches!(
        e.submit(&message(full, "acme", None)),
        Err(SubmitError::Suppressed(_))
    ));
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_delivery_resets_the_soft_bounce_count() {
    // Two "mailbox full" deferrals, then a delivery: the count starts again, so two more deferrals
    // leave the address unsuppressed (without the reset they would make four) and the third
    // suppresses it. The shard observes a delivery only when the address may have counters: this
    // one has them, and the reset must reach the list.
    let mut w = World::start(71);
    let spool = TempDir::new("supp-reset");
    let e = Engine::start(&w.config(&spool)).unwrap();
    let rcpt = "flaky@full.sup.engine.test";
    let mut events = Vec::new();
    let expect = |events: &mut Vec<DeliveryEvent>, kind: EventKind, n: usize| {
        e.submit(&message(rcpt, "acme", None)).unwrap();
        collect(&e, events, Duration::from_secs(20), |ev| {
            of(ev, kind, rcpt).len() >= n
        });
        assert_eq!(of(events, kind, rcpt).len(), n, "{kind:?}: {events:#?}");
    };
    expect(&mut events, EventKind::Deferred, 1);
    expect(&mut events, EventKind::Deferred, 2);
    assert!(e.suppression("acme", rcpt, None).is_none());
    w.restart_full(&e, &[]);
    expect(&mut events, EventKind::Delivered, 1);
    w.restart_full(&e, FULL_FLAGS);
    expect(&mut events, EventKind::Deferred, 3);
    expect(&mut events, EventKind::Deferred, 4);
    assert!(
        e.suppression("acme", rcpt, None).is_none(),
        "two deferrals after the delivery must not suppress"
    );
    expect(&mut events, EventKind::Deferred, 5);
    let hit = e
        .suppression("acme", rcpt, None)
        .expect("suppressed at the third deferral after the delivery");
    assert_eq!(hit.reason, Reason::MailboxFull);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn dns_nxdomain_suppresses_at_once_and_an_unresolvable_domain_at_the_third() {
    let w = World::start(21);
    let spool = TempDir::new("supp-dns");
    let e = Engine::start(&w.config(&spool)).unwrap();
    let gone = "x@gone.sup.engine.test";
    let noaddr = "x@noaddr.sup.engine.test";
    let mut events = Vec::new();
    e.submit(&message(gone, "", None)).unwrap();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Bounced, gone).is_empty()
    });
    let hit = e
        .suppression("", gone, None)
        .expect("NXDOMAIN suppresses at once");
    assert_eq!(hit.reason, Reason::HostUnknown);
    // The resolver gives up on a domain whose MX hosts have no address (each message bounces), but
    // that is no NXDOMAIN for the domain: the third failure suppresses.
    let failed = |ev: &[DeliveryEvent]| {
        of(ev, EventKind::Deferred, noaddr).len() + of(ev, EventKind::Bounced, noaddr).len()
    };
    for n in 1..=3 {
        assert!(
            e.suppression("", noaddr, None).is_none(),
            "before attempt {n}"
        );
        e.submit(&message(noaddr, "", None)).unwrap();
        collect(&e, &mut events, Duration::from_secs(20), |ev| {
            failed(ev) >= n
        });
        assert_eq!(failed(&events), n, "{events:#?}");
    }
    let hit = e
        .suppression("", noaddr, None)
        .expect("suppressed at the third");
    assert_eq!(hit.reason, Reason::HostUnknown);
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_late_dsn_after_delivery_bounces_the_recipient_and_suppresses() {
    let w = World::start(31);
    let spool = TempDir::new("supp-late");
    let e = Engine::start(&w.verp_config(&spool)).unwrap();
    let rcpt = "Later.Gone@ok.sup.engine.test";
    let id = e.submit(&message(rcpt, "acme", None)).unwrap();
    let mut events = Vec::new();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Delivered, rcpt).is_empty()
    });
    assert_eq!(
        of(&events, EventKind::Delivered, rcpt).len(),
        1,
        "{events:#?}"
    );
    // The message left with a signed VERP return path naming the message, tenant and recipient.
    let rp = return_path(&w.ok, rcpt);
    let verp = Verp::new("bounces", "bounce.sender.test", &[VERP_KEY.as_bytes()]);
    let decoded = verp.decode(&rp).expect("a VERP address that verifies");
    assert_eq!(decoded.message_id, format!("{id:016x}-acme"));
    assert!(decoded.recipient.eq_ignore_ascii_case(rcpt));
    // An hour later the receiving system bounces it after all (submitted as another tenant: the
    // signed address wins).
    let report = dsn(
        &rp,
        rcpt,
        "5.1.1",
        "550 5.1.1 <later.gone@ok.sup.engine.test>: user unknown",
    );
    let out = e.apply_report("", &report).unwrap();
    assert!(out.verified && out.applied, "{out:#?}");
    assert_eq!(out.message_id, Some(id));
    assert_eq!(out.tenant, "acme");
    collect(&e, &mut events, Duration::from_secs(5), |ev| {
        !of(ev, EventKind::LateBounce, &decoded.recipient).is_empty()
    });
    let late = of(&events, EventKind::LateBounce, &decoded.recipient);
    assert_eq!(late.len(), 1, "{events:#?}");
    assert_eq!(late[0].message_id, id);
    assert_eq!(late[0].tenant, "acme");
    assert_eq!(late[0].reason, "userunknown");
    assert_eq!(
        late[0].enhanced.map(|c| c.to_string()),
        Some("5.1.1".into())
    );
    assert!(e.suppression("acme", rcpt, None).is_some());
    assert!(matches!(
        e.submit(&message(rcpt, "acme", None)),
        Err(SubmitError::Suppressed(_))
    ));
    // A delayed DSN for another recipient defers it (nothing is suppressed).
    let other = "slow@ok.sup.engine.test";
    let id2 = e.submit(&message(other, "acme", None)).unwrap();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Delivered, other).is_empty()
    });
    let rp2 = return_path(&w.ok, other);
    let delayed = String::from_utf8(dsn(&rp2, other, "4.2.2", "452 4.2.2 over quota"))
        .unwrap()
        .replace("Action: failed", "Action: delayed");
    let out = e.apply_report("acme", delayed.as_bytes()).unwrap();
    assert_eq!(out.message_id, Some(id2));
    collect(&e, &mut events, Duration::from_secs(5), |ev| {
        !of(ev, EventKind::LateDeferral, other).is_empty()
    });
    assert_eq!(
        of(&events, EventKind::LateDeferral, other).len(),
        1,
        "{events:#?}"
    );
    assert!(e.suppression("acme", other, None).is_none());
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn an_arf_complaint_suppresses_every_stream_of_the_tenant() {
    let w = World::start(41);
    let spool = TempDir::new("supp-arf");
    let e = Engine::start(&w.verp_config(&spool)).unwrap();
    let fan = "fan@ok.sup.engine.test";
    let id = e.submit(&message(fan, "acme", Some("news"))).unwrap();
    let mut events = Vec::new();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Delivered, fan).is_empty()
    });
    let rp = return_path(&w.ok, fan);
    // The feedback loop sends the report to a fixed address; the returned message carries the
    // VERP return path.
    let arf = format!(
        "From: fbl@isp.example\r\nTo: fbl@sender.test\r\nSubject: complaint\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: fbl/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: {fan}\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{rp}>\r\nFrom: news@sender.test\r\nTo: {fan}\r\nSubject: hello\r\n\r\nbody\r\n--b--\r\n"
    );
    let out = e.apply_report("", arf.as_bytes()).unwrap();
    assert!(out.verified && out.applied, "{out:#?}");
    assert_eq!(out.message_id, Some(id));
    collect(&e, &mut events, Duration::from_secs(5), |ev| {
        !of(ev, EventKind::Complaint, fan).is_empty()
    });
    let c = of(&events, EventKind::Complaint, fan);
    assert_eq!(c.len(), 1, "{events:#?}");
    assert_eq!((c[0].message_id, c[0].reason.as_str()), (id, "feedback"));
    // Every stream of acme, not other tenants.
    for stream in [Some("news"), Some("receipts"), None] {
        assert!(matches!(
            e.submit(&message(fan, "acme", stream)),
            Err(SubmitError::Suppressed(_))
        ));
    }
    e.submit(&message(fan, "other", Some("news"))).unwrap();
    // A manual suppression for one stream only.
    let n = "stream@ok.sup.engine.test";
    e.suppress("acme", n, Some("news"), Reason::Suppressed, None)
        .unwrap();
    assert!(matches!(
        e.submit(&message(n, "acme", Some("news"))),
        Err(SubmitError::Suppressed(_))
    ));
    e.submit(&message(n, "acme", Some("receipts"))).unwrap();
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn a_forged_verp_report_is_refused_and_unsigned_ones_are_not_trusted() {
    let w = World::start(51);
    let spool = TempDir::new("supp-forged");
    let e = Engine::start(&w.verp_config(&spool)).unwrap();
    let rcpt = "victim@ok.sup.engine.test";
    e.submit(&message(rcpt, "acme", None)).unwrap();
    let mut events = Vec::new();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Delivered, rcpt).is_empty()
    });
    let rp = return_path(&w.ok, rcpt);
    // Someone who has seen one return path tries to suppress another address with it, and with a
    // made-up tag.
    let other = rp.replace("victim=", "ceo=");
    let tag = rp.split('.').nth(1).unwrap().to_string();
    let made_up = rp.replace(&tag, "aaaaaaaaaaaaa");
    for forged in [other, made_up] {
        let report = dsn(
            &forged,
            "ceo@ok.sup.engine.test",
            "5.1.1",
            "550 5.1.1 user unknown",
        );
        match e.apply_report("acme", &report) {
            Err(InboundError::ForgedVerp(a)) => assert_eq!(a, forged),
            r => panic!("expected ForgedVerp, got {r:?}"),
        }
    }
    // A bounce to no VERP address is read, but not trusted (trust_unsigned is off).
    let unsigned = dsn("news@sender.test", rcpt, "5.1.1", "550 5.1.1 user unknown");
    let out = e.apply_report("acme", &unsigned).unwrap();
    assert!(!out.verified && !out.applied, "{out:#?}");
    assert!(out.events.is_empty());
    collect(&e, &mut events, Duration::from_millis(500), |_| false);
    assert!(
        events.iter().all(|e| e.kind == EventKind::Delivered),
        "{events:#?}"
    );
    assert!(e.suppressions(None).unwrap().is_empty());
    assert!(
        e.suppression("acme", "ceo@ok.sup.engine.test", None)
            .is_none()
    );
    // A message that is no report changes nothing either.
    let out = e
        .apply_report("acme", b"From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n")
        .unwrap();
    assert_eq!(out.kind, vmta::bounce::ReportKind::NotABounce);
    assert!(out.outcomes.is_empty() && out.events.is_empty());
    e.shutdown(Duration::from_secs(5));
}

#[test]
fn without_verp_reports_are_matched_by_address_and_tenant() {
    let w = World::start(61);
    let spool = TempDir::new("supp-noverp");
    let e = Engine::start(&w.config(&spool)).unwrap();
    let rcpt = "plain@ok.sup.engine.test";
    e.submit(&message(rcpt, "acme", None)).unwrap();
    let mut events = Vec::new();
    collect(&e, &mut events, Duration::from_secs(20), |ev| {
        !of(ev, EventKind::Delivered, rcpt).is_empty()
    });
    // Without VERP the message leaves with its own return path.
    assert_eq!(return_path(&w.ok, rcpt), "news@sender.test");
    let report = dsn("news@sender.test", rcpt, "5.1.1", "550 5.1.1 user unknown");
    let out = e.apply_report("acme", &report).unwrap();
    assert!(!out.verified && out.applied, "{out:#?}");
    assert_eq!(out.tenant, "acme");
    assert!(e.suppression("acme", rcpt, None).is_some());
    assert!(e.suppression("", rcpt, None).is_none());
    collect(&e, &mut events, Duration::from_secs(5), |ev| {
        !of(ev, EventKind::LateBounce, rcpt).is_empty()
    });
    assert_eq!(of(&events, EventKind::LateBounce, rcpt).len(), 1);
    e.shutdown(Duration::from_secs(5));
}
