//! A loopback mail world for engine tests (127.0.50.0/24): a real dnsmasq answering MX and A queries
//! for test domains, and real Postfix `smtp-sink` processes as their MX hosts, all on one port so the
//! engine's `delivery.port` reaches every one of them.

use crate::smtp::SmtpSink;
use crate::{Peer, TempDir, free_tcp_port, free_udp_tcp_port, require, wait_for_tcp};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

/// dnsmasq serving the given `mx-host=` / `host-record=` lines for `*.engine.test`.
#[derive(Debug)]
pub struct Zone {
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    _peer: Peer,
    _dir: TempDir,
}

impl Zone {
    /// Starts dnsmasq on `ip` with these records (dnsmasq configuration lines).
    pub fn start(ip: &str, records: &[String]) -> Zone {
        let program = require("dnsmasq");
        let dir = TempDir::new("zone");
        let port = free_udp_tcp_port(ip);
        let mut conf = format!(
            "port={port}\nlisten-address={ip}\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\nkeep-in-foreground\nlocal-ttl=60\nlocal=/engine.test/\npid-file={}/dnsmasq.pid\n",
            dir.path().display()
        );
        for r in records {
            conf.push_str(r);
            conf.push('\n');
        }
        let path = dir.path().join("dnsmasq.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new(program);
        cmd.arg("-C")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
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
}

/// A port free on every one of `ips`.
pub fn common_port(ips: &[&str]) -> u16 {
    loop {
        let p = free_tcp_port(ips[0]);
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, p)).is_ok())
        {
            return p;
        }
    }
}

/// Starts an smtp-sink on `ip:port` with extra flags.
pub fn sink_at(ip: &str, port: u16, flags: &[&str]) -> SmtpSink {
    SmtpSink::start_on(format!("{ip}:{port}").parse().unwrap(), flags)
}

/// The engine configuration every engine test starts from: two unpinned shards, a spool in `spool`
/// with 2 MiB segments (tests run side by side; 64 MiB each would fill a small disk), the zone's
/// nameserver, the sinks' port, no TLS and no shaping. Tests add durability, limits and timeouts.
pub fn test_engine(
    spool: &TempDir,
    dns: SocketAddr,
    port: u16,
) -> vmta::engine::config::EngineConfigBuilder {
    vmta::engine::EngineConfig::builder()
        .shards(2)
        .pin_shards(false)
        .spool_dir(spool.path())
        .spool_segment_mb(2)
        .nameservers(&[&dns.to_string()])
        .port(port)
        .tls(vmta::engine::config::TlsPolicy::Disabled)
        .shaping_rules(vmta_testworld::world::UNSHAPED)
}
