//! `POST /api/v1/messages`: one message (a JSON object) or many (an array) handed to the engine in
//! one `Engine::submit_batch`, answered once every message taken is durable.
//!
//! A message is either `raw` (the RFC 5322 message; bare LF line ends become CRLF) or built by vmta
//! from `subject`, `text`, `html`, `headers` and `attachments` (base64 `content`) with mail-builder
//! (RFC 5322, MIME per RFCs 2045-2049, RFC 2047 encoded words for non-ASCII header text). `from`
//! defaults to the envelope `sender`, `to` to the recipients.
//!
//! Every message of a request is checked before any is submitted: one bad field answers `400`
//! naming it (`[2].recipients[0]`) and nothing is queued. What the engine refuses (spool full,
//! ring full, a sender not approved, every recipient suppressed) is answered per message; the
//! answer's `messages` array says exactly which were taken, with their ids.
//!
//! Not here: `raw` that is not UTF-8 (JSON strings are Unicode; use SMTP for 8-bit messages),
//! templates and per-recipient substitution, scheduled sending.

use super::{Api, Caller, error, json};
use crate::log::EventLog;
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use vmta::engine::{Submission, SubmitError, check_address};
use vmta::spool::Priority;

/// One message as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageJson {
    sender: String,
    recipients: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<Vec<String>>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    attachments: Vec<AttachmentJson>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    priority: Option<PriorityJson>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentJson {
    filename: String,
    content_type: String,
    content: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PriorityJson {
    Transactional,
    Bulk,
}

/// A field at fault, and why.
#[derive(Debug)]
pub struct Bad {
    /// The field (`[2].recipients[0]`); empty for the body as a whole.
    pub field: String,
    /// Why.
    pub message: String,
    /// 400, 403 for a tenant the token may not send for, 413 for too many messages.
    pub status: StatusCode,
}

fn bad(field: String, message: impl Into<String>) -> Bad {
    Bad {
        field,
        message: message.into(),
        status: StatusCode::BAD_REQUEST,
    }
}

/// Parses a request body; the error names the field (`[1].recipients`).
fn parse(body: &[u8]) -> Result<(Vec<MessageJson>, bool), Bad> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let mut de = serde_json::Deserializer::from_slice(body);
    let (messages, many) = match first {
        Some(b'[') => (
            serde_path_to_error::deserialize::<_, Vec<MessageJson>>(&mut de).map_err(path_error)?,
            true,
        ),
        Some(b'{') => (
            vec![serde_path_to_error::deserialize::<_, MessageJson>(&mut de).map_err(path_error)?],
            false,
        ),
        _ => {
            return Err(bad(
                String::new(),
                "the body must be a JSON object (one message) or an array of them",
            ));
        }
    };
    de.end().map_err(|e| bad(String::new(), e.to_string()))?;
    Ok((messages, many))
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> Bad {
    let path = e.path().to_string();
    let field = if path == "." { String::new() } else { path };
    bad(field, e.into_inner().to_string())
}

/// A header field name: printable ASCII but the colon (RFC 5322 section 3.6.8).
fn valid_header_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 76 && n.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Header fields that the builder writes from the message's own fields.
const BUILT: [&str; 5] = ["from", "to", "subject", "content-type", "mime-version"];

/// Whether every line already ends in CRLF (no bare CR or LF).
fn is_crlf(b: &[u8]) -> bool {
    let mut i = 0;
    while let Some(p) = memchr::memchr2(b'\r', b'\n', &b[i..]) {
        let at = i + p;
        if b[at] != b'\r' || b.get(at + 1) != Some(&b'\n') {
            return false;
        }
        i = at + 2;
    }
    true
}

/// The message with CRLF line ends (bare LF and bare CR become CRLF); copied only when it has to
/// change.
fn into_crlf(text: String) -> Vec<u8> {
    if is_crlf(text.as_bytes()) {
        text.into_bytes()
    } else {
        crlf(text.as_bytes())
    }
}

/// CRLF line ends (bare LF and bare CR become CRLF).
fn crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 32 + 2);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Checks one message and makes its submission; `at` is its place in the request (`[3]` or empty).
fn submission(
    req: &Request<'_>,
    caller: &Caller,
    peer: SocketAddr,
    at: &str,
    m: MessageJson,
) -> Result<Submission, Bad> {
    let f = |name: &str| format!("{at}{}{name}", if at.is_empty() { "" } else { "." });
    let tenant = match (&caller.tenant, m.tenant) {
        (None, None) => req.default_tenant.to_string(),
        (None, Some(t)) => t,
        (Some(own), None) => own.clone(),
        (Some(own), Some(t)) if *own == t => t,
        (Some(own), Some(t)) => {
            return Err(Bad {
                status: StatusCode::FORBIDDEN,
                ..bad(
                    f("tenant"),
                    format!("this token sends for tenant `{own}` only, not `{t}`"),
                )
            });
        }
    };
    if tenant.is_empty() || tenant.len() > 255 || tenant.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad(f("tenant"), "not a tenant name"));
    }
    if !m.sender.is_empty() {
        check_address(&m.sender, "sender").map_err(|e| bad(f("sender"), submit_text(&e)))?;
    }
    if m.recipients.is_empty() {
        return Err(bad(f("recipients"), "at least one recipient is needed"));
    }
    for (i, r) in m.recipients.iter().enumerate() {
        check_address(r, "recipient")
            .map_err(|e| bad(f(&format!("recipients[{i}]")), submit_text(&e)))?;
    }
    let built = m.subject.is_some()
        || m.text.is_some()
        || m.html.is_some()
        || !m.attachments.is_empty()
        || m.from.is_some()
        || m.to.is_some()
        || !m.headers.is_empty();
    let body = match (m.raw, built) {
        (Some(_), true) => {
            return Err(bad(
                f("raw"),
                "give either raw or subject/text/html/headers/attachments, not both",
            ));
        }
        (Some(raw), false) => {
            if raw.is_empty() {
                return Err(bad(f("raw"), "the message is empty"));
            }
            into_crlf(raw)
        }
        (None, false) => {
            return Err(bad(
                f("raw"),
                "give the message: raw, or subject with text, html or attachments",
            ));
        }
        (None, true) => build(
            &f,
            &m.sender,
            &m.recipients,
            m.from,
            m.to,
            m.subject,
            m.text,
            m.html,
            m.headers,
            m.attachments,
        )?,
    };
    let max = vmta::smtp::server::ServerConfig::new(String::new()).max_message_size;
    if body.len() > max {
        return Err(bad(
            f("raw"),
            format!("the message is larger than {max} octets"),
        ));
    }
    Ok(Submission {
        sender: m.sender,
        recipients: m.recipients,
        tenant,
        tags: m.tags.into_iter().collect(),
        priority: match m.priority {
            Some(PriorityJson::Bulk) => Priority::Bulk,
            _ => Priority::Transactional,
        },
        body,
        client_host: format!("api-token-{}", caller.name),
        client_ip: Some(peer.ip()),
        protocol: if req.tls { "HTTPS" } else { "HTTP" }.into(),
        tls: String::new(),
        auth: caller.name.clone(),
    })
}

#[allow(clippy::too_many_arguments)]
fn build(
    f: &dyn Fn(&str) -> String,
    sender: &str,
    recipients: &[String],
    from: Option<String>,
    to: Option<Vec<String>>,
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    headers: BTreeMap<String, String>,
    attachments: Vec<AttachmentJson>,
) -> Result<Vec<u8>, Bad> {
    use mail_builder::MessageBuilder;
    use mail_builder::headers::address::Address;
    use mail_builder::headers::text::Text;
    let from = from.unwrap_or_else(|| sender.to_string());
    if from.is_empty() {
        return Err(bad(
            f("from"),
            "a built message needs a From address (from or sender)",
        ));
    }
    check_address(&from, "from").map_err(|e| bad(f("from"), submit_text(&e)))?;
    let to = to.unwrap_or_else(|| recipients.to_vec());
    for (i, t) in to.iter().enumerate() {
        check_address(t, "to").map_err(|e| bad(f(&format!("to[{i}]")), submit_text(&e)))?;
    }
    if text.is_none() && html.is_none() && attachments.is_empty() {
        return Err(bad(
            f("text"),
            "a built message needs text, html or an attachment",
        ));
    }
    let mut b = MessageBuilder::new().from(Address::new_address(None::<&str>, from.clone()));
    if !to.is_empty() {
        b = b.to(Address::new_list(
            to.into_iter()
                .map(|t| Address::new_address(None::<&str>, t))
                .collect(),
        ));
    }
    if let Some(s) = subject {
        if s.contains(['\r', '\n']) {
            return Err(bad(f("subject"), "line breaks are not allowed in a header"));
        }
        b = b.subject(s);
    }
    let mut has_id = false;
    for (name, value) in headers {
        let field = f(&format!("headers.{name}"));
        if !valid_header_name(&name) {
            return Err(bad(
                field,
                "not a header field name (RFC 5322 section 3.6.8)",
            ));
        }
        if BUILT.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad(
                field,
                "this header is written from the message's own fields",
            ));
        }
        if value.contains(['\r', '\n']) || value.len() > 998 {
            return Err(bad(
                field,
                "line breaks (or more than 998 octets) in a header",
            ));
        }
        if name.eq_ignore_ascii_case("message-id") {
            has_id = true;
            b = b.header("Message-ID", mail_builder::headers::raw::Raw::new(value));
        } else if name.eq_ignore_ascii_case("date") {
            b = b.header("Date", mail_builder::headers::raw::Raw::new(value));
        } else {
            b = b.header(name, Text::new(value));
        }
    }
    if !has_id {
        let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
        b = b.header(
            "Message-ID",
            mail_builder::headers::raw::Raw::new(format!(
                "<{}@{domain}>",
                super::new_token().trim_start_matches("vmta_")
            )),
        );
    }
    if let Some(t) = text {
        b = b.text_body(t);
    }
    if let Some(h) = html {
        b = b.html_body(h);
    }
    for (i, a) in attachments.into_iter().enumerate() {
        let content = base64::engine::general_purpose::STANDARD
            .decode(a.content.as_bytes())
            .map_err(|e| {
                bad(
                    f(&format!("attachments[{i}].content")),
                    format!("not base64: {e}"),
                )
            })?;
        if !a.content_type.contains('/') || a.content_type.contains(['\r', '\n', ';']) {
            return Err(bad(
                f(&format!("attachments[{i}].content_type")),
                "not a MIME type (type/subtype)",
            ));
        }
        if a.filename.is_empty() || a.filename.contains(['\r', '\n', '"', '\\', '/']) {
            return Err(bad(
                f(&format!("attachments[{i}].filename")),
                "a file name without line breaks, quotes, backslashes or slashes",
            ));
        }
        b = b.attachment(a.content_type, a.filename, content);
    }
    let out = b
        .write_to_vec()
        .map_err(|e| bad(f("text"), format!("cannot build the message: {e}")))?;
    // mail-builder passes a bare CR in text through; SMTP allows none (RFC 5321 section 2.3.8).
    Ok(if is_crlf(&out) { out } else { crlf(&out) })
}

fn submit_text(e: &SubmitError) -> String {
    match e {
        SubmitError::Invalid(why) => why.clone(),
        other => other.to_string(),
    }
}

/// The status, machine-readable code and `Retry-After` of an engine refusal.
fn refusal(e: &SubmitError) -> (StatusCode, &'static str, Option<u64>) {
    match e {
        SubmitError::Busy => (StatusCode::TOO_MANY_REQUESTS, "busy", Some(1)),
        SubmitError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", Some(5)),
        SubmitError::NoSpace => (StatusCode::SERVICE_UNAVAILABLE, "spool_full", Some(30)),
        SubmitError::Spool(_) => (StatusCode::SERVICE_UNAVAILABLE, "spool_error", Some(30)),
        SubmitError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_message", None),
        SubmitError::UnknownTenant(_) => (StatusCode::BAD_REQUEST, "unknown_tenant", None),
        SubmitError::AccountLocked(_) => (StatusCode::FORBIDDEN, "account_locked", None),
        SubmitError::SenderNotApproved(_) => (StatusCode::FORBIDDEN, "sender_not_approved", None),
        SubmitError::Suppressed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "suppressed", None),
    }
}

/// What a request's submissions depend on besides its body.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `[http] tenant`: an admin's messages that name none.
    pub default_tenant: &'a str,
    /// Whether the listener speaks TLS (the Received field's protocol).
    pub tls: bool,
    /// `[http] max_messages`.
    pub max_messages: usize,
}

/// Parses and checks a request body into submissions, all or none: the first field at fault
/// (with how many messages the request held, for the counters) refuses the whole request.
pub fn submissions(
    req: &Request<'_>,
    caller: &Caller,
    peer: SocketAddr,
    body: &[u8],
) -> Result<Vec<Submission>, (Bad, usize)> {
    let (messages, many) = parse(body).map_err(|b| (b, 1))?;
    let count = messages.len();
    if count == 0 {
        return Err((bad(String::new(), "the array holds no message"), 0));
    }
    if count > req.max_messages {
        return Err((
            Bad {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                ..bad(
                    String::new(),
                    format!(
                        "{count} messages in one request; at most {} (max_messages)",
                        req.max_messages
                    ),
                )
            },
            count,
        ));
    }
    let mut out = Vec::with_capacity(count);
    for (i, m) in messages.into_iter().enumerate() {
        let at = if many {
            format!("[{i}]")
        } else {
            String::new()
        };
        out.push(submission(req, caller, peer, &at, m).map_err(|b| (b, count))?);
    }
    Ok(out)
}

/// Answers `POST /api/v1/messages` with the request body read.
pub async fn answer(
    api: Arc<Api>,
    caller: &Caller,
    peer: SocketAddr,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let req = Request {
        default_tenant: &api.config.tenant,
        tls: api.tls,
        max_messages: api.config.max_messages,
    };
    let submissions = match submissions(&req, caller, peer, &body) {
        Ok(s) => s,
        Err((b, count)) => {
            api.stats.http_messages(0, count as u64);
            return error(
                b.status,
                (!b.field.is_empty()).then_some(b.field.as_str()),
                &b.message,
            );
        }
    };
    drop(body);
    let count = submissions.len();
    let a = api.clone();
    let done = tokio::task::spawn_blocking(move || {
        let results = a.engine.submit_batch(&submissions);
        log_lines(&a.log, peer, &submissions, &results);
        results
    })
    .await;
    let results = match done {
        Ok(r) => r,
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "the submission failed; nothing is known to be queued",
            );
        }
    };
    let taken = results.iter().filter(|r| r.is_ok()).count();
    api.stats
        .http_messages(taken as u64, (count - taken) as u64);
    let mut worst: Option<(StatusCode, Option<u64>)> = None;
    let items: Vec<serde_json::Value> = results
        .iter()
        .map(|r| match r {
            Ok(id) => serde_json::json!({"id": format!("{id:016x}")}),
            Err(e) => {
                let (status, code, retry) = refusal(e);
                // A refusal the client can retry wins: the whole request may be sent again.
                let rank = |s: StatusCode, r: Option<u64>| (r.is_some(), s.as_u16());
                if worst.is_none_or(|(s, r)| rank(status, retry) > rank(s, r)) {
                    worst = Some((status, retry));
                }
                serde_json::json!({"error": {
                    "status": status.as_u16(),
                    "code": code,
                    "message": e.to_string(),
                }})
            }
        })
        .collect();
    let status = worst.map_or(StatusCode::ACCEPTED, |(s, _)| s);
    let mut r = json(
        status,
        &serde_json::json!({
            "accepted": taken,
            "refused": count - taken,
            "messages": items,
        }),
    );
    if let Some((_, Some(secs))) = worst {
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, secs.into());
    }
    r
}

fn log_lines(
    log: &EventLog,
    peer: SocketAddr,
    submissions: &[Submission],
    results: &[Result<u64, SubmitError>],
) {
    if !log.is_enabled() {
        return;
    }
    let lines: Vec<String> = submissions
        .iter()
        .zip(results)
        .map(|(s, r)| crate::intake::log_line(peer.ip(), "http", s, r))
        .collect();
    log.write_lines(lines.iter().map(String::as_str));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let e = parse(br#"[{"sender":"a@b.c","recipients":["x@y.z"],"raw":"x"},{"sender":"a@b.c","recipients":[5]}]"#)
            .unwrap_err();
        assert_eq!(e.field, "[1].recipients[0]");
        let e = parse(br#"{"sender":"a@b.c","recipients":["x@y.z"],"colour":"red"}"#).unwrap_err();
        assert!(e.message.contains("unknown field `colour`"), "{e:?}");
        let e = parse(b"\"just a string\"").unwrap_err();
        assert!(e.field.is_empty());
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).is_err());
        let e = parse(b"{\"sender\":\"a\xff@b.c\"}").unwrap_err();
        assert!(
            e.message.contains("UTF-8") || e.message.contains("unicode"),
            "{e:?}"
        );
    }

    #[test]
    fn line_ends_become_crlf() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert_eq!(crlf(b""), b"");
        for (text, already) in [
            ("a\r\nb\r\n", true),
            ("", true),
            ("no line end", true),
            ("a\nb", false),
            ("a\rb", false),
            ("a\r\n\r", false),
            ("a\n\r\n", false),
        ] {
            assert_eq!(is_crlf(text.as_bytes()), already, "{text:?}");
            assert_eq!(
                into_crlf(text.to_string()),
                crlf(text.as_bytes()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn header_names_are_checked() {
        assert!(valid_header_name("X-Campaign"));
        assert!(!valid_header_name("X Campaign"));
        assert!(!valid_header_name("X:Y"));
        assert!(!valid_header_name(""));
    }
}
