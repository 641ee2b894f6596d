//! A small mio driver that runs one SMTP [`Session`] over one TCP connection to completion.
//!
//! It is what `vmta send` and the real-peer tests use, and the simplest example of driving the sans-IO
//! session: read → `handle_input`, timers → `handle_timeout`, then events, then `poll_transmit` → write.
//! The engine drives many sessions from one mio loop per shard the same way.
//!
//! This module does I/O (a non-blocking socket through mio) and reads the clock; the session it drives
//! does neither.

use crate::smtp::{Capabilities, Event, Session, SessionConfig, Transaction};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What happened on one connection.
#[derive(Debug, Clone)]
pub struct ConnectionReport {
    /// Every event the session produced, in order.
    pub events: Vec<Event>,
    /// The capabilities of the last EHLO.
    pub capabilities: Capabilities,
    /// Did the session use TLS?
    pub tls: bool,
    /// Messages handed to the session.
    pub messages_sent: u32,
    /// The most transactions the session had in flight at once (above 1 only with
    /// [`SessionConfig::transactions_in_flight`] above 1 and a server offering PIPELINING and
    /// CHUNKING).
    pub most_in_flight: usize,
}

/// Connects to `addr`, runs a session named `server_name` (SNI, certificate checks), sends each
/// transaction in turn on the same connection, then QUITs. Fails only on connection errors or when
/// `limit` passes; protocol outcomes are in the report's events.
pub fn run_connection(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<SessionConfig>,
    transactions: Vec<Transaction>,
    limit: Duration,
) -> io::Result<ConnectionReport> {
    const SOCKET: Token = Token(0);
    let started = Instant::now();
    let deadline = started + limit;
    let mut poll = Poll::new()?;
    let mut stream = connect(addr, limit)?;
    poll.registry()
        .register(&mut stream, SOCKET, Interest::READABLE)?;
    let mut session = Session::new(config, server_name, Instant::now());
    let mut pending: std::collections::VecDeque<Transaction> = transactions.into();
    let mut events = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0;
    let mut readbuf = vec![0u8; 64 * 1024];
    let mut mio_events = Events::with_capacity(8);
    let mut writable_interest = false;
    let mut most_in_flight = 0;
    loop {
        let now = Instant::now();
        // Events first, then new work (as many transactions as the session takes), then output.
        while let Some(e) = session.poll_event() {
            events.push(e);
        }
        if session.is_ready() {
            match pending.pop_front() {
                Some(tx) => {
                    if let Err(e) = session.send(now, tx) {
                        return Err(io::Error::other(e.to_string()));
                    }
                    most_in_flight = most_in_flight.max(session.transactions_in_flight());
                    continue;
                }
                None => session.quit(now),
            }
        }
        if written == out.len() {
            out.clear();
            written = 0;
            session.poll_transmit(now, &mut out);
        }
        while written < out.len() {
            match stream.write(&out[written..]) {
                Ok(0) => break,
                Ok(n) => {
                    written += n;
                    if written == out.len() {
                        out.clear();
                        written = 0;
                        session.poll_transmit(now, &mut out);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    session.handle_eof(now);
                    out.clear();
                    written = 0;
                    break;
                }
            }
        }
        let want_write = written < out.len();
        if want_write != writable_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry().reregister(&mut stream, SOCKET, interest)?;
            writable_interest = want_write;
        }
        if session.is_closed() && !want_write {
            while let Some(e) = session.poll_event() {
                events.push(e);
            }
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection took longer than its limit",
            ));
        }
        let mut wait = deadline - now;
        if let Some(t) = session.poll_timeout() {
            wait = wait.min(t.saturating_duration_since(now));
        }
        poll.poll(&mut mio_events, Some(wait))?;
        let now = Instant::now();
        for ev in mio_events.iter() {
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                loop {
                    match stream.read(&mut readbuf) {
                        Ok(0) => {
                            session.handle_eof(now);
                            break;
                        }
                        Ok(n) => session.handle_input(now, &readbuf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            session.handle_eof(now);
                            break;
                        }
                    }
                }
            }
        }
        if let Some(t) = session.poll_timeout()
            && Instant::now() >= t
        {
            session.handle_timeout(Instant::now());
        }
    }
    Ok(ConnectionReport {
        events,
        capabilities: session.capabilities().clone(),
        tls: session.is_tls(),
        messages_sent: session.messages_sent(),
        most_in_flight,
    })
}

/// Opens a non-blocking connection and waits until it is established or fails.
fn connect(addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    let std_stream =
        std::net::TcpStream::connect_timeout(&addr, limit.min(Duration::from_secs(30)))?;
    std_stream.set_nodelay(true)?;
    std_stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(std_stream))
}
