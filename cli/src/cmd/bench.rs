//! `vmta bench`: the measured workloads. Each starts a fresh test world (unless pointed at an external
//! one), an engine with a spool in a temporary directory, submits the workload from a few threads,
//! waits for every recipient's final event, and reports messages/s, client CPU per million messages,
//! submit-to-delivered latency, peak memory and connections.
//!
//! Workloads: (a) 2 KiB, 1 recipient, 1,000 domains over 10 MX hosts, durable spool (fdatasync with
//! group commit); (b) the same without durability; (c) 100 KiB messages; (d) 50 recipients per
//! message; (e) 10% temporary failures at RCPT, retried; (f) 1 million messages queued (delivery
//! paused) before delivery starts. `--blast` runs the ceiling reference ([`super::blast`]) instead;
//! in-process runs of (a) print the blast row beside vmta's.
//!
//! Memory: peak RSS (VmHWM) counts the spool's file pages the process touched, so it grows with the
//! bytes queued; anonymous memory (RssAnon, sampled) is the heap and stacks: what must stay flat as the
//! queue grows.
//!
//! Latency is measured on a sample: the messages whose engine id is a multiple of
//! [`LATENCY_SAMPLE`] (ids are handed out in sequence, so one message in 16), so that the harness's
//! own bookkeeping does not grow the anonymous memory it reports by a record per message.
//!
//! Client CPU is the process's CPU (getrusage) minus the threads of the in-process test world (sink
//! workers and DNS responder, read from /proc/self/task), so it counts the engine, the submitting
//! threads and the event consumer.

use super::blast::{self, BlastPlan};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmta::engine::config::{Durability, RetryKind, TlsPolicy};
use vmta::engine::{DeliveryEvent, Engine, EngineConfig, EventKind, Submission, SubmitError};
use vmta_testworld::sink::Behaviour;
use vmta_testworld::world::World;
use vmta_workload::message;

/// The engine's default of the most transactions in flight per connection.
fn default_in_flight() -> usize {
    vmta::engine::config::DeliverySection::default().transactions_in_flight
}

/// Arguments of `vmta bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Workloads: letters among a-f (e.g. `a` or `abc`), or `all`.
    #[arg(long, default_value = "all")]
    workload: String,
    /// Messages per workload (default: a, b 200,000; c 20,000; d 20,000; e 100,000; f 1,000,000).
    #[arg(long)]
    messages: Option<usize>,
    /// Run the blast ceiling reference instead of vmta.
    #[arg(long)]
    blast: bool,
    /// One JSON object per result line instead of the table.
    #[arg(long)]
    json: bool,
    /// MX hosts: how many sinks to start (127.0.0.11 and up), or the comma-separated addresses of an
    /// external world's sinks (with --dns and --port).
    #[arg(long, default_value = "10")]
    hosts: String,
    /// Destination domains `d{i}.vmta.test`, domain i on host i % hosts.
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// An external world's DNS server (`vmta world`), instead of the in-process one.
    #[arg(long)]
    dns: Option<String>,
    /// The external world's SMTP port.
    #[arg(long)]
    port: Option<u16>,
    /// Connections per MX host and shard.
    #[arg(long, default_value_t = 4)]
    connections_per_host: usize,
    /// The most transactions in flight per connection (`delivery.transactions_in_flight`; default:
    /// the engine's, 8, each connection starting at 1 and growing). The blast replays this many when
    /// given, and one at a time (what common clients send) when not.
    #[arg(long)]
    transactions_in_flight: Option<usize>,
    /// Engine shards (default: one per CPU).
    #[arg(long)]
    shards: Option<usize>,
    /// Threads submitting.
    #[arg(long, default_value_t = 2)]
    submitters: usize,
    /// Messages per `submit_batch` call. With a durable spool each call returns once its messages
    /// are on disk, so a submitter has one batch per group commit in flight.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Submit one message per call with `Engine::submit_nowait` (returns once the message is handed
    /// to its shard; the shard's group commit makes it durable before delivery) instead of
    /// `submit_batch`, which returns once its messages are on disk. `--batch` is then unused.
    #[arg(long)]
    nowait: bool,
    /// Give up on a workload after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    letter: char,
    title: &'static str,
    messages: usize,
    size: usize,
    recipients: usize,
    durable: bool,
    tempfail_permille: u16,
    queue_first: bool,
}

/// One message in this many (by engine id) has its submit-to-delivered latency recorded.
const LATENCY_SAMPLE: usize = 16;

fn sampled(id: u64) -> bool {
    id.is_multiple_of(LATENCY_SAMPLE as u64)
}

const WORKLOADS: [Workload; 6] = [
    Workload {
        letter: 'a',
        title: "2 KiB, 1 rcpt, durable",
        messages: 200_000,
        size: 2048,
        recipients: 1,
        durable: true,
        tempfail_permille: 0,
        queue_first: false,
    },
    Workload {
        letter: 'b',
        title: "2 KiB, 1 rcpt, not durable",
        messages: 200_000,
        size: 2048,
        recipients: 1,
        durable: false,
        tempfail_permille: 0,
        queue_first: false,
    },
    Workload {
        letter: 'c',
        title: "100 KiB, 1 rcpt, durable",
        messages: 20_000,
        size: 100 * 1024,
        recipients: 1,
        durable: true,
        tempfail_permille: 0,
        queue_first: false,
    },
    Workload {
        letter: 'd',
        title: "2 KiB, 50 rcpts, durable",
        messages: 20_000,
        size: 2048,
        recipients: 50,
        durable: true,
        tempfail_permille: 0,
        queue_first: false,
    },
    Workload {
        letter: 'e',
        title: "2 KiB, 10% 4xx at RCPT, durable",
        messages: 100_000,
        size: 2048,
        recipients: 1,
        durable: true,
        tempfail_permille: 100,
        queue_first: false,
    },
    Workload {
        letter: 'f',
        title: "1M queued first, then delivered",
        messages: 1_000_000,
        size: 2048,
        recipients: 1,
        durable: true,
        tempfail_permille: 0,
        queue_first: true,
    },
];

/// One measured run.
#[derive(Debug, Clone, Default)]
struct Outcome {
    system: &'static str,
    workload: char,
    title: &'static str,
    messages: u64,
    recipients: u64,
    delivered: u64,
    bounced: u64,
    deferrals: u64,
    seconds: f64,
    cpu_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_mb: f64,
    peak_anon_mb: f64,
    connections: u64,
    /// Workload (f): seconds to queue everything before delivery started.
    queue_seconds: f64,
}

impl Outcome {
    fn msg_per_s(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }

    fn cpu_us_per_msg(&self) -> f64 {
        self.cpu_s * 1e6 / self.messages.max(1) as f64
    }

    fn json(&self) -> String {
        serde_json::json!({
            "system": self.system,
            "workload": self.workload.to_string(),
            "title": self.title,
            "messages": self.messages,
            "recipients": self.recipients,
            "delivered": self.delivered,
            "bounced": self.bounced,
            "deferrals": self.deferrals,
            "seconds": round(self.seconds, 3),
            "msg_per_s": round(self.msg_per_s(), 0),
            "rcpt_per_s": round(self.recipients as f64 / self.seconds.max(1e-9), 0),
            "cpu_s": round(self.cpu_s, 3),
            "cpu_us_per_msg": round(self.cpu_us_per_msg(), 2),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_anon_mb": round(self.peak_anon_mb, 1),
            "connections": self.connections,
            "queue_seconds": round(self.queue_seconds, 3),
        })
        .to_string()
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Where the sinks and DNS are.
enum Target {
    InProcess(World),
    External {
        dns: SocketAddr,
        port: u16,
        hosts: Vec<SocketAddr>,
    },
}

impl Target {
    fn dns(&self) -> SocketAddr {
        match self {
            Target::InProcess(w) => w.dns.addr(),
            Target::External { dns, .. } => *dns,
        }
    }
    fn port(&self) -> u16 {
        match self {
            Target::InProcess(w) => w.port,
            Target::External { port, .. } => *port,
        }
    }
    fn hosts(&self) -> Vec<SocketAddr> {
        match self {
            Target::InProcess(w) => w.sinks.iter().map(|s| s.addr()).collect(),
            Target::External { hosts, .. } => hosts.clone(),
        }
    }
    /// Connections the sinks had open at once, summed over hosts (in-process only).
    fn peak_connections(&self) -> Option<u64> {
        match self {
            Target::InProcess(w) => Some(
                w.sinks
                    .iter()
                    .map(|s| s.counters().peak_connections.load(Ordering::Relaxed) as u64)
                    .sum(),
            ),
            Target::External { .. } => None,
        }
    }
}

/// Runs `vmta bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    let letters: Vec<char> = if args.workload == "all" {
        WORKLOADS.iter().map(|w| w.letter).collect()
    } else {
        args.workload.chars().collect()
    };
    let mut chosen = Vec::new();
    for l in letters {
        match WORKLOADS.iter().find(|w| w.letter == l) {
            Some(w) => chosen.push(*w),
            None => {
                eprintln!("vmta bench: no workload {l:?} (a-f or all)");
                return ExitCode::from(2);
            }
        }
    }
    if args.dns.is_some() != args.port.is_some() {
        eprintln!("vmta bench: --dns and --port go together");
        return ExitCode::from(2);
    }
    if !args.json {
        println!(
            "vmta bench: {} CPUs, {} shards, {} connections per host and shard, {} domains, {} \
             transaction(s) in flight per connection",
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            shards(&args),
            args.connections_per_host,
            args.domains,
            args.transactions_in_flight.map_or_else(
                || format!("up to {} (default)", default_in_flight()),
                |n| n.to_string()
            )
        );
        println!("{}", header());
    }
    let mut failed = false;
    for w in chosen {
        let mut w = w;
        if let Some(n) = args.messages {
            w.messages = n;
        }
        let mut systems = Vec::new();
        if args.blast {
            systems.push("blast");
        } else {
            systems.push("vmta");
            // The ceiling beside vmta for the headline workload, when the world is ours.
            if w.letter == 'a' && args.dns.is_none() {
                systems.push("blast");
            }
        }
        for system in systems {
            let result = if system == "blast" {
                run_blast(&args, &w)
            } else {
                run_vmta(&args, &w)
            };
            match result {
                Ok(o) => {
                    if args.json {
                        println!("{}", o.json());
                    } else {
                        println!("{}", row(&o));
                    }
                }
                Err(e) => {
                    eprintln!("vmta bench: workload ({}) {system}: {e}", w.letter);
                    failed = true;
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn shards(args: &BenchArgs) -> usize {
    args.shards.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .max(1)
    })
}

fn header() -> String {
    format!(
        "{:<38} {:>6} {:>9} {:>9} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "workload",
        "system",
        "messages",
        "msg/s",
        "rcpt/s",
        "CPU s/M",
        "p50 ms",
        "p99 ms",
        "RSS MB",
        "anon MB",
        "conns"
    )
}

fn row(o: &Outcome) -> String {
    let dash = |x: f64| {
        if x > 0.0 {
            format!("{x:.1}")
        } else {
            "-".into()
        }
    };
    format!(
        "{:<38} {:>6} {:>9} {:>9.0} {:>9.0} {:>10.2} {:>8} {:>8} {:>8.0} {:>8} {:>7}",
        format!("({}) {}", o.workload, o.title),
        o.system,
        o.messages,
        o.msg_per_s(),
        o.recipients as f64 / o.seconds.max(1e-9),
        o.cpu_s * 1e6 / o.messages.max(1) as f64,
        dash(o.p50_ms),
        dash(o.p99_ms),
        o.peak_rss_mb,
        dash(o.peak_anon_mb),
        o.connections
    )
}

fn target(args: &BenchArgs, w: &Workload) -> Result<Target, String> {
    if let (Some(dns), Some(port)) = (&args.dns, args.port) {
        let dns: SocketAddr = dns
            .parse()
            .map_err(|_| format!("--dns {dns}: not IP:PORT"))?;
        let hosts = args
            .hosts
            .split(',')
            .map(|h| {
                h.trim()
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, port))
                    .map_err(|_| format!("--hosts: {h} is not an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Target::External { dns, port, hosts });
    }
    let n: u8 = args
        .hosts
        .parse()
        .map_err(|_| format!("--hosts {}: a number of hosts (1-200)", args.hosts))?;
    let behaviour = Behaviour {
        rcpt_tempfail_permille: w.tempfail_permille,
        ..Behaviour::default()
    };
    World::start_with(
        10,
        &vec![behaviour; n.clamp(1, 200) as usize],
        args.domains,
        2,
    )
    .map(Target::InProcess)
    .map_err(|e| format!("cannot start the test world: {e}"))
}

/// The message number `i`'s recipients (domain `(i * rcpts + r) % domains`) and content.
fn recipients_of(i: usize, w: &Workload, domains: usize) -> Vec<String> {
    (0..w.recipients)
        .map(|r| {
            let n = i * w.recipients + r;
            format!("user{n}@d{}.vmta.test", n % domains)
        })
        .collect()
}

fn content(i: usize, to: &str, size: usize) -> Vec<u8> {
    let mut m = message(i, to);
    if size > m.len() {
        let line = b"The quick brown fox jumps over the lazy dog; vmta bench filler text.\r\n";
        while m.len() + line.len() <= size {
            m.extend_from_slice(line);
        }
    }
    m
}

fn run_vmta(args: &BenchArgs, w: &Workload) -> Result<Outcome, String> {
    let target = target(args, w)?;
    let spool =
        std::env::temp_dir().join(format!("vmta-bench-{}-{}", std::process::id(), w.letter));
    let _ = std::fs::remove_dir_all(&spool);
    let config = EngineConfig::builder()
        .shards(shards(args))
        .spool_dir(&spool)
        .durability(if w.durable {
            Durability::Sync
        } else {
            Durability::None
        })
        .nameservers(&[&target.dns().to_string()])
        .port(target.port())
        .tls(TlsPolicy::Disabled)
        .max_connections_per_host(args.connections_per_host)
        .max_messages_per_connection(10_000)
        .transactions_in_flight(
            args.transactions_in_flight
                .unwrap_or_else(default_in_flight),
        )
        .shaping_rules(vmta_testworld::world::UNSHAPED)
        .with(|c| {
            c.engine.submission_queue = 16_384;
            // Temporary failures are retried after a second or two, so the run sees them delivered.
            c.retry.policy = RetryKind::Exponential;
            c.retry.first_s = 1;
            c.retry.max_s = 2;
        })
        .build();
    let result = measure_vmta(args, w, &target, &config);
    let _ = std::fs::remove_dir_all(&spool);
    result
}

fn measure_vmta(
    args: &BenchArgs,
    w: &Workload,
    target: &Target,
    config: &EngineConfig,
) -> Result<Outcome, String> {
    reset_peak_rss();
    let engine = Arc::new(Engine::start(config).map_err(|e| e.to_string())?);
    if w.queue_first {
        engine.pause();
    }
    let total = w.messages;
    let domains = args.domains.max(1);
    let world_cpu_0 = world_cpu();
    let cpu_0 = vmta_workload::process_cpu_seconds();
    let started = Instant::now();
    let submitted = Arc::new(AtomicU64::new(0));
    let wl = *w;
    let submitters: Vec<_> = (0..args.submitters.max(1))
        .map(|t| {
            let engine = engine.clone();
            let submitted = submitted.clone();
            let step = args.submitters.max(1);
            let per_batch = args.batch.max(1);
            let nowait = args.nowait;
            std::thread::spawn(move || -> Result<Vec<(u64, Instant)>, String> {
                let mut times = Vec::with_capacity(total / step / LATENCY_SAMPLE + 1);
                if nowait {
                    for i in (t..total).step_by(step) {
                        let rcpts = recipients_of(i, &wl, domains);
                        let body = content(i, &rcpts[0], wl.size);
                        let s = Submission {
                            sender: "bounces@sender.vmta.test".into(),
                            recipients: rcpts,
                            tenant: "bench".into(),
                            body,
                            ..Submission::default()
                        };
                        let id = engine.submit_nowait(&s).map_err(|e| e.to_string())?;
                        if sampled(id) {
                            times.push((id, Instant::now()));
                        }
                        submitted.fetch_add(1, Ordering::Relaxed);
                    }
                    if !engine.flush(Duration::from_secs(300)) {
                        return Err("the submissions were not durable within 300 s".into());
                    }
                    return Ok(times);
                }
                // This thread's messages, t, t + step, ..., `per_batch` to a batch.
                for first in (t..total).step_by(step * per_batch) {
                    let chunk = (first..total.min(first + step * per_batch)).step_by(step);
                    let mut batch: Vec<Submission> = chunk
                        .map(|i| {
                            let rcpts = recipients_of(i, &wl, domains);
                            let body = content(i, &rcpts[0], wl.size);
                            Submission {
                                sender: "bounces@sender.vmta.test".into(),
                                recipients: rcpts,
                                tenant: "bench".into(),
                                body,
                                ..Submission::default()
                            }
                        })
                        .collect();
                    while !batch.is_empty() {
                        let results = engine.submit_batch(&batch);
                        let now = Instant::now();
                        let mut retry = Vec::new();
                        for (s, r) in batch.into_iter().zip(results) {
                            match r {
                                Ok(id) => {
                                    if sampled(id) {
                                        times.push((id, now));
                                    }
                                    submitted.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(SubmitError::Busy) => retry.push(s),
                                Err(e) => return Err(e.to_string()),
                            }
                        }
                        if !retry.is_empty() {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        batch = retry;
                    }
                }
                Ok(times)
            })
        })
        .collect();
    let total_rcpts = (total * w.recipients) as u64;
    let deadline = started + Duration::from_secs(args.timeout);
    let mut events: Vec<DeliveryEvent> = Vec::with_capacity(65_536);
    let mut delivered_at: Vec<(u64, Instant)> =
        Vec::with_capacity(total_rcpts as usize / LATENCY_SAMPLE + 1);
    let (mut delivered, mut bounced, mut deferrals, mut finals) = (0u64, 0u64, 0u64, 0u64);
    let mut peak_anon = 0u64;
    let mut last_sample = Instant::now();
    let mut last_event = started;
    let mut delivery_start = started;
    let mut queue_seconds = 0.0;
    let mut world_cpu_start = world_cpu_0;
    let mut cpu_start = cpu_0;
    let mut resumed = !w.queue_first;
    let progress = !args.json;
    while finals < total_rcpts && Instant::now() < deadline {
        if !resumed && submitted.load(Ordering::Relaxed) == total as u64 {
            // (f): everything is queued; delivery starts now, and so does the measurement.
            queue_seconds = started.elapsed().as_secs_f64();
            peak_anon = peak_anon.max(rss_anon());
            world_cpu_start = world_cpu();
            cpu_start = vmta_workload::process_cpu_seconds();
            delivery_start = Instant::now();
            resumed = true;
            engine.resume();
        }
        engine.wait(Duration::from_millis(50));
        events.clear();
        engine.poll_events(&mut events, 100_000);
        let now = Instant::now();
        for e in &events {
            match e.kind {
                EventKind::Delivered => {
                    delivered += 1;
                    finals += 1;
                    if sampled(e.message_id) {
                        delivered_at.push((e.message_id, now));
                    }
                }
                EventKind::Bounced
                | EventKind::Expired
                | EventKind::Cancelled
                | EventKind::Suppressed
                | EventKind::Refused => {
                    bounced += 1;
                    finals += 1;
                }
                EventKind::Deferred => deferrals += 1,
                EventKind::LateBounce
                | EventKind::LateDeferral
                | EventKind::Complaint
                | EventKind::Recovered => {}
            }
        }
        if !events.is_empty() {
            last_event = now;
        }
        if last_sample.elapsed() >= Duration::from_millis(250) {
            last_sample = Instant::now();
            peak_anon = peak_anon.max(rss_anon());
            if progress {
                eprint!(
                    "\r  ({}) submitted {:>9}  final {:>9}/{}  deferrals {:>7} ",
                    w.letter,
                    submitted.load(Ordering::Relaxed),
                    finals,
                    total_rcpts,
                    deferrals
                );
            }
        }
    }
    if progress {
        eprint!("\r{:100}\r", "");
    }
    let cpu = vmta_workload::process_cpu_seconds() - cpu_start - (world_cpu() - world_cpu_start);
    let metrics = engine.metrics();
    let mut submit_times: HashMap<u64, Instant> = HashMap::with_capacity(total / LATENCY_SAMPLE);
    for t in submitters {
        match t.join() {
            Ok(Ok(times)) => submit_times.extend(times),
            Ok(Err(e)) => return Err(format!("submission failed: {e}")),
            Err(_) => return Err("a submitting thread panicked".into()),
        }
    }
    engine.shutdown(Duration::from_secs(5));
    if finals < total_rcpts {
        return Err(format!(
            "timed out: {finals} of {total_rcpts} recipients reached a final state"
        ));
    }
    let mut lat: Vec<f64> = delivered_at
        .iter()
        .filter_map(|(id, at)| {
            submit_times
                .get(id)
                .map(|s| at.saturating_duration_since(*s).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_unstable_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    Ok(Outcome {
        system: "vmta",
        workload: w.letter,
        title: w.title,
        messages: total as u64,
        recipients: total_rcpts,
        delivered,
        bounced,
        deferrals,
        seconds: last_event
            .saturating_duration_since(delivery_start)
            .as_secs_f64(),
        cpu_s: cpu,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        peak_rss_mb: peak_rss() as f64 / 1048576.0,
        peak_anon_mb: peak_anon as f64 / 1048576.0,
        connections: target
            .peak_connections()
            .unwrap_or(metrics.total().connections_opened),
        queue_seconds,
    })
}

fn run_blast(args: &BenchArgs, w: &Workload) -> Result<Outcome, String> {
    let target = target(args, w)?;
    let hosts = target.hosts();
    let domains = args.domains.max(1);
    let mut lists: Vec<(SocketAddr, Vec<u32>)> = hosts.iter().map(|h| (*h, Vec::new())).collect();
    if w.recipients != 1 {
        return Err("the blast replays one-recipient workloads only".into());
    }
    for i in 0..w.messages {
        let h = (i % domains) % hosts.len();
        lists[h].1.push(i as u32);
    }
    let wl = *w;
    let plan = BlastPlan {
        hosts: lists,
        connections_per_host: args.connections_per_host * shards(args),
        threads: shards(args),
        message: Arc::new(move |i| {
            let rcpts = recipients_of(i as usize, &wl, domains);
            let body = content(i as usize, &rcpts[0], wl.size);
            (rcpts, body)
        }),
        sender: "bounces@sender.vmta.test".into(),
        limit: Duration::from_secs(args.timeout),
        in_flight: args.transactions_in_flight.unwrap_or(1),
    };
    reset_peak_rss();
    let world_cpu_0 = world_cpu();
    let cpu_0 = vmta_workload::process_cpu_seconds();
    let r = blast::run(&plan).map_err(|e| e.to_string())?;
    let cpu = vmta_workload::process_cpu_seconds() - cpu_0 - (world_cpu() - world_cpu_0);
    Ok(Outcome {
        system: "blast",
        workload: w.letter,
        title: w.title,
        messages: w.messages as u64,
        recipients: w.messages as u64,
        delivered: r.accepted,
        bounced: r.refused,
        seconds: r.elapsed.as_secs_f64(),
        cpu_s: cpu,
        peak_rss_mb: peak_rss() as f64 / 1048576.0,
        connections: r.connections,
        ..Outcome::default()
    })
}

/// CPU seconds of the in-process test world's threads (SMTP sink workers, DNS responder).
fn world_cpu() -> f64 {
    let tick = {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as f64 } else { 100.0 }
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0.0;
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !(comm.starts_with("sink-") || comm == "testworld-dns") {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        // Fields after the command name's closing parenthesis: state is field 3, utime 14, stime 15.
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 {
                let ut: f64 = f[11].parse().unwrap_or(0.0);
                let st: f64 = f[12].parse().unwrap_or(0.0);
                total += (ut + st) / tick;
            }
        }
    }
    total
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Starts the peak resident memory (VmHWM) afresh (Linux 4.0 and later; ignored where refused).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory (VmHWM), file-backed spool pages included.
fn peak_rss() -> u64 {
    status_kb("VmHWM:")
}

/// Resident anonymous memory now (heap and stacks, not the spool's file pages).
fn rss_anon() -> u64 {
    status_kb("RssAnon:")
}
