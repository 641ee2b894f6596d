//! vmta's own stub resolver: MX, address, TXT and PTR lookups against recursive nameservers, as a sans-IO
//! core ([`Resolver`]) plus a mio driver ([`Driver`]) and a blocking front end ([`BlockingResolver`]).
//! Messages are encoded and decoded with hickory-proto; there is no tokio, no thread and no getaddrinfo.
//!
//! # What it implements
//!
//! - RFC 5321 §5.1 MX resolution: MX records ordered by preference (lowest first), hosts of equal
//!   preference shuffled with the resolver's seedable RNG, each host's A and AAAA records resolved
//!   (order set by [`AddressFamily`], IPv4 first by default), the implicit MX (the domain's own addresses
//!   when it has no MX records), hosts without addresses skipped. A null MX (RFC 7505 `MX 0 .`) is a
//!   permanent failure [`Reason::NotAccept`]; NXDOMAIN is a permanent [`Reason::HostUnknown`]; no host
//!   with an address left, timeouts and SERVFAIL are temporary ([`Reason::NetworkError`]).
//! - CNAME chains (RFC 1034 §3.6.2), inside one answer and across answers, with a hop limit
//!   ([`Config::cname_limit`]); MX targets that are CNAMEs (an RFC 2181 §10.3 violation seen in the wild)
//!   are followed too.
//! - A cache of records and negative answers (RFC 2308 §5, TTL from the SOA), TTLs clamped to
//!   [`Config::min_ttl`]..[`Config::max_ttl`], bounded in entries. Concurrent identical questions are
//!   coalesced: one question on the wire for any number of waiting lookups.
//! - RFC 5452 defences: a random message ID per exchange and a fresh socket (kernel-chosen random source
//!   port) per exchange; an answer is accepted only from the server the query went to, with the same ID
//!   and the same question. Malformed and mismatched messages are counted ([`Stats`]) and dropped.
//! - Retries: each try waits [`Config::timeout`]; tries rotate over the nameservers, `attempts` rounds
//!   in all (resolv.conf semantics, `options rotate` included). A nameserver that timed out is not asked
//!   first for [`Config::server_holddown`]. A truncated UDP answer (TC bit) is asked again over TCP
//!   (RFC 7766) to the same server. EDNS0 (RFC 6891) advertises a 1232-byte UDP payload; a FORMERR
//!   answer to it gets the query again without EDNS0 (§7).
//! - `/etc/resolv.conf` (`nameserver`, `options timeout attempts ndots rotate`) or explicit `host:port`
//!   nameservers ([`config`]).
//!
//! # What it does not do
//!
//! No iterative resolution (it needs a recursive nameserver), no DNSSEC validation, no DNS over TLS/HTTPS,
//! no search lists (every name is absolute), no use of additional-section records (glue), no SMTP
//! address literals (`[192.0.2.1]` is the caller's business). [`Resolver::cancel`] drops a lookup but
//! not the questions it already put on the wire.
//!
//! # Driving the sans-IO core
//!
//! [`Resolver`] never touches a socket or the clock. Every call takes `now`; the RNG is seeded by the
//! caller ([`Resolver::new`] takes a 32-byte seed, [`random_seed`] reads one from the OS).
//!
//! 1. [`Resolver::lookup`]`(now, token, query)` starts a lookup; `token` is yours and comes back in the
//!    [`Event`]. A cache hit completes at once.
//! 2. After **every** call that takes `now`, drain [`Resolver::poll_transmit`]: each [`Transmit::Send`]
//!    asks you to open a socket for exchange `exchange` (UDP: bind an ephemeral port and send the payload
//!    as one datagram to `server`; TCP: connect to `server` and write the payload, which already carries
//!    the RFC 1035 §4.2.2 length prefix). [`Transmit::Close`] asks you to close that exchange's socket.
//!    Process them in order: an exchange number is reused after its `Close`.
//! 3. Feed what the sockets produce: [`Resolver::handle_datagram`] (with the sender's address),
//!    [`Resolver::handle_stream`] (TCP bytes as they arrive, any split), [`Resolver::handle_error`]
//!    (connection refused, reset, EOF before the answer).
//! 4. Arm a timer for [`Resolver::poll_timeout`] and call [`Resolver::handle_timeout`] when it passes.
//! 5. Drain [`Resolver::poll_event`] for finished lookups.
//!
//! Every lookup ends with exactly one event (unless cancelled): each question gives up after
//! `attempts * nameservers` tries.
//!
//! At most [`Config::max_in_flight`] exchanges are open at once, numbered `0..max_in_flight`.
//!
//! # Running it in your own mio loop
//!
//! [`Driver`] does steps 2–4 with mio sockets. Give it a base token; it uses the tokens
//! `base..base + max_in_flight` ([`Driver::tokens`]) and registers its sockets in your
//! [`mio::Registry`] under them:
//!
//! ```no_run
//! use std::time::Instant;
//! use vmta::dns::{Config, Driver, Query, Resolver, random_seed};
//!
//! let mut poll = mio::Poll::new()?;
//! let resolver = Resolver::new(Config::from_system()?, random_seed()?)?;
//! let mut dns = Driver::new(resolver, 1_000); // tokens 1000..1064 belong to the resolver
//! dns.lookup(poll.registry(), Instant::now(), 42, Query::Mx("example.com".into()));
//! let mut events = mio::Events::with_capacity(64);
//! loop {
//!     let timeout = dns.poll_timeout().map(|t| t.saturating_duration_since(Instant::now()));
//!     poll.poll(&mut events, timeout)?;
//!     let now = Instant::now();
//!     for event in events.iter() {
//!         if dns.owns(event.token()) {
//!             dns.handle_ready(poll.registry(), now, event.token());
//!         } // else: your own sockets
//!     }
//!     dns.handle_timeout(poll.registry(), now);
//!     while let Some(done) = dns.poll_event() {
//!         println!("{} -> {:?}", done.token, done.answer);
//!         return Ok(());
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`BlockingResolver`] wraps a driver and its own `mio::Poll` for the CLI and preflight checks.

#![forbid(unsafe_code)]

mod blocking;
mod cache;
pub mod config;
mod driver;
mod resolver;
#[cfg(test)]
mod tests;
mod wire;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

pub use blocking::BlockingResolver;
pub use config::{AddressFamily, Config, ConfigError, parse_nameserver};
pub use driver::Driver;
pub use resolver::Resolver;

/// Reads a 32-byte RNG seed from the operating system (for query IDs and MX shuffling).
pub fn random_seed() -> std::io::Result<[u8; 32]> {
    use rand::TryRng;
    let mut seed = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(seed)
}

/// A lookup to perform. Names are absolute (a trailing dot is optional); non-ASCII names are converted
/// to their IDNA A-label form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Where mail for this domain goes (RFC 5321 §5.1): answered with [`Answer::Mx`].
    Mx(String),
    /// A and AAAA records of a host: answered with [`Answer::Ip`].
    Ip(String),
    /// TXT records (SPF, DKIM keys, DMARC policies): answered with [`Answer::Txt`].
    Txt(String),
    /// Reverse DNS of an address (`in-addr.arpa` / `ip6.arpa` PTR): answered with [`Answer::Ptr`].
    Ptr(IpAddr),
}

/// The result of a finished lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Delivery targets in the order to try them, or why there are none.
    Mx(Result<Vec<MxHost>, Failure>),
    /// Addresses in the configured family order; empty when the name exists without addresses.
    Ip(Result<Vec<IpAddr>, Failure>),
    /// TXT records; empty when the name exists without TXT records. NXDOMAIN is a
    /// [`Reason::HostUnknown`] failure (SPF's "none" and DMARC's "no policy" both read it so).
    Txt(Result<Vec<TxtRecord>, Failure>),
    /// Host names (without the trailing dot); empty when the reverse name exists without PTR records.
    Ptr(Result<Vec<String>, Failure>),
}

impl Answer {
    /// The failure, if the lookup failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Answer::Mx(Err(f)) | Answer::Ip(Err(f)) | Answer::Txt(Err(f)) | Answer::Ptr(Err(f)) => {
                Some(f)
            }
            _ => None,
        }
    }
}

/// One delivery target: an MX host with its preference and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The MX host name without the trailing dot (the domain itself for an implicit MX).
    pub name: String,
    /// The MX preference (0 for an implicit MX).
    pub preference: u16,
    /// The host's addresses in the configured family order; never empty.
    pub addresses: Vec<IpAddr>,
    /// True when the domain has no MX records and its own addresses are used (RFC 5321 §5.1).
    pub implicit: bool,
}

/// One TXT record: its character-strings as received (RFC 1035 §3.3.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxtRecord {
    /// The character-strings, each at most 255 bytes.
    pub strings: Vec<Vec<u8>>,
}

impl TxtRecord {
    /// The strings joined without separator, as SPF (RFC 7208 §3.3) and DKIM (RFC 6376 §3.6.2.2) read
    /// them.
    pub fn concatenated(&self) -> Vec<u8> {
        self.strings.concat()
    }
}

/// Why a lookup failed, in Sisimai's reason vocabulary so the bounce classifier can use it unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The domain does not exist (NXDOMAIN), or has neither MX nor address records.
    HostUnknown,
    /// The domain declares it accepts no mail (null MX, RFC 7505).
    NotAccept,
    /// The DNS could not answer: timeouts, SERVFAIL, no MX host with an address, CNAME loops.
    NetworkError,
    /// A local problem: no usable configuration, socket errors, too many lookups in progress.
    SystemError,
}

impl Reason {
    /// Sisimai's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HostUnknown => "hostunknown",
            Reason::NotAccept => "notaccept",
            Reason::NetworkError => "networkerror",
            Reason::SystemError => "systemerror",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed lookup: the reason, whether retrying later can help, and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, in Sisimai's words.
    pub reason: Reason,
    /// True when the answer is definitive (bounce now); false when a later retry may succeed.
    pub permanent: bool,
    /// What happened, for logs and DSNs (for example "NXDOMAIN for example.invalid. MX").
    pub detail: String,
}

impl Failure {
    pub(crate) fn permanent(reason: Reason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            permanent: true,
            detail: detail.into(),
        }
    }

    pub(crate) fn temporary(reason: Reason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            permanent: false,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.permanent {
            "permanent"
        } else {
            "temporary"
        };
        write!(f, "{kind} failure ({}): {}", self.reason, self.detail)
    }
}

/// A finished lookup with the caller's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The token given to [`Resolver::lookup`].
    pub token: u64,
    /// The result.
    pub answer: Answer,
}

/// An exchange number: one socket, one query, one answer. Numbers run from 0 to
/// [`Config::max_in_flight`] - 1 and are reused after [`Transmit::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(pub usize);

/// The transport of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One datagram out, one datagram back.
    Udp,
    /// A TCP connection carrying one length-prefixed query and its answer (RFC 7766).
    Tcp,
}

/// Socket work the core asks of its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Open a socket for `exchange` and send `payload` to `server` (for TCP the payload carries the
    /// two-byte length prefix).
    Send {
        /// The exchange the socket belongs to.
        exchange: ExchangeId,
        /// The nameserver.
        server: SocketAddr,
        /// UDP or TCP.
        transport: Transport,
        /// The query bytes.
        payload: Vec<u8>,
    },
    /// Close the socket of `exchange`; anything arriving on it later is no longer wanted.
    Close {
        /// The exchange to close.
        exchange: ExchangeId,
    },
}

/// Counters of what the resolver did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lookups started.
    pub lookups: u64,
    /// Exchanges opened over UDP.
    pub udp_queries: u64,
    /// Exchanges opened over TCP.
    pub tcp_queries: u64,
    /// Answers accepted.
    pub answers: u64,
    /// UDP answers with the TC bit (each followed by a TCP exchange).
    pub truncated: u64,
    /// Tries that timed out.
    pub timeouts: u64,
    /// Answers with SERVFAIL, REFUSED or another error RCODE.
    pub server_errors: u64,
    /// Socket errors reported by the driver.
    pub io_errors: u64,
    /// Messages that did not decode as DNS, dropped.
    pub malformed: u64,
    /// Well-formed messages that did not answer our question (ID, question or sender), dropped.
    pub mismatched: u64,
    /// Messages for an exchange that was already closed, dropped.
    pub stray: u64,
    /// Questions answered from the cache.
    pub cache_hits: u64,
    /// Questions not in the cache.
    pub cache_misses: u64,
    /// Questions that joined an identical question already on the wire.
    pub coalesced: u64,
    /// Cache entries evicted because the cache was full.
    pub evictions: u64,
    /// Cache entries now.
    pub cache_entries: u64,
}
