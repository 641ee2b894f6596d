//! `vmta world`: the built-in test world (DNS responder and SMTP sinks on loopback) in the foreground,
//! for measuring another client against the same receivers: `vmta bench --dns .. --port .. --hosts ..`,
//! Postfix or lettre (see `benches/compare.sh` and `docs/peers.md`).
//!
//! - DNS on 127.0.0.`base`, sinks on 127.0.0.`base+1`.. sharing one port, domains `d{i}.vmta.test`
//!   with domain `i` served by host `i % hosts` (the layout of `World::start`).
//! - `--ready FILE` is written (atomically, by rename) once everything listens: a JSON object with
//!   `dns`, `smtp_port`, `hosts` and `domains`. `--routes FILE` lists `DOMAIN IP PORT` per line for
//!   clients that cannot ask a private DNS server.
//! - The counters are polled every 5 ms. With `--expect N` the command ends once the sinks accepted
//!   N messages, printing one JSON line `{"received","seconds","connections"}` where `seconds` runs
//!   from the first accepted connection (as seen by the 5 ms poll) to the N-th message. It also ends
//!   on SIGTERM/SIGINT (exit 0, same line) or after `--timeout` seconds (exit 1 when N was not
//!   reached).
//!
//! It measures only what the receivers see: the sending side's CPU is the caller's business.

use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vmta_testworld::world::World;

/// Arguments of `vmta world`.
#[derive(Debug, clap::Args)]
pub struct WorldArgs {
    /// DNS on 127.0.0.BASE, sinks on the addresses after it.
    #[arg(long, default_value_t = 10)]
    base: u8,
    /// MX hosts (SMTP sinks).
    #[arg(long, default_value_t = 10)]
    hosts: u8,
    /// Destination domains `d0.vmta.test`...
    #[arg(long, default_value_t = 1000)]
    domains: usize,
    /// Write the addresses here (JSON) once the world listens.
    #[arg(long, value_name = "FILE")]
    ready: Option<PathBuf>,
    /// Write `DOMAIN IP PORT` per domain here, for clients that cannot use our DNS.
    #[arg(long, value_name = "FILE")]
    routes: Option<PathBuf>,
    /// End once the sinks accepted this many messages.
    #[arg(long, value_name = "N")]
    expect: Option<u64>,
    /// Give up after this many seconds (exit 1 if `--expect` was not reached).
    #[arg(long, value_name = "S", default_value_t = 600)]
    timeout: u64,
}

/// Runs `vmta world`.
pub fn run(args: WorldArgs) -> ExitCode {
    match world(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vmta world: {e}");
            ExitCode::from(2)
        }
    }
}

fn world(args: &WorldArgs) -> Result<bool, String> {
    if args.hosts == 0 || args.domains == 0 {
        return Err("--hosts and --domains must be at least 1".into());
    }
    if u16::from(args.base) + u16::from(args.hosts) > 254 {
        return Err("--base plus --hosts must stay below 255".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    let world = World::start(args.base, args.hosts, args.domains)
        .map_err(|e| format!("cannot start the test world: {e}"))?;
    if let Some(path) = &args.routes {
        let mut text = String::with_capacity(world.domains.len() * 32);
        for (i, d) in world.domains.iter().enumerate() {
            let host = world.sinks[i % world.sinks.len()].addr();
            text.push_str(&format!("{d} {} {}\n", host.ip(), host.port()));
        }
        write_atomically(path, text.as_bytes())?;
    }
    let hosts: Vec<String> = world
        .sinks
        .iter()
        .map(|s| s.addr().ip().to_string())
        .collect();
    let ready = json!({
        "dns": world.dns.addr().to_string(),
        "smtp_port": world.port,
        "hosts": hosts,
        "domains": world.domains.len(),
    });
    if let Some(path) = &args.ready {
        write_atomically(path, format!("{ready}\n").as_bytes())?;
    }
    eprintln!("vmta world: {ready}");

    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut first_connection: Option<Instant> = None;
    let mut last_message = None;
    let mut last_received = 0;
    let reached = loop {
        let now = Instant::now();
        if first_connection.is_none() && world.connections() > 0 {
            first_connection = Some(now);
        }
        let received = world.received();
        if received != last_received {
            last_received = received;
            last_message = Some(now);
        }
        if args.expect.is_some_and(|n| received >= n) {
            break true;
        }
        if stop.load(Ordering::Relaxed) {
            break args.expect.is_none();
        }
        if now >= deadline {
            eprintln!(
                "vmta world: timeout after {} s with {received} messages received",
                args.timeout
            );
            break args.expect.is_none();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let seconds = match (first_connection, last_message) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let report = json!({
        "received": last_received,
        "seconds": (seconds * 1e6).round() / 1e6,
        "connections": world.connections(),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}").map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(reached)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
