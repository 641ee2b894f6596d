//! Benchmark feeder for `vmta serve`'s HTTP API: submits vmta's workload (a) as JSON batches to
//! `POST /api/v1/messages`, as fast as the server takes them.
//!
//! Message `i` (0..N) goes to `user{i}@{domain i % D}` with the domains read from the routes file of
//! `vmta world --routes`, its `raw` text the workload's 2 KiB message. `--connections` keep-alive
//! HTTP/1.1 connections run in parallel, each on its own thread with `TCP_NODELAY`, each sending one
//! request of `--batch` messages (default 100) and waiting for its answer before the next. A `429`
//! or `503` is waited out (its `Retry-After`, at most 1 s here) and the batch sent again; anything
//! else but `202` with every message accepted ends the run with exit code 1.
//!
//! Prints one JSON line: system "http-feed", messages, requests, retries, seconds, msg_per_s, cpu_s
//! (getrusage of this process), cpu_us_per_msg.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use vmta_workload::{message, process_cpu_seconds};

const SENDER: &str = "bounces@sender.vmta.test";

fn usage() -> ! {
    eprintln!(
        "usage: http-feed --server IP:PORT --token TOKEN --routes FILE --messages N [--connections C] [--batch B]"
    );
    std::process::exit(2)
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            c if c < 0x20 => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            c => out.push(c),
        }
    }
    out.push(b'"');
}

/// Reads one response: status, Retry-After, body.
fn response(reader: &mut BufReader<TcpStream>) -> Result<(u16, u64, Vec<u8>), String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut length, mut retry) = (0usize, 1u64);
    loop {
        line.clear();
        reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| format!("bad header {l:?}"))?;
            } else if k.eq_ignore_ascii_case("retry-after") {
                retry = v.trim().parse().unwrap_or(1);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    Ok((status, retry, body))
}

struct Run<'a> {
    server: &'a str,
    token: &'a str,
    domains: &'a [String],
    total: usize,
    batch: usize,
    next: &'a AtomicUsize,
    requests: &'a AtomicUsize,
    retries: &'a AtomicUsize,
}

fn session(run: &Run<'_>) -> Result<usize, String> {
    let stream =
        TcpStream::connect(run.server).map_err(|e| format!("connect {}: {e}", run.server))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut body = Vec::with_capacity(run.batch * 2300);
    let mut head = Vec::with_capacity(256);
    let mut sent = 0;
    loop {
        let first = run.next.fetch_add(run.batch, Ordering::Relaxed);
        if first >= run.total {
            return Ok(sent);
        }
        let last = (first + run.batch).min(run.total);
        body.clear();
        body.push(b'[');
        for i in first..last {
            if i > first {
                body.push(b',');
            }
            let to = format!("user{i}@{}", run.domains[i % run.domains.len()]);
            body.extend_from_slice(
                format!("{{\"sender\":\"{SENDER}\",\"recipients\":[\"{to}\"],\"raw\":").as_bytes(),
            );
            json_string(&mut body, &message(i, &to));
            body.push(b'}');
        }
        body.push(b']');
        head.clear();
        head.extend_from_slice(
            format!(
                "POST /api/v1/messages HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                run.server,
                run.token,
                body.len()
            )
            .as_bytes(),
        );
        loop {
            writer.write_all(&head).map_err(|e| e.to_string())?;
            writer.write_all(&body).map_err(|e| e.to_string())?;
            run.requests.fetch_add(1, Ordering::Relaxed);
            let (status, retry, answer) = response(&mut reader)?;
            match status {
                202 => {
                    let want = format!("\"accepted\":{}", last - first);
                    if !answer.windows(want.len()).any(|w| w == want.as_bytes()) {
                        return Err(format!(
                            "202 without every message: {}",
                            String::from_utf8_lossy(&answer)
                        ));
                    }
                    break;
                }
                429 | 503 => {
                    run.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(retry.min(1)));
                }
                other => {
                    return Err(format!(
                        "answer {other}: {}",
                        String::from_utf8_lossy(&answer)
                    ));
                }
            }
        }
        sent += last - first;
    }
}

fn main() {
    let (mut server, mut token, mut routes) = (String::new(), String::new(), String::new());
    let (mut messages, mut connections, mut batch) = (0usize, 4usize, 100usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--server" => server = value,
            "--token" => token = value,
            "--routes" => routes = value,
            "--messages" => messages = value.parse().unwrap_or_else(|_| usage()),
            "--connections" => connections = value.parse().unwrap_or_else(|_| usage()),
            "--batch" => batch = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if server.is_empty() || token.is_empty() || routes.is_empty() || messages == 0 {
        usage()
    }
    if connections == 0 || batch == 0 {
        usage()
    }
    let text = std::fs::read_to_string(&routes).unwrap_or_else(|e| {
        eprintln!("http-feed: cannot read {routes}: {e}");
        std::process::exit(2)
    });
    let domains: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if domains.is_empty() {
        eprintln!("http-feed: no domains in {routes}");
        std::process::exit(2)
    }
    let (next, requests, retries) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let run = Run {
        server: &server,
        token: &token,
        domains: &domains,
        total: messages,
        batch,
        next: &next,
        requests: &requests,
        retries: &retries,
    };
    let (cpu0, t0) = (process_cpu_seconds(), Instant::now());
    let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|_| s.spawn(|| session(&run)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a session panicked".into())))
            .collect()
    });
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu0;
    let mut sent = 0;
    let mut failed = false;
    for r in results {
        match r {
            Ok(n) => sent += n,
            Err(e) => {
                eprintln!("http-feed: {e}");
                failed = true;
            }
        }
    }
    println!(
        "{{\"system\":\"http-feed\",\"messages\":{sent},\"requests\":{},\"retries\":{},\"seconds\":{seconds:.6},\"msg_per_s\":{:.1},\"cpu_s\":{cpu:.6},\"cpu_us_per_msg\":{:.2}}}",
        requests.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed),
        sent as f64 / seconds.max(1e-9),
        cpu * 1e6 / (sent.max(1) as f64),
    );
    if failed || sent != messages {
        std::process::exit(1);
    }
}
