//! vmta: an embeddable outbound mail delivery core.
//!
//! The crate is organised by the field's own parts, each a module with its own doc comment saying which
//! RFC sections it implements and what it leaves out:
//!
//! - [`smtp`]: the sans-IO SMTP client session (RFC 5321 and its extensions), its reply parser and the
//!   STARTTLS layer.
//! - [`bounce`]: deliverability intelligence: reply classification, retry policy, suppression, DSN/ARF
//!   parsing and VERP.
//!
//! Protocol modules never touch sockets, files or the clock: time and randomness are passed in, so the
//! same code runs against real peers and inside deterministic simulations.

pub mod bounce;
pub mod smtp;
