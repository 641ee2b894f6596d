//! `vmta serve` applies the engine's sender policy with clear replies: a sender the tenant does not
//! approve (envelope at MAIL, From at the end of data), a locked account, a suppressed recipient at
//! RCPT, an invalid message; and a full spool is `452 4.3.1` with every acknowledged message kept.
//! Addresses 127.0.96.0/24.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmta_tests::serve::Daemon;
use vmta_tests::shaping::SmtpClient;
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_addr};

fn start(config: &Path) -> Daemon {
    Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), config)
}

/// A session that has said EHLO.
fn client(addr: SocketAddr) -> SmtpClient {
    let (mut c, greeting) = SmtpClient::connect(addr, Duration::from_secs(20)).unwrap();
    assert_eq!(greeting.0, 220);
    assert_eq!(c.command("EHLO policy.client.test").unwrap().0, 250);
    c
}

/// One transaction; the first refusal or the reply to the data, as `CODE TEXT`; RSET after a
/// refusal so the next transaction starts clean.
fn send(c: &mut SmtpClient, from: &str, to: &str, message: &str) -> String {
    let (code, text) = c.send_message(from, to, message).unwrap();
    if code >= 400 {
        c.command("RSET").unwrap();
    }
    format!("{code} {text}")
}

fn config(dir: &Path, sink: SocketAddr, listeners: &[(SocketAddr, &str)], spool: &Path) -> PathBuf {
    let mut text = format!(
        "[engine]\nspool_dir = \"{spool}\"\nshards = 1\nspool_segment_mb = 1\n\
         [serve]\nevent_log = \"\"\n\
         [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n\
         [shaping]\nrules = '''\n{unshaped}'''\n\
         [retry]\npolicy = \"exponential\"\nfirst_s = 1\nmax_s = 1\njitter = 0.0\n\
         [[tenant]]\nname = \"relay\"\npool = \"default\"\nsender_domains = [\"client.test\"]\n\
         [[tenant]]\nname = \"locked\"\npool = \"default\"\nsender_domains = [\"client.test\"]\nlocked = true\n",
        spool = spool.display(),
        unshaped = vmta_testworld::world::UNSHAPED,
    );
    for (addr, tenant) in listeners {
        text.push_str(&format!(
            "[[listener]]\naddress = \"{addr}\"\nrole = \"relay\"\ntenant = \"{tenant}\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\nmax_message_size = 1000000\n"
        ));
    }
    let path = dir.join("vmta.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn tenant_policy_and_suppression_answer_with_clear_replies() {
    let dir = TempDir::new("serve-policy");
    let sink = SmtpSink::start("127.0.96.1", &[]);
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // A suppressed recipient, recorded before the daemon starts.
    let st = Command::new(env!("CARGO_BIN_EXE_vmta"))
        .arg("suppress")
        .arg("--store")
        .arg(spool.join("suppression.log"))
        .args(["add", "--tenant", "relay", "gone@dest.test"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let (relay, locked) = (free_tcp_addr("127.0.96.2"), free_tcp_addr("127.0.96.3"));
    let cfg = config(
        dir.path(),
        sink.addr,
        &[(relay, "relay"), (locked, "locked")],
        &spool,
    );
    let _serve = start(&cfg);
    let mut c = client(relay);
    let good = "From: a@client.test\r\nSubject: approved\r\n\r\nhi\r\n";
    let r = send(&mut c, "x@other.test", "ok@dest.test", good);
    assert!(
        r.starts_with("550 5.7.1") && r.contains("not approved"),
        "{r}"
    );
    let r = send(&mut c, "a@client.test", "gone@dest.test", good);
    assert!(
        r.starts_with("550 5.7.1") && r.contains("suppressed"),
        "{r}"
    );
    let r = send(
        &mut c,
        "a@client.test",
        "ok@dest.test",
        "From: evil@other.test\r\nSubject: spoofed\r\n\r\nhi\r\n",
    );
    assert!(
        r.starts_with("550 5.7.1") && r.contains("not approved"),
        "{r}"
    );
    let r = send(
        &mut c,
        "a@client.test",
        "ok@dest.test",
        "Subject: no from\r\n\r\nhi\r\n",
    );
    assert!(r.starts_with("550 5.6.0"), "{r}");
    let r = send(&mut c, "a@client.test", "ok@dest.test", good);
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let mut l = client(locked);
    let r = send(&mut l, "a@client.test", "ok@dest.test", good);
    assert!(r.starts_with("550 5.7.1") && r.contains("locked"), "{r}");
    // Only the approved message reaches the sink.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.received() < 1 {
        assert!(
            Instant::now() < deadline,
            "the approved message did not arrive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let m = sink.messages();
    assert_eq!(m.len(), 1);
    assert!(m[0].contains("Subject: approved"));
}

struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_spool_is_452_and_keeps_every_acknowledged_message() {
    let dir = TempDir::new("serve-full");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&spool)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs needs root or CAP_SYS_ADMIN");
    let _fs = Tmpfs(spool.clone());
    // Nothing listens at the smarthost yet: mail stays queued and the spool fills.
    let sink_addr = free_tcp_addr("127.0.96.4");
    let relay = free_tcp_addr("127.0.96.5");
    let cfg = config(dir.path(), sink_addr, &[(relay, "relay")], &spool);
    let serve = start(&cfg);
    let body = format!(
        "From: a@client.test\r\nSubject: fill\r\n\r\n{}",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n".repeat(1400)
    );
    let mut c = client(relay);
    let mut acked = 0;
    let mut full = None;
    for _ in 0..200 {
        let r = send(
            &mut c,
            "a@client.test",
            &format!("u{acked}@dest.test"),
            &body,
        );
        if r.starts_with("250 ") {
            acked += 1;
        } else {
            full = Some(r);
            break;
        }
    }
    let full = full.expect("the spool never filled");
    assert!(full.starts_with("452 4.3.1"), "{full}");
    assert!(acked > 5, "only {acked} fit");
    // The daemon keeps serving on the full disk.
    assert_eq!(c.command("NOOP").unwrap().0, 250);
    drop(serve);
    // Restarted with the smarthost up, it delivers every acknowledged message.
    let sink = SmtpSink::start_on(sink_addr, &[]);
    let _serve = start(&cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.received() < acked {
        assert!(
            Instant::now() < deadline,
            "{} of {acked} delivered",
            sink.received()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
