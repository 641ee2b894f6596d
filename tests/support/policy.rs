//! Peers for the policy, DKIM and preflight tests: dnsmasq serving zones the test writes (DKIM keys,
//! SPF, DMARC, PTR, blocklist and MX records, good and broken) on 127.0.20.0/24 with a dynamic port, and
//! the independent DKIM verifier (Python dkimpy, `tests/data/policy/dkim_verify.py`).
//!
//! Address plan inside 127.0.20.0/24: .1 to .9 dnsmasq instances (one per test binary that needs one).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Peer, TempDir, data_dir, free_udp_tcp_port, require, wait_for_tcp};

/// A dnsmasq serving the records a test gave it.
#[derive(Debug)]
pub struct Zone {
    /// Its UDP and TCP address.
    pub addr: SocketAddr,
    _peer: Peer,
    _dir: TempDir,
}

/// A dnsmasq `txt-record` line for `text`, split into character-strings of at most 255 octets.
pub fn txt_record(name: &str, text: &str) -> String {
    let parts: Vec<String> = text
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c).replace('"', "\\\"")))
        .collect();
    format!("txt-record={name},{}", parts.join(","))
}

/// Starts dnsmasq on `ip` (inside 127.0.20.0/24) with a free port, answering only from `lines`
/// (dnsmasq configuration directives: `txt-record=`, `host-record=`, `mx-host=`, `ptr-record=`,
/// `address=`, ...). Names under `local_domains` it has no data for get NXDOMAIN.
pub fn start_zone(ip: &str, local_domains: &[&str], lines: &[String]) -> Zone {
    assert!(
        ip.starts_with("127.0.20."),
        "policy tests use 127.0.20.0/24"
    );
    let program = require("dnsmasq");
    let dir = TempDir::new("policy-dnsmasq");
    let port = free_udp_tcp_port(ip);
    let mut conf = format!(
        "port={port}\nlisten-address={ip}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\n\
         keep-in-foreground\nlocal-ttl=1\nlog-queries\nlog-facility=-\npid-file={}\n",
        dir.path().join("dnsmasq.pid").display()
    );
    for d in local_domains {
        conf.push_str(&format!("local=/{d}/\n"));
    }
    for l in lines {
        conf.push_str(l);
        conf.push('\n');
    }
    let conf_path = dir.path().join("dnsmasq.conf");
    std::fs::write(&conf_path, conf).expect("write dnsmasq.conf");
    let log = std::fs::File::create(dir.path().join("dnsmasq.log"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let mut cmd = Command::new(program);
    cmd.arg("-C")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(log);
    let mut peer = Peer::spawn("dnsmasq", &mut cmd);
    let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    wait_for_tcp(addr, Duration::from_secs(10));
    peer.assert_running();
    Zone {
        addr,
        _peer: peer,
        _dir: dir,
    }
}

/// Runs dkimpy over the signed messages in `files`, fetching keys from `dns`. Returns whether every
/// signature verified, and the verifier's output.
pub fn dkimpy_verify(dns: SocketAddr, files: &[&Path]) -> (bool, String) {
    let python = require("python3");
    let script = data_dir().join("policy/dkim_verify.py");
    let out = Command::new(python)
        .arg(script)
        .arg(dns.ip().to_string())
        .arg(dns.port().to_string())
        .args(files)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("ModuleNotFoundError"),
        "dkimpy or dnspython missing (pip install dkimpy dnspython): {text}"
    );
    assert!(
        !text.contains("pynacl module required"),
        "dkimpy needs PyNaCl for ed25519-sha256 (pip install pynacl): {text}"
    );
    (out.status.success(), text)
}
