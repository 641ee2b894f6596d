//! Signed VERP return paths, and applying an inbound report to suppression.
//!
//! VERP (variable envelope return path, D. J. Bernstein's scheme) puts the message and the recipient
//! in the envelope sender, so a bounce names what it is about even when its body does not. vmta's form:
//!
//! ```text
//! <prefix>+<message-id>.<tag>.<local>=<domain>@<bounce-domain>
//! bounces+m0042.k3v9q2ab7xjfc.john.doe=example.com@bounce.sender.example
//! ```
//!
//! `tag` is the first 64 bits of HMAC-SHA-256 over the message id and the lower-cased recipient, in
//! lower-case base32 (13 characters), so a forged bounce cannot suppress an address: without the
//! tenant's key no valid tag can be made. Several keys can verify (rotation); the first one signs.
//! The message id is limited to `[A-Za-z0-9_-]`, up to 64 characters. Local parts needing quotes
//! (RFC 5321 `Quoted-string`) are refused; the resulting local part can exceed the 64 octets of RFC
//! 5321 §4.5.3.1.1, which real MTAs accept but which is a documented limitation.
//!
//! [`apply_report`] turns a parsed [`Report`] plus the decoded VERP address into per-recipient
//! [`Outcome`]s for the engine (bounced, deferred, delivered, complaint, auto-reply) and records bounces
//! and complaints in the [`SuppressionStore`]. A report whose VERP tag does not verify changes nothing
//! unless the caller trusts unsigned reports.

#![forbid(unsafe_code)]

use super::reason::{Action, Kind, Reason};
use super::report::{Report, ReportKind};
use super::suppression::{Recorded, SuppressionStore};
use ring::hmac;
use std::fmt;
use std::io;
use std::time::Duration;

/// Bytes of the HMAC kept in the tag.
const TAG_BYTES: usize = 8;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a VERP address could not be made or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerpError {
    /// Not of the form `prefix+id.tag.local=domain@domain`.
    Malformed,
    /// The message id has characters outside `[A-Za-z0-9_-]` or is too long.
    BadMessageId,
    /// The recipient cannot be carried (no `@`, quotes, white space).
    BadRecipient,
    /// The tag does not verify with any key.
    BadSignature,
}

impl fmt::Display for VerpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerpError::Malformed => "not a VERP address",
            VerpError::BadMessageId => "bad message id",
            VerpError::BadRecipient => "recipient cannot be encoded",
            VerpError::BadSignature => "VERP signature does not verify",
        })
    }
}

impl std::error::Error for VerpError {}

/// A decoded and verified VERP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerpAddress {
    /// The message id.
    pub message_id: String,
    /// The recipient.
    pub recipient: String,
}

/// The keys and shape of a tenant's VERP addresses.
#[derive(Clone)]
pub struct Verp {
    prefix: String,
    domain: String,
    keys: Vec<hmac::Key>,
}

impl fmt::Debug for Verp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verp")
            .field("prefix", &self.prefix)
            .field("domain", &self.domain)
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Verp {
    /// A VERP scheme `prefix+...@domain` signing with `keys[0]` and verifying with any of `keys`.
    ///
    /// # Panics
    /// If `keys` is empty.
    pub fn new(prefix: &str, domain: &str, keys: &[&[u8]]) -> Verp {
        assert!(!keys.is_empty(), "VERP needs at least one key");
        Verp {
            prefix: prefix.to_string(),
            domain: domain.to_ascii_lowercase(),
            keys: keys
                .iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k))
                .collect(),
        }
    }

    /// The domain of the return paths (lower case).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    fn tag(key: &hmac::Key, id: &str, recipient: &str) -> String {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(id.as_bytes());
        ctx.update(b"\n");
        ctx.update(recipient.to_ascii_lowercase().as_bytes());
        base32(&ctx.sign().as_ref()[..TAG_BYTES])
    }

    /// The return path for `message_id` sent to `recipient`.
    pub fn encode(&self, message_id: &str, recipient: &str) -> Result<String, VerpError> {
        if !valid_id(message_id) {
            return Err(VerpError::BadMessageId);
        }
        let (local, domain) = recipient.rsplit_once('@').ok_or(VerpError::BadRecipient)?;
        if local.is_empty()
            || domain.is_empty()
            || local.contains('"')
            || recipient
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
            || domain.contains('=')
        {
            return Err(VerpError::BadRecipient);
        }
        let tag = Verp::tag(&self.keys[0], message_id, recipient);
        Ok(format!(
            "{}+{message_id}.{tag}.{local}={}@{}",
            self.prefix,
            domain.to_ascii_lowercase(),
            self.domain
        ))
    }

    /// Decodes and verifies a return path (angle brackets and case of the tag are tolerated).
    pub fn decode(&self, address: &str) -> Result<VerpAddress, VerpError> {
        let a = address.trim().trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = a.rsplit_once('@').ok_or(VerpError::Malformed)?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return Err(VerpError::Malformed);
        }
        let rest = local
            .get(..self.prefix.len() + 1)
            .filter(|p| {
                p[..self.prefix.len()].eq_ignore_ascii_case(&self.prefix) && p.ends_with('+')
            })
            .map(|_| &local[self.prefix.len() + 1..])
            .ok_or(VerpError::Malformed)?;
        let (id, rest) = rest.split_once('.').ok_or(VerpError::Malformed)?;
        let (tag, rest) = rest.split_once('.').ok_or(VerpError::Malformed)?;
        let (rlocal, rdomain) = rest.rsplit_once('=').ok_or(VerpError::Malformed)?;
        if !valid_id(id) {
            return Err(VerpError::BadMessageId);
        }
        if rlocal.is_empty() || rdomain.is_empty() {
            return Err(VerpError::Malformed);
        }
        let recipient = format!("{rlocal}@{}", rdomain.to_ascii_lowercase());
        let tag = tag.to_ascii_lowercase();
        if self
            .keys
            .iter()
            .any(|k| ct_eq(Verp::tag(k, id, &recipient).as_bytes(), tag.as_bytes()))
        {
            Ok(VerpAddress {
                message_id: id.to_string(),
                recipient,
            })
        } else {
            Err(VerpError::BadSignature)
        }
    }
}

/// What happened to one recipient, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeEvent {
    /// Permanently failed (also after an earlier 250: a late DSN).
    Bounced {
        /// Why.
        reason: Reason,
        /// What sort.
        kind: Kind,
    },
    /// Temporarily failed; the engine may retry (a `delayed` DSN, or a failure the policy retries).
    Deferred {
        /// Why.
        reason: Reason,
        /// Suggested wait.
        retry_after: Option<Duration>,
    },
    /// A success DSN.
    Delivered,
    /// A spam complaint.
    Complaint {
        /// The ARF feedback type.
        feedback_type: String,
    },
    /// An auto-reply (nothing to do).
    AutoReply,
}

/// The result of applying a report to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The message, when the VERP address named it.
    pub message_id: Option<String>,
    /// The recipient.
    pub recipient: String,
    /// What to report.
    pub event: OutcomeEvent,
    /// Whether the report was matched through a verified VERP address.
    pub verified: bool,
    /// What the suppression store did, if it was consulted.
    pub suppression: Option<Recorded>,
}

/// Applies a parsed report to suppression and returns per-recipient outcomes.
///
/// `verp` is the result of [`Verp::decode`] on the address the report was sent to. With a verified
/// address, the report speaks only of that recipient (other addresses in it are ignored; a report that
/// names no recipient is taken to be about it). Without one, outcomes are still returned (`verified:
/// false`) but suppression changes only if `trust_unsigned` is set.
pub fn apply_report(
    report: &Report,
    verp: Option<&Result<VerpAddress, VerpError>>,
    tenant: &str,
    store: &mut SuppressionStore,
    trust_unsigned: bool,
    now: u64,
) -> io::Result<Vec<Outcome>> {
    apply_report_to(report, verp, tenant, Some(store), trust_unsigned, now)
}

/// [`apply_report`] with the store optional: without one, the outcomes only (`suppression` is `None`
/// in each), for an engine running without a suppression list.
pub fn apply_report_to(
    report: &Report,
    verp: Option<&Result<VerpAddress, VerpError>>,
    tenant: &str,
    mut store: Option<&mut SuppressionStore>,
    trust_unsigned: bool,
    now: u64,
) -> io::Result<Vec<Outcome>> {
    let verified = match verp {
        Some(Ok(v)) => Some(v),
        _ => None,
    };
    let mut out = Vec::new();
    let recipients: Vec<_> = match verified {
        Some(v) => {
            let matching: Vec<_> = report
                .recipients
                .iter()
                .filter(|r| r.address.eq_ignore_ascii_case(&v.recipient))
                .collect();
            if matching.is_empty() {
                report.recipients.iter().take(1).collect()
            } else {
                matching
            }
        }
        None => report.recipients.iter().collect(),
    };
    let may_suppress = (verified.is_some() || trust_unsigned) && store.is_some();
    for r in recipients {
        let address = verified.map_or_else(|| r.address.clone(), |v| v.recipient.clone());
        let message_id = verified.map(|v| v.message_id.clone());
        let (event, suppression) = match report.kind {
            ReportKind::NotABounce => continue,
            ReportKind::AutoReply => (OutcomeEvent::AutoReply, None),
            ReportKind::Arf => {
                let s = match store.as_deref_mut() {
                    Some(store) if may_suppress => Some(Recorded::Suppressed(
                        store.record_complaint(tenant, &address, now)?,
                    )),
                    _ => None,
                };
                (
                    OutcomeEvent::Complaint {
                        feedback_type: report
                            .feedback_type
                            .clone()
                            .unwrap_or_else(|| "abuse".into()),
                    },
                    s,
                )
            }
            ReportKind::Dsn => match (r.reason, r.classification.map(|c| c.action)) {
                (Reason::Delivered, _) | (_, Some(Action::None)) => {
                    if let Some(store) = store.as_deref_mut().filter(|_| may_suppress) {
                        store.record_delivery(tenant, &address)?;
                    }
                    (OutcomeEvent::Delivered, None)
                }
                (reason, Some(Action::Retry(d)))
                    if r.action.as_deref() != Some("failed") || reason != Reason::Expired =>
                {
                    let s = match store.as_deref_mut() {
                        Some(store)
                            if may_suppress
                                && matches!(
                                    reason,
                                    Reason::MailboxFull | Reason::Suspend | Reason::HostUnknown
                                ) =>
                        {
                            Some(store.record_bounce(tenant, &address, reason, false, now)?)
                        }
                        _ => None,
                    };
                    (
                        OutcomeEvent::Deferred {
                            reason,
                            retry_after: Some(d),
                        },
                        s,
                    )
                }
                (reason, _) => {
                    let nxdomain =
                        reason == Reason::HostUnknown && r.status.is_some_and(|s| s.class == 5);
                    let s = match store.as_deref_mut() {
                        Some(store) if may_suppress => {
                            Some(store.record_bounce(tenant, &address, reason, nxdomain, now)?)
                        }
                        _ => None,
                    };
                    (
                        OutcomeEvent::Bounced {
                            reason,
                            kind: r.kind,
                        },
                        s,
                    )
                }
            },
        };
        out.push(Outcome {
            message_id,
            recipient: address,
            event,
            verified: verified.is_some(),
            suppression,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::classify::Classifier;
    use crate::bounce::report;
    use crate::bounce::suppression::SuppressionPolicy;

    fn verp() -> Verp {
        Verp::new(
            "bounces",
            "bounce.sender.example",
            &[b"new key", b"old key"],
        )
    }

    #[test]
    fn round_trip_and_forgery() {
        let v = verp();
        let a = v.encode("m0042", "John.Doe+tag@Example.COM").unwrap();
        assert!(a.starts_with("bounces+m0042."));
        assert!(
            a.ends_with("john.doe+tag=example.com@bounce.sender.example")
                || a.contains("John.Doe+tag=example.com@")
        );
        let d = v.decode(&format!("<{a}>")).unwrap();
        assert_eq!(d.message_id, "m0042");
        assert_eq!(d.recipient, "John.Doe+tag@example.com");
        // Tampering with any part breaks the tag.
        assert_eq!(
            v.decode(&a.replace("m0042", "m0043")),
            Err(VerpError::BadSignature)
        );
        assert_eq!(
            v.decode(&a.replace("John.Doe", "Jane.Doe")),
            Err(VerpError::BadSignature)
        );
        let other = Verp::new("bounces", "bounce.sender.example", &[b"attacker"]);
        assert_eq!(other.decode(&a), Err(VerpError::BadSignature));
        // A rotated-out key still verifies.
        let old = Verp::new("bounces", "bounce.sender.example", &[b"old key"]);
        let a_old = old.encode("m1", "x@example.com").unwrap();
        assert!(v.decode(&a_old).is_ok());
        assert_eq!(
            v.decode("someone@bounce.sender.example"),
            Err(VerpError::Malformed)
        );
        assert_eq!(
            v.decode("bounces+x@elsewhere.example"),
            Err(VerpError::Malformed)
        );
        assert_eq!(
            v.encode("bad id", "x@example.com"),
            Err(VerpError::BadMessageId)
        );
        assert_eq!(
            v.encode("m1", "\"a b\"@example.com"),
            Err(VerpError::BadRecipient)
        );
        // Case changes by a relaying MTA are tolerated.
        let tag = a.split('.').nth(1).unwrap();
        assert!(
            v.decode(
                &a.replace(tag, &tag.to_ascii_uppercase())
                    .replace("John.Doe", "john.doe")
            )
            .is_ok()
        );
    }

    #[test]
    fn late_dsn_bounces_and_suppresses_only_when_signed() {
        let v = verp();
        let rp = v.encode("m7", "gone@example.org").unwrap();
        let dsn = format!(
            "From: MAILER-DAEMON@mx.example.org\nTo: {rp}\nSubject: Undelivered Mail Returned to Sender\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\n\n--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; gone@example.org\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\n--B--\n"
        );
        let r = report::parse(dsn.as_bytes(), &Classifier::default_rules()).unwrap();
        assert_eq!(r.report_to.as_deref(), Some(rp.as_str()));
        let dir = crate::TestDir::created("verp");
        let mut store =
            SuppressionStore::open(dir.0.join("s.log"), SuppressionPolicy::default()).unwrap();
        // Forged: the tag does not verify, nothing is suppressed.
        let forged = v.decode(&rp.replace("m7", "m8"));
        let o = apply_report(&r, Some(&forged), "t", &mut store, false, 1).unwrap();
        assert_eq!(o.len(), 1);
        assert!(!o[0].verified);
        assert!(store.check("t", "gone@example.org", None, 2).is_none());
        // Signed: bounced and suppressed.
        let decoded = v.decode(r.report_to.as_deref().unwrap());
        let o = apply_report(&r, Some(&decoded), "t", &mut store, false, 1).unwrap();
        assert_eq!(o[0].message_id.as_deref(), Some("m7"));
        assert_eq!(
            o[0].event,
            OutcomeEvent::Bounced {
                reason: Reason::UserUnknown,
                kind: Kind::Hard
            }
        );
        assert!(matches!(o[0].suppression, Some(Recorded::Suppressed(_))));
        assert!(store.check("t", "gone@example.org", None, 2).is_some());
    }

    #[test]
    fn complaint_suppresses_every_stream_and_autoreply_nothing() {
        let v = verp();
        let rp = v.encode("m9", "fan@example.net").unwrap();
        let arf = format!(
            "From: fbl@isp.example\nTo: {rp}\nSubject: complaint\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nOriginal-Rcpt-To: fan@example.net\n--b--\n"
        );
        let r = report::parse(arf.as_bytes(), &Classifier::default_rules()).unwrap();
        let dir = crate::TestDir::created("verp-arf");
        let mut store =
            SuppressionStore::open(dir.0.join("s.log"), SuppressionPolicy::default()).unwrap();
        let decoded = v.decode(r.report_to.as_deref().unwrap());
        let o = apply_report(&r, Some(&decoded), "t", &mut store, false, 1).unwrap();
        assert_eq!(
            o[0].event,
            OutcomeEvent::Complaint {
                feedback_type: "abuse".into()
            }
        );
        assert!(
            store
                .check("t", "fan@example.net", Some("newsletter"), 2)
                .is_some()
        );
        assert!(
            store
                .check("t", "fan@example.net", Some("receipts"), 2)
                .is_some()
        );
        let auto = "From: Boss <boss@example.com>\nSubject: Automatic reply: hi\nAuto-Submitted: auto-replied\n\naway\n";
        let r = report::parse(auto.as_bytes(), &Classifier::default_rules()).unwrap();
        let o = apply_report(&r, None, "t", &mut store, true, 1).unwrap();
        assert_eq!(o[0].event, OutcomeEvent::AutoReply);
        assert!(store.check("t", "boss@example.com", None, 2).is_none());
    }
}
