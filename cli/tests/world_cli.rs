//! `vmta world` as the benchmark scripts use it: the ready and routes files describe the world that
//! really listens, `--expect` ends it with the receivers' report, SIGTERM ends it cleanly, and a
//! timeout short of `--expect` is an error. Addresses 127.0.0.90-98 (the peers' block).

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmta_tests::TempDir;

fn world(base: u8, dir: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmta"))
        .args([
            "world",
            "--base",
            &base.to_string(),
            "--hosts",
            "2",
            "--domains",
            "5",
        ])
        .arg("--ready")
        .arg(dir.join("ready.json"))
        .arg("--routes")
        .arg(dir.join("routes"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vmta world starts")
}

fn ready(dir: &Path, child: &mut Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let path = dir.join("ready.json");
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "vmta world exited early"
        );
        assert!(Instant::now() < deadline, "no ready file after 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Sends one message over its own connection, checking every reply.
fn send(addr: &str, to: &str) {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut reply = |want: &str| loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with(want), "wanted {want}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    reply("220");
    for (cmd, want) in [
        ("EHLO test.vmta.test\r\n".to_string(), "250"),
        ("MAIL FROM:<s@sender.vmta.test>\r\n".to_string(), "250"),
        (format!("RCPT TO:<{to}>\r\n"), "250"),
        ("DATA\r\n".to_string(), "354"),
        ("Subject: t\r\n\r\nbody\r\n.\r\n".to_string(), "250"),
        ("QUIT\r\n".to_string(), "221"),
    ] {
        w.write_all(cmd.as_bytes()).unwrap();
        reply(want);
    }
}

fn report(child: Child) -> (bool, Value) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().last().expect("a report line");
    (out.status.success(), serde_json::from_str(line).unwrap())
}

#[test]
fn expect_ends_with_the_receivers_report() {
    let dir = TempDir::new("world-expect");
    let mut child = world(93, dir.path(), &["--expect", "3", "--timeout", "60"]);
    let r = ready(dir.path(), &mut child);
    let port = r["smtp_port"].as_u64().unwrap();
    assert!(r["dns"].as_str().unwrap().starts_with("127.0.0.93:"));
    assert_eq!(r["hosts"], serde_json::json!(["127.0.0.94", "127.0.0.95"]));
    assert_eq!(r["domains"], 5);
    let routes = std::fs::read_to_string(dir.path().join("routes")).unwrap();
    let lines: Vec<&str> = routes.lines().collect();
    assert_eq!(lines.len(), 5);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(
            *line,
            format!("d{i}.vmta.test 127.0.0.{} {port}", 94 + i % 2),
            "domain i is on host i % hosts"
        );
    }
    for (i, line) in lines.iter().take(3).enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        send(&format!("{}:{}", f[1], f[2]), &format!("user{i}@{}", f[0]));
    }
    let (ok, report) = report(child);
    assert!(ok, "exit status 0 once the expected count arrived");
    assert_eq!(report["received"], 3);
    assert_eq!(report["connections"], 3);
    let s = report["seconds"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&s), "seconds {s}");
}

#[test]
fn sigterm_stops_it_cleanly() {
    let dir = TempDir::new("world-sigterm");
    let mut child = world(96, dir.path(), &["--timeout", "60"]);
    let r = ready(dir.path(), &mut child);
    send(
        &format!("127.0.0.97:{}", r["smtp_port"]),
        "user0@d0.vmta.test",
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (ok, report) = report(child);
    assert!(ok, "SIGTERM without --expect is a clean end");
    assert_eq!(report["received"], 1);
}

#[test]
fn timeout_short_of_expect_fails() {
    let dir = TempDir::new("world-timeout");
    let mut child = world(90, dir.path(), &["--expect", "5", "--timeout", "1"]);
    let _ = ready(dir.path(), &mut child);
    let (ok, report) = report(child);
    assert!(!ok, "exit status 1 when --expect was not reached");
    assert_eq!(report["received"], 0);
}
