//! Data-driven transcript tests of the SMTP client session.
//!
//! Each file in `tests/transcripts/` is a conversation:
//!
//! ```text
//! # comment
//! config pipelining=off chunking=on helo=client.example auth=user:pass plaintext-auth=on transactions=3
//! send from=a@x to=b@y to=c@y body="Subject: t\r\n\r\nhi\r\n" eight-bit smtputf8 notify=success,failure orcpt=b@y ret=hdrs envid=ID
//! S: 220 server greeting            (server bytes; consecutive S lines arrive in one read)
//! C: EHLO client.example            (client bytes expected, in order)
//! E: ready                          (an event expected, in order)
//! time +300                         (advance the clock by seconds and handle timeouts)
//! eof | quit | abort                (server closes / client quits / client aborts)
//! window 2                          (transactions allowed in flight now)
//! not-ready                         (the session takes no message now)
//! pipelining-failed yes|no          (whether the session fell back to one transaction at a time)
//! ```
//!
//! `transactions=N` sets both the most transactions in flight and the window a session starts with
//! (the wire format of pipelined transactions from the first message); `initial=N` after it sets the
//! starting window alone, to show the window growing.
//!
//! Each transcript is replayed once whole and once for every byte position of every server read, with
//! that read split in two at that position: the client output and the events must be the same.

mod common;

use common::unescape;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmta::smtp::session::{DsnNotify, DsnRet};
use vmta::smtp::{
    Credentials, Envelope, Event, MessageFailure, Recipient, Session, SessionConfig, Transaction,
};

#[derive(Debug, Clone)]
enum Step {
    Server(Vec<u8>),
    Client(Vec<u8>),
    Event(String),
    Send(Transaction),
    Time(u64),
    Eof,
    Quit,
    Abort,
    Window(usize),
    NotReady,
    PipeliningFailed(bool),
}

/// Splits `key=value key="quoted value" flag` words.
fn words(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        value.push(c);
                        value.push(chars.next().unwrap());
                    } else if c == '"' {
                        break;
                    } else {
                        value.push(c);
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((key, value));
    }
    out
}

fn parse_config(line: &str, cfg: &mut SessionConfig) {
    for (k, v) in words(line) {
        match k.as_str() {
            "pipelining" => cfg.pipelining = v == "on",
            "chunking" => cfg.chunking = v == "on",
            "helo" => cfg.helo_name = v,
            "auth" => {
                let (u, p) = v.split_once(':').unwrap();
                cfg.auth = Some(Credentials {
                    username: u.into(),
                    password: p.into(),
                });
            }
            "plaintext-auth" => cfg.allow_plaintext_auth = v == "on",
            "idle" => cfg.timeouts.idle = Duration::from_secs(v.parse().unwrap()),
            "transactions" => {
                cfg.transactions_in_flight = v.parse().unwrap();
                cfg.initial_in_flight = cfg.transactions_in_flight;
            }
            "initial" => cfg.initial_in_flight = v.parse().unwrap(),
            other => panic!("unknown config key {other}"),
        }
    }
}

fn parse_send(line: &str) -> Transaction {
    let mut env = Envelope::default();
    let mut body = Vec::new();
    for (k, v) in words(line) {
        match k.as_str() {
            "from" => env.mail_from = v,
            "to" => env.recipients.push(Recipient::new(v)),
            "body" => body = unescape(&v),
            "eight-bit" => env.eight_bit = true,
            "smtputf8" => env.smtputf8 = true,
            "notify" => {
                let mut n = DsnNotify::default();
                for f in v.split(',') {
                    match f {
                        "success" => n.success = true,
                        "failure" => n.failure = true,
                        "delay" => n.delay = true,
                        "never" => {}
                        other => panic!("bad notify {other}"),
                    }
                }
                for r in &mut env.recipients {
                    r.notify = Some(n);
                }
            }
            "orcpt" => {
                for r in &mut env.recipients {
                    r.orcpt = Some(v.clone());
                }
            }
            "ret" => {
                env.dsn_ret = Some(if v == "full" {
                    DsnRet::Full
                } else {
                    DsnRet::Headers
                })
            }
            "envid" => env.dsn_envid = Some(v),
            other => panic!("unknown send key {other}"),
        }
    }
    Transaction {
        envelope: env,
        body: Arc::new(body),
        crlf_clean: false,
    }
}

fn parse(text: &str) -> (SessionConfig, Vec<Step>) {
    let mut cfg = SessionConfig::new("client.example");
    let mut steps: Vec<Step> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("S: ").or(line.strip_prefix("S:")) {
            let mut bytes = unescape(rest);
            bytes.extend_from_slice(b"\r\n");
            if let Some(Step::Server(prev)) = steps.last_mut() {
                prev.extend_from_slice(&bytes);
            } else {
                steps.push(Step::Server(bytes));
            }
        } else if let Some(rest) = line.strip_prefix("RAW-S: ") {
            steps.push(Step::Server(unescape(rest)));
        } else if let Some(rest) = line.strip_prefix("C: ").or(line.strip_prefix("C:")) {
            let mut bytes = unescape(rest);
            bytes.extend_from_slice(b"\r\n");
            steps.push(Step::Client(bytes));
        } else if let Some(rest) = line.strip_prefix("E: ") {
            steps.push(Step::Event(rest.trim().to_string()));
        } else if let Some(rest) = line.strip_prefix("config ") {
            parse_config(rest, &mut cfg);
        } else if let Some(rest) = line.strip_prefix("send ") {
            steps.push(Step::Send(parse_send(rest)));
        } else if let Some(rest) = line.strip_prefix("time +") {
            steps.push(Step::Time(rest.trim().parse().unwrap()));
        } else if line.trim() == "eof" {
            steps.push(Step::Eof);
        } else if line.trim() == "quit" {
            steps.push(Step::Quit);
        } else if line.trim() == "abort" {
            steps.push(Step::Abort);
        } else if let Some(rest) = line.strip_prefix("window ") {
            steps.push(Step::Window(rest.trim().parse().unwrap()));
        } else if line.trim() == "not-ready" {
            steps.push(Step::NotReady);
        } else if let Some(rest) = line.strip_prefix("pipelining-failed ") {
            steps.push(Step::PipeliningFailed(rest.trim() == "yes"));
        } else {
            panic!("cannot read transcript line {line:?}");
        }
    }
    (cfg, steps)
}

fn describe_failure(f: &MessageFailure) -> String {
    match f {
        MessageFailure::Reply(r) => r.to_string(),
        MessageFailure::NoValidRecipients => "no-valid-recipients".into(),
        MessageFailure::TooLarge { limit, size } => format!("too-large {size}>{limit}"),
        MessageFailure::Smtputf8Unsupported => "smtputf8-unsupported".into(),
        MessageFailure::SessionClosed(c) => format!("closed {c}"),
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Ready => "ready".into(),
        Event::TlsEstablished { .. } => "tls".into(),
        Event::RcptAccepted { index, reply } => format!("rcpt-ok {index} {reply}"),
        Event::RcptRejected { index, reply } => format!("rcpt-rejected {index} {reply}"),
        Event::MessageAccepted { reply } => format!("accepted {reply}"),
        Event::MessageFailed { phase, failure } => {
            format!("failed {phase} {}", describe_failure(failure))
        }
        Event::Closed(cause) => format!("closed {cause}"),
    }
}

/// Runs a transcript; `split` = (index of the server read, byte position) to split one read in two.
fn run(name: &str, cfg: &SessionConfig, steps: &[Step], split: Option<(usize, usize)>) {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = Session::new(Arc::new(cfg.clone()), "mx.example", now);
    let mut out = Vec::new();
    let mut expected_out = Vec::new();
    let mut server_reads = 0;
    let ctx = |what: &str| format!("{name} (split {split:?}): {what}");
    let drain = |s: &mut Session, now: Instant, out: &mut Vec<u8>, events: &mut Vec<String>| {
        while let Some(e) = s.poll_event() {
            events.push(describe(&e));
        }
        s.poll_transmit(now, out);
        while let Some(e) = s.poll_event() {
            events.push(describe(&e));
        }
    };
    let mut events: Vec<String> = Vec::new();
    let mut event_cursor = 0;
    for step in steps {
        match step {
            Step::Server(bytes) => {
                // Output so far must be exactly what was expected before the server speaks.
                drain(&mut s, now, &mut out, &mut events);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&expected_out),
                    "{}",
                    ctx("client output before server read")
                );
                match split {
                    Some((read, pos)) if read == server_reads => {
                        s.handle_input(now, &bytes[..pos]);
                        drain(&mut s, now, &mut out, &mut events);
                        s.handle_input(now, &bytes[pos..]);
                    }
                    _ => s.handle_input(now, bytes),
                }
                server_reads += 1;
            }
            Step::Client(bytes) => expected_out.extend_from_slice(bytes),
            Step::Event(want) => {
                drain(&mut s, now, &mut out, &mut events);
                let got = events.get(event_cursor).cloned();
                assert_eq!(
                    got.as_deref(),
                    Some(want.as_str()),
                    "{}",
                    ctx(&format!("event {event_cursor}, all events {events:?}"))
                );
                event_cursor += 1;
            }
            Step::Send(tx) => {
                drain(&mut s, now, &mut out, &mut events);
                assert!(s.is_ready(), "{}", ctx("session not ready for send"));
                s.send(now, tx.clone()).unwrap();
            }
            Step::Time(secs) => {
                drain(&mut s, now, &mut out, &mut events);
                now += Duration::from_secs(*secs);
                if let Some(t) = s.poll_timeout()
                    && t <= now
                {
                    s.handle_timeout(now);
                }
            }
            Step::Eof => s.handle_eof(now),
            Step::Quit => s.quit(now),
            Step::Abort => s.abort(now),
            Step::Window(n) => {
                drain(&mut s, now, &mut out, &mut events);
                assert_eq!(s.in_flight_window(), *n, "{}", ctx("window"));
            }
            Step::NotReady => {
                drain(&mut s, now, &mut out, &mut events);
                assert!(!s.is_ready(), "{}", ctx("session ready"));
            }
            Step::PipeliningFailed(want) => {
                drain(&mut s, now, &mut out, &mut events);
                assert_eq!(s.pipelining_failed(), *want, "{}", ctx("pipelining failed"));
            }
        }
    }
    drain(&mut s, now, &mut out, &mut events);
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expected_out),
        "{}",
        ctx("client output at end")
    );
    assert_eq!(
        events.len(),
        event_cursor,
        "{}",
        ctx(&format!(
            "unexpected extra events {:?}",
            &events[event_cursor..]
        ))
    );
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "transcripts missing in {}",
        dir.display()
    );
    let mut runs = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let (cfg, steps) = parse(&text);
        run(&name, &cfg, &steps, None);
        runs += 1;
        let reads: Vec<usize> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Server(b) => Some(b.len()),
                _ => None,
            })
            .collect();
        for (i, len) in reads.iter().enumerate() {
            for pos in 0..=*len {
                run(&name, &cfg, &steps, Some((i, pos)));
                runs += 1;
            }
        }
    }
    eprintln!("{} transcripts, {runs} replays", files.len());
}
