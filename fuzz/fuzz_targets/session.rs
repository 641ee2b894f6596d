//! A client session fed arbitrary server bytes in arbitrary pieces, with time jumps: it must never
//! panic, must end in a clean state or keep going, must keep its buffers bounded, and must report
//! exactly one outcome for every message handed to it (up to four in flight at once).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmta::smtp::{Credentials, Envelope, Event, Recipient, Session, SessionConfig, Transaction};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let mut cfg = SessionConfig::new("fuzz.example");
    cfg.pipelining = flags & 1 != 0;
    cfg.chunking = flags & 2 != 0;
    cfg.transactions_in_flight = 1 + ((flags >> 5) & 3) as usize;
    // Half the inputs start with the window open, half grow it from one.
    cfg.initial_in_flight = if flags & 128 != 0 {
        cfg.transactions_in_flight
    } else {
        1
    };
    if flags & 4 != 0 {
        cfg.auth = Some(Credentials {
            username: "u".into(),
            password: "p".into(),
        });
        cfg.allow_plaintext_auth = flags & 8 != 0;
    }
    let mut now = Instant::now();
    let mut s = Session::new(Arc::new(cfg), "mx.example", now);
    let tx = Transaction {
        envelope: Envelope {
            mail_from: "a@x.example".into(),
            recipients: vec![Recipient::new("b@y.example"), Recipient::new("c@y.example")],
            eight_bit: flags & 16 != 0,
            ..Envelope::default()
        },
        body: Arc::new(b"Subject: x\r\n\r\n.body\nline\r\n".to_vec()),
        crlf_clean: false,
    };
    let mut out = Vec::new();
    let mut rest = &data[1..];
    let mut sent = 0;
    let mut outcomes = 0;
    let mut count = |e: Event| {
        if matches!(
            e,
            Event::MessageAccepted { .. } | Event::MessageFailed { .. }
        ) {
            outcomes += 1;
        }
    };
    while !rest.is_empty() {
        // Each piece: one length byte, then that many bytes of server input.
        let n = (rest[0] as usize % 64).min(rest.len() - 1);
        let piece = &rest[1..1 + n];
        rest = &rest[1 + n..];
        if rest.first() == Some(&0xff) {
            now += Duration::from_secs(700);
            if let Some(t) = s.poll_timeout() {
                if t <= now {
                    s.handle_timeout(now);
                }
            }
        }
        s.handle_input(now, piece);
        while let Some(e) = s.poll_event() {
            count(e);
        }
        while s.is_ready() && sent < 6 {
            s.send(now, tx.clone()).unwrap();
            sent += 1;
        }
        out.clear();
        s.poll_transmit(now, &mut out);
        assert!(out.len() < 1 << 20);
    }
    s.handle_eof(now);
    while let Some(e) = s.poll_event() {
        count(e);
    }
    assert!(s.is_closed());
    assert_eq!(outcomes, sent, "one outcome per message");
});
