//! The SMTP client session against real servers on loopback (127.0.30.0/24): Postfix `smtp-sink` with
//! its fault flags, an aiosmtpd STARTTLS server with a throwaway CA, and a private Postfix `smtpd`.

use std::sync::Arc;
use std::time::Duration;
use vmta::client::{ConnectionReport, run_connection};
use vmta::smtp::{
    CloseCause, Envelope, Event, MessageFailure, Phase, Recipient, SessionConfig, Tls, TlsSettings,
    Transaction,
};
use vmta_tests::smtp::{PostfixSmtpd, SmtpSink, StartTlsServer};

const IP: &str = "127.0.30.1";

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender@x.example\r\nTo: rcpt@y.example\r\nSubject: test {n}\r\nMessage-ID: <{n}@x.example>\r\n\r\nline one\r\n.line starting with a dot\r\nlast line\r\n"
    )
    .into_bytes()
}

fn tx(to: &[&str], n: usize) -> Transaction {
    Transaction {
        envelope: Envelope {
            mail_from: "sender@x.example".into(),
            recipients: to.iter().map(|a| Recipient::new(*a)).collect(),
            ..Envelope::default()
        },
        body: Arc::new(message(n)),
        crlf_clean: false,
    }
}

fn plain() -> Arc<SessionConfig> {
    Arc::new(SessionConfig::new("client.vmta.test"))
}

fn run(
    sink_addr: std::net::SocketAddr,
    cfg: Arc<SessionConfig>,
    txs: Vec<Transaction>,
) -> ConnectionReport {
    run_connection(sink_addr, "localhost", cfg, txs, Duration::from_secs(30)).expect("connection")
}

fn count(report: &ConnectionReport, f: impl Fn(&Event) -> bool) -> usize {
    report.events.iter().filter(|e| f(e)).count()
}

fn accepted(report: &ConnectionReport) -> usize {
    count(report, |e| matches!(e, Event::MessageAccepted { .. }))
}

fn closed_cause(report: &ConnectionReport) -> CloseCause {
    report
        .events
        .iter()
        .find_map(|e| match e {
            Event::Closed(c) => Some(c.clone()),
            _ => None,
        })
        .expect("a Closed event")
}

#[test]
fn smtp_sink_takes_several_messages_on_one_connection() {
    let sink = SmtpSink::start(IP, &[]);
    let txs = (0..5)
        .map(|n| tx(&["a@y.example", "b@y.example"], n))
        .collect();
    let report = run(sink.addr, plain(), txs);
    assert_eq!(accepted(&report), 5, "{:?}", report.events);
    assert_eq!(
        count(&report, |e| matches!(e, Event::RcptAccepted { .. })),
        10
    );
    assert_eq!(closed_cause(&report), CloseCause::Quit);
    assert!(report.capabilities.pipelining && report.capabilities.esmtp);
    assert_eq!(report.messages_sent, 5);
    assert_eq!(sink.received(), 5);
    // Dot-stuffing was undone by the server: the body arrived as written.
    for m in sink.messages() {
        assert!(m.contains("\n.line starting with a dot\n"), "{m}");
        assert!(
            m.contains("X-Rcpt-Args: <a@y.example> <b@y.example>") || m.contains("<b@y.example>")
        );
    }
}

#[test]
fn smtp_sink_hard_reject_at_rcpt() {
    let sink = SmtpSink::start(IP, &["-f", "RCPT", "-B", "550 5.1.1 No such user"]);
    let report = run(sink.addr, plain(), vec![tx(&["a@y.example"], 0)]);
    let rejected: Vec<_> = report
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RcptRejected { reply, .. } => Some(reply.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].code, 550);
    assert_eq!(
        rejected[0].enhanced.map(|e| e.to_string()).as_deref(),
        Some("5.1.1")
    );
    assert!(report.events.contains(&Event::MessageFailed {
        phase: Phase::Rcpt,
        failure: MessageFailure::NoValidRecipients
    }));
    assert_eq!(sink.received(), 0);
}

#[test]
fn smtp_sink_soft_reject_at_rcpt() {
    let sink = SmtpSink::start(IP, &["-r", "RCPT"]);
    let report = run(
        sink.addr,
        plain(),
        vec![tx(&["a@y.example"], 0), tx(&["b@y.example"], 1)],
    );
    let codes: Vec<u16> = report
        .events
        .iter()
        .filter_map(|e| match e {
            Event::RcptRejected { reply, .. } => Some(reply.code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![450, 450]);
    // The connection stays usable after a failed transaction (RSET, then the next message).
    assert_eq!(
        count(&report, |e| matches!(e, Event::MessageFailed { .. })),
        2
    );
    assert_eq!(closed_cause(&report), CloseCause::Quit);
    assert_eq!(sink.received(), 0);
}

#[test]
fn smtp_sink_421_and_disconnect() {
    let sink = SmtpSink::start(IP, &["-Q", "RCPT"]);
    let report = run(sink.addr, plain(), vec![tx(&["a@y.example"], 0)]);
    match closed_cause(&report) {
        CloseCause::Refused(Phase::Rcpt, reply) => assert_eq!(reply.code, 421),
        other => panic!("expected a 421 at RCPT, got {other:?}"),
    }
    assert!(report.events.iter().any(|e| matches!(
        e,
        Event::MessageFailed {
            failure: MessageFailure::SessionClosed(_),
            ..
        }
    )));
    assert_eq!(sink.received(), 0);
}

#[test]
fn smtp_sink_silent_disconnect() {
    let sink = SmtpSink::start(IP, &["-q", "DATA"]);
    let report = run(sink.addr, plain(), vec![tx(&["a@y.example"], 0)]);
    assert!(
        matches!(closed_cause(&report), CloseCause::ConnectionLost(_)),
        "{:?}",
        report.events
    );
    assert_eq!(accepted(&report), 0);
}

#[test]
fn smtp_sink_without_esmtp_falls_back_to_helo() {
    let sink = SmtpSink::start(IP, &["-e"]);
    let report = run(sink.addr, plain(), vec![tx(&["a@y.example"], 0)]);
    assert!(!report.capabilities.esmtp);
    assert_eq!(accepted(&report), 1, "{:?}", report.events);
    assert_eq!(sink.received(), 1);
    assert!(sink.messages()[0].contains("X-Client-Proto: SMTP"));
}

#[test]
fn smtp_sink_without_pipelining_goes_step_by_step() {
    let sink = SmtpSink::start(IP, &["-p"]);
    let report = run(
        sink.addr,
        plain(),
        vec![
            tx(&["a@y.example", "b@y.example"], 0),
            tx(&["c@y.example"], 1),
        ],
    );
    assert!(!report.capabilities.pipelining);
    assert_eq!(accepted(&report), 2, "{:?}", report.events);
    assert_eq!(sink.received(), 2);
}

#[test]
fn smtp_sink_with_tls_required_never_sends_mail_in_clear() {
    let sink = SmtpSink::start(IP, &[]);
    let settings = TlsSettings::new(None).unwrap();
    let mut cfg = SessionConfig::new("client.vmta.test");
    cfg.tls = Tls::Required(settings.verified());
    let report = run(sink.addr, Arc::new(cfg), vec![tx(&["a@y.example"], 0)]);
    assert_eq!(closed_cause(&report), CloseCause::TlsUnavailable);
    assert!(!report.events.iter().any(|e| matches!(e, Event::Ready)));
    assert_eq!(sink.received(), 0);
}

fn tls_config(policy: &str, ca: Option<&[u8]>) -> Arc<SessionConfig> {
    let settings = TlsSettings::new(ca).unwrap();
    let mut cfg = SessionConfig::new("client.vmta.test");
    cfg.tls = match policy {
        "required" => Tls::Required(settings.verified()),
        "opportunistic" => Tls::Opportunistic(settings.opportunistic()),
        _ => Tls::Disabled,
    };
    Arc::new(cfg)
}

fn delivered_line(server: &StartTlsServer) -> String {
    server
        .delivered
        .recv_timeout(Duration::from_secs(10))
        .expect("the server reports the delivery")
}

#[test]
fn starttls_required_with_the_test_ca() {
    let server = StartTlsServer::start("127.0.30.2");
    let report = run_connection(
        server.addr,
        "mx.starttls.test",
        tls_config("required", Some(&server.ca_pem)),
        vec![tx(&["someone@y.example", "unknown@y.example"], 0)],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(report.tls);
    assert!(
        report
            .events
            .iter()
            .any(|e| matches!(e, Event::TlsEstablished { .. }))
    );
    assert_eq!(accepted(&report), 1, "{:?}", report.events);
    let rejected = report.events.iter().find_map(|e| match e {
        Event::RcptRejected { index, reply } => Some((*index, reply.code)),
        _ => None,
    });
    assert_eq!(rejected, Some((1, 550)));
    let line = delivered_line(&server);
    assert!(
        line.starts_with("DELIVERED tls sender@x.example someone@y.example "),
        "{line}"
    );
}

#[test]
fn starttls_required_fails_closed_on_an_untrusted_certificate() {
    let server = StartTlsServer::start("127.0.30.3");
    // Only the webpki roots: the throwaway CA is unknown.
    let report = run_connection(
        server.addr,
        "mx.starttls.test",
        tls_config("required", None),
        vec![tx(&["someone@y.example"], 0)],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        matches!(closed_cause(&report), CloseCause::TlsFailed(_)),
        "{:?}",
        report.events
    );
    assert_eq!(accepted(&report), 0);
    assert!(
        server
            .delivered
            .recv_timeout(Duration::from_millis(300))
            .is_err()
    );
}

#[test]
fn starttls_required_fails_on_a_name_mismatch() {
    let server = StartTlsServer::start("127.0.30.4");
    let report = run_connection(
        server.addr,
        "other.name.test",
        tls_config("required", Some(&server.ca_pem)),
        vec![tx(&["someone@y.example"], 0)],
        Duration::from_secs(30),
    )
    .unwrap();
    match closed_cause(&report) {
        CloseCause::TlsFailed(why) => assert!(
            why.contains("NotValidForName") || why.contains("name"),
            "{why}"
        ),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(accepted(&report), 0);
}

#[test]
fn starttls_opportunistic_encrypts_without_checking_the_certificate() {
    let server = StartTlsServer::start("127.0.30.5");
    let report = run_connection(
        server.addr,
        "whatever.example",
        tls_config("opportunistic", None),
        vec![tx(&["someone@y.example"], 0), tx(&["other@y.example"], 1)],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(report.tls);
    assert_eq!(accepted(&report), 2, "{:?}", report.events);
    assert!(delivered_line(&server).starts_with("DELIVERED tls "));
    assert!(delivered_line(&server).starts_with("DELIVERED tls "));
}

#[test]
fn starttls_disabled_stays_in_plain_text() {
    let server = StartTlsServer::start("127.0.30.6");
    let report = run_connection(
        server.addr,
        "mx.starttls.test",
        tls_config("disabled", None),
        vec![tx(&["someone@y.example"], 0)],
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(!report.tls);
    assert!(report.capabilities.starttls);
    assert_eq!(accepted(&report), 1);
    assert!(delivered_line(&server).starts_with("DELIVERED plain "));
}

#[test]
fn postfix_smtpd_takes_transactions_in_flight_behind_each_other() {
    // Postfix's smtpd offers CHUNKING (smtp-sink here does not) and, with
    // smtpd_forbid_unauth_pipelining, drops clients that pipeline where RFC 2920 forbids it.
    let smtpd = PostfixSmtpd::start("127.0.30.7");
    let mut cfg = SessionConfig::new("client.vmta.test");
    cfg.transactions_in_flight = 4;
    let to: Vec<String> = (0..12)
        .map(|n| {
            if n % 4 == 1 {
                format!("unknown{n}@pipe.test")
            } else {
                format!("u{n}@pipe.test")
            }
        })
        .collect();
    let txs = to
        .iter()
        .enumerate()
        .map(|(n, a)| tx(&[a.as_str()], n))
        .collect();
    let report = run(smtpd.addr, Arc::new(cfg), txs);
    assert!(report.capabilities.chunking && report.capabilities.pipelining);
    assert_eq!(report.messages_sent, 12);
    // They did go out behind each other, as many at once as allowed.
    assert_eq!(report.most_in_flight, 4);
    // One outcome per message, in order: the unknown recipients' transactions fail at RCPT (no
    // valid recipient), the others are accepted, and the session ends with QUIT.
    let outcomes: Vec<bool> = report
        .events
        .iter()
        .filter_map(|e| match e {
            Event::MessageAccepted { .. } => Some(true),
            Event::MessageFailed {
                phase: Phase::Rcpt,
                failure: MessageFailure::NoValidRecipients,
            } => Some(false),
            Event::MessageFailed { .. } => panic!("unexpected failure: {e:?}"),
            _ => None,
        })
        .collect();
    let want: Vec<bool> = (0..12).map(|n| n % 4 != 1).collect();
    assert_eq!(outcomes, want, "{:#?}", report.events);
    let rejected = count(
        &report,
        |e| matches!(e, Event::RcptRejected { reply, .. } if reply.code == 554),
    );
    assert_eq!(rejected, 3);
    assert_eq!(closed_cause(&report), CloseCause::Quit);
    // Postfix saw no improper pipelining and passed the nine accepted messages on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let sent = loop {
        let log = smtpd.log();
        assert!(!log.contains("improper command pipelining"), "{log}");
        let sent = log.matches("status=sent").count();
        if sent >= 9 || std::time::Instant::now() > deadline {
            break sent;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sent, 9, "{}", smtpd.log());
}
