//! A whole test world in one call: SMTP sinks on 127.0.0.(base+1).. sharing one port (each with its
//! own [`Behaviour`]), served by a few worker threads, and a DNS responder on 127.0.0.(base) serving
//! `domains` domains `d{i}.vmta.test` spread over those hosts as MX (domain `i` on host `i % hosts`,
//! host `h` named `mx{h}.vmta.test`).

use crate::dns::{DnsResponder, Records};
use crate::sink::{Behaviour, Sink, SinkServer};
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
    /// The threads serving them (they stop when the world is dropped).
    _server: SinkServer,
    /// The SMTP port every sink listens on.
    pub port: u16,
    /// The domains, `d{i}.vmta.test`.
    pub domains: Vec<String>,
}

impl World {
    /// Starts the world on 127.0.0.`base` (DNS) and the `hosts` addresses after it, every host
    /// accepting everything, served by two threads.
    pub fn start(base: u8, hosts: u8, domains: usize) -> io::Result<World> {
        World::start_with(
            base,
            &vec![Behaviour::default(); hosts as usize],
            domains,
            2,
        )
    }

    /// Starts the world with one sink per behaviour, served by `threads` threads.
    pub fn start_with(
        base: u8,
        behaviours: &[Behaviour],
        domains: usize,
        threads: usize,
    ) -> io::Result<World> {
        if behaviours.is_empty() || behaviours.len() + base as usize > 255 {
            return Err(io::Error::other("between 1 and 255 - base hosts"));
        }
        let ips: Vec<Ipv4Addr> = (1..=behaviours.len() as u8)
            .map(|i| Ipv4Addr::new(127, 0, 0, base + i))
            .collect();
        let port = common_port(&ips)?;
        let hosts: Vec<(SocketAddr, Behaviour)> = ips
            .iter()
            .zip(behaviours)
            .map(|(ip, b)| (SocketAddr::from((*ip, port)), b.clone()))
            .collect();
        let server = SinkServer::start(&hosts, threads)?;
        let sinks = server.sinks();
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
            _server: server,
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

    /// The host index of domain `i`.
    pub fn host_of(&self, domain: usize) -> usize {
        domain % self.sinks.len()
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
