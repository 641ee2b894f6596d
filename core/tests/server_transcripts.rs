//! Data-driven transcript tests of the SMTP server session.
//!
//! Each file in `tests/server_transcripts/` is a conversation:
//!
//! ```text
//! # comment
//! config max-size=100 max-recipients=2 max-line=64 max-errors=5 batch=100 idle=300 data=180 message=600 pipelining=off chunking=off smtputf8=off starttls=on auth=on auth-required=on implicit-tls=on
//! S: 220 mx.test ESMTP vmta      (server bytes expected, in order; CRLF added)
//! C: EHLO client.example         (client bytes; consecutive C lines arrive in one read; CRLF added)
//! RAW-C: bytes                   (client bytes without a CRLF added; joins the read before it)
//! E: helo client.example esmtp   (an event expected, in order)
//! A: 250 2.1.0 Ok                (the caller answers the pending decision)
//! time +300                      (advance the clock by seconds and handle timeouts)
//! eof | shutdown                 (the client closes / the server shuts down)
//! tls TLSv1.3 CIPHER             (the driver's TLS handshake completed)
//! ```
//!
//! Each transcript is replayed once whole and once for every byte position of every client read,
//! with that read split in two at that position: the server output and the events must be the same.

mod common;

use common::unescape;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmta::smtp::EnhancedCode;
use vmta::smtp::Reply;
use vmta::smtp::server::{BodyType, Event, ServerConfig, Session, TlsInfo};

#[derive(Debug, Clone)]
enum Step {
    Client(Vec<u8>),
    Answer(Reply),
    Time(u64),
    Eof,
    Shutdown,
    Tls(TlsInfo),
}

fn escape(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

fn render(e: &Event) -> String {
    match e {
        Event::Helo { name, esmtp } => {
            format!("helo {name} {}", if *esmtp { "esmtp" } else { "smtp" })
        }
        Event::Mail(m) => {
            let mut s = format!("mail <{}>", m.sender);
            if let Some(n) = m.size {
                s.push_str(&format!(" size={n}"));
            }
            if m.body == BodyType::EightBitMime {
                s.push_str(" body=8bitmime");
            }
            if m.smtputf8 {
                s.push_str(" smtputf8");
            }
            s
        }
        Event::Rcpt { recipient } => format!("rcpt <{recipient}>"),
        Event::Message(m) => format!(
            "message from=<{}> to={} helo={}{}{} data=\"{}\"",
            m.mail.sender,
            m.recipients.join(","),
            m.helo,
            if m.chunked { " chunked" } else { "" },
            if m.tls.is_some() || m.auth.is_some() {
                format!(
                    " with={} auth={}",
                    m.protocol(),
                    m.auth.as_deref().unwrap_or("-")
                )
            } else {
                String::new()
            },
            escape(&m.data)
        ),
        Event::StartTls => "starttls".into(),
        Event::Auth {
            identity,
            authzid,
            password,
        } => format!("auth {identity} {password} authzid={authzid}"),
        Event::Reset => "reset".into(),
        Event::Closed(c) => format!("closed {}", c.as_str()),
    }
}

struct Transcript {
    config: ServerConfig,
    implicit_tls: bool,
    steps: Vec<Step>,
    server: Vec<u8>,
    events: Vec<String>,
}

fn parse(text: &str) -> Transcript {
    let mut config = ServerConfig::new("mx.test");
    let mut implicit_tls = false;
    let mut steps: Vec<Step> = Vec::new();
    let mut server = Vec::new();
    let mut events = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let client = |steps: &mut Vec<Step>, bytes: Vec<u8>| {
            if let Some(Step::Client(prev)) = steps.last_mut() {
                prev.extend_from_slice(&bytes);
            } else {
                steps.push(Step::Client(bytes));
            }
        };
        if let Some(rest) = line.strip_prefix("S: ").or(line.strip_prefix("S:")) {
            server.extend_from_slice(&unescape(rest));
            server.extend_from_slice(b"\r\n");
        } else if let Some(rest) = line.strip_prefix("C: ").or(line.strip_prefix("C:")) {
            let mut b = unescape(rest);
            b.extend_from_slice(b"\r\n");
            client(&mut steps, b);
        } else if let Some(rest) = line.strip_prefix("RAW-C: ") {
            client(&mut steps, unescape(rest));
        } else if let Some(rest) = line.strip_prefix("E: ") {
            events.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("A: ") {
            let (code, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let code: u16 = code.parse().unwrap();
            let (enhanced, text) = match EnhancedCode::parse_prefix(rest.as_bytes()) {
                Some((e, n)) => (Some(e), rest[n..].trim_start()),
                None => (None, rest),
            };
            steps.push(Step::Answer(Reply::new(code, enhanced, text)));
        } else if let Some(rest) = line.strip_prefix("time +") {
            steps.push(Step::Time(rest.trim().parse().unwrap()));
        } else if line.trim() == "eof" {
            steps.push(Step::Eof);
        } else if line.trim() == "shutdown" {
            steps.push(Step::Shutdown);
        } else if let Some(rest) = line.strip_prefix("tls ") {
            let (version, cipher) = rest.trim().split_once(' ').unwrap();
            steps.push(Step::Tls(TlsInfo {
                version: version.into(),
                cipher: cipher.into(),
            }));
        } else if let Some(rest) = line.strip_prefix("config ") {
            for w in rest.split_ascii_whitespace() {
                let (k, v) = w.split_once('=').unwrap();
                let n = || v.parse::<u64>().unwrap();
                match k {
                    "max-size" => config.max_message_size = n() as usize,
                    "max-recipients" => config.max_recipients = n() as usize,
                    "max-line" => config.max_line = n() as usize,
                    "max-errors" => config.max_errors = n() as u32,
                    "batch" => config.max_batch = n() as usize,
                    "idle" => config.timeouts.idle = Duration::from_secs(n()),
                    "data" => config.timeouts.data = Duration::from_secs(n()),
                    "message" => config.timeouts.message = Duration::from_secs(n()),
                    "pipelining" => config.pipelining = v == "on",
                    "chunking" => config.chunking = v == "on",
                    "smtputf8" => config.smtputf8 = v == "on",
                    "starttls" => config.starttls = v == "on",
                    "auth" => config.auth = v == "on",
                    "auth-required" => config.auth_required = v == "on",
                    "implicit-tls" => implicit_tls = v == "on",
                    other => panic!("unknown config key {other}"),
                }
            }
        } else {
            panic!("bad transcript line: {line}");
        }
    }
    Transcript {
        config,
        implicit_tls,
        steps,
        server,
        events,
    }
}

/// Replays the transcript; `split` = (client step index, byte position) splits that read in two.
fn replay(t: &Transcript, split: Option<(usize, usize)>) -> (Vec<u8>, Vec<String>) {
    let start = Instant::now();
    let mut now = start;
    let mut s = if t.implicit_tls {
        Session::new_implicit_tls(Arc::new(t.config.clone()), now)
    } else {
        Session::new(Arc::new(t.config.clone()), now)
    };
    let mut out = Vec::new();
    let mut events = Vec::new();
    let drain = |s: &mut Session, now: Instant, out: &mut Vec<u8>, events: &mut Vec<String>| {
        // The driver keeps handling buffered commands (one batch per call), as a listener does.
        loop {
            while let Some(e) = s.poll_event() {
                events.push(render(&e));
            }
            s.poll_transmit(out);
            if s.has_buffered_commands() {
                s.handle_input(now, &[]);
            } else {
                break;
            }
        }
    };
    drain(&mut s, now, &mut out, &mut events);
    for (i, step) in t.steps.iter().enumerate() {
        match step {
            Step::Client(bytes) => {
                let parts: Vec<&[u8]> = match split {
                    Some((si, at)) if si == i => vec![&bytes[..at], &bytes[at..]],
                    _ => vec![&bytes[..]],
                };
                for part in parts {
                    // The driver reads in 4 KiB reads, only while the session wants input.
                    let mut part = part;
                    while !part.is_empty() {
                        // Closed, or negotiating TLS: the rest of the read is not the session's
                        // (a driver hands it to its TLS layer).
                        if s.is_closed() || s.in_tls_handshake() {
                            break;
                        }
                        assert!(s.wants_input(), "the session stopped reading");
                        let n = part.len().min(4096);
                        s.handle_input(now, &part[..n]);
                        part = &part[n..];
                        drain(&mut s, now, &mut out, &mut events);
                    }
                }
            }
            Step::Answer(r) => {
                s.answer(now, r).expect("a decision is pending");
                drain(&mut s, now, &mut out, &mut events);
            }
            Step::Time(secs) => {
                now += Duration::from_secs(*secs);
                if s.poll_timeout().is_some_and(|at| now >= at) {
                    s.handle_timeout(now);
                }
                drain(&mut s, now, &mut out, &mut events);
            }
            Step::Eof => {
                s.handle_eof(now);
                drain(&mut s, now, &mut out, &mut events);
            }
            Step::Shutdown => {
                s.shutdown(now);
                drain(&mut s, now, &mut out, &mut events);
            }
            Step::Tls(info) => {
                s.tls_established(now, info.clone());
                drain(&mut s, now, &mut out, &mut events);
            }
        }
    }
    (out, events)
}

#[test]
fn server_transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server_transcripts");
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
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let t = parse(&std::fs::read_to_string(&file).unwrap());
        let (out, events) = replay(&t, None);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&t.server),
            "{name}: server output"
        );
        assert_eq!(events, t.events, "{name}: events");
        for (i, step) in t.steps.iter().enumerate() {
            if let Step::Client(bytes) = step {
                for at in 1..bytes.len() {
                    let (o, e) = replay(&t, Some((i, at)));
                    assert_eq!(o, out, "{name}: output differs with read {i} split at {at}");
                    assert_eq!(
                        e, events,
                        "{name}: events differ with read {i} split at {at}"
                    );
                }
            }
        }
    }
}
