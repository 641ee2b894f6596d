//! Support for vmta's integration tests: starting and stopping real peers (Postfix `smtp-sink`,
//! dnsmasq, a STARTTLS server) on loopback addresses, and locating the test data shipped in `tests/data`.

use std::path::PathBuf;

/// The directory holding the test data (`tests/data`).
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}
