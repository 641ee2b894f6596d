//! Nothing acknowledged is lost, and the engine's account of it is whole: `vmta serve` is killed
//! with SIGKILL while clients relay through it, again and again (`VMTA_SERVE_KILLS`, 20 by default;
//! `benches/serve-kill.sh` runs 200), restarted on the same spool each time, and at the end every
//! message that got its `250` must have reached the `smtp-sink` behind it, and the engine's event
//! log (`[engine] event_log`, kept across the kills) must hold exactly one final line for every
//! message that reached it. A message delivered again after a kill (the sink's 250 came, neither
//! the log nor the spool had it yet) is a duplicate at the sink: allowed, counted and printed, and
//! its line counts the attempt the kill cut short.
//! Addresses 127.0.93.0/24.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use vmta_tests::serve::Daemon;
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_addr};

/// Sends messages over one connection until an error; each token whose data got a 250 goes into
/// `acked` with its queue id.
fn client(addr: SocketAddr, tag: String, acked: Arc<Mutex<Vec<(String, String)>>>) {
    let Ok(s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut reply = || -> Option<String> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Some(line);
            }
        }
    };
    if !reply().is_some_and(|l| l.starts_with("220")) {
        return;
    }
    if w.write_all(b"EHLO crash.client.test\r\n").is_err() || reply().is_none() {
        return;
    }
    for seq in 0.. {
        let token = format!("{tag}-{seq}");
        let cmds = format!("MAIL FROM:<c@client.test>\r\nRCPT TO:<u{seq}@dest.test>\r\nDATA\r\n");
        if w.write_all(cmds.as_bytes()).is_err() {
            return;
        }
        for _ in 0..3 {
            if reply().is_none() {
                return;
            }
        }
        let body = format!("From: c@client.test\r\nSubject: token {token} end\r\n\r\nx\r\n.\r\n");
        if w.write_all(body.as_bytes()).is_err() {
            return;
        }
        match reply() {
            Some(l) if l.starts_with("250 2.0.0 Ok: queued as ") => {
                let id = l.trim_end()["250 2.0.0 Ok: queued as ".len()..].to_string();
                acked.lock().unwrap().push((token, id));
            }
            _ => return,
        }
    }
}

#[test]
fn event_log_exactly_once_and_every_acknowledged_message_survives_sigkill() {
    let kills: usize = std::env::var("VMTA_SERVE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("serve-crash");
    let sink = SmtpSink::start("127.0.93.1", &[]);
    let addr = free_tcp_addr("127.0.93.1");
    let config = dir.path().join("vmta.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nspool_dir = \"{spool}\"\nshards = 2\nspool_segment_mb = 4\nevent_log = \"{log}\"\n\
             [serve]\nevent_log = \"\"\n\
             [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n[shaping]\nrules = '''\n{unshaped}'''\n\
             [[listener]]\naddress = \"{addr}\"\nrole = \"relay\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\n",
            unshaped = vmta_testworld::world::UNSHAPED,
            spool = dir.path().join("spool").display(),
            log = dir.path().join("engine-events.jsonl").display(),
            sink = sink.addr,
        ),
    )
    .unwrap();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..kills {
        let daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &config);
        let clients: Vec<_> = (0..4)
            .map(|t| {
                let acked = acked.clone();
                let tag = format!("r{round}t{t}");
                std::thread::spawn(move || client(addr, tag, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50 + rand(400)));
        daemon.kill();
        for c in clients {
            c.join().unwrap();
        }
    }
    // The last start delivers what is left.
    let daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &config);
    let acked_ids: Vec<(String, String)> = acked.lock().unwrap().clone();
    let acked: Vec<String> = acked_ids.iter().map(|(t, _)| t.clone()).collect();
    assert!(
        acked.len() >= kills,
        "only {} messages acknowledged in {kills} rounds",
        acked.len()
    );
    let token_re = |m: &str| -> Option<String> {
        let i = m.find("Subject: token ")? + "Subject: token ".len();
        let j = m[i..].find(" end")?;
        Some(m[i..i + j].to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (seen, missing) = loop {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in sink.messages() {
            if let Some(t) = token_re(&m) {
                *seen.entry(t).or_default() += 1;
            }
        }
        let missing: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (seen, missing.into_iter().cloned().collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Every final outcome in the engine's log exactly once: each line's (message, recipient) once,
    // and every acknowledged message's delivery there.
    let log_path = dir.path().join("engine-events.jsonl");
    let finals = || -> HashMap<(String, u64), usize> {
        let mut n = HashMap::new();
        for line in std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
        {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if matches!(
                v["event"].as_str(),
                Some("delivered" | "bounced" | "expired" | "cancelled")
            ) {
                let key = (
                    v["message_id"].as_str().unwrap_or_default().to_string(),
                    v["recipient_index"].as_u64().unwrap_or(99),
                );
                *n.entry(key).or_default() += 1;
            }
        }
        n
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let logged = loop {
        let logged = finals();
        if acked_ids
            .iter()
            .all(|(_, id)| logged.contains_key(&(id.clone(), 0)))
            || Instant::now() > deadline
        {
            break logged;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    daemon.kill();
    let unlogged: Vec<&String> = acked_ids
        .iter()
        .filter(|(_, id)| !logged.contains_key(&(id.clone(), 0)))
        .map(|(t, _)| t)
        .collect();
    let twice: Vec<_> = logged.iter().filter(|(_, n)| **n > 1).collect();
    let torn = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
        .count();
    eprintln!(
        "engine log: {} final lines for {} recipients, {} acknowledged without a line, {} logged \
         twice, {torn} lines cut short by a kill",
        logged.values().sum::<usize>(),
        logged.len(),
        unlogged.len(),
        twice.len()
    );
    assert!(
        unlogged.is_empty(),
        "{} acknowledged messages have no final line, the first: {:?}",
        unlogged.len(),
        &unlogged[..unlogged.len().min(20)]
    );
    assert!(twice.is_empty(), "final outcomes logged twice: {twice:?}");
    // A message the sink got twice was attempted twice: the attempt a kill cut short counts (the
    // attempt journal), so its one `delivered` line says so.
    let attempts: HashMap<String, u64> = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "delivered")
        .map(|v| {
            (
                v["message_id"].as_str().unwrap_or_default().to_string(),
                v["attempts"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let undercounted: Vec<(String, usize, u64)> = acked_ids
        .iter()
        .filter_map(|(t, id)| {
            let at_sink = *seen.get(t)?;
            let logged = *attempts.get(id)?;
            (logged < at_sink as u64).then(|| (t.clone(), at_sink, logged))
        })
        .collect();
    eprintln!(
        "{} acknowledged messages at the sink twice or more, {} of them logged with fewer attempts",
        acked_ids
            .iter()
            .filter(|(t, _)| seen.get(t).is_some_and(|n| *n > 1))
            .count(),
        undercounted.len()
    );
    assert!(
        undercounted.is_empty(),
        "(token, deliveries at the sink, attempts logged): {undercounted:?}"
    );
    let acked_set: HashSet<&String> = acked.iter().collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let unacked_delivered = seen.keys().filter(|t| !acked_set.contains(t)).count();
    eprintln!(
        "{kills} kills: {} acknowledged, {} delivered, {duplicates} duplicates, {unacked_delivered} \
         delivered without their 250 reaching the client, {} missing",
        acked.len(),
        seen.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} acknowledged but never delivered, the first: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
}
