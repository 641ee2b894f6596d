//! Inbound reports: delivery status notifications, non-standard bounces, feedback reports and
//! auto-replies, turned into per-recipient results.
//!
//! Implements:
//! - RFC 3464 DSNs: `multipart/report; report-type=delivery-status` with a `message/delivery-status`
//!   part (also `message/global-delivery-status`, RFC 6533, and DSN fields found in a text part):
//!   per-message fields and per-recipient groups (`Final-Recipient`, `Original-Recipient`, `Action`,
//!   `Status`, `Remote-MTA`, `Diagnostic-Code`), RFC 3463 status codes.
//! - Non-standard bounces (qmail, Exim, Postfix and Sendmail without DSN, Gmail, Yahoo, Exchange, Lotus
//!   Notes, Courier, mobile carriers and the rest of the Sisimai corpus) by reading the human-readable
//!   part: the failed addresses, the text after each, the SMTP reply and enhanced codes in it, and the
//!   command it answered (`in reply to RCPT TO`, `after end of data`, `[RCPT_TO]`, transcript lines
//!   `>>> RCPT TO` / `<<< 550 ...`, per recipient in Sendmail transcripts, with PIPELINING's
//!   `503 Need RCPT` read as a refused RCPT), with `X-Failed-Recipients` and the returned message's `To`
//!   (attached, or inline after "Unsent message follows") as a last resort for the address.
//! - Bounces forwarded or quoted (`> `) into another message, or kept after an mbox `From ` line, read
//!   as messages of their own (one level deep).
//! - RFC 2369 `List-Unsubscribe` mailto requests (subject "unsubscribe"), reported as ARF `opt-out`.
//! - RFC 5965 ARF feedback reports (`message/feedback-report`: `Feedback-Type`, `Original-Rcpt-To`,
//!   `Removal-Recipient`, `Original-Mail-From`, the returned message's `Message-ID`), and Microsoft's
//!   JMRP form (`X-HmXmrOriginalRecipient`).
//! - Amazon SES notifications delivered by SNS email (JSON `Bounce`, `Complaint`, `Delivery`).
//! - RFC 3834 auto-replies (`Auto-Submitted: auto-replied`, vacation subjects and headers).
//!
//! Each failed recipient's diagnostic is classified with the [`Classifier`], so a report and a live
//! SMTP reply with the same text get the same reason.
//!
//! Not implemented: RFC 6522 generic report types other than delivery-status and feedback-report
//! (e.g. disposition notifications, RFC 8098, come out as `not-a-bounce`), charsets other than UTF-8
//! and Latin-1, and provider-specific templates whose text carries no address, code or known phrase.
//! Parsing is sans-IO and never panics; bad input gives a [`ReportError`] or `not-a-bounce`.

#![forbid(unsafe_code)]

use super::classify::{Classification, Classifier, Diagnostic};
use super::mime::{self, MimeError, MimeLimits, Part};
use super::reason::{Kind, Reason};
use crate::smtp::{EnhancedCode, Phase};
use std::collections::HashMap;
use std::fmt;

/// Most recipients reported from one message.
pub const MAX_RECIPIENTS: usize = 1000;
/// Longest diagnostic kept per recipient.
pub const MAX_DIAGNOSTIC: usize = 2048;

/// What sort of message a report is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReportKind {
    /// A delivery status notification, standard or not.
    Dsn,
    /// A feedback (complaint) report.
    Arf,
    /// An automatic reply.
    AutoReply,
    /// Anything else.
    NotABounce,
}

impl ReportKind {
    /// `"dsn"`, `"arf"`, `"autoreply"` or `"not-a-bounce"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Dsn => "dsn",
            ReportKind::Arf => "arf",
            ReportKind::AutoReply => "autoreply",
            ReportKind::NotABounce => "not-a-bounce",
        }
    }
}

/// Why a message could not be read at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// The message could not be read as a message.
    Mime(MimeError),
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Mime(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReportError {}

/// One recipient of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRecipient {
    /// The recipient address (lower-cased domain; local part as given).
    pub address: String,
    /// The DSN `Action` field, lower case (`failed`, `delayed`, `delivered`, ...), if any.
    pub action: Option<String>,
    /// The status code: the DSN's, or one read from the diagnostic.
    pub status: Option<EnhancedCode>,
    /// The SMTP reply code read from the diagnostic.
    pub reply_code: Option<u16>,
    /// The diagnostic text (the remote server's reply or the local error).
    pub diagnostic: String,
    /// The remote MTA, if named.
    pub remote_mta: Option<String>,
    /// The command the failure answered, if the report says.
    pub phase: Option<Phase>,
    /// The classification.
    pub reason: Reason,
    /// The kind of the classification.
    pub kind: Kind,
    /// The full classification (action, throttle) when the recipient failed.
    pub classification: Option<Classification>,
}

/// A parsed inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What it is.
    pub kind: ReportKind,
    /// ARF `Feedback-Type` (lower case).
    pub feedback_type: Option<String>,
    /// The recipients it reports on.
    pub recipients: Vec<ReportRecipient>,
    /// The `Message-ID` of the message the report is about, if returned.
    pub original_message_id: Option<String>,
    /// The envelope recipient the report was sent to (`To` of the report, or `X-Original-To`): with VERP
    /// it carries the signed message id and recipient.
    pub report_to: Option<String>,
    /// The `Return-Path` / envelope sender of the original message, if returned.
    pub original_return_path: Option<String>,
}

/// Parses one message with the default limits.
pub fn parse(input: &[u8], classifier: &Classifier) -> Result<Report, ReportError> {
    parse_with_limits(input, classifier, &MimeLimits::default())
}

/// Parses one message.
pub fn parse_with_limits(
    input: &[u8],
    classifier: &Classifier,
    limits: &MimeLimits,
) -> Result<Report, ReportError> {
    let root = mime::parse(input, limits).map_err(ReportError::Mime)?;
    Ok(Reader::new(&root, classifier, *limits, false).read())
}

// ---------------------------------------------------------------------------------------------------

struct Reader<'a> {
    root: &'a Part,
    classifier: &'a Classifier,
    parts: Vec<&'a Part>,
    limits: MimeLimits,
    /// Reading a bounce found inside another message's text (never looks for a further one).
    nested: bool,
}

impl<'a> Reader<'a> {
    fn new(
        root: &'a Part,
        classifier: &'a Classifier,
        limits: MimeLimits,
        nested: bool,
    ) -> Reader<'a> {
        Reader {
            root,
            classifier,
            parts: root.walk(),
            limits,
            nested,
        }
    }

    fn read(&self) -> Report {
        let mut report = Report {
            kind: ReportKind::NotABounce,
            feedback_type: None,
            recipients: Vec::new(),
            original_message_id: None,
            report_to: self
                .root
                .header("x-original-to")
                .or(self.root.header("delivered-to"))
                .or(self.root.header("to"))
                .and_then(first_address),
            original_return_path: None,
        };
        let original = self.original_message();
        if let Some(o) = original {
            report.original_message_id = o.header("message-id").map(|v| v.trim().to_string());
            report.original_return_path = o.header("return-path").and_then(first_address);
        }
        if self.read_arf(&mut report, original) {
            return report;
        }
        if self.read_ses_notification(&mut report) {
            report.recipients.truncate(MAX_RECIPIENTS);
            return report;
        }
        if self.read_dsn(&mut report) || self.read_text_bounce(&mut report, original) {
            report.kind = ReportKind::Dsn;
            report.recipients.truncate(MAX_RECIPIENTS);
            return report;
        }
        if let Some(inner) = self.read_forwarded() {
            return inner;
        }
        if self.is_unsubscribe_request() {
            // RFC 2369 / RFC 8058: a mail client answering a `List-Unsubscribe: <mailto:...>` header.
            // It is an opt-out from the person, handled like an ARF opt-out report.
            report.kind = ReportKind::Arf;
            report.feedback_type = Some("opt-out".into());
            if let Some(from) = self.root.header("from").and_then(first_address) {
                report
                    .recipients
                    .push(simple_recipient(from, Reason::Feedback));
            }
            return report;
        }
        if self.is_auto_reply() {
            report.kind = ReportKind::AutoReply;
            if let Some(from) = self.root.header("from").and_then(first_address) {
                report
                    .recipients
                    .push(simple_recipient(from, Reason::Vacation));
            }
            return report;
        }
        report
    }

    /// The returned original message (or its headers), if any.
    fn original_message(&self) -> Option<&'a Part> {
        self.parts
            .iter()
            .skip(1)
            .find(|p| {
                matches!(
                    p.content_type.as_str(),
                    "message/rfc822"
                        | "text/rfc822-headers"
                        | "message/rfc822-headers"
                        | "message/global"
                        | "message/global-headers"
                )
            })
            .and_then(|p| p.children.first())
    }

    // -- ARF ----------------------------------------------------------------------------------------

    fn read_arf(&self, report: &mut Report, original: Option<&'a Part>) -> bool {
        let fb = self
            .parts
            .iter()
            .find(|p| p.content_type == "message/feedback-report");
        let jmrp = original.and_then(|o| o.header("x-hmxmroriginalrecipient"));
        if fb.is_none() && jmrp.is_none() {
            return false;
        }
        report.kind = ReportKind::Arf;
        let mut rcpts = Vec::new();
        if let Some(fb) = fb {
            let text = fb.text();
            for (name, value) in fields(&text) {
                match name.as_str() {
                    "feedback-type" => {
                        report.feedback_type = Some(value.trim().to_ascii_lowercase())
                    }
                    "original-rcpt-to" | "removal-recipient" => rcpts.extend(first_address(&value)),
                    "original-mail-from" if report.original_return_path.is_none() => {
                        report.original_return_path = first_address(&value)
                    }
                    _ => {}
                }
            }
        } else {
            report.feedback_type = Some("abuse".into());
        }
        if rcpts.is_empty()
            && let Some(j) = jmrp
        {
            rcpts.extend(first_address(j));
        }
        if rcpts.is_empty()
            && let Some(o) = original
        {
            rcpts.extend(o.header("to").and_then(first_address));
        }
        if rcpts.is_empty() {
            rcpts.extend(self.root.header("from").and_then(first_address));
        }
        dedup(&mut rcpts);
        report.recipients = rcpts
            .into_iter()
            .take(MAX_RECIPIENTS)
            .map(|a| simple_recipient(a, Reason::Feedback))
            .collect();
        true
    }

    // -- Amazon SES notifications (JSON sent by SNS over email) --------------------------------------

    fn read_ses_notification(&self, report: &mut Report) -> bool {
        let body = self.root.text();
        let Some(start) = body.find("{\"notificationType\"") else {
            return false;
        };
        // SNS folds long lines as "!\n " at 990 characters.
        let json_text = body[start..].replace("!\n ", "");
        let end = json_text.find("\n\n").unwrap_or(json_text.len());
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json_text[..end].trim()) else {
            return false;
        };
        let str_of =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        report.original_message_id = v.get("mail").and_then(|m| str_of(m, "messageId"));
        match v.get("notificationType").and_then(|t| t.as_str()) {
            Some("Complaint") => {
                report.kind = ReportKind::Arf;
                let c = v.get("complaint");
                report.feedback_type = Some(
                    c.and_then(|c| str_of(c, "complaintFeedbackType"))
                        .unwrap_or_else(|| "abuse".into()),
                );
                for r in c
                    .and_then(|c| c.get("complainedRecipients"))
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(a) = str_of(r, "emailAddress").as_deref().and_then(first_address) {
                        report
                            .recipients
                            .push(simple_recipient(a, Reason::Feedback));
                    }
                }
            }
            Some("Delivery") => {
                report.kind = ReportKind::Dsn;
                let d = v.get("delivery");
                let response = d
                    .and_then(|d| str_of(d, "smtpResponse"))
                    .unwrap_or_default();
                for r in d
                    .and_then(|d| d.get("recipients"))
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(a) = r.as_str().and_then(first_address) {
                        let remote = d.and_then(|d| str_of(d, "reportingMTA"));
                        report.recipients.push(self.finish_recipient(
                            a,
                            Some("delivered".into()),
                            None,
                            response.clone(),
                            remote,
                            None,
                            "",
                        ));
                    }
                }
            }
            Some("Bounce") => {
                report.kind = ReportKind::Dsn;
                let b = v.get("bounce");
                for r in b
                    .and_then(|b| b.get("bouncedRecipients"))
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                {
                    let Some(a) = str_of(r, "emailAddress").as_deref().and_then(first_address)
                    else {
                        continue;
                    };
                    let status = str_of(r, "status").as_deref().and_then(EnhancedCode::parse);
                    let diag = str_of(r, "diagnosticCode").unwrap_or_default();
                    let action = str_of(r, "action");
                    report
                        .recipients
                        .push(self.finish_recipient(a, action, status, diag, None, None, ""));
                }
            }
            _ => return false,
        }
        !report.recipients.is_empty()
    }

    // -- RFC 3464 -------------------------------------------------------------------------------------

    fn read_dsn(&self, report: &mut Report) -> bool {
        let status_part = self.parts.iter().find(|p| {
            matches!(
                p.content_type.as_str(),
                "message/delivery-status"
                    | "message/global-delivery-status"
                    | "text/delivery-status"
            )
        });
        let text = match status_part {
            Some(p) => {
                // A delivery-status part sometimes arrives as an embedded "message" with its own header.
                let mut t = mime::decode_charset(&p.body, "utf-8");
                if !p.children.is_empty() && t.trim().is_empty() {
                    t = p.children[0].text();
                }
                t
            }
            None => {
                // DSN fields pasted into a text part (some MTAs, some forwarders), read before the
                // text is cut where the returned message starts (the fields may follow a marker).
                let all = self.text_parts();
                if !has_dsn_fields(&all) {
                    return false;
                }
                all
            }
        };
        let human = self.human_text();
        let groups = dsn_groups(&text);
        // Computed once: per recipient they would make a long report quadratic.
        let human_blocks = text_blocks(&human, &[]);
        let human_phase = phase_of(&human);
        let transcript = transcript_phases(&human);
        let mut any = false;
        for g in groups {
            let mut address = None;
            let mut action = None;
            let mut status = None;
            let mut diag = String::new();
            let mut diag_type = String::new();
            let mut remote = None;
            let mut original_rcpt = None;
            let mut comment = String::new();
            for (name, value) in g {
                match name.as_str() {
                    "final-recipient" => address = address_field(&value),
                    "original-recipient" => original_rcpt = address_field(&value),
                    "action" => action = Some(value.trim().to_ascii_lowercase()),
                    "status" => {
                        status = find_status(&value);
                        comment = value
                            .split_once('(')
                            .map(|(_, c)| c.trim_end().trim_end_matches(')').trim().to_string())
                            .unwrap_or_default();
                    }
                    "remote-mta" => remote = Some(strip_type(&value).to_string()),
                    "diagnostic-code" => {
                        let (t, v) = split_type(&value);
                        diag_type = t.to_ascii_lowercase();
                        if !diag.is_empty() {
                            diag.push(' ');
                        }
                        diag.push_str(v);
                    }
                    _ => {}
                }
            }
            let Some(address) = address.or(original_rcpt) else {
                continue;
            };
            any = true;
            let block = human_blocks
                .iter()
                .find(|(a, _)| a.eq_ignore_ascii_case(&address))
                .map(|(_, b)| b.clone());
            let phase = phase_of(&diag)
                .or_else(|| {
                    transcript
                        .get(&address.to_ascii_lowercase())
                        .copied()
                        .flatten()
                })
                .or_else(|| block.as_deref().and_then(phase_of))
                .or(human_phase);
            if diag.trim().is_empty() || diag.trim().len() < 8 {
                if let Some(b) = &block {
                    diag = b.clone();
                }
            } else if diag_type == "x-unix" {
                diag = format!("X-Unix; {diag}");
            }
            let rcpt =
                self.finish_recipient(address, action, status, diag, remote, phase, &comment);
            report.recipients.push(rcpt);
            if report.recipients.len() >= MAX_RECIPIENTS {
                break;
            }
        }
        if !any && status_part.is_some() {
            // A delivery-status part without any recipient: read the text instead.
            return false;
        }
        any
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_recipient(
        &self,
        address: String,
        action: Option<String>,
        status: Option<EnhancedCode>,
        diag: String,
        remote: Option<String>,
        phase: Option<Phase>,
        status_comment: &str,
    ) -> ReportRecipient {
        let diag = unwrap_relayed_reply(&clean_diagnostic(&diag));
        // The comment of a DSN `Status` field ("5.2.1 (mailbox disabled, not accepting messages)") is
        // the reporting MTA's own reading of the failure: the rules read it after the reply.
        let with_comment;
        let text = if status_comment.is_empty() {
            &diag
        } else {
            with_comment = format!("{diag} ({status_comment})");
            &with_comment
        };
        let (code, diag_status) = reply_codes(&diag);
        // The diagnostic's own enhanced code is more precise than a generic X.0.0 in the Status field.
        let enhanced = match (diag_status, status) {
            (Some(d), Some(s))
                if d.subject == 0 && d.detail == 0 && (s.subject != 0 || s.detail != 0) =>
            {
                Some(s)
            }
            (Some(d), _) => Some(d),
            (None, s) => s,
        };
        let delivered = matches!(
            action.as_deref(),
            Some("delivered" | "relayed" | "expanded")
        );
        let recipient_domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        let d = Diagnostic {
            code,
            enhanced,
            text,
            phase,
            sender_domain: "",
            tenant: "",
            recipient_domain: &recipient_domain,
            mx_host: remote.as_deref().unwrap_or(""),
        };
        let mut c = if delivered {
            None
        } else {
            Some(self.classifier.classify(&d))
        };
        let mut reason = c.map_or(Reason::Delivered, |c| c.reason);
        if action.as_deref() == Some("delayed")
            && matches!(
                reason,
                Reason::SystemError | Reason::Undefined | Reason::OnHold | Reason::NetworkError
            )
            && !has_network_text(&diag)
        {
            reason = Reason::Expired;
        }
        // A final report with a temporary status: the sender's queue gave up (its lifetime ran out).
        let temporary = code
            .map(|c| c / 100 == 4)
            .or(enhanced.map(|e| e.class == 4))
            .unwrap_or(false);
        if temporary
            && action.as_deref() != Some("delayed")
            && matches!(reason, Reason::Undefined | Reason::OnHold)
        {
            reason = Reason::Expired;
        }
        if reason == Reason::Undefined && code.is_none() && enhanced.is_none_or(|e| e.subject == 0)
        {
            reason = Reason::OnHold;
        }
        if let Some(cl) = c.as_mut() {
            cl.reason = reason;
        }
        let status = if delivered {
            status
        } else {
            enhanced.or(status)
        };
        ReportRecipient {
            address,
            action,
            status,
            reply_code: code,
            kind: c.map_or(Kind::Success, |c| c.kind),
            diagnostic: diag,
            remote_mta: remote,
            phase,
            reason,
            classification: c,
        }
    }

    // -- Non-standard bounces -------------------------------------------------------------------------

    fn looks_like_bounce(&self) -> bool {
        let from = self.root.header("from").unwrap_or("").to_ascii_lowercase();
        let subject = self
            .root
            .header("subject")
            .unwrap_or("")
            .to_ascii_lowercase();
        let rp = self.root.header("return-path").unwrap_or("");
        let from_daemon = [
            "mailer-daemon",
            "postmaster",
            "mail delivery",
            "mail-daemon",
            "maildaemon",
            "mmdf",
            "mail administrator",
            "mailer daemon",
            "mail system",
            "<>",
            "bounce",
            "nobody@",
            "root@",
            "failure",
            "notify",
        ]
        .iter()
        .any(|s| from.contains(s));
        let body_bounce = || {
            let text = self.human_text().to_ascii_lowercase();
            [
                "error message below",
                "could not be delivered",
                "undeliverable",
                "delivery has failed",
                "was not delivered",
                "permanent fatal errors",
                "transcript of session follows",
                "delivery to the following recipient",
                "message you sent could not be delivered",
            ]
            .iter()
            .any(|s| text.contains(s))
        };
        let subject_bounce = [
            "undeliver",
            "delivery",
            "failure",
            "failed",
            "returned",
            "bounce",
            "undelivered",
            "non remis",
            "not delivered",
            "nondeliverable",
            "rejected",
            "error",
            "unzustellbar",
            "could not",
            "warning",
            "notice",
            "problem",
            "unable",
            "permanent",
            "mail system",
            "notification",
            "não",
            "expired",
            "返送",
            "エラー",
        ]
        .iter()
        .any(|s| subject.contains(s));
        from_daemon
            || subject_bounce
            || rp.trim() == "<>"
            || self.root.header("x-failed-recipients").is_some()
            || body_bounce()
    }

    fn read_text_bounce(&self, report: &mut Report, original: Option<&'a Part>) -> bool {
        if !self.looks_like_bounce() {
            return false;
        }
        if self.is_auto_reply() {
            return false;
        }
        let human = self.human_text();
        let mut exclude: Vec<String> = Vec::new();
        for h in ["from", "to", "reply-to", "sender"] {
            exclude.extend(self.root.header(h).and_then(first_address));
        }
        if let Some(o) = original {
            for h in ["from", "reply-to", "sender", "return-path"] {
                exclude.extend(o.header(h).and_then(first_address));
            }
        }
        let mut blocks = text_blocks(&human, &exclude);
        if blocks.is_empty()
            && let Some(to) = self.root.header("to").and_then(first_address)
        {
            // A bounce of a message sent to oneself: the report's own address is the failed one.
            exclude.retain(|a| !a.eq_ignore_ascii_case(&to));
            blocks = text_blocks(&human, &exclude);
        }
        let mut found: Vec<(String, String)> = blocks;
        if found.is_empty() {
            let mut addrs = Vec::new();
            if let Some(x) = self.root.header("x-failed-recipients") {
                addrs.extend(all_addresses(x));
            }
            if addrs.is_empty()
                && let Some(o) = original
            {
                addrs.extend(o.header("to").map(all_addresses).unwrap_or_default());
            }
            if addrs.is_empty() && original.is_none() {
                // The returned message inline after a marker ("----- Unsent message follows -----").
                addrs.extend(self.inline_original_to());
            }
            if addrs.is_empty() {
                addrs.extend(
                    self.root
                        .header("x-original-to")
                        .or(self.root.header("original-recipient"))
                        .and_then(first_address)
                        .into_iter()
                        .filter(|a| !exclude.contains(a)),
                );
            }
            dedup(&mut addrs);
            let mut diag = error_paragraph(&human);
            if reply_codes(&diag) == (None, None) {
                // No SMTP reply to focus on: let the rules read the whole explanation.
                diag = human.chars().take(MAX_DIAGNOSTIC).collect();
            }
            found = addrs.into_iter().map(|a| (a, diag.clone())).collect();
        }
        if found.is_empty() {
            return false;
        }
        let human_phase = phase_of(&human);
        let transcript = transcript_phases(&human);
        for (address, block) in found.into_iter().take(MAX_RECIPIENTS) {
            let phase = transcript
                .get(&address.to_ascii_lowercase())
                .copied()
                .flatten()
                .or_else(|| phase_of(&block))
                .or(human_phase);
            let rcpt = self.finish_recipient(address, None, None, block, None, phase, "");
            report.recipients.push(rcpt);
        }
        true
    }

    /// A bounce forwarded by a person or a program: the bounce's header and body pasted (or quoted with
    /// `> `) into the text of this message, or kept after an mbox `From ` line. Read as a message of
    /// its own, once (a bounce inside it is not searched again).
    fn read_forwarded(&self) -> Option<Report> {
        if self.nested {
            return None;
        }
        let texts = self
            .parts
            .iter()
            .filter(|p| p.content_type.starts_with("text/") && !self.is_inside_original(p))
            .take(2);
        for p in texts {
            let text = p.text();
            let Some(inner) = embedded_message(&text) else {
                continue;
            };
            let Ok(root) = mime::parse(inner.as_bytes(), &self.limits) else {
                continue;
            };
            let r = Reader::new(&root, self.classifier, self.limits, true).read();
            if r.kind == ReportKind::Dsn && !r.recipients.is_empty() {
                return Some(r);
            }
        }
        None
    }

    /// The `To` addresses of a returned message kept inline in the text, after the line where
    /// [`cut_at_original`] cut it.
    fn inline_original_to(&self) -> Vec<String> {
        let full = self.text_parts();
        let human = cut_at_original(&full);
        let rest = &full[human.len()..];
        // Drop the marker line itself and blank lines.
        let rest = rest.split_once('\n').map_or("", |(_, r)| r).trim_start();
        if rest.is_empty() {
            return Vec::new();
        }
        match mime::parse(rest.as_bytes(), &self.limits) {
            Ok(m) => m.header("to").map(all_addresses).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// The human-readable text: the first text part that is not the returned message, cut where the
    /// returned message starts.
    fn human_text(&self) -> String {
        cut_at_original(&self.text_parts())
    }

    /// The text parts that are not the returned message, joined, uncut.
    fn text_parts(&self) -> String {
        let mut text = String::new();
        for p in &self.parts {
            if !p.children.is_empty() && p.content_type.starts_with("multipart/") {
                continue;
            }
            // A multipart whose boundary never appears is kept as text by the MIME reader.
            let unsplit = p.content_type.starts_with("multipart/") && p.children.is_empty();
            if unsplit
                || p.content_type.starts_with("text/") && p.content_type != "text/rfc822-headers"
            {
                // Parts under a returned message are not ours.
                if self.is_inside_original(p) {
                    continue;
                }
                let mut t = p.text();
                if p.content_type == "text/html" {
                    if !text.is_empty() {
                        continue;
                    }
                    t = strip_html(&t);
                }
                text.push_str(&t);
                text.push('\n');
                if text.len() > 64 * 1024 {
                    break;
                }
            }
        }
        text
    }

    fn is_inside_original(&self, target: &Part) -> bool {
        fn contains(p: &Part, target: &Part) -> bool {
            p.children
                .iter()
                .any(|c| std::ptr::eq(c, target) || contains(c, target))
        }
        self.parts.iter().any(|p| {
            matches!(
                p.content_type.as_str(),
                "message/rfc822"
                    | "message/global"
                    | "text/rfc822-headers"
                    | "message/rfc822-headers"
            ) && contains(p, target)
        })
    }

    // -- RFC 3834 ---------------------------------------------------------------------------------------

    fn is_auto_reply_strict(&self) -> bool {
        let subject = self
            .root
            .header("subject")
            .unwrap_or("")
            .to_ascii_lowercase();
        let auto = self
            .root
            .header("auto-submitted")
            .unwrap_or("")
            .to_ascii_lowercase();
        (auto.contains("auto-replied")
            || self.root.header("x-autoreply").is_some()
            || self.root.header("x-autorespond").is_some())
            && !subject.contains("deliver")
            && !subject.contains("fail")
            && !subject.contains("undeliver")
            && !subject.contains("return")
            && self.root.header("x-failed-recipients").is_none()
    }

    /// Whether the message comes from a mail system rather than a person: such a message is a report
    /// even when it says `Auto-Submitted: auto-replied` (Exim and others mark their bounces so).
    fn sent_by_mail_system(&self) -> bool {
        let from = self.root.header("from").unwrap_or("").to_ascii_lowercase();
        [
            "mailer-daemon",
            "mailer daemon",
            "mail-daemon",
            "maildaemon",
            "postmaster",
            "mail delivery",
        ]
        .iter()
        .any(|s| from.contains(s))
    }

    /// A `List-Unsubscribe` mailto request: the subject is the single word "unsubscribe" and the
    /// message does not come from a mail system.
    fn is_unsubscribe_request(&self) -> bool {
        let subject = self.root.header("subject").unwrap_or("").trim();
        subject.eq_ignore_ascii_case("unsubscribe") && !self.sent_by_mail_system()
    }

    fn is_auto_reply(&self) -> bool {
        if self.sent_by_mail_system() {
            return false;
        }
        if self.is_auto_reply_strict() {
            return true;
        }
        let subject = self
            .root
            .header("subject")
            .unwrap_or("")
            .to_ascii_lowercase();
        let precedence = self
            .root
            .header("precedence")
            .unwrap_or("")
            .to_ascii_lowercase();
        precedence.contains("auto_reply")
            || [
                "auto reply",
                "auto-reply",
                "autoreply",
                "automatic reply",
                "autorespon",
                "out of office",
                "out of the office",
                "vacation",
                "away from",
                "abwesenheit",
                "absence",
                "réponse automatique",
                "away until",
                "on leave",
            ]
            .iter()
            .any(|s| subject.contains(s))
    }
}

fn simple_recipient(address: String, reason: Reason) -> ReportRecipient {
    ReportRecipient {
        address,
        action: None,
        status: None,
        reply_code: None,
        diagnostic: String::new(),
        remote_mta: None,
        phase: None,
        reason,
        kind: reason.default_kind(),
        classification: None,
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|a| seen.insert(a.to_ascii_lowercase()));
}

// ---------------------------------------------------------------------------------------------------
// Fields.

/// `name: value` fields with folding, over the whole text (blank lines ignored).
fn fields(text: &str) -> Vec<(String, String)> {
    dsn_groups(text).into_iter().flatten().collect()
}

/// DSN field groups: separated by blank lines; a new `Final-Recipient` also starts a group.
fn dsn_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if !groups.last().is_some_and(|g| g.is_empty()) {
                groups.push(Vec::new());
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = groups.last_mut().and_then(|g| g.last_mut()) {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.is_empty() || name.contains(' ') || name.len() > 40 {
            continue;
        }
        let name = name.trim().to_ascii_lowercase();
        let g = groups.last_mut().expect("at least one group");
        if name == "final-recipient" && g.iter().any(|(n, _)| n == "final-recipient") {
            groups.push(Vec::new());
        }
        groups
            .last_mut()
            .expect("group")
            .push((name, value.trim().to_string()));
        if groups.len() > MAX_RECIPIENTS + 2 {
            break;
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

fn has_dsn_fields(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("final-recipient:")
        && (lower.contains("\nstatus:") || lower.contains("\naction:"))
}

/// `rfc822; a@b` → `a@b`.
fn address_field(value: &str) -> Option<String> {
    first_address(strip_type(value))
}

fn split_type(value: &str) -> (&str, &str) {
    match value.split_once(';') {
        Some((t, v)) if !t.contains(' ') && t.len() < 20 && !t.contains('@') => {
            (t.trim(), v.trim())
        }
        _ => ("", value.trim()),
    }
}

fn strip_type(value: &str) -> &str {
    split_type(value).1
}

fn find_status(s: &str) -> Option<EnhancedCode> {
    let b = s.as_bytes();
    (0..b.len()).find_map(|i| {
        if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.') {
            return None;
        }
        EnhancedCode::parse_prefix(&b[i..])
            .map(|(e, _)| e)
            .or_else(|| {
                // A code followed by punctuation ("5.1.1:" or "5.1.1)").
                let end = b[i..]
                    .iter()
                    .position(|c| !(c.is_ascii_digit() || *c == b'.'))
                    .map_or(b.len(), |n| i + n);
                if end > i + 4
                    && b.get(end).is_some_and(|c| {
                        matches!(c, b':' | b')' | b']' | b',' | b';' | b'>' | b'"')
                    })
                {
                    let cand = s[i..end].trim_end_matches('.');
                    EnhancedCode::parse(cand)
                } else {
                    None
                }
            })
    })
}

// ---------------------------------------------------------------------------------------------------
// Addresses.

fn is_addr_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-=/!#$&'*?^`{|}~".contains(c)
}

/// Every address in `s`, in order.
fn all_addresses(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices('@') {
        let mut start = i;
        while start > 0 && is_addr_char(bytes[start - 1] as char) {
            start -= 1;
        }
        let mut end = i + 1;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric()
                || bytes[end] == b'.'
                || bytes[end] == b'-'
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let local = s[start..i].trim_start_matches(['.', '-', '=', '/', '\'', '`']);
        let domain = s[i + 1..end].trim_end_matches(['.', '-']);
        if local.is_empty()
            || domain.is_empty()
            || !domain.contains('.')
            || local.len() > 64
            || domain.len() > 253
        {
            continue;
        }
        if domain.starts_with('.') || domain.contains("..") {
            continue;
        }
        out.push(format!("{local}@{}", domain.to_ascii_lowercase()));
        if out.len() > MAX_RECIPIENTS {
            break;
        }
    }
    out
}

fn first_address(s: &str) -> Option<String> {
    // Prefer the address in angle brackets.
    if let Some(open) = s.find('<')
        && let Some(close) = s[open..].find('>')
        && let Some(a) = all_addresses(&s[open + 1..open + close]).into_iter().next()
    {
        return Some(a);
    }
    all_addresses(s).into_iter().next()
}

fn is_role_sender(a: &str) -> bool {
    let l = a.to_ascii_lowercase();
    let local = l.split('@').next().unwrap_or("");
    matches!(
        local,
        "mailer-daemon"
            | "postmaster"
            | "mail-daemon"
            | "maildaemon"
            | "root"
            | "daemon"
            | "nobody"
            | "bounce"
            | "bounces"
            | "mailerdaemon"
    ) || local.starts_with("mailer-daemon")
}

// ---------------------------------------------------------------------------------------------------
// The human-readable text.

const ORIGINAL_MARKERS: &[&str] = &[
    "below this line is a copy of the message",
    "this is a copy of the message",
    "original message follows",
    "----- original message -----",
    "message headers follow",
    "the header of the original message is following",
    "------- returned message --------",
    "returned mail follows",
    "----- unsent message follows -----",
    "----- original message headers -----",
    "original message headers:",
    "--- original message ---",
    "content-type: message/rfc822",
    "------ this is a copy of your message",
    "------ a copy of the message, including all the headers",
    "your message reads (in part)",
    "--- the header of the original message",
    "original-envelope-id:",
    "------ original message ------",
    "----- message header follows -----",
    "-------original message-------",
    "---------- forwarded message ----------",
    "the original message was",
    "received: from",
    "return-path: <",
];

fn cut_at_original(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut cut = text.len();
    for m in ORIGINAL_MARKERS {
        // A marker at the very start cannot be where the returned message begins.
        let mut from = 0;
        while let Some(i) = lower[from..].find(m) {
            let at = from + i;
            let line_start = lower[..at].rfind('\n').map_or(0, |n| n + 1);
            let before = &lower[line_start..at];
            let starts_line = before
                .trim_matches(|c: char| {
                    c == '-' || c == ' ' || c == '=' || c == '*' || c == '_' || c == '|'
                })
                .is_empty();
            let header_marker = m.ends_with(':')
                || m.ends_with('<')
                || m.starts_with("content-type")
                || m.starts_with("received");
            if at > 40 && (!header_marker || starts_line && before.is_empty()) {
                cut = cut.min(line_start);
                break;
            }
            from = at + m.len();
        }
    }
    text[..cut].to_string()
}

fn strip_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    let lower = s.to_ascii_lowercase();
    let mut i = 0;
    let b = s.as_bytes();
    while i < b.len() {
        if !in_tag && b[i] == b'<' {
            in_tag = true;
            let tag = &lower[i..(i + 4).min(lower.len())];
            if tag.starts_with("<br")
                || tag.starts_with("<p")
                || tag.starts_with("<div")
                || tag.starts_with("<tr")
                || tag.starts_with("</p")
            {
                out.push('\n');
            }
            i += 1;
            continue;
        }
        if in_tag {
            if b[i] == b'>' {
                in_tag = false;
            }
            i += 1;
            continue;
        }
        let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
}

/// The human text's paragraphs that name an address, as (address, diagnostic) pairs in order.
fn text_blocks(human: &str, exclude: &[String]) -> Vec<(String, String)> {
    let lines: Vec<&str> = human.lines().collect();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let addrs: Vec<String> = all_addresses(line)
            .into_iter()
            .filter(|a| !exclude.iter().any(|e| e.eq_ignore_ascii_case(a)) && !is_role_sender(a))
            .collect();
        if addrs.is_empty() {
            i += 1;
            continue;
        }
        let trimmed = line.trim();
        // "A message sent by <sender> could not be delivered" (Exim) names the sender, not a recipient.
        let previous = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_ascii_lowercase());
        if previous.is_some_and(|p| p.ends_with("sent by")) {
            i += 1;
            continue;
        }
        // Lines that introduce a recipient: the address leads the line (`<a@b>:`, `a@b`, `RCPT TO:<a@b>`,
        // `To: a@b`, `Failed recipient: a@b`), or the line is an error line naming it.
        let lead = strip_result_code(trimmed)
            .trim_start_matches(['<', '"', '\'', '(', '*', '-', '>', ' ', '\t'])
            .to_ascii_lowercase();
        let addr0 = addrs[0].to_ascii_lowercase();
        let leads = lead.starts_with(&addr0)
            || lead.starts_with(addr0.split('@').next().unwrap_or("\u{0}"))
                && lead.contains(&addr0[addr0.find('@').unwrap_or(0)..]);
        let intro = leads
            || [
                "rcpt to",
                "to:",
                "recipient",
                "address:",
                "addressee",
                "original-recipient",
                "failed",
                "could not be delivered to",
                "delivering your mail to",
                "deliver your message to",
                "delivery to",
                "unable to deliver",
                "following address",
                "user:",
                "mailbox:",
                "for <",
                "envoy",
                "destinataire",
                "an ",
                "the ",
            ]
            .iter()
            .any(|k| {
                lead.starts_with(k)
                    || lead.contains(&format!("{k} <{addr0}"))
                    || lead.contains(&format!("{k} {addr0}"))
            });
        let has_error = has_error_words(trimmed);
        if !(intro || has_error) {
            i += 1;
            continue;
        }
        // The block: this line and what follows until the next line led by another address.
        let mut block = String::new();
        let mut j = i;
        while j < lines.len() {
            let l = lines[j];
            if j > i {
                let lt = strip_result_code(l.trim_start())
                    .trim_start_matches(['<', '"', '(', '*', '-', '>', ' '])
                    .to_ascii_lowercase();
                let next_addr = all_addresses(l).into_iter().find(|a| {
                    !addrs.iter().any(|b| b.eq_ignore_ascii_case(a))
                        && !exclude.iter().any(|e| e.eq_ignore_ascii_case(a))
                        && !is_role_sender(a)
                });
                if let Some(n) = next_addr {
                    // Led by the address, or introduced the way this block was ("Recipient address:").
                    let prefix = |l: &str, a: &str| {
                        let l = l.trim().to_ascii_lowercase();
                        l.find(&a.to_ascii_lowercase())
                            .map(|at| l[..at].trim_end_matches(['<', ' ']).to_string())
                    };
                    let same_intro = prefix(l, &n)
                        .is_some_and(|p| p.len() >= 3 && prefix(line, &addrs[0]) == Some(p));
                    if lt.starts_with(&n.to_ascii_lowercase()) || same_intro {
                        break;
                    }
                }
            }
            block.push_str(l.trim());
            block.push('\n');
            if block.len() > 2 * MAX_DIAGNOSTIC {
                break;
            }
            j += 1;
        }
        let mut block = focus_on_reply(&block);
        // If the block has no error text, look at the paragraph before (error first, address after).
        if !has_error_words(&block) {
            let mut para = error_paragraph(&lines[..i].join("\n"));
            // The lines just above the address, in its paragraph ("User not listed in ...\n<addr>").
            let above: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .take_while(|l| !l.trim().is_empty())
                .take(4)
                .map(|l| l.trim())
                .collect();
            let above = above.into_iter().rev().collect::<Vec<_>>().join("\n");
            if !above.is_empty() && !para.contains(&above) {
                para = if para.is_empty() {
                    above
                } else {
                    format!("{para}\n{above}")
                };
            }
            if !para.is_empty() {
                block = format!("{para}\n{block}");
            }
        }
        for a in addrs.iter().take(1) {
            if !out.iter().any(|(x, _)| x.eq_ignore_ascii_case(a)) {
                out.push((a.clone(), block.clone()));
            }
        }
        // Other addresses listed on the same line share the block.
        for a in addrs.iter().skip(1) {
            if leads
                && !out.iter().any(|(x, _)| x.eq_ignore_ascii_case(a))
                && trimmed.split_whitespace().count() <= addrs.len() * 2
            {
                out.push((a.clone(), block.clone()));
            }
        }
        i = j.max(i + 1);
        if out.len() >= MAX_RECIPIENTS {
            break;
        }
    }
    // An address whose block is only itself, when some other block has the error: share it.
    let with_error: Option<String> = out
        .iter()
        .find(|(_, b)| has_error_words(b))
        .map(|(_, b)| b.clone());
    if let Some(err) = with_error {
        for (_, b) in out.iter_mut() {
            if !has_error_words(b) {
                *b = format!("{b}{err}");
            }
        }
    }
    out
}

/// Most lines searched for the start of a message embedded in a text.
const MAX_EMBED_SCAN: usize = 2000;

/// The text of a message embedded in `text` (a forwarded or pasted bounce), from its first header line
/// on, with one level of `>` quoting removed. The header must have at least three fields and look like a
/// mail system's report (sender, subject or content type).
fn embedded_message(text: &str) -> Option<String> {
    let raw: Vec<&str> = text.lines().take(MAX_EMBED_SCAN).collect();
    let quoted = raw.iter().filter(|l| l.starts_with('>')).count();
    let lines: Vec<&str> = if quoted >= 5 {
        raw.iter()
            .map(|l| match l.strip_prefix('>') {
                Some(rest) => rest.strip_prefix(' ').unwrap_or(rest),
                None => l,
            })
            .collect()
    } else {
        raw
    };
    let field = |l: &str| -> Option<String> {
        let (name, _) = l.split_once(':')?;
        (!name.is_empty()
            && name.len() <= 40
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then(|| name.to_ascii_lowercase())
    };
    let mut k = 0;
    while k < lines.len() {
        let start = k;
        let mut first = k;
        if lines[k].starts_with("From ") && field(lines[k]).is_none() {
            // An mbox separator line before the header.
            first = k + 1;
        }
        let mut names = Vec::new();
        let mut report_like = false;
        let mut j = first;
        while j < lines.len() {
            let l = lines[j];
            if l.starts_with(' ') || l.starts_with('\t') {
                if names.is_empty() {
                    break;
                }
                j += 1;
                continue;
            }
            let Some(name) = field(l) else { break };
            let value = l[name.len() + 1..].to_ascii_lowercase();
            report_like |= match name.as_str() {
                "from" => [
                    "mailer-daemon",
                    "postmaster",
                    "mail delivery",
                    "mail-daemon",
                ]
                .iter()
                .any(|s| value.contains(s)),
                "content-type" => value.contains("multipart/report"),
                "subject" => [
                    "undeliver",
                    "returned mail",
                    "delivery status",
                    "failure",
                    "failed",
                ]
                .iter()
                .any(|s| value.contains(s)),
                _ => false,
            };
            names.push(name);
            j += 1;
        }
        let ends_header = j < lines.len() && lines[j].trim().is_empty();
        if names.len() >= 3 && report_like && ends_header && start > 0 {
            let mut out = lines[first..].join("\n");
            out.push('\n');
            return Some(out);
        }
        k = j.max(k + 1);
    }
    None
}

/// A Sendmail result line `554 <a@b>... reason` is led by its address: drops the leading code.
fn strip_result_code(line: &str) -> &str {
    let b = line.as_bytes();
    if b.len() > 5
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b' '
        && b[4] == b'<'
        && line.contains(">...")
    {
        &line[4..]
    } else {
        line
    }
}

/// The commands recipients' failures answered in an SMTP transcript (Sendmail's `... while talking to
/// host:` / `>>> RCPT To:<a@b>` / `<<< 550 ...` / `550 <a@b>... User unknown`): for each address (lower
/// case), the last `>>>` command above the first line naming it, within its `while talking to`
/// section and at most 40 lines up. One pass over the text, so a report with many recipients stays
/// linear.
fn transcript_phases(text: &str) -> HashMap<String, Option<Phase>> {
    let lines: Vec<&str> = text.lines().take(MAX_EMBED_SCAN).collect();
    let mut out: HashMap<String, Option<Phase>> = HashMap::new();
    // The command in force: the line it was sent on and the phase it stands for.
    let mut command: Option<(usize, Option<Phase>)> = None;
    for (i, l) in lines.iter().enumerate() {
        let a = l.trim_start();
        if let Some(cmd) = a.strip_prefix(">>>") {
            let mut phase = command_phase(cmd);
            if phase == Some(Phase::Data) && pipelined_rcpt_failure(&lines[i + 1..]) {
                // With PIPELINING the RCPT replies are read after DATA was sent: a DATA refused with
                // "503 need RCPT" means the recipients were refused at RCPT.
                phase = Some(Phase::Rcpt);
            }
            command = Some((i, phase));
            continue;
        }
        let lower = a.to_ascii_lowercase();
        if lower.is_empty() || lower.contains("while talking to") || is_mailer_line(a) {
            command = None;
        }
        if !a.contains('@') {
            continue;
        }
        let in_force = command.filter(|(at, _)| i - at <= 40).map(|(_, p)| p);
        for addr in all_addresses(a) {
            if let Some(p) = in_force {
                out.entry(addr.to_ascii_lowercase()).or_insert(p);
            }
        }
        if out.len() >= MAX_RECIPIENTS {
            break;
        }
    }
    out
}

/// A Sendmail mailer status line about a host it did not talk to: `550 example.org (smtp)... reason`.
fn is_mailer_line(l: &str) -> bool {
    let b = l.as_bytes();
    b.len() > 5
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b' '
        && l[4..].split_once(' ').is_some_and(|(host, rest)| {
            !host.contains('@') && rest.starts_with('(') && rest.contains(")...")
        })
}

/// Whether a transcript section (from a `>>> DATA` on) holds the `503` that answers DATA when every
/// pipelined RCPT was refused.
fn pipelined_rcpt_failure(section: &[&str]) -> bool {
    section
        .iter()
        .take(20)
        .take_while(|l| !l.to_ascii_lowercase().contains("while talking to"))
        .any(|l| {
            let l = l.trim_start().trim_start_matches("<<<").trim_start();
            let lower = l.to_ascii_lowercase();
            l.starts_with("503") && ["rcpt", "recipient"].iter().any(|k| lower.contains(k))
        })
}

/// The phase of an SMTP command line as sent (`RCPT To:<a@b>`, `MAIL From:<>`, `DATA`, `.`).
fn command_phase(cmd: &str) -> Option<Phase> {
    let c = cmd.trim().to_ascii_uppercase();
    let word = c.split([' ', ':']).next().unwrap_or("");
    Some(match word {
        "RCPT" => Phase::Rcpt,
        "MAIL" => Phase::Mail,
        "DATA" | "BDAT" => Phase::Data,
        "." => Phase::EndOfData,
        "EHLO" | "HELO" | "LHLO" => Phase::Ehlo,
        "STARTTLS" => Phase::StartTls,
        "AUTH" => Phase::Auth,
        "QUIT" => Phase::Quit,
        "RSET" => Phase::Rset,
        _ => return None,
    })
}

fn continues_error(next: &str) -> bool {
    let t = next.trim_start();
    t.starts_with('(')
        || t.starts_with("in reply")
        || t.starts_with("Remote host said")
        || t.starts_with("host ")
}

fn has_error_words(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    let (code, status) = reply_codes(s);
    code.is_some_and(|c| c >= 400)
        || status.is_some_and(|e| e.class >= 4)
        || [
            "unknown",
            "not found",
            "no such",
            "rejected",
            "refused",
            "denied",
            "does not exist",
            "doesn't exist",
            "invalid",
            "error",
            "failed",
            "failure",
            "full",
            "quota",
            "disabled",
            "unavailable",
            "blocked",
            "timed out",
            "timeout",
            "unable",
            "not accept",
            "couldn't",
            "could not",
            "cannot",
            "can't",
            "expired",
            "too many",
            "exceeded",
            "permanent",
            "temporary",
            "unreachable",
            "spam",
            "policy",
            "illegal",
            "not allowed",
            "suspended",
            "loop",
            "inactive",
            "not permitted",
            "relay",
            "bad ",
            "doesn't have",
            "does not have",
            "giving up",
            "deferred",
        ]
        .iter()
        .any(|k| l.contains(k))
}

/// From a block of text, the paragraph holding the SMTP reply (a line with a reply or status code), with
/// the lines before it in the same paragraph; the whole block when there is none.
fn focus_on_reply(block: &str) -> String {
    let paras: Vec<&str> = block.split("\n\n").collect();
    for (n, p) in paras.iter().enumerate() {
        let (code, status) = reply_codes(p);
        if code.is_some() || status.is_some_and(|s| s.class != 2) {
            // Keep the address line for context when the reply is in a later paragraph.
            let head = if n > 0 {
                paras[0].lines().next().unwrap_or("")
            } else {
                ""
            };
            let mut out = String::new();
            if !head.is_empty() {
                out.push_str(head);
                out.push('\n');
            }
            out.push_str(p);
            // Continuation paragraphs of a multi-line reply ("(in reply to ...)").
            for q in paras.iter().skip(n + 1).take(1) {
                if continues_error(q) {
                    out.push('\n');
                    out.push_str(q);
                }
            }
            return out;
        }
    }
    block.trim_end().to_string()
}

/// The first paragraph that reads like an error.
fn error_paragraph(text: &str) -> String {
    let mut best = String::new();
    for para in text.split("\n\n") {
        let p = para.trim();
        if p.is_empty() {
            continue;
        }
        let (code, status) = reply_codes(p);
        if code.is_some() || status.is_some() {
            return p.chars().take(MAX_DIAGNOSTIC).collect();
        }
        if best.is_empty() && has_error_words(p) {
            best = p.chars().take(MAX_DIAGNOSTIC).collect();
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------------
// Diagnostics.

/// Joins lines, drops the type prefix and the repeated codes of multi-line replies
/// (`550-5.7.26 text` / `550 5.7.26 text`).
fn clean_diagnostic(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut first_code: Option<&str> = None;
    for (n, line) in s.lines().enumerate() {
        let mut l = line.trim();
        if n == 0 {
            l = strip_type_prefix(l);
        }
        let b = l.as_bytes();
        if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && (b[3] == b'-' || b[3] == b' ') {
            let code = &l[..3];
            if first_code == Some(code) {
                l = l[4..].trim_start();
                if let Some((_, n)) = EnhancedCode::parse_prefix(l.as_bytes()) {
                    l = l[n..].trim_start();
                }
            } else if first_code.is_none() {
                first_code = Some(code);
                if b[3] == b'-' {
                    // Keep "550 5.7.26 text" shape for the first line.
                    out.push_str(code);
                    out.push(' ');
                    l = &l[4..];
                }
            }
        }
        if l.is_empty() {
            continue;
        }
        if !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(l);
        if out.len() > MAX_DIAGNOSTIC {
            let mut cut = MAX_DIAGNOSTIC;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            break;
        }
    }
    // Codes repeated inside joined lines ("... multiple 550 5.7.1 addresses ...").
    if let Some(code) = first_code {
        // Where the first reply starts: the text before it (an address, "host ... said:") is kept.
        let start = if out.starts_with(code) {
            0
        } else {
            match out
                .find(&format!(" {code} "))
                .or(out.find(&format!(" {code}-")))
            {
                Some(i) => i + 1,
                None => return out,
            }
        };
        let status = EnhancedCode::parse_prefix(out.get(start + 4..).unwrap_or("").as_bytes())
            .map(|(e, _)| e.to_string());
        let mut head = out
            .len()
            .min(start + 4 + status.as_ref().map_or(0, |s| s.len() + 1));
        while !out.is_char_boundary(head) {
            head -= 1;
        }
        let (first, rest) = out.split_at(head);
        let mut rest = rest.to_string();
        for sep in ["-", " "] {
            if let Some(st) = &status {
                rest = rest.replace(&format!(" {code}{sep}{st} "), " ");
            }
            rest = rest.replace(&format!(" {code}{sep}"), " ");
        }
        out = format!("{first}{rest}");
    }
    out
}

/// A relay's category label around the receiver's own reply, as Amazon SES writes it:
/// `5.1.0 - Unknown address error 550-'5.7.1 <a@b>... Access denied' (delivery attempts: 0)`. The
/// quoted reply is what the receiver said; it is kept, the label dropped.
fn unwrap_relayed_reply(diag: &str) -> String {
    let Some((status, rest)) = diag.split_once(" - ") else {
        return diag.to_string();
    };
    if EnhancedCode::parse(status.trim()).is_none() {
        return diag.to_string();
    }
    let b = rest.as_bytes();
    let quoted = (3..b.len()).find(|&i| {
        b[i] == b'\''
            && (b[i - 1] == b'-' || b[i - 1] == b' ')
            && i >= 4
            && b[i - 4..i - 1].iter().all(u8::is_ascii_digit)
            && matches!(b[i - 4], b'4' | b'5')
            && (i == 4 || b[i - 5] == b' ')
    });
    let Some(q) = quoted else {
        return diag.to_string();
    };
    let inner = &rest[q + 1..];
    let Some(end) = inner.rfind('\'') else {
        return diag.to_string();
    };
    format!("{} {}", &rest[q - 4..q - 1], inner[..end].trim())
}

fn strip_type_prefix(l: &str) -> &str {
    for t in ["smtp;", "SMTP;", "Smtp;"] {
        if let Some(rest) = l.strip_prefix(t) {
            return rest.trim_start();
        }
    }
    l
}

/// The first SMTP reply code (4xx/5xx, or 2xx at the start) and enhanced status code in a text.
fn reply_codes(s: &str) -> (Option<u16>, Option<EnhancedCode>) {
    let b = s.as_bytes();
    let mut code = None;
    let mut positive = None;
    let mut status = None;
    let mut i = 0;
    while i < b.len() && (code.is_none() || status.is_none()) {
        let boundary = i == 0
            || matches!(
                b[i - 1],
                b' ' | b'\t' | b'\n' | b':' | b'(' | b'[' | b'"' | b'<' | b'=' | b'#'
            );
        if boundary {
            if status.is_none()
                && let Some(e) = find_status_at(b, i)
            {
                status = Some(e);
                i += 5;
                continue;
            }
            if code.is_none()
                && i + 3 <= b.len()
                && (b[i] == b'4' || b[i] == b'5' || b[i] == b'2' && i == 0)
                && b[i + 1].is_ascii_digit()
                && b[i + 2].is_ascii_digit()
                && matches!(b.get(i + 3), None | Some(b' ') | Some(b'-') | Some(b'\n'))
            {
                let c = u16::from(b[i] - b'0') * 100
                    + u16::from(b[i + 1] - b'0') * 10
                    + u16::from(b[i + 2] - b'0');
                // Years, sizes and ports look like codes too: only real reply codes. A leading 2xx
                // (a greeting quoted before the failure) gives way to a later 4xx/5xx.
                if (b[i + 1] - b'0') <= 5 {
                    if b[i] == b'2' {
                        positive = Some(c);
                    } else {
                        code = Some(c);
                    }
                }
                i += 3;
                continue;
            }
        }
        i += 1;
    }
    (code.or(positive), status)
}

fn find_status_at(b: &[u8], i: usize) -> Option<EnhancedCode> {
    if !matches!(b.get(i), Some(b'2' | b'4' | b'5')) || b.get(i + 1) != Some(&b'.') {
        return None;
    }
    let end = b[i..]
        .iter()
        .position(|c| !(c.is_ascii_digit() || *c == b'.'))
        .map_or(b.len(), |n| i + n);
    let cand = std::str::from_utf8(&b[i..end]).ok()?.trim_end_matches('.');
    if cand.matches('.').count() != 2 {
        return None;
    }
    EnhancedCode::parse(cand)
}

fn phase_of(s: &str) -> Option<Phase> {
    let l = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let pats: &[(&str, Phase)] = &[
        ("end of data", Phase::EndOfData),
        ("final data", Phase::EndOfData),
        ("after data", Phase::EndOfData),
        ("in reply to data", Phase::Data),
        ("for text command", Phase::EndOfData),
        // "RCPT TO: <a@b>" alone may be an envelope summary ("Message details: MAIL FROM: ... RCPT TO:
        // ..."), not the command that failed.
        ("in reply to rcpt", Phase::Rcpt),
        ("after rcpt", Phase::Rcpt),
        (">>> rcpt", Phase::Rcpt),
        ("our rcpt to", Phase::Rcpt),
        ("does not like recipient", Phase::Rcpt),
        ("rcpt to:<", Phase::Rcpt),
        ("rcpt to: <", Phase::Rcpt),
        ("rcpt command", Phase::Rcpt),
        ("smtp:rcpt", Phase::Rcpt),
        ("rcpt response", Phase::Rcpt),
        ("rcpt to response", Phase::Rcpt),
        ("in reply to mail", Phase::Mail),
        ("after mail", Phase::Mail),
        (">>> mail", Phase::Mail),
        ("mail from:<", Phase::Mail),
        ("mail from: <", Phase::Mail),
        ("rcpt_to", Phase::Rcpt),
        ("[rcpt", Phase::Rcpt),
        ("mail_from", Phase::Mail),
        ("in reply to helo", Phase::Ehlo),
        ("in reply to ehlo", Phase::Ehlo),
        ("after helo", Phase::Ehlo),
        ("after ehlo", Phase::Ehlo),
        ("after initial connection", Phase::Greeting),
        ("refused to talk to me", Phase::Greeting),
        ("greeting", Phase::Greeting),
        ("starttls", Phase::StartTls),
    ];
    // The earliest mention wins: "after RCPT TO ... after end of data" is about the RCPT.
    pats.iter()
        .filter_map(|(p, ph)| l.find(p).map(|i| (i, *ph)))
        .min_by_key(|(i, _)| *i)
        .map(|(_, ph)| ph)
}

fn has_network_text(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    [
        "connection refused",
        "no route to host",
        "network is unreachable",
        "connection timed out",
        "host not found, try again",
        "lost connection",
    ]
    .iter()
    .any(|k| l.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(s: &str) -> Report {
        parse(s.as_bytes(), &Classifier::default_rules()).unwrap()
    }

    #[test]
    fn standard_dsn() {
        let r = rep(
            "From: MAILER-DAEMON@x.example\nSubject: Undelivered Mail Returned to Sender\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\n<a@example.org>: host mx.example.org[192.0.2.1] said: 550 5.1.1 <a@example.org>:\n    Recipient address rejected: User unknown (in reply to RCPT TO command)\n\n--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; x.example\n\nFinal-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\nRemote-MTA: dns; mx.example.org\nDiagnostic-Code: smtp; 550 5.1.1 <a@example.org>: Recipient address\n    rejected: User unknown\n\n--B\nContent-Type: message/rfc822\n\nMessage-ID: <m1@x.example>\nTo: a@example.org\n\nhi\n--B--\n",
        );
        assert_eq!(r.kind, ReportKind::Dsn);
        assert_eq!(r.recipients.len(), 1);
        let a = &r.recipients[0];
        assert_eq!(a.address, "a@example.org");
        assert_eq!(a.reason, Reason::UserUnknown);
        assert_eq!(a.phase, Some(Phase::Rcpt));
        assert_eq!(a.reply_code, Some(550));
        assert_eq!(a.status.map(|s| s.to_string()).as_deref(), Some("5.1.1"));
        assert_eq!(r.original_message_id.as_deref(), Some("<m1@x.example>"));
    }

    #[test]
    fn qmail_text_bounce() {
        let r = rep(
            "From: MAILER-DAEMON@mx.example.jp\nSubject: failure notice\n\nHi. This is the qmail-send program at mx.example.jp.\nI'm afraid I wasn't able to deliver your message to the following addresses.\n\n<kijitora@example.ne.jp>:\n192.0.2.1 does not like recipient.\nRemote host said: 550 5.2.2 <kijitora@example.ne.jp>... Mailbox Full\nGiving up on 192.0.2.1.\n\n--- Below this line is a copy of the message.\n\nFrom: neko@example.jp\nTo: kijitora@example.ne.jp\n\nhi\n",
        );
        assert_eq!(r.kind, ReportKind::Dsn);
        assert_eq!(r.recipients.len(), 1);
        assert_eq!(r.recipients[0].address, "kijitora@example.ne.jp");
        assert_eq!(r.recipients[0].reason, Reason::MailboxFull);
    }

    #[test]
    fn arf_and_autoreply_and_plain() {
        let r = rep(
            "From: fbl@example.net\nSubject: complaint\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\nContent-Type: text/plain\n\nreport\n--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: x/1\nVersion: 1\nOriginal-Rcpt-To: <u@example.com>\n\n--b\nContent-Type: text/rfc822-headers\n\nMessage-ID: <orig@x>\nTo: u@example.com\n--b--\n",
        );
        assert_eq!(r.kind, ReportKind::Arf);
        assert_eq!(r.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(r.recipients[0].address, "u@example.com");
        assert_eq!(r.original_message_id.as_deref(), Some("<orig@x>"));
        let r = rep(
            "From: Boss <boss@example.com>\nSubject: Out of Office: hello\nAuto-Submitted: auto-replied\n\nI am away.\n",
        );
        assert_eq!(r.kind, ReportKind::AutoReply);
        assert_eq!(r.recipients[0].reason, Reason::Vacation);
        let r = rep("From: friend@example.com\nSubject: lunch?\n\nSee you at noon.\n");
        assert_eq!(r.kind, ReportKind::NotABounce);
        assert!(r.recipients.is_empty());
    }

    #[test]
    fn multi_line_reply_is_joined() {
        assert_eq!(
            clean_diagnostic(
                "550-5.7.26 Unauthenticated email\n550-5.7.26 is not accepted\n550 5.7.26 https://x"
            ),
            "550 5.7.26 Unauthenticated email is not accepted https://x"
        );
        assert_eq!(
            reply_codes("host x said: 550 5.1.1 nope"),
            (Some(550), EnhancedCode::new(5, 1, 1))
        );
        assert_eq!(reply_codes("in 1999 at 10:00"), (None, None));
    }

    #[test]
    fn auto_submitted_bounce_from_the_mail_system_is_a_report() {
        let r = rep(
            "From: Mail Delivery System <mailer-daemon@mx.example.net>\nAuto-Submitted: auto-replied\nSubject: Warning: message 1abc delayed 24 hours\n\nThe address to which the message has not yet been delivered is:\n\n  rcpt@example.org\n    host mx.example.org [192.0.2.9]\n    Delay reason: SMTP error from remote mail server after RCPT TO:<rcpt@example.org>:\n    450 4.2.2 Mailbox full\n",
        );
        assert_eq!(r.kind, ReportKind::Dsn);
        assert_eq!(r.recipients[0].address, "rcpt@example.org");
        assert_eq!(r.recipients[0].reply_code, Some(450));
        assert_eq!(r.recipients[0].reason, Reason::MailboxFull);
    }

    #[test]
    fn reply_code_after_context_is_kept() {
        assert_eq!(
            clean_diagnostic(
                "a@b.example host mx [192.0.2.1]\nDelay reason: after MAIL FROM:<x@y>:\n450 4.7.1 go away\n450 4.7.1 now"
            ),
            "a@b.example host mx [192.0.2.1] Delay reason: after MAIL FROM:<x@y>: 450 4.7.1 go away now"
        );
    }

    #[test]
    fn forwarded_bounce_is_read() {
        // Quoted with "> " by a mail client.
        let r = rep(
            "From: someone@example.jp\nTo: helpdesk@example.jp\nSubject: Fwd: see transcript\n\nPlease look at this.\n\nBegin forwarded message:\n\n> From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.jp>\n> To: <someone@example.jp>\n> Subject: Returned mail: see transcript for details\n>\n>    ----- The following addresses had permanent fatal errors -----\n> <gone@example.com>\n>     (reason: 550 5.1.1 <gone@example.com>... User unknown)\n>\n>    ----- Transcript of session follows -----\n> >>> RCPT To:<gone@example.com>\n> <<< 550 5.1.1 <gone@example.com>... User unknown\n",
        );
        assert_eq!(r.kind, ReportKind::Dsn);
        assert_eq!(r.recipients.len(), 1);
        assert_eq!(r.recipients[0].address, "gone@example.com");
        assert_eq!(r.recipients[0].reason, Reason::UserUnknown);
        // Kept after an mbox separator in a notification's text.
        let r = rep(
            "From: MAILER-DAEMON@relay.example.net\nTo: admin@example.net\nSubject: Undelivered Mail Returned to Sender\n\nA copy of the report follows.\n\n------\nFrom MAILER-DAEMON  Thu Apr 29 23:34:45 2021\nFrom: MAILER-DAEMON@relay.example.net (Mail Delivery System)\nSubject: Undelivered Mail Returned to Sender\nTo: admin@example.net\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"XX.1/relay\"\n\n--XX.1/relay\nContent-Type: text/plain\n\nsorry\n\n--XX.1/relay\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; relay.example.net\n\nFinal-Recipient: rfc822; full@example.org\nAction: failed\nStatus: 5.2.2\nDiagnostic-Code: smtp; 552 5.2.2 Mailbox full\n\n--XX.1/relay--\n",
        );
        assert_eq!(r.recipients.len(), 1);
        assert_eq!(r.recipients[0].address, "full@example.org");
        assert_eq!(r.recipients[0].reason, Reason::MailboxFull);
        assert!(embedded_message("no header here\n> just: a quote\n").is_none());
    }

    #[test]
    fn error_line_above_the_address() {
        let r = rep(
            "From: POSTMASTER@gw.example.com\nTo: a@example.com\nSubject: Undeliverable message\n\n------- Failure Reasons  --------\n\nUser  not listed in public Name & Address Book\nkuro@example.com\n",
        );
        assert_eq!(r.recipients[0].address, "kuro@example.com");
        assert_eq!(r.recipients[0].reason, Reason::UserUnknown);
    }

    #[test]
    fn status_comment_is_read() {
        let r = rep(
            "From: MAILER-DAEMON@mta.example.net\nSubject: Delivery failure\nContent-Type: multipart/report; report-type=delivery-status; boundary=R\n\n--R\nContent-Type: message/delivery-status\n\nReporting-MTA: dns;mta.example.net\n\nFinal-Recipient: rfc822;off@example.jp\nAction: failed\nStatus: 5.2.1 (mailbox disabled, not accepting messages)\nDiagnostic-Code: smtp;550 5.2.1 <off@example.jp>... User Unknown\n\n--R--\n",
        );
        assert_eq!(r.recipients[0].reason, Reason::Suspend);
        assert_eq!(
            r.recipients[0].diagnostic,
            "550 5.2.1 <off@example.jp>... User Unknown"
        );
    }

    #[test]
    fn recipients_introduced_alike_are_separate() {
        let r = rep(
            "From: MAILER-DAEMON@mta.example.net\nSubject: Delivery failure\n\nYour message cannot be delivered to the following recipients:\n\n  Recipient address: one@example.org\n  Reason: Remote SMTP server has rejected address\n  Diagnostic code: smtp; 550 5.2.2 Mailbox full\n  Recipient address: two@example.org\n  Reason: Remote SMTP server has rejected address\n  Diagnostic code: smtp; 550 5.1.1 User unknown\n",
        );
        assert_eq!(r.recipients.len(), 2);
        assert_eq!(r.recipients[0].reason, Reason::MailboxFull);
        assert_eq!(r.recipients[1].address, "two@example.org");
        assert_eq!(r.recipients[1].reason, Reason::UserUnknown);
    }

    #[test]
    fn sendmail_v5_transcript() {
        let r = rep(
            "From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.com>\nSubject: Returned mail: User unknown\nTo: me@example.com\n\n   ----- Transcript of session follows -----\n550 gone.example (smtp)... 550 Host unknown\n554 <a@gone.example>... 550 Host unknown (Authoritative answer from name server)\nWhile talking to mx.example.net:\n>>> RCPT To:<b@example.net>\n<<< 550 <b@example.net>... User unknown\n550 <b@example.net>... User unknown\n\n   ----- Unsent message follows -----\nFrom: me@example.com\nTo: a@gone.example, b@example.net\n\nhi\n",
        );
        assert_eq!(r.recipients.len(), 2);
        assert_eq!(r.recipients[0].address, "a@gone.example");
        assert_eq!(r.recipients[0].reason, Reason::HostUnknown);
        assert_eq!(r.recipients[1].address, "b@example.net");
        assert_eq!(r.recipients[1].phase, Some(Phase::Rcpt));
        assert_eq!(r.recipients[1].reason, Reason::UserUnknown);
    }

    #[test]
    fn transcript_commands() {
        let t = "... while talking to mx.example.org.:\n>>> DATA\n<<< 550 5.1.1 <x@example.org>... User unknown\n550 5.1.1 <x@example.org>... User unknown\n<<< 503 5.0.0 Need RCPT (recipient)\n";
        assert_eq!(transcript_phases(t)["x@example.org"], Some(Phase::Rcpt));
        let t = "... while talking to mx.example.org.:\n>>> DATA\n<<< 554 5.7.1 <x@example.org>... Message refused\n554 5.7.1 <x@example.org>... Message refused\n";
        assert_eq!(transcript_phases(t)["x@example.org"], Some(Phase::Data));
        let t = ">>> MAIL From:<me@example.com>\n<<< 501 go away\n550 example.org (smtp)... 550 Host unknown\n554 <x@example.org>... 550 Host unknown\n";
        assert_eq!(transcript_phases(t).get("x@example.org"), None);
        assert!(is_mailer_line("550 example.org (smtp)... 550 Host unknown"));
        assert!(!is_mailer_line("550 <x@example.org>... User unknown"));
    }

    #[test]
    fn envelope_summary_is_not_the_failed_command() {
        assert_eq!(
            phase_of("Message details:\n  MAIL FROM: a@example.com\n  RCPT TO: b@example.net\n"),
            None
        );
        assert_eq!(
            phase_of("550 5.1.1 unknown (in reply to RCPT TO command)"),
            Some(Phase::Rcpt)
        );
        assert_eq!(
            phase_of("SMTP error from remote mail server after MAIL FROM:<a@b.example> SIZE=10:"),
            Some(Phase::Mail)
        );
        assert_eq!(
            phase_of(
                "Sorry, no SMTP connection got far enough; most progress was RCPT TO response"
            ),
            Some(Phase::Rcpt)
        );
    }

    #[test]
    fn bounce_recognised_by_its_body() {
        let r = rep(
            "From: post_master@sms.example.com\nTo: me@example.com\nSubject: Re: hello\n\nError: Invalid user address\n\nError message below:\n550 - Requested action not taken: no such user here\n\nMessage details:\n  Subject: hello\n  MAIL FROM: me@example.com\n  RCPT TO: 5550100@sms.example.com\n",
        );
        assert_eq!(r.kind, ReportKind::Dsn);
        assert_eq!(r.recipients[0].address, "5550100@sms.example.com");
        assert_eq!(r.recipients[0].reply_code, Some(550));
        assert_eq!(r.recipients[0].phase, None);
    }

    #[test]
    fn recipient_from_the_inline_returned_message() {
        let r = rep(
            "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>\nSubject: Returned mail: Cannot send message for 5 days\nTo: me@example.com\n\n   ----- Transcript of session follows -----\n421 far.example (smtp)... Deferred: Connection timed out during user open with far.example\n\n   ----- Unsent message follows -----\nReceived: by mx.example.com; id 1\nFrom: me@example.com\nTo: you@far.example\nSubject: hi\n\nhello\n",
        );
        assert_eq!(r.recipients.len(), 1);
        assert_eq!(r.recipients[0].address, "you@far.example");
        assert_eq!(r.recipients[0].reply_code, Some(421));
    }

    #[test]
    fn relayed_reply_is_unwrapped() {
        assert_eq!(
            unwrap_relayed_reply(
                "5.1.0 - Unknown address error 550-'5.7.1 <b@x.example>... Access denied' (delivery attempts: 0)"
            ),
            "550 5.7.1 <b@x.example>... Access denied"
        );
        assert_eq!(
            unwrap_relayed_reply("550 5.1.1 - no quote here"),
            "550 5.1.1 - no quote here"
        );
        assert_eq!(unwrap_relayed_reply("5.0.0 - x 550-'"), "5.0.0 - x 550-'");
    }

    #[test]
    fn list_unsubscribe_request_is_an_opt_out() {
        let r = rep(
            "From: reader@example.net\nTo: unsub-1234@lists.example.org\nSubject: unsubscribe\nAuto-Submitted: auto-replied\n\nThe mail client sent this message to unsubscribe.\n",
        );
        assert_eq!(r.kind, ReportKind::Arf);
        assert_eq!(r.feedback_type.as_deref(), Some("opt-out"));
        assert_eq!(r.recipients[0].address, "reader@example.net");
        let r = rep("From: a@example.net\nSubject: how do I unsubscribe?\n\nhelp\n");
        assert_eq!(r.kind, ReportKind::NotABounce);
    }

    #[test]
    fn garbage_never_panics() {
        let c = Classifier::default_rules();
        assert!(!clean_diagnostic("x 550 5.1.1é nope 550 5.1.1é").is_empty());
        for s in [
            &b"\x00\xff"[..],
            b"From: <>\n\n@",
            b"Content-Type: message/delivery-status\n\nFinal-Recipient: ;\n",
            b"From: mailer-daemon\n\n<@>:\n550 \n",
        ] {
            let _ = parse(s, &c);
        }
    }
}
