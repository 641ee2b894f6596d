//! A fast SMTP sink over mio: a few worker threads serve every sink address (each worker binds its
//! own listener per address with `SO_REUSEPORT`, so the kernel spreads connections over them), with
//! fault behaviours chosen per address, and counters a test or benchmark reads from the receiving side.
//!
//! Server side of RFC 5321 for EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffing only to find the end), BDAT
//! (RFC 3030 CHUNKING), PIPELINING (RFC 2920: replies batched per read), STARTTLS (RFC 3207, rustls with
//! a throwaway self-signed certificate made at start; input pipelined after STARTTLS is discarded),
//! RSET, NOOP and QUIT.
//!
//! Recipients: a local part starting with `unknown` is refused with `550 5.1.1`, one starting with
//! `full` with `552 5.2.2` (mailbox full). Behaviours per address ([`Behaviour`]): reply latency, a slow
//! greeting, a share of dropped connections, shares of 4xx and 5xx replies at RCPT and at the end of
//! data, greylisting (the first attempt of a sender and recipient pair gets `450 4.2.0` until a delay
//! has passed), a connection limit (`421 4.7.0` beyond it), a message rate (`421 4.7.28` and close
//! beyond it, like large receivers do), and a connection dropped when transactions arrive pipelined
//! behind each other.
//!
//! Not a mail server: it stores nothing, does not check syntax beyond what it needs, and is not
//! hardened for the open Internet (input buffers grow with what a client pipelines).

use memchr::{memchr, memmem};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How one sink address behaves. The default accepts everything at once.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Delay before each batch of replies (the greeting included).
    pub latency: Duration,
    /// Delay before the greeting.
    pub greeting_delay: Duration,
    /// Share of connections closed at once without a greeting, per thousand.
    pub drop_permille: u16,
    /// Share of recipients answered `451 4.3.0`, per thousand.
    pub rcpt_tempfail_permille: u16,
    /// Share of recipients answered `550 5.7.1`, per thousand.
    pub rcpt_permfail_permille: u16,
    /// Share of messages answered `451 4.3.0` at the end of data, per thousand.
    pub data_tempfail_permille: u16,
    /// Share of messages answered `554 5.7.1` at the end of data, per thousand.
    pub data_permfail_permille: u16,
    /// Greylisting: a sender and recipient pair is refused with `450 4.2.0` until this long after its
    /// first attempt.
    pub greylist: Option<Duration>,
    /// Connections served at once; more get `421 4.7.0` and are closed (0: no limit).
    pub max_connections: u32,
    /// Messages accepted per second; a MAIL beyond gets `421 4.7.28` and the connection is closed
    /// (0: no limit).
    pub max_messages_per_second: u32,
    /// Offer STARTTLS.
    pub tls: bool,
    /// A receiver that mishandles pipelined transactions: when a read holds a second `MAIL` (a
    /// transaction sent behind another's end of data before its reply), the connection is closed at
    /// once, the replies of that read unsent (the first transaction of the read was taken, as a
    /// server that crashes after its queue file is written would).
    pub drop_pipelined: bool,
}

/// Seconds of per-second history kept.
const HISTORY_S: usize = 3600;

/// What a sink address has seen.
#[derive(Debug)]
pub struct SinkCounters {
    started: Instant,
    /// Connections accepted (including those refused or dropped at once).
    pub connections: AtomicU64,
    /// Connections open now.
    pub current_connections: AtomicI64,
    /// The most connections open at once.
    pub peak_connections: AtomicI64,
    /// Connections refused with 421 because of the connection limit.
    pub refused_connections: AtomicU64,
    /// Connections closed at once on purpose.
    pub dropped_connections: AtomicU64,
    /// TLS sessions established.
    pub tls_sessions: AtomicU64,
    /// Messages accepted at the end of data.
    pub messages: AtomicU64,
    /// Recipients accepted in accepted messages.
    pub recipients: AtomicU64,
    /// Recipients refused with a 5xx.
    pub refused: AtomicU64,
    /// Recipients or messages answered with a 4xx (greylisting and throttling not included).
    pub tempfailed: AtomicU64,
    /// Recipients greylisted.
    pub greylisted: AtomicU64,
    /// Transactions refused with 421 because of the message rate.
    pub throttled: AtomicU64,
    /// Message bytes received.
    pub bytes: AtomicU64,
    /// The most messages accepted on one connection.
    pub max_messages_per_connection: AtomicU64,
    /// The most transactions (MAIL commands) handled from the input of one wake-up of a connection
    /// (what arrived since the last): above 1 only
    /// when a client sends a message before the previous one's end-of-data reply is out.
    pub max_transactions_per_read: AtomicU64,
    per_second: Box<[AtomicU32]>,
}

impl SinkCounters {
    fn new(started: Instant) -> SinkCounters {
        SinkCounters {
            started,
            connections: AtomicU64::new(0),
            current_connections: AtomicI64::new(0),
            peak_connections: AtomicI64::new(0),
            refused_connections: AtomicU64::new(0),
            dropped_connections: AtomicU64::new(0),
            tls_sessions: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            recipients: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            tempfailed: AtomicU64::new(0),
            greylisted: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_messages_per_connection: AtomicU64::new(0),
            max_transactions_per_read: AtomicU64::new(0),
            per_second: (0..HISTORY_S).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The most messages accepted within one second (whole seconds since the sink started, for the
    /// first hour).
    pub fn max_messages_per_second(&self) -> u32 {
        self.per_second
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Messages accepted in each second since the sink started, up to the last non-empty second.
    pub fn messages_per_second(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .per_second
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        while v.last() == Some(&0) {
            v.pop();
        }
        v
    }

    fn accepted(&self, now: Instant, rcpts: u64, size: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.recipients.fetch_add(rcpts, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        let s = now.saturating_duration_since(self.started).as_secs() as usize;
        if let Some(c) = self.per_second.get(s) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One sink address, its behaviour and counters.
#[derive(Debug)]
struct Host {
    addr: SocketAddr,
    behaviour: Behaviour,
    counters: Arc<SinkCounters>,
    /// Greylisting: first attempt per sender and recipient hash.
    greylist: Mutex<HashMap<u64, Instant>>,
    /// Rate window: second index in the high half, messages in it in the low half.
    window: AtomicU64,
}

impl Host {
    /// Takes a message from this second's allowance; false when the rate is exceeded.
    fn take_message(&self, now: Instant) -> bool {
        let max = self.behaviour.max_messages_per_second as u64;
        if max == 0 {
            return true;
        }
        let sec = now
            .saturating_duration_since(self.counters.started)
            .as_secs()
            & 0xffff_ffff;
        let mut cur = self.window.load(Ordering::Relaxed);
        loop {
            let (s, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if s != sec {
                (sec << 32) | 1
            } else if n >= max {
                return false;
            } else {
                cur + 1
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(x) => cur = x,
            }
        }
    }

    /// Greylisting: true while the pair must still wait.
    fn greylisted(&self, now: Instant, pair: u64) -> bool {
        let Some(delay) = self.behaviour.greylist else {
            return false;
        };
        let mut seen = self.greylist.lock().unwrap_or_else(|e| e.into_inner());
        let first = *seen.entry(pair).or_insert(now);
        now.saturating_duration_since(first) < delay
    }
}

/// A handle on one sink address: where it listens and what it has seen. A sink made with
/// [`Sink::start`] owns its server and stops when dropped; sinks from [`SinkServer::start`] stop with
/// their server.
#[derive(Debug)]
pub struct Sink {
    host: Arc<Host>,
    server: Option<SinkServer>,
}

impl Sink {
    /// Listens on `addr` (port 0 picks a free port) with the default behaviour, served by one thread.
    pub fn start(addr: SocketAddr) -> io::Result<Sink> {
        Sink::start_with(addr, Behaviour::default())
    }

    /// Listens on `addr` with a behaviour, served by one thread.
    pub fn start_with(addr: SocketAddr, behaviour: Behaviour) -> io::Result<Sink> {
        let server = SinkServer::start(&[(addr, behaviour)], 1)?;
        let host = server.hosts[0].clone();
        Ok(Sink {
            host,
            server: Some(server),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.host.addr
    }

    /// Its behaviour.
    pub fn behaviour(&self) -> &Behaviour {
        &self.host.behaviour
    }

    /// Its counters.
    pub fn counters(&self) -> &SinkCounters {
        &self.host.counters
    }

    /// Stops the sink's own server, if it has one.
    pub fn stop(&mut self) {
        self.server.take();
    }
}

/// Worker threads serving a set of sink addresses; stops when dropped.
#[derive(Debug)]
pub struct SinkServer {
    hosts: Vec<Arc<Host>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl SinkServer {
    /// Serves every `(address, behaviour)` with `threads` worker threads. Addresses with port 0 get a
    /// free port each.
    pub fn start(hosts: &[(SocketAddr, Behaviour)], threads: usize) -> io::Result<SinkServer> {
        let started = Instant::now();
        let tls = if hosts.iter().any(|(_, b)| b.tls) {
            Some(tls_config()?)
        } else {
            None
        };
        let threads = threads.max(1);
        // Each worker binds its own listener per address (SO_REUSEPORT); the first fixes the port.
        let mut listeners: Vec<Vec<std::net::TcpListener>> =
            (0..threads).map(|_| Vec::new()).collect();
        let mut shared = Vec::new();
        for (addr, behaviour) in hosts {
            let first = bind_reuseport(*addr)?;
            let addr = first.local_addr()?;
            listeners[0].push(first);
            for l in listeners.iter_mut().skip(1) {
                l.push(bind_reuseport(addr)?);
            }
            shared.push(Arc::new(Host {
                addr,
                behaviour: behaviour.clone(),
                counters: Arc::new(SinkCounters::new(started)),
                greylist: Mutex::new(HashMap::new()),
                window: AtomicU64::new(0),
            }));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for (i, ls) in listeners.into_iter().enumerate() {
            let mut w = Worker::new(i, ls, shared.clone(), tls.clone(), stop.clone())?;
            workers.push(
                std::thread::Builder::new()
                    .name(format!("sink-{i}"))
                    .spawn(move || w.run())?,
            );
        }
        Ok(SinkServer {
            hosts: shared,
            stop,
            workers,
        })
    }

    /// Handles on every address, in the order given.
    pub fn sinks(&self) -> Vec<Sink> {
        self.hosts
            .iter()
            .map(|h| Sink {
                host: h.clone(),
                server: None,
            })
            .collect()
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A rustls server configuration with a certificate made now for `*.vmta.test`.
fn tls_config() -> io::Result<Arc<rustls::ServerConfig>> {
    let names = vec!["sink.vmta.test".to_string(), "*.vmta.test".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(io::Error::other)?;
    Ok(Arc::new(config))
}

const GREETING: &[u8] = b"220 sink.vmta.test ESMTP vmta test sink\r\n";
const EHLO: &[u8] = b"250-sink.vmta.test\r\n250-PIPELINING\r\n250-SIZE 157286400\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";
const EHLO_TLS: &[u8] = b"250-sink.vmta.test\r\n250-PIPELINING\r\n250-SIZE 157286400\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n";
/// Longest command line kept; longer ones are answered 500 and skipped.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Command,
    /// In DATA: bytes counted so far, and whether the next byte starts the first line.
    Data {
        size: u64,
        at_start: bool,
    },
    /// In BDAT: bytes of the chunk still to come, whether it is the last, the message size so far.
    Bdat {
        left: u64,
        last: bool,
        size: u64,
    },
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    host: usize,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Plain text received, not yet handled.
    input: Vec<u8>,
    /// Replies not yet released (latency) or encrypted.
    replies: Vec<u8>,
    /// Bytes for the socket.
    wire: Vec<u8>,
    phase: Phase,
    in_mail: bool,
    /// MAIL commands handled from the input of the current wake-up.
    mails_this_read: u64,
    sender_hash: u64,
    rcpts_ok: u64,
    /// Bytes of the message in earlier BDAT chunks.
    bdat_size: u64,
    messages: u64,
    /// Replies are held until then (latency).
    release_at: Option<Instant>,
    /// Close once the wire is empty.
    closing: bool,
    /// Discarding an over-long command line until its end.
    skipping_line: bool,
}

struct Worker {
    poll: Poll,
    listeners: Vec<TcpListener>,
    hosts: Vec<Arc<Host>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<AtomicBool>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    rng: u64,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    fn new(
        index: usize,
        listeners: Vec<std::net::TcpListener>,
        hosts: Vec<Arc<Host>>,
        tls: Option<Arc<rustls::ServerConfig>>,
        stop: Arc<AtomicBool>,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let mut ls = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(i), Interest::READABLE)?;
            ls.push(l);
        }
        Ok(Worker {
            poll,
            listeners: ls,
            hosts,
            tls,
            stop,
            conns: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ ((index as u64 + 1) << 17),
            buf: vec![0; 64 * 1024],
        })
    }

    fn token(&self, slot: usize) -> Token {
        Token(self.listeners.len() + slot)
    }

    /// A roll per thousand: true with probability `permille`/1000.
    fn roll(&mut self, permille: u16) -> bool {
        if permille == 0 {
            return false;
        }
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (r >> 32) % 1000 < permille as u64
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut wait = Duration::from_millis(50);
            if let Some(Reverse((at, _))) = self.timers.peek() {
                wait = wait.min(at.saturating_duration_since(now));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(wait))
                && e.kind() != io::ErrorKind::Interrupted
            {
                return;
            }
            for ev in events.iter() {
                let t = ev.token().0;
                if t < self.listeners.len() {
                    self.accept(t);
                } else {
                    let slot = t - self.listeners.len();
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.readable(slot);
                    }
                    if ev.is_writable() {
                        self.flush(slot);
                    }
                }
            }
            let now = Instant::now();
            while let Some(Reverse((at, slot))) = self.timers.peek().copied() {
                if at > now {
                    break;
                }
                self.timers.pop();
                if let Some(c) = self.conns.get_mut(slot).and_then(|c| c.as_mut())
                    && c.release_at.is_some_and(|r| r <= now)
                {
                    c.release_at = None;
                    self.release(slot);
                }
            }
        }
        for slot in 0..self.conns.len() {
            self.close(slot);
        }
    }

    fn accept(&mut self, host: usize) {
        loop {
            let (mut stream, _) = match self.listeners[host].accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let h = self.hosts[host].clone();
            let b = &h.behaviour;
            h.counters.connections.fetch_add(1, Ordering::Relaxed);
            if self.roll(b.drop_permille) {
                h.counters
                    .dropped_connections
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let cur = h
                .counters
                .current_connections
                .fetch_add(1, Ordering::AcqRel)
                + 1;
            if b.max_connections > 0 && cur > b.max_connections as i64 {
                h.counters
                    .current_connections
                    .fetch_sub(1, Ordering::AcqRel);
                h.counters
                    .refused_connections
                    .fetch_add(1, Ordering::Relaxed);
                let _ = stream
                    .write(b"421 4.7.0 sink.vmta.test Too many connections, try again later\r\n");
                continue;
            }
            h.counters
                .peak_connections
                .fetch_max(cur, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let slot = match self.free.pop() {
                Some(s) => s,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            let token = self.token(slot);
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                h.counters
                    .current_connections
                    .fetch_sub(1, Ordering::AcqRel);
                self.free.push(slot);
                continue;
            }
            let delay = b.greeting_delay + b.latency;
            self.conns[slot] = Some(Conn {
                stream,
                host,
                tls: None,
                input: Vec::new(),
                replies: GREETING.to_vec(),
                wire: Vec::new(),
                phase: Phase::Command,
                in_mail: false,
                mails_this_read: 0,
                sender_hash: 0,
                rcpts_ok: 0,
                bdat_size: 0,
                messages: 0,
                release_at: None,
                closing: false,
                skipping_line: false,
            });
            if delay.is_zero() {
                self.release(slot);
            } else {
                let at = Instant::now() + delay;
                if let Some(c) = self.conns[slot].as_mut() {
                    c.release_at = Some(at);
                }
                self.timers.push(Reverse((at, slot)));
            }
        }
    }

    /// Reads everything available, handles it, and sends (or schedules) the replies.
    fn readable(&mut self, slot: usize) {
        let mut eof = false;
        {
            let Some(c) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                return;
            };
            loop {
                match c.stream.read(&mut self.buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => match c.tls.as_mut() {
                        None => c.input.extend_from_slice(&self.buf[..n]),
                        Some(tls) => {
                            if tls_input(tls, &self.buf[..n], &mut c.input, &mut c.wire).is_err() {
                                eof = true;
                                break;
                            }
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
        }
        self.handle_input(slot);
        if eof {
            self.close(slot);
            return;
        }
        self.schedule(slot);
    }

    /// Releases replies now or after the address's latency.
    fn schedule(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        let latency = self.hosts[c.host].behaviour.latency;
        if c.replies.is_empty() && c.wire.is_empty() {
            return;
        }
        if latency.is_zero() || c.replies.is_empty() {
            self.release(slot);
        } else if c.release_at.is_none() {
            let at = Instant::now() + latency;
            c.release_at = Some(at);
            self.timers.push(Reverse((at, slot)));
        }
    }

    /// Moves the replies to the wire (through TLS when on) and writes.
    fn release(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.release_at.is_some() {
            return;
        }
        match c.tls.as_mut() {
            None => {
                if c.wire.is_empty() {
                    std::mem::swap(&mut c.wire, &mut c.replies);
                } else {
                    c.wire.extend_from_slice(&c.replies);
                    c.replies.clear();
                }
            }
            Some(tls) => {
                if !c.replies.is_empty() {
                    let _ = tls.writer().write_all(&c.replies);
                    c.replies.clear();
                }
                while tls.wants_write() {
                    if tls.write_tls(&mut c.wire).is_err() {
                        break;
                    }
                }
            }
        }
        self.flush(slot);
    }

    /// Writes the wire; closes when asked and done.
    fn flush(&mut self, slot: usize) {
        let Some(c) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while written < c.wire.len() {
            match c.stream.write(&c.wire[written..]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        c.wire.drain(..written);
        if failed || (c.closing && c.wire.is_empty()) {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(|c| c.take()) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        let counters = &self.hosts[c.host].counters;
        counters.current_connections.fetch_sub(1, Ordering::AcqRel);
        counters
            .max_messages_per_connection
            .fetch_max(c.messages, Ordering::Relaxed);
        self.free.push(slot);
    }

    /// Handles every complete command and data section in the input.
    fn handle_input(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(|c| c.take()) else {
            return;
        };
        let host = self.hosts[c.host].clone();
        let mut pos = 0;
        let now = Instant::now();
        c.mails_this_read = 0;
        while pos < c.input.len() && !c.closing {
            match c.phase {
                Phase::Command => {
                    let Some(nl) = memchr(b'\n', &c.input[pos..]) else {
                        if c.input.len() - pos > MAX_LINE {
                            c.skipping_line = true;
                            pos = c.input.len();
                        }
                        break;
                    };
                    let end = pos + nl + 1;
                    if c.skipping_line {
                        c.skipping_line = false;
                        c.replies
                            .extend_from_slice(b"500 5.5.2 Error: line too long\r\n");
                        pos = end;
                        continue;
                    }
                    let line = pos..end;
                    pos = end;
                    if self.command(&mut c, &host, line, now) {
                        // STARTTLS: what the client pipelined after it is discarded (RFC 3207 §5).
                        pos = c.input.len();
                    }
                }
                Phase::Data { size, at_start } => {
                    let rest = &c.input[pos..];
                    if at_start && rest.len() < 3 && b".\r\n".starts_with(rest) {
                        break;
                    }
                    let found = if at_start && rest.starts_with(b".\r\n") {
                        Some((0, 3))
                    } else {
                        memmem::find(rest, b"\r\n.\r\n").map(|i| (i + 2, i + 5))
                    };
                    match found {
                        Some((body, consumed)) => {
                            pos += consumed;
                            c.phase = Phase::Command;
                            self.end_of_message(&mut c, &host, size + body as u64, now);
                        }
                        None => {
                            // Keep the last 4 bytes: the end marker may be split across reads.
                            let take = rest.len().saturating_sub(4);
                            pos += take;
                            c.phase = Phase::Data {
                                size: size + take as u64,
                                at_start: at_start && take == 0,
                            };
                            break;
                        }
                    }
                }
                Phase::Bdat { left, last, size } => {
                    let take = (left as usize).min(c.input.len() - pos);
                    pos += take;
                    let left = left - take as u64;
                    let size = size + take as u64;
                    if left > 0 {
                        c.phase = Phase::Bdat { left, last, size };
                        break;
                    }
                    c.phase = Phase::Command;
                    if c.rcpts_ok == 0 {
                        c.replies
                            .extend_from_slice(b"554 5.5.1 Error: no valid recipients\r\n");
                    } else if last {
                        self.end_of_message(&mut c, &host, size, now);
                    } else {
                        // The next BDAT continues the message.
                        c.bdat_size = size;
                        c.replies
                            .extend_from_slice(b"250 2.0.0 Ok: chunk received\r\n");
                    }
                }
            }
        }
        if pos > 0 {
            c.input.drain(..pos);
        }
        if c.mails_this_read > 1 {
            host.counters
                .max_transactions_per_read
                .fetch_max(c.mails_this_read, Ordering::Relaxed);
        }
        self.conns[slot] = Some(c);
    }

    /// Handles the command line at `line` of the input; returns true when STARTTLS began (the rest
    /// of the input is dropped).
    fn command(
        &mut self,
        c: &mut Conn,
        host: &Host,
        line: std::ops::Range<usize>,
        now: Instant,
    ) -> bool {
        // The line stays in the input buffer (no copy per command); the other fields are written.
        let line = &c.input[line];
        let verb_len = line.iter().take_while(|b| b.is_ascii_alphabetic()).count();
        let mut verb = [0u8; 8];
        for (i, b) in line[..verb_len.min(8)].iter().enumerate() {
            verb[i] = b.to_ascii_uppercase();
        }
        let b = &host.behaviour;
        match &verb[..verb_len.min(8)] {
            b"EHLO" => c.replies.extend_from_slice(if b.tls && c.tls.is_none() {
                EHLO_TLS
            } else {
                EHLO
            }),
            b"HELO" => c.replies.extend_from_slice(b"250 sink.vmta.test\r\n"),
            b"STARTTLS" => {
                let Some(config) = self.tls.clone().filter(|_| b.tls && c.tls.is_none()) else {
                    c.replies
                        .extend_from_slice(b"502 5.5.1 Error: command not implemented\r\n");
                    return false;
                };
                match rustls::ServerConnection::new(config) {
                    Ok(tls) => {
                        // The 220 goes out in plain text, then everything is TLS.
                        c.replies
                            .extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                        c.wire.extend_from_slice(&c.replies);
                        c.replies.clear();
                        c.tls = Some(Box::new(tls));
                        c.in_mail = false;
                        c.rcpts_ok = 0;
                        host.counters.tls_sessions.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    Err(_) => c.replies.extend_from_slice(
                        b"454 4.7.0 TLS not available due to temporary reason\r\n",
                    ),
                }
            }
            b"MAIL" => {
                c.mails_this_read += 1;
                if host.behaviour.drop_pipelined && c.mails_this_read > 1 {
                    host.counters
                        .dropped_connections
                        .fetch_add(1, Ordering::Relaxed);
                    c.replies.clear();
                    c.closing = true;
                    return false;
                }
                if !host.take_message(now) {
                    host.counters.throttled.fetch_add(1, Ordering::Relaxed);
                    c.replies.extend_from_slice(b"421 4.7.28 sink.vmta.test Our system has detected an unusual rate of mail from your IP address; try again later\r\n");
                    c.closing = true;
                    return false;
                }
                c.in_mail = true;
                c.rcpts_ok = 0;
                c.bdat_size = 0;
                c.sender_hash = fnv(address_of(line));
                c.replies.extend_from_slice(b"250 2.1.0 Ok\r\n");
            }
            b"RCPT" => {
                let addr = address_of(line);
                let local = addr.split(|&x| x == b'@').next().unwrap_or(addr);
                if !c.in_mail {
                    c.replies
                        .extend_from_slice(b"503 5.5.1 Error: need MAIL command\r\n");
                } else if starts_with_ignore_case(local, b"unknown") {
                    host.counters.refused.fetch_add(1, Ordering::Relaxed);
                    c.replies.extend_from_slice(
                        b"550 5.1.1 Recipient address rejected: User unknown in local recipient table\r\n",
                    );
                } else if starts_with_ignore_case(local, b"full") {
                    host.counters.refused.fetch_add(1, Ordering::Relaxed);
                    c.replies.extend_from_slice(
                        b"552 5.2.2 Recipient address rejected: Mailbox full\r\n",
                    );
                } else if host.greylisted(now, c.sender_hash ^ fnv(addr).rotate_left(1)) {
                    host.counters.greylisted.fetch_add(1, Ordering::Relaxed);
                    c.replies.extend_from_slice(
                        b"450 4.2.0 Recipient address rejected: Greylisted, try again later\r\n",
                    );
                } else if self.roll(b.rcpt_tempfail_permille) {
                    host.counters.tempfailed.fetch_add(1, Ordering::Relaxed);
                    c.replies
                        .extend_from_slice(b"451 4.3.0 Temporary lookup failure\r\n");
                } else if self.roll(b.rcpt_permfail_permille) {
                    host.counters.refused.fetch_add(1, Ordering::Relaxed);
                    c.replies.extend_from_slice(
                        b"550 5.7.1 Recipient address rejected: Access denied\r\n",
                    );
                } else {
                    c.rcpts_ok += 1;
                    c.replies.extend_from_slice(b"250 2.1.5 Ok\r\n");
                }
            }
            b"DATA" => {
                if c.rcpts_ok == 0 {
                    c.replies
                        .extend_from_slice(b"554 5.5.1 Error: no valid recipients\r\n");
                } else {
                    c.replies
                        .extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    c.phase = Phase::Data {
                        size: 0,
                        at_start: true,
                    };
                }
            }
            b"BDAT" => {
                let text = String::from_utf8_lossy(&line[4..]);
                let mut words = text.split_whitespace();
                let size = words.next().and_then(|w| w.parse::<u64>().ok());
                let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
                match size {
                    Some(left) => {
                        c.phase = Phase::Bdat {
                            left,
                            last,
                            size: c.bdat_size,
                        }
                    }
                    None => c
                        .replies
                        .extend_from_slice(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
                }
            }
            b"RSET" => {
                c.in_mail = false;
                c.rcpts_ok = 0;
                c.bdat_size = 0;
                c.replies.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            b"NOOP" => c.replies.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            b"QUIT" => {
                c.replies.extend_from_slice(b"221 2.0.0 Bye\r\n");
                c.closing = true;
            }
            _ => c
                .replies
                .extend_from_slice(b"502 5.5.2 Error: command not recognized\r\n"),
        }
        false
    }

    fn end_of_message(&mut self, c: &mut Conn, host: &Host, size: u64, now: Instant) {
        let b = &host.behaviour;
        c.in_mail = false;
        c.bdat_size = 0;
        let rcpts = std::mem::take(&mut c.rcpts_ok);
        if self.roll(b.data_tempfail_permille) {
            host.counters.tempfailed.fetch_add(1, Ordering::Relaxed);
            c.replies
                .extend_from_slice(b"451 4.3.0 Error: queue file write error\r\n");
        } else if self.roll(b.data_permfail_permille) {
            host.counters.refused.fetch_add(rcpts, Ordering::Relaxed);
            c.replies
                .extend_from_slice(b"554 5.7.1 Message rejected: spam content detected\r\n");
        } else {
            host.counters.accepted(now, rcpts, size);
            c.messages += 1;
            c.replies.extend_from_slice(b"250 2.0.0 Ok: queued\r\n");
        }
    }
}

/// Feeds TLS records in; plain text out to `input`, handshake records to `wire`.
fn tls_input(
    tls: &mut rustls::ServerConnection,
    mut data: &[u8],
    input: &mut Vec<u8>,
    wire: &mut Vec<u8>,
) -> io::Result<()> {
    while !data.is_empty() {
        tls.read_tls(&mut data)?;
        let state = tls.process_new_packets().map_err(io::Error::other)?;
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let start = input.len();
            input.resize(start + n, 0);
            tls.reader().read_exact(&mut input[start..])?;
        }
        while tls.wants_write() {
            tls.write_tls(wire)?;
        }
    }
    Ok(())
}

/// The address inside `<...>` of a MAIL or RCPT line (empty when none).
fn address_of(line: &[u8]) -> &[u8] {
    let Some(open) = memchr(b'<', line) else {
        return &[];
    };
    let rest = &line[open + 1..];
    match memchr(b'>', rest) {
        Some(close) => &rest[..close],
        None => &[],
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= b.to_ascii_lowercase() as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
