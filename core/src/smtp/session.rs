//! The SMTP client session: one connection to one server, as a sans-IO state machine.
//!
//! The conversation (RFC 5321 §3, §4.1; `S:` server, `C:` client; `[..]` only when offered and wanted):
//!
//! ```text
//! S: 220 greeting                                     Greeting
//! C: EHLO name         S: 250-caps                    Ehlo      (5xx: C: HELO name, S: 250)
//! [C: STARTTLS         S: 220] TLS handshake           StartTls  (RFC 3207; then EHLO again)
//! [C: AUTH PLAIN ..    S: 235]                         Auth      (RFC 4954; PLAIN or LOGIN)
//!                                                      Idle      (Event::Ready)
//! per message:
//! [C: RSET]            only after a failed transaction, pipelined with MAIL
//! C: MAIL FROM:<a> [SIZE= BODY= SMTPUTF8 RET= ENVID=]  Mail
//! C: RCPT TO:<b> [NOTIFY= ORCPT=]  (one per recipient) Rcpt
//! C: BDAT n LAST + body   S: 250                       EndOfData (CHUNKING, RFC 3030)
//!  or C: DATA S: 354, body with dot-stuffing, C: .     Data, EndOfData
//!                                                      Idle      (next message on the same connection)
//! C: QUIT              S: 221                          Quit      (then Event::Closed)
//! ```
//!
//! With PIPELINING (RFC 2920) the optional RSET, MAIL, every RCPT and DATA (or `BDAT n LAST` and the
//! body) leave in one flight, so a message costs one round trip with CHUNKING and two with DATA. Without
//! it, each command waits for the previous reply and a refused MAIL or a transaction without any
//! accepted recipient stops before the data.
//!
//! With PIPELINING and CHUNKING both offered and [`SessionConfig::transactions_in_flight`] above 1,
//! the session takes the next message before the previous one's end-of-data reply is in: its `RSET`,
//! `MAIL`, `RCPT`s and `BDAT n LAST` with the body follow the previous body on the wire, so several
//! messages share one write and one read. The RSET makes each transaction independent of how the one
//! before it ended. Replies come in order, so the events do too: each transaction's recipient events
//! and its one message event, transaction after transaction. A closed connection fails every
//! transaction in flight, in order.
//!
//! The window is adaptive: a session starts at [`SessionConfig::initial_in_flight`] (1 by default)
//! and doubles it with each accepted message, up to the maximum. When pipelined transactions go
//! wrong (the connection lost, a reply that no command waited for, a `503`-style refusal while
//! several are in flight) the window drops to 1 for the rest of the session and
//! [`Session::pipelining_failed`] tells the driver, which remembers the server for a while.
//!
//! # Driving a session
//!
//! The session never touches a socket or the clock. The driver:
//!
//! 1. creates it with [`Session::new`] once the TCP connection is open;
//! 2. passes every byte read from the socket to [`Session::handle_input`], end of stream to
//!    [`Session::handle_eof`], and calls [`Session::handle_timeout`] when [`Session::poll_timeout`]'s
//!    instant has passed;
//! 3. after each of those calls (and after [`Session::send`], [`Session::quit`], [`Session::abort`]),
//!    drains [`Session::poll_event`], then writes whatever [`Session::poll_transmit`] gives to the socket,
//!    then re-reads [`Session::poll_timeout`];
//! 4. closes the socket once [`Event::Closed`] was seen and `poll_transmit` gives nothing more.
//!
//! A message is handed over with [`Session::send`] when [`Session::is_ready`]; its outcome comes back
//! as events: one [`Event::RcptAccepted`] or [`Event::RcptRejected`] per recipient (none when MAIL was
//! refused) and then exactly one [`Event::MessageAccepted`] or [`Event::MessageFailed`].
//!
//! Timeouts are the RFC 5321 §4.5.3.2 values ([`Timeouts`]), each configurable. Body bytes are handed
//! out in blocks of at most [`BODY_BLOCK`] bytes per `poll_transmit`, each block re-arming the data
//! block timer, so a large message neither sits whole in a second buffer nor escapes the timer.
//!
//! # What it does not do
//!
//! 8-bit content sent to a server that does not offer 8BITMIME goes out as it is (no conversion to
//! quoted-printable, RFC 6152 §3 notwithstanding, as most MTAs do). BINARYMIME, DELIVERBY, REQUIRETLS,
//! SASL mechanisms other than PLAIN and LOGIN, and pipelining the next message behind DATA (which
//! needs its 354) are not implemented.

use super::Phase;
use super::capabilities::Capabilities;
use super::reply::{Parse, Reply, ReplyError, ReplyLimits, ReplyParser, ReplyRef};
use super::tls::{TlsError, TlsLayer};
use base64::Engine as _;
use rustls::ClientConfig;
use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most body bytes handed out by one [`Session::poll_transmit`] call.
pub const BODY_BLOCK: usize = 256 * 1024;

/// The message content, shared with whoever holds it (a spool mapping, a `Vec`, an `Arc<[u8]>`).
pub type Body = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// STARTTLS policy (RFC 3207).
#[derive(Clone)]
pub enum Tls {
    /// Never use STARTTLS.
    Disabled,
    /// Use STARTTLS when offered, with this configuration; stay in plain text only when it is not
    /// offered or the server refuses the command.
    Opportunistic(Arc<ClientConfig>),
    /// Require STARTTLS with this (certificate-verifying) configuration; never send MAIL otherwise.
    Required(Arc<ClientConfig>),
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tls::Disabled => "disabled",
            Tls::Opportunistic(_) => "opportunistic",
            Tls::Required(_) => "required",
        })
    }
}

/// Credentials for AUTH (RFC 4954), used when relaying through a smarthost.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name (authentication identity).
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Per-phase timeouts (RFC 5321 §4.5.3.2 where it gives one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the 220 greeting: 5 minutes.
    pub greeting: Duration,
    /// EHLO/HELO reply (RFC 5321 gives none; 5 minutes like MAIL).
    pub ehlo: Duration,
    /// STARTTLS reply and the TLS handshake: 2 minutes.
    pub starttls: Duration,
    /// Each AUTH step: 5 minutes.
    pub auth: Duration,
    /// MAIL reply: 5 minutes.
    pub mail: Duration,
    /// RCPT reply: 5 minutes.
    pub rcpt: Duration,
    /// DATA initiation (the 354): 2 minutes.
    pub data_init: Duration,
    /// Each block of data: 3 minutes.
    pub data_block: Duration,
    /// The reply to the end of data: 10 minutes.
    pub end_of_data: Duration,
    /// RSET and QUIT replies: 2 minutes.
    pub rset_quit: Duration,
    /// An idle connection waiting for the next message is closed with QUIT after this long.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MIN: u64 = 60;
        Timeouts {
            greeting: Duration::from_secs(5 * MIN),
            ehlo: Duration::from_secs(5 * MIN),
            starttls: Duration::from_secs(2 * MIN),
            auth: Duration::from_secs(5 * MIN),
            mail: Duration::from_secs(5 * MIN),
            rcpt: Duration::from_secs(5 * MIN),
            data_init: Duration::from_secs(2 * MIN),
            data_block: Duration::from_secs(3 * MIN),
            end_of_data: Duration::from_secs(10 * MIN),
            rset_quit: Duration::from_secs(2 * MIN),
            idle: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    fn for_phase(&self, phase: Phase) -> Duration {
        match phase {
            Phase::Resolve | Phase::Connect | Phase::Greeting => self.greeting,
            Phase::Ehlo => self.ehlo,
            Phase::StartTls => self.starttls,
            Phase::Auth => self.auth,
            Phase::Mail => self.mail,
            Phase::Rcpt => self.rcpt,
            Phase::Data => self.data_init,
            Phase::EndOfData => self.end_of_data,
            Phase::Rset | Phase::Quit => self.rset_quit,
        }
    }
}

/// Configuration shared by the sessions of one sending identity.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The name sent with EHLO/HELO.
    pub helo_name: String,
    /// STARTTLS policy.
    pub tls: Tls,
    /// AUTH credentials, when relaying through a smarthost.
    pub auth: Option<Credentials>,
    /// Allow AUTH over a connection without TLS (off by default: passwords never travel in clear).
    pub allow_plaintext_auth: bool,
    /// Use PIPELINING when offered.
    pub pipelining: bool,
    /// Use CHUNKING (BDAT) when offered.
    pub chunking: bool,
    /// The most transactions in flight on one connection. Above 1, when the server offers
    /// PIPELINING and CHUNKING, the next message's `RSET`, `MAIL`, `RCPT`s and `BDAT n LAST` with
    /// its body leave behind the previous message's end of data, before its reply is in (RFC 2920
    /// §3.1 allows RSET, MAIL and RCPT anywhere in a group; RFC 3030's BDAT carries its length, so
    /// nothing waits on a reply). 1 (the default) waits for each end-of-data reply, as common
    /// clients do. The session starts at [`SessionConfig::initial_in_flight`] and doubles its window
    /// with each accepted message up to this; see [`Session::pipelining_failed`] for the fall-back.
    pub transactions_in_flight: usize,
    /// The window a session starts with (1 by default: the first message waits for its reply, so a
    /// server is seen answering in order before anything is sent behind an end of data).
    pub initial_in_flight: usize,
    /// Timeouts per phase.
    pub timeouts: Timeouts,
    /// Reply parser limits.
    pub reply_limits: ReplyLimits,
}

impl SessionConfig {
    /// Defaults: no TLS, PIPELINING and CHUNKING used when offered, RFC timeouts.
    pub fn new(helo_name: impl Into<String>) -> SessionConfig {
        SessionConfig {
            helo_name: helo_name.into(),
            tls: Tls::Disabled,
            auth: None,
            allow_plaintext_auth: false,
            pipelining: true,
            chunking: true,
            transactions_in_flight: 1,
            initial_in_flight: 1,
            timeouts: Timeouts::default(),
            reply_limits: ReplyLimits::default(),
        }
    }
}

/// DSN RET parameter (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnRet {
    /// Return the full message.
    Full,
    /// Return the headers only.
    Headers,
}

/// DSN NOTIFY parameter (RFC 3461 §4.1); all false means NEVER.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DsnNotify {
    /// NOTIFY=SUCCESS.
    pub success: bool,
    /// NOTIFY=FAILURE.
    pub failure: bool,
    /// NOTIFY=DELAY.
    pub delay: bool,
}

/// One recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward path, without angle brackets.
    pub address: String,
    /// DSN NOTIFY, sent when the server offers DSN.
    pub notify: Option<DsnNotify>,
    /// DSN ORCPT (the original recipient, sent as `rfc822;<xtext>`), when the server offers DSN.
    pub orcpt: Option<String>,
}

impl Recipient {
    /// A recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            notify: None,
            orcpt: None,
        }
    }
}

/// The envelope of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// The recipients, all going to this server.
    pub recipients: Vec<Recipient>,
    /// The body has 8-bit content: sent with BODY=8BITMIME when offered.
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (non-ASCII headers). Non-ASCII addresses set it automatically.
    pub smtputf8: bool,
    /// DSN RET, sent when the server offers DSN.
    pub dsn_ret: Option<DsnRet>,
    /// DSN ENVID, sent when the server offers DSN.
    pub dsn_envid: Option<String>,
}

/// One message for one server.
#[derive(Clone)]
pub struct Transaction {
    /// Who sends it to whom.
    pub envelope: Envelope,
    /// The message (headers and body), with CRLF line ends; bare CR or LF are normalised on the way.
    pub body: Body,
    /// The caller knows `body` has CRLF line ends only (it was validated, say), so the session
    /// sends it as it is; `false` has the session check it, and normalise a copy when needed.
    pub crlf_clean: bool,
}

impl fmt::Debug for Transaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("envelope", &self.envelope)
            .field("body_len", &(*self.body).as_ref().len())
            .finish()
    }
}

/// What went wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageFailure {
    /// The server refused it with this reply (in the phase given by the event).
    Reply(Reply),
    /// Every recipient was refused; their replies came as [`Event::RcptRejected`].
    NoValidRecipients,
    /// The server's SIZE limit is below the message size; nothing was sent.
    TooLarge {
        /// The server's limit in octets.
        limit: u64,
        /// The message size in octets.
        size: u64,
    },
    /// The message needs SMTPUTF8 and the server does not offer it (RFC 6531 §3.4); nothing was sent.
    Smtputf8Unsupported,
    /// The session ended before the outcome was known.
    SessionClosed(CloseCause),
}

impl MessageFailure {
    /// Will the same message to the same server fail again (a 5xx, a size or SMTPUTF8 refusal)?
    pub fn is_permanent(&self) -> bool {
        match self {
            MessageFailure::Reply(r) => r.is_permanent(),
            MessageFailure::NoValidRecipients => false,
            MessageFailure::TooLarge { .. } | MessageFailure::Smtputf8Unsupported => true,
            MessageFailure::SessionClosed(_) => false,
        }
    }
}

impl fmt::Display for MessageFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageFailure::Reply(r) => write!(f, "{r}"),
            MessageFailure::NoValidRecipients => f.write_str("no valid recipients"),
            MessageFailure::TooLarge { limit, size } => {
                write!(
                    f,
                    "message of {size} octets exceeds the server's SIZE {limit}"
                )
            }
            MessageFailure::Smtputf8Unsupported => {
                f.write_str("message needs SMTPUTF8 and the server does not offer it")
            }
            MessageFailure::SessionClosed(c) => write!(f, "session closed: {c}"),
        }
    }
}

/// A protocol violation by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A reply that could not be parsed.
    Reply(ReplyError),
    /// A reply code that makes no sense at this point (for example a 3xx to MAIL).
    UnexpectedCode(u16),
    /// A reply when none was expected.
    UnexpectedReply(u16),
    /// Plain text following the 220 to STARTTLS (a command injection attempt, CVE-2011-0411).
    DataAfterStartTls,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::Reply(e) => write!(f, "{e}"),
            ProtocolError::UnexpectedCode(c) => write!(f, "unexpected reply code {c}"),
            ProtocolError::UnexpectedReply(c) => write!(f, "unsolicited reply {c}"),
            ProtocolError::DataAfterStartTls => f.write_str("plain text after STARTTLS reply"),
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The client said QUIT: the normal end.
    Quit,
    /// No reply within the phase's timeout.
    Timeout(Phase),
    /// The server closed the connection (or it broke) in this phase.
    ConnectionLost(Phase),
    /// The server broke the protocol.
    Protocol(Phase, ProtocolError),
    /// The server refused the session: a greeting other than 220, EHLO and HELO refused, STARTTLS
    /// refused when required, AUTH refused, or a 421 in any phase (RFC 5321 §3.8).
    Refused(Phase, Reply),
    /// The TLS handshake or a TLS record failed.
    TlsFailed(String),
    /// TLS is required and the server does not offer STARTTLS.
    TlsUnavailable,
    /// AUTH is configured and cannot be used: no common mechanism, or no TLS to protect it.
    AuthUnavailable(&'static str),
    /// The driver aborted the session.
    Aborted,
}

impl CloseCause {
    /// The phase the session was in when it ended, where that is meaningful.
    pub fn phase(&self) -> Option<Phase> {
        match self {
            CloseCause::Timeout(p) | CloseCause::ConnectionLost(p) => Some(*p),
            CloseCause::Protocol(p, _) | CloseCause::Refused(p, _) => Some(*p),
            CloseCause::TlsFailed(_) | CloseCause::TlsUnavailable => Some(Phase::StartTls),
            CloseCause::AuthUnavailable(_) => Some(Phase::Auth),
            CloseCause::Quit | CloseCause::Aborted => None,
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::Quit => f.write_str("quit"),
            CloseCause::Timeout(p) => write!(f, "timeout in {p}"),
            CloseCause::ConnectionLost(p) => write!(f, "connection lost in {p}"),
            CloseCause::Protocol(p, e) => write!(f, "protocol error in {p}: {e}"),
            CloseCause::Refused(p, r) => write!(f, "refused in {p}: {r}"),
            CloseCause::TlsFailed(e) => write!(f, "TLS failure: {e}"),
            CloseCause::TlsUnavailable => f.write_str("TLS required but STARTTLS not offered"),
            CloseCause::AuthUnavailable(why) => write!(f, "AUTH unavailable: {why}"),
            CloseCause::Aborted => f.write_str("aborted"),
        }
    }
}

/// What the session tells its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The session is established (greeting, EHLO, TLS, AUTH done) and takes messages.
    Ready,
    /// STARTTLS succeeded.
    TlsEstablished {
        /// Protocol version, for example `TLSv1_3`.
        version: String,
        /// Cipher suite.
        cipher: String,
    },
    /// The recipient at this index of the envelope was accepted at RCPT.
    RcptAccepted {
        /// Index into [`Envelope::recipients`].
        index: usize,
        /// The server's reply.
        reply: Reply,
    },
    /// The recipient at this index was refused at RCPT.
    RcptRejected {
        /// Index into [`Envelope::recipients`].
        index: usize,
        /// The server's reply.
        reply: Reply,
    },
    /// The message was accepted for every recipient accepted at RCPT.
    MessageAccepted {
        /// The reply to the end of data.
        reply: Reply,
    },
    /// The message was not accepted for any recipient.
    MessageFailed {
        /// Where it failed.
        phase: Phase,
        /// Why.
        failure: MessageFailure,
    },
    /// The session is over; close the socket once `poll_transmit` is empty.
    Closed(CloseCause),
}

/// [`Session::send`] was called when the session could not take a message.
#[derive(Debug)]
pub struct NotReady(pub Transaction);

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("session is not ready for a message")
    }
}

impl std::error::Error for NotReady {}

/// AUTH steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    /// `AUTH PLAIN <initial response>` sent, 235 expected.
    Plain,
    /// `AUTH LOGIN` sent, 334 (user name prompt) expected.
    LoginStart,
    /// User name sent, 334 (password prompt) expected.
    LoginUser,
    /// Password sent, 235 expected.
    LoginPassword,
}

/// The session's states (the phases of the doc diagram above).
#[derive(Debug)]
enum State {
    AwaitGreeting,
    AwaitEhlo { after_tls: bool },
    AwaitHelo,
    AwaitStartTls,
    TlsHandshake,
    AwaitAuth(AuthStep),
    Idle,
    Transaction(Box<Txn>),
    AwaitQuit(CloseCause),
    Closed,
}

/// The reply a sent command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Rset,
    Mail,
    Rcpt(usize),
    /// 354 to DATA.
    Data,
    /// The reply to `BDAT n LAST` (the end of data).
    Bdat,
    /// The reply to the final `.`; `discard` when the `.` only closed a DATA without recipients.
    DataEnd {
        discard: bool,
    },
}

impl Expect {
    fn phase(self) -> Phase {
        match self {
            Expect::Rset => Phase::Rset,
            Expect::Mail => Phase::Mail,
            Expect::Rcpt(_) => Phase::Rcpt,
            Expect::Data => Phase::Data,
            Expect::Bdat | Expect::DataEnd { .. } => Phase::EndOfData,
        }
    }
}

/// The next command of a transaction not yet sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Rset,
    Mail,
    Rcpt(usize),
    Body,
    Done,
}

/// A transaction in progress.
#[derive(Debug)]
struct Txn {
    tx: Transaction,
    /// The body to send with BDAT when it was not CRLF-clean.
    normalised: Option<Vec<u8>>,
    next: Next,
    inflight: VecDeque<Expect>,
    mail_failed: Option<Reply>,
    accepted: usize,
    answered: usize,
    smtputf8: bool,
    /// A refusal known without a round trip, for a transaction queued behind others: reported when
    /// its turn comes, so events stay in the order of the transactions.
    early: Option<(Phase, MessageFailure)>,
    /// Sent behind another transaction's end of data, before its reply.
    behind: bool,
}

/// How the body is being written out.
struct BodyOut {
    body: Body,
    owned: Option<Vec<u8>>,
    offset: usize,
    /// `Some` for DATA (dot-stuffing state), `None` for BDAT (raw).
    stuffer: Option<DotStuffer>,
}

impl BodyOut {
    /// Body bytes not handed out yet.
    fn remaining(&self) -> usize {
        let all = match &self.owned {
            Some(v) => v.len(),
            None => (*self.body).as_ref().len(),
        };
        all - self.offset
    }
}

impl fmt::Debug for BodyOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyOut")
            .field("offset", &self.offset)
            .field("dot_stuffing", &self.stuffer.is_some())
            .finish()
    }
}

/// The SMTP client session. See the module documentation for the protocol and how to drive it.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    server_name: String,
    state: State,
    parser: ReplyParser,
    /// Plaintext received and not yet parsed.
    inbuf: Vec<u8>,
    /// Plaintext waiting to be sent (encrypted first when TLS is on).
    outbuf: Vec<u8>,
    /// The body being handed out: the last transaction's (the head's when nothing is queued).
    body_out: Option<BodyOut>,
    /// Transactions sent in full behind the one in [`State::Transaction`] (the head, whose replies
    /// come first), oldest first; only with [`SessionConfig::transactions_in_flight`] above 1.
    queued: VecDeque<Box<Txn>>,
    /// The last transaction's queue of expected replies (empty), reused by the next.
    spare_inflight: VecDeque<Expect>,
    tls: Option<TlsLayer>,
    caps: Capabilities,
    events: VecDeque<Event>,
    deadline: Option<(Instant, Phase)>,
    idle_deadline: Option<Instant>,
    ready_seen: bool,
    needs_rset: bool,
    quit_requested: bool,
    /// `Closed` was queued (the state may be a placeholder during a transition).
    closed: bool,
    messages: u32,
    /// Transactions allowed in flight now (see [`SessionConfig::transactions_in_flight`]).
    window: usize,
    /// The most the window may grow to on this session.
    window_cap: usize,
    /// Pipelining went wrong on this session: the window is 1 for good.
    pipelining_failed: bool,
}

impl Session {
    /// A session on a freshly opened connection to `server_name` (the MX host name, used for SNI and
    /// certificate checks; an IP address literal works too). It waits for the greeting.
    pub fn new(config: Arc<SessionConfig>, server_name: &str, now: Instant) -> Session {
        let parser = ReplyParser::new(config.reply_limits);
        let mut s = Session {
            server_name: server_name.to_string(),
            state: State::AwaitGreeting,
            parser,
            inbuf: Vec::new(),
            outbuf: Vec::with_capacity(512),
            body_out: None,
            queued: VecDeque::new(),
            spare_inflight: VecDeque::new(),
            tls: None,
            caps: Capabilities::default(),
            events: VecDeque::new(),
            deadline: None,
            idle_deadline: None,
            ready_seen: false,
            needs_rset: false,
            quit_requested: false,
            closed: false,
            messages: 0,
            window: config
                .initial_in_flight
                .clamp(1, config.transactions_in_flight.max(1)),
            window_cap: config.transactions_in_flight.max(1),
            pipelining_failed: false,
            config,
        };
        s.arm(now, Phase::Greeting);
        s
    }

    /// The capabilities from the last EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Is TLS on?
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Can the session take a message now? When idle; and, with
    /// [`SessionConfig::transactions_in_flight`] above 1 and PIPELINING and CHUNKING offered, while
    /// fewer transactions than that are in flight and the last one's body is (nearly) handed out.
    pub fn is_ready(&self) -> bool {
        !self.quit_requested
            && match self.state {
                State::Idle => true,
                State::Transaction(_) => self.may_pipeline(),
                _ => false,
            }
    }

    /// Transactions handed over whose outcome is not reported yet.
    pub fn transactions_in_flight(&self) -> usize {
        match self.state {
            State::Transaction(_) => 1 + self.queued.len(),
            _ => 0,
        }
    }

    /// Transactions this session lets into flight now: it starts at
    /// [`SessionConfig::initial_in_flight`] and doubles with each accepted message up to
    /// [`SessionConfig::transactions_in_flight`] (or [`Session::limit_in_flight`]'s limit).
    pub fn in_flight_window(&self) -> usize {
        self.window
    }

    /// Caps the window of this session (a driver that saw pipelining fail with this server gives
    /// 1 for a while). Transactions already in flight stay.
    pub fn limit_in_flight(&mut self, n: usize) {
        self.window_cap = n.clamp(1, self.window_cap);
        self.window = self.window.min(self.window_cap);
    }

    /// Did pipelining transactions go wrong on this session? With more than one transaction in
    /// flight: the connection closed (end of stream, I/O error, timeout; not a 421, which closes in
    /// good order) without a QUIT, a
    /// reply came that no command waited for or of the wrong kind, or a reply said the commands
    /// were out of sequence or not understood (500–504, or an enhanced status `x.5.x`, the
    /// protocol class of RFC 3463 §3.6). The window then drops to 1 for the rest of the session;
    /// the driver should remember the server for a while (see [`Session::limit_in_flight`]).
    pub fn pipelining_failed(&self) -> bool {
        self.pipelining_failed
    }

    /// Has the session ended (the [`Event::Closed`] event is queued or was taken)?
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// How many messages were handed to this session.
    pub fn messages_sent(&self) -> u32 {
        self.messages
    }

    /// The server name given at creation.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Starts a transaction. Fails with the transaction handed back unless [`Session::is_ready`].
    pub fn send(&mut self, now: Instant, tx: Transaction) -> Result<(), NotReady> {
        if !self.is_ready() {
            return Err(NotReady(tx));
        }
        self.messages += 1;
        self.idle_deadline = None;
        let body = (*tx.body).as_ref();
        let size = body.len() as u64;
        let smtputf8 = tx.envelope.smtputf8
            || !tx.envelope.mail_from.is_ascii()
            || tx.envelope.recipients.iter().any(|r| !r.address.is_ascii());
        // Refusals that need no round trip.
        let early = if tx.envelope.recipients.is_empty() {
            Some((Phase::Rcpt, MessageFailure::NoValidRecipients))
        } else if smtputf8 && !self.caps.smtputf8 {
            Some((Phase::Mail, MessageFailure::Smtputf8Unsupported))
        } else {
            match self.caps.size {
                Some(limit) if limit > 0 && size > limit => {
                    Some((Phase::Mail, MessageFailure::TooLarge { limit, size }))
                }
                _ => None,
            }
        };
        let behind = matches!(self.state, State::Transaction(_));
        if let Some((phase, failure)) = early {
            if behind {
                self.queued.push_back(Box::new(Txn {
                    tx,
                    normalised: None,
                    next: Next::Done,
                    inflight: VecDeque::new(),
                    mail_failed: None,
                    accepted: 0,
                    answered: 0,
                    smtputf8,
                    early: Some((phase, failure)),
                    behind: true,
                }));
            } else {
                self.events
                    .push_back(Event::MessageFailed { phase, failure });
                self.enter_idle(now);
            }
            return Ok(());
        }
        let chunking = self.config.chunking && self.caps.chunking;
        let normalised = if chunking && !tx.crlf_clean && !is_crlf_clean(body) {
            Some(normalise_crlf(body))
        } else {
            None
        };
        let mut txn = Box::new(Txn {
            tx,
            normalised,
            // Behind a transaction whose outcome is unknown, RSET first: a server may keep a
            // transaction open after refusing its data (no valid recipients), and a MAIL then would
            // meet "nested MAIL command".
            next: if self.needs_rset || behind {
                Next::Rset
            } else {
                Next::Mail
            },
            inflight: std::mem::take(&mut self.spare_inflight),
            mail_failed: None,
            accepted: 0,
            answered: 0,
            smtputf8,
            early: None,
            behind,
        });
        self.needs_rset = false;
        if behind {
            // The previous body goes out whole first (is_ready allowed at most one block of it).
            while self.body_out.is_some() {
                self.write_body_block(now);
            }
            self.write_commands(&mut txn);
            self.queued.push_back(txn);
        } else {
            self.state = State::Transaction(txn);
            self.pump_transaction(now);
        }
        Ok(())
    }

    /// Ends the session politely: QUIT now if idle, or after the current message.
    pub fn quit(&mut self, now: Instant) {
        self.quit_requested = true;
        if matches!(self.state, State::Idle) {
            self.send_quit(now, CloseCause::Quit);
        }
    }

    /// Ends the session at once; a message in progress fails with [`CloseCause::Aborted`].
    pub fn abort(&mut self, _now: Instant) {
        self.close(CloseCause::Aborted);
    }

    /// Feeds bytes read from the socket.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.closed || data.is_empty() {
            return;
        }
        if let Some(tls) = self.tls.as_mut() {
            let mut plain = std::mem::take(&mut self.inbuf);
            let fed = tls.feed(data, &mut plain);
            self.inbuf = plain;
            if let Err(e) = fed {
                self.close(CloseCause::TlsFailed(e.0));
                return;
            }
            if matches!(self.state, State::TlsHandshake) && !tls.is_handshaking() {
                let (version, cipher) = tls.describe();
                self.events
                    .push_back(Event::TlsEstablished { version, cipher });
                self.caps = Capabilities::default();
                self.state = State::AwaitEhlo { after_tls: true };
                self.send_command(now, Phase::Ehlo, |out, c| {
                    let _ = write!(out, "EHLO {}\r\n", c.helo_name);
                });
            }
            self.process_inbuf(now);
        } else if self.inbuf.is_empty() {
            // Fast path: parse straight from the caller's bytes, keep only an incomplete tail.
            let used = self.process(now, data);
            if used < data.len() && !self.closed {
                self.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            self.inbuf.extend_from_slice(data);
            self.process_inbuf(now);
        }
    }

    /// The server closed its side of the connection.
    pub fn handle_eof(&mut self, _now: Instant) {
        match &self.state {
            State::Closed => {}
            State::AwaitQuit(cause) => {
                let cause = cause.clone();
                self.close(cause);
            }
            _ => {
                let phase = self.phase();
                self.close(CloseCause::ConnectionLost(phase));
            }
        }
    }

    /// When [`Session::handle_timeout`] must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        match (self.deadline, self.idle_deadline) {
            (Some((d, _)), Some(i)) => Some(d.min(i)),
            (Some((d, _)), None) => Some(d),
            (None, i) => i,
        }
    }

    /// Acts on expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((deadline, phase)) = self.deadline
            && now >= deadline
        {
            self.deadline = None;
            match &self.state {
                State::AwaitQuit(cause) => {
                    let cause = cause.clone();
                    self.close(cause);
                }
                _ => self.close(CloseCause::Timeout(phase)),
            }
            return;
        }
        if let Some(idle) = self.idle_deadline
            && now >= idle
        {
            self.idle_deadline = None;
            if matches!(self.state, State::Idle) {
                self.send_quit(now, CloseCause::Quit);
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the bytes to write to the socket to `out`; returns how many were appended.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        self.write_body_block(now);
        match self.tls.as_mut() {
            Some(tls) => {
                if !self.outbuf.is_empty() {
                    if let Err(TlsError(e)) = tls.write_plaintext(&self.outbuf) {
                        self.outbuf.clear();
                        self.close(CloseCause::TlsFailed(e));
                        return 0;
                    }
                    self.outbuf.clear();
                }
                tls.drain_wire(out);
            }
            None => {
                if out.is_empty() {
                    std::mem::swap(out, &mut self.outbuf);
                } else {
                    out.extend_from_slice(&self.outbuf);
                    self.outbuf.clear();
                }
            }
        }
        out.len() - start
    }

    // ----- internals -----

    fn phase(&self) -> Phase {
        match &self.state {
            State::AwaitGreeting => Phase::Greeting,
            State::AwaitEhlo { .. } | State::AwaitHelo => Phase::Ehlo,
            State::AwaitStartTls | State::TlsHandshake => Phase::StartTls,
            State::AwaitAuth(_) => Phase::Auth,
            State::Idle | State::AwaitQuit(_) | State::Closed => Phase::Quit,
            State::Transaction(t) => match t.inflight.front() {
                Some(e) => e.phase(),
                None if self.body_out.is_some() => Phase::EndOfData,
                None => Phase::Mail,
            },
        }
    }

    fn arm(&mut self, now: Instant, phase: Phase) {
        self.deadline = Some((now + self.config.timeouts.for_phase(phase), phase));
    }

    fn send_command(
        &mut self,
        now: Instant,
        phase: Phase,
        f: impl FnOnce(&mut Vec<u8>, &SessionConfig),
    ) {
        f(&mut self.outbuf, &self.config);
        self.arm(now, phase);
    }

    fn send_quit(&mut self, now: Instant, cause: CloseCause) {
        // A refused RSET quits in mid-transaction: what is in flight fails now, in order.
        self.fail_in_flight(&cause);
        self.idle_deadline = None;
        self.outbuf.extend_from_slice(b"QUIT\r\n");
        self.arm(now, Phase::Quit);
        self.state = State::AwaitQuit(cause);
    }

    /// Ends the session: fails a message in progress, queues `Closed`.
    fn close(&mut self, cause: CloseCause) {
        if self.closed {
            return;
        }
        let mid_pipeline =
            !self.queued.is_empty() || matches!(&self.state, State::Transaction(t) if t.behind);
        match &cause {
            // A 421 is the server closing in good order (throttling, shutting down): its reply
            // came in sequence, so it says nothing about pipelining.
            CloseCause::Quit | CloseCause::Aborted | CloseCause::Refused(..) => {}
            CloseCause::Protocol(..) if self.window > 1 => self.pipelining_trouble(),
            _ if mid_pipeline => self.pipelining_trouble(),
            _ => {}
        }
        self.closed = true;
        self.fail_in_flight(&cause);
        self.state = State::Closed;
        self.body_out = None;
        self.deadline = None;
        self.idle_deadline = None;
        if let Some(tls) = self.tls.as_mut()
            && matches!(cause, CloseCause::Quit | CloseCause::Aborted)
        {
            tls.close();
        }
        self.events.push_back(Event::Closed(cause));
    }

    /// Fails the transactions in flight, in their order: the head at the phase of its next reply,
    /// the ones behind it at MAIL (none of their replies came; their RSET is housekeeping) or with
    /// the refusal they were queued with. A transaction state becomes `Closed`; the caller sets the
    /// next.
    fn fail_in_flight(&mut self, cause: &CloseCause) {
        if matches!(self.state, State::Transaction(_)) {
            let phase = self.phase();
            if let State::Transaction(txn) = std::mem::replace(&mut self.state, State::Closed) {
                let phase = match &txn.mail_failed {
                    Some(_) => Phase::Mail,
                    None => phase,
                };
                self.events.push_back(Event::MessageFailed {
                    phase,
                    failure: MessageFailure::SessionClosed(cause.clone()),
                });
            }
        }
        for mut txn in std::mem::take(&mut self.queued) {
            let (phase, failure) = txn
                .early
                .take()
                .unwrap_or_else(|| (Phase::Mail, MessageFailure::SessionClosed(cause.clone())));
            self.events
                .push_back(Event::MessageFailed { phase, failure });
        }
    }

    fn process_inbuf(&mut self, now: Instant) {
        let buf = std::mem::take(&mut self.inbuf);
        let used = self.process(now, &buf);
        if self.closed {
            return;
        }
        let mut buf = buf;
        buf.drain(..used);
        // Keep whatever arrived meanwhile (nothing can: process() does not feed input).
        self.inbuf = buf;
    }

    /// Parses and acts on whole replies in `buf`; returns the bytes used.
    fn process(&mut self, now: Instant, buf: &[u8]) -> usize {
        let mut used = 0;
        while used < buf.len() && !self.closed {
            let parsed = self.parser.parse(&buf[used..]);
            match parsed {
                Ok(Parse::Partial) => break,
                Ok(Parse::Complete(reply, n)) => {
                    used += n;
                    let was_starttls = matches!(self.state, State::AwaitStartTls);
                    self.on_reply(now, reply);
                    if was_starttls && matches!(self.state, State::TlsHandshake) && used < buf.len()
                    {
                        let cause =
                            CloseCause::Protocol(Phase::StartTls, ProtocolError::DataAfterStartTls);
                        self.close(cause);
                    }
                }
                Err(e) => {
                    let phase = self.phase();
                    self.close(CloseCause::Protocol(phase, ProtocolError::Reply(e)));
                }
            }
        }
        used
    }

    fn on_reply(&mut self, now: Instant, r: ReplyRef<'_>) {
        let code = r.code();
        // 421 in any phase: the server is closing the transmission channel (RFC 5321 §3.8).
        if code == 421 && !matches!(self.state, State::AwaitQuit(_)) {
            let phase = self.phase();
            self.close(CloseCause::Refused(phase, r.to_reply()));
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::AwaitGreeting => {
                if code == 220 {
                    self.state = State::AwaitEhlo { after_tls: false };
                    self.send_command(now, Phase::Ehlo, |out, c| {
                        let _ = write!(out, "EHLO {}\r\n", c.helo_name);
                    });
                } else {
                    self.state = State::AwaitGreeting;
                    self.refuse_and_quit(now, Phase::Greeting, r.to_reply());
                }
            }
            State::AwaitEhlo { after_tls } => {
                if r.is_positive() {
                    self.caps = Capabilities::from_ehlo(&r);
                    self.after_ehlo(now);
                } else if code / 100 == 5 && !after_tls {
                    // EHLO not understood: fall back to HELO (RFC 5321 §4.1.4).
                    self.state = State::AwaitHelo;
                    self.send_command(now, Phase::Ehlo, |out, c| {
                        let _ = write!(out, "HELO {}\r\n", c.helo_name);
                    });
                } else {
                    self.state = State::AwaitEhlo { after_tls };
                    self.refuse_and_quit(now, Phase::Ehlo, r.to_reply());
                }
            }
            State::AwaitHelo => {
                if r.is_positive() {
                    self.caps = Capabilities::default();
                    self.after_ehlo(now);
                } else {
                    self.state = State::AwaitHelo;
                    self.refuse_and_quit(now, Phase::Ehlo, r.to_reply());
                }
            }
            State::AwaitStartTls => {
                if code == 220 {
                    let config = match &self.config.tls {
                        Tls::Opportunistic(c) | Tls::Required(c) => c.clone(),
                        Tls::Disabled => unreachable_config(),
                    };
                    match TlsLayer::new(config, &self.server_name) {
                        Ok(tls) => {
                            // The ClientHello leaves with the next poll_transmit.
                            self.tls = Some(tls);
                            self.state = State::TlsHandshake;
                            self.arm(now, Phase::StartTls);
                        }
                        Err(e) => self.close(CloseCause::TlsFailed(e.0)),
                    }
                } else if matches!(self.config.tls, Tls::Required(_)) {
                    self.state = State::AwaitStartTls;
                    self.refuse_and_quit(now, Phase::StartTls, r.to_reply());
                } else {
                    // Opportunistic: the server refused STARTTLS; carry on in plain text.
                    self.after_tls_decision(now);
                }
            }
            State::AwaitAuth(step) => self.on_auth_reply(now, step, r),
            State::Transaction(txn) => self.on_transaction_reply(now, txn, r),
            State::AwaitQuit(cause) => self.close(cause),
            State::Idle | State::TlsHandshake => {
                let phase = if matches!(state, State::Idle) {
                    Phase::Quit
                } else {
                    Phase::StartTls
                };
                self.state = state;
                self.close(CloseCause::Protocol(
                    phase,
                    ProtocolError::UnexpectedReply(code),
                ));
            }
            State::Closed => {}
        }
    }

    fn refuse_and_quit(&mut self, now: Instant, phase: Phase, reply: Reply) {
        self.send_quit(now, CloseCause::Refused(phase, reply));
    }

    fn after_ehlo(&mut self, now: Instant) {
        let want_tls = matches!(self.config.tls, Tls::Opportunistic(_) | Tls::Required(_));
        if want_tls && self.tls.is_none() {
            if self.caps.starttls {
                self.state = State::AwaitStartTls;
                self.send_command(now, Phase::StartTls, |out, _| {
                    out.extend_from_slice(b"STARTTLS\r\n");
                });
                return;
            }
            if matches!(self.config.tls, Tls::Required(_)) {
                self.send_quit(now, CloseCause::TlsUnavailable);
                return;
            }
        }
        self.after_tls_decision(now);
    }

    fn after_tls_decision(&mut self, now: Instant) {
        let Some(creds) = self.config.auth.clone() else {
            self.enter_idle(now);
            return;
        };
        if self.tls.is_none() && !self.config.allow_plaintext_auth {
            self.send_quit(
                now,
                CloseCause::AuthUnavailable("refusing to send credentials without TLS"),
            );
            return;
        }
        if self.caps.auth.plain {
            let mut raw = Vec::with_capacity(creds.username.len() + creds.password.len() + 2);
            raw.push(0);
            raw.extend_from_slice(creds.username.as_bytes());
            raw.push(0);
            raw.extend_from_slice(creds.password.as_bytes());
            let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
            self.state = State::AwaitAuth(AuthStep::Plain);
            self.send_command(now, Phase::Auth, |out, _| {
                let _ = write!(out, "AUTH PLAIN {encoded}\r\n");
            });
        } else if self.caps.auth.login {
            self.state = State::AwaitAuth(AuthStep::LoginStart);
            self.send_command(now, Phase::Auth, |out, _| {
                out.extend_from_slice(b"AUTH LOGIN\r\n");
            });
        } else {
            self.send_quit(
                now,
                CloseCause::AuthUnavailable("server offers neither AUTH PLAIN nor AUTH LOGIN"),
            );
        }
    }

    fn on_auth_reply(&mut self, now: Instant, step: AuthStep, r: ReplyRef<'_>) {
        let creds = self.config.auth.clone().unwrap_or_else(|| Credentials {
            username: String::new(),
            password: String::new(),
        });
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        match (step, r.code()) {
            (AuthStep::Plain | AuthStep::LoginPassword, 235) => self.enter_idle(now),
            (AuthStep::LoginStart, 334) => {
                let user = b64(&creds.username);
                self.state = State::AwaitAuth(AuthStep::LoginUser);
                self.send_command(now, Phase::Auth, |out, _| {
                    let _ = write!(out, "{user}\r\n");
                });
            }
            (AuthStep::LoginUser, 334) => {
                let pass = b64(&creds.password);
                self.state = State::AwaitAuth(AuthStep::LoginPassword);
                self.send_command(now, Phase::Auth, |out, _| {
                    let _ = write!(out, "{pass}\r\n");
                });
            }
            _ => {
                self.state = State::AwaitAuth(step);
                self.refuse_and_quit(now, Phase::Auth, r.to_reply());
            }
        }
    }

    fn enter_idle(&mut self, now: Instant) {
        self.state = State::Idle;
        self.deadline = None;
        if !self.ready_seen {
            self.ready_seen = true;
            self.events.push_back(Event::Ready);
        }
        if self.quit_requested {
            self.send_quit(now, CloseCause::Quit);
        } else {
            self.idle_deadline = Some(now + self.config.timeouts.idle);
        }
    }

    /// Sends the head transaction's commands: all of them with PIPELINING, else the next one once
    /// the previous reply is in.
    fn pump_transaction(&mut self, now: Instant) {
        let mut txn = match std::mem::replace(&mut self.state, State::Closed) {
            State::Transaction(t) => t,
            other => {
                self.state = other;
                return;
            }
        };
        let last_phase = self.write_commands(&mut txn);
        // Without pipelining, a refused MAIL or no accepted recipient ends the transaction here.
        let finished = txn.inflight.is_empty() && txn.next != Next::Done;
        self.state = State::Transaction(txn);
        if let Some(phase) = last_phase {
            self.arm(now, phase);
        }
        if finished {
            self.finish_without_data(now);
        }
    }

    /// Writes what `txn` may send now to `outbuf` (and its body to `body_out`); returns the phase of
    /// the first command written, if any.
    fn write_commands(&mut self, txn: &mut Txn) -> Option<Phase> {
        let pipelining = self.config.pipelining && self.caps.pipelining;
        let chunking = self.config.chunking && self.caps.chunking;
        let dsn = self.caps.dsn;
        let mut first_phase = None;
        loop {
            if !pipelining && !txn.inflight.is_empty() {
                break;
            }
            match txn.next {
                Next::Done => break,
                Next::Rset => {
                    self.outbuf.extend_from_slice(b"RSET\r\n");
                    txn.inflight.push_back(Expect::Rset);
                    txn.next = Next::Mail;
                    first_phase.get_or_insert(Phase::Rset);
                }
                Next::Mail => {
                    write_mail_from(&mut self.outbuf, txn, &self.caps, dsn);
                    txn.inflight.push_back(Expect::Mail);
                    txn.next = Next::Rcpt(0);
                    first_phase.get_or_insert(Phase::Mail);
                }
                Next::Rcpt(i) => {
                    if !pipelining && txn.mail_failed.is_some() {
                        break;
                    }
                    write_rcpt_to(&mut self.outbuf, &txn.tx.envelope.recipients[i], dsn);
                    txn.inflight.push_back(Expect::Rcpt(i));
                    txn.next = if i + 1 < txn.tx.envelope.recipients.len() {
                        Next::Rcpt(i + 1)
                    } else {
                        Next::Body
                    };
                    first_phase.get_or_insert(Phase::Rcpt);
                }
                Next::Body => {
                    if !pipelining && (txn.mail_failed.is_some() || txn.accepted == 0) {
                        break;
                    }
                    txn.next = Next::Done;
                    if chunking {
                        let len = match &txn.normalised {
                            Some(v) => v.len(),
                            None => (*txn.tx.body).as_ref().len(),
                        };
                        let _ = write!(self.outbuf, "BDAT {len} LAST\r\n");
                        txn.inflight.push_back(Expect::Bdat);
                        self.body_out = Some(BodyOut {
                            body: txn.tx.body.clone(),
                            owned: txn.normalised.take(),
                            offset: 0,
                            stuffer: None,
                        });
                        first_phase.get_or_insert(Phase::EndOfData);
                    } else {
                        self.outbuf.extend_from_slice(b"DATA\r\n");
                        txn.inflight.push_back(Expect::Data);
                        first_phase.get_or_insert(Phase::Data);
                    }
                }
            }
        }
        first_phase
    }

    /// An accepted message: the server answered in order, so one more may follow behind the next
    /// (the window doubles, up to its cap).
    fn grow_window(&mut self) {
        if !self.pipelining_failed {
            self.window = (self.window * 2).min(self.window_cap);
        }
    }

    /// Pipelining went wrong: one transaction at a time from now on.
    fn pipelining_trouble(&mut self) {
        self.pipelining_failed = true;
        self.window = 1;
        self.window_cap = 1;
    }

    /// May another transaction leave behind the ones in flight?
    fn may_pipeline(&self) -> bool {
        let State::Transaction(head) = &self.state else {
            return false;
        };
        let last = self.queued.back().unwrap_or(head);
        self.queued.len() + 1 < self.window
            && self.config.pipelining
            && self.caps.pipelining
            && self.config.chunking
            && self.caps.chunking
            && last.next == Next::Done
            && self
                .body_out
                .as_ref()
                .is_none_or(|b| b.remaining() <= BODY_BLOCK)
    }

    /// Ends a transaction that never reached its data: MAIL refused or no recipient accepted.
    fn finish_without_data(&mut self, now: Instant) {
        let State::Transaction(txn) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let (phase, failure) = match txn.mail_failed {
            Some(reply) => (Phase::Mail, MessageFailure::Reply(reply)),
            None => (Phase::Rcpt, MessageFailure::NoValidRecipients),
        };
        self.events
            .push_back(Event::MessageFailed { phase, failure });
        self.needs_rset = true;
        self.enter_idle(now);
    }

    fn on_transaction_reply(&mut self, now: Instant, mut txn: Box<Txn>, r: ReplyRef<'_>) {
        let Some(expect) = txn.inflight.pop_front() else {
            self.state = State::Transaction(txn);
            let phase = self.phase();
            self.close(CloseCause::Protocol(
                phase,
                ProtocolError::UnexpectedReply(r.code()),
            ));
            return;
        };
        let code = r.code();
        if (txn.behind || !self.queued.is_empty()) && !r.is_positive() {
            // Out of sequence or not understood while transactions were pipelined. A refused RCPT
            // is about its recipient, and the end of data of a transaction without an accepted
            // recipient is refused by design ("554 5.5.1 no valid recipients").
            let sequence =
                (500..=504).contains(&code) || r.enhanced().is_some_and(|e| e.subject == 5);
            let trouble = match expect {
                Expect::Rset => true,
                Expect::Mail => sequence,
                Expect::Rcpt(_) => false,
                Expect::Data | Expect::Bdat | Expect::DataEnd { .. } => {
                    sequence && txn.mail_failed.is_none() && txn.accepted > 0
                }
            };
            if trouble {
                self.pipelining_trouble();
            }
        }
        match expect {
            Expect::Rset => {
                if !r.is_positive() {
                    self.state = State::Transaction(txn);
                    self.refuse_and_quit(now, Phase::Rset, r.to_reply());
                    return;
                }
            }
            Expect::Mail => {
                if !r.is_positive() {
                    txn.mail_failed = Some(r.to_reply());
                }
            }
            Expect::Rcpt(index) => {
                txn.answered += 1;
                if txn.mail_failed.is_none() {
                    if r.is_positive() {
                        txn.accepted += 1;
                        self.events.push_back(Event::RcptAccepted {
                            index,
                            reply: r.to_reply(),
                        });
                    } else {
                        self.events.push_back(Event::RcptRejected {
                            index,
                            reply: r.to_reply(),
                        });
                    }
                }
            }
            Expect::Data => {
                if code == 354 {
                    let discard = txn.mail_failed.is_some() || txn.accepted == 0;
                    // RFC 2920 §3.1: DATA accepted without any recipient: end it with a lone dot.
                    let body: Body = if discard {
                        Arc::new(Vec::<u8>::new())
                    } else {
                        txn.tx.body.clone()
                    };
                    self.body_out = Some(BodyOut {
                        body,
                        owned: None,
                        offset: 0,
                        stuffer: Some(DotStuffer::default()),
                    });
                    txn.inflight.push_back(Expect::DataEnd { discard });
                    self.state = State::Transaction(txn);
                    self.arm(now, Phase::Data);
                    return;
                }
                if code / 100 == 2 || code / 100 == 3 {
                    self.state = State::Transaction(txn);
                    self.close(CloseCause::Protocol(
                        Phase::Data,
                        ProtocolError::UnexpectedCode(code),
                    ));
                    return;
                }
                let failure = self.failure_of(&mut txn, Phase::Data, r.to_reply());
                self.end_transaction(now, txn, failure, true);
                return;
            }
            Expect::Bdat => {
                if r.is_positive() && txn.mail_failed.is_none() && txn.accepted > 0 {
                    self.events.push_back(Event::MessageAccepted {
                        reply: r.to_reply(),
                    });
                    self.grow_window();
                    self.end_transaction(now, txn, None, false);
                } else {
                    let failure = self.failure_of(&mut txn, Phase::EndOfData, r.to_reply());
                    self.end_transaction(now, txn, failure, true);
                }
                return;
            }
            Expect::DataEnd { discard } => {
                if discard {
                    let failure = self.failure_of(&mut txn, Phase::EndOfData, r.to_reply());
                    self.end_transaction(now, txn, failure, true);
                } else if r.is_positive() {
                    self.events.push_back(Event::MessageAccepted {
                        reply: r.to_reply(),
                    });
                    self.grow_window();
                    self.end_transaction(now, txn, None, false);
                } else {
                    let failure = Some((Phase::EndOfData, MessageFailure::Reply(r.to_reply())));
                    self.end_transaction(now, txn, failure, false);
                }
                return;
            }
        }
        // Re-arm the reply timer for the next expected reply.
        if let Some(next) = txn.inflight.front() {
            let phase = next.phase();
            self.arm(now, phase);
        }
        self.state = State::Transaction(txn);
        self.pump_transaction(now);
    }

    /// The failure to report when the data phase did not go through.
    fn failure_of(
        &self,
        txn: &mut Txn,
        phase: Phase,
        reply: Reply,
    ) -> Option<(Phase, MessageFailure)> {
        Some(match txn.mail_failed.take() {
            Some(mail) => (Phase::Mail, MessageFailure::Reply(mail)),
            None if txn.accepted == 0 => (Phase::Rcpt, MessageFailure::NoValidRecipients),
            None => (phase, MessageFailure::Reply(reply)),
        })
    }

    fn end_transaction(
        &mut self,
        now: Instant,
        mut txn: Box<Txn>,
        failure: Option<(Phase, MessageFailure)>,
        needs_rset: bool,
    ) {
        // The next transaction reuses the queue of expected replies.
        txn.inflight.clear();
        self.spare_inflight = std::mem::take(&mut txn.inflight);
        drop(txn);
        if let Some((phase, failure)) = failure {
            self.events
                .push_back(Event::MessageFailed { phase, failure });
        }
        self.needs_rset = needs_rset;
        // The next transaction sent behind this one becomes the head; refusals known without a
        // round trip are reported in their turn.
        while let Some(mut next) = self.queued.pop_front() {
            if let Some((phase, failure)) = next.early.take() {
                self.events
                    .push_back(Event::MessageFailed { phase, failure });
                continue;
            }
            let phase = next.inflight.front().map(|e| e.phase());
            self.state = State::Transaction(next);
            if let Some(phase) = phase {
                self.arm(now, phase);
            }
            return;
        }
        // The body being handed out, if any, was this transaction's.
        self.body_out = None;
        self.enter_idle(now);
    }

    /// Moves the next block of the body (if any is due) into `outbuf`.
    fn write_body_block(&mut self, now: Instant) {
        let Some(bo) = self.body_out.as_mut() else {
            return;
        };
        let all: &[u8] = match &bo.owned {
            Some(v) => v,
            None => (*bo.body).as_ref(),
        };
        let end = (bo.offset + BODY_BLOCK).min(all.len());
        let block = &all[bo.offset..end];
        let last = end == all.len();
        let multi_block = bo.offset > 0;
        match bo.stuffer.as_mut() {
            Some(stuffer) => {
                stuffer.push(block, &mut self.outbuf);
                if last {
                    stuffer.finish(&mut self.outbuf);
                }
            }
            None => self.outbuf.extend_from_slice(block),
        }
        bo.offset = end;
        if last {
            self.body_out = None;
            let front = match &self.state {
                State::Transaction(t) => t.inflight.front().map(|e| e.phase()),
                _ => None,
            };
            if self.queued.is_empty() {
                // The end-of-data timer runs from the moment the last block is handed out.
                if front == Some(Phase::EndOfData) {
                    self.arm(now, Phase::EndOfData);
                }
            } else if multi_block && let Some(phase) = front {
                // A body behind other transactions: the data block timer stood in for the head's
                // reply timer while it went out; the head's timer runs again.
                self.arm(now, phase);
            }
        } else {
            self.deadline = Some((now + self.config.timeouts.data_block, Phase::EndOfData));
        }
    }
}

#[cold]
fn unreachable_config() -> ! {
    // STARTTLS is only sent when the policy carries a configuration.
    unreachable!("STARTTLS sent without a TLS configuration")
}

fn write_mail_from(out: &mut Vec<u8>, txn: &Txn, caps: &Capabilities, dsn: bool) {
    let env = &txn.tx.envelope;
    let _ = write!(out, "MAIL FROM:<{}>", env.mail_from);
    if caps.size.is_some() {
        let len = match &txn.normalised {
            Some(v) => v.len(),
            None => (*txn.tx.body).as_ref().len(),
        };
        let _ = write!(out, " SIZE={len}");
    }
    if env.eight_bit && caps.eight_bit_mime {
        out.extend_from_slice(b" BODY=8BITMIME");
    }
    if txn.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    if dsn {
        match env.dsn_ret {
            Some(DsnRet::Full) => out.extend_from_slice(b" RET=FULL"),
            Some(DsnRet::Headers) => out.extend_from_slice(b" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &env.dsn_envid {
            out.extend_from_slice(b" ENVID=");
            write_xtext(out, envid);
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn write_rcpt_to(out: &mut Vec<u8>, rcpt: &Recipient, dsn: bool) {
    let _ = write!(out, "RCPT TO:<{}>", rcpt.address);
    if dsn {
        if let Some(n) = rcpt.notify {
            out.extend_from_slice(b" NOTIFY=");
            if !(n.success || n.failure || n.delay) {
                out.extend_from_slice(b"NEVER");
            } else {
                let mut first = true;
                for (on, name) in [
                    (n.success, "SUCCESS"),
                    (n.failure, "FAILURE"),
                    (n.delay, "DELAY"),
                ] {
                    if on {
                        if !first {
                            out.push(b',');
                        }
                        out.extend_from_slice(name.as_bytes());
                        first = false;
                    }
                }
            }
        }
        if let Some(orcpt) = &rcpt.orcpt {
            out.extend_from_slice(b" ORCPT=rfc822;");
            write_xtext(out, orcpt);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// xtext (RFC 3461 §4): `+`, `=`, controls, space and non-ASCII as `+XX`.
fn write_xtext(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
}

/// Does every CR come before an LF and every LF after a CR?
///
/// Equivalently: the first byte is no LF, the last no CR, and in every pair of neighbouring bytes the
/// first is a CR exactly when the second is an LF. The pairs are checked without branches, a block at
/// a time, which the compiler vectorises (a search stopping at every line end was 4% of a shard's
/// time on 2 KiB messages). Submission checks use it too (`policy::message`).
pub(crate) fn is_crlf_clean(body: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (body.first(), body.last()) else {
        return true;
    };
    if first == b'\n' || last == b'\r' {
        return false;
    }
    const BLOCK: usize = 1024;
    let mut start = 0;
    while start + 1 < body.len() {
        let end = (start + BLOCK + 1).min(body.len());
        let block = &body[start..end];
        let mut odd = false;
        for (a, b) in block.iter().zip(&block[1..]) {
            odd |= (*a == b'\r') != (*b == b'\n');
        }
        if odd {
            return false;
        }
        start = end - 1;
    }
    true
}

/// Turns bare CR and bare LF into CRLF.
fn normalise_crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    let mut i = 0;
    while i < body.len() {
        match memchr::memchr2(b'\r', b'\n', &body[i..]) {
            None => {
                out.extend_from_slice(&body[i..]);
                break;
            }
            Some(p) => {
                let at = i + p;
                out.extend_from_slice(&body[i..at]);
                out.extend_from_slice(b"\r\n");
                i = if body[at] == b'\r' && body.get(at + 1) == Some(&b'\n') {
                    at + 2
                } else {
                    at + 1
                };
            }
        }
    }
    out
}

/// DATA encoding (RFC 5321 §4.5.2): a line starting with `.` gets another, bare CR and LF become
/// CRLF, and the data ends with `CRLF.CRLF`. Works across block boundaries.
#[derive(Debug, Clone, Copy)]
struct DotStuffer {
    line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 16);
        while !input.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            if self.line_start && input[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr2(b'\r', b'\n', input) {
                None => {
                    out.extend_from_slice(input);
                    self.line_start = false;
                    return;
                }
                Some(p) => {
                    out.extend_from_slice(&input[..p]);
                    if input[p] == b'\r' {
                        self.pending_cr = true;
                        self.line_start = false;
                    } else {
                        out.extend_from_slice(b"\r\n");
                        self.line_start = true;
                    }
                    input = &input[p + 1..];
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.line_start = true;
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.line_start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session past EHLO with these capabilities and this many transactions in flight allowed.
    fn ready_session(caps: &str, in_flight: usize) -> (Session, Instant) {
        let now = Instant::now();
        let mut cfg = SessionConfig::new("client.example");
        cfg.transactions_in_flight = in_flight;
        cfg.initial_in_flight = in_flight;
        let mut s = Session::new(Arc::new(cfg), "mx.example", now);
        s.handle_input(now, b"220 mx.example ESMTP\r\n");
        let mut out = Vec::new();
        s.poll_transmit(now, &mut out);
        s.handle_input(now, format!("250-mx.example\r\n{caps}").as_bytes());
        assert_eq!(s.poll_event(), Some(Event::Ready));
        (s, now)
    }

    fn message(body: Vec<u8>) -> Transaction {
        Transaction {
            envelope: Envelope {
                mail_from: "a@x.example".into(),
                recipients: vec![Recipient::new("b@y.example")],
                ..Envelope::default()
            },
            body: Arc::new(body),
            crlf_clean: true,
        }
    }

    #[test]
    fn transactions_in_flight_up_to_the_limit_and_only_with_pipelining_and_chunking() {
        let caps = "250-PIPELINING\r\n250 CHUNKING\r\n";
        let (mut s, now) = ready_session(caps, 2);
        s.send(now, message(b"x\r\n".to_vec())).unwrap();
        assert!(s.is_ready());
        s.send(now, message(b"y\r\n".to_vec())).unwrap();
        assert_eq!(s.transactions_in_flight(), 2);
        assert!(!s.is_ready());
        assert!(s.send(now, message(b"z\r\n".to_vec())).is_err());

        // One allowed (the default), or a server without CHUNKING or without PIPELINING: one.
        for (caps, n) in [
            (caps, 1),
            ("250 PIPELINING\r\n", 4),
            ("250 CHUNKING\r\n", 4),
        ] {
            let (mut s, now) = ready_session(caps, n);
            s.send(now, message(b"x\r\n".to_vec())).unwrap();
            assert!(!s.is_ready(), "{caps:?} with {n}");
        }

        // A body of more than one block must be (nearly) handed out first.
        let (mut s, now) = ready_session(caps, 2);
        s.send(now, message(vec![b'a'; 2 * BODY_BLOCK + 10]))
            .unwrap();
        assert!(!s.is_ready());
        let mut out = Vec::new();
        s.poll_transmit(now, &mut out);
        assert!(!s.is_ready(), "a block and 10 bytes left");
        s.poll_transmit(now, &mut out);
        assert!(s.is_ready(), "10 bytes left");
        s.send(now, message(b"y\r\n".to_vec())).unwrap();
        s.poll_transmit(now, &mut out);
        let text = String::from_utf8_lossy(&out);
        let second = text
            .find("RSET\r\n")
            .expect("the second transaction follows");
        assert_eq!(
            second,
            text.find("BDAT").unwrap() + "BDAT 524298 LAST\r\n".len() + 2 * BODY_BLOCK + 10
        );

        // A large body behind the head: block timers while it goes out, then the head's reply
        // timer again (its MAIL reply is the next due).
        let (mut s, now) = ready_session(caps, 2);
        s.send(now, message(b"x\r\n".to_vec())).unwrap();
        s.send(now, message(vec![b'b'; 2 * BODY_BLOCK])).unwrap();
        let timeouts = Timeouts::default();
        let mut sink = Vec::new();
        s.poll_transmit(now, &mut sink);
        assert_eq!(s.poll_timeout(), Some(now + timeouts.data_block));
        s.poll_transmit(now, &mut sink);
        assert_eq!(s.poll_timeout(), Some(now + timeouts.mail));
    }

    fn stuff(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffing_and_line_ends_across_every_split() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
            (b"a\nb\rc", b"a\r\nb\r\nc\r\n.\r\n"),
            (b"x\r\r\n.y", b"x\r\n\r\n..y\r\n.\r\n"),
            (b"", b".\r\n"),
            (b"\r", b"\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(
                &stuff(&[input]),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            for cut in 0..=input.len() {
                assert_eq!(&stuff(&[&input[..cut], &input[cut..]]), want, "cut {cut}");
            }
        }
    }

    #[test]
    fn crlf_cleanliness() {
        assert!(is_crlf_clean(b"a\r\nb\r\n"));
        assert!(is_crlf_clean(b"no line end"));
        assert!(!is_crlf_clean(b"a\nb"));
        assert!(!is_crlf_clean(b"a\rb"));
        assert!(!is_crlf_clean(b"a\r"));
        assert!(!is_crlf_clean(b"\nb"));
        assert!(!is_crlf_clean(b"a\r\r\nb"));
        assert!(is_crlf_clean(b""));
        assert!(is_crlf_clean(b"\r\n"));
        // Across block boundaries, against a plain reference.
        let reference = |b: &[u8]| {
            (0..b.len()).all(|i| match b[i] {
                b'\r' => b.get(i + 1) == Some(&b'\n'),
                b'\n' => i > 0 && b[i - 1] == b'\r',
                _ => true,
            })
        };
        let mut body = Vec::new();
        while body.len() < 5000 {
            body.extend_from_slice(b"a line of text\r\n");
        }
        assert!(is_crlf_clean(&body));
        for at in [0, 1, 1023, 1024, 1025, 2047, 2048, 4999] {
            for bad in [b'\r', b'\n'] {
                let mut b = body.clone();
                b[at] = bad;
                assert_eq!(is_crlf_clean(&b), reference(&b), "{at} {bad}");
            }
        }
        assert_eq!(normalise_crlf(b"a\nb\rc\r\nd\r"), b"a\r\nb\r\nc\r\nd\r\n");
    }

    #[test]
    fn xtext_encoding() {
        let mut out = Vec::new();
        write_xtext(&mut out, "a+b=c d\u{e9}");
        assert_eq!(out, b"a+2Bb+3Dc+20d+C3+A9");
    }
}
