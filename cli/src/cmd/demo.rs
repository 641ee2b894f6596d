//! `vmta demo`: the quick start. Starts the built-in test world (SMTP sinks on loopback) and delivers a
//! campaign to it through vmta's own SMTP sessions, then reports what happened.
//!
//! Today the campaign runs over a fixed set of connections driven by the session's mio driver, one
//! thread per connection; the full engine (queue, routing, shaping, retries) takes over this command as
//! it lands.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vmta::client::run_connection;
use vmta::smtp::{Envelope, Event, Recipient, SessionConfig, Transaction};
use vmta_testworld::sink::Sink;

/// Arguments of `vmta demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Concurrent SMTP connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Messages per connection before it is closed and a new one opened.
    #[arg(long, default_value_t = 500)]
    per_connection: usize,
}

fn message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: News <news@sender.vmta.test>\r\nTo: <user{i}@dest{}.vmta.test>\r\nSubject: Demo message {i}\r\nMessage-ID: <{i}.demo@sender.vmta.test>\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        i % 100
    )
    .into_bytes();
    while m.len() < 2048 {
        m.extend_from_slice(b"This is the vmta demo campaign. Nothing leaves this machine.\r\n");
    }
    m
}

/// Runs `vmta demo`.
pub fn run(args: DemoArgs) -> ExitCode {
    let sinks: Vec<Sink> = match (1..=4)
        .map(|i| Sink::start(SocketAddr::from(([127, 0, 0, i], 0))))
        .collect::<Result<_, _>>()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmta demo: cannot start the test sinks: {e}");
            return ExitCode::from(2);
        }
    };
    println!("vmta demo: {} sinks on loopback:", sinks.len());
    for s in &sinks {
        println!("  {}", s.addr());
    }
    let config = Arc::new(SessionConfig::new("demo.vmta.test"));
    let started = Instant::now();
    let connections = args.connections.max(1);
    let per_thread = args.messages.div_ceil(connections);
    let mut handles = Vec::new();
    for t in 0..connections {
        let addr = sinks[t % sinks.len()].addr();
        let config = config.clone();
        let first = t * per_thread;
        let last = (first + per_thread).min(args.messages);
        let chunk = args.per_connection.max(1);
        handles.push(std::thread::spawn(move || {
            let mut stats = Stats::default();
            let mut i = first;
            while i < last {
                let end = (i + chunk).min(last);
                let txs: Vec<Transaction> = (i..end)
                    .map(|n| {
                        // One recipient in 50 does not exist: the sink refuses it with 550 5.1.1.
                        let local = if n % 50 == 7 {
                            format!("unknown{n}")
                        } else {
                            format!("user{n}")
                        };
                        Transaction {
                            envelope: Envelope {
                                mail_from: "bounces@sender.vmta.test".into(),
                                recipients: vec![Recipient::new(format!(
                                    "{local}@dest{}.vmta.test",
                                    n % 100
                                ))],
                                ..Envelope::default()
                            },
                            body: Arc::new(message(n)),
                        }
                    })
                    .collect();
                match run_connection(
                    addr,
                    "sink.vmta.test",
                    config.clone(),
                    txs,
                    Duration::from_secs(120),
                ) {
                    Ok(report) => {
                        stats.connections += 1;
                        for e in &report.events {
                            match e {
                                Event::MessageAccepted { .. } => stats.delivered += 1,
                                Event::RcptRejected { reply, .. } => {
                                    if reply.is_permanent() {
                                        stats.bounced += 1
                                    } else {
                                        stats.deferred += 1
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => {
                        eprintln!("connection to {addr} failed: {e}");
                        stats.failed_connections += 1;
                    }
                }
                i = end;
            }
            stats
        }));
    }
    let total_msgs = args.messages as u64;
    let mut stats = Stats::default();
    for h in handles {
        if let Ok(s) = h.join() {
            stats.add(&s);
        }
    }
    let elapsed = started.elapsed();
    let received: u64 = sinks
        .iter()
        .map(|s| s.counters().messages.load(Ordering::Relaxed))
        .sum();
    let sink_connections: u64 = sinks
        .iter()
        .map(|s| s.counters().connections.load(Ordering::Relaxed))
        .sum();
    println!();
    println!("messages submitted:   {total_msgs}");
    println!("delivered:            {}", stats.delivered);
    println!("bounced (5xx):        {}", stats.bounced);
    println!("deferred (4xx):       {}", stats.deferred);
    println!(
        "connections:          {} ({} failed)",
        stats.connections, stats.failed_connections
    );
    println!("sinks received:       {received} messages over {sink_connections} connections");
    println!("elapsed:              {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput:           {:.0} messages/s",
        stats.delivered as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if stats.delivered == received && stats.delivered + stats.bounced + stats.deferred == total_msgs
    {
        ExitCode::SUCCESS
    } else {
        eprintln!("vmta demo: the counts do not add up");
        ExitCode::from(1)
    }
}

#[derive(Debug, Default)]
struct Stats {
    delivered: u64,
    bounced: u64,
    deferred: u64,
    connections: u64,
    failed_connections: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.delivered += o.delivered;
        self.bounced += o.bounced;
        self.deferred += o.deferred;
        self.connections += o.connections;
        self.failed_connections += o.failed_connections;
    }
}
