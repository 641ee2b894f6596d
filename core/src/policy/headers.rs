//! The header fields vmta writes into a message: the `Received` trace field (RFC 5321 §4.4), `Date`
//! (RFC 5322 §3.3), `List-Unsubscribe` (RFC 2369 §3.2) with `List-Unsubscribe-Post` (RFC 8058 one-click)
//! from a per-tenant template, and `Feedback-ID` in the format Gmail's feedback loop reads.
//!
//! Time and per-message values are arguments: nothing here reads the clock or draws random numbers.
//! Unsubscribe tokens are HMAC-SHA256 over tenant, recipient and message id with a per-tenant secret,
//! so the unsubscribe endpoint can check a request came from a message vmta sent without storing
//! anything.
//!
//! Not done: RFC 2047 encoding (values vmta writes are ASCII), `List-Id` and the other RFC 2369 fields
//! (the host program adds them if it runs a list).

use std::fmt;
use std::fmt::Write as _;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats `unix_seconds` as an RFC 5322 `date-time` in UTC: `Mon, 23 Nov 2026 12:29:17 +0000`.
pub fn rfc5322_date(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (non-negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// What the `Received` field says about a submission: who handed the message over and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace<'a> {
    /// The name of the submitting host (the embedding program's host name, or what it was told).
    pub from_host: &'a str,
    /// The IP address the message originated from, as the host program passes it in.
    pub from_ip: Option<IpAddr>,
    /// The name of the vmta host (the `by` clause).
    pub by_host: &'a str,
    /// The protocol (`with` clause, IANA "Mail Transmission Types"), for example `ESMTPA` or `HTTP`.
    pub with: &'a str,
    /// The queue id (`id` clause).
    pub id: &'a str,
    /// The TLS layer the message came over (`TLSv1.3 with cipher ...`), written as a comment
    /// `(using ...)` the way Postfix does; `None` for none.
    pub tls: Option<&'a str>,
    /// The authenticated sender, written as `(Authenticated sender: ...)` when the operator wants
    /// it in the header (RFC 3848 leaves that to policy); `None` to leave it out.
    pub auth: Option<&'a str>,
}

impl Trace<'_> {
    /// Writes `Received: from H ([IP]) by B with W id I; DATE` folded, with CRLF (RFC 5321 §4.4).
    /// Characters that would break the field (CR, LF, parentheses, `;`) in the names are dropped.
    pub fn write_received(&self, unix_seconds: u64, out: &mut Vec<u8>) {
        let clean = |s: &str| -> String {
            s.chars()
                .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';' | '[' | ']'))
                .collect()
        };
        let mut f = String::with_capacity(160);
        f.push_str("Received: from ");
        f.push_str(&clean(self.from_host));
        if let Some(ip) = self.from_ip {
            match ip {
                IpAddr::V4(v4) => {
                    let _ = write!(f, " ([{v4}])");
                }
                IpAddr::V6(v6) => {
                    let _ = write!(f, " ([IPv6:{v6}])");
                }
            }
        }
        // Comments take any printable text but their own parentheses (and no line breaks).
        let comment = |s: &str| -> String {
            s.chars()
                .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '(' | ')' | '\\'))
                .collect()
        };
        if let Some(tls) = self.tls.filter(|t| !t.is_empty()) {
            f.push_str("\r\n\t(using ");
            f.push_str(&comment(tls));
            f.push(')');
        }
        if let Some(auth) = self.auth.filter(|a| !a.is_empty()) {
            f.push_str("\r\n\t(Authenticated sender: ");
            f.push_str(&comment(auth));
            f.push(')');
        }
        f.push_str("\r\n\tby ");
        f.push_str(&clean(self.by_host));
        f.push_str(" (vmta)");
        if !self.with.is_empty() {
            f.push_str(" with ");
            f.push_str(&clean(self.with));
        }
        if !self.id.is_empty() {
            f.push_str(" id ");
            f.push_str(&clean(self.id));
        }
        f.push_str(";\r\n\t");
        f.push_str(&rfc5322_date(unix_seconds));
        f.push_str("\r\n");
        out.extend_from_slice(f.as_bytes());
    }
}

/// A tenant's List-Unsubscribe template (from configuration).
///
/// Placeholders, replaced per recipient and percent-encoded: `{recipient}`, `{message_id}`,
/// `{tenant}`, `{token}` (see [`UnsubscribeTemplate::token`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeTemplate {
    /// An `https:` URL template, required for one-click.
    #[serde(default)]
    pub url: Option<String>,
    /// A `mailto:` address template (without `mailto:`), for example `unsub+{token}@example.com`.
    #[serde(default)]
    pub mailto: Option<String>,
    /// Whether to add `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    #[serde(default)]
    pub one_click: bool,
    /// The HMAC key of the token.
    #[serde(default)]
    pub secret: String,
}

/// Why an unsubscribe template or Feedback-ID was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Neither `url` nor `mailto` is set.
    NoTarget,
    /// One-click asks for an `https:` URL (RFC 8058 §3.1).
    OneClickNeedsHttps,
    /// The URL template is not `https:` or `http:`.
    BadUrl(String),
    /// A placeholder other than the four known ones.
    UnknownPlaceholder(String),
    /// `{token}` is used but no secret is configured.
    NoSecret,
    /// A Feedback-ID part is empty where required, or holds `:` or characters outside printable ASCII.
    BadFeedbackPart(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NoTarget => f.write_str("unsubscribe template has neither url nor mailto"),
            HeaderError::OneClickNeedsHttps => {
                f.write_str("one-click unsubscribe needs an https: url (RFC 8058)")
            }
            HeaderError::BadUrl(u) => write!(f, "unsubscribe url {u:?} is not http(s)"),
            HeaderError::UnknownPlaceholder(p) => write!(f, "unknown placeholder {{{p}}}"),
            HeaderError::NoSecret => f.write_str("{token} needs a secret"),
            HeaderError::BadFeedbackPart(p) => write!(f, "bad Feedback-ID part {p:?}"),
        }
    }
}

impl std::error::Error for HeaderError {}

const PLACEHOLDERS: [&str; 4] = ["recipient", "message_id", "tenant", "token"];

fn check_placeholders(template: &str, has_secret: bool) -> Result<(), HeaderError> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| HeaderError::UnknownPlaceholder(after.to_string()))?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(HeaderError::UnknownPlaceholder(name.to_string()));
        }
        if name == "token" && !has_secret {
            return Err(HeaderError::NoSecret);
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The rendered List-Unsubscribe fields for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeFields {
    /// The `List-Unsubscribe` field, with CRLF.
    pub list_unsubscribe: String,
    /// The `List-Unsubscribe-Post` field, with CRLF, when one-click is on.
    pub list_unsubscribe_post: Option<String>,
}

impl UnsubscribeFields {
    /// Appends both fields to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.list_unsubscribe.as_bytes());
        if let Some(p) = &self.list_unsubscribe_post {
            out.extend_from_slice(p.as_bytes());
        }
    }
}

impl UnsubscribeTemplate {
    /// Checks the template once, at configuration time.
    pub fn validate(&self) -> Result<(), HeaderError> {
        if self.url.is_none() && self.mailto.is_none() {
            return Err(HeaderError::NoTarget);
        }
        let has_secret = !self.secret.is_empty();
        if let Some(url) = &self.url {
            let lower = url.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                return Err(HeaderError::BadUrl(url.clone()));
            }
            if self.one_click && !lower.starts_with("https://") {
                return Err(HeaderError::OneClickNeedsHttps);
            }
            if url.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',') {
                return Err(HeaderError::BadUrl(url.clone()));
            }
            check_placeholders(url, has_secret)?;
        } else if self.one_click {
            return Err(HeaderError::OneClickNeedsHttps);
        }
        if let Some(m) = &self.mailto {
            if m.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',') {
                return Err(HeaderError::BadUrl(m.clone()));
            }
            check_placeholders(m, has_secret)?;
        }
        Ok(())
    }

    /// The token for (tenant, recipient, message id): base64url of the first 16 bytes of
    /// HMAC-SHA256(secret, tenant NUL recipient NUL message_id).
    pub fn token(&self, tenant: &str, recipient: &str, message_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(&self.mac(tenant, recipient, message_id)[..16])
    }

    /// Checks a token from an unsubscribe request in constant time.
    pub fn verify_token(
        &self,
        tenant: &str,
        recipient: &str,
        message_id: &str,
        token: &str,
    ) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(token) else {
            return false;
        };
        if given.len() != 16 || self.secret.is_empty() {
            return false;
        }
        let expected = self.mac(tenant, recipient, message_id);
        let mut diff = 0u8;
        for (a, b) in given.iter().zip(&expected[..16]) {
            diff |= a ^ b;
        }
        diff == 0
    }

    fn mac(&self, tenant: &str, recipient: &str, message_id: &str) -> Vec<u8> {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(tenant.as_bytes());
        mac.update(b"\0");
        mac.update(recipient.as_bytes());
        mac.update(b"\0");
        mac.update(message_id.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn expand(&self, template: &str, tenant: &str, recipient: &str, message_id: &str) -> String {
        let mut out = String::with_capacity(template.len() + 64);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return out;
            };
            match &after[..close] {
                "recipient" => percent_encode(recipient, &mut out),
                "message_id" => percent_encode(
                    message_id.trim_start_matches('<').trim_end_matches('>'),
                    &mut out,
                ),
                "tenant" => percent_encode(tenant, &mut out),
                "token" => out.push_str(&self.token(tenant, recipient, message_id)),
                other => {
                    out.push('{');
                    out.push_str(other);
                    out.push('}');
                }
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Renders the fields for one recipient. The template must have passed [`Self::validate`].
    pub fn render(&self, tenant: &str, recipient: &str, message_id: &str) -> UnsubscribeFields {
        let mut value = String::new();
        if let Some(url) = &self.url {
            value.push('<');
            value.push_str(&self.expand(url, tenant, recipient, message_id));
            value.push('>');
        }
        if let Some(m) = &self.mailto {
            if !value.is_empty() {
                value.push_str(",\r\n\t");
            }
            value.push_str("<mailto:");
            value.push_str(&self.expand(m, tenant, recipient, message_id));
            value.push('>');
        }
        UnsubscribeFields {
            list_unsubscribe: format!("List-Unsubscribe: {value}\r\n"),
            list_unsubscribe_post: (self.one_click && self.url.is_some())
                .then(|| "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n".to_string()),
        }
    }
}

/// The Feedback-ID field Gmail's feedback loop reads: `a:b:c:SenderId`, up to three identifiers of the
/// sender's choosing (campaign, customer, mail type) and a mandatory, stable sender id last.
pub fn feedback_id(
    campaign: Option<&str>,
    customer: Option<&str>,
    mail_type: Option<&str>,
    sender_id: &str,
) -> Result<String, HeaderError> {
    let check = |p: &str| {
        if p.is_empty() || p.bytes().any(|b| b == b':' || !(33..=126).contains(&b)) {
            Err(HeaderError::BadFeedbackPart(p.to_string()))
        } else {
            Ok(())
        }
    };
    check(sender_id)?;
    let mut value = String::new();
    for p in [campaign, customer, mail_type].into_iter().flatten() {
        check(p)?;
        value.push_str(p);
        value.push(':');
    }
    value.push_str(sender_id);
    Ok(format!("Feedback-ID: {value}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_528_637_909),
            "Sun, 10 Jun 2018 13:38:29 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(4_107_542_399),
            "Sun, 28 Feb 2100 23:59:59 +0000"
        );
    }

    #[test]
    fn received() {
        let mut out = Vec::new();
        Trace {
            from_host: "app1.example.com",
            from_ip: Some("192.0.2.7".parse().unwrap()),
            by_host: "mta.example.net",
            with: "ESMTPA",
            id: "q123",
            tls: None,
            auth: None,
        }
        .write_received(0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from app1.example.com ([192.0.2.7])\r\n\tby mta.example.net (vmta) with \
             ESMTPA id q123;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let mut out = Vec::new();
        Trace {
            from_host: "evil\r\nX-Injected: 1",
            from_ip: Some("2001:db8::1".parse().unwrap()),
            by_host: "m",
            with: "",
            id: "",
            tls: Some("TLSv1.3 with cipher X)\r\nX-Injected: 2"),
            auth: Some("demo (x)"),
        }
        .write_received(0, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("Received: from evilX-Injected:1 ([IPv6:2001:db8::1])\r\n"));
        assert!(
            text.contains("\r\n\t(using TLSv1.3 with cipher XX-Injected: 2)\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\n\t(Authenticated sender: demo x)\r\n\tby m (vmta)"),
            "{text}"
        );
    }

    fn template() -> UnsubscribeTemplate {
        UnsubscribeTemplate {
            url: Some("https://u.example.com/unsub/{token}?r={recipient}&t={tenant}".into()),
            mailto: Some("unsub+{token}@example.com?subject={message_id}".into()),
            one_click: true,
            secret: "s3cret".into(),
        }
    }

    #[test]
    fn unsubscribe_renders_and_tokens_verify() {
        let t = template();
        t.validate().unwrap();
        let f = t.render("acme", "bob+x@example.org", "<m1@example.com>");
        let token = t.token("acme", "bob+x@example.org", "<m1@example.com>");
        assert_eq!(token.len(), 22);
        assert_eq!(
            f.list_unsubscribe,
            format!(
                "List-Unsubscribe: <https://u.example.com/unsub/{token}?r=bob%2Bx%40example.org&t=acme>,\
                 \r\n\t<mailto:unsub+{token}@example.com?subject=m1%40example.com>\r\n"
            )
        );
        assert_eq!(
            f.list_unsubscribe_post.as_deref(),
            Some("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        );
        assert!(t.verify_token("acme", "bob+x@example.org", "<m1@example.com>", &token));
        assert!(!t.verify_token("acme", "eve@example.org", "<m1@example.com>", &token));
        assert!(!t.verify_token("acme", "bob+x@example.org", "<m1@example.com>", "AAAA"));
    }

    #[test]
    fn unsubscribe_templates_are_checked() {
        let mut t = template();
        t.url = Some("http://u.example.com/{token}".into());
        assert_eq!(t.validate(), Err(HeaderError::OneClickNeedsHttps));
        t.one_click = false;
        assert_eq!(t.validate(), Ok(()));
        t.url = Some("https://u.example.com/{who}".into());
        assert_eq!(
            t.validate(),
            Err(HeaderError::UnknownPlaceholder("who".into()))
        );
        t.url = None;
        t.mailto = None;
        assert_eq!(t.validate(), Err(HeaderError::NoTarget));
        let t = UnsubscribeTemplate {
            url: Some("https://u.example.com/{token}".into()),
            mailto: None,
            one_click: true,
            secret: String::new(),
        };
        assert_eq!(t.validate(), Err(HeaderError::NoSecret));
    }

    #[test]
    fn feedback_ids() {
        assert_eq!(
            feedback_id(Some("spring-sale"), Some("acme"), Some("promo"), "vmta1").unwrap(),
            "Feedback-ID: spring-sale:acme:promo:vmta1\r\n"
        );
        assert_eq!(
            feedback_id(None, Some("acme"), None, "vmta1").unwrap(),
            "Feedback-ID: acme:vmta1\r\n"
        );
        assert!(feedback_id(Some("a:b"), None, None, "x").is_err());
        assert!(feedback_id(None, None, None, "").is_err());
        assert!(feedback_id(Some("a b"), None, None, "x").is_err());
    }
}
