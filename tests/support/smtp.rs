//! Real SMTP peers for the session tests: Postfix `smtp-sink` (with its fault flags and a dump
//! directory to count what it received) and an aiosmtpd STARTTLS server with a throwaway CA.

use crate::{Peer, TempDir, free_tcp_port, require, wait_for_tcp};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

/// A running `smtp-sink`.
#[derive(Debug)]
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it writes one file per received message.
    pub dump: TempDir,
    _peer: Peer,
}

impl SmtpSink {
    /// Starts `smtp-sink` on `ip` (a free port) with extra flags such as `["-r", "RCPT"]`.
    pub fn start(ip: &str, flags: &[&str]) -> SmtpSink {
        let port = free_tcp_port(ip);
        SmtpSink::start_on(format!("{ip}:{port}").parse().unwrap(), flags)
    }

    /// Starts `smtp-sink` on `addr` with extra flags.
    pub fn start_on(addr: SocketAddr, flags: &[&str]) -> SmtpSink {
        let bin = require("smtp-sink");
        let dump = TempDir::new("sink");
        // smtp-sink drops privileges to `nobody` when run as root; let it write the dumps.
        let _ = std::fs::set_permissions(
            dump.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        );
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dump.path().display()))
            .args(flags)
            .arg(addr.to_string())
            .arg("256")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut peer = Peer::spawn("smtp-sink", &mut cmd);
        wait_for_tcp(addr, Duration::from_secs(10));
        peer.assert_running();
        SmtpSink {
            addr,
            dump,
            _peer: peer,
        }
    }

    /// How many messages it has received (transactions that reached the end of data).
    pub fn received(&self) -> usize {
        self.messages().len()
    }

    /// The received messages as dumped (smtp-sink also dumps transactions that never reached DATA;
    /// those lack the `Received:` header it adds at the end of data and are left out).
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(d) = std::fs::read_dir(self.dump.path()) {
            for e in d.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path())
                    && s.contains("\nReceived: ")
                {
                    out.push(s);
                }
            }
        }
        out
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A running aiosmtpd STARTTLS server.
#[derive(Debug)]
pub struct StartTlsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA certificate (PEM) that signed its certificate for `mx.starttls.test`.
    pub ca_pem: Vec<u8>,
    /// The CA file.
    pub ca_path: PathBuf,
    /// One line per delivered message: `DELIVERED <tls|plain> <from> <rcpts> <bytes>`.
    pub delivered: Receiver<String>,
    _dir: TempDir,
    _peer: Peer,
}

impl StartTlsServer {
    /// Starts the server on `ip` (a free port).
    pub fn start(ip: &str) -> StartTlsServer {
        let python = require("python3");
        let dir = TempDir::new("starttls");
        let port = free_tcp_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let script = crate::data_dir().join("peers/starttls_server.py");
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .arg(ip)
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut peer = Peer::spawn("aiosmtpd STARTTLS server", &mut cmd);
        let stdout = peer.take_stdout().expect("piped stdout");
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = ready_tx.send(());
                } else if line.starts_with("DELIVERED") {
                    let _ = tx.send(line);
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("STARTTLS server did not start (is aiosmtpd/trustme installed? run .ci/deps)");
        wait_for_tcp(addr, Duration::from_secs(10));
        let ca_path = dir.path().join("ca.pem");
        let ca_pem = std::fs::read(&ca_path).expect("ca.pem");
        StartTlsServer {
            addr,
            ca_pem,
            ca_path,
            delivered: rx,
            _dir: dir,
            _peer: peer,
        }
    }
}
