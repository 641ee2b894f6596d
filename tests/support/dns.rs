//! DNS peers for the resolver tests: real dnsmasq and nsd serving `tests/data/dns` on 127.0.10.0/24 with
//! dynamic ports, and in-process fake nameservers (UDP and TCP) for faults a real server will not
//! produce (silence, wrong IDs, garbage, late answers).
//!
//! Address plan inside 127.0.10.0/24: .1 dnsmasq, .2 nsd, .10 and up fake servers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{Peer, TempDir, data_dir, free_udp_tcp_port, require, wait_for_tcp};

/// The loopback address of the dnsmasq peer.
pub const DNSMASQ_IP: &str = "127.0.10.1";
/// The loopback address of the nsd peer.
pub const NSD_IP: &str = "127.0.10.2";

/// A running DNS server peer with its configuration directory.
#[derive(Debug)]
pub struct DnsServer {
    /// The server's UDP and TCP address.
    pub addr: SocketAddr,
    // Dropped in order: the process first, then its directory.
    _peer: Peer,
    _dir: TempDir,
}

fn render(template: &str, dir: &Path, replacements: &[(&str, String)]) -> String {
    let mut text = template.replace("__DIR__", &dir.display().to_string());
    for (from, to) in replacements {
        assert!(text.contains(from), "template lacks {from:?}");
        text = text.replace(from, to);
    }
    text
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// Starts dnsmasq with `tests/data/dns/dnsmasq.conf` on [`DNSMASQ_IP`] and a free port.
pub fn start_dnsmasq() -> DnsServer {
    let program = require("dnsmasq");
    let dir = TempDir::new("dnsmasq");
    let port = free_udp_tcp_port(DNSMASQ_IP);
    let template =
        std::fs::read_to_string(data_dir().join("dns/dnsmasq.conf")).expect("dnsmasq.conf");
    let conf = render(
        &template,
        dir.path(),
        &[
            ("port=5353", format!("port={port}")),
            (
                "listen-address=127.0.0.53",
                format!("listen-address={DNSMASQ_IP}"),
            ),
        ],
    );
    let conf_path = dir.path().join("dnsmasq.conf");
    std::fs::write(&conf_path, conf).expect("write dnsmasq.conf");
    let mut cmd = Command::new(program);
    cmd.arg("-C")
        .arg(&conf_path)
        .stdout(log_file(dir.path(), "dnsmasq.out"))
        .stderr(log_file(dir.path(), "dnsmasq.log"));
    let mut peer = Peer::spawn("dnsmasq", &mut cmd);
    let addr: SocketAddr = format!("{DNSMASQ_IP}:{port}").parse().unwrap();
    wait_for_tcp(addr, Duration::from_secs(10));
    peer.assert_running();
    DnsServer {
        addr,
        _peer: peer,
        _dir: dir,
    }
}

/// Starts nsd with `tests/data/dns/nsd.conf` and the `test.` zone on [`NSD_IP`] and a free port.
pub fn start_nsd() -> DnsServer {
    let program = require("nsd");
    let dir = TempDir::new("nsd");
    let port = free_udp_tcp_port(NSD_IP);
    let data = data_dir().join("dns");
    for file in ["test.zone", "many.inc"] {
        std::fs::copy(data.join(file), dir.path().join(file)).expect("copy zone data");
    }
    let template = std::fs::read_to_string(data.join("nsd.conf")).expect("nsd.conf");
    // Response rate limiting (on by default in Debian's nsd) would drop or truncate answers when tests
    // and benches ask quickly from one address: turn it off.
    let conf = render(
        &template,
        dir.path(),
        &[
            ("127.0.0.54@5354", format!("{NSD_IP}@{port}")),
            (
                "server:\n",
                "server:\n    rrl-ratelimit: 0\n    rrl-whitelist-ratelimit: 0\n".to_string(),
            ),
        ],
    );
    let conf_path = dir.path().join("nsd.conf");
    std::fs::write(&conf_path, conf).expect("write nsd.conf");
    let mut cmd = Command::new(program);
    cmd.arg("-d")
        .arg("-c")
        .arg(&conf_path)
        .current_dir(dir.path())
        .stdout(log_file(dir.path(), "nsd.out"))
        .stderr(log_file(dir.path(), "nsd.err"));
    let mut peer = Peer::spawn("nsd", &mut cmd);
    let addr: SocketAddr = format!("{NSD_IP}:{port}").parse().unwrap();
    wait_for_tcp(addr, Duration::from_secs(10));
    peer.assert_running();
    DnsServer {
        addr,
        _peer: peer,
        _dir: dir,
    }
}

/// What a fake server sends back for one query: `(delay before sending, bytes)` in order. An empty list
/// is silence.
pub type Script = dyn Fn(&[u8]) -> Vec<(Duration, Vec<u8>)> + Send + Sync;

/// An in-process nameserver on a loopback UDP port and the same TCP port, answering by script. Stops
/// when dropped.
pub struct FakeServer {
    /// The server's UDP and TCP address.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FakeServer {
    /// Serves `udp` over UDP and `tcp` over TCP (queries without the length prefix; the answers are
    /// framed by the server, each `(delay, bytes)` a separate write) on `ip` and a free port.
    pub fn start(ip: &str, udp: Arc<Script>, tcp: Arc<Script>) -> FakeServer {
        let port = free_udp_tcp_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let sock = UdpSocket::bind(addr).expect("bind fake udp");
        let listener = TcpListener::bind(addr).expect("bind fake tcp");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let replies = udp(&buf[..n]);
                let sock = sock.try_clone().expect("clone udp");
                // Late answers must not hold up other queries: send from a thread.
                std::thread::spawn(move || {
                    for (delay, bytes) in replies {
                        std::thread::sleep(delay);
                        let _ = sock.send_to(&bytes, from);
                    }
                });
            }
        });
        let s = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let tcp = tcp.clone();
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).ok();
                    conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    let mut len = [0u8; 2];
                    if conn.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut query).is_err() {
                        return;
                    }
                    for (delay, bytes) in tcp(&query) {
                        std::thread::sleep(delay);
                        if conn.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeServer {
            addr,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
