//! `vmta serve` with real clients: Python smtplib (plain and pipelined), swaks, strangers trying to
//! relay, hostile clients, signals and refusals to start. Every message goes through the daemon to
//! a real Postfix `smtp-sink` (the engine's smarthost). Addresses 127.0.91.0/24.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmta_tests::serve::{Daemon, python, wait_for};
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_port, require};

/// A running `vmta serve`, where it listens and its event log.
struct Serve {
    daemon: Daemon,
    addr: SocketAddr,
    log: PathBuf,
}

/// Writes a configuration relaying for `allowed` on a free port of `ip` to `sink`; `extra` is
/// appended to the `[[listener]]` table.
fn write_config(dir: &Path, ip: &str, sink: SocketAddr, allowed: &str, extra: &str) -> PathBuf {
    let port = free_tcp_port(ip);
    let text = format!(
        "[engine]\nspool_dir = \"{spool}\"\nshards = 2\nhelo_name = \"relay.vmta.test\"\n\
         [serve]\nevent_log = \"{log}\"\nshutdown_grace_s = 5\n\
         [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n[shaping]\nrules = '''\n{unshaped}'''\n\
         [[listener]]\naddress = \"{ip}:{port}\"\nrole = \"relay\"\n\
         allowed_networks = [{allowed}]\n{extra}\n",
        unshaped = vmta_testworld::world::UNSHAPED,
        spool = dir.join("spool").display(),
        log = dir.join("events.jsonl").display(),
    );
    let path = dir.join("vmta.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn listen_addr(config: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(config).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("address = ") && !text.contains(&format!("[smarthost]\n{l}")))
        .unwrap();
    line.trim_start_matches("address = ")
        .trim_matches('"')
        .parse()
        .unwrap()
}

fn start(config: &Path) -> Serve {
    Serve {
        daemon: Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), config),
        addr: listen_addr(config),
        log: config.with_file_name("events.jsonl"),
    }
}

/// smtplib sends `n` messages over one connection; prints each reply to the data.
const SMTPLIB_SEND: &str = r#"
import smtplib, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = smtplib.SMTP(host, port, local_hostname="app.client.test", timeout=20)
s.ehlo()
assert s.has_extn("pipelining") and s.has_extn("chunking") and s.has_extn("size"), s.esmtp_features
for i in range(n):
    msg = "From: app@client.test\r\nTo: user%d@dest.test\r\nSubject: smtplib %d\r\n\r\n.line with a dot\r\nbody %d\r\n" % (i, i, i)
    s.sendmail("app@client.test", ["user%d@dest.test" % i], msg)
    code, text = s.noop()
    assert code == 250
s.quit()
print("sent", n)
"#;

/// A pipelined client on a raw socket: EHLO, then MAIL, RCPTs and DATA in one write (RFC 2920),
/// the body after the 354; several transactions in a row. Prints the replies it got.
const PIPELINED_SEND: &str = r#"
import socket, sys
host, port, n, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sock = socket.create_connection((host, port), timeout=20, source_address=(source, 0))
f = sock.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline().decode()
        assert l, "connection closed"
        lines.append(l.strip())
        if l[3] == " ":
            return lines
print(reply())
sock.sendall(b"EHLO pipe.client.test\r\n")
caps = reply()
assert "250-PIPELINING" in caps, caps
for i in range(n):
    sock.sendall(("MAIL FROM:<pipe@client.test>\r\nRCPT TO:<p%da@dest.test>\r\nRCPT TO:<p%db@dest.test>\r\nDATA\r\n" % (i, i)).encode())
    for _ in range(4):
        print(reply())
    sock.sendall(("From: pipe@client.test\r\nSubject: pipelined %d\r\n\r\nhello\r\n.\r\n" % i).encode())
    print(reply())
sock.sendall(b"QUIT\r\n")
print(reply())
"#;

fn sink_count_received(sink: &SmtpSink, text: &str) -> usize {
    sink.messages().iter().filter(|m| m.contains(text)).count()
}

#[test]
fn relays_for_smtplib_a_pipelining_client_and_swaks() {
    let dir = TempDir::new("serve-relay");
    let sink = SmtpSink::start("127.0.91.1", &[]);
    let config = write_config(dir.path(), "127.0.91.1", sink.addr, "\"127.0.0.0/8\"", "");
    let serve = start(&config);
    let (host, port) = (serve.addr.ip().to_string(), serve.addr.port().to_string());

    let (ok, out) = python(SMTPLIB_SEND, &[host.clone(), port.clone(), "10".into()]);
    assert!(ok, "smtplib: {out}");
    let (ok, out) = python(
        PIPELINED_SEND,
        &[host.clone(), port.clone(), "5".into(), "127.0.0.1".into()],
    );
    assert!(ok, "pipelined client: {out}");
    assert_eq!(out.matches("250 2.0.0 Ok: queued as").count(), 5, "{out}");
    assert_eq!(out.matches("'354 ").count(), 5, "{out}");

    let swaks = require("swaks");
    let out = Command::new(swaks)
        .args(["--server", &serve.addr.to_string()])
        .args(["--from", "swaks@client.test", "--to", "swaks@dest.test"])
        .args(["--helo", "swaks.client.test", "--pipeline"])
        .args(["--header", "Subject: via swaks"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "swaks: {text}");
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");

    // 10 + 5 (two recipients each: one copy per transaction) + 1 reach the sink.
    wait_for("16 messages at the sink", Duration::from_secs(30), || {
        sink.received() >= 16
    });
    assert_eq!(sink.received(), 16);
    assert_eq!(sink_count_received(&sink, "Subject: smtplib "), 10);
    assert_eq!(sink_count_received(&sink, "Subject: pipelined "), 5);
    assert_eq!(sink_count_received(&sink, "Subject: via swaks"), 1);
    // Dot-unstuffed on the way in, stuffed again on the way out: the line arrives as sent.
    assert!(
        sink.messages()
            .iter()
            .any(|m| m.contains("\n.line with a dot\r\n") || m.contains("\n.line with a dot\n"))
    );
    // The trace field: the client's HELO name and address, ESMTP, the queue id, the date.
    let m = sink
        .messages()
        .into_iter()
        .find(|m| m.contains("Subject: via swaks"))
        .unwrap();
    assert!(
        m.contains("Received: from swaks.client.test ([127.0.0.1])"),
        "{m}"
    );
    assert!(
        m.contains("by relay.vmta.test (vmta) with ESMTP id "),
        "{m}"
    );

    // The event log: received lines with the client, deliveries carrying the client address.
    wait_for(
        "16 receptions and deliveries logged",
        Duration::from_secs(10),
        || {
            let log = std::fs::read_to_string(&serve.log).unwrap_or_default();
            log.matches("\"event\":\"delivered\"").count() >= 16
                && log.matches("\"event\":\"received\"").count() >= 16
        },
    );
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert_eq!(log.matches("\"event\":\"received\"").count(), 16, "{log}");
    assert!(log.contains("\"helo\":\"app.client.test\""), "{log}");
    assert!(
        log.contains("\"tags\":{\"client_ip\":\"127.0.0.1\""),
        "{log}"
    );
}

#[test]
fn a_stranger_cannot_relay() {
    let dir = TempDir::new("serve-stranger");
    let sink = SmtpSink::start("127.0.91.2", &[]);
    let config = write_config(dir.path(), "127.0.91.2", sink.addr, "\"127.0.0.1/32\"", "");
    let serve = start(&config);
    let (host, port) = (serve.addr.ip().to_string(), serve.addr.port().to_string());
    // From 127.0.0.2: every recipient refused, DATA finds none.
    let (_, out) = python(
        PIPELINED_SEND,
        &[host.clone(), port.clone(), "1".into(), "127.0.0.2".into()],
    );
    assert_eq!(out.matches("550 5.7.1").count(), 2, "{out}");
    assert!(out.contains("Relay access denied"), "{out}");
    assert!(
        out.contains("554 5.5.1 Error: no valid recipients"),
        "{out}"
    );
    assert!(!out.contains("queued as"), "{out}");
    // From 127.0.0.1 the same conversation relays.
    let (ok, out) = python(
        PIPELINED_SEND,
        &[host, port, "1".into(), "127.0.0.1".into()],
    );
    assert!(ok && out.contains("queued as"), "{out}");
    wait_for("the allowed message", Duration::from_secs(20), || {
        sink.received() >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received(), 1, "the stranger's message was queued");
    let log = std::fs::read_to_string(&serve.log).unwrap();
    assert_eq!(log.matches("\"event\":\"received\"").count(), 1, "{log}");
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_ne!(v["client_ip"], "127.0.0.2", "{line}");
    }
}

#[test]
fn sigterm_stops_cleanly_and_sighup_reopens_the_log() {
    let dir = TempDir::new("serve-signals");
    let sink = SmtpSink::start("127.0.91.3", &[]);
    let config = write_config(dir.path(), "127.0.91.3", sink.addr, "\"127.0.0.0/8\"", "");
    let mut serve = start(&config);
    let (host, port) = (serve.addr.ip().to_string(), serve.addr.port().to_string());
    let (ok, out) = python(SMTPLIB_SEND, &[host.clone(), port.clone(), "2".into()]);
    assert!(ok, "{out}");
    wait_for("2 deliveries", Duration::from_secs(20), || {
        std::fs::read_to_string(&serve.log)
            .unwrap_or_default()
            .matches("\"event\":\"delivered\"")
            .count()
            >= 2
    });
    // logrotate: move the log away, SIGHUP, the next lines go to a new file at the old path.
    let rotated = dir.path().join("events.jsonl.1");
    std::fs::rename(&serve.log, &rotated).unwrap();
    // SAFETY: kill with a valid pid and signal has no memory-safety preconditions.
    unsafe { libc::kill(serve.daemon.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(700));
    let (ok, out) = python(SMTPLIB_SEND, &[host.clone(), port.clone(), "1".into()]);
    assert!(ok, "{out}");
    wait_for(
        "a delivery in the reopened log",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&serve.log)
                .unwrap_or_default()
                .contains("\"event\":\"delivered\"")
        },
    );
    assert_eq!(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .matches("\"event\":\"received\"")
            .count(),
        2
    );
    // A client in the middle of a session when SIGTERM comes gets 421 4.3.2 at its next command.
    let mut c = TcpStream::connect(serve.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    c.write_all(b"EHLO x\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = c.read(&mut buf).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(serve.daemon.pid() as i32, libc::SIGTERM) };
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        String::from_utf8_lossy(&rest).contains("421 4.3.2"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = serve.daemon.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(TcpStream::connect(serve.addr).is_err(), "still listening");
}

fn serve_fails(config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmta"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn refuses_to_start_with_one_clear_line() {
    let dir = TempDir::new("serve-refuse");
    let sink: SocketAddr = "127.0.91.4:25".parse().unwrap();
    let config = write_config(dir.path(), "127.0.91.4", sink, "\"127.0.0.0/8\"", "");
    // A port in use.
    let taken = std::net::TcpListener::bind(listen_addr(&config)).unwrap();
    let err = serve_fails(&config);
    assert!(err.contains("cannot listen on 127.0.91.4:"), "{err}");
    drop(taken);
    // A bad value, named.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("127.0.0.0/8", "127.0.0.0/33")).unwrap();
    let err = serve_fails(&config);
    assert!(err.contains("listener[0].allowed_networks"), "{err}");
    // An unknown key.
    std::fs::write(&config, text.replace("[serve]\n", "[serve]\nbogus = 1\n")).unwrap();
    let err = serve_fails(&config);
    assert!(err.contains("bogus"), "{err}");
    // A file that cannot be read.
    let err = serve_fails(&dir.path().join("missing.toml"));
    assert!(err.contains("cannot read"), "{err}");
    // An event log that cannot be opened.
    std::fs::write(
        &config,
        text.replace("events.jsonl", "no-such-dir/events.jsonl"),
    )
    .unwrap();
    let err = serve_fails(&config);
    assert!(err.contains("cannot open event log"), "{err}");
}
