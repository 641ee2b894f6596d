//! Delivery events: what happened to each recipient, for the host program and the JSON-lines log.

use crate::smtp::{EnhancedCode, Phase};
use std::fmt::Write as _;
use std::net::IpAddr;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The receiving server accepted the message for this recipient.
    Delivered,
    /// A temporary failure; the next attempt is scheduled.
    Deferred,
    /// A permanent failure; no more attempts.
    Bounced,
    /// Temporary failures until the maximum age; no more attempts.
    Expired,
    /// Cancelled by the host or an operator.
    Cancelled,
    /// Not queued: the recipient is on the tenant's suppression list (`reason` is the suppression's
    /// reason). Only for submissions that went ahead with other recipients; when every recipient is
    /// suppressed the submission fails with `SubmitError::Suppressed` instead.
    Suppressed,
    /// An inbound DSN reports a permanent failure after the receiving server's 250 (`reason` as
    /// the classifier says).
    LateBounce,
    /// An inbound DSN reports a delay after the receiving server's 250 (the receiver retries; vmta
    /// has nothing left to send).
    LateDeferral,
    /// A spam complaint (ARF feedback report); the address is suppressed for every stream of the
    /// tenant.
    Complaint,
    /// The engine opened a spool that held mail or damage: once per start, before any delivery
    /// event. `message_id` is 0; `text` summarises the recovery and `tags` carry its counts
    /// (`messages`, `recipients`, `records`, `corrupt_records`, `truncated_bytes`,
    /// `damaged_segments`, `removed_segments`, `reconciled`: outcomes the event log had and the
    /// spool did not, recorded at open; `interrupted_attempts`: attempts under way at the last
    /// stop, counted).
    Recovered,
    /// A submission made with `Engine::submit_nowait` that the spool could not take after its id
    /// was returned (a full disk, a write error): nothing is queued for this recipient; `text`
    /// says why. Submissions that wait for their answer never see it.
    Refused,
}

impl EventKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounced => "bounced",
            EventKind::Expired => "expired",
            EventKind::Cancelled => "cancelled",
            EventKind::Suppressed => "suppressed",
            EventKind::LateBounce => "late-bounce",
            EventKind::LateDeferral => "late-deferral",
            EventKind::Complaint => "complaint",
            EventKind::Recovered => "recovered",
            EventKind::Refused => "refused",
        }
    }
}

/// One recipient's outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryEvent {
    /// What happened.
    pub kind: EventKind,
    /// The message id returned by submission.
    pub message_id: u64,
    /// The recipient's position in the submitted envelope.
    pub recipient_index: u16,
    /// The recipient address.
    pub recipient: String,
    /// The tenant.
    pub tenant: String,
    /// The SMTP reply code (0 when no server answered: DNS or connection failures).
    pub code: u16,
    /// The enhanced status code, if any.
    pub enhanced: Option<EnhancedCode>,
    /// The reply text or the failure description.
    pub text: String,
    /// The conversation phase of the reply or failure.
    pub phase: Option<Phase>,
    /// For failures: the reason in the field's words (`userunknown`, `mailboxfull`, `ratelimited`,
    /// ...), when the retry policy classifies; empty otherwise.
    pub reason: String,
    /// The MX host name (or smarthost) tried, if any.
    pub mx: String,
    /// Its address, if a connection was made.
    pub ip: Option<IpAddr>,
    /// The source (sending identity) used.
    pub source: String,
    /// Attempts made, this one included.
    pub attempts: u16,
    /// For `Deferred`: Unix time of the next attempt.
    pub next_attempt: u64,
    /// Unix time of submission.
    pub submitted_at: u64,
    /// Unix time of this event, in milliseconds.
    pub at_ms: u64,
    /// Metadata tags given at submission.
    pub tags: Vec<(String, String)>,
}

impl DeliveryEvent {
    /// An event no delivery attempt made (a suppressed or refused recipient, a recovery, a deferral
    /// noted without a connection): no reply, no host, no attempts, stamped `at_ms`; the caller fills
    /// in the rest with struct update syntax.
    pub(crate) fn unattempted(kind: EventKind, message_id: u64, at_ms: u64) -> DeliveryEvent {
        DeliveryEvent {
            kind,
            message_id,
            recipient_index: 0,
            recipient: String::new(),
            tenant: String::new(),
            code: 0,
            enhanced: None,
            text: String::new(),
            phase: None,
            reason: String::new(),
            mx: String::new(),
            ip: None,
            source: String::new(),
            attempts: 0,
            next_attempt: 0,
            submitted_at: 0,
            at_ms,
            tags: Vec::new(),
        }
    }

    /// The event as one line of JSON (no trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(256);
        s.push('{');
        field(&mut s, "event", self.kind.as_str());
        let _ = write!(s, ",\"message_id\":\"{:016x}\"", self.message_id);
        let _ = write!(s, ",\"recipient_index\":{}", self.recipient_index);
        s.push(',');
        field(&mut s, "recipient", &self.recipient);
        s.push(',');
        field(&mut s, "tenant", &self.tenant);
        let _ = write!(s, ",\"code\":{}", self.code);
        s.push(',');
        match self.enhanced {
            Some(e) => field(&mut s, "enhanced", &e.to_string()),
            None => s.push_str("\"enhanced\":null"),
        }
        s.push(',');
        field(&mut s, "text", &self.text);
        s.push(',');
        field(&mut s, "phase", self.phase.map_or("", |p| p.as_str()));
        s.push(',');
        field(&mut s, "reason", &self.reason);
        s.push(',');
        field(&mut s, "mx", &self.mx);
        s.push(',');
        field(
            &mut s,
            "ip",
            &self.ip.map(|i| i.to_string()).unwrap_or_default(),
        );
        s.push(',');
        field(&mut s, "source", &self.source);
        let _ = write!(
            s,
            ",\"attempts\":{},\"next_attempt\":{},\"submitted_at\":{},\"at_ms\":{}",
            self.attempts, self.next_attempt, self.submitted_at, self.at_ms
        );
        s.push_str(",\"tags\":{");
        for (i, (k, v)) in self.tags.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            field(&mut s, k, v);
        }
        s.push_str("}}");
        s
    }
}

/// Writes `"key":"value"` with JSON string escaping.
fn field(s: &mut String, key: &str, value: &str) {
    escape(s, key);
    s.push(':');
    escape(s, value);
}

fn escape(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_valid_and_escaped() {
        let e = DeliveryEvent {
            kind: EventKind::Bounced,
            message_id: 0xabc,
            recipient_index: 1,
            recipient: "b@y.example".into(),
            tenant: "acme".into(),
            code: 550,
            enhanced: EnhancedCode::new(5, 1, 1),
            text: "no \"such\"\nuser".into(),
            phase: Some(Phase::Rcpt),
            reason: "userunknown".into(),
            mx: "mx.y.example".into(),
            ip: Some("127.0.0.2".parse().unwrap()),
            source: "default".into(),
            attempts: 1,
            next_attempt: 0,
            submitted_at: 10,
            at_ms: 10_500,
            tags: vec![("campaign".into(), "c1".into())],
        };
        let j = e.to_json();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["event"], "bounced");
        assert_eq!(v["message_id"], "0000000000000abc");
        assert_eq!(v["enhanced"], "5.1.1");
        assert_eq!(v["text"], "no \"such\"\nuser");
        assert_eq!(v["phase"], "rcpt");
        assert_eq!(v["tags"]["campaign"], "c1");
    }
}
