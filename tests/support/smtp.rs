//! Real SMTP peers for the session tests: Postfix `smtp-sink` (with its fault flags and a dump
//! directory to count what it received), an aiosmtpd STARTTLS server with a throwaway CA, and a
//! private Postfix `smtpd` (CHUNKING, strict about pipelining).

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

/// A private Postfix instance (Debian's `postfix`, started as root with its own configuration and
/// queue in a temporary directory) whose `smtpd` listens on `ip`. It relays for 127.0.0.0/8 to the
/// `discard` transport (each message logged `status=sent`), refuses recipients whose local part
/// starts with `unknown` (554 5.1.1), and disconnects clients that pipeline commands improperly
/// (`smtpd_forbid_unauth_pipelining = yes`). It offers PIPELINING and CHUNKING. Stopped on drop.
#[derive(Debug)]
pub struct PostfixSmtpd {
    /// Where its smtpd listens.
    pub addr: SocketAddr,
    postfix: PathBuf,
    dir: TempDir,
}

impl PostfixSmtpd {
    /// Starts the instance on `ip` (a free port).
    pub fn start(ip: &str) -> PostfixSmtpd {
        PostfixSmtpd::start_with(ip, "", "")
    }

    /// Starts the instance on `ip` with lines appended to its `main.cf` (a later setting wins, so
    /// they can override the defaults above, for example `default_transport = smtp` and a
    /// `relayhost`) and to its `master.cf`.
    pub fn start_with(ip: &str, main_extra: &str, master_extra: &str) -> PostfixSmtpd {
        let postfix = require("postfix");
        assert!(
            is_root(),
            "a private Postfix instance must be started as root"
        );
        let port = free_tcp_port(ip);
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let dir = TempDir::new("postfix-smtpd");
        let d = dir.path();
        let (etc, spool, data) = (d.join("etc"), d.join("spool"), d.join("data"));
        for p in [&etc, &spool, &data] {
            std::fs::create_dir_all(p).expect("postfix directories");
        }
        // The postfix user must reach its queue and data directories.
        let chmod = |p: &std::path::Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        chmod(d, 0o755);
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown postfix {}", data.display());
        std::fs::write(
            etc.join("unknown.regexp"),
            "/^unknown/ REJECT 5.1.1 no such user\n",
        )
        .expect("write the recipient map");
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {spool}\n\
             data_directory = {data}\n\
             command_directory = /usr/sbin\n\
             daemon_directory = /usr/lib/postfix/sbin\n\
             meta_directory = /etc/postfix\n\
             shlib_directory = /usr/lib/postfix\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             syslog_name = postfix-vmta-test\n\
             maillog_file = {dir}/maillog\n\
             maillog_file_prefixes = {dir}\n\
             myhostname = smtpd.vmta.test\n\
             mydestination =\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             relay_domains =\n\
             mynetworks = 127.0.0.0/8\n\
             inet_interfaces = all\n\
             inet_protocols = ipv4\n\
             smtpd_relay_restrictions = permit_mynetworks, reject\n\
             smtpd_recipient_restrictions = check_recipient_access regexp:{etc}/unknown.regexp\n\
             smtpd_forbid_unauth_pipelining = yes\n\
             smtpd_peername_lookup = no\n\
             smtpd_tls_security_level = none\n\
             smtputf8_enable = no\n\
             default_transport = discard:vmta test\n\
             local_transport = discard:vmta test\n\
             biff = no\n\
             {main_extra}\n",
            spool = spool.display(),
            data = data.display(),
            dir = d.display(),
            etc = etc.display(),
        );
        std::fs::write(etc.join("main.cf"), main_cf).expect("write main.cf");
        let master_cf = format!(
            "{addr} inet n - n - - smtpd\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n\
             {master_extra}\n"
        );
        std::fs::write(etc.join("master.cf"), master_cf).expect("write master.cf");
        let out = Command::new(&postfix)
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .expect("run postfix start");
        assert!(
            out.status.success(),
            "postfix did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let smtpd = PostfixSmtpd { addr, postfix, dir };
        wait_for_tcp(addr, Duration::from_secs(20));
        smtpd
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for PostfixSmtpd {
    fn drop(&mut self) {
        let etc = self.dir.path().join("etc");
        let pid_file = self.dir.path().join("spool/pid/master.pid");
        let master = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let _ = Command::new(&self.postfix)
            .arg("-c")
            .arg(&etc)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The master exits a moment after `stop`; the directory goes only after it.
        if let Some(pid) = master {
            for _ in 0..100 {
                // SAFETY: kill with signal 0 only checks that the process exists.
                if unsafe { libc::kill(pid, 0) } != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
