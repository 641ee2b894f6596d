//! Benchmark peer: lettre's pooled SMTP transport sending vmta's workload (a) to `vmta world`.
//!
//! Message `i` (0..N) goes to `user{i}@{domain i % D}` where the domains and their MX host
//! (`IP PORT`) come from the routes file written by `vmta world --routes`: lettre has no MX
//! resolution of its own, so the peer does what an application using lettre would do and relays
//! each domain's mail to its host. One pooled transport per host (`PoolConfig::max_size` = the
//! connections per host), each driven by that many workers, so a host never sees more
//! connections than vmta opens to it. The message bytes are built once per message with the same
//! layout as `vmta bench` (2 KiB, plain text) and sent with `send_raw`, so lettre's message builder
//! is not measured, only its transport.
//!
//! Two drivers: `--mode blocking` (default: one OS thread per connection, `SmtpTransport`) and
//! `--mode async` (tokio multi-thread runtime with `--threads` workers, one task per connection,
//! `AsyncSmtpTransport`). Both reach the same rate; the blocking one costs less CPU per message and
//! keeps to the connection limit, while the async pool opens extra connections when a recycled one
//! is not back in the pool yet.
//! What lettre does per message either way, and cannot be tuned: a `NOOP` to test the pooled
//! connection, then `MAIL`, `RCPT`, `DATA` and the body each in their own round trip (lettre does not
//! use PIPELINING), the body and the final dot in two writes (no `TCP_NODELAY`).
//!
//! Prints one JSON line: system, messages, seconds, msg_per_s, cpu_s (getrusage of this process,
//! user + system), cpu_us_per_msg, errors. Exits 1 when a message could not be sent after 3 tries.

use lettre::address::{Address, Envelope};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig, SmtpTransport};
use lettre::{AsyncTransport, Tokio1Executor, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmta_workload::{message, process_cpu_seconds};

const SENDER: &str = "bounces@sender.vmta.test";

struct Options {
    routes: String,
    messages: usize,
    connections_per_host: u32,
    threads: usize,
    blocking: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: lettre-peer --routes FILE --messages N [--connections-per-host C] [--threads T] [--mode async|blocking]"
    );
    std::process::exit(2)
}

fn options() -> Options {
    let mut o = Options {
        routes: String::new(),
        messages: 0,
        connections_per_host: 4,
        threads: 2,
        blocking: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--routes" => o.routes = value,
            "--messages" => o.messages = value.parse().unwrap_or_else(|_| usage()),
            "--connections-per-host" => {
                o.connections_per_host = value.parse().unwrap_or_else(|_| usage())
            }
            "--threads" => o.threads = value.parse().unwrap_or_else(|_| usage()),
            "--mode" => {
                o.blocking = match value.as_str() {
                    "blocking" => true,
                    "async" => false,
                    _ => usage(),
                }
            }
            _ => usage(),
        }
    }
    if o.routes.is_empty() || o.messages == 0 || o.connections_per_host == 0 || o.threads == 0 {
        usage()
    }
    o
}

/// One MX host and the messages routed to it.
struct Host {
    ip: String,
    port: u16,
    messages: Vec<(usize, String)>,
    next: AtomicUsize,
}

fn hosts(routes: &str, messages: usize) -> Vec<Host> {
    let text = std::fs::read_to_string(routes).unwrap_or_else(|e| {
        eprintln!("lettre-peer: cannot read {routes}: {e}");
        std::process::exit(2)
    });
    let mut hosts: Vec<Host> = Vec::new();
    let mut domains: Vec<(String, usize)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (domain, ip, port) = match f.as_slice() {
            [d, ip, p] => (*d, *ip, p.parse::<u16>().ok()),
            _ => (line, "", None),
        };
        let Some(port) = port else {
            eprintln!("lettre-peer: bad route line {line:?}");
            std::process::exit(2)
        };
        let h = match hosts.iter().position(|h| h.ip == ip && h.port == port) {
            Some(h) => h,
            None => {
                hosts.push(Host {
                    ip: ip.to_string(),
                    port,
                    messages: Vec::new(),
                    next: AtomicUsize::new(0),
                });
                hosts.len() - 1
            }
        };
        domains.push((domain.to_string(), h));
    }
    if domains.is_empty() {
        eprintln!("lettre-peer: no routes in {routes}");
        std::process::exit(2)
    }
    for i in 0..messages {
        let (domain, h) = &domains[i % domains.len()];
        hosts[*h].messages.push((i, format!("user{i}@{domain}")));
    }
    hosts
}

fn envelope(to: &str) -> Envelope {
    let from: Address = SENDER.parse().expect("sender address");
    let to: Address = to.parse().expect("recipient address");
    Envelope::new(Some(from), vec![to]).expect("envelope")
}

fn pool(c: u32) -> PoolConfig {
    PoolConfig::new()
        .min_idle(0)
        .max_size(c)
        .idle_timeout(Duration::from_secs(60))
}

fn hello() -> ClientId {
    ClientId::Domain("lettre.sender.vmta.test".into())
}

const TRIES: usize = 3;

fn run_blocking(o: &Options, hosts: Arc<Vec<Host>>, errors: Arc<AtomicU64>) {
    let mut workers = Vec::new();
    for h in 0..hosts.len() {
        let transport = SmtpTransport::builder_dangerous(hosts[h].ip.clone())
            .port(hosts[h].port)
            .hello_name(hello())
            .timeout(Some(Duration::from_secs(30)))
            .pool_config(pool(o.connections_per_host))
            .build();
        for _ in 0..o.connections_per_host {
            let (transport, hosts, errors) = (transport.clone(), hosts.clone(), errors.clone());
            workers.push(std::thread::spawn(move || {
                let host = &hosts[h];
                loop {
                    let k = host.next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, to)) = host.messages.get(k) else {
                        break;
                    };
                    let (env, body) = (envelope(to), message(*i, to));
                    let sent = (0..TRIES).any(|_| transport.send_raw(&env, &body).is_ok());
                    if !sent {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for w in workers {
        let _ = w.join();
    }
}

fn run_async(o: &Options, hosts: Arc<Vec<Host>>, errors: Arc<AtomicU64>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for h in 0..hosts.len() {
            let transport: AsyncSmtpTransport<Tokio1Executor> =
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(hosts[h].ip.clone())
                    .port(hosts[h].port)
                    .hello_name(hello())
                    .timeout(Some(Duration::from_secs(30)))
                    .pool_config(pool(o.connections_per_host))
                    .build();
            for _ in 0..o.connections_per_host {
                let (transport, hosts, errors) = (transport.clone(), hosts.clone(), errors.clone());
                tasks.push(tokio::spawn(async move {
                    let host = &hosts[h];
                    loop {
                        let k = host.next.fetch_add(1, Ordering::Relaxed);
                        let Some((i, to)) = host.messages.get(k) else {
                            break;
                        };
                        let (env, body) = (envelope(to), message(*i, to));
                        let mut sent = false;
                        for _ in 0..TRIES {
                            if transport.send_raw(&env, &body).await.is_ok() {
                                sent = true;
                                break;
                            }
                        }
                        if !sent {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

fn main() {
    let o = options();
    let hosts = Arc::new(hosts(&o.routes, o.messages));
    let errors = Arc::new(AtomicU64::new(0));
    let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
    if o.blocking {
        run_blocking(&o, hosts.clone(), errors.clone());
    } else {
        run_async(&o, hosts.clone(), errors.clone());
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let errors = errors.load(Ordering::Relaxed);
    let sent = o.messages as u64 - errors;
    println!(
        "{{\"system\":\"lettre\",\"mode\":\"{}\",\"messages\":{sent},\"seconds\":{seconds:.6},\"msg_per_s\":{:.1},\"cpu_s\":{cpu:.6},\"cpu_us_per_msg\":{:.2},\"errors\":{errors}}}",
        if o.blocking { "blocking" } else { "async" },
        sent as f64 / seconds.max(1e-9),
        cpu * 1e6 / (sent.max(1) as f64),
    );
    if errors > 0 {
        std::process::exit(1);
    }
}
