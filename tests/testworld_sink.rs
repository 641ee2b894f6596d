//! vmta's built-in SMTP sink (the test world of `vmta demo` and `vmta bench`) from the client side,
//! on 127.0.60.0/24: a raw client that writes byte by byte, vmta's own session (PIPELINING, CHUNKING,
//! STARTTLS), and each fault behaviour checked by its replies and by the sink's counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vmta::client::run_connection;
use vmta::smtp::{Envelope, Event, Recipient, SessionConfig, Tls, TlsSettings, Transaction};
use vmta_testworld::sink::{Behaviour, Sink};

fn sink(last: u8, behaviour: Behaviour) -> Sink {
    Sink::start_with(SocketAddr::from(([127, 0, 60, last], 0)), behaviour).expect("sink starts")
}

/// A client that reads whole replies.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// One whole reply, lines joined; empty at end of stream.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            let last = line.as_bytes().get(3) == Some(&b' ');
            all.push_str(&line);
            if last {
                return all;
            }
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.writer.write_all(data).unwrap();
    }

    /// Writes one byte per write call.
    fn send_bytewise(&mut self, data: &[u8]) {
        for b in data {
            self.writer.write_all(std::slice::from_ref(b)).unwrap();
        }
    }

    fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

fn tx(to: &[&str], n: usize) -> Transaction {
    Transaction {
        envelope: Envelope {
            mail_from: "sender@x.vmta.test".into(),
            recipients: to.iter().map(|a| Recipient::new(*a)).collect(),
            ..Envelope::default()
        },
        body: Arc::new(
            format!("Subject: {n}\r\n\r\n.a line with a dot\r\nbody {n}\r\n").into_bytes(),
        ),
        crlf_clean: false,
    }
}

fn accepted(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::MessageAccepted { .. }))
        .count()
}

#[test]
fn data_and_bdat_written_byte_by_byte_are_received_and_counted() {
    let s = sink(1, Behaviour::default());
    let mut c = Raw::connect(s.addr());
    assert!(c.reply().starts_with("220 "));
    let ehlo = c.command("EHLO client.vmta.test");
    assert!(
        ehlo.contains("250-PIPELINING") && ehlo.contains("CHUNKING"),
        "{ehlo}"
    );
    assert!(
        !ehlo.contains("STARTTLS"),
        "not offered unless asked: {ehlo}"
    );
    // A pipelined DATA transaction, every byte in its own write; the body has a dot-stuffed line and
    // an end marker that arrives split.
    c.send_bytewise(b"MAIL FROM:<a@x.vmta.test>\r\nRCPT TO:<b@y.vmta.test>\r\nDATA\r\n");
    assert!(c.reply().starts_with("250 "));
    assert!(c.reply().starts_with("250 "));
    assert!(c.reply().starts_with("354 "));
    c.send_bytewise(b"Subject: x\r\n\r\n..dot\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    // An empty body: the end marker right after DATA.
    c.send(b"MAIL FROM:<a@x.vmta.test>\r\nRCPT TO:<b@y.vmta.test>\r\nDATA\r\n");
    for _ in 0..2 {
        c.reply();
    }
    assert!(c.reply().starts_with("354 "));
    c.send(b".\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    // BDAT in two chunks, the second split byte by byte with the next command behind it.
    c.send(b"MAIL FROM:<a@x.vmta.test>\r\nRCPT TO:<b@y.vmta.test>\r\nRCPT TO:<c@y.vmta.test>\r\nBDAT 5\r\nhello");
    for _ in 0..3 {
        assert!(c.reply().starts_with("250 "));
    }
    assert!(c.reply().contains("chunk"));
    c.send_bytewise(b"BDAT 7 LAST\r\n world!NOOP\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued"));
    assert!(c.reply().starts_with("250 "), "NOOP after the chunk");
    assert!(c.command("QUIT").starts_with("221"));
    let k = s.counters();
    assert_eq!(k.messages.load(Ordering::Relaxed), 3);
    assert_eq!(k.recipients.load(Ordering::Relaxed), 4);
    // "Subject: x\r\n\r\n..dot\r\n" is 21 bytes as sent (stuffing kept), 0, then 12.
    assert_eq!(k.bytes.load(Ordering::Relaxed), 21 + 12);
    assert_eq!(k.max_messages_per_second(), 3);
}

#[test]
fn vmta_sessions_deliver_with_pipelining_chunking_and_starttls() {
    let s = sink(
        2,
        Behaviour {
            tls: true,
            ..Behaviour::default()
        },
    );
    for chunking in [true, false] {
        let settings = TlsSettings::new(None).unwrap();
        let mut cfg = SessionConfig::new("client.vmta.test");
        cfg.tls = Tls::Opportunistic(settings.opportunistic());
        cfg.chunking = chunking;
        let txs = (0..5)
            .map(|n| {
                tx(
                    &["a@y.vmta.test", "unknown7@y.vmta.test", "full@y.vmta.test"],
                    n,
                )
            })
            .collect();
        let report = run_connection(
            s.addr(),
            "mx.vmta.test",
            Arc::new(cfg),
            txs,
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(report.tls, "STARTTLS was used");
        assert!(report.capabilities.chunking);
        assert_eq!(accepted(&report.events), 5, "{:#?}", report.events);
        let refusals: Vec<String> = report
            .events
            .iter()
            .filter_map(|e| match e {
                Event::RcptRejected { reply, .. } => Some(reply.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(refusals.len(), 10, "{refusals:?}");
        assert!(refusals.iter().any(|r| r.starts_with("550 5.1.1")));
        assert!(refusals.iter().any(|r| r.starts_with("552 5.2.2")));
    }
    let k = s.counters();
    assert_eq!(k.tls_sessions.load(Ordering::Relaxed), 2);
    assert_eq!(k.messages.load(Ordering::Relaxed), 10);
    assert_eq!(k.refused.load(Ordering::Relaxed), 20);
    assert_eq!(k.max_messages_per_connection.load(Ordering::Relaxed), 5);
}

#[test]
fn greylisting_refuses_the_first_attempt_until_the_delay_has_passed() {
    let s = sink(
        3,
        Behaviour {
            greylist: Some(Duration::from_millis(600)),
            ..Behaviour::default()
        },
    );
    let mut c = Raw::connect(s.addr());
    c.reply();
    c.command("EHLO c");
    c.command("MAIL FROM:<a@x.vmta.test>");
    assert!(
        c.command("RCPT TO:<b@y.vmta.test>")
            .starts_with("450 4.2.0")
    );
    assert!(
        c.command("RCPT TO:<b@y.vmta.test>")
            .starts_with("450 4.2.0"),
        "still early"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(c.command("RCPT TO:<b@y.vmta.test>").starts_with("250 "));
    // Another sender for the same recipient is a new pair.
    c.command("RSET");
    c.command("MAIL FROM:<other@x.vmta.test>");
    assert!(c.command("RCPT TO:<b@y.vmta.test>").starts_with("450 "));
    assert_eq!(s.counters().greylisted.load(Ordering::Relaxed), 3);
}

#[test]
fn a_connection_limit_answers_421_beyond_it() {
    let s = sink(
        4,
        Behaviour {
            max_connections: 2,
            ..Behaviour::default()
        },
    );
    let mut a = Raw::connect(s.addr());
    let mut b = Raw::connect(s.addr());
    assert!(a.reply().starts_with("220"));
    assert!(b.reply().starts_with("220"));
    let mut third = Raw::connect(s.addr());
    assert!(third.reply().starts_with("421 4.7.0"));
    assert_eq!(third.reply(), "", "closed after the 421");
    assert!(a.command("QUIT").starts_with("221"));
    drop(a);
    // The slot is free again once the sink has seen the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.counters().current_connections.load(Ordering::Relaxed) > 1 && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut fourth = Raw::connect(s.addr());
    assert!(fourth.reply().starts_with("220"));
    let k = s.counters();
    assert_eq!(k.refused_connections.load(Ordering::Relaxed), 1);
    assert_eq!(k.peak_connections.load(Ordering::Relaxed), 2);
    drop(b);
}

#[test]
fn a_message_rate_limit_answers_421_and_closes() {
    let s = sink(
        5,
        Behaviour {
            max_messages_per_second: 3,
            ..Behaviour::default()
        },
    );
    let cfg = Arc::new(SessionConfig::new("client.vmta.test"));
    let txs = (0..10).map(|n| tx(&["a@y.vmta.test"], n)).collect();
    let report = run_connection(s.addr(), "mx", cfg, txs, Duration::from_secs(30)).unwrap();
    let closed_421 = report
        .events
        .iter()
        .any(|e| matches!(e, Event::Closed(c) if format!("{c:?}").contains("421")));
    assert!(closed_421, "{:#?}", report.events);
    let k = s.counters();
    assert!(k.throttled.load(Ordering::Relaxed) >= 1);
    let got = k.messages.load(Ordering::Relaxed);
    assert!((3..10).contains(&got), "{got} accepted");
    assert!(k.max_messages_per_second() <= 3);
}

#[test]
fn shares_of_failures_by_phase_latency_and_dropped_connections() {
    let temp = sink(
        6,
        Behaviour {
            rcpt_tempfail_permille: 1000,
            latency: Duration::from_millis(150),
            ..Behaviour::default()
        },
    );
    let started = Instant::now();
    let mut c = Raw::connect(temp.addr());
    c.reply();
    c.command("EHLO c");
    c.command("MAIL FROM:<a@x.vmta.test>");
    assert!(
        c.command("RCPT TO:<b@y.vmta.test>")
            .starts_with("451 4.3.0")
    );
    // Four replies, each held for the latency.
    assert!(started.elapsed() >= Duration::from_millis(4 * 150));
    assert_eq!(temp.counters().tempfailed.load(Ordering::Relaxed), 1);

    let spam = sink(
        7,
        Behaviour {
            data_permfail_permille: 1000,
            ..Behaviour::default()
        },
    );
    let cfg = Arc::new(SessionConfig::new("client.vmta.test"));
    let report = run_connection(
        spam.addr(),
        "mx",
        cfg,
        vec![tx(&["a@y.vmta.test"], 0)],
        Duration::from_secs(10),
    )
    .unwrap();
    let failed = report.events.iter().find_map(|e| match e {
        Event::MessageFailed { failure, .. } => Some(format!("{failure:?}")),
        _ => None,
    });
    assert!(
        failed.is_some_and(|f| f.contains("554")),
        "{:#?}",
        report.events
    );
    assert_eq!(spam.counters().messages.load(Ordering::Relaxed), 0);

    let dropping = sink(
        8,
        Behaviour {
            drop_permille: 1000,
            ..Behaviour::default()
        },
    );
    let mut d = TcpStream::connect(dropping.addr()).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        d.read(&mut buf).unwrap_or(0),
        0,
        "closed without a greeting"
    );
    assert_eq!(
        dropping
            .counters()
            .dropped_connections
            .load(Ordering::Relaxed),
        1
    );
}
