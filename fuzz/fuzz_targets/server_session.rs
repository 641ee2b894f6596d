//! A server session (STARTTLS, AUTH and implicit TLS on or off) fed arbitrary client bytes in
//! arbitrary pieces, with time jumps, answers of every class, TLS handshakes completing, end of
//! stream and shutdown: it must never panic, must hand over no message larger than its
//! limit or with more recipients than allowed, must ask at most one decision at a time, and must say
//! `Closed` once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmta::smtp::Reply;
use vmta::smtp::server::{Event, ServerConfig, Session, TlsInfo};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let flags2 = data[1];
    let mut cfg = ServerConfig::new("mx.fuzz");
    cfg.max_message_size = 64 + (flags as usize & 7) * 256;
    cfg.max_recipients = 1 + (flags as usize >> 3 & 3);
    cfg.max_line = 64 + (flags as usize >> 5 & 1) * 512;
    cfg.max_batch = 1 + (flags as usize >> 6) * 8;
    cfg.pipelining = flags & 0x40 == 0;
    cfg.chunking = flags & 0x80 == 0;
    cfg.starttls = flags2 & 1 != 0;
    cfg.auth = flags2 & 2 != 0;
    cfg.auth_required = flags2 & 4 != 0;
    let cfg = Arc::new(cfg);
    let mut now = Instant::now();
    let mut s = if flags2 & 8 != 0 {
        Session::new_implicit_tls(cfg.clone(), now)
    } else {
        Session::new(cfg.clone(), now)
    };
    let mut out = Vec::new();
    let mut pending = 0usize;
    let mut closed = 0usize;
    let mut rest = &data[2..];
    let check = |s: &mut Session, pending: &mut usize, closed: &mut usize| {
        while let Some(e) = s.poll_event() {
            assert_eq!(*closed, 0, "an event after Closed");
            match e {
                Event::Mail(_) | Event::Rcpt { .. } | Event::Auth { .. } => *pending += 1,
                Event::Message(m) => {
                    *pending += 1;
                    assert!(m.data.len() <= cfg.max_message_size);
                    assert!(!m.recipients.is_empty());
                    assert!(m.recipients.len() <= cfg.max_recipients);
                }
                Event::Closed(_) => *closed += 1,
                Event::Helo { .. } | Event::Reset | Event::StartTls => {}
            }
            assert!(*pending <= 1, "two decisions at once");
        }
    };
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 8 {
            0..=3 => {
                let n = (op as usize / 8 + 1).min(rest.len());
                let (chunk, tail) = rest.split_at(n);
                rest = tail;
                if s.wants_input() {
                    s.handle_input(now, chunk);
                }
            }
            4 => {
                now += Duration::from_secs(u64::from(op / 8) * 20);
                if s.poll_timeout().is_some_and(|at| now >= at) {
                    s.handle_timeout(now);
                }
            }
            5 => {
                let code = [250, 251, 421, 450, 451, 452, 550, 554][(op / 8 % 8) as usize];
                if s.answer(now, &Reply::new(code, None, "x\ny")).is_ok() {
                    pending = pending.saturating_sub(1);
                }
            }
            6 => s.handle_eof(now),
            _ if op & 8 != 0 => s.tls_established(
                now,
                TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                },
            ),
            _ => s.shutdown(now),
        }
        check(&mut s, &mut pending, &mut closed);
        while s.has_buffered_commands() {
            s.handle_input(now, &[]);
            check(&mut s, &mut pending, &mut closed);
        }
        s.poll_transmit(&mut out);
        out.clear();
    }
    assert!(closed <= 1);
});
