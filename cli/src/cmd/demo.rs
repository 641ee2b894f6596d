//! `vmta demo`: the quick start. Starts the built-in test world (a DNS responder and SMTP sinks on
//! loopback), starts the engine with a spool in a temporary directory, submits a campaign over many
//! domains, shows live progress and ends with a report.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmta::engine::config::{Durability, TlsPolicy};
use vmta::engine::{DeliveryEvent, Engine, EngineConfig, EventKind, Submission, SubmitError};
use vmta_testworld::sink::Behaviour;
use vmta_testworld::world::World;
use vmta_workload::message;

/// Arguments of `vmta demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Messages to send.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Destination domains.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// MX hosts (SMTP sinks on 127.0.0.11 and up; at least 6 for the mixed world).
    #[arg(long, default_value_t = 10)]
    hosts: u8,
    /// Threads submitting.
    #[arg(long, default_value_t = 2)]
    submitters: usize,
    /// Connections per MX host and shard.
    #[arg(long, default_value_t = 4)]
    connections_per_host: usize,
    /// Every receiver accepts everything at once: no greylisting, throttling or failures.
    #[arg(long)]
    no_faults: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// The mixed world's receivers, by host index: what each does and what vmta is told about it.
fn behaviours(hosts: usize, faults: bool) -> Vec<Behaviour> {
    let mut v = vec![Behaviour::default(); hosts];
    if !faults || hosts < 6 {
        return v;
    }
    // mx0: greylisting, the first attempt of each sender and recipient waits 3 seconds.
    v[0].greylist = Some(Duration::from_secs(3));
    // mx1: a provider that publishes its limits (vmta's rule below says 4 connections, 2,000/s); it
    // enforces 6 connections and 2,500/s.
    v[1].max_connections = 6;
    v[1].max_messages_per_second = 2500;
    // mx2: a provider with an unannounced limit of 1,500 messages/s (421 4.7.28 beyond it); vmta's rule
    // allows 4,000/s, so adaptive backoff has to find the limit.
    v[2].max_messages_per_second = 1500;
    // mx3: 2% of recipients deferred (451), 0.5% refused by policy (550 5.7.1).
    v[3].rcpt_tempfail_permille = 20;
    v[3].rcpt_permfail_permille = 5;
    // mx4: a slow receiver, 5 ms per reply.
    v[4].latency = Duration::from_millis(5);
    // mx5: offers STARTTLS.
    v[5].tls = true;
    v
}

/// The published limits vmta is given for mx1 (the rule below), checked at the receiver after the
/// run: connections, messages per second and the bucket's burst.
const PUBLISHED_CONNECTIONS: i64 = 4;
const PUBLISHED_RATE: u32 = 2000;
const PUBLISHED_BURST: u32 = 20;

/// Shaping for the demo: no limits except the two providers' rules, and backoff compressed from
/// minutes to seconds so the run shows it.
fn demo_shaping() -> String {
    format!(
        r#"
[defaults]
max_connections = 0
connection_rate = "unlimited"
max_messages_per_connection = 0
message_rate = "unlimited"
hourly_cap = 0
daily_cap = 0

[backoff]
decrease_percent = 50
floor_percent = 5
recover_percent = 10
recover_every = "2s"
cooldown = "1s"
destination_base = "1s"
destination_max = "2s"

[[mx]]
name = "provider-with-published-limits"
patterns = ["mx1.vmta.test"]
max_connections = {PUBLISHED_CONNECTIONS}
message_rate = "{PUBLISHED_RATE}/s"
message_burst = {PUBLISHED_BURST}

[[mx]]
name = "provider-with-hidden-limit"
patterns = ["mx2.vmta.test"]
max_connections = 8
message_rate = "4000/s"
message_burst = 20
"#
    )
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
    let faults = !args.no_faults;
    let world = World::start_with(
        10,
        &behaviours(args.hosts.max(1) as usize, faults),
        args.domains.max(1),
        2,
    )
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
        .tls(TlsPolicy::Opportunistic)
        .max_connections_per_host(args.connections_per_host)
        .max_messages_per_connection(10_000)
        .shaping_rules(&if faults {
            demo_shaping()
        } else {
            vmta_testworld::world::UNSHAPED.to_string()
        })
        // Retries per reason, as in production, with the intervals compressed to 2-4 seconds.
        .retry_intervals(Duration::from_secs(2), Duration::from_secs(4))
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
                            let local = if (i / 7) % 50 == 3 {
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
    let mut delivered_after_deferral = 0usize;
    let mut bounced: BTreeMap<String, usize> = BTreeMap::new();
    let mut deferred_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut was_deferred: HashSet<(u64, u16)> = HashSet::new();
    let mut finals = 0usize;
    let mut suppressed = 0usize;
    let mut hard_bounced: Vec<String> = Vec::new();
    let mut last_progress = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut ninety = None;
    while finals < total && Instant::now() < deadline {
        engine.wait(Duration::from_millis(100));
        events.clear();
        engine.poll_events(&mut events, 100_000);
        for e in &events {
            let why = || {
                if e.reason.is_empty() {
                    format!(
                        "{} {}",
                        e.code,
                        e.enhanced.map(|x| x.to_string()).unwrap_or_default()
                    )
                } else {
                    e.reason.clone()
                }
            };
            match e.kind {
                EventKind::Delivered => {
                    delivered += 1;
                    finals += 1;
                    if was_deferred.remove(&(e.message_id, e.recipient_index)) {
                        delivered_after_deferral += 1;
                    }
                }
                EventKind::Bounced | EventKind::Expired => {
                    if e.reason == "userunknown" && hard_bounced.len() < 2000 {
                        hard_bounced.push(e.recipient.clone());
                    }
                    let kind = if e.kind == EventKind::Expired {
                        "expired: "
                    } else {
                        ""
                    };
                    *bounced.entry(format!("{kind}{}", why())).or_default() += 1;
                    finals += 1;
                }
                EventKind::Deferred => {
                    was_deferred.insert((e.message_id, e.recipient_index));
                    *deferred_by.entry(why()).or_default() += 1;
                }
                EventKind::Cancelled | EventKind::Refused => finals += 1,
                EventKind::Suppressed => {
                    suppressed += 1;
                    finals += 1;
                }
                EventKind::LateBounce
                | EventKind::LateDeferral
                | EventKind::Complaint
                | EventKind::Recovered => {}
            }
        }
        if !events.is_empty() {
            elapsed = started.elapsed();
        }
        if ninety.is_none() && finals * 10 >= total * 9 {
            ninety = Some(started.elapsed());
        }
        if last_progress.elapsed() >= Duration::from_millis(250) {
            last_progress = Instant::now();
            progress(
                finals,
                total,
                submitted.load(Ordering::Relaxed),
                delivered,
                bounced.values().sum(),
                deferred_by.values().sum(),
                started.elapsed(),
            );
        }
    }
    progress(
        finals,
        total,
        submitted.load(Ordering::Relaxed),
        delivered,
        bounced.values().sum(),
        deferred_by.values().sum(),
        started.elapsed(),
    );
    eprintln!();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("submission failed: {e}")),
            Err(_) => return Err("a submitting thread panicked".into()),
        }
    }
    let second_wave = resend_to_bounced(&engine, &hard_bounced);
    let metrics = engine.metrics();
    engine.shutdown(Duration::from_secs(5));
    let secs = elapsed.as_secs_f64().max(1e-9);
    let received = world.received();
    println!();
    println!(
        "messages submitted:        {}",
        submitted.load(Ordering::Relaxed)
    );
    println!(
        "delivered:                 {delivered} ({delivered_after_deferral} of them deferred first, then delivered)"
    );
    println!(
        "bounced:                   {}",
        bounced.values().sum::<usize>()
    );
    for (why, n) in &bounced {
        println!("  {why:<24}{n}");
    }
    println!(
        "deferrals:                 {}",
        deferred_by.values().sum::<usize>()
    );
    for (why, n) in &deferred_by {
        println!("  {why:<24}{n}");
    }
    println!(
        "suppressed:                {suppressed} at submission in the campaign; a second wave to {} addresses that bounced as unknown: {second_wave} refused as suppressed, none sent",
        hard_bounced.len()
    );
    println!(
        "submit busy retries:       {}",
        busy.load(Ordering::Relaxed)
    );
    println!("sinks received:            {received}");
    println!(
        "connections:               {} opened by vmta, {} accepted by the sinks",
        metrics.total().connections_opened,
        world.connections()
    );
    println!("elapsed:                   {secs:.2} s");
    if let Some(t) = ninety {
        println!("90% final after:           {:.2} s", t.as_secs_f64());
    }
    println!(
        "throughput:                {:.0} messages/s delivered",
        delivered as f64 / secs
    );
    let limits_held = report_destinations(world);
    let ok = finals == total && received == delivered as u64 && limits_held;
    if !ok {
        eprintln!(
            "vmta demo: not every message reached a final state, the counts disagree, or a limit was exceeded"
        );
    }
    Ok(ok)
}

/// Sends again to addresses that bounced as unknown users: the suppression list (a hard bounce
/// suppresses at the first occurrence) refuses them at submission. Returns how many were refused.
fn resend_to_bounced(engine: &Engine, addresses: &[String]) -> usize {
    // The list is written by one thread after the bounce events: wait until the last one is in.
    if let Some(last) = addresses.last() {
        let until = Instant::now() + Duration::from_secs(5);
        while engine.suppression("demo", last, None).is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    addresses
        .iter()
        .enumerate()
        .filter(|(i, to)| {
            let s = Submission {
                sender: "bounces@sender.vmta.test".into(),
                recipients: vec![to.to_string()],
                tenant: "demo".into(),
                body: message(*i, to),
                ..Submission::default()
            };
            matches!(engine.submit(&s), Err(SubmitError::Suppressed(_)))
        })
        .count()
}

fn progress(
    finals: usize,
    total: usize,
    submitted: u64,
    delivered: usize,
    bounced: usize,
    deferrals: usize,
    elapsed: Duration,
) {
    let width = 30;
    let done = (finals * width).checked_div(total).unwrap_or(width);
    eprint!(
        "\r  [{}{}] {:>3}%  submitted {:>7}  delivered {:>7}  bounced {:>5}  deferrals {:>5}  {:>6.0} msg/s ",
        "#".repeat(done),
        ".".repeat(width - done),
        (finals * 100).checked_div(total).unwrap_or(100),
        submitted,
        delivered,
        bounced,
        deferrals,
        delivered as f64 / elapsed.as_secs_f64().max(1e-9)
    );
}

/// What each receiver saw, and whether the limits vmta was given held there. Returns false when one
/// was exceeded.
fn report_destinations(world: &World) -> bool {
    println!();
    println!("per destination, counted by the receivers:");
    println!(
        "  {:<15} {:<46} {:>8} {:>6} {:>7} {:>6} {:>6} {:>5}",
        "MX host", "behaviour", "messages", "conns", "max/s", "grey", "421s", "TLS"
    );
    let mut held = true;
    for (h, sink) in world.sinks.iter().enumerate() {
        let b = sink.behaviour();
        let k = sink.counters();
        let mut what = Vec::new();
        if let Some(g) = b.greylist {
            what.push(format!("greylisting {}s", g.as_secs()));
        }
        if b.max_connections > 0 {
            what.push(format!("max {} conns", b.max_connections));
        }
        if b.max_messages_per_second > 0 {
            what.push(format!("421 above {}/s", b.max_messages_per_second));
        }
        if b.rcpt_tempfail_permille > 0 || b.rcpt_permfail_permille > 0 {
            what.push(format!(
                "{}‰ 451, {}‰ 550",
                b.rcpt_tempfail_permille, b.rcpt_permfail_permille
            ));
        }
        if !b.latency.is_zero() {
            what.push(format!("{} ms latency", b.latency.as_millis()));
        }
        if b.tls {
            what.push("STARTTLS".into());
        }
        let peak = k.peak_connections.load(Ordering::Relaxed);
        let max_s = k.max_messages_per_second();
        // mx1 carries vmta's published-limits rule (checked in a faulty world only).
        let verdict = if h == 1 && b.max_connections > 0 {
            let (c, r) = (PUBLISHED_CONNECTIONS, PUBLISHED_RATE);
            if peak <= c && max_s <= r + PUBLISHED_BURST {
                format!("  rule held: <= {c} conns, <= {r}/s")
            } else {
                held = false;
                format!("  RULE EXCEEDED ({c} conns, {r}/s)")
            }
        } else {
            String::new()
        };
        println!(
            "  mx{h:<13} {:<46} {:>8} {:>6} {:>7} {:>6} {:>6} {:>5}{verdict}",
            if what.is_empty() {
                "accepts everything".to_string()
            } else {
                what.join(", ")
            },
            k.messages.load(Ordering::Relaxed),
            peak,
            max_s,
            k.greylisted.load(Ordering::Relaxed),
            k.throttled.load(Ordering::Relaxed) + k.refused_connections.load(Ordering::Relaxed),
            k.tls_sessions.load(Ordering::Relaxed),
        );
    }
    println!(
        "  (conns: most connections open at once; max/s: most messages accepted in one second)"
    );
    held
}
