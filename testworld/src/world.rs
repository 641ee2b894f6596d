//! A whole test world in one call: `hosts` SMTP sinks on 127.0.0.(base+1).. sharing one port, and a
//! DNS responder on 127.0.0.(base) serving `domains` domains spread over those hosts as MX.

use crate::dns::{DnsResponder, Records};
use crate::sink::Sink;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::Ordering;

/// Shaping rules for the test world's own receivers: no limit (they accept anything) and a short
/// destination backoff (1 s, at most 2 s) so tests of failing hosts run in seconds. Real
/// destinations keep the shipped provider rules.
pub const UNSHAPED: &str = "[defaults]\nmax_connections = 0\nconnection_rate = \"unlimited\"\nmax_messages_per_connection = 0\nmessage_rate = \"unlimited\"\nhourly_cap = 0\ndaily_cap = 0\n[backoff]\ndestination_base = \"1s\"\ndestination_max = \"2s\"\n";

/// The running world.
#[derive(Debug)]
pub struct World {
    /// The DNS responder.
    pub dns: DnsResponder,
    /// The MX hosts.
    pub sinks: Vec<Sink>,
    /// The SMTP port every sink listens on.
    pub port: u16,
    /// The domains, `d{i}.vmta.test`.
    pub domains: Vec<String>,
}

impl World {
    /// Starts the world on 127.0.0.`base` (DNS) and the `hosts` addresses after it.
    pub fn start(base: u8, hosts: u8, domains: usize) -> io::Result<World> {
        let ips: Vec<Ipv4Addr> = (1..=hosts)
            .map(|i| Ipv4Addr::new(127, 0, 0, base + i))
            .collect();
        let port = common_port(&ips)?;
        let mut sinks = Vec::new();
        for ip in &ips {
            sinks.push(Sink::start(SocketAddr::from((*ip, port)))?);
        }
        let mut records = Records::new();
        let mut names = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            records.a(&format!("mx{i}.vmta.test"), *ip);
        }
        for d in 0..domains {
            let name = format!("d{d}.vmta.test");
            records.mx(&name, 10, &format!("mx{}.vmta.test", d % ips.len()));
            names.push(name);
        }
        let dns = DnsResponder::start(SocketAddr::from(([127, 0, 0, base], 0)), records)?;
        Ok(World {
            dns,
            sinks,
            port,
            domains: names,
        })
    }

    /// Messages received by all sinks.
    pub fn received(&self) -> u64 {
        self.sinks
            .iter()
            .map(|s| s.counters().messages.load(Ordering::Relaxed))
            .sum()
    }

    /// Connections accepted by all sinks.
    pub fn connections(&self) -> u64 {
        self.sinks
            .iter()
            .map(|s| s.counters().connections.load(Ordering::Relaxed))
            .sum()
    }
}

fn common_port(ips: &[Ipv4Addr]) -> io::Result<u16> {
    for _ in 0..100 {
        let p = TcpListener::bind((ips[0], 0))?.local_addr()?.port();
        if ips.iter().all(|ip| TcpListener::bind((*ip, p)).is_ok()) {
            return Ok(p);
        }
    }
    Err(io::Error::other("no port free on every test address"))
}
