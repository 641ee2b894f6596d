//! Reloads and edits beside a running `vmta serve` under load, with real peers: Postfix `smtp-sink`
//! behind the daemon, SMTP clients in front of it, and the `vmta reload`, `vmta suppress --config`
//! and `vmta queue --remove` commands reaching it through its control socket. `cargo test reload`
//! and `cargo test concurrent_edit` run them. Addresses 127.0.88.0/24.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmta_tests::serve::{Daemon, wait_for};
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_addr};

/// Writes a configuration relaying on `listen` to `sink`, with `shaping` appended to the
/// unshaped rules.
fn write_config(dir: &Path, listen: SocketAddr, sink: SocketAddr, shaping: &str) -> PathBuf {
    let text = format!(
        "[engine]\nspool_dir = \"{spool}\"\nshards = 2\nhelo_name = \"relay.vmta.test\"\n\
         [serve]\nevent_log = \"{log}\"\nshutdown_grace_s = 5\n\
         [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n\
         [shaping]\nrules = '''\n{unshaped}{shaping}'''\n\
         [[listener]]\naddress = \"{listen}\"\nrole = \"relay\"\n\
         allowed_networks = [\"127.0.0.0/8\"]\n",
        unshaped = vmta_testworld::world::UNSHAPED,
        spool = dir.join("spool").display(),
        log = dir.join("events.jsonl").display(),
    );
    let path = dir.join("vmta.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `vmta COMMAND --config CONFIG REST...`.
fn vmta(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmta"))
        .arg(args[0])
        .arg("--config")
        .arg(config)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}: {}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Sends `count` messages to `u<n>@<domain>` over one connection; each message carries
/// `Subject: token <tag>-<n> end`, and every one that got its `250` goes into `acked` as
/// (token, queue id).
fn client(
    addr: SocketAddr,
    tag: &str,
    domain: &str,
    count: usize,
    acked: &Mutex<Vec<(String, String)>>,
) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut reply = || -> String {
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    };
    assert!(reply().starts_with("220"));
    w.write_all(b"EHLO edit.client.test\r\n").unwrap();
    assert!(reply().starts_with("250"));
    for n in 0..count {
        let token = format!("{tag}-{n}");
        let cmds = format!(
            "MAIL FROM:<c@client.test>\r\nRCPT TO:<u{n}@{domain}>\r\nDATA\r\n\
             From: c@client.test\r\nSubject: token {token} end\r\n\r\nx\r\n.\r\n"
        );
        w.write_all(cmds.as_bytes()).unwrap();
        for want in ["250", "250", "354"] {
            let l = reply();
            assert!(l.starts_with(want), "{token}: {l}");
        }
        let l = reply();
        let id = l
            .trim_end()
            .strip_prefix("250 2.0.0 Ok: queued as ")
            .unwrap_or_else(|| panic!("{token}: {l}"));
        acked.lock().unwrap().push((token, id.to_string()));
    }
    w.write_all(b"QUIT\r\n").unwrap();
}

/// The tokens the sink received, each as often as it came.
fn tokens(sink: &SmtpSink) -> Vec<String> {
    sink.messages()
        .iter()
        .filter_map(|m| {
            let rest = &m[m.find("Subject: token ")? + "Subject: token ".len()..];
            Some(rest[..rest.find(" end")?].to_string())
        })
        .collect()
}

fn events(config: &Path, kind: &str) -> usize {
    std::fs::read_to_string(config.with_file_name("events.jsonl"))
        .unwrap_or_default()
        .matches(&format!("\"event\":\"{kind}\""))
        .count()
}

/// Stops the daemon with SIGTERM and waits for its clean exit.
fn stop(mut daemon: Daemon) {
    // SAFETY: kill with a valid pid and signal has no memory-safety preconditions.
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit 30 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Suppression edits (adds, removes, compactions) and queue removals go through the running
/// daemon while 1,000 messages relay through it; a second writer of the suppression log is
/// refused with the daemon's pid. Afterwards every acknowledged edit is in the log the daemon
/// left, and every acknowledged message reached the sink exactly once or was cancelled.
#[test]
fn concurrent_edit_of_suppressions_and_queue_under_load() {
    let dir = TempDir::new("serve-edit");
    let sink = SmtpSink::start("127.0.88.1", &[]);
    let listen = free_tcp_addr("127.0.88.1");
    // held.test gets one message an hour: the first of three goes, two wait to be cancelled.
    let config = write_config(
        dir.path(),
        listen,
        sink.addr,
        "[[domain]]\ndomains = [\"held.test\"]\nmessage_rate = \"1/h\"\n",
    );
    let daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &config);
    let held = Mutex::new(Vec::new());
    client(listen, "held", "held.test", 3, &held);
    let held = held.into_inner().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|c| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                client(listen, &format!("load{c}"), "dest.test", 250, &acked)
            })
        })
        .collect();

    // A second writer of the log beside the daemon is refused, naming it.
    let log = dir.path().join("spool/suppression.log");
    let o = Command::new(env!("CARGO_BIN_EXE_vmta"))
        .args(["suppress", "--store"])
        .arg(&log)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        show(&o).contains(&format!("in use by process {}", daemon.pid())),
        "{}",
        show(&o)
    );
    // Edits through the daemon while the load runs.
    let mut kept = Vec::new();
    for k in 0..30 {
        let address = format!("edit{k}@x.test");
        let o = vmta(
            &["suppress", "add", "--tenant", "default", &address],
            &config,
        );
        assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        assert!(show(&o).contains(&address), "{}", show(&o));
        if k % 3 == 0 {
            let o = vmta(
                &["suppress", "remove", "--tenant", "default", &address],
                &config,
            );
            assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        } else {
            kept.push(address);
        }
        if k % 10 == 9 {
            let o = vmta(&["suppress", "compact"], &config);
            assert_eq!(o.status.code(), Some(0), "{}", show(&o));
        }
    }
    let o = vmta(
        &["suppress", "check", "--tenant", "default", "edit1@x.test"],
        &config,
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = vmta(
        &["suppress", "check", "--tenant", "default", "edit3@x.test"],
        &config,
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    // Queue removal through the daemon: the spool is locked, the socket is beside it.
    let shard = dir.path().join("spool/shard-0");
    let mut cancelled = 0;
    for (token, id) in &held {
        let o = Command::new(env!("CARGO_BIN_EXE_vmta"))
            .arg("queue")
            .arg(&shard)
            .args(["--remove", id])
            .output()
            .unwrap();
        match o.status.code() {
            Some(0) => {
                assert!(show(&o).contains("cancelled 1 recipient"), "{}", show(&o));
                cancelled += 1;
            }
            _ => assert!(
                show(&o).contains("no live recipient") && tokens(&sink).contains(token),
                "{token}: {}",
                show(&o)
            ),
        }
    }
    assert!(cancelled >= 2, "{cancelled} of 3 held messages cancelled");
    for t in load {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1000);
    wait_for(
        "every acknowledged message at the sink",
        Duration::from_secs(60),
        || tokens(&sink).len() >= acked.len() + 3 - cancelled,
    );
    wait_for("the cancelled events", Duration::from_secs(10), || {
        events(&config, "cancelled") == cancelled
    });
    stop(daemon);

    // Exactly once: every acknowledged load message, and the held ones not cancelled.
    let mut got = tokens(&sink);
    got.sort();
    let mut want: Vec<String> = acked.iter().map(|(t, _)| t.clone()).collect();
    want.extend(
        held.iter()
            .map(|(t, _)| t.clone())
            .filter(|t| got.contains(t)),
    );
    want.sort();
    assert_eq!(
        got, want,
        "the sink got something twice or missed something"
    );
    assert_eq!(
        got.iter().filter(|t| t.starts_with("held")).count(),
        3 - cancelled
    );
    // Every acknowledged edit is in the log the daemon left (read now without a daemon).
    let o = vmta(&["suppress", "list"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let listed: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["address"].as_str().unwrap().to_string()
        })
        .filter(|a| a.starts_with("edit"))
        .collect();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, kept_sorted);
}

/// Under load, `vmta reload` lowers a destination's message rate and the sink sees the new rate
/// within a second; a broken file sent next is refused while delivery goes on; raising the rate
/// again lets the backlog through, every acknowledged message exactly once.
#[test]
fn reload_lowers_a_destination_rate_under_load_within_a_second() {
    let dir = TempDir::new("serve-reload-rate");
    let sink = SmtpSink::start("127.0.88.2", &[]);
    let listen = free_tcp_addr("127.0.88.2");
    let rule =
        |rate: &str| format!("[[domain]]\ndomains = [\"dest.test\"]\nmessage_rate = \"{rate}\"\n");
    let config = write_config(dir.path(), listen, sink.addr, &rule("100/s"));
    let daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &config);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|c| {
            let acked = acked.clone();
            std::thread::spawn(move || client(listen, &format!("r{c}"), "dest.test", 200, &acked))
        })
        .collect();
    let count = || tokens(&sink).len();
    wait_for("100 deliveries", Duration::from_secs(30), || count() >= 100);
    let (c0, t0) = (count(), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let before = (count() - c0) as f64 / t0.elapsed().as_secs_f64();
    assert!(before >= 50.0, "{before:.0} msg/s at 100/s");

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&rule("100/s"), &rule("10/s"))).unwrap();
    let o = vmta(&["reload"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        show(&o).contains("\"applied\":[\"shaping\"]"),
        "{}",
        show(&o)
    );
    // Within a second the old rate's tokens are spent; from then on the sink counts the new one.
    std::thread::sleep(Duration::from_secs(1));
    let (c1, t1) = (count(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let after = (count() - c1) as f64 / t1.elapsed().as_secs_f64();
    eprintln!(
        "sink rate: {before:.0} msg/s at 100/s, {after:.1} msg/s from 1 s after the reload to 10/s"
    );
    assert!(
        (3.0..=15.0).contains(&after),
        "{after:.1} msg/s after the reload to 10/s (before: {before:.0})"
    );

    // A broken file is refused with its key; the running rules stay and mail keeps flowing.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&rule("10/s"), &rule("fast"))).unwrap();
    let c2 = count();
    let o = vmta(&["reload"], &config);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    // Named by file, line and key: `rules = '''` is the file's twelfth line.
    assert!(
        show(&o).contains("reload-refused")
            && show(&o).contains("vmta.toml:12: configuration key `shaping.rules`"),
        "{}",
        show(&o)
    );
    wait_for(
        "deliveries after the refused reload",
        Duration::from_secs(5),
        || count() >= c2 + 5,
    );

    std::fs::write(&config, text.replace(&rule("10/s"), "")).unwrap();
    let o = vmta(&["reload"], &config);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    for t in load {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 800);
    wait_for("the backlog at the sink", Duration::from_secs(60), || {
        count() >= acked.len()
    });
    stop(daemon);
    let mut got = tokens(&sink);
    got.sort();
    let mut want: Vec<String> = acked.into_iter().map(|(t, _)| t).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(events(&config, "reload"), 2);
    assert_eq!(events(&config, "reload-refused"), 1);
}
