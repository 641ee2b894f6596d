//! A built-in authoritative DNS responder for the test world: MX and A records for many test domains,
//! served over UDP on a loopback address from one thread.
//!
//! It answers MX queries for its domains (one or more MX hosts each), A queries for its MX host names,
//! and NXDOMAIN (with an SOA for negative caching, RFC 2308) for anything else. Wire format by
//! hickory-proto. Not a general DNS server: no TCP, no AAAA records, no wildcard, no zone files.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The records a responder serves.
#[derive(Debug, Clone, Default)]
pub struct Records {
    mx: HashMap<String, Vec<(u16, String)>>,
    a: HashMap<String, Ipv4Addr>,
}

impl Records {
    /// No records.
    pub fn new() -> Records {
        Records::default()
    }

    /// Adds an MX record.
    pub fn mx(&mut self, domain: &str, preference: u16, host: &str) -> &mut Records {
        self.mx
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .push((preference, host.to_ascii_lowercase()));
        self
    }

    /// Adds an A record.
    pub fn a(&mut self, name: &str, ip: Ipv4Addr) -> &mut Records {
        self.a.insert(name.to_ascii_lowercase(), ip);
        self
    }

    /// Domains with MX records.
    pub fn domains(&self) -> usize {
        self.mx.len()
    }
}

/// A running responder; stops when dropped.
#[derive(Debug)]
pub struct DnsResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl DnsResponder {
    /// Serves `records` on `addr` (port 0 picks a free port).
    pub fn start(addr: SocketAddr, records: Records) -> io::Result<DnsResponder> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let (s, q) = (stop.clone(), queries.clone());
        let thread = std::thread::Builder::new()
            .name("testworld-dns".into())
            .spawn(move || serve(socket, records, s, q))?;
        Ok(DnsResponder {
            addr,
            stop,
            queries,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, records: Records, stop: Arc<AtomicBool>, queries: Arc<AtomicU64>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if let Some(reply) = answer(&records, &query) {
            queries.fetch_add(1, Ordering::Relaxed);
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn answer(records: &Records, query: &Message) -> Option<Vec<u8>> {
    let q = query.queries.first()?.clone();
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut m = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.add_query(q.clone());
    let fqdn = |s: &str| Name::from_ascii(format!("{s}.")).ok();
    let known = records.mx.contains_key(&name) || records.a.contains_key(&name);
    match q.query_type() {
        RecordType::MX => {
            for (pref, host) in records.mx.get(&name).into_iter().flatten() {
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::MX(MX::new(*pref, fqdn(host)?)),
                ));
            }
        }
        RecordType::A => {
            if let Some(ip) = records.a.get(&name) {
                m.add_answer(Record::from_rdata(q.name().clone(), 300, RData::A(A(*ip))));
            }
        }
        _ => {}
    }
    if !known {
        m.metadata.response_code = ResponseCode::NXDomain;
    }
    if m.answers.is_empty() {
        m.add_authority(Record::from_rdata(
            Name::from_ascii("vmta.test.").ok()?,
            300,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.vmta.test.").ok()?,
                Name::from_ascii("hostmaster.vmta.test.").ok()?,
                1,
                3600,
                600,
                86400,
                60,
            )),
        ));
    }
    m.to_vec().ok()
}
