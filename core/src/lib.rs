//! vmta: an embeddable outbound mail delivery core.
//!
//! The crate is organised by the field's own parts, each a module with its own doc comment saying which
//! RFC sections it implements and what it leaves out:
//!
//! - [`smtp`]: the sans-IO SMTP client session (RFC 5321 and its extensions), its reply parser and the
//!   STARTTLS layer.
//! - [`client`]: a mio driver running one session over one connection (for `vmta send` and tests).
//! - [`dns`]: the stub resolver (MX per RFC 5321 §5.1, A/AAAA, TXT, PTR) as a sans-IO core over
//!   hickory-proto, with a mio driver and a blocking front end.
//! - [`engine`]: the thread-per-core delivery engine joining sessions, resolver and spool: queues,
//!   routing, connection pools, retries, events and metrics.
//! - [`spool`]: the durable queue: append-only, checksummed, memory-mapped segment files with group
//!   commit, crash recovery and compaction.
//! - [`policy`]: tenants, approved senders, locked accounts, message validation at submission (RFC 5322)
//!   and the headers vmta adds (Received, List-Unsubscribe, Feedback-ID).
//! - [`dkim`]: DKIM signing (RFC 6376, RFC 8463).
//! - [`preflight`]: the checks receivers apply to a sender (SPF, DKIM, DMARC, reverse DNS, blocklists,
//!   MX), written against a small DNS lookup trait.
//! - [`shaping`]: traffic shaping — per-source token buckets (shard-local or lock-free shared), connection
//!   caps, hourly/daily caps, warm-up schedules, adaptive backoff, TOML rule sets with provider defaults.
//! - [`bounce`]: deliverability intelligence: reply classification, retry policy, suppression, DSN/ARF
//!   parsing and VERP.
//!
//! Protocol modules never touch sockets, files or the clock: time and randomness are passed in, so the
//! same code runs against real peers and inside deterministic simulations.

pub mod bounce;
pub mod client;
pub mod dkim;
pub mod dns;
pub mod engine;
pub mod lockfile;
pub mod policy;
pub mod preflight;
pub mod shaping;
pub mod smtp;
pub mod spool;

/// The hash map of the per-message paths (queues, pools, routes, the spool index): foldhash instead
/// of SipHash, whose cost showed in every enqueue and dispatch. Most keys come from the host's own
/// submissions and configuration; pool addresses come from DNS answers, which is why the hasher is
/// foldhash's randomly seeded one (minimally DoS-resistant) rather than a fixed-seed hash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A fresh directory under the system's temporary directory for a unit test, removed when dropped.
#[cfg(test)]
pub(crate) struct TestDir(pub std::path::PathBuf);

#[cfg(test)]
impl TestDir {
    /// `$TMPDIR/vmta-unit-<tag>-<pid>-<n>`, empty and not yet created.
    pub(crate) fn new(tag: &str) -> TestDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vmta-unit-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TestDir(p)
    }

    /// Like `new`, with the directory created.
    pub(crate) fn created(tag: &str) -> TestDir {
        let d = TestDir::new(tag);
        std::fs::create_dir_all(&d.0).expect("create a test directory");
        d
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
