//! Support for vmta's integration tests: starting and stopping real peers (Postfix `smtp-sink`,
//! dnsmasq, nsd, a Python STARTTLS server) on loopback addresses, and locating the test data shipped in
//! `tests/data`.
//!
//! A peer is a child process wrapped in [`Peer`], killed and reaped when dropped, so a failing test never
//! leaves a server behind. A missing peer binary is a test failure with the command that installs it
//! (`.ci/deps`), never a silent skip.

pub mod dns;
pub mod engine;
pub mod policy;
pub mod serve;
pub mod shaping;
pub mod smtp;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory holding the test data (`tests/data`).
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Finds a program on `PATH` or in the system directories where Debian puts daemons.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Like [`which`], but a missing program fails the test with the way to install it.
pub fn require(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed: run .ci/deps (it installs the real peers the tests use)"
        )
    })
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    name: String,
}

impl Peer {
    /// Starts `cmd` with its standard input closed; `name` is used in messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> Peer {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Peer {
            child,
            name: name.to_string(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes the child's standard output, when it was piped.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Panics if the process has already exited (a peer that failed to start).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early: {status}", self.name);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until a TCP connection to `addr` succeeds, panicking after `timeout`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if Instant::now() > deadline {
            panic!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh temporary directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/vmta-test-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmta-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago on `ip` (TCP). Tests use one /24 of 127.0.0.0/8 per area, so ports
/// only need to be unique within a test run.
pub fn free_tcp_port(ip: &str) -> u16 {
    let l = std::net::TcpListener::bind((ip, 0)).expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// `ip` with a TCP port that was free a moment ago, as a socket address.
pub fn free_tcp_addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP address"), free_tcp_port(ip))
}

/// A port that was free a moment ago on `ip` for both UDP and TCP (for DNS servers).
pub fn free_udp_tcp_port(ip: &str) -> u16 {
    loop {
        let u = std::net::UdpSocket::bind((ip, 0)).expect("bind udp port 0");
        let port = u.local_addr().expect("local addr").port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}
