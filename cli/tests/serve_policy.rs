//! `vmta serve` applies the engine's sender policy with clear replies: a sender the tenant does not
//! approve (envelope at MAIL, From at the end of data), a locked account, a suppressed recipient at
//! RCPT, an invalid message; and a full spool is `452 4.3.1` with every acknowledged message kept.
//! Addresses 127.0.96.0/24.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_port};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &Path) -> Serve {
    let ready = config.with_file_name("ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmta"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "vmta serve exited");
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    Serve(child)
}

/// A line-at-a-time SMTP client.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        assert!(c.reply().starts_with("220 "));
        assert!(c.cmd("EHLO policy.client.test").starts_with("250 "));
        c
    }

    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.trim_end().to_string();
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.w.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }

    /// MAIL, RCPT, DATA and the message; the reply to the data (or the first refusal).
    fn send(&mut self, from: &str, to: &str, message: &str) -> String {
        for (line, want) in [
            (format!("MAIL FROM:<{from}>"), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_string(), "354"),
        ] {
            let r = self.cmd(&line);
            if !r.starts_with(want) {
                let _ = self.cmd("RSET");
                return r;
            }
        }
        self.w.write_all(message.as_bytes()).unwrap();
        self.w.write_all(b".\r\n").unwrap();
        self.reply()
    }
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

fn listen(ip: &str) -> SocketAddr {
    format!("{ip}:{}", free_tcp_port(ip)).parse().unwrap()
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
    let (relay, locked) = (listen("127.0.96.2"), listen("127.0.96.3"));
    let cfg = config(
        dir.path(),
        sink.addr,
        &[(relay, "relay"), (locked, "locked")],
        &spool,
    );
    let _serve = start(&cfg);
    let mut c = Client::connect(relay);
    let good = "From: a@client.test\r\nSubject: approved\r\n\r\nhi\r\n";
    let r = c.send("x@other.test", "ok@dest.test", good);
    assert!(
        r.starts_with("550 5.7.1") && r.contains("not approved"),
        "{r}"
    );
    let r = c.send("a@client.test", "gone@dest.test", good);
    assert!(
        r.starts_with("550 5.7.1") && r.contains("suppressed"),
        "{r}"
    );
    let r = c.send(
        "a@client.test",
        "ok@dest.test",
        "From: evil@other.test\r\nSubject: spoofed\r\n\r\nhi\r\n",
    );
    assert!(
        r.starts_with("550 5.7.1") && r.contains("not approved"),
        "{r}"
    );
    let r = c.send(
        "a@client.test",
        "ok@dest.test",
        "Subject: no from\r\n\r\nhi\r\n",
    );
    assert!(r.starts_with("550 5.6.0"), "{r}");
    let r = c.send("a@client.test", "ok@dest.test", good);
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let mut l = Client::connect(locked);
    let r = l.send("a@client.test", "ok@dest.test", good);
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
    let sink_addr = listen("127.0.96.4");
    let relay = listen("127.0.96.5");
    let cfg = config(dir.path(), sink_addr, &[(relay, "relay")], &spool);
    let serve = start(&cfg);
    let body = format!(
        "From: a@client.test\r\nSubject: fill\r\n\r\n{}",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n".repeat(1400)
    );
    let mut c = Client::connect(relay);
    let mut acked = 0;
    let mut full = None;
    for _ in 0..200 {
        let r = c.send("a@client.test", &format!("u{acked}@dest.test"), &body);
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
    assert!(c.cmd("NOOP").starts_with("250 "));
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
