//! The SMTP server session: one connection from one client, as a sans-IO state machine.
//!
//! The conversation (RFC 5321 §3, §4.1; `C:` client, `S:` server; `?` marks a decision the caller
//! makes through an [`Event`] and [`Session::answer`]):
//!
//! ```text
//! S: 220 host ESMTP                                   Command
//! C: EHLO name        S: 250-host 250-PIPELINING ...   (HELO: plain 250)
//! [C: STARTTLS        S: 220] TLS handshake            TlsHandshake   ? Event::StartTls (RFC 3207)
//! [C: AUTH PLAIN|LOGIN, 334 challenges]                AuthResponse   ? Event::Auth (RFC 4954)
//! per message:
//! C: MAIL FROM:<a> [SIZE=n BODY=8BITMIME SMTPUTF8]     Pending(Mail)   ? Event::Mail
//! C: RCPT TO:<b>      (one per recipient)              Pending(Rcpt)   ? Event::Rcpt
//! C: DATA             S: 354, body, C: .               Data            (dot-unstuffed)
//!  or C: BDAT n [LAST] + n octets                      Bdat            (RFC 3030)
//!                                                      Pending(Message) ? Event::Message
//! C: RSET / NOOP / VRFY / HELP / QUIT                  answered by the session itself
//! ```
//!
//! With PIPELINING (RFC 2920) a client sends many commands in one flight; the session takes them one
//! at a time and answers in order. While a decision is pending it reads nothing further: the bytes
//! wait in its input buffer, which [`Session::wants_input`] bounds, so memory per connection stays
//! bounded whatever a client sends (a line longer than [`ServerConfig::max_line`] is discarded as it
//! arrives and answered `500 5.5.2`; message data beyond [`ServerConfig::max_message_size`] is read and
//! dropped, then answered `552 5.3.4`).
//!
//! The end of message data is `CRLF . CRLF` only: a dot line after a bare LF, or ending in a bare LF,
//! is content (no SMTP smuggling). Dot-unstuffing applies at the start of every line after a CRLF.
//!
//! # Driving a session
//!
//! The session never touches a socket or the clock. The driver:
//!
//! 1. creates it with [`Session::new`] once the client's connection is accepted (or
//!    [`Session::refuse`] to answer `421` and close, for a connection over a limit);
//! 2. reads from the socket only while [`Session::wants_input`], passing the bytes to
//!    [`Session::handle_input`], end of stream to [`Session::handle_eof`], and calls
//!    [`Session::handle_timeout`] once [`Session::poll_timeout`]'s instant has passed;
//! 3. after each of those calls, and after [`Session::answer`] and [`Session::shutdown`], drains
//!    [`Session::poll_event`], answering each [`Event::Mail`], [`Event::Rcpt`] and
//!    [`Event::Message`] with [`Session::answer`] (now or later: the session waits), then writes what
//!    [`Session::poll_transmit`] gives;
//! 4. calls [`Session::handle_input`] with no bytes while [`Session::has_buffered_commands`] (one call
//!    handles at most [`ServerConfig::max_batch`] commands, so one client cannot hold a thread);
//! 5. closes the socket once [`Event::Closed`] was seen and `poll_transmit` gives nothing more.
//!
//! Timeouts (RFC 5321 §4.5.3.2.7 and a bound on slow clients): [`ServerTimeouts::idle`] for a whole
//! command line from the moment the session waits for it (bytes trickling in do not extend it),
//! [`ServerTimeouts::data`] of silence inside message data, [`ServerTimeouts::message`] for all of a
//! message's data. A timeout answers `421 4.4.2` and closes. No timer runs while a decision is pending.
//!
//! # What it does not do
//!
//! No sockets, TLS, authentication or policy: the caller decides on senders, recipients and messages.
//! TLS itself is the driver's: after [`Event::StartTls`] it runs the handshake (rustls, for vmta
//! serve) and calls [`Session::tls_established`]; whatever the client pipelined behind STARTTLS is
//! discarded (CVE-2011-0411) and the session starts over (EHLO again). With implicit TLS (RFC 8314,
//! [`Session::new_implicit_tls`]) the greeting waits for the handshake. AUTH PLAIN and LOGIN are
//! offered only over TLS (`538 5.7.11` before); the caller checks the credentials
//! ([`Event::Auth`]); [`ServerConfig::auth_required`] makes MAIL wait for a successful AUTH
//! (`530 5.7.0`). Other SASL mechanisms get `504 5.5.4`. EXPN `502`; VRFY `252`. DSN parameters
//! (RFC 3461), BINARYMIME, DELIVERBY and the `XCLIENT`/`XFORWARD` extensions are not offered and their
//! parameters are refused with `555 5.5.4`. Enhanced status codes are sent in every reply, also to a
//! client that said HELO.

use super::reply::{EnhancedCode, Reply};
use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// Server-side timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// Waiting for a whole command line (RFC 5321 §4.5.3.2.7: at least 5 minutes). Default 300 s.
    pub idle: Duration,
    /// Silence inside message data (DATA or a BDAT chunk). Default 180 s.
    pub data: Duration,
    /// All of one message's data, from the 354 or the first BDAT to its end. Default 600 s.
    pub message: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            idle: Duration::from_secs(300),
            data: Duration::from_secs(180),
            message: Duration::from_secs(600),
        }
    }
}

/// What a server session offers and the limits it enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The server's name, in the greeting and the EHLO reply.
    pub hostname: String,
    /// The largest message accepted, in octets (announced with SIZE, RFC 1870). Default 50 MiB.
    pub max_message_size: usize,
    /// The most recipients per message (RFC 5321 §4.5.3.1.8 asks for at least 100). Default 1000.
    pub max_recipients: usize,
    /// The longest command line, CRLF included (RFC 5321 §4.5.3.1.4 says 512). Default 2048.
    pub max_line: usize,
    /// The most commands handled by one `handle_input` call (commands per pipelined batch). Default 100.
    pub max_batch: usize,
    /// Bad commands a client may send; the next one is answered `421 4.7.0` and closes. Default 20.
    pub max_errors: u32,
    /// The timeouts.
    pub timeouts: ServerTimeouts,
    /// Offer PIPELINING (RFC 2920). Default on.
    pub pipelining: bool,
    /// Offer CHUNKING (RFC 3030). Default on.
    pub chunking: bool,
    /// Offer SMTPUTF8 (RFC 6531). Default on.
    pub smtputf8: bool,
    /// Offer STARTTLS (RFC 3207) on a connection not yet encrypted. Default off (the driver must be
    /// able to start TLS when [`Event::StartTls`] comes).
    pub starttls: bool,
    /// Offer AUTH PLAIN and LOGIN (RFC 4954), only once the connection is encrypted. Default off.
    pub auth: bool,
    /// MAIL needs a successful AUTH first (`530 5.7.0`), as on a submission port (RFC 6409 §4.3).
    /// Default off.
    pub auth_required: bool,
}

impl ServerConfig {
    /// The defaults, with `hostname` as the server's name.
    pub fn new(hostname: impl Into<String>) -> ServerConfig {
        ServerConfig {
            hostname: hostname.into(),
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_line: 2048,
            max_batch: 100,
            max_errors: 20,
            timeouts: ServerTimeouts::default(),
            pipelining: true,
            chunking: true,
            smtputf8: true,
            starttls: false,
            auth: false,
            auth_required: false,
        }
    }

    /// The most bytes the session buffers beyond what it has handled.
    fn input_window(&self) -> usize {
        self.max_line + INPUT_SLACK
    }
}

/// Bytes a session may hold beyond one command line: pipelined commands waiting behind a decision.
const INPUT_SLACK: usize = 64 * 1024;

/// The `BODY=` parameter of MAIL (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// None given, or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// The envelope sender and its parameters, as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse path; empty for the null sender `<>`.
    pub sender: String,
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: BodyType,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

/// What the driver tells the session about an established TLS layer, for the trace field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// The protocol version, such as `TLSv1.3`.
    pub version: String,
    /// The cipher suite, such as `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// A message whose data is complete, waiting for the caller's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The name the client gave in EHLO or HELO.
    pub helo: String,
    /// Whether the client said EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// The envelope sender and its parameters.
    pub mail: MailFrom,
    /// The accepted recipients, in order.
    pub recipients: Vec<String>,
    /// The message data, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
    /// Whether the data came in BDAT chunks.
    pub chunked: bool,
    /// The TLS layer the message came over, if any.
    pub tls: Option<TlsInfo>,
    /// The identity the client authenticated as (RFC 4954), if it did.
    pub auth: Option<String>,
}

impl Message {
    /// The Received field's `with` clause (RFC 3848): SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA.
    pub fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.auth.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }
}

/// Something the caller learns, and for three kinds must answer with [`Session::answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client greeted with EHLO (`esmtp`) or HELO. Informational.
    Helo {
        /// The name it gave.
        name: String,
        /// EHLO rather than HELO.
        esmtp: bool,
    },
    /// MAIL FROM: answer 2xx to start the transaction, 4xx/5xx to refuse it.
    Mail(MailFrom),
    /// RCPT TO: answer 2xx to take the recipient, 4xx/5xx to refuse it.
    Rcpt {
        /// The forward path (source routes dropped).
        recipient: String,
    },
    /// The message data is complete: answer 2xx once it is safe (durable), 4xx/5xx to refuse it.
    Message(Message),
    /// The client asked for STARTTLS and got its `220`: once `poll_transmit` has given that reply,
    /// the driver starts the TLS handshake (server side) and calls [`Session::tls_established`]
    /// when it completes, or drops the connection if it fails. Bytes the client sent behind the
    /// STARTTLS command were discarded (CVE-2011-0411).
    StartTls,
    /// AUTH PLAIN or LOGIN with its credentials: answer 2xx (`235 2.7.0`) to accept the identity,
    /// `535 5.7.8` to refuse it, `454 4.7.0` for a temporary failure.
    Auth {
        /// The authentication identity (authcid).
        identity: String,
        /// The authorization identity, when the client gave one other than the identity.
        authzid: String,
        /// The password.
        password: String,
    },
    /// The client reset its transaction (RSET, or EHLO/HELO again). Informational.
    Reset,
    /// The session is over; `poll_transmit` may still hold its last reply.
    Closed(CloseCause),
}

/// Why a server session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// The client said QUIT.
    Quit,
    /// The client closed its side of the connection.
    Eof,
    /// The client closed its side in the middle of message data or a transaction.
    EofInTransaction,
    /// A timeout (`421 4.4.2` sent).
    Timeout,
    /// Too many bad commands (`421 4.7.0` sent).
    TooManyErrors,
    /// The server is shutting down (`421 4.3.2` sent).
    Shutdown,
    /// The connection was refused at once ([`Session::refuse`]).
    Refused,
    /// The caller answered a decision with 421: the session closes after sending it.
    Closed421,
    /// The TLS handshake did not finish in time (nothing sent: the connection is mid-handshake).
    TlsTimeout,
}

impl CloseCause {
    /// A short lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::Quit => "quit",
            CloseCause::Eof => "eof",
            CloseCause::EofInTransaction => "eof-in-transaction",
            CloseCause::Timeout => "timeout",
            CloseCause::TooManyErrors => "too-many-errors",
            CloseCause::Shutdown => "shutdown",
            CloseCause::Refused => "refused",
            CloseCause::Closed421 => "closed-421",
            CloseCause::TlsTimeout => "tls-timeout",
        }
    }
}

/// [`Session::answer`] was called with nothing to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NothingPending;

impl fmt::Display for NothingPending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no decision is pending")
    }
}

impl std::error::Error for NothingPending {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Mail,
    Rcpt,
    Message,
    Auth,
}

/// AUTH in progress: which answer the session waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthStep {
    /// PLAIN without an initial response: the whole response.
    Plain,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password, for this user name.
    LoginPassword(String),
}

#[derive(Debug)]
enum State {
    /// Waiting for a command line.
    Command,
    /// Discarding an overlong command line up to its LF.
    DiscardLine,
    /// Inside DATA; `line_start` is true after a CRLF (or the 354).
    Data { line_start: bool },
    /// Inside a BDAT chunk: octets still to read; whether it is the last; the refusal to send once
    /// it is read, if the chunk is refused.
    Bdat {
        remaining: u64,
        last: bool,
        refusal: Option<(u16, &'static str, &'static str)>,
    },
    /// Waiting for the caller's answer.
    Pending(Decision),
    /// Waiting for the client's answer to a `334` challenge.
    AuthResponse(AuthStep),
    /// STARTTLS answered: the driver is negotiating TLS.
    TlsHandshake,
    /// Over.
    Closed,
}

#[derive(Debug, Default)]
struct Transaction {
    mail: Option<MailFrom>,
    pending_rcpt: String,
    recipients: Vec<String>,
    data: Vec<u8>,
    oversize: bool,
    /// The last data byte read was a CR.
    last_cr: bool,
    /// BDAT was used (DATA may not follow).
    chunked: bool,
    data_started: Option<Instant>,
}

/// One client's SMTP session, server side. See the module documentation for the driving rules.
#[derive(Debug)]
pub struct Session {
    config: std::sync::Arc<ServerConfig>,
    state: State,
    input: Vec<u8>,
    /// Bytes of `input` already handled.
    pos: usize,
    out: Vec<u8>,
    events: VecDeque<Event>,
    helo: Option<(String, bool)>,
    tx: Transaction,
    errors: u32,
    /// When the session began waiting for the current command line.
    command_since: Instant,
    /// The last time bytes arrived.
    last_input: Instant,
    shutting_down: bool,
    closed_emitted: bool,
    /// The last `advance` stopped at `max_batch` commands with input left.
    batch_full: bool,
    /// The TLS layer, once established (or from the start, for implicit TLS).
    tls: Option<TlsInfo>,
    /// The identity the client authenticated as.
    authenticated: Option<String>,
    /// The identity of an AUTH waiting for the caller's answer.
    pending_auth: Option<String>,
    /// The greeting has been sent (not yet with implicit TLS before the handshake).
    greeted: bool,
    /// STARTTLS was accepted: what the client sent behind it is dropped.
    discard_input: bool,
}

impl Session {
    /// A session for a newly accepted connection: the `220` greeting is ready to send.
    pub fn new(config: std::sync::Arc<ServerConfig>, now: Instant) -> Session {
        let mut s = Session::blank(config, now);
        let greeting = format!("{} ESMTP vmta", s.config.hostname);
        s.reply_raw(220, None, &greeting);
        s
    }

    /// A session for a connection whose TLS layer comes first (implicit TLS, RFC 8314): nothing is
    /// sent until the driver calls [`Session::tls_established`]; then the greeting goes out, over TLS.
    /// A handshake that does not finish within [`ServerTimeouts::idle`] closes the session.
    pub fn new_implicit_tls(config: std::sync::Arc<ServerConfig>, now: Instant) -> Session {
        let mut s = Session::blank(config, now);
        s.state = State::TlsHandshake;
        s.greeted = false;
        s
    }

    /// The TLS handshake the driver ran (after [`Event::StartTls`], or first for implicit TLS)
    /// completed: the session starts over as RFC 3207 §4.2 requires (the client must say EHLO again;
    /// nothing learnt before TLS is kept), and with implicit TLS the greeting goes out now.
    pub fn tls_established(&mut self, now: Instant, info: TlsInfo) {
        if !matches!(self.state, State::TlsHandshake) {
            return;
        }
        self.tls = Some(info);
        self.helo = None;
        self.tx = Transaction::default();
        self.authenticated = None;
        self.state = State::Command;
        self.command_since = now;
        if !self.greeted {
            self.greeted = true;
            let greeting = format!("{} ESMTP vmta", self.config.hostname);
            self.reply_raw(220, None, &greeting);
        }
    }

    /// The TLS layer, once established.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The identity the client authenticated as, if it did.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// Whether the session waits for the driver's TLS handshake.
    pub fn in_tls_handshake(&self) -> bool {
        matches!(self.state, State::TlsHandshake)
    }

    /// A session that only answers `reply` (a 421 or 554 for a connection over a limit or from a
    /// refused network, RFC 5321 §3.1) and closes.
    pub fn refuse(config: std::sync::Arc<ServerConfig>, now: Instant, reply: &Reply) -> Session {
        let mut s = Session::blank(config, now);
        s.reply_with(reply);
        s.close(CloseCause::Refused);
        s
    }

    fn blank(config: std::sync::Arc<ServerConfig>, now: Instant) -> Session {
        Session {
            config,
            state: State::Command,
            input: Vec::new(),
            pos: 0,
            out: Vec::with_capacity(512),
            events: VecDeque::new(),
            helo: None,
            tx: Transaction::default(),
            errors: 0,
            command_since: now,
            last_input: now,
            shutting_down: false,
            closed_emitted: false,
            batch_full: false,
            tls: None,
            authenticated: None,
            pending_auth: None,
            greeted: true,
            discard_input: false,
        }
    }

    /// Whether the driver should read more from the socket: the session is open and its buffer of
    /// unhandled bytes is below its bound.
    pub fn wants_input(&self) -> bool {
        !self.is_closed()
            && !self.in_tls_handshake()
            && self.input.len() - self.pos < self.config.input_window()
    }

    /// Whether buffered bytes wait to be handled and the session could handle them now (no decision
    /// pending): call [`Session::handle_input`] with no bytes.
    pub fn has_buffered_commands(&self) -> bool {
        self.batch_full && !matches!(self.state, State::Pending(_) | State::Closed)
    }

    /// Whether a decision waits for [`Session::answer`].
    pub fn is_pending(&self) -> bool {
        matches!(self.state, State::Pending(_))
    }

    /// Whether a transaction is in progress (MAIL accepted, data not yet answered).
    pub fn in_transaction(&self) -> bool {
        self.tx.mail.is_some() || matches!(self.state, State::Bdat { .. })
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Bytes received from the client.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.is_closed() || self.in_tls_handshake() {
            return;
        }
        if !data.is_empty() {
            self.last_input = now;
            self.input.extend_from_slice(data);
        }
        self.advance(now);
    }

    /// The client closed its side of the connection.
    pub fn handle_eof(&mut self, _now: Instant) {
        if self.is_closed() {
            return;
        }
        let cause = if self.in_transaction()
            || matches!(
                self.state,
                State::Data { .. } | State::Bdat { .. } | State::Pending(_)
            ) {
            CloseCause::EofInTransaction
        } else {
            CloseCause::Eof
        };
        self.close(cause);
    }

    /// When [`Session::handle_timeout`] is due, if a timer runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.config.timeouts;
        match self.state {
            State::Command | State::DiscardLine | State::AuthResponse(_) | State::TlsHandshake => {
                Some(self.command_since + t.idle)
            }
            State::Data { .. } | State::Bdat { .. } => {
                let silence = self.last_input + t.data;
                Some(match self.tx.data_started {
                    Some(start) => silence.min(start + t.message),
                    None => silence,
                })
            }
            State::Pending(_) | State::Closed => None,
        }
    }

    /// Time passed: answers `421 4.4.2` and closes if a timer expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(at) = self.poll_timeout()
            && now >= at
        {
            if self.in_tls_handshake() {
                // Mid-handshake nothing can be said in plain text.
                self.close(CloseCause::TlsTimeout);
                return;
            }
            let text = format!("{} Error: timeout exceeded", self.config.hostname);
            self.reply_raw(421, Some("4.4.2"), &text);
            self.close(CloseCause::Timeout);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the bytes to send to `out`; returns how many.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        out.append(&mut self.out);
        n
    }

    /// Stops the session for a server shutdown: at the next command boundary (now, if the client is
    /// between commands) it answers `421 4.3.2` and closes. A message whose data is being read or
    /// whose answer is pending finishes first.
    pub fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        if matches!(self.state, State::Command | State::DiscardLine) {
            self.advance(now);
        }
    }

    /// Answers the pending decision. A 2xx accepts (the sender, the recipient, the message), 4xx or
    /// 5xx refuses; a 421 also closes the session (RFC 5321 §3.8). Then handles any commands the
    /// client pipelined behind it.
    pub fn answer(&mut self, now: Instant, reply: &Reply) -> Result<(), NothingPending> {
        let State::Pending(decision) = self.state else {
            return Err(NothingPending);
        };
        let positive = reply.code / 100 == 2;
        match decision {
            Decision::Mail => {
                if !positive {
                    self.tx = Transaction::default();
                }
            }
            Decision::Rcpt => {
                let r = std::mem::take(&mut self.tx.pending_rcpt);
                if positive {
                    self.tx.recipients.push(r);
                }
            }
            Decision::Message => self.tx = Transaction::default(),
            Decision::Auth => {
                let identity = self.pending_auth.take();
                if positive {
                    self.authenticated = identity;
                }
            }
        }
        self.reply_with(reply);
        self.command_since = now;
        if reply.code == 421 {
            self.close(CloseCause::Closed421);
            return Ok(());
        }
        self.state = State::Command;
        self.advance(now);
        Ok(())
    }

    /// Handles buffered input as far as it can: at most `max_batch` commands.
    fn advance(&mut self, now: Instant) {
        let mut commands = 0;
        self.batch_full = false;
        loop {
            match self.state {
                State::Closed | State::Pending(_) | State::TlsHandshake => break,
                State::Command | State::AuthResponse(_) => {
                    if self.shutting_down {
                        let text = format!("{} Service shutting down", self.config.hostname);
                        self.reply_raw(421, Some("4.3.2"), &text);
                        self.close(CloseCause::Shutdown);
                        break;
                    }
                    if commands >= self.config.max_batch {
                        self.batch_full = self.pos < self.input.len();
                        break;
                    }
                    let avail = &self.input[self.pos..];
                    match memchr::memchr(b'\n', avail) {
                        None => {
                            if avail.len() >= self.config.max_line {
                                self.pos = self.input.len();
                                self.state = State::DiscardLine;
                            }
                            break;
                        }
                        Some(i) => {
                            let start = self.pos;
                            self.pos += i + 1;
                            commands += 1;
                            if i + 1 > self.config.max_line {
                                self.error(500, "5.5.2", "Error: line too long");
                            } else {
                                let mut end = start + i;
                                if end > start && self.input[end - 1] == b'\r' {
                                    end -= 1;
                                }
                                // The line is read in place: the input buffer is lent out
                                // while the command runs (commands never touch it).
                                let input = std::mem::take(&mut self.input);
                                match &self.state {
                                    State::AuthResponse(step) => {
                                        let step = step.clone();
                                        self.auth_response(step, &input[start..end]);
                                    }
                                    _ => self.command(now, &input[start..end]),
                                }
                                if !self.is_closed() {
                                    self.input = input;
                                }
                                if self.discard_input {
                                    // CVE-2011-0411: nothing sent before TLS may be read after it.
                                    self.discard_input = false;
                                    self.pos = self.input.len();
                                }
                            }
                            self.command_since = now;
                        }
                    }
                }
                State::DiscardLine => match memchr::memchr(b'\n', &self.input[self.pos..]) {
                    None => {
                        self.pos = self.input.len();
                        break;
                    }
                    Some(i) => {
                        self.pos += i + 1;
                        commands += 1;
                        self.state = State::Command;
                        self.command_since = now;
                        self.error(500, "5.5.2", "Error: line too long");
                    }
                },
                State::Data { line_start } => {
                    if !self.data(line_start) {
                        break;
                    }
                }
                State::Bdat { .. } => {
                    if !self.bdat() {
                        break;
                    }
                }
            }
        }
        // Drop what was handled once it is most of the buffer.
        if self.pos > 0 && (self.pos == self.input.len() || self.pos >= 16 * 1024) {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        if self.input.capacity() > 4 * self.config.input_window() && self.input.len() < 4096 {
            self.input.shrink_to(4096);
        }
    }

    /// Reads message data after the 354. Returns false when it needs more bytes.
    fn data(&mut self, mut line_start: bool) -> bool {
        loop {
            let avail = &self.input[self.pos..];
            if avail.is_empty() {
                self.state = State::Data { line_start };
                return false;
            }
            if line_start && avail[0] == b'.' {
                if avail.len() < 3 {
                    // `.`, `.\r`: not yet known whether this ends the data.
                    if avail == b"." || avail == b".\r" {
                        self.state = State::Data { line_start };
                        return false;
                    }
                }
                if avail.starts_with(b".\r\n") {
                    self.pos += 3;
                    self.end_of_data();
                    return true;
                }
                // Dot-stuffed line: drop the leading dot.
                self.pos += 1;
            }
            let avail = &self.input[self.pos..];
            let (seg_len, ends_line) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            // A line ends at a CRLF, also one split over two reads (the CR ending the last).
            let crlf = ends_line
                && if seg_len >= 2 {
                    avail[seg_len - 2] == b'\r'
                } else {
                    self.tx.last_cr
                };
            let seg = &self.input[self.pos..self.pos + seg_len];
            if let Some(&b) = seg.last() {
                self.tx.last_cr = b == b'\r';
            }
            self.append_data_slice_at(seg_len);
            self.pos += seg_len;
            line_start = crlf;
        }
    }

    /// Appends the next `len` input bytes to the message data, unless it is over the size limit.
    fn append_data_slice_at(&mut self, len: usize) {
        if self.tx.oversize {
            return;
        }
        if self.tx.data.len() + len > self.config.max_message_size {
            self.tx.oversize = true;
            self.tx.data = Vec::new();
            return;
        }
        self.tx
            .data
            .extend_from_slice(&self.input[self.pos..self.pos + len]);
    }

    /// Reads a BDAT chunk. Returns false when it needs more bytes.
    fn bdat(&mut self) -> bool {
        let State::Bdat {
            remaining,
            last,
            refusal,
        } = self.state
        else {
            return false;
        };
        let avail = self.input.len() - self.pos;
        let take = (avail as u64).min(remaining) as usize;
        if take > 0 {
            if refusal.is_none() {
                self.append_data_slice_at(take);
            }
            self.pos += take;
        }
        let remaining = remaining - take as u64;
        if remaining > 0 {
            self.state = State::Bdat {
                remaining,
                last,
                refusal,
            };
            return false;
        }
        self.state = State::Command;
        if let Some((code, enh, text)) = refusal {
            self.tx = Transaction::default();
            self.error(code, enh, text);
            return true;
        }
        if self.tx.oversize {
            self.tx = Transaction::default();
            self.reply_raw(
                552,
                Some("5.3.4"),
                "Error: message exceeds fixed maximum message size",
            );
            return true;
        }
        if last {
            self.end_of_data();
        } else {
            let text = format!("{} octets received", self.tx.data.len());
            self.reply_raw(250, Some("2.0.0"), &text);
        }
        true
    }

    /// The data is complete: refuse it for its size or hand it to the caller.
    fn end_of_data(&mut self) {
        if self.tx.oversize {
            self.tx = Transaction::default();
            self.state = State::Command;
            self.reply_raw(
                552,
                Some("5.3.4"),
                "Error: message exceeds fixed maximum message size",
            );
            return;
        }
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let message = Message {
            helo,
            esmtp,
            // The transaction ends with this message whatever the answer: its envelope moves out.
            mail: self.tx.mail.take().unwrap_or(MailFrom {
                sender: String::new(),
                size: None,
                body: BodyType::SevenBit,
                smtputf8: false,
            }),
            recipients: std::mem::take(&mut self.tx.recipients),
            data: std::mem::take(&mut self.tx.data),
            chunked: self.tx.chunked,
            tls: self.tls.clone(),
            auth: self.authenticated.clone(),
        };
        self.state = State::Pending(Decision::Message);
        self.events.push_back(Event::Message(message));
    }

    fn command(&mut self, now: Instant, line: &[u8]) {
        if line
            .iter()
            .any(|&b| b == 0 || (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return self.error(500, "5.5.2", "Error: invalid character in command");
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return self.error(500, "5.5.2", "Error: command is not valid UTF-8");
        };
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.ehlo(arg, true),
            "HELO" => self.ehlo(arg, false),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data_command(now, arg),
            "BDAT" if self.config.chunking => self.bdat_command(now, arg),
            "RSET" => {
                if !arg.is_empty() {
                    return self.error(501, "5.5.4", "Syntax: RSET");
                }
                self.reset();
                self.reply_raw(250, Some("2.0.0"), "Ok");
            }
            "NOOP" => self.reply_raw(250, Some("2.0.0"), "Ok"),
            "QUIT" => {
                self.reply_raw(221, Some("2.0.0"), "Bye");
                self.close(CloseCause::Quit);
            }
            "VRFY" => {
                if arg.is_empty() {
                    return self.error(501, "5.5.4", "Syntax: VRFY address");
                }
                self.reply_raw(
                    252,
                    Some("2.5.0"),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                );
            }
            "EXPN" => self.error(502, "5.5.1", "Error: EXPN not implemented"),
            "HELP" => self.reply_raw(
                214,
                Some("2.0.0"),
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT",
            ),
            "STARTTLS" => self.starttls(now, arg),
            "AUTH" => self.auth(arg),
            "" => self.error(500, "5.5.2", "Error: bad syntax"),
            _ => self.error(500, "5.5.2", "Error: command not recognized"),
        }
    }

    fn ehlo(&mut self, arg: &str, esmtp: bool) {
        let name = arg.split_ascii_whitespace().next().unwrap_or("");
        if name.is_empty() {
            let syntax = if esmtp {
                "Syntax: EHLO hostname"
            } else {
                "Syntax: HELO hostname"
            };
            return self.error(501, "5.5.4", syntax);
        }
        let had_tx = self.tx.mail.is_some();
        self.tx = Transaction::default();
        if had_tx {
            self.events.push_back(Event::Reset);
        }
        self.helo = Some((name.to_string(), esmtp));
        self.events.push_back(Event::Helo {
            name: name.to_string(),
            esmtp,
        });
        if !esmtp {
            let text = self.config.hostname.clone();
            return self.reply_raw(250, None, &text);
        }
        let c = &self.config;
        let mut lines = vec![c.hostname.clone()];
        if c.pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push(format!("SIZE {}", c.max_message_size));
        lines.push("8BITMIME".into());
        if c.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if c.chunking {
            lines.push("CHUNKING".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        if c.starttls && self.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if c.auth && self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        let n = lines.len();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
        }
    }

    fn mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Error: send HELO/EHLO first");
        }
        if self.tx.mail.is_some() {
            return self.error(503, "5.5.1", "Error: nested MAIL command");
        }
        if self.config.auth_required && self.authenticated.is_none() {
            if self.config.starttls && self.tls.is_none() {
                return self.error(530, "5.7.0", "Error: must issue a STARTTLS command first");
            }
            return self.error(530, "5.7.0", "Error: authentication required");
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.error(501, "5.5.4", "Syntax: MAIL FROM:<address>");
        };
        let (path, params) = match parse_path(rest) {
            Ok(p) => p,
            Err(why) => return self.error(501, "5.1.7", why),
        };
        let mut mail = MailFrom {
            sender: path,
            size: None,
            body: BodyType::SevenBit,
            smtputf8: false,
        };
        for p in params.split_ascii_whitespace() {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" => match v.parse::<u64>() {
                    Ok(n) => mail.size = Some(n),
                    Err(_) => return self.error(501, "5.5.4", "Error: bad SIZE parameter"),
                },
                "BODY" => match v.to_ascii_uppercase().as_str() {
                    "7BIT" => mail.body = BodyType::SevenBit,
                    "8BITMIME" => mail.body = BodyType::EightBitMime,
                    _ => return self.error(555, "5.5.4", "Error: unsupported BODY parameter"),
                },
                "SMTPUTF8" if self.config.smtputf8 && v.is_empty() => mail.smtputf8 = true,
                // RFC 4954 §5: the submitter's identity; vmta goes by the session's own AUTH.
                "AUTH" if self.config.auth && !v.is_empty() => {}
                _ => return self.error(555, "5.5.4", "Error: unsupported MAIL parameter"),
            }
        }
        if !mail.sender.is_ascii() && !mail.smtputf8 {
            return self.error(553, "5.6.7", "Error: address requires SMTPUTF8");
        }
        if mail
            .size
            .is_some_and(|n| n > self.config.max_message_size as u64)
        {
            return self.reply_raw(
                552,
                Some("5.3.4"),
                "Error: message size exceeds fixed maximum message size",
            );
        }
        self.tx.mail = Some(mail.clone());
        self.state = State::Pending(Decision::Mail);
        self.events.push_back(Event::Mail(mail));
    }

    fn rcpt(&mut self, arg: &str) {
        let Some(mail) = &self.tx.mail else {
            return self.error(503, "5.5.1", "Error: need MAIL command");
        };
        let smtputf8 = mail.smtputf8;
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.error(501, "5.5.4", "Syntax: RCPT TO:<address>");
        };
        let (path, params) = match parse_path(rest) {
            Ok(p) => p,
            Err(why) => return self.error(501, "5.1.3", why),
        };
        if path.is_empty() {
            return self.error(501, "5.1.3", "Error: empty recipient address");
        }
        if !params.trim().is_empty() {
            return self.error(555, "5.5.4", "Error: unsupported RCPT parameter");
        }
        if !path.is_ascii() && !smtputf8 {
            return self.error(553, "5.6.7", "Error: address requires SMTPUTF8");
        }
        if self.tx.recipients.len() >= self.config.max_recipients {
            return self.reply_raw(452, Some("4.5.3"), "Error: too many recipients");
        }
        self.tx.pending_rcpt = path.clone();
        self.state = State::Pending(Decision::Rcpt);
        self.events.push_back(Event::Rcpt { recipient: path });
    }

    fn data_command(&mut self, now: Instant, arg: &str) {
        if !arg.is_empty() {
            return self.error(501, "5.5.4", "Syntax: DATA");
        }
        if self.tx.mail.is_none() {
            return self.error(503, "5.5.1", "Error: need MAIL command");
        }
        if self.tx.chunked {
            return self.error(503, "5.5.1", "Error: DATA after BDAT");
        }
        if self.tx.recipients.is_empty() {
            return self.error(554, "5.5.1", "Error: no valid recipients");
        }
        self.reply_raw(354, None, "End data with <CR><LF>.<CR><LF>");
        self.tx.data_started = Some(now);
        self.state = State::Data { line_start: true };
    }

    fn bdat_command(&mut self, now: Instant, arg: &str) {
        let mut words = arg.split_ascii_whitespace();
        let size = words.next().and_then(|w| {
            if w.bytes().all(|b| b.is_ascii_digit()) && w.len() <= 18 {
                w.parse::<u64>().ok()
            } else {
                None
            }
        });
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case("LAST") => true,
            Some(_) => return self.error(501, "5.5.4", "Syntax: BDAT size [LAST]"),
        };
        let Some(size) = size.filter(|_| words.next().is_none()) else {
            return self.error(501, "5.5.4", "Syntax: BDAT size [LAST]");
        };
        let refusal = if self.tx.mail.is_none() {
            Some((503, "5.5.1", "Error: need MAIL command"))
        } else if self.tx.recipients.is_empty() {
            Some((554, "5.5.1", "Error: no valid recipients"))
        } else {
            None
        };
        if refusal.is_none() {
            self.tx.chunked = true;
            if self.tx.data_started.is_none() {
                self.tx.data_started = Some(now);
            }
            if size > self.config.max_message_size as u64 {
                self.tx.oversize = true;
                self.tx.data = Vec::new();
            }
        }
        self.state = State::Bdat {
            remaining: size,
            last,
            refusal,
        };
    }

    fn starttls(&mut self, now: Instant, arg: &str) {
        if !self.config.starttls {
            return self.error(502, "5.5.1", "Error: command not implemented");
        }
        if self.tls.is_some() {
            return self.error(503, "5.5.1", "Error: TLS already active");
        }
        if !arg.is_empty() {
            return self.error(501, "5.5.4", "Syntax: STARTTLS");
        }
        self.reply_raw(220, Some("2.0.0"), "Ready to start TLS");
        self.discard_input = true;
        self.tx = Transaction::default();
        self.state = State::TlsHandshake;
        self.command_since = now;
        self.events.push_back(Event::StartTls);
    }

    fn auth(&mut self, arg: &str) {
        if !self.config.auth {
            return self.error(502, "5.5.1", "Error: command not implemented");
        }
        if self.tls.is_none() {
            return self.error(
                538,
                "5.7.11",
                "Error: encryption required for requested authentication mechanism",
            );
        }
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Error: send HELO/EHLO first");
        }
        if self.authenticated.is_some() {
            return self.error(503, "5.5.1", "Error: already authenticated");
        }
        if self.tx.mail.is_some() {
            return self.error(503, "5.5.1", "Error: MAIL transaction in progress");
        }
        let mut words = arg.split_ascii_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        if words.next().is_some() {
            return self.error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]");
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", None) => {
                self.reply_raw(334, None, "");
                self.state = State::AuthResponse(AuthStep::Plain);
            }
            ("PLAIN", Some(r)) => self.auth_response(AuthStep::Plain, r.as_bytes()),
            ("LOGIN", None) => {
                // "Username:"
                self.reply_raw(334, None, "VXNlcm5hbWU6");
                self.state = State::AuthResponse(AuthStep::LoginUser);
            }
            ("LOGIN", Some(r)) => self.auth_response(AuthStep::LoginUser, r.as_bytes()),
            ("", _) => self.error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"),
            _ => self.error(504, "5.5.4", "Error: unsupported authentication mechanism"),
        }
    }

    /// A response to a `334` challenge (or an initial response).
    fn auth_response(&mut self, step: AuthStep, line: &[u8]) {
        use base64::Engine as _;
        self.state = State::Command;
        if line == b"*" {
            return self.error(501, "5.0.0", "Error: authentication cancelled");
        }
        // `=` is an empty initial response (RFC 4954 §4).
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(line)
        };
        let Ok(decoded) = decoded else {
            return self.error(501, "5.5.2", "Error: invalid base64 data");
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return self.error(501, "5.5.2", "Error: credentials are not UTF-8");
        };
        match step {
            AuthStep::Plain => {
                let mut parts = text.split('\0');
                let (Some(authzid), Some(identity), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.error(501, "5.5.2", "Error: invalid AUTH PLAIN response");
                };
                let (authzid, identity, password) = (
                    authzid.to_string(),
                    identity.to_string(),
                    password.to_string(),
                );
                self.ask_auth(identity, authzid, password);
            }
            AuthStep::LoginUser => {
                // "Password:"
                self.reply_raw(334, None, "UGFzc3dvcmQ6");
                self.state = State::AuthResponse(AuthStep::LoginPassword(text));
            }
            AuthStep::LoginPassword(identity) => self.ask_auth(identity, String::new(), text),
        }
    }

    fn ask_auth(&mut self, identity: String, authzid: String, password: String) {
        if identity.is_empty() {
            return self.error(501, "5.5.2", "Error: empty authentication identity");
        }
        self.pending_auth = Some(identity.clone());
        self.state = State::Pending(Decision::Auth);
        self.events.push_back(Event::Auth {
            identity,
            authzid,
            password,
        });
    }

    fn reset(&mut self) {
        let had = self.tx.mail.is_some();
        self.tx = Transaction::default();
        if had {
            self.events.push_back(Event::Reset);
        }
    }

    /// A refusal for a bad command; too many end the session.
    fn error(&mut self, code: u16, enhanced: &str, text: &str) {
        self.errors += 1;
        if self.errors > self.config.max_errors {
            let text = format!("{} Error: too many errors", self.config.hostname);
            self.reply_raw(421, Some("4.7.0"), &text);
            self.close(CloseCause::TooManyErrors);
            return;
        }
        self.reply_raw(code, Some(enhanced), text);
    }

    fn reply_with(&mut self, reply: &Reply) {
        let code = if (200..=599).contains(&reply.code) {
            reply.code
        } else {
            451
        };
        // Written straight into the output buffer (every MAIL, RCPT and message is answered here);
        // control characters in the caller's text are dropped so it cannot break the reply.
        let mut lines = reply.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_none() { ' ' } else { '-' };
            let _ = write!(self.out, "{code}{sep}");
            let mut clean = line.chars().filter(|c| !c.is_control()).peekable();
            if let Some(e) = reply.enhanced {
                let _ = write!(self.out, "{e}");
                if clean.peek().is_some() {
                    self.out.push(b' ');
                }
            }
            let mut buf = [0u8; 4];
            for c in clean {
                self.out
                    .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn reply_raw(&mut self, code: u16, enhanced: Option<&str>, text: &str) {
        // Straight into the output buffer: one of these goes out for every command.
        let _ = write!(self.out, "{code} ");
        if let Some(e) = enhanced {
            self.out.extend_from_slice(e.as_bytes());
            self.out.push(b' ');
        }
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn close(&mut self, cause: CloseCause) {
        self.state = State::Closed;
        self.tx = Transaction::default();
        self.input = Vec::new();
        self.pos = 0;
        if !self.closed_emitted {
            self.closed_emitted = true;
            self.events.push_back(Event::Closed(cause));
        }
    }
}

/// `s` without `prefix` (ASCII case-insensitive), if it starts with it.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Parses `<path> params` (spaces after the colon tolerated, as most servers do; a bare address
/// without angle brackets is taken too). Source routes (`<@a,@b:u@d>`) are dropped (RFC 5321 §4.1.2,
/// C.). Returns the path and the rest.
fn parse_path(s: &str) -> Result<(String, &str), &'static str> {
    let s = s.trim_start();
    let Some(inner) = s.strip_prefix('<') else {
        // A bare address up to the first space.
        let end = s.find(' ').unwrap_or(s.len());
        let addr = &s[..end];
        if addr.is_empty() || addr.contains(['<', '>']) {
            return Err("Error: bad address syntax");
        }
        return Ok((addr.to_string(), &s[end..]));
    };
    let bytes = inner.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => break,
            b'<' if !quoted => return Err("Error: bad address syntax"),
            b' ' if !quoted => return Err("Error: bad address syntax"),
            _ => {}
        }
        i += 1;
    }
    if i >= bytes.len() {
        return Err("Error: bad address syntax");
    }
    let mut path = &inner[..i];
    let rest = &inner[i + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err("Error: bad address syntax");
    }
    if path.starts_with('@') {
        match path.find(':') {
            Some(c) => path = &path[c + 1..],
            None => return Err("Error: bad address syntax"),
        }
    }
    if !path.is_empty() {
        let at = path.rfind('@');
        match at {
            Some(a) if a > 0 && a + 1 < path.len() => {}
            _ => return Err("Error: bad address syntax"),
        }
    }
    Ok((path.to_string(), rest))
}

/// A reply built from parts, for callers answering decisions.
pub fn reply(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::new(
        code,
        EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2),
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn paths() {
        assert_eq!(parse_path("<a@b>").unwrap().0, "a@b");
        assert_eq!(
            parse_path(" <a@b> SIZE=10").unwrap(),
            ("a@b".into(), " SIZE=10")
        );
        assert_eq!(parse_path("<>").unwrap().0, "");
        assert_eq!(parse_path("<@r1,@r2:u@d>").unwrap().0, "u@d");
        assert_eq!(parse_path("<\"a b\"@d>").unwrap().0, "\"a b\"@d");
        assert_eq!(parse_path("a@b").unwrap().0, "a@b");
        assert!(parse_path("<a@b").is_err());
        assert!(parse_path("<a b@c>").is_err());
        assert!(parse_path("<ab>").is_err());
        assert!(parse_path("<a@b>x").is_err());
    }

    #[test]
    fn memory_is_bounded_by_the_window() {
        let cfg = Arc::new(ServerConfig::new("mx.test"));
        let now = Instant::now();
        let mut s = Session::new(cfg.clone(), now);
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        s.handle_input(now, b"EHLO c\r\nMAIL FROM:<a@b>\r\n");
        while s.poll_event().is_some() {}
        assert!(s.is_pending());
        // Pipelined bytes behind a pending decision are held up to the window only.
        let chunk = vec![b'x'; 16 * 1024];
        while s.wants_input() {
            s.handle_input(now, &chunk);
        }
        assert!(s.input.len() <= cfg.input_window() + chunk.len());
    }
}
