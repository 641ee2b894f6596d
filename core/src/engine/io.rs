//! The shard thread: one mio loop carrying out a [`ShardCore`]'s actions with real sockets, its DNS
//! resolver and its spool, and feeding submissions from the shard's ring.
//!
//! Per loop pass, in order: socket readiness (connect results, reads, writes), DNS readiness, up to
//! [`SUBMISSIONS_PER_PASS`] submissions (appended to the spool), control messages, DNS answers,
//! timers; then the start of one spool commit for everything the pass recorded so far (the spool
//! holds the records and writes them with one `pwrite`; the spool's committer thread runs the
//! group-commit `fdatasync` and wakes the shard when it returns); then the core's actions, output,
//! another commit start for what those recorded, and the landing of every commit found durable:
//! its submissions are scheduled and acknowledged and the events behind it released. The shard
//! never waits for the disk, and a commit in flight gathers the next pass's records for the next
//! flush. Work per pass is bounded so one busy peer cannot starve the shard.

use super::shard::{Action, ConnId, Now, ShardCore};
use super::suppression::{OutcomeBatch, WriterMessage, WriterTally};
use super::{Control, EventQueue, SubmitError, SubmitPart};
use crate::dns::{self, Answer, Query};
use crate::spool::{Envelope as SpoolEnvelope, MessageFlags};
use crossbeam::queue::ArrayQueue;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Submissions taken from the ring per loop pass.
pub(crate) const SUBMISSIONS_PER_PASS: usize = 1024;
/// Bytes read from one connection per loop pass.
const READ_PER_PASS: usize = 256 * 1024;

pub(crate) const WAKER: Token = Token(0);
pub(crate) const DNS_BASE: usize = 1;
const CONN_BASE: usize = 1 << 20;

struct Socket {
    stream: TcpStream,
    connected: bool,
    out: Vec<u8>,
    written: usize,
    writable_interest: bool,
}

/// Everything a shard thread owns.
pub(crate) struct ShardThread {
    pub core: ShardCore,
    pub poll: Poll,
    pub dns: dns::Driver,
    pub ring: Arc<ArrayQueue<SubmitPart>>,
    /// Set while the thread is about to sleep in its poll (see `ShardHandle::wake_for_ring`).
    pub parked: Arc<std::sync::atomic::AtomicBool>,
    /// Set once the thread takes no more submissions (see `ShardHandle::push_to_ring`).
    pub closed: Arc<std::sync::atomic::AtomicBool>,
    pub control: crossbeam::channel::Receiver<Control>,
    pub events: Arc<EventQueue>,
    /// With a suppression list: its writer, which records the pass's observations and then releases
    /// its events.
    pub outcomes: Option<crossbeam::channel::Sender<WriterMessage>>,
    /// The writer's tally of this shard's batches, and how many were handed to it: when the two
    /// agree and a pass observed nothing, its events skip the writer.
    pub tally: Arc<WriterTally>,
    pub sent_to_writer: u64,
    /// The least time between two commits (group commit window; zero: every pass).
    pub commit_window: Duration,
}

impl std::fmt::Debug for ShardThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardThread")
            .field("shard", &self.core.shard())
            .finish()
    }
}

impl ShardThread {
    /// Runs until shutdown completes.
    pub(crate) fn run(mut self) {
        let mut sockets: Vec<Option<Socket>> = Vec::new();
        let mut mio_events = Events::with_capacity(1024);
        let mut readbuf = vec![0u8; 64 * 1024];
        let mut batch = Vec::new();
        let mut dirty = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut last_maintenance = Instant::now();
        // Submissions appended this pass, acknowledged after the pass's commit.
        let mut appended: Vec<(SubmitPart, crate::spool::MessageId)> = Vec::new();
        let mut again = false;
        let mut commit = Commit {
            uncommitted: None,
            last: Instant::now()
                .checked_sub(self.commit_window)
                .unwrap_or_else(Instant::now),
            flights: VecDeque::new(),
        };
        // Every record of a pass reaches the file in one `pwrite`, made durable by one commit.
        let _ = self.core.spool_mut().hold_writes(true);
        loop {
            let now = Now::system();
            let mut wait = Duration::from_secs(1);
            if std::mem::take(&mut again) {
                wait = Duration::ZERO;
            }
            if commit.uncommitted.is_some() {
                let due = (commit.last + self.commit_window).saturating_duration_since(now.mono);
                wait = wait.min(due);
            }
            if let Some(t) = self.core.poll_timeout(now) {
                wait = wait.min(t.saturating_duration_since(now.mono));
            }
            if let Some(t) = self.dns.poll_timeout() {
                wait = wait.min(t.saturating_duration_since(now.mono));
            }
            // Parked before the look at the ring: a submitter that pushes after the look sees the
            // flag and wakes the poll (`ShardHandle::wake_for_ring`).
            self.parked.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.ring.is_empty() {
                wait = Duration::ZERO;
            }
            let polled = self.poll.poll(&mut mio_events, Some(wait));
            self.parked.store(false, Ordering::Relaxed);
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                break;
            }
            let now = Now::system();
            for ev in mio_events.iter() {
                let token = ev.token();
                if token == WAKER {
                    continue;
                }
                if self.dns.owns(token) {
                    self.dns.handle_ready(self.poll.registry(), now.mono, token);
                    continue;
                }
                let id = token.0.wrapping_sub(CONN_BASE);
                let Some(sock) = sockets.get_mut(id).and_then(|s| s.as_mut()) else {
                    continue;
                };
                if !sock.connected {
                    match sock.stream.take_error() {
                        Ok(Some(e)) | Err(e) => {
                            close_socket(&self.poll, &mut sockets, id);
                            self.core.on_connect_failed(now, id, &e.to_string());
                            continue;
                        }
                        Ok(None) => {}
                    }
                    match sock.stream.peer_addr() {
                        Ok(_) => {
                            sock.connected = true;
                            self.core.on_connected(now, id);
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                        Err(e) => {
                            close_socket(&self.poll, &mut sockets, id);
                            self.core.on_connect_failed(now, id, &e.to_string());
                            continue;
                        }
                    }
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    let mut total = 0;
                    while let Some(sock) = sockets.get_mut(id).and_then(|s| s.as_mut()) {
                        match sock.stream.read(&mut readbuf) {
                            Ok(0) => {
                                self.core.on_eof(now, id);
                                break;
                            }
                            Ok(n) => {
                                self.core.on_input(now, id, &readbuf[..n]);
                                total += n;
                                // The input may have ended the connection (a 221 to QUIT, a 421):
                                // its id may already belong to a new connection, so this socket's
                                // next bytes or end of stream must not reach the core under it.
                                if total >= READ_PER_PASS || self.core.close_pending(id) {
                                    break;
                                }
                                // A short read emptied the receive queue: bytes arriving after it
                                // raise a new edge, so asking again would only earn `WouldBlock`
                                // (one system call per reply saved).
                                if n < readbuf.len() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(_) => {
                                self.core.on_eof(now, id);
                                break;
                            }
                        }
                    }
                }
                if ev.is_writable() && !dirty.contains(&id) {
                    dirty.push(id);
                }
            }

            let submitted = self.take_submissions(&mut appended);
            while let Ok(c) = self.control.try_recv() {
                match c {
                    Control::Cancel(id, reply) => {
                        let n = self.core.cancel(now, id);
                        let _ = reply.send(n);
                    }
                    Control::Pause(paused) => self.core.set_paused(now, paused),
                    Control::Inspect(reply) => {
                        let _ = reply.send(self.core.queue_report(now));
                    }
                    Control::Destination(domain, reply) => {
                        let _ = reply.send(self.core.destination_state(now, &domain));
                    }
                    Control::Bounce(which, reason, reply) => {
                        let _ = reply.send(self.core.bounce_queued(now, &which, &reason));
                    }
                    Control::HoldsChanged => self.core.holds_changed(now),
                    Control::Shutdown(grace) => {
                        deadline = Some(now.mono + grace);
                        self.core.begin_shutdown(now);
                    }
                }
            }
            self.dns.handle_timeout(self.poll.registry(), now.mono);
            while let Some(done) = self.dns.poll_event() {
                let answer = match done.answer {
                    Answer::Mx(r) => r,
                    other => Err(other.failure().cloned().unwrap_or_else(|| dns::Failure {
                        reason: dns::Reason::SystemError,
                        permanent: false,
                        detail: "unexpected DNS answer".into(),
                    })),
                };
                self.core.on_resolved(now, done.token as u32, answer);
            }
            self.core.handle_timeout(now);

            // One commit for what the pass recorded so far (and what earlier passes left to it):
            // its state changes and its submissions, which are then scheduled and acknowledged.
            commit.note(self.core.take_commit().max(submitted));
            self.commit_if_due(now, &mut commit, &mut appended, false);
            if self.land(now, &mut commit) {
                again = true;
            }

            // Messages waiting in the spool beyond the active limit join the queues as they drain.
            self.core.refill(now);

            // Actions may produce more actions (a failed connect fails over to the next MX).
            while let Some(action) = self.core.poll_action() {
                match action {
                    Action::Resolve { domain, name } => {
                        self.dns.lookup(
                            self.poll.registry(),
                            now.mono,
                            u64::from(domain),
                            Query::Mx(name),
                        );
                    }
                    Action::Connect {
                        conn,
                        local,
                        remote,
                    } => match connect(&self.poll, conn, local, remote) {
                        Ok(sock) => {
                            if sockets.len() <= conn {
                                sockets.resize_with(conn + 1, || None);
                            }
                            sockets[conn] = Some(sock);
                        }
                        Err(e) => self.core.on_connect_failed(now, conn, &e.to_string()),
                    },
                    Action::Close { conn } => {
                        // Write what is left (QUIT) best effort, then close.
                        if let Some(sock) = sockets.get_mut(conn).and_then(|s| s.as_mut()) {
                            self.core.transmit(now, conn, &mut sock.out);
                            let _ = sock.stream.write(&sock.out[sock.written..]);
                        }
                        close_socket(&self.poll, &mut sockets, conn);
                    }
                }
            }
            // A new DNS question may be waiting to be sent.
            self.dns.handle_timeout(self.poll.registry(), now.mono);

            self.core.take_dirty(&mut dirty);
            for id in dirty.drain(..) {
                flush(&self.poll, &mut self.core, now, &mut sockets, id);
            }

            // Events go out once every record behind them is committed: with the commit that
            // covers them, or at once when nothing is left to commit.
            commit.note(self.core.take_commit());
            self.commit_if_due(now, &mut commit, &mut appended, deadline.is_some());
            self.core.settle_attempts();
            if commit.uncommitted.is_none() {
                let mut outcomes = self.take_outcomes(&mut batch);
                match commit.flights.back_mut() {
                    Some(f) => f.outcomes.append(&mut outcomes),
                    None => self.release(outcomes),
                }
            }
            if self.land(now, &mut commit) {
                again = true;
            }

            if let Some(d) = deadline {
                if !self.core.has_connections() {
                    break;
                }
                if now.mono >= d {
                    self.core.abort_all(now);
                    while let Some(action) = self.core.poll_action() {
                        if let Action::Close { conn } = action {
                            close_socket(&self.poll, &mut sockets, conn);
                        }
                    }
                    commit.note(self.core.take_commit());
                    self.commit_if_due(now, &mut commit, &mut appended, true);
                    break;
                }
            }
            // Every 10 s; every second while final outcomes wait for room on a full disk.
            let every = if self.core.has_unrecorded() { 1 } else { 10 };
            if last_maintenance.elapsed() >= Duration::from_secs(every) {
                last_maintenance = Instant::now();
                self.core.maintain();
            }
        }
        // Whatever is still in flight lands now, and the events of the last passes go out.
        let _ = self.core.spool_mut().flush();
        let now = Now::system();
        self.land(now, &mut commit);
        let outcomes = self.take_outcomes(&mut batch);
        self.release(outcomes);
        // Submissions pushed after the last pass are answered, not dropped: a waiting submitter
        // gets `ShuttingDown`, one that did not wait a `refused` event per recipient. A submitter
        // that pushes after this drain sees `closed` and drains the ring itself.
        self.closed.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        while let Some(part) = self.ring.pop() {
            part.answer(Err(SubmitError::ShuttingDown));
        }
    }

    /// Takes the events and observations the core produced so far.
    fn take_outcomes(&mut self, batch: &mut Vec<super::DeliveryEvent>) -> Outcomes {
        self.core.take_events(batch);
        let mut observations = Vec::new();
        if self.outcomes.is_some() {
            self.core.take_observations(&mut observations);
        }
        Outcomes {
            events: std::mem::take(batch),
            observations,
        }
    }

    /// Hands events (committed to the spool) to the host: through the suppression writer, with the
    /// observations behind them, when there is a list; directly otherwise.
    fn release(&mut self, o: Outcomes) {
        if o.events.is_empty() && o.observations.is_empty() {
            return;
        }
        // Lines no spool write has flushed yet (outcomes whose record waits for room) go out
        // before their events; but never ahead of records still held, or the mark would stop
        // naming the lines those records lack (the spool's next write flushes them first).
        if let Some(log) = self.core.log()
            && !self.core.spool_holds_records()
        {
            log.flush();
        }
        // With nothing to record and none of this shard's batches still at the writer, the
        // events go out directly, still after every event of the shard before them.
        let at_writer = || {
            self.tally
                .batches
                .load(std::sync::atomic::Ordering::Acquire)
                != self.sent_to_writer
        };
        match &self.outcomes {
            Some(tx) if !o.observations.is_empty() || at_writer() => {
                let b = OutcomeBatch {
                    observations: o.observations,
                    events: o.events,
                    tally: self.tally.clone(),
                };
                self.sent_to_writer += 1;
                if let Err(crossbeam::channel::SendError(WriterMessage::Batch(b))) =
                    tx.send(WriterMessage::Batch(b))
                {
                    // The writer is gone (never during normal operation): the events still go out.
                    self.sent_to_writer -= 1;
                    let mut events = b.events;
                    self.events.push_logged(&mut events);
                }
            }
            _ => {
                let mut events = o.events;
                if !events.is_empty() {
                    self.events.push_logged(&mut events);
                }
            }
        }
    }

    /// Lands the commits whose tickets are durable, oldest first: schedules and acknowledges their
    /// submissions (or refuses them when the flush failed) and releases their events. Returns
    /// whether any submission was acknowledged.
    fn land(&mut self, now: Now, commit: &mut Commit) -> bool {
        let mut acknowledged = false;
        while let Some(f) = commit.flights.front()
            && let Some(done) = self.core.spool_mut().commit_done(f.ticket)
            && let Some(mut f) = commit.flights.pop_front()
        {
            acknowledged |= !f.appended.is_empty();
            self.acknowledge(now, &mut f.appended, done);
            self.release(f.outcomes);
        }
        acknowledged
    }

    /// Starts the commit of what is recorded and not yet committed: at once when submissions wait
    /// for it (or `force`), otherwise once the group commit window since the last commit has
    /// passed. The commit is in flight until [`ShardThread::land`] finds its ticket durable; a
    /// commit that cannot start refuses its submissions at once.
    fn commit_if_due(
        &mut self,
        now: Now,
        commit: &mut Commit,
        appended: &mut Vec<(SubmitPart, crate::spool::MessageId)>,
        force: bool,
    ) {
        let Some(ticket) = commit.uncommitted else {
            return;
        };
        // Submitters wait for their acknowledgement: those are never held back. State changes alone
        // wait for the window, so a busy shard flushes them with the next submissions or in bulk.
        if !force && appended.is_empty() && now.mono < commit.last + self.commit_window {
            return;
        }
        let started = self.core.spool_mut().commit_start(ticket);
        commit.uncommitted = None;
        commit.last = Instant::now();
        match started {
            Ok(()) => commit.flights.push_back(Flight {
                ticket,
                appended: std::mem::take(appended),
                outcomes: Outcomes::default(),
            }),
            Err(e) => self.acknowledge(now, appended, Err(e)),
        }
    }

    /// Appends waiting submissions to the spool (held until the pass's commit) and returns the last
    /// ticket; a submission the spool refuses is answered at once.
    fn take_submissions(
        &mut self,
        appended: &mut Vec<(SubmitPart, crate::spool::MessageId)>,
    ) -> Option<crate::spool::Ticket> {
        let mut last = None;
        let now = Now::system().unix();
        // One allocation per pass for the borrowed address and tag lists, not one per message.
        let mut rcpts_spare: Vec<&str> = Vec::new();
        let mut tags_spare: Vec<(&str, &str)> = Vec::new();
        for _ in 0..SUBMISSIONS_PER_PASS {
            let Some(part) = self.ring.pop() else {
                break;
            };
            if part.ack.is_abandoned() {
                part.answer(Ok(()));
                continue;
            }
            let mut hex = [0u8; 16];
            let id_tag = hex_id(part.id, &mut hex);
            let mut rcpts = recycle(std::mem::take(&mut rcpts_spare));
            rcpts.extend(part.recipients.iter().map(String::as_str));
            let mut tags = recycle(std::mem::take(&mut tags_spare));
            tags.push((super::shard::ID_TAG, id_tag));
            tags.extend(part.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let env = SpoolEnvelope {
                sender: &part.sender,
                recipients: &rcpts,
                tenant: &part.tenant,
                tags: &tags,
                priority: part.priority,
                flags: part.flags,
                submitted_at: now,
            };
            let appended_to = self.core.spool_mut().append(&env, &part.body);
            rcpts_spare = recycle(rcpts);
            tags_spare = recycle(tags);
            match appended_to {
                Ok((id, ticket)) => {
                    last = Some(ticket);
                    appended.push((part, id));
                }
                Err(e) => part.answer(Err(SubmitError::from_spool(e))),
            }
        }
        last
    }

    /// After the commit that covered them: schedules and acknowledges the pass's submissions, or
    /// takes them back and refuses them when it failed.
    fn acknowledge(
        &mut self,
        now: Now,
        appended: &mut Vec<(SubmitPart, crate::spool::MessageId)>,
        committed: Result<(), crate::spool::SpoolError>,
    ) {
        match committed {
            Ok(()) => {
                for (part, id) in appended.drain(..) {
                    self.core.enqueue(part.id, id);
                    part.answer(Ok(()));
                }
                self.core.dispatch_pending(now);
            }
            Err(e) => {
                let e = SubmitError::from_spool(e);
                for (part, id) in appended.drain(..) {
                    // Not acknowledged: take it back so it is never delivered behind the host's back.
                    let _ = self.core.spool_mut().remove(id);
                    part.answer(Err(e.clone()));
                }
            }
        }
    }
}

/// The shard's group commit: the newest spool ticket not yet committed, when the last commit
/// started, and the commits in flight (asked of the committer, not yet durable), oldest first.
struct Commit {
    uncommitted: Option<crate::spool::Ticket>,
    last: Instant,
    flights: VecDeque<Flight>,
}

/// A commit in flight: its ticket, the submissions acknowledged when it lands and the events
/// released then.
struct Flight {
    ticket: crate::spool::Ticket,
    appended: Vec<(SubmitPart, crate::spool::MessageId)>,
    outcomes: Outcomes,
}

/// Events for the host and observations for the suppression list, released together.
#[derive(Default)]
struct Outcomes {
    events: Vec<super::DeliveryEvent>,
    observations: Vec<super::suppression::Observation>,
}

impl Outcomes {
    fn append(&mut self, other: &mut Outcomes) {
        self.events.append(&mut other.events);
        self.observations.append(&mut other.observations);
    }
}

impl Commit {
    fn note(&mut self, t: Option<crate::spool::Ticket>) {
        self.uncommitted = self.uncommitted.max(t);
    }
}

/// `id` as 16 lowercase hex digits (the engine id tag), written into `buf`.
fn hex_id(id: u64, buf: &mut [u8; 16]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = DIGITS[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Opens a non-blocking connection, bound to `local` when given.
fn connect(
    poll: &Poll,
    conn: ConnId,
    local: Option<IpAddr>,
    remote: SocketAddr,
) -> io::Result<Socket> {
    use socket2::{Domain, Protocol, Socket as RawSocket, Type};
    let socket = RawSocket::new(
        Domain::for_address(remote),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = local {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&remote.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let mut stream = TcpStream::from_std(socket.into());
    poll.registry().register(
        &mut stream,
        Token(CONN_BASE + conn),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    Ok(Socket {
        stream,
        connected: false,
        out: Vec::with_capacity(4096),
        written: 0,
        writable_interest: true,
    })
}

fn close_socket(poll: &Poll, sockets: &mut [Option<Socket>], id: ConnId) {
    if let Some(mut s) = sockets.get_mut(id).and_then(|s| s.take()) {
        let _ = poll.registry().deregister(&mut s.stream);
    }
}

/// Writes what the session has for a connection; asks for writability when the socket is full.
fn flush(poll: &Poll, core: &mut ShardCore, now: Now, sockets: &mut [Option<Socket>], id: ConnId) {
    let Some(sock) = sockets.get_mut(id).and_then(|s| s.as_mut()) else {
        return;
    };
    if !sock.connected {
        return;
    }
    loop {
        if sock.written == sock.out.len() {
            sock.out.clear();
            sock.written = 0;
            core.transmit(now, id, &mut sock.out);
            if sock.out.is_empty() {
                break;
            }
        }
        match sock.stream.write(&sock.out[sock.written..]) {
            Ok(0) => break,
            Ok(n) => sock.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                sock.out.clear();
                sock.written = 0;
                core.on_eof(now, id);
                return;
            }
        }
    }
    let want = sock.written < sock.out.len();
    if want != sock.writable_interest {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let _ = poll
            .registry()
            .reregister(&mut sock.stream, Token(CONN_BASE + id), interest);
        sock.writable_interest = want;
    }
}

/// Flags a submission needs.
pub(crate) fn flags_for(sender: &str, recipients: &[String], body: &[u8]) -> MessageFlags {
    let mut f = 0u8;
    if body.iter().any(|b| *b >= 0x80) {
        f |= MessageFlags::EIGHT_BIT.0;
    }
    if !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()) {
        f |= MessageFlags::SMTPUTF8.0;
    }
    MessageFlags(f)
}

/// An emptied vector's allocation, reused for elements of another lifetime (or any type of the same
/// size and alignment: the collection happens in place; otherwise it is a fresh, empty vector).
fn recycle<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_id_matches_the_formatted_tag() {
        for id in [0u64, 1, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut buf = [0u8; 16];
            assert_eq!(super::hex_id(id, &mut buf), format!("{id:016x}"));
        }
    }
}
