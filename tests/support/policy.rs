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

/// A key from `tests/data/policy`.
pub fn key(file: &str) -> vmta::dkim::SigningKey {
    let path = data_dir().join("policy").join(file);
    vmta::dkim::SigningKey::from_pem(&std::fs::read_to_string(&path).expect("read key"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The preflight zones on `ip`: a good sender (`good.test`, IP 192.0.2.10, HELO `mta.good.test`, DKIM
/// selector `ed` with `tests/data/policy/ed25519.pem`) and a broken zone for each check; see
/// `tests/policy_preflight.rs` for what each name is for.
pub fn preflight_zone(ip: &str) -> Zone {
    let ed = key("ed25519.pem");
    let rsa = key("rsa2048.pem");
    let mut lines: Vec<String> = vec![
        // The good sender.
        txt_record("good.test", "v=spf1 include:_spf.good.test -all"),
        txt_record(
            "_spf.good.test",
            "v=spf1 ip4:192.0.2.8/29 a:mta.good.test mx:good.test ~all",
        ),
        "host-record=mta.good.test,192.0.2.10".into(),
        "mx-host=good.test,mx.good.test,10".into(),
        "host-record=mx.good.test,192.0.2.25".into(),
        txt_record("ed._domainkey.good.test", &ed.public_key_record()),
        txt_record(
            "_dmarc.good.test",
            "v=DMARC1; p=reject; rua=mailto:dmarc@good.test",
        ),
        // DKIM: another key, a revoked key.
        txt_record("rsa._domainkey.good.test", &rsa.public_key_record()),
        txt_record("old._domainkey.good.test", "v=DKIM1; k=ed25519; p="),
        // SPF variants.
        txt_record("spf-fail.test", "v=spf1 ip4:198.51.100.0/24 -all"),
        "mx-host=spf-fail.test,mx.good.test,10".into(),
        txt_record(
            "void.test",
            "v=spf1 a:v1.void.test a:v2.void.test a:v3.void.test -all",
        ),
        txt_record("redir.test", "v=spf1 redirect=good.test"),
        txt_record("exists.test", "v=spf1 exists:%{i}._ip.%{d} -all"),
        "address=/192.0.2.10._ip.exists.test/127.0.0.2".into(),
        "mx-host=nospf.test,mx.good.test,10".into(),
        txt_record("twospf.test", "v=spf1 -all"),
        txt_record("twospf.test", "v=spf1 +all"),
        // DMARC variants.
        txt_record("_dmarc.monitor.test", "v=DMARC1; p=none"),
        txt_record("monitor.test", "v=spf1 ip4:192.0.2.10 -all"),
        txt_record(
            "_dmarc.other.test",
            "v=DMARC1; p=quarantine; adkim=s; aspf=s",
        ),
        // Reverse DNS: a PTR whose name has no address; a HELO name that is not the PTR name.
        "ptr-record=30.2.0.192.in-addr.arpa,liar.good.test".into(),
        "address=/alias.good.test/192.0.2.10".into(),
        // Blocklists.
        "address=/66.2.0.192.bl.test/127.0.0.2".into(),
        txt_record("66.2.0.192.bl.test", "listed: sent spam to our traps"),
        "address=/77.2.0.192.bl.test/127.255.255.254".into(),
        "address=/listed.test.dbl.test/127.0.1.2".into(),
        // MX variants.
        "mx-host=nullmx.test,.,0".into(),
        "host-record=nomx.test,192.0.2.40".into(),
    ];
    // An include chain eleven deep.
    for i in 0..11 {
        lines.push(txt_record(
            &format!("l{i}.loop.test"),
            &format!("v=spf1 include:l{}.loop.test -all", i + 1),
        ));
    }
    lines.push(txt_record("l11.loop.test", "v=spf1 +all"));
    start_zone(ip, &["test", "2.0.192.in-addr.arpa"], &lines)
}
