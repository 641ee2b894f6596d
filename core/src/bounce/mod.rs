//! Deliverability intelligence: what a receiver's answer means, what to do about it, and who not to
//! send to again.
//!
//! - [`reason`]: the vocabulary ([`Reason`] in Sisimai's names, [`Kind`], [`Action`]).
//! - [`classify`]: the rule-driven classifier of SMTP replies and local failures (RFC 5321 §4.2 reply
//!   codes, RFC 3463 enhanced codes, reply texts), with a default rule set and lock-free reloading.
//! - [`retry`]: the retry schedule (per-reason intervals, backoff for rate limits, maximum age).
//! - [`mime`]: a tolerant reader of RFC 5322 / MIME messages (RFC 2045–2047), enough to read reports.
//! - [`report`]: inbound reports: DSNs (RFC 3464), the common non-standard bounce formats, ARF feedback
//!   reports (RFC 5965), auto-replies (RFC 3834).
//! - [`suppression`]: the per-tenant suppression list, an append-only checksummed log.
//! - [`verp`]: signed VERP return paths, and applying an inbound report to suppression.
//!
//! The classifier, the parsers and VERP are sans-IO (no files, sockets or clock); only
//! [`suppression::SuppressionStore`] touches the file system.

pub mod classify;
pub mod mime;
pub mod reason;
pub mod report;
pub mod retry;
pub mod suppression;
pub mod verp;

pub use classify::{Classification, Classifier, ClassifierHandle, Diagnostic, RulesError, Verdict};
pub use reason::{Action, Kind, Reason};
pub use report::{Report, ReportError, ReportKind, ReportRecipient};
pub use retry::{RetryDecision, RetrySchedule};
pub use suppression::{Recorded, Suppression, SuppressionPolicy, SuppressionStore};
pub use verp::{Outcome, OutcomeEvent, Verp, VerpAddress, VerpError, apply_report};
