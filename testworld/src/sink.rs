//! A multi-threaded SMTP sink: one thread per connection, replies batched per read so pipelined
//! clients get their replies in one write, counters shared through atomics.
//!
//! Server side of RFC 5321 for EHLO/HELO, MAIL, RCPT, DATA (with dot-unstuffing only to find the end),
//! BDAT (RFC 3030), RSET, NOOP and QUIT. A recipient whose local part starts with `unknown` is refused
//! with `550 5.1.1`. Nothing is stored.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a sink has seen.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Messages accepted at the end of data.
    pub messages: AtomicU64,
    /// Recipients accepted in accepted messages.
    pub recipients: AtomicU64,
    /// Recipients refused.
    pub refused: AtomicU64,
    /// Message bytes received.
    pub bytes: AtomicU64,
}

/// A running sink; stops when dropped.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    counters: Arc<SinkCounters>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr) -> io::Result<Sink> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let counters = Arc::new(SinkCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counters.clone(), stop.clone());
        let acceptor = std::thread::Builder::new()
            .name(format!("sink-{addr}"))
            .spawn(move || accept_loop(listener, c, s))?;
        Ok(Sink {
            addr,
            counters,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its counters.
    pub fn counters(&self) -> &SinkCounters {
        &self.counters
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, counters: Arc<SinkCounters>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let c = counters.clone();
                let s = stop.clone();
                let _ = std::thread::Builder::new()
                    .name("sink-conn".into())
                    .spawn(move || {
                        let _ = serve(stream, &c, &s);
                    });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(stream: TcpStream, counters: &SinkCounters, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut out: Vec<u8> = b"220 sink.vmta.test ESMTP vmta test sink\r\n".to_vec();
    let mut line = Vec::with_capacity(512);
    let mut rcpts_ok = 0u64;
    let mut in_mail = false;
    loop {
        if !out.is_empty() && reader.buffer().is_empty() {
            writer.write_all(&out)?;
            out.clear();
        }
        line.clear();
        if read_line_patiently(&mut reader, &mut line, stop)? == 0 {
            return Ok(());
        }
        let verb: Vec<u8> = line
            .iter()
            .take_while(|b| b.is_ascii_alphabetic())
            .map(|b| b.to_ascii_uppercase())
            .collect();
        match verb.as_slice() {
            b"EHLO" => out.extend_from_slice(
                b"250-sink.vmta.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n",
            ),
            b"HELO" => out.extend_from_slice(b"250 sink.vmta.test\r\n"),
            b"MAIL" => {
                in_mail = true;
                rcpts_ok = 0;
                out.extend_from_slice(b"250 2.1.0 Ok\r\n");
            }
            b"RCPT" => {
                let unknown = line
                    .windows(8)
                    .any(|w| w.eq_ignore_ascii_case(b"<unknown"));
                if !in_mail {
                    out.extend_from_slice(b"503 5.5.1 Error: need MAIL command\r\n");
                } else if unknown {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(b"550 5.1.1 Recipient address rejected: User unknown\r\n");
                } else {
                    rcpts_ok += 1;
                    out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                }
            }
            b"DATA" => {
                if rcpts_ok == 0 {
                    out.extend_from_slice(b"554 5.5.1 Error: no valid recipients\r\n");
                    continue;
                }
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                writer.write_all(&out)?;
                out.clear();
                let mut size = 0u64;
                loop {
                    line.clear();
                    if read_line_patiently(&mut reader, &mut line, stop)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" || line == b".\n" {
                        break;
                    }
                    size += line.len() as u64;
                }
                finish_message(counters, &mut out, &mut in_mail, rcpts_ok, size);
            }
            b"BDAT" => {
                let text = String::from_utf8_lossy(&line[4..]).to_string();
                let mut words = text.split_whitespace();
                let size: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                let mut left = size;
                let mut buf = [0u8; 16 * 1024];
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    match reader.read(&mut buf[..want]) {
                        Ok(0) => return Ok(()),
                        Ok(n) => left -= n as u64,
                        Err(e)
                            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                        {
                            if stop.load(Ordering::Relaxed) {
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                if rcpts_ok == 0 {
                    out.extend_from_slice(b"554 5.5.1 Error: no valid recipients\r\n");
                } else if last {
                    finish_message(counters, &mut out, &mut in_mail, rcpts_ok, size);
                } else {
                    out.extend_from_slice(b"250 2.0.0 Ok: chunk received\r\n");
                }
            }
            b"RSET" => {
                in_mail = false;
                rcpts_ok = 0;
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                writer.write_all(&out)?;
                return Ok(());
            }
            _ => out.extend_from_slice(b"502 5.5.2 Error: command not recognized\r\n"),
        }
    }
}

fn finish_message(
    counters: &SinkCounters,
    out: &mut Vec<u8>,
    in_mail: &mut bool,
    rcpts: u64,
    size: u64,
) {
    counters.messages.fetch_add(1, Ordering::Relaxed);
    counters.recipients.fetch_add(rcpts, Ordering::Relaxed);
    counters.bytes.fetch_add(size, Ordering::Relaxed);
    *in_mail = false;
    out.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
}

fn read_line_patiently(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    stop: &AtomicBool,
) -> io::Result<usize> {
    let start = line.len();
    loop {
        match reader.read_until(b'\n', line) {
            Ok(0) => return Ok(line.len() - start),
            Ok(_) => return Ok(line.len() - start),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok(0);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
