//! Message validation at submission (RFC 5322), in one pass over the bytes.
//!
//! What is checked and done, in the order the bytes arrive:
//!
//! - size: at most [`ValidationOptions::max_size`] octets, before and after normalisation (not
//!   counting the Received field; added Date and Message-ID fields get [`ADDED_ALLOWANCE`] octets);
//! - line endings: a bare CR or a bare LF becomes CRLF (RFC 5322 §2.3, RFC 5321 §2.3.8); a last line
//!   without an ending gets one;
//! - line length: at most 998 octets before CRLF (RFC 5322 §2.1.1);
//! - NUL is refused anywhere (RFC 5322 §2.3, RFC 5321 §4.1.1.4 in practice);
//! - header section (§2.2, §3.6.8): each field starts with a name of printable ASCII other than `:`
//!   followed directly by `:`; a line starting with space or tab continues the field above it
//!   (folding, §2.2.3) and may not come first;
//! - required fields (§3.6): exactly one From and one Date, at most one Message-ID, Sender when From
//!   names several mailboxes; Date and Message-ID are added when missing if the options say so;
//! - 8-bit: a byte above 127 in the body marks the message as needing 8BITMIME (RFC 6152); one in the
//!   header section marks it as needing SMTPUTF8 (RFC 6531, RFC 6532);
//! - a `Received` trace field on top naming the submitting host and the originating IP the host
//!   program passes in (RFC 5321 §4.4).
//!
//! Errors name the problem and the 1-based line number of the input. The input is never trusted to
//! be ASCII or UTF-8. No regular expressions; each line is scanned with SIMD-friendly loops (`memchr`
//! for the line end and NUL, an OR-fold for 8-bit octets) and copied once.
//!
//! Not checked: the syntax of field bodies other than From (dates, message ids, MIME structure), the
//! obsolete syntax of RFC 5322 §4 (whitespace before the colon is refused), 7-bit transport encoding
//! (vmta does not downgrade 8-bit messages; the session refuses to send them to a server without
//! 8BITMIME / SMTPUTF8).

use std::fmt;

use super::address::{AddressError, mailbox_addresses};
use super::headers::{Trace, rfc5322_date};

/// The longest line RFC 5322 §2.1.1 allows, without its CRLF.
pub const MAX_LINE: usize = 998;

/// Octets allowed beyond [`ValidationOptions::max_size`] for the Date and Message-ID fields validation
/// adds.
pub const ADDED_ALLOWANCE: usize = 256;

/// What validation adds and how large a message may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationOptions {
    /// The largest message accepted, in octets (default 25 MiB).
    pub max_size: usize,
    /// Add a Date field when the message has none (default true); refused otherwise.
    pub add_date: bool,
    /// Add a Message-ID field when the message has none (default true).
    pub add_message_id: bool,
    /// The domain of added Message-IDs (`<unique@domain>`).
    pub message_id_domain: String,
}

impl Default for ValidationOptions {
    fn default() -> Self {
        ValidationOptions {
            max_size: 25 * 1024 * 1024,
            add_date: true,
            add_message_id: true,
            message_id_domain: "localhost".into(),
        }
    }
}

/// Per-message values the caller passes in: the time and a unique id (no clock or RNG in here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp<'a> {
    /// Seconds since the Unix epoch, for the added Date and the Received field.
    pub now: u64,
    /// A string unique to this message (the queue id, for example) for an added Message-ID.
    pub unique_id: &'a str,
    /// The Received field to write on top, if any.
    pub trace: Option<Trace<'a>>,
}

/// An invalid message, with the 1-based line of the input where the problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The message is empty.
    Empty,
    /// The message is larger than allowed.
    TooLarge {
        /// Its size in octets.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A line longer than 998 octets.
    LineTooLong {
        /// The line.
        line: usize,
        /// Its length without the line ending.
        length: usize,
    },
    /// A NUL octet.
    NulByte {
        /// The line.
        line: usize,
    },
    /// The message starts with an mbox `From ` separator line, which is not part of the message.
    MboxSeparator,
    /// A header line with no colon: not a field.
    NotAHeaderField {
        /// The line.
        line: usize,
    },
    /// A field name with a character outside printable ASCII, or empty.
    BadFieldName {
        /// The line.
        line: usize,
    },
    /// A continuation line (starting with space or tab) with no field above it.
    ContinuationFirst {
        /// The line.
        line: usize,
    },
    /// A field that may occur once occurs again.
    Duplicate {
        /// The field name.
        field: &'static str,
        /// The line of the second occurrence.
        line: usize,
    },
    /// The From field does not hold a list of addresses.
    BadFrom {
        /// The line of the From field.
        line: usize,
        /// What is wrong.
        why: AddressError,
    },
    /// No From field.
    MissingFrom,
    /// No Date field and adding one is off.
    MissingDate,
    /// From names several mailboxes and there is no Sender (RFC 5322 §3.6.2).
    MissingSender,
    /// The unique id for an added Message-ID holds characters a msg-id cannot.
    BadUniqueId,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Empty => f.write_str("empty message"),
            MessageError::TooLarge { size, max } => {
                write!(f, "message of {size} octets exceeds the maximum of {max}")
            }
            MessageError::LineTooLong { line, length } => write!(
                f,
                "line {line}: {length} octets, longer than the {MAX_LINE} RFC 5322 allows"
            ),
            MessageError::NulByte { line } => write!(f, "line {line}: NUL octet"),
            MessageError::MboxSeparator => f.write_str(
                "line 1: an mbox \"From \" separator line, not a header field (strip it before submitting)",
            ),
            MessageError::NotAHeaderField { line } => {
                write!(f, "line {line}: header line without a colon (not a field)")
            }
            MessageError::BadFieldName { line } => write!(
                f,
                "line {line}: bad header field name (printable ASCII other than ':' directly \
                 followed by ':')"
            ),
            MessageError::ContinuationFirst { line } => write!(
                f,
                "line {line}: continuation line (starting with white space) with no field above it"
            ),
            MessageError::Duplicate { field, line } => {
                write!(f, "line {line}: second {field} field")
            }
            MessageError::BadFrom { line, why } => write!(f, "line {line}: bad From field: {why}"),
            MessageError::MissingFrom => f.write_str("no From field"),
            MessageError::MissingDate => f.write_str("no Date field"),
            MessageError::MissingSender => {
                f.write_str("From names several mailboxes but there is no Sender field")
            }
            MessageError::BadUniqueId => f.write_str("unique id unusable in a Message-ID"),
        }
    }
}

impl std::error::Error for MessageError {}

/// A message that passed validation, normalised, with what the session needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedMessage {
    /// The message: CRLF line endings, Received on top, added fields at the end of the header.
    pub bytes: Vec<u8>,
    /// Octets of `bytes` up to and including the empty line (all of it when there is no body).
    pub header_len: usize,
    /// The body holds octets above 127: send with `BODY=8BITMIME`.
    pub needs_8bitmime: bool,
    /// The header section holds octets above 127: send with `SMTPUTF8`.
    pub needs_smtputf8: bool,
    /// The addresses in From, in order.
    pub from: Vec<String>,
    /// The Message-ID field's value (as found or as added).
    pub message_id: String,
    /// A Date field was added.
    pub added_date: bool,
    /// A Message-ID field was added.
    pub added_message_id: bool,
    /// How many bare CR or LF line endings became CRLF.
    pub fixed_line_endings: usize,
}

/// Where a field of interest sits in the output buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    value_start: usize,
    end: usize,
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    From,
    Date,
    MessageId,
    Sender,
    Other,
}

fn classify(name: &[u8]) -> Known {
    if name.eq_ignore_ascii_case(b"from") {
        Known::From
    } else if name.eq_ignore_ascii_case(b"date") {
        Known::Date
    } else if name.eq_ignore_ascii_case(b"message-id") {
        Known::MessageId
    } else if name.eq_ignore_ascii_case(b"sender") {
        Known::Sender
    } else {
        Known::Other
    }
}

/// Validates and normalises `input` (see the module documentation).
pub fn validate(
    input: &[u8],
    options: &ValidationOptions,
    stamp: &Stamp<'_>,
) -> Result<ValidatedMessage, MessageError> {
    if input.is_empty() {
        return Err(MessageError::Empty);
    }
    if input.len() > options.max_size {
        return Err(MessageError::TooLarge {
            size: input.len(),
            max: options.max_size,
        });
    }
    let mut out: Vec<u8> = Vec::with_capacity(input.len() + input.len() / 64 + 512);
    if let Some(trace) = &stamp.trace {
        trace.write_received(stamp.now, &mut out);
    }
    let received_len = out.len();
    let limit = options.max_size.saturating_add(ADDED_ALLOWANCE);

    let mut in_header = true;
    let mut header_len = None;
    let mut line = 1usize;
    let mut pos = 0usize;
    let n = input.len();
    let mut high_header = false;
    let mut high_body = false;
    let mut fixed = 0usize;

    // The field being read and the spans of the fields that matter.
    let mut current: Option<(Known, Span)> = None;
    let mut from: Option<Span> = None;
    let mut date: Option<Span> = None;
    let mut message_id: Option<Span> = None;
    let mut sender = false;

    let close_field = |current: &mut Option<(Known, Span)>,
                       end: usize,
                       from: &mut Option<Span>,
                       date: &mut Option<Span>,
                       message_id: &mut Option<Span>,
                       sender: &mut bool|
     -> Result<(), MessageError> {
        if let Some((kind, mut span)) = current.take() {
            span.end = end;
            let slot = match kind {
                Known::From => (from, "From"),
                Known::Date => (date, "Date"),
                Known::MessageId => (message_id, "Message-ID"),
                Known::Sender => {
                    if *sender {
                        return Err(MessageError::Duplicate {
                            field: "Sender",
                            line: span.line,
                        });
                    }
                    *sender = true;
                    return Ok(());
                }
                Known::Other => return Ok(()),
            };
            if slot.0.is_some() {
                return Err(MessageError::Duplicate {
                    field: slot.1,
                    line: span.line,
                });
            }
            *slot.0 = Some(span);
        }
        Ok(())
    };

    let mut added_date = false;
    let mut added_message_id = false;
    let mut added_id_value = String::new();

    while pos < n {
        // The body is usually clean (CRLF lines within the limit, no NUL): checked and copied whole.
        if !in_header && let Some(high) = clean_body(&input[pos..]) {
            high_body |= high;
            out.extend_from_slice(&input[pos..]);
            break;
        }
        // One line: its end (memchr2), the OR of its octets (for 8-bit) and whether it holds a NUL.
        // Each is a vectorised scan of a line already in cache.
        let start = pos;
        pos = memchr::memchr2(b'\n', b'\r', &input[start..]).map_or(n, |i| start + i);
        let content = &input[start..pos];
        let acc = content.iter().fold(0u8, |a, &b| a | b);
        let nul = memchr::memchr(0, content).is_some();
        // Consume the line ending.
        if pos < n {
            if input[pos] == b'\r' && pos + 1 < n && input[pos + 1] == b'\n' {
                pos += 2;
            } else {
                pos += 1;
                fixed += 1;
            }
        }
        if content.len() > MAX_LINE {
            return Err(MessageError::LineTooLong {
                line,
                length: content.len(),
            });
        }
        if nul {
            return Err(MessageError::NulByte { line });
        }
        let high = acc & 0x80 != 0;

        if in_header {
            high_header |= high;
            if content.is_empty() {
                close_field(
                    &mut current,
                    out.len(),
                    &mut from,
                    &mut date,
                    &mut message_id,
                    &mut sender,
                )?;
                add_missing(
                    &mut out,
                    options,
                    stamp,
                    date.is_some(),
                    message_id.is_some(),
                    &mut added_date,
                    &mut added_message_id,
                    &mut added_id_value,
                )?;
                out.extend_from_slice(b"\r\n");
                in_header = false;
                header_len = Some(out.len());
                line += 1;
                continue;
            }
            let first = content[0];
            if first == b' ' || first == b'\t' {
                if current.is_none() {
                    return Err(MessageError::ContinuationFirst { line });
                }
            } else {
                close_field(
                    &mut current,
                    out.len(),
                    &mut from,
                    &mut date,
                    &mut message_id,
                    &mut sender,
                )?;
                if line == 1 && content.starts_with(b"From ") {
                    return Err(MessageError::MboxSeparator);
                }
                let colon = match content.iter().position(|&b| b == b':') {
                    Some(c) => c,
                    None => return Err(MessageError::NotAHeaderField { line }),
                };
                let name = &content[..colon];
                if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
                    return Err(MessageError::BadFieldName { line });
                }
                let kind = classify(name);
                current = Some((
                    kind,
                    Span {
                        value_start: out.len() + colon + 1,
                        end: 0,
                        line,
                    },
                ));
            }
        } else {
            high_body |= high;
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        line += 1;
        if out.len() - received_len > limit {
            return Err(MessageError::TooLarge {
                size: out.len() - received_len,
                max: options.max_size,
            });
        }
    }
    if in_header {
        // No body: the whole message is header. Close the last field and add what is missing.
        close_field(
            &mut current,
            out.len(),
            &mut from,
            &mut date,
            &mut message_id,
            &mut sender,
        )?;
        add_missing(
            &mut out,
            options,
            stamp,
            date.is_some(),
            message_id.is_some(),
            &mut added_date,
            &mut added_message_id,
            &mut added_id_value,
        )?;
        header_len = Some(out.len());
    }

    let from_span = from.ok_or(MessageError::MissingFrom)?;
    let from_value = String::from_utf8_lossy(&out[from_span.value_start..from_span.end]);
    let from_addrs = mailbox_addresses(&from_value).map_err(|why| MessageError::BadFrom {
        line: from_span.line,
        why,
    })?;
    if from_addrs.len() > 1 && !sender {
        return Err(MessageError::MissingSender);
    }
    let message_id = match message_id {
        Some(span) => String::from_utf8_lossy(&out[span.value_start..span.end])
            .trim()
            .to_string(),
        None => added_id_value,
    };
    if out.len() - received_len > limit {
        return Err(MessageError::TooLarge {
            size: out.len() - received_len,
            max: options.max_size,
        });
    }
    Ok(ValidatedMessage {
        header_len: header_len.unwrap_or(out.len()),
        bytes: out,
        needs_8bitmime: high_body,
        needs_smtputf8: high_header,
        from: from_addrs,
        message_id,
        added_date,
        added_message_id,
        fixed_line_endings: fixed,
    })
}

/// `Some(8-bit)` when `body` needs no change: every line ends with CRLF (no bare CR or LF, the
/// last line terminated), none is longer than [`MAX_LINE`], and there is no NUL. `None` sends the
/// caller through the line-by-line path, which repairs or reports what is wrong.
fn clean_body(body: &[u8]) -> Option<bool> {
    // Whole-body scans (each vectorised) rather than a search stopping at every CR and LF.
    if !body.ends_with(b"\r\n")
        || memchr::memchr(0, body).is_some()
        || !crate::smtp::session::is_crlf_clean(body)
    {
        return None;
    }
    // Every LF now ends a CRLF line: its content is the bytes between the previous LF and its CR.
    let mut line_start = 0;
    for i in memchr::memchr_iter(b'\n', body) {
        if i - line_start > MAX_LINE + 1 {
            return None;
        }
        line_start = i + 1;
    }
    Some(body.iter().fold(0u8, |a, &b| a | b) & 0x80 != 0)
}

#[allow(clippy::too_many_arguments)]
fn add_missing(
    out: &mut Vec<u8>,
    options: &ValidationOptions,
    stamp: &Stamp<'_>,
    has_date: bool,
    has_message_id: bool,
    added_date: &mut bool,
    added_message_id: &mut bool,
    id_value: &mut String,
) -> Result<(), MessageError> {
    if !has_date {
        if !options.add_date {
            return Err(MessageError::MissingDate);
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(rfc5322_date(stamp.now).as_bytes());
        out.extend_from_slice(b"\r\n");
        *added_date = true;
    }
    if !has_message_id && options.add_message_id {
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b))
        };
        if !ok(stamp.unique_id) || !ok(&options.message_id_domain) {
            return Err(MessageError::BadUniqueId);
        }
        *id_value = format!("<{}@{}>", stamp.unique_id, options.message_id_domain);
        out.extend_from_slice(b"Message-ID: ");
        out.extend_from_slice(id_value.as_bytes());
        out.extend_from_slice(b"\r\n");
        *added_message_id = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp<'static> {
        Stamp {
            now: 0,
            unique_id: "q1",
            trace: None,
        }
    }

    fn ok(input: &[u8]) -> ValidatedMessage {
        validate(input, &ValidationOptions::default(), &stamp()).unwrap()
    }

    fn err(input: &[u8]) -> MessageError {
        validate(input, &ValidationOptions::default(), &stamp()).unwrap_err()
    }

    const GOOD: &[u8] = b"From: A <a@example.com>\r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\n\
Message-ID: <x@example.com>\r\nSubject: hi\r\n\r\nbody\r\n";

    #[test]
    fn a_good_message_passes_unchanged() {
        let m = ok(GOOD);
        assert_eq!(m.bytes, GOOD);
        assert_eq!(m.from, ["a@example.com"]);
        assert_eq!(m.message_id, "<x@example.com>");
        assert!(!m.added_date && !m.added_message_id);
        assert!(!m.needs_8bitmime && !m.needs_smtputf8);
        assert_eq!(&m.bytes[m.header_len - 4..m.header_len], b"\r\n\r\n");
    }

    #[test]
    fn bare_line_endings_become_crlf() {
        let m = ok(b"From: a@example.com\nDate: x\rSubject:\r\n folded\n\nline1\rline2\n\r\nend");
        assert_eq!(
            m.bytes,
            b"From: a@example.com\r\nDate: x\r\nSubject:\r\n folded\r\nMessage-ID: <q1@localhost>\r\n\r\nline1\r\nline2\r\n\r\nend\r\n"
        );
        assert_eq!(m.fixed_line_endings, 6);
        assert!(m.added_message_id);
    }

    #[test]
    fn adds_date_and_message_id_before_the_body() {
        let m = ok(b"From: a@example.com\r\n\r\nhello\r\n");
        assert_eq!(
            m.bytes,
            b"From: a@example.com\r\nDate: Thu, 1 Jan 1970 00:00:00 +0000\r\nMessage-ID: <q1@localhost>\r\n\r\nhello\r\n"
        );
        assert_eq!(m.message_id, "<q1@localhost>");
        // Header only, no body.
        let m = ok(b"From: a@example.com");
        assert!(m.bytes.ends_with(b"Message-ID: <q1@localhost>\r\n"));
        assert_eq!(m.header_len, m.bytes.len());
        // Adding is optional.
        let opts = ValidationOptions {
            add_date: false,
            add_message_id: false,
            ..ValidationOptions::default()
        };
        assert_eq!(
            validate(b"From: a@example.com\r\n\r\n", &opts, &stamp()),
            Err(MessageError::MissingDate)
        );
        let m = validate(b"From: a@b.c\r\nDate: x\r\n\r\n", &opts, &stamp()).unwrap();
        assert_eq!(m.message_id, "");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            err(b"From: a@b.c\r\nSubject : x\r\n\r\n"),
            MessageError::BadFieldName { line: 2 }
        );
        assert_eq!(
            err(b"From: a@b.c\r\nnot a header\r\n\r\n"),
            MessageError::NotAHeaderField { line: 2 }
        );
        assert_eq!(
            err(b" folded\r\nFrom: a@b.c\r\n\r\n"),
            MessageError::ContinuationFirst { line: 1 }
        );
        assert_eq!(
            err(b"From: a@b.c\r\nFrom: c@d.e\r\n\r\n"),
            MessageError::Duplicate {
                field: "From",
                line: 2
            }
        );
        assert_eq!(
            err(b"From: a@b.c\r\nDate: 1\r\nDATE: 2\r\n\r\n"),
            MessageError::Duplicate {
                field: "Date",
                line: 3
            }
        );
        assert_eq!(err(b"Subject: x\r\n\r\nbody"), MessageError::MissingFrom);
        assert_eq!(
            err(b"From MAILER-DAEMON Fri Feb  2 18:30:22 2018\nFrom: a@b.c\n\n"),
            MessageError::MboxSeparator
        );
        assert_eq!(
            err(b"From: a@b.c\r\n\r\nx\0y\r\n"),
            MessageError::NulByte { line: 3 }
        );
        assert!(matches!(
            err(b"From: Joe\r\n\r\n"),
            MessageError::BadFrom { line: 1, .. }
        ));
        assert_eq!(
            err(b"From: a@b.c, d@e.f\r\n\r\n"),
            MessageError::MissingSender
        );
        assert!(
            validate(
                b"From: a@b.c, d@e.f\r\nSender: a@b.c\r\n\r\n",
                &ValidationOptions::default(),
                &stamp()
            )
            .is_ok()
        );
        assert_eq!(err(b""), MessageError::Empty);
        assert_eq!(err(b"\r\nbody"), MessageError::MissingFrom);
        // Bad bytes in a field name.
        assert_eq!(
            err(b"Fr\x80m: a@b.c\r\n\r\n"),
            MessageError::BadFieldName { line: 1 }
        );
    }

    #[test]
    fn line_length_limit() {
        let mut m = b"From: a@b.c\r\n\r\n".to_vec();
        m.extend(std::iter::repeat_n(b'x', 998));
        m.extend_from_slice(b"\r\n");
        assert!(validate(&m, &ValidationOptions::default(), &stamp()).is_ok());
        m.truncate(m.len() - 2);
        m.extend_from_slice(b"y\r\n");
        assert_eq!(
            validate(&m, &ValidationOptions::default(), &stamp()),
            Err(MessageError::LineTooLong {
                line: 3,
                length: 999
            })
        );
    }

    #[test]
    fn size_limit() {
        let opts = ValidationOptions {
            max_size: 20,
            ..ValidationOptions::default()
        };
        assert_eq!(
            validate(b"From: a@example.com\r\n\r\n", &opts, &stamp()),
            Err(MessageError::TooLarge { size: 23, max: 20 })
        );
        // Bare LFs that become CRLF can push a message over the limit.
        let mut m = b"From: a@example.com\n\n".to_vec();
        m.extend(std::iter::repeat_n(b'\n', 400));
        let opts = ValidationOptions {
            max_size: 500,
            ..ValidationOptions::default()
        };
        assert!(matches!(
            validate(&m, &opts, &stamp()),
            Err(MessageError::TooLarge { .. })
        ));
    }

    #[test]
    fn eight_bit_detection() {
        let m = ok("From: a@b.c\r\n\r\nGrüße\r\n".as_bytes());
        assert!(m.needs_8bitmime && !m.needs_smtputf8);
        let m = ok("From: Jörg <jörg@bücher.example>\r\n\r\nhi\r\n".as_bytes());
        assert!(m.needs_smtputf8 && !m.needs_8bitmime);
        assert_eq!(m.from, ["jörg@bücher.example"]);
    }

    #[test]
    fn received_on_top() {
        let s = Stamp {
            now: 0,
            unique_id: "q1",
            trace: Some(Trace {
                from_host: "app.example.com",
                from_ip: Some("192.0.2.1".parse().unwrap()),
                by_host: "mta.example.com",
                with: "ESMTPA",
                id: "q1",
                tls: None,
                auth: None,
            }),
        };
        let m = validate(GOOD, &ValidationOptions::default(), &s).unwrap();
        assert!(
            m.bytes
                .starts_with(b"Received: from app.example.com ([192.0.2.1])\r\n\tby ")
        );
        assert!(m.bytes.ends_with(GOOD));
        // A continuation first is still refused after the Received field.
        assert_eq!(
            validate(
                b" x\r\nFrom: a@b.c\r\n\r\n",
                &ValidationOptions::default(),
                &s
            ),
            Err(MessageError::ContinuationFirst { line: 1 })
        );
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A deterministic walk over short byte strings made of the interesting octets.
        let alphabet = [b'\r', b'\n', b' ', b':', b'F', b'@', 0x80, 0, b'\t', b'a'];
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let input: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i * 2 % 60)) % 10) as usize])
                .collect();
            let _ = validate(&input, &ValidationOptions::default(), &stamp());
        }
    }
}

#[cfg(test)]
mod clean_body_tests {
    use super::*;

    #[test]
    fn clean_bodies_are_taken_whole_and_anything_else_goes_line_by_line() {
        assert_eq!(clean_body(b"a\r\nb\r\n"), Some(false));
        assert_eq!(clean_body(b"\r\n\r\n"), Some(false));
        assert_eq!(clean_body("caf\u{e9}\r\n".as_bytes()), Some(true));
        let long = [vec![b'x'; MAX_LINE], b"\r\n".to_vec()].concat();
        assert_eq!(clean_body(&long), Some(false));
        let too_long = [vec![b'x'; MAX_LINE + 1], b"\r\n".to_vec()].concat();
        assert_eq!(clean_body(&too_long), None);
        for bad in [
            &b"a\nb\r\n"[..],
            b"a\rb\r\n",
            b"a\r\r\n",
            b"a\r\nb",
            b"a\r\n\n",
            b"a\0\r\n",
            b"a\r\n\r",
        ] {
            assert_eq!(clean_body(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_whole_body_path_and_the_line_path_agree() {
        let stamp = Stamp {
            now: 1_700_000_000,
            unique_id: "id1",
            trace: None,
        };
        let opts = ValidationOptions::default();
        let head = "From: a@example.com\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <x@example.com>\r\n\r\n";
        let mut body = String::new();
        for i in 0..500 {
            body.push_str(&format!("line {i} of a clean body\r\n"));
        }
        let clean = validate(format!("{head}{body}").as_bytes(), &opts, &stamp).unwrap();
        // The same body with one bare LF is repaired line by line into the same bytes.
        let repaired_input = format!("{head}{}", body.replacen("\r\n", "\n", 1));
        let repaired = validate(repaired_input.as_bytes(), &opts, &stamp).unwrap();
        assert_eq!(clean.bytes, repaired.bytes);
        assert_eq!(
            (clean.fixed_line_endings, repaired.fixed_line_endings),
            (0, 1)
        );
        assert!(!clean.needs_8bitmime);
        let high = validate(
            format!("{head}{body}caf\u{e9}\r\n").as_bytes(),
            &opts,
            &stamp,
        )
        .unwrap();
        assert!(high.needs_8bitmime);
    }
}
