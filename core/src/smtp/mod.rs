//! Both sides of RFC 5321 SMTP, as sans-IO protocol code.
//!
//! - [`reply`]: the reply parser (RFC 5321 §4.2, multi-line replies) and RFC 3463 enhanced status codes.
//! - [`capabilities`]: ESMTP keywords from the EHLO reply.
//! - [`server`]: the server session state machine (RFC 5321 server side, 2920, 3030, 1870, 6152, 6531,
//!   2034); the caller decides on senders, recipients and messages.
//! - [`session`]: the client session state machine (RFC 5321, 2920, 3030, 1870, 6152, 6531, 3461, 4954).
//! - [`tls`]: STARTTLS (RFC 3207) with rustls as a second sans-IO layer.
//! - [`Phase`]: where in the conversation something happened, shared with bounce classification.
//!
//! Nothing in this module performs I/O or reads the clock.

#![forbid(unsafe_code)]

pub mod capabilities;
pub mod reply;
pub mod server;
pub mod session;
pub mod tls;

pub use capabilities::Capabilities;
pub use reply::{EnhancedCode, Reply, ReplyError, ReplyLimits, ReplyParser, ReplyRef};
pub use session::{
    Body, CloseCause, Credentials, DsnNotify, DsnRet, Envelope, Event, MessageFailure,
    ProtocolError, Recipient, Session, SessionConfig, Timeouts, Tls, Transaction,
};
pub use tls::{TlsLayer, TlsSettings};

/// The phase of an SMTP conversation in which a reply (or a failure) occurred.
///
/// Bounce classification reads the phase: a 5xx to `RCPT` speaks of the recipient, a 5xx to `MAIL` or at
/// the greeting speaks of the sender or its IP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Resolving where the mail goes (MX, A/AAAA); no SMTP reply exists.
    Resolve,
    /// Opening the TCP connection; no SMTP reply exists.
    Connect,
    /// Waiting for the server's 220 greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS and the TLS handshake that follows it.
    StartTls,
    /// AUTH (RFC 4954).
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (the 354 intermediate reply) or the BDAT command.
    Data,
    /// The reply to the end of the message data (`.` or `BDAT n LAST`).
    EndOfData,
    /// RSET between transactions.
    Rset,
    /// QUIT.
    Quit,
}

impl Phase {
    /// The lower-case name used in logs, JSON events and rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "ehlo",
            Phase::StartTls => "starttls",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::EndOfData => "end-of-data",
            Phase::Rset => "rset",
            Phase::Quit => "quit",
        }
    }

    /// Parses a name produced by [`Phase::as_str`] (case-insensitive; `bdat` is read as `data`).
    pub fn parse(s: &str) -> Option<Phase> {
        let s = s.trim().to_ascii_lowercase();
        Some(match s.as_str() {
            "resolve" | "dns" => Phase::Resolve,
            "connect" => Phase::Connect,
            "greeting" | "banner" => Phase::Greeting,
            "ehlo" | "helo" => Phase::Ehlo,
            "starttls" | "tls" => Phase::StartTls,
            "auth" => Phase::Auth,
            "mail" => Phase::Mail,
            "rcpt" => Phase::Rcpt,
            "data" | "bdat" => Phase::Data,
            "end-of-data" | "eod" | "dot" => Phase::EndOfData,
            "rset" => Phase::Rset,
            "quit" => Phase::Quit,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
