//! vmta's built-in test world, so the demo and benchmarks need no setup: SMTP sinks listening on
//! loopback addresses.
//!
//! - [`sink`]: a fast SMTP receiver over mio (RFC 5321 server side, with PIPELINING, CHUNKING,
//!   STARTTLS, 8BITMIME, SIZE, ENHANCEDSTATUSCODES) that counts what it receives per address, per
//!   connection and per second, with fault behaviours per address: latency, 4xx/5xx shares by
//!   phase, greylisting, connection limits, message rate limits, slow and dropped connections.
//! - [`world`]: sinks and a DNS responder started together for a demo or a benchmark.
//! - [`dns`]: an authoritative DNS responder serving MX and A records for many test domains.
//!
//! Not a mail server: it stores nothing, and it is not hardened for the open Internet.

pub mod dns;
pub mod sink;
pub mod world;
