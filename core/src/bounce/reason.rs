//! The vocabulary of bounce classification: [`Reason`], [`Kind`] and [`Action`].
//!
//! Reason names are Sisimai's (libsisimai.org), so results can be compared with its corpus and read by
//! people who know it, plus `greylisted`, which Sisimai does not tell apart. The older Sisimai names `speeding` and `toomanyconn` parse as
//! [`Reason::RateLimited`] and `exceedlimit` as [`Reason::MesgTooBig`].

use std::fmt;
use std::time::Duration;

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Why a message was not delivered (or that it was), in Sisimai's words.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The lower-case name (Sisimai's).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// Parses a name produced by [`Reason::as_str`], case-insensitively; also accepts Sisimai's
            /// older names `speeding`, `toomanyconn` (rate limiting) and `exceedlimit` (size limit).
            pub fn parse(s: &str) -> Option<Reason> {
                let s = s.trim();
                $(if s.eq_ignore_ascii_case($name) { return Some(Reason::$variant); })*
                if s.eq_ignore_ascii_case("speeding") || s.eq_ignore_ascii_case("toomanyconn") {
                    return Some(Reason::RateLimited);
                }
                if s.eq_ignore_ascii_case("exceedlimit") {
                    return Some(Reason::MesgTooBig);
                }
                None
            }
        }
    };
}

reasons! {
    /// The mailbox does not exist.
    UserUnknown => "userunknown",
    /// The mailbox is over quota.
    MailboxFull => "mailboxfull",
    /// The mailbox is disabled or suspended.
    Suspend => "suspend",
    /// The recipient domain does not exist (or has no usable MX/A).
    HostUnknown => "hostunknown",
    /// The recipient domain accepts no mail (null MX, RFC 7505).
    NotAccept => "notaccept",
    /// The recipient has moved (RFC 3463 X.1.6).
    HasMoved => "hasmoved",
    /// Refused by a recipient-side filter after the message was sent (a user rule, an alias).
    Filtered => "filtered",
    /// The envelope sender was refused.
    Rejected => "rejected",
    /// Relaying denied.
    NoRelaying => "norelaying",
    /// The sending IP address or domain is blocked (a blocklist).
    Blocked => "blocked",
    /// The sender's reputation is poor.
    BadReputation => "badreputation",
    /// The sending IP has no (matching) reverse DNS.
    RequirePtr => "requireptr",
    /// SPF, DKIM or DMARC failed.
    AuthFailure => "authfailure",
    /// The content was judged spam.
    SpamDetected => "spamdetected",
    /// A virus was found.
    VirusDetected => "virusdetected",
    /// A local policy refused the message.
    PolicyViolation => "policyviolation",
    /// The content is malformed or not accepted.
    ContentError => "contenterror",
    /// The message is too big.
    MesgTooBig => "mesgtoobig",
    /// Too many messages, connections or recipients: slow down.
    RateLimited => "ratelimited",
    /// Greylisting (RFC 6647): the receiver defers a sender it has not seen before and accepts the
    /// same message retried a few minutes later. Not Sisimai's: it files these under its other
    /// temporary reasons.
    Greylisted => "greylisted",
    /// TLS or authentication required or failed.
    SecurityError => "securityerror",
    /// STARTTLS failed.
    FailedStartTls => "failedstarttls",
    /// An SMTP syntax error.
    SyntaxError => "syntaxerror",
    /// The receiving system failed.
    SystemError => "systemerror",
    /// The receiving system is out of disk or resources.
    SystemFull => "systemfull",
    /// The network failed (connection refused or timed out, DNS temporary failure).
    NetworkError => "networkerror",
    /// A local delivery program failed.
    MailerError => "mailererror",
    /// The message does not follow RFC 5322 (header syntax, duplicate headers).
    NotCompliantRfc => "notcompliantrfc",
    /// Retried until the maximum age and given up.
    Expired => "expired",
    /// The cause could not be told from the report.
    OnHold => "onhold",
    /// A report of successful delivery.
    Delivered => "delivered",
    /// Nothing better fits.
    Undefined => "undefined",
    /// The recipient is on the sender's suppression list; nothing was sent.
    Suppressed => "suppressed",
    /// A feedback (complaint) report (ARF).
    Feedback => "feedback",
    /// An automatic reply (RFC 3834, vacation).
    Vacation => "vacation",
}

impl Reason {
    /// The kind a reason has unless a rule says otherwise.
    pub fn default_kind(self) -> Kind {
        use Reason::*;
        match self {
            UserUnknown | HostUnknown | NotAccept | HasMoved | Suppressed => Kind::Hard,
            MailboxFull | Suspend | Filtered | MesgTooBig | Expired | SystemFull | OnHold => {
                Kind::Soft
            }
            Rejected | NoRelaying | Blocked | BadReputation | RequirePtr | AuthFailure
            | SpamDetected | VirusDetected | PolicyViolation | ContentError | SecurityError
            | FailedStartTls | NotCompliantRfc | Feedback => Kind::Block,
            RateLimited | Greylisted | SyntaxError | SystemError | NetworkError | MailerError
            | Undefined => Kind::Transient,
            Delivered | Vacation => Kind::Success,
        }
    }

    /// Whether the sender's reputation, not the recipient, is the cause: such a failure never suppresses
    /// the recipient.
    pub fn is_reputation(self) -> bool {
        matches!(
            self,
            Reason::Blocked | Reason::BadReputation | Reason::RequirePtr | Reason::AuthFailure
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What sort of failure a reason is, for the engine and for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The recipient address is bad: never retry, suppress.
    Hard,
    /// The recipient exists but cannot take mail now (full, disabled): retry slowly, suppress on
    /// repetition.
    Soft,
    /// The receiver refuses the sender or the content: a sender-side problem, not the recipient's.
    Block,
    /// A temporary failure of the network or the receiving system.
    Transient,
    /// Not a failure (a success DSN, an auto-reply).
    Success,
}

impl Kind {
    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hard => "hard",
            Kind::Soft => "soft",
            Kind::Block => "block",
            Kind::Transient => "transient",
            Kind::Success => "success",
        }
    }

    /// Parses a name produced by [`Kind::as_str`].
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "hard" => Kind::Hard,
            "soft" => Kind::Soft,
            "block" => Kind::Block,
            "transient" => Kind::Transient,
            "success" => Kind::Success,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with the recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Give up: report the recipient bounced.
    Bounce,
    /// Try again after this interval (subject to the retry policy's maximum age).
    Retry(Duration),
    /// Nothing to do: the message was delivered (or this was not a failure).
    None,
}

impl Action {
    /// `"bounce"`, `"retry"` or `"none"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Bounce => "bounce",
            Action::Retry(_) => "retry",
            Action::None => "none",
        }
    }

    /// The retry interval, if this is a retry.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Action::Retry(d) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert_eq!(Reason::parse(&r.as_str().to_uppercase()), Some(r));
        }
        assert_eq!(Reason::parse("toomanyconn"), Some(Reason::RateLimited));
        assert_eq!(Reason::parse("speeding"), Some(Reason::RateLimited));
        assert_eq!(Reason::parse("exceedlimit"), Some(Reason::MesgTooBig));
        assert_eq!(Reason::parse("nonsense"), None);
        for k in [
            Kind::Hard,
            Kind::Soft,
            Kind::Block,
            Kind::Transient,
            Kind::Success,
        ] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn reputation_reasons() {
        assert!(Reason::Blocked.is_reputation());
        assert!(Reason::AuthFailure.is_reputation());
        assert!(!Reason::UserUnknown.is_reputation());
        assert_eq!(Reason::UserUnknown.default_kind(), Kind::Hard);
        assert_eq!(Reason::MailboxFull.default_kind(), Kind::Soft);
    }
}
