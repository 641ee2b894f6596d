//! `vmta demo`: the quick start. Starts the built-in test world (a DNS responder and SMTP sinks on
//! loopback), starts the engine with a spool in a temporary directory, submits a campaign over many
//! domains, shows live progress and ends with a report.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmta::engine::config::{Durability, TlsPolicy};
use vmta::engine::{DeliveryEvent, Engine, EngineConfig, EventKind, Submission, SubmitError};
use vmta_testworld::world::World;

/// Arguments of `vmta demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Destination domains.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// MX hosts (SMTP sinks on 127.0.0.11 and up).
    #[arg(long, default_value_t = 10)]
    hosts: u8,
    /// Threads submitting.
    #[arg(long, default_value_t = 4)]
    submitters: usize,
    /// Connections per MX host and shard.
    #[arg(long, default_value_t = 4)]
    connections_per_host: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

pub(crate) fn message(i: usize, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: News <news@sender.vmta.test>\r\nTo: <{to}>\r\nSubject: Demo message {i}\r\nMessage-ID: <{i}.demo@sender.vmta.test>\r\nDate: Mon, 23 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while m.len() < 2048 {
        m.extend_from_slice(b"This is the vmta demo campaign. Nothing leaves this machine.\r\n");
    }
    m
}

/// Runs `vmta demo`.
pub fn run(args: DemoArgs) -> ExitCode {
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vmta demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool, String> {
    let world = World::start(10, args.hosts.max(1), args.domains.max(1))
        .map_err(|e| format!("cannot start the test world: {e}"))?;
    let spool = std::env::temp_dir().join(format!("vmta-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&spool);
    println!(
        "vmta demo: {} domains over {} MX hosts on 127.0.0.11-{} (port {}), DNS on {}",
        world.domains.len(),
        world.sinks.len(),
        10 + world.sinks.len(),
        world.port,
        world.dns.addr()
    );
    println!("spool: {} (removed at the end)", spool.display());
    let config = EngineConfig::builder()
        .spool_dir(&spool)
        .durability(Durability::Interval)
        .nameservers(&[&world.dns.addr().to_string()])
        .port(world.port)
        .tls(TlsPolicy::Disabled)
        .max_connections_per_host(args.connections_per_host)
        .max_messages_per_connection(10_000)
        .shaping_rules(vmta_testworld::world::UNSHAPED)
        .with(|c| c.engine.submission_queue = 16_384)
        .build();
    let result = run_campaign(args, &world, &config);
    let _ = std::fs::remove_dir_all(&spool);
    result
}

fn run_campaign(args: &DemoArgs, world: &World, config: &EngineConfig) -> Result<bool, String> {
    let engine = Arc::new(Engine::start(config).map_err(|e| e.to_string())?);
    let total = args.messages;
    let domains = world.domains.clone();
    let submitted = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..args.submitters.max(1))
        .map(|t| {
            let engine = engine.clone();
            let domains = domains.clone();
            let submitted = submitted.clone();
            let busy = busy.clone();
            let step = args.submitters.max(1);
            std::thread::spawn(move || -> Result<(), String> {
                // Batches of up to 64 messages: one spool commit covers many submissions.
                let mine: Vec<usize> = (t..total).step_by(step).collect();
                for chunk in mine.chunks(64) {
                    let mut batch: Vec<Submission> = chunk
                        .iter()
                        .map(|&i| {
                            // One recipient in fifty does not exist: the receiver refuses it.
                            let local = if i % 50 == 7 {
                                format!("unknown{i}")
                            } else {
                                format!("user{i}")
                            };
                            let to = format!("{local}@{}", domains[i % domains.len()]);
                            Submission {
                                sender: "bounces@sender.vmta.test".into(),
                                recipients: vec![to.clone()],
                                tenant: "demo".into(),
                                tags: vec![("campaign".into(), "demo".into())],
                                body: message(i, &to),
                                ..Submission::default()
                            }
                        })
                        .collect();
                    while !batch.is_empty() {
                        let results = engine.submit_batch(&batch);
                        let mut retry = Vec::new();
                        for (s, r) in batch.into_iter().zip(results) {
                            match r {
                                Ok(_) => {
                                    submitted.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(SubmitError::Busy) => {
                                    busy.fetch_add(1, Ordering::Relaxed);
                                    retry.push(s);
                                }
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                        if !retry.is_empty() {
                            std::thread::sleep(Duration::from_micros(500));
                        }
                        batch = retry;
                    }
                }
                Ok(())
            })
        })
        .collect();
    let deadline = started + Duration::from_secs(args.timeout);
    let mut events: Vec<DeliveryEvent> = Vec::new();
    let mut delivered = 0usize;
    let mut bounced: BTreeMap<String, usize> = BTreeMap::new();
    let mut deferred = 0usize;
    let mut finals = 0usize;
    let mut last_progress = Instant::now();
    let mut first_submit_to_last_event = Duration::ZERO;
    while finals < total && Instant::now() < deadline {
        engine.wait(Duration::from_millis(100));
        events.clear();
        engine.poll_events(&mut events, 100_000);
        for e in &events {
            match e.kind {
                EventKind::Delivered => {
                    delivered += 1;
                    finals += 1;
                }
                EventKind::Bounced | EventKind::Expired => {
                    let key = match e.enhanced {
                        Some(x) => format!("{} {x}", e.code),
                        None => format!("{} {}", e.code, e.text),
                    };
                    *bounced.entry(key).or_default() += 1;
                    finals += 1;
                }
                EventKind::Deferred => deferred += 1,
                EventKind::Cancelled | EventKind::Suppressed => finals += 1,
                EventKind::LateBounce | EventKind::LateDeferral | EventKind::Complaint => {}
            }
        }
        if !events.is_empty() {
            first_submit_to_last_event = started.elapsed();
        }
        if last_progress.elapsed() >= Duration::from_millis(500) {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprint!(
                "\r  submitted {:>8}  delivered {:>8}  bounced {:>6}  deferred {:>6}  {:>8.0} msg/s ",
                submitted.load(Ordering::Relaxed),
                delivered,
                bounced.values().sum::<usize>(),
                deferred,
                delivered as f64 / secs.max(1e-9)
            );
        }
    }
    eprintln!();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("submission failed: {e}")),
            Err(_) => return Err("a submitting thread panicked".into()),
        }
    }
    let metrics = engine.metrics();
    engine.shutdown(Duration::from_secs(5));
    let secs = first_submit_to_last_event.as_secs_f64().max(1e-9);
    let received = world.received();
    println!();
    println!(
        "messages submitted:     {}",
        submitted.load(Ordering::Relaxed)
    );
    println!("delivered:              {delivered}");
    println!(
        "bounced:                {}",
        bounced.values().sum::<usize>()
    );
    for (why, n) in &bounced {
        println!("  {why:<22}{n}");
    }
    println!("deferrals:              {deferred}");
    println!("submit busy retries:    {}", busy.load(Ordering::Relaxed));
    println!("sinks received:         {received}");
    println!(
        "connections:            {} opened by vmta, {} accepted by the sinks",
        metrics.total().connections_opened,
        world.connections()
    );
    println!("elapsed:                {secs:.2} s");
    println!(
        "throughput:             {:.0} messages/s delivered",
        delivered as f64 / secs
    );
    let ok = finals == total && received == delivered as u64;
    if !ok {
        eprintln!("vmta demo: not every message reached a final state, or the counts disagree");
    }
    Ok(ok)
}
