//! vmta's built-in test world, so the demo and benchmarks need no setup: SMTP sinks listening on
//! loopback addresses.
//!
//! - [`sink`]: a multi-threaded SMTP receiver (RFC 5321 server side, with PIPELINING, CHUNKING,
//!   8BITMIME, SIZE, ENHANCEDSTATUSCODES) that accepts and counts what it receives, and can refuse
//!   chosen recipients.
//! - [`world`]: sinks and a DNS responder started together for a demo or a benchmark.
//! - [`dns`]: an authoritative DNS responder serving MX and A records for many test domains.
//!
//! Not a mail server: it stores nothing, and it is not hardened for the open Internet. STARTTLS and fault
//! behaviours (latency, greylisting, throttling) are not built yet.

pub mod dns;
pub mod sink;
pub mod world;
