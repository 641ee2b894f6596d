//! `vmta bench --blast`: the ceiling reference. Replays the SMTP bytes vmta sends for a workload (EHLO,
//! then per message `MAIL FROM`, `RCPT TO`, `BDAT n LAST` and the message in one write, as vmta does
//! with PIPELINING and CHUNKING) over the same number of connections, with no queue, no spool, no
//! shaping, no DNS and no parsing beyond finding the last line of each reply and its first digit.
//!
//! As many transactions are in flight per connection as vmta is allowed
//! (`delivery.transactions_in_flight`, `vmta bench --transactions-in-flight`): with one, the next is
//! written when the replies of the previous have arrived; with more, each transaction behind another
//! starts with `RSET`, as vmta's do, and a new one is written as each one's replies complete. What it
//! measures is the most a client can move through that sink on this machine with that conversation.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Builds message number `n`: its envelope recipients and its content.
pub type MessageSource = Arc<dyn Fn(u32) -> (Vec<String>, Vec<u8>) + Send + Sync>;

/// What to replay.
#[derive(Clone)]
pub struct BlastPlan {
    /// One entry per MX host: its address and the message numbers it receives.
    pub hosts: Vec<(SocketAddr, Vec<u32>)>,
    /// Connections per host.
    pub connections_per_host: usize,
    /// Threads (each a mio loop over its share of the connections).
    pub threads: usize,
    /// Builds the message and its envelope recipients for a message number.
    pub message: MessageSource,
    /// The envelope sender.
    pub sender: String,
    /// Give up after this long.
    pub limit: Duration,
    /// Transactions in flight per connection (at least 1).
    pub in_flight: usize,
}

impl std::fmt::Debug for BlastPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlastPlan")
            .field("hosts", &self.hosts.len())
            .field("connections_per_host", &self.connections_per_host)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// What the blast did.
#[derive(Debug, Clone, Default)]
pub struct BlastResult {
    /// Messages accepted (a 2xx to the last BDAT).
    pub accepted: u64,
    /// Messages refused.
    pub refused: u64,
    /// Connections opened.
    pub connections: u64,
    /// From the first connect to the last reply.
    pub elapsed: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo,
    /// Transactions in flight (their reply counts in `Conn::pending`).
    Transaction,
    Quit,
}

struct Conn {
    stream: TcpStream,
    host: usize,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    last_code: u8,
    /// Final replies still due, per transaction in flight, oldest first.
    pending: VecDeque<usize>,
}

/// Runs the plan to the end (or the limit).
pub fn run(plan: &BlastPlan) -> io::Result<BlastResult> {
    let started = Instant::now();
    let cursors: Arc<Vec<AtomicUsize>> =
        Arc::new(plan.hosts.iter().map(|_| AtomicUsize::new(0)).collect());
    let threads = plan.threads.max(1);
    let mut handles = Vec::new();
    for t in 0..threads {
        // Connection k of host h goes to thread (h * per_host + k) % threads.
        let mine: Vec<usize> = (0..plan.hosts.len() * plan.connections_per_host)
            .filter(|n| n % threads == t)
            .map(|n| n / plan.connections_per_host)
            .collect();
        let plan = plan.clone();
        let cursors = cursors.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("blast-{t}"))
                .spawn(move || worker(&plan, &cursors, &mine, started))?,
        );
    }
    let mut total = BlastResult::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| io::Error::other("a blast thread panicked"))??;
        total.accepted += r.accepted;
        total.refused += r.refused;
        total.connections += r.connections;
        total.elapsed = total.elapsed.max(r.elapsed);
    }
    Ok(total)
}

fn worker(
    plan: &BlastPlan,
    cursors: &[AtomicUsize],
    hosts: &[usize],
    started: Instant,
) -> io::Result<BlastResult> {
    let mut poll = Poll::new()?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut result = BlastResult::default();
    for (i, &h) in hosts.iter().enumerate() {
        let mut stream = TcpStream::connect(plan.hosts[h].0)?;
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        conns.push(Some(Conn {
            stream,
            host: h,
            state: State::Greeting,
            input: Vec::with_capacity(4096),
            output: Vec::with_capacity(4096),
            written: 0,
            last_code: 0,
            pending: VecDeque::with_capacity(plan.in_flight),
        }));
        result.connections += 1;
    }
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut open = conns.len();
    let deadline = started + plan.limit;
    while open > 0 {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "blast did not finish in time",
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else {
                continue;
            };
            let mut closed = false;
            if ev.is_readable() || ev.is_read_closed() {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => c.input.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                advance(plan, cursors, c, &mut result);
            }
            if !closed {
                closed = write_out(c)?;
            }
            if closed || (c.state == State::Quit && c.output.is_empty() && c.input.is_empty()) {
                if c.state != State::Quit {
                    return Err(io::Error::other(format!(
                        "the sink closed a connection in state {:?}",
                        c.state
                    )));
                }
                let _ = poll.registry().deregister(&mut c.stream);
                conns[i] = None;
                open -= 1;
                result.elapsed = started.elapsed();
            }
        }
    }
    Ok(result)
}

/// Counts the final lines of replies and writes what comes next.
fn advance(plan: &BlastPlan, cursors: &[AtomicUsize], c: &mut Conn, result: &mut BlastResult) {
    let mut pos = 0;
    while let Some(nl) = memchr::memchr(b'\n', &c.input[pos..]) {
        let line = &c.input[pos..pos + nl + 1];
        pos += nl + 1;
        if line.len() < 4 || line[3] != b' ' {
            continue;
        }
        c.last_code = line[0];
        match c.state {
            State::Greeting => {
                c.output.extend_from_slice(b"EHLO blast.vmta.test\r\n");
                c.state = State::Ehlo;
            }
            State::Ehlo => {
                for _ in 0..plan.in_flight.max(1) {
                    next_transaction(plan, cursors, c);
                }
            }
            State::Transaction => {
                let Some(left) = c.pending.front_mut() else {
                    continue;
                };
                *left -= 1;
                if *left == 0 {
                    c.pending.pop_front();
                    if c.last_code == b'2' {
                        result.accepted += 1;
                    } else {
                        result.refused += 1;
                    }
                    next_transaction(plan, cursors, c);
                }
            }
            State::Quit => {}
        }
    }
    c.input.drain(..pos);
}

fn next_transaction(plan: &BlastPlan, cursors: &[AtomicUsize], c: &mut Conn) {
    let list = &plan.hosts[c.host].1;
    let k = cursors[c.host].fetch_add(1, Ordering::Relaxed);
    let Some(&n) = list.get(k) else {
        // Nothing left for this host: QUIT once the transactions in flight are answered.
        if c.pending.is_empty() {
            c.output.extend_from_slice(b"QUIT\r\n");
            c.state = State::Quit;
        }
        return;
    };
    let (rcpts, body) = (plan.message)(n);
    let out = &mut c.output;
    let behind = !c.pending.is_empty();
    if behind {
        out.extend_from_slice(b"RSET\r\n");
    }
    let _ = write!(out, "MAIL FROM:<{}> SIZE={}\r\n", plan.sender, body.len());
    for r in &rcpts {
        let _ = write!(out, "RCPT TO:<{r}>\r\n");
    }
    let _ = write!(out, "BDAT {} LAST\r\n", body.len());
    out.extend_from_slice(&body);
    c.state = State::Transaction;
    c.pending.push_back(rcpts.len() + 2 + usize::from(behind));
}

/// Writes what is pending; true when the connection failed.
fn write_out(c: &mut Conn) -> io::Result<bool> {
    while c.written < c.output.len() {
        match c.stream.write(&c.output[c.written..]) {
            Ok(0) => return Ok(true),
            Ok(n) => c.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
            Err(_) => return Ok(true),
        }
    }
    c.output.clear();
    c.written = 0;
    Ok(false)
}
