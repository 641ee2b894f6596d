//! A full SMTP transaction in memory: vmta's client session against a minimal in-memory sans-IO
//! server, 2 KiB body, PIPELINING+CHUNKING and PIPELINING+DATA. One iteration = one message on an
//! established connection (MAIL, RCPT, body, end of data, replies parsed, events drained).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::Instant;
use vmta::smtp::{Envelope, Event, Recipient, Session, SessionConfig, Transaction};

/// A minimal server: answers each command line, counts BDAT bytes, finds the end of DATA.
struct MemoryServer {
    chunking: bool,
    inbuf: Vec<u8>,
    bdat_left: usize,
    in_data: bool,
    out: Vec<u8>,
}

impl MemoryServer {
    fn new(chunking: bool) -> MemoryServer {
        MemoryServer {
            chunking,
            inbuf: Vec::new(),
            bdat_left: 0,
            in_data: false,
            out: b"220 mem.example ESMTP\r\n".to_vec(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.inbuf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            let buf = &self.inbuf[pos..];
            if self.bdat_left > 0 {
                let n = self.bdat_left.min(buf.len());
                self.bdat_left -= n;
                pos += n;
                if self.bdat_left == 0 {
                    self.out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
                }
                if n == 0 {
                    break;
                }
                continue;
            }
            if self.in_data {
                match memchr::memmem::find(buf, b"\r\n.\r\n") {
                    Some(p) => {
                        pos += p + 5;
                        self.in_data = false;
                        self.out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
                        continue;
                    }
                    None => break,
                }
            }
            let Some(lf) = memchr::memchr(b'\n', buf) else {
                break;
            };
            let line = &buf[..lf + 1];
            pos += lf + 1;
            match &line[..4] {
                b"EHLO" => {
                    if self.chunking {
                        self.out.extend_from_slice(
                            b"250-mem.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
                        );
                    } else {
                        self.out.extend_from_slice(
                            b"250-mem.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
                        );
                    }
                }
                b"MAIL" => self.out.extend_from_slice(b"250 2.1.0 Ok\r\n"),
                b"RCPT" => self.out.extend_from_slice(b"250 2.1.5 Ok\r\n"),
                b"DATA" => {
                    self.in_data = true;
                    self.out
                        .extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                }
                b"BDAT" => {
                    let text = std::str::from_utf8(&line[5..]).unwrap();
                    self.bdat_left = text.split(' ').next().unwrap().trim().parse().unwrap();
                }
                b"QUIT" => self.out.extend_from_slice(b"221 2.0.0 Bye\r\n"),
                _ => self.out.extend_from_slice(b"502 5.5.2 Error\r\n"),
            }
        }
        self.inbuf.drain(..pos);
    }
}

fn body_2k() -> Vec<u8> {
    let mut b = b"From: sender@x.example\r\nTo: rcpt@y.example\r\nSubject: benchmark\r\nMessage-ID: <1@x.example>\r\n\r\n".to_vec();
    while b.len() < 2048 {
        b.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n",
        );
    }
    b
}

/// One established connection and a reusable message.
struct Pair {
    session: Session,
    server: MemoryServer,
    wire: Vec<u8>,
    tx: Transaction,
    now: Instant,
}

impl Pair {
    fn new(chunking: bool) -> Pair {
        let now = Instant::now();
        let session = Session::new(
            Arc::new(SessionConfig::new("client.example")),
            "mem.example",
            now,
        );
        let tx = Transaction {
            envelope: Envelope {
                mail_from: "sender@x.example".into(),
                recipients: vec![Recipient::new("rcpt@y.example")],
                ..Envelope::default()
            },
            body: Arc::new(body_2k()),
            crlf_clean: false,
        };
        let mut p = Pair {
            session,
            server: MemoryServer::new(chunking),
            wire: Vec::with_capacity(8192),
            tx,
            now,
        };
        while !p.session.is_ready() {
            p.exchange();
            while p.session.poll_event().is_some() {}
        }
        p
    }

    /// Moves bytes both ways once.
    fn exchange(&mut self) {
        let out = std::mem::take(&mut self.server.out);
        self.session.handle_input(self.now, &out);
        self.server.out = out;
        self.server.out.clear();
        self.wire.clear();
        self.session.poll_transmit(self.now, &mut self.wire);
        self.server.feed(&self.wire);
    }

    /// Sends one message and runs the exchange until its outcome.
    fn one_message(&mut self) -> bool {
        self.session.send(self.now, self.tx.clone()).unwrap();
        loop {
            self.wire.clear();
            self.session.poll_transmit(self.now, &mut self.wire);
            self.server.feed(&self.wire);
            let out = std::mem::take(&mut self.server.out);
            self.session.handle_input(self.now, &out);
            self.server.out = out;
            self.server.out.clear();
            while let Some(e) = self.session.poll_event() {
                match e {
                    Event::MessageAccepted { .. } => return true,
                    Event::MessageFailed { .. } | Event::Closed(_) => return false,
                    _ => {}
                }
            }
        }
    }
}

fn transaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("transaction");
    g.throughput(Throughput::Elements(1));
    for (name, chunking) in [
        ("pipelining_chunking_2k", true),
        ("pipelining_data_2k", false),
    ] {
        let mut pair = Pair::new(chunking);
        assert!(pair.one_message(), "the in-memory transaction must succeed");
        g.bench_function(name, |b| b.iter(|| assert!(pair.one_message())));
    }
    g.finish();
}

criterion_group!(benches, transaction);
criterion_main!(benches);
