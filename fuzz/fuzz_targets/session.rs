//! A client session fed arbitrary server bytes in arbitrary pieces, with time jumps: it must never
//! panic, must end in a clean state or keep going, and must keep its buffers bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmta::smtp::{Credentials, Envelope, Recipient, Session, SessionConfig, Transaction};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let mut cfg = SessionConfig::new("fuzz.example");
    cfg.pipelining = flags & 1 != 0;
    cfg.chunking = flags & 2 != 0;
    if flags & 4 != 0 {
        cfg.auth = Some(Credentials { username: "u".into(), password: "p".into() });
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
        while s.poll_event().is_some() {}
        if s.is_ready() && sent < 3 {
            s.send(now, tx.clone()).unwrap();
            sent += 1;
        }
        out.clear();
        s.poll_transmit(now, &mut out);
        assert!(out.len() < 1 << 20);
    }
    s.handle_eof(now);
    while s.poll_event().is_some() {}
    assert!(s.is_closed());
});
