//! Listener threads: SMTP over mio for the server sessions of `vmta::smtp::server`.
//!
//! Each thread runs its own mio poll over every listening socket (the kernel hands each accepted
//! connection to one of them) and the connections it accepted; no listener runs on a shard thread.
//! A connection is a socket, a [`Session`], and the bytes still to write. The thread reads only while
//! the session wants input and only while nothing waits to be written (a client that does not read
//! its replies stops being read), so memory per connection is bounded by the session's window and
//! the message size limit. A connection with more to do than one pass allows goes to the back of
//! the ready list, so one pipelining client cannot hold the thread.
//!
//! Decisions: the sender is refused for a locked tenant or a sender the tenant does not approve;
//! a recipient is refused `550 5.7.1` when the client is outside the listener's allowed networks
//! (never an open relay: checked at RCPT, so the client learns why), `501 5.1.3` for an address the
//! engine would not take, `550 5.7.1` when the tenant's suppression list holds it. A complete
//! message goes to the intake threads; its `250` is sent only once the engine says it is durable.

use crate::config::Listener;
use crate::config::Role;
use crate::intake::{Answer, Done, Job, Mailbox, ReplyTo};
use crate::log::EventLog;
use crate::users::{AuthJob, Limiter};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmta::engine::{Engine, Submission, SubmitError};
use vmta::smtp::server::{self, Event, Session, TlsInfo};
use vmta::smtp::{Reply, TlsLayer};

/// The waker's token; listening sockets are `LISTEN_BASE + i`, connections `CONN_BASE + slot`.
const WAKER: Token = Token(0);
const LISTEN_BASE: usize = 1;
const CONN_BASE: usize = 1 << 20;
/// Bytes read per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per connection per pass before others get their turn.
const READS_PER_PASS: usize = 4;
/// How often timers are checked.
const TICK: Duration = Duration::from_millis(100);

/// What the listener threads share.
#[derive(Debug)]
pub struct Shared {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The listeners' settings, by index.
    pub listeners: Vec<Arc<Listener>>,
    /// Session settings per listener.
    pub sessions: Vec<Arc<server::ServerConfig>>,
    /// Connections at once per listener (all threads).
    pub connections: Vec<Arc<AtomicUsize>>,
    /// Connections at once per client address (all threads, all listeners of the same index).
    pub per_client: std::sync::Mutex<HashMap<(usize, IpAddr), usize>>,
    /// The intake queue.
    pub jobs: crossbeam::channel::Sender<Job>,
    /// The answers per listener thread.
    pub mailboxes: Arc<Vec<Mailbox>>,
    /// The log.
    pub log: Arc<EventLog>,
    /// Set on SIGTERM/SIGINT: stop accepting and wind down.
    pub stopping: AtomicBool,
    /// How long sessions in progress get once stopping.
    pub grace: Duration,
    /// The rustls server configuration per listener, for those with a certificate.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Logins to check (the verifier thread), when some listener takes them.
    pub auth_jobs: Option<crossbeam::channel::Sender<AuthJob>>,
    /// Failed logins per client address.
    pub limiter: Arc<Limiter>,
    /// Name the login in the Received field.
    pub received_auth: bool,
    /// The daemon's counters.
    pub stats: Arc<crate::stats::Stats>,
}

impl Shared {
    /// The TLS configuration of listener `li`, if it has a certificate.
    fn tls_config(&self, li: usize) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.get(li).cloned().flatten()
    }
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    session: Session,
    listener: usize,
    peer: SocketAddr,
    generation: u64,
    wbuf: Vec<u8>,
    wpos: usize,
    readable: bool,
    /// Counted against the listener and client limits.
    counted: bool,
    /// When the session closed with bytes still unwritten (a client that does not read).
    closing_since: Option<Instant>,
    /// The TLS layer, once STARTTLS was answered (or from the start, for implicit TLS).
    tls: Option<TlsLayer>,
    /// STARTTLS was answered `220`: the TLS layer starts once that reply is written.
    start_tls: bool,
    /// The identity and tenant of a successful login.
    login: Option<(String, String)>,
    /// Registered for writability too (only while a write would block: on Linux an
    /// edge-triggered EPOLLOUT fires on every ACK, a wake-up per reply for nothing).
    want_write: bool,
}

/// How long a closed session's last reply may wait for a client that does not read.
const LINGER: Duration = Duration::from_secs(10);

/// A listener thread's connections: slots, the free ones, those with work to do, and the
/// generation the next connection gets.
#[derive(Debug, Default)]
struct Table {
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    ready: Vec<usize>,
    generation: u64,
}

/// One listener thread. Returns once stopping and every connection is closed (or the grace period
/// has passed).
pub fn run(
    thread: usize,
    shared: Arc<Shared>,
    mut poll: Poll,
    mut sockets: Vec<TcpListener>,
) -> std::io::Result<()> {
    for (i, l) in sockets.iter_mut().enumerate() {
        poll.registry()
            .register(l, Token(LISTEN_BASE + i), Interest::READABLE)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut table = Table::default();
    let mut next_ready: Vec<usize> = Vec::new();
    let mut last_tick = Instant::now();
    let mut stop_deadline: Option<Instant> = None;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut done: Vec<Done> = Vec::new();
    let mut delayed: Vec<Done> = Vec::new();
    // Listening sockets whose last accept failed (EMFILE): retried every tick, since no new edge
    // may come for the connections already in their backlog.
    let mut accept_failed: Vec<bool> = vec![false; sockets.len()];
    loop {
        let timeout = if !table.ready.is_empty() {
            Some(Duration::ZERO)
        } else if delayed.is_empty() {
            Some(TICK)
        } else {
            // A held-back answer falls due within the tick.
            Some(Duration::from_millis(20))
        };
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != ErrorKind::Interrupted
        {
            return Err(e);
        }
        let now = Instant::now();
        for ev in events.iter() {
            match ev.token() {
                WAKER => {}
                Token(t) if (LISTEN_BASE..CONN_BASE).contains(&t) => {
                    let li = t - LISTEN_BASE;
                    if stop_deadline.is_some() {
                        continue;
                    }
                    accept_failed[li] =
                        !accept_all(&shared, &poll, &mut sockets[li], li, now, &mut table);
                }
                Token(t) => {
                    let slot = t - CONN_BASE;
                    if let Some(Some(c)) = table.conns.get_mut(slot) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.readable = true;
                        }
                        table.ready.push(slot);
                    }
                }
            }
        }
        // Answers from intake.
        {
            let mut mb = shared.mailboxes[thread]
                .done
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *mb, &mut done);
        }
        // Answers held back (failed logins) join them once due.
        let mut i = 0;
        while i < delayed.len() {
            if delayed[i].not_before.is_none_or(|t| now >= t) {
                done.push(delayed.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for d in done.drain(..) {
            if d.not_before.is_some_and(|t| now < t) {
                delayed.push(d);
                continue;
            }
            let slot = d.reply_to.slot;
            if let Some(Some(c)) = table.conns.get_mut(slot)
                && c.generation == d.reply_to.generation
            {
                let reply = match d.answer {
                    Answer::Message(result) => message_reply(&result),
                    Answer::Auth {
                        identity,
                        tenant,
                        locked,
                    } => auth_reply(&shared, c, identity, tenant, locked),
                };
                let _ = c.session.answer(now, &reply);
                table.ready.push(slot);
            }
            // Otherwise the connection is gone: the message is durable (or refused) all the same;
            // the client, having no 250, will send it again (a duplicate, never a loss).
        }
        // Stopping: close the listening sockets, tell every session.
        if shared.stopping.load(Ordering::Acquire) && stop_deadline.is_none() {
            stop_deadline = Some(now + shared.grace);
            for l in &mut sockets {
                let _ = poll.registry().deregister(l);
            }
            sockets.clear();
            for (slot, c) in table.conns.iter_mut().enumerate() {
                if let Some(c) = c {
                    c.session.shutdown(now);
                    table.ready.push(slot);
                }
            }
        }
        // Timers.
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            for li in 0..sockets.len() {
                if accept_failed[li] {
                    accept_failed[li] =
                        !accept_all(&shared, &poll, &mut sockets[li], li, now, &mut table);
                }
            }
            for (slot, entry) in table.conns.iter_mut().enumerate() {
                let Some(c) = entry else { continue };
                if c.session.poll_timeout().is_some_and(|at| now >= at) {
                    c.session.handle_timeout(now);
                    table.ready.push(slot);
                }
                if c.session.is_closed() {
                    let since = *c.closing_since.get_or_insert(now);
                    if now.duration_since(since) >= LINGER
                        && let Some(mut c) = entry.take()
                    {
                        let _ = poll.registry().deregister(&mut c.stream);
                        release(&shared, &c);
                        table.free.push(slot);
                    }
                }
            }
        }
        table.ready.sort_unstable();
        table.ready.dedup();
        for slot in table.ready.drain(..) {
            let Some(Some(c)) = table.conns.get_mut(slot) else {
                continue;
            };
            match service(c, slot, thread, &shared, poll.registry(), now, &mut buf) {
                Pass::Idle => {}
                Pass::More => next_ready.push(slot),
                Pass::Close => {
                    if let Some(mut c) = table.conns[slot].take() {
                        let _ = poll.registry().deregister(&mut c.stream);
                        release(&shared, &c);
                        table.free.push(slot);
                    }
                }
            }
        }
        std::mem::swap(&mut table.ready, &mut next_ready);
        if let Some(deadline) = stop_deadline {
            let open = table.conns.iter().filter(|c| c.is_some()).count();
            if open == 0 {
                return Ok(());
            }
            if now >= deadline {
                // Past the grace period: what has no 250 is the client's to send again.
                for c in table.conns.iter_mut() {
                    if let Some(c) = c.take() {
                        release(&shared, &c);
                    }
                }
                return Ok(());
            }
        }
    }
}

/// Accepts every waiting connection; false if an accept failed (the rest stay in the backlog).
fn accept_all(
    shared: &Shared,
    poll: &Poll,
    socket: &mut TcpListener,
    li: usize,
    now: Instant,
    table: &mut Table,
) -> bool {
    loop {
        let (mut stream, peer) = match socket.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: log, leave the rest in the backlog until the next event.
                let l = serde_json::json!({"event": "accept-failed", "error": e.to_string()});
                shared.log.write_lines([l.to_string().as_str()]);
                return false;
            }
        };
        let _ = stream.set_nodelay(true);
        let listener = &shared.listeners[li];
        let ip = peer.ip();
        let over = {
            let total = shared.connections[li].fetch_add(1, Ordering::AcqRel) + 1;
            let mut pc = shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = pc.entry((li, ip)).or_insert(0);
            *n += 1;
            if shared.limiter.is_locked(ip, now) {
                Some("Error: too many authentication failures from your address")
            } else if total > listener.max_connections {
                Some("Error: too many connections")
            } else if *n > listener.max_connections_per_client {
                Some("Error: too many connections from your address")
            } else {
                None
            }
        };
        let mut tls = None;
        let session = match over {
            None if listener.implicit_tls => {
                match shared.tls_config(li).map(TlsLayer::new_server) {
                    Some(Ok(layer)) => {
                        tls = Some(layer);
                        Session::new_implicit_tls(shared.sessions[li].clone(), now)
                    }
                    // Configuration is checked at start: a listener with implicit TLS has a certificate.
                    _ => Session::refuse(
                        shared.sessions[li].clone(),
                        now,
                        &server::reply(421, (4, 3, 0), "Error: TLS unavailable"),
                    ),
                }
            }
            None => Session::new(shared.sessions[li].clone(), now),
            Some(why) => {
                let l = serde_json::json!({
                    "event": "connection-refused",
                    "client_ip": ip.to_string(),
                    "listener": listener.name,
                    "why": why,
                });
                shared.log.write_lines([l.to_string().as_str()]);
                let text = format!("{} {why}", shared.sessions[li].hostname);
                Session::refuse(
                    shared.sessions[li].clone(),
                    now,
                    &server::reply(421, (4, 7, 0), text),
                )
            }
        };
        table.generation += 1;
        let generation = table.generation;
        let slot = table.free.pop().unwrap_or_else(|| {
            table.conns.push(None);
            table.conns.len() - 1
        });
        if poll
            .registry()
            .register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE)
            .is_err()
        {
            let c = Conn {
                stream,
                session,
                listener: li,
                peer,
                generation,
                wbuf: Vec::new(),
                wpos: 0,
                readable: false,
                counted: true,
                closing_since: None,
                want_write: false,
                tls: None,
                start_tls: false,
                login: None,
            };
            release(shared, &c);
            table.free.push(slot);
            continue;
        }
        table.conns[slot] = Some(Conn {
            stream,
            session,
            listener: li,
            peer,
            generation,
            wbuf: Vec::with_capacity(512),
            wpos: 0,
            readable: true,
            counted: true,
            closing_since: None,
            want_write: false,
            tls,
            start_tls: false,
            login: None,
        });
        table.ready.push(slot);
    }
}

/// Gives back a connection's place in the limits.
fn release(shared: &Shared, c: &Conn) {
    if !c.counted {
        return;
    }
    shared.connections[c.listener].fetch_sub(1, Ordering::AcqRel);
    let mut pc = shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
    let key = (c.listener, c.peer.ip());
    if let Some(n) = pc.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            pc.remove(&key);
        }
    }
}

enum Pass {
    /// Nothing more until the socket or intake says so.
    Idle,
    /// More to do: another pass.
    More,
    /// Closed: drop it.
    Close,
}

fn service(
    c: &mut Conn,
    slot: usize,
    thread: usize,
    shared: &Shared,
    registry: &mio::Registry,
    now: Instant,
    buf: &mut [u8],
) -> Pass {
    let mut reads = 0;
    let mut plain = Vec::new();
    loop {
        decide(c, slot, thread, shared, now);
        match &mut c.tls {
            Some(tls) => {
                plain.clear();
                c.session.poll_transmit(&mut plain);
                if !plain.is_empty() && tls.write_plaintext(&plain).is_err() {
                    return Pass::Close;
                }
                tls.drain_wire(&mut c.wbuf);
            }
            None => {
                c.session.poll_transmit(&mut c.wbuf);
            }
        }
        // Write what is pending; while something is left, read nothing more.
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => return Pass::Close,
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if !c.want_write {
                        let token = Token(CONN_BASE + slot);
                        let both = Interest::READABLE | Interest::WRITABLE;
                        if registry.reregister(&mut c.stream, token, both).is_err() {
                            return Pass::Close;
                        }
                        c.want_write = true;
                    }
                    return Pass::Idle;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Pass::Close,
            }
        }
        if c.want_write {
            let token = Token(CONN_BASE + slot);
            if registry
                .reregister(&mut c.stream, token, Interest::READABLE)
                .is_err()
            {
                return Pass::Close;
            }
            c.want_write = false;
        }
        c.wbuf.clear();
        c.wpos = 0;
        if c.wbuf.capacity() > 64 * 1024 {
            c.wbuf.shrink_to(512);
        }
        if c.start_tls {
            // The 220 to STARTTLS is on the wire in plain text; from here on it is TLS.
            c.start_tls = false;
            match shared.tls_config(c.listener).map(TlsLayer::new_server) {
                Some(Ok(layer)) => c.tls = Some(layer),
                _ => return Pass::Close,
            }
        }
        if c.session.is_closed() {
            if let Some(tls) = &mut c.tls
                && !tls.is_handshaking()
            {
                tls.close();
                tls.drain_wire(&mut c.wbuf);
                let _ = c.stream.write(&c.wbuf);
            }
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            return Pass::Close;
        }
        if c.session.has_buffered_commands() {
            if reads >= READS_PER_PASS {
                return Pass::More;
            }
            reads += 1;
            c.session.handle_input(now, &[]);
            continue;
        }
        let handshaking = c.tls.as_ref().is_some_and(|t| t.is_handshaking());
        if !c.readable || !(c.session.wants_input() || handshaking) {
            return Pass::Idle;
        }
        if reads >= READS_PER_PASS {
            return Pass::More;
        }
        reads += 1;
        match c.stream.read(buf) {
            Ok(0) => {
                c.readable = false;
                c.session.handle_eof(now);
            }
            Ok(n) => {
                // A short read drained the socket: the next byte to arrive raises a new readiness
                // edge, so the read that would only say WouldBlock is skipped (one system call
                // fewer per wake-up).
                if n < buf.len() {
                    c.readable = false;
                }
                match &mut c.tls {
                    None => c.session.handle_input(now, &buf[..n]),
                    Some(tls) => {
                        let was_handshaking = tls.is_handshaking();
                        plain.clear();
                        if tls.feed(&buf[..n], &mut plain).is_err() {
                            // Not TLS, or a broken handshake: send rustls's alert, then close.
                            let mut alert = Vec::new();
                            tls.drain_wire(&mut alert);
                            let _ = c.stream.write(&alert);
                            return Pass::Close;
                        }
                        if was_handshaking && !tls.is_handshaking() {
                            let (version, cipher) = tls.describe();
                            let info = TlsInfo {
                                version: version.replace("TLSv1_", "TLSv1."),
                                cipher,
                            };
                            c.session.tls_established(now, info);
                        }
                        if !plain.is_empty() {
                            c.session.handle_input(now, &plain);
                        }
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                c.readable = false;
                return Pass::Idle;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                c.readable = false;
                c.session.handle_eof(now);
            }
        }
    }
}

/// Answers the session's decisions: sender, recipients, and hands complete messages to intake.
fn decide(c: &mut Conn, slot: usize, thread: usize, shared: &Shared, now: Instant) {
    let listener = &shared.listeners[c.listener];
    while let Some(ev) = c.session.poll_event() {
        match ev {
            Event::Helo { .. } | Event::Reset | Event::Closed(_) => {}
            Event::StartTls => c.start_tls = true,
            Event::Auth {
                identity, password, ..
            } => {
                let ip = c.peer.ip();
                let job = AuthJob {
                    reply_to: ReplyTo {
                        thread,
                        slot,
                        generation: c.generation,
                    },
                    client: ip,
                    identity,
                    password,
                };
                let refusal = if shared.limiter.is_locked(ip, now) {
                    Some(server::reply(
                        421,
                        (4, 7, 0),
                        "Error: too many authentication failures from your address",
                    ))
                } else {
                    match shared.auth_jobs.as_ref().map(|q| q.try_send(job)) {
                        Some(Ok(())) => None,
                        _ => Some(server::reply(
                            454,
                            (4, 7, 0),
                            "Error: temporary authentication failure",
                        )),
                    }
                };
                if let Some(r) = refusal {
                    let _ = c.session.answer(now, &r);
                }
            }
            Event::Mail(m) => {
                let tenant = c.login.as_ref().map_or(listener.tenant.as_str(), |l| &l.1);
                let r = mail_decision(shared, tenant, &m.sender);
                let _ = c.session.answer(now, &r);
            }
            Event::Rcpt { recipient } => {
                let tenant = c.login.as_ref().map_or(listener.tenant.as_str(), |l| &l.1);
                let r = rcpt_decision(shared, listener, tenant, c.peer.ip(), &recipient);
                let _ = c.session.answer(now, &r);
            }
            Event::Message(m) => {
                let protocol = m.protocol().to_string();
                let mut tags = vec![
                    ("client_ip".into(), c.peer.ip().to_string()),
                    ("listener".into(), listener.name.clone()),
                ];
                if let Some((identity, _)) = &c.login {
                    tags.push(("auth".into(), identity.clone()));
                }
                let submission = Submission {
                    sender: m.mail.sender,
                    recipients: m.recipients,
                    tenant: c
                        .login
                        .as_ref()
                        .map_or_else(|| listener.tenant.clone(), |l| l.1.clone()),
                    tags,
                    body: m.data,
                    client_host: m.helo,
                    client_ip: Some(c.peer.ip()),
                    protocol,
                    tls: m
                        .tls
                        .as_ref()
                        .map(|t| format!("{} with cipher {}", t.version, t.cipher))
                        .unwrap_or_default(),
                    auth: match (&c.login, shared.received_auth) {
                        (Some((identity, _)), true) => identity.clone(),
                        _ => String::new(),
                    },
                    ..Default::default()
                };
                let job = Job {
                    submission,
                    reply_to: ReplyTo {
                        thread,
                        slot,
                        generation: c.generation,
                    },
                    client: c.peer.ip(),
                    listener: listener.name.clone(),
                };
                match shared.jobs.try_send(job) {
                    Ok(()) => {}
                    Err(_) => {
                        let l = serde_json::json!({
                            "event": "refused",
                            "error": "intake queue full",
                            "client_ip": c.peer.ip().to_string(),
                            "listener": listener.name,
                        });
                        shared.log.write_lines([l.to_string().as_str()]);
                        shared.stats.listener_messages(&listener.name, 0, 1);
                        let _ = c.session.answer(
                            now,
                            &server::reply(451, (4, 3, 0), "Error: queue busy, try again later"),
                        );
                    }
                }
            }
        }
    }
}

fn mail_decision(shared: &Shared, tenant_name: &str, sender: &str) -> Reply {
    if let Some(reg) = shared.engine.tenants() {
        let Some(tenant) = reg.get(tenant_name) else {
            return server::reply(451, (4, 3, 5), "Error: tenant not configured");
        };
        if reg.is_locked(tenant_name) {
            return server::reply(550, (5, 7, 1), "Error: account locked");
        }
        if !sender.is_empty() && !tenant.is_approved(sender) {
            return server::reply(
                550,
                (5, 7, 1),
                format!("<{sender}>: Sender address rejected: not approved for this service"),
            );
        }
    }
    server::reply(250, (2, 1, 0), "Ok")
}

fn rcpt_decision(
    shared: &Shared,
    listener: &Listener,
    tenant: &str,
    client: IpAddr,
    rcpt: &str,
) -> Reply {
    // A relay listener trusts its networks; a submission listener trusts the login (its session
    // takes no MAIL before a successful AUTH), and its networks too when it lists some.
    let network_checked = listener.role == Role::Relay || !listener.allowed_networks.is_empty();
    if network_checked && !listener.allows(client) {
        return server::reply(550, (5, 7, 1), format!("<{rcpt}>: Relay access denied"));
    }
    // The engine's own check, so nothing passes RCPT that submission would refuse after the data.
    if let Err(e) = vmta::engine::check_address(rcpt, "recipient") {
        return server::reply(
            501,
            (5, 1, 3),
            format!("Bad recipient address syntax: {}", invalid_reason(&e)),
        );
    }
    if let Some(hit) = shared.engine.suppression(tenant, rcpt, None) {
        return server::reply(
            550,
            (5, 7, 1),
            format!(
                "<{rcpt}>: Recipient address suppressed ({}, since {})",
                hit.reason.as_str(),
                hit.created
            ),
        );
    }
    server::reply(250, (2, 1, 5), "Ok")
}

/// The text of an `Invalid` refusal without its "invalid message:" prefix.
fn invalid_reason(e: &SubmitError) -> String {
    match e {
        SubmitError::Invalid(why) => why.clone(),
        other => other.to_string(),
    }
}

/// The reply to a login from the verifier's answer; a success remembers the login.
fn auth_reply(
    shared: &Shared,
    c: &mut Conn,
    identity: String,
    tenant: Option<String>,
    locked: bool,
) -> Reply {
    let l = serde_json::json!({
        "event": if tenant.is_some() { "login" } else { "login-failed" },
        "identity": identity,
        "tenant": tenant,
        "client_ip": c.peer.ip().to_string(),
        "locked": locked,
    });
    shared.log.write_lines([l.to_string().as_str()]);
    match tenant {
        Some(t) => {
            c.login = Some((identity, t));
            server::reply(235, (2, 7, 0), "Authentication successful")
        }
        None if locked => server::reply(
            421,
            (4, 7, 0),
            "Error: too many authentication failures from your address",
        ),
        None => server::reply(535, (5, 7, 8), "Error: authentication failed"),
    }
}

/// The reply to a message's data from the engine's answer: `250` with the queue id once durable.
pub fn message_reply(result: &Result<u64, SubmitError>) -> Reply {
    match result {
        Ok(id) => server::reply(250, (2, 0, 0), format!("Ok: queued as {id:016x}")),
        Err(e) => match e {
            SubmitError::Busy => {
                server::reply(451, (4, 3, 0), "Error: queue busy, try again later")
            }
            SubmitError::NoSpace => {
                server::reply(452, (4, 3, 1), "Error: insufficient system storage")
            }
            SubmitError::Spool(why) => server::reply(
                451,
                (4, 3, 0),
                format!("Error: queue file write error: {why}"),
            ),
            SubmitError::ShuttingDown => {
                server::reply(421, (4, 3, 2), "Error: service shutting down")
            }
            SubmitError::Invalid(why) => {
                server::reply(550, (5, 6, 0), format!("Error: message refused: {why}"))
            }
            SubmitError::UnknownTenant(t) => {
                server::reply(550, (5, 7, 1), format!("Error: unknown tenant {t}"))
            }
            SubmitError::AccountLocked(t) => {
                server::reply(550, (5, 7, 1), format!("Error: account locked: {t}"))
            }
            SubmitError::SenderNotApproved(why) => {
                server::reply(550, (5, 7, 1), format!("Error: {why}"))
            }
            SubmitError::Suppressed(who) => server::reply(
                550,
                (5, 7, 1),
                format!("Error: all recipients suppressed: {who}"),
            ),
        },
    }
}
