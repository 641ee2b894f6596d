//! The `vmta` command run as a user would: the quick start and `vmta send` against a real smtp-sink
//! (addresses 127.0.30.64/26 of the SMTP block).

use std::process::Command;
use vmta_tests::smtp::SmtpSink;

fn vmta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmta"))
}

#[test]
fn demo_delivers_its_campaign_and_reports_it() {
    // The mixed world: greylisting, a provider with published limits, one with a hidden rate limit,
    // failures by share, a slow receiver, STARTTLS; one recipient in fifty unknown.
    let out = vmta()
        .args([
            "demo",
            "--messages",
            "3000",
            "--domains",
            "60",
            "--hosts",
            "6",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Success means every recipient reached a final state, the sinks received exactly what was
    // reported delivered, and the published limits held at the receiver.
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |key: &str| -> u64 {
        field(&text, key)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    let delivered = number("delivered");
    let bounced = number("bounced");
    assert_eq!(delivered + bounced, 3000, "{text}");
    assert_eq!(number("sinks received"), delivered, "{text}");
    // 60 unknown users (one in fifty), refused at RCPT and classified.
    let unknown = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("userunknown"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(unknown >= 60, "{text}");
    // Greylisted recipients were deferred, then delivered.
    assert!(
        field(&text, "delivered").is_some_and(|v| !v.contains("(0 of them")),
        "{text}"
    );
    // The second wave to the unknown users is refused by the suppression list.
    let suppressed = field(&text, "suppressed").unwrap_or_default();
    assert!(
        suppressed.contains(&format!("{unknown} refused as suppressed")),
        "{text}"
    );
    assert!(text.contains("rule held"), "{text}");
}

/// The value of a `key:   value` line of a report.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// A message file of its own for each caller (removed when dropped): tests run in parallel, and
/// rewriting a shared file while another test's `vmta send` reads it made that one read an empty
/// message.
struct MessageFile(std::path::PathBuf);

impl AsRef<std::ffi::OsStr> for MessageFile {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for MessageFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn message_file() -> MessageFile {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("vmta-cli-test-{}-{n}.eml", std::process::id()));
    std::fs::write(
        &path,
        b"From: a@x.example\r\nTo: b@y.example\r\nSubject: t\r\n\r\nhello\r\n",
    )
    .unwrap();
    MessageFile(path)
}

#[test]
fn send_exits_zero_when_every_recipient_is_accepted() {
    let sink = SmtpSink::start("127.0.30.65", &[]);
    let file = message_file();
    let out = vmta()
        .args([
            "send",
            "--server",
            &sink.addr.to_string(),
            "--from",
            "a@x.example",
        ])
        .args([
            "--to",
            "b@y.example",
            "--to",
            "c@y.example",
            "--tls",
            "disabled",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("b@y.example: accepted 250 2.0.0 Ok"),
        "{text}"
    );
    assert!(
        text.contains("c@y.example: accepted 250 2.0.0 Ok"),
        "{text}"
    );
    assert!(text.contains("capabilities: ESMTP PIPELINING"), "{text}");
    assert_eq!(sink.received(), 1);
}

#[test]
fn send_exits_one_when_a_recipient_is_refused() {
    let sink = SmtpSink::start(
        "127.0.30.66",
        &["-f", "RCPT", "-B", "550 5.1.1 No such user"],
    );
    let file = message_file();
    let out = vmta()
        .args([
            "send",
            "--server",
            &sink.addr.to_string(),
            "--from",
            "a@x.example",
        ])
        .args(["--to", "b@y.example"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("b@y.example: rejected 550 5.1.1 No such user"),
        "{text}"
    );
}

#[test]
fn send_reports_a_connection_failure_clearly() {
    let file = message_file();
    let out = vmta()
        .args([
            "send",
            "--server",
            "127.0.30.67:1",
            "--from",
            "a@x.example",
            "--to",
            "b@y.example",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.30.67:1"));
}
