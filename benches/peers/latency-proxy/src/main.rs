//! A TCP proxy that adds a round trip: every chunk read from one side is written to the other side
//! RTT/2 after it was read, in each direction, in order per connection, with no other limit (no
//! bandwidth cap, no reordering, no loss). The model is Toxiproxy's latency toxic; it stands in for
//! `tc qdisc ... netem delay`, which this machine's kernel lacks.
//!
//! ```text
//! latency-proxy --listen 127.0.0.61:2525 --upstream 127.0.0.11:2525 --rtt-ms 50 [--duration-s 900]
//! latency-proxy --check --rtt-ms 50 [--rounds 40]
//! ```
//!
//! The first form prints `ready` once it listens and stops by itself after `--duration-s` (default
//! 900) or on SIGTERM. `--check` measures the proxy itself: a ping-pong of one byte through it to an
//! echo server, `--rounds` times; prints a JSON line with the configured and measured (median)
//! round trip and exits 1 when they differ by more than 5% (or 0.5 ms at RTT 0).
//!
//! Loopback only: both addresses must be in 127.0.0.0/8 or ::1.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: latency-proxy --listen ADDR --upstream ADDR --rtt-ms N [--duration-s S]\n       \
         latency-proxy --check --rtt-ms N [--rounds R]"
    );
    std::process::exit(2)
}

fn loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; on end of input the write
/// side of `to` is shut after the same delay.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        while let Ok((at, chunk)) = rx.recv() {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            if chunk.is_empty() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send((Instant::now() + delay, Vec::new()));
                break;
            }
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

fn serve(listener: TcpListener, upstream: SocketAddr, delay: Duration) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        thread::spawn(move || {
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => return,
            };
            let up = thread::spawn(move || pump(client, server, delay));
            pump(s2, c2, delay);
            let _ = up.join();
        });
    }
}

fn check(rtt: Duration, rounds: usize) -> bool {
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
    let echo_addr = echo.local_addr().unwrap();
    thread::spawn(move || {
        for s in echo.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 1];
                while let Ok(1) = s.read(&mut b) {
                    if s.write_all(&b).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
    let proxy_addr = proxy.local_addr().unwrap();
    thread::spawn(move || serve(proxy, echo_addr, rtt / 2));
    let mut s = TcpStream::connect(proxy_addr).expect("connect through the proxy");
    s.set_nodelay(true).unwrap();
    let mut times = Vec::with_capacity(rounds);
    let mut b = [7u8; 1];
    for _ in 0..rounds {
        let t = Instant::now();
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let want = rtt.as_secs_f64() * 1000.0;
    let got = median.as_secs_f64() * 1000.0;
    let ok = if want == 0.0 {
        got <= 0.5
    } else {
        (got - want).abs() / want <= 0.05
    };
    println!(
        "{{\"check\":\"ping-pong\",\"rounds\":{rounds},\"rtt_ms\":{want},\"measured_ms\":{got:.3},\"error_pct\":{:.2},\"ok\":{ok}}}",
        if want == 0.0 {
            0.0
        } else {
            (got - want) / want * 100.0
        }
    );
    ok
}

fn main() {
    let mut listen = None;
    let mut upstream = None;
    let mut rtt_ms: Option<f64> = None;
    let mut duration = 900u64;
    let mut rounds = 40usize;
    let mut do_check = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = value().parse::<SocketAddr>().ok().or_else(|| usage()),
            "--upstream" => upstream = value().parse::<SocketAddr>().ok().or_else(|| usage()),
            "--rtt-ms" => rtt_ms = Some(value().parse().unwrap_or_else(|_| usage())),
            "--duration-s" => duration = value().parse().unwrap_or_else(|_| usage()),
            "--rounds" => rounds = value().parse().unwrap_or_else(|_| usage()),
            "--check" => do_check = true,
            _ => usage(),
        }
    }
    let Some(rtt_ms) = rtt_ms.filter(|r| (0.0..=10_000.0).contains(r)) else {
        usage()
    };
    let rtt = Duration::from_secs_f64(rtt_ms / 1000.0);
    if do_check {
        std::process::exit(if check(rtt, rounds.max(1)) { 0 } else { 1 });
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        usage()
    };
    if !loopback(&listen) || !loopback(&upstream) {
        eprintln!("latency-proxy: loopback addresses only");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("latency-proxy: {listen}: {e}");
        std::process::exit(1)
    });
    thread::spawn(move || serve(listener, upstream, rtt / 2));
    println!("ready");
    let _ = std::io::stdout().flush();
    // Bounded: the bench kills it when done; if it does not, it goes by itself.
    thread::sleep(Duration::from_secs(duration));
}
