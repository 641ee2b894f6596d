//! Traffic shaping against real Postfix `smtp-sink` processes on 127.0.40.x.
//!
//! The engine does not exist yet, so plain threads play its part: each thread is a "shard" with its own
//! [`Shaper`] over one [`ShapingShared`], and drives a blocking SMTP client only when the shaper allows.
//! What the sink saw is then checked against the configured limits: concurrent connections (the sink's
//! `-m` cap, under which an extra connection would never get its greeting, and `/proc/net/tcp` sampled
//! on the sink's side), the message rate (the sink's per-message dump files and their modification
//! times), messages per connection (the EHLO name the sink records in each dump), and, with a sink that
//! answers every session with 421, the adaptive backoff (the sink's own session counter, `-c`).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};
use vmta::shaping::{Deferral, Nanos, RuleSet, Shaper, ShapingShared};
use vmta::smtp::Phase;
use vmta_tests::shaping::{SmtpClient, established_at, running_as_root};
use vmta_tests::{Peer, TempDir, free_tcp_port, require, wait_for_tcp};

const SINK_IP: &str = "127.0.40.1";

fn sink(port: u16, max_conns: u32, dump: Option<&Path>, extra: &[&str], out: &Path) -> Peer {
    let mut cmd = Command::new(require("smtp-sink"));
    if running_as_root() {
        cmd.args(["-u", "nobody"]);
    }
    cmd.arg("-m").arg(max_conns.to_string());
    if let Some(d) = dump {
        cmd.arg("-d").arg(format!("{}/%H%M%S.", d.display()));
    }
    cmd.args(extra)
        .arg(format!("{SINK_IP}:{port}"))
        .arg("64")
        .stdout(std::fs::File::create(out).expect("sink output file"));
    let mut p = Peer::spawn("smtp-sink", &mut cmd);
    let addr: SocketAddr = format!("{SINK_IP}:{port}").parse().expect("addr");
    wait_for_tcp(addr, Duration::from_secs(10));
    p.assert_running();
    p
}

fn writable_dir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

fn sleep_until(epoch: Instant, t: Nanos) {
    let now = Nanos::since(epoch, Instant::now());
    if t > now {
        std::thread::sleep(t.duration_since(now));
    }
}

/// Claims one message from a shared count of messages still to send.
fn claim(left: &AtomicU64) -> bool {
    left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

#[test]
fn connection_caps_rates_and_messages_per_connection_hold_at_smtp_sink() {
    let port = free_tcp_port(SINK_IP);
    let dump = writable_dir("shaping-dump");
    let out = TempDir::new("shaping-out");
    // The sink serves at most 4 connections: the two sources' caps of 2 each, together.
    let _sink = sink(
        port,
        4,
        Some(dump.path()),
        &[],
        &out.path().join("sink.out"),
    );
    let addr = SocketAddrV4::new(SINK_IP.parse().expect("ip"), port);
    while established_at(addr) > 0 {
        std::thread::sleep(Duration::from_millis(5)); // wait_for_tcp's probe going away
    }
    let rules = format!(
        r#"
        [defaults]
        max_connections = 50
        [[mx]]
        patterns = ["{SINK_IP}"]
        max_connections = 2
        message_rate = "20/s"
        message_burst = 3
        connection_rate = "10/s"
        connection_burst = 2
        max_messages_per_connection = 4
        "#
    );
    const PER_SOURCE: u64 = 50;
    const THREADS: usize = 8;
    let shared = ShapingShared::new(RuleSet::from_toml(&rules).expect("rules"), THREADS, 0);
    let epoch = Instant::now();
    let left = Arc::new([AtomicU64::new(PER_SOURCE), AtomicU64::new(PER_SOURCE)]);
    let no_greeting = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(Ordering::Acquire) {
                max = max.max(established_at(addr));
                std::thread::sleep(Duration::from_millis(1));
            }
            max
        })
    };
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let left = Arc::clone(&left);
            let no_greeting = Arc::clone(&no_greeting);
            let failed = Arc::clone(&failed);
            std::thread::spawn(move || {
                let s_ix = t % 2;
                let name = ["src-a", "src-b"][s_ix];
                let mut shaper = Shaper::new(shared);
                let now = || Nanos::since(epoch, Instant::now());
                let src = shaper.source(name);
                let route = shaper.route(src, "sink.test", SINK_IP, now());
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut conn_no = 0;
                while left[s_ix].load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    let mut permit = match shaper.may_connect(route, now()) {
                        Ok(p) => p,
                        Err(Deferral::NotBefore(at, _)) => {
                            sleep_until(epoch, at);
                            continue;
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                    };
                    conn_no += 1;
                    let (mut client, greeting) =
                        match SmtpClient::connect(addr.into(), Duration::from_secs(3)) {
                            Ok(c) => c,
                            Err(_) => {
                                // Over the sink's -m cap a connection waits in the accept queue and
                                // never sees a greeting: shaping let too many through.
                                no_greeting.fetch_add(1, Ordering::AcqRel);
                                shaper.on_connect_failed(permit, now());
                                continue;
                            }
                        };
                    shaper.on_reply(
                        &permit,
                        Phase::Greeting,
                        reply_signal(greeting.0, greeting.1.as_bytes()),
                        now(),
                    );
                    let ehlo = client
                        .command(&format!("EHLO {name}-t{t}-c{conn_no}"))
                        .expect("EHLO");
                    assert_eq!(ehlo.0, 250);
                    loop {
                        if !claim(&left[s_ix]) {
                            break;
                        }
                        match shaper.may_send(&mut permit, now()) {
                            Ok(()) => {
                                let r = client
                                    .send_message(
                                        "sender@vmta.test",
                                        "rcpt@sink.test",
                                        "Subject: shaping\r\n\r\nhello",
                                    )
                                    .expect("transaction");
                                shaper.on_reply(
                                    &permit,
                                    Phase::EndOfData,
                                    reply_signal(r.0, r.1.as_bytes()),
                                    now(),
                                );
                                if r.0 != 250 {
                                    failed.fetch_add(1, Ordering::AcqRel);
                                }
                            }
                            Err(Deferral::NotBefore(at, _)) => {
                                left[s_ix].fetch_add(1, Ordering::AcqRel);
                                if at.duration_since(now()) < Duration::from_millis(300) {
                                    sleep_until(epoch, at);
                                    continue;
                                }
                                break;
                            }
                            Err(_) => {
                                left[s_ix].fetch_add(1, Ordering::AcqRel);
                                break;
                            }
                        }
                    }
                    client.quit().expect("quit");
                    shaper.on_connection_closed(permit, now());
                }
                shaper.connections(route)
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    stop.store(true, Ordering::Release);
    let max_established = sampler.join().expect("sampler");
    assert_eq!(
        no_greeting.load(Ordering::Acquire),
        0,
        "a connection went over the sink's -m 4"
    );
    assert_eq!(failed.load(Ordering::Acquire), 0);
    assert!(
        max_established <= 4,
        "the sink saw {max_established} connections at once"
    );
    assert!(
        max_established >= 2,
        "the connection caps were never used ({max_established})"
    );
    // Every connection slot was given back.
    let mut check = Shaper::new(Arc::clone(&shared));
    for name in ["src-a", "src-b"] {
        let s = check.source(name);
        let r = check.route(s, "sink.test", SINK_IP, Nanos::since(epoch, Instant::now()));
        assert_eq!(check.connections(r), 0, "{name}: a connection slot leaked");
    }

    // What the sink stored: one file per message, naming the EHLO of its connection.
    let mut times: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut per_connection: HashMap<String, u32> = HashMap::new();
    for entry in std::fs::read_dir(dump.path()).expect("dump dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("dump file");
        let helo = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Helo-Args: "))
            .expect("X-Helo-Args")
            .to_string();
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime")
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        let src = if helo.starts_with("src-a-") {
            "src-a"
        } else {
            "src-b"
        };
        times.entry(src).or_default().push(mtime);
        *per_connection.entry(helo).or_default() += 1;
    }
    for (helo, n) in &per_connection {
        assert!(
            *n <= 4,
            "{helo} carried {n} messages, more than 4 per connection"
        );
    }
    for name in ["src-a", "src-b"] {
        let mut t = times.remove(name).unwrap_or_default();
        assert_eq!(t.len() as u64, PER_SOURCE, "{name}: messages at the sink");
        t.sort_unstable();
        // 20/s with a burst of 3, each source on its own budget. A bucket grants at most
        // `burst + 1 + floor(span / interval)` in any span (the +1 is the minting phase). The sink stamps
        // a message after the decision, but each of the source's 2 connections has at most one message
        // in flight, so at most 2 messages decided before a span can be stamped inside it, however late
        // the sink runs: the bound below holds under any scheduling delay.
        let interval = 50_000_000u64;
        for i in 0..t.len() {
            for j in i + 1..t.len() {
                let n = (j - i + 1) as u64;
                let allowed = 3 + 1 + 2 + (t[j] - t[i]) / interval;
                assert!(
                    n <= allowed,
                    "{name}: {n} messages within {} ns",
                    t[j] - t[i]
                );
            }
        }
        // (With n = 50 the bound above also says the 50 took at least 44 intervals: no flood.)
    }
}

#[test]
fn a_sink_that_answers_421_is_backed_off() {
    let port = free_tcp_port(SINK_IP);
    let out = TempDir::new("shaping-out");
    let out_file = out.path().join("sink.out");
    // -Q CONNECT: every session gets "421 4.0.0 Server closing connection"; -c counts sessions.
    let _sink = sink(port, 64, None, &["-c", "-Q", "CONNECT"], &out_file);
    let addr = SocketAddrV4::new(SINK_IP.parse().expect("ip"), port);
    let rules = format!(
        r#"
        [defaults]
        max_connections = 50
        [backoff]
        decrease_percent = 50
        floor_percent = 5
        recover_percent = 5
        recover_every = "1h"
        cooldown = "200ms"
        [[mx]]
        patterns = ["{SINK_IP}"]
        max_connections = 4
        connection_rate = "40/s"
        connection_burst = 4
        "#
    );
    let shared = ShapingShared::new(RuleSet::from_toml(&rules).expect("rules"), 4, 0);
    let epoch = Instant::now();
    let sessions_at = |out: &Path| -> u64 {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        text.rsplit('\r')
            .find_map(|c| {
                c.trim()
                    .strip_prefix("sess=")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let before = sessions_at(&out_file); // wait_for_tcp's probe
    let run = Duration::from_secs(3);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut shaper = Shaper::new(shared);
                let now = || Nanos::since(epoch, Instant::now());
                let src = shaper.source("src-a");
                let route = shaper.route(src, "sink.test", SINK_IP, now());
                while epoch.elapsed() < run {
                    match shaper.may_connect(route, now()) {
                        Ok(permit) => {
                            match SmtpClient::connect(addr.into(), Duration::from_secs(3)) {
                                Ok((client, greeting)) => {
                                    shaper.on_reply(
                                        &permit,
                                        Phase::Greeting,
                                        reply_signal(greeting.0, greeting.1.as_bytes()),
                                        now(),
                                    );
                                    let _ = client.quit();
                                    shaper.on_connection_closed(permit, now());
                                }
                                Err(_) => shaper.on_connect_failed(permit, now()),
                            }
                        }
                        Err(Deferral::NotBefore(at, _)) => {
                            let until = at.min(Nanos::since(epoch, epoch + run));
                            sleep_until(epoch, until);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(2)),
                    }
                }
                shaper.snapshot(route, now())
            })
        })
        .collect();
    let mut snaps = Vec::new();
    for w in workers {
        snaps.push(w.join().expect("worker"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let sessions = sessions_at(&out_file) - before;
    // Without backoff: 4 at once, then 40/s for 3 s, about 120 sessions. With it, every 421 (once per
    // 200 ms cooldown) halves the rate down to 5 %: 2/s.
    assert!(sessions >= 4, "the sink saw only {sessions} sessions");
    assert!(
        sessions <= 45,
        "the sink saw {sessions} sessions: no backoff"
    );
    for s in &snaps {
        let live = s.live.as_ref().expect("live");
        assert_eq!(live.backoff_permille, 50, "backoff at the floor");
        assert_eq!(live.connections, 0);
        assert!(live.throttles >= 4);
        assert_eq!(s.effective.max_connections, Some(1));
    }
}

/// Delivers up to `n` messages for `source` through one shard, stopping at a "not before" more than a
/// second away (an hourly cap or a warm-up day). Returns the messages sent and the last such deferral.
fn deliver(
    shared: &Arc<ShapingShared>,
    source: &str,
    addr: SocketAddrV4,
    n: u64,
    helo: &str,
    epoch: Instant,
) -> (u64, Option<Deferral>) {
    let mut shaper = Shaper::new(Arc::clone(shared));
    let now = || Nanos::since(epoch, Instant::now());
    let src = shaper.source(source);
    let route = shaper.route(src, "sink.test", SINK_IP, now());
    let far = |at: Nanos| at.duration_since(now()) > Duration::from_secs(1);
    let mut sent = 0;
    let mut conn_no = 0;
    while sent < n {
        let mut permit = match shaper.may_connect(route, now()) {
            Ok(p) => p,
            Err(d @ Deferral::NotBefore(at, _)) if far(at) => return (sent, Some(d)),
            Err(Deferral::NotBefore(at, _)) => {
                sleep_until(epoch, at);
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
        };
        conn_no += 1;
        let (mut client, greeting) =
            SmtpClient::connect(addr.into(), Duration::from_secs(3)).expect("connect");
        shaper.on_reply(
            &permit,
            Phase::Greeting,
            reply_signal(greeting.0, greeting.1.as_bytes()),
            now(),
        );
        assert_eq!(
            client
                .command(&format!("EHLO {helo}-c{conn_no}"))
                .expect("EHLO")
                .0,
            250
        );
        let mut stop = None;
        while sent < n {
            match shaper.may_send(&mut permit, now()) {
                Ok(()) => {
                    let r = client
                        .send_message(
                            "sender@vmta.test",
                            "rcpt@sink.test",
                            "Subject: cap\r\n\r\nhello",
                        )
                        .expect("transaction");
                    assert_eq!(r.0, 250);
                    sent += 1;
                }
                Err(d @ Deferral::NotBefore(at, _)) if far(at) => {
                    stop = Some(d);
                    break;
                }
                Err(Deferral::NotBefore(at, _)) => sleep_until(epoch, at),
                Err(_) => break,
            }
        }
        client.quit().expect("quit");
        drop(permit);
        if stop.is_some() {
            return (sent, stop);
        }
    }
    (sent, None)
}

#[test]
fn hourly_caps_and_warmup_volumes_hold_to_the_message_at_smtp_sink() {
    let port = free_tcp_port(SINK_IP);
    let dump = writable_dir("shaping-dump");
    let out = TempDir::new("shaping-out");
    let _sink = sink(
        port,
        16,
        Some(dump.path()),
        &[],
        &out.path().join("sink.out"),
    );
    let addr = SocketAddrV4::new(SINK_IP.parse().expect("ip"), port);
    // The engine epoch is now; the warming source started today, so it is on day 0 (15 messages). Keep
    // clear of a UTC midnight during the test.
    let secs_of_day = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 86_400;
    if secs_of_day > 86_400 - 60 {
        std::thread::sleep(Duration::from_secs(86_400 - secs_of_day + 1));
    }
    let unix_now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let today = unix_now / 86_400;
    let (y, m, d) = civil_from_days(today as i64);
    let rules = format!(
        r#"
        [defaults]
        max_connections = 4
        message_rate = "100/s"
        message_burst = 10
        max_messages_per_connection = 7
        hourly_cap = 25
        [[warmup]]
        name = "tiny"
        steps = [[1, 15], [1, 30]]
        [[source]]
        name = "warming"
        warmup = "tiny"
        warmup_started = "{y:04}-{m:02}-{d:02}"
        "#
    );
    let shared = ShapingShared::new(RuleSet::from_toml(&rules).expect("rules"), 2, unix_now);
    let epoch = Instant::now();
    // Each source from two shards at once, asking for far more than it may send.
    let run = |source: &'static str| {
        let handles: Vec<_> = (0..2)
            .map(|shard| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    deliver(
                        &shared,
                        source,
                        addr,
                        40,
                        &format!("{source}-s{shard}"),
                        epoch,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("shard"))
            .collect::<Vec<_>>()
    };
    let capped = run("capped");
    let warming = run("warming");
    use vmta::shaping::Reason;
    for (sent, stop) in &capped {
        assert!(*sent <= 25);
        assert!(
            matches!(stop, Some(Deferral::NotBefore(_, Reason::HourlyCap))),
            "{stop:?}"
        );
    }
    for (_, stop) in &warming {
        assert!(
            matches!(stop, Some(Deferral::NotBefore(_, Reason::Warmup))),
            "{stop:?}"
        );
    }
    // What the sink received, by source (the EHLO name in each dump file).
    let mut by_source: HashMap<String, u64> = HashMap::new();
    let mut per_connection: HashMap<String, u32> = HashMap::new();
    for entry in std::fs::read_dir(dump.path()).expect("dump dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("dump");
        let helo = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Helo-Args: "))
            .expect("X-Helo-Args")
            .to_string();
        let source = helo.split('-').next().expect("source").to_string();
        *by_source.entry(source).or_default() += 1;
        *per_connection.entry(helo).or_default() += 1;
    }
    assert_eq!(
        by_source.get("capped"),
        Some(&25),
        "hourly cap of 25, two shards: {by_source:?}"
    );
    assert_eq!(
        by_source.get("warming"),
        Some(&15),
        "warm-up day 0 allows 15: {by_source:?}"
    );
    assert!(
        per_connection.values().all(|&n| n <= 7),
        "{per_connection:?}"
    );
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What the engine tells the shaper of a reply: the shipped bounce rules' verdict.
fn reply_signal(code: u16, text: &[u8]) -> vmta::shaping::ReplySignal {
    static RULES: std::sync::OnceLock<vmta::bounce::Classifier> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(vmta::bounce::Classifier::default_rules);
    // The line as sent (an enhanced code, if any, leads the text).
    let line = format!("{code} {}", String::from_utf8_lossy(text));
    let c = rules.classify(&vmta::bounce::Diagnostic::from_line(&line));
    vmta::shaping::signal(code, c.throttle)
}
