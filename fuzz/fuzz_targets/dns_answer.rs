//! Answer handling of the resolver core fed arbitrary nameserver bytes. The first byte picks the MX
//! lookup (and whether answers go over UDP or TCP, split where); every query the core sends, including
//! the follow-up A/AAAA questions, is answered with the rest of the input, its message ID patched to
//! match so that decoding and CNAME/MX/negative-answer handling are reached. The core must never panic,
//! must close every exchange it opens, and must finish the lookup once time runs out.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vmta::dns::{Config, Query, Resolver, Transmit, Transport};

const DOMAINS: [&str; 4] = ["alpha.test", "many.test", "cname.test", "nullmx.test"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, answer)) = data.split_first() else {
        return;
    };
    let config = Config {
        nameservers: vec![
            "127.0.10.1:53".parse().unwrap(),
            "127.0.10.2:53".parse().unwrap(),
        ],
        max_in_flight: 8,
        max_mx_hosts: 8,
        ..Config::default()
    };
    let mut r = Resolver::new(config, [selector; 32]).unwrap();
    let mut now = Instant::now();
    let domain = DOMAINS[usize::from(selector) % DOMAINS.len()];
    let tcp_split = usize::from(selector >> 2);
    r.lookup(now, 1, Query::Mx(domain.into()));
    let mut open = HashSet::new();
    let mut done = false;
    for _round in 0..64 {
        while let Some(t) = r.poll_transmit() {
            match t {
                Transmit::Close { exchange } => assert!(open.remove(&exchange)),
                Transmit::Send {
                    exchange,
                    server,
                    transport,
                    payload,
                } => {
                    assert!(open.insert(exchange));
                    let id_at = if transport == Transport::Tcp { 2 } else { 0 };
                    let mut reply = answer.to_vec();
                    if reply.len() >= 2 {
                        reply[..2].copy_from_slice(&payload[id_at..id_at + 2]);
                    }
                    match transport {
                        Transport::Udp => r.handle_datagram(now, exchange, server, &reply),
                        Transport::Tcp => {
                            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&reply);
                            let cut = tcp_split.min(framed.len());
                            r.handle_stream(now, exchange, &framed[..cut]);
                            r.handle_stream(now, exchange, &framed[cut..]);
                        }
                    }
                }
            }
        }
        if let Some(e) = r.poll_event() {
            assert_eq!(e.token, 1);
            done = true;
            break;
        }
        now += Duration::from_secs(6);
        r.handle_timeout(now);
    }
    assert!(done, "the lookup finished");
    assert_eq!(r.lookups_in_progress(), 0);
});
