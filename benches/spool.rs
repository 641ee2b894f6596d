//! Spool benchmarks.
//!
//! - criterion: submissions per second for 2 KiB messages under each durability policy (`none`,
//!   `interval`, `sync` with group commit of a 64-message batch, `sync` one message per commit).
//! - `VMTA_SPOOL_RECOVERY=1,10` (millions of recipients): builds spools of that many queued recipients
//!   (100 per message, small bodies) and prints the time `Spool::open` takes to recover them and the
//!   index's heap bytes per queued recipient.

use criterion::{Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmta::spool::{Envelope, MessageFlags, Options, Priority, Spool, SyncPolicy};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmta-bench-spool-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn body() -> Vec<u8> {
    let mut b = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: bench\r\n\r\n".to_vec();
    b.resize(2048, b'x');
    b
}

fn submissions(c: &mut Criterion) {
    let mut g = c.benchmark_group("spool_submit_2KiB");
    let body = body();
    let rcpts = ["someone@example.test"];
    let env = Envelope {
        sender: "sender@example.test",
        recipients: &rcpts,
        tenant: "t",
        tags: &[],
        priority: Priority::Bulk,
        flags: MessageFlags::default(),
        submitted_at: 1_800_000_000,
    };
    for (name, policy, batch) in [
        ("none", SyncPolicy::None, 64),
        (
            "interval_50ms",
            SyncPolicy::Interval(Duration::from_millis(50)),
            64,
        ),
        ("sync_batch_64", SyncPolicy::Sync, 64),
        ("sync_each", SyncPolicy::Sync, 1),
    ] {
        let dir = scratch(name);
        let (mut spool, _) = Spool::open(
            &dir,
            Options {
                policy,
                ..Options::default()
            },
        )
        .unwrap();
        g.throughput(Throughput::Elements(batch as u64));
        let items: Vec<(Envelope<'_>, &[u8])> =
            (0..batch).map(|_| (env, body.as_slice())).collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = spool.submit_batch(black_box(&items));
                assert!(r.iter().all(|x| x.is_ok()));
                // Keep the spool small: what was submitted is delivered at once.
                let ids: Vec<_> = r.into_iter().flatten().collect();
                for id in ids {
                    let _ = spool.remove(id);
                }
                let _ = spool.maintain();
            })
        });
        drop(spool);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

fn build(dir: &Path, recipients: u64) {
    let opts = Options {
        policy: SyncPolicy::None,
        ..Options::default()
    };
    let (mut spool, _) = Spool::open(dir, opts).unwrap();
    let per = 100u64;
    let addrs: Vec<String> = (0..per)
        .map(|i| format!("user{i:03}@d{}.example.test", i % 10))
        .collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let env = Envelope {
        sender: "sender@example.test",
        recipients: &refs,
        tenant: "t",
        tags: &[],
        priority: Priority::Bulk,
        flags: MessageFlags::default(),
        submitted_at: 1_800_000_000,
    };
    let body = b"Subject: r\r\n\r\nrecovery\r\n";
    let batch: Vec<(Envelope<'_>, &[u8])> = (0..256).map(|_| (env, &body[..])).collect();
    let mut done = 0;
    while done < recipients {
        for r in spool.submit_batch(&batch) {
            r.unwrap();
        }
        done += per * batch.len() as u64;
    }
    spool.flush().unwrap();
}

/// Resident and anonymous (heap) memory of this process, in KiB, from /proc/self/status.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn recovery(millions: &[u64]) {
    println!(
        "| queued recipients | recovery (Spool::open) | index heap bytes per recipient | anonymous RSS bytes per recipient | total RSS bytes per recipient | disk |"
    );
    println!("|---|---|---|---|---|---|");
    for &m in millions {
        let n = m * 1_000_000;
        let dir = scratch(&format!("recovery-{m}m"));
        build(&dir, n);
        let opts = Options {
            read_only: true,
            ..Options::default()
        };
        let (rss0, anon0) = memory_kib();
        let started = Instant::now();
        let (spool, report) = Spool::open(&dir, opts).unwrap();
        let took = started.elapsed();
        let (rss1, anon1) = memory_kib();
        let s = spool.stats();
        let per = |kib: u64| (kib * 1024) as f64 / s.recipients.max(1) as f64;
        println!(
            "| {} | {:.2} s | {:.1} | {:.1} | {:.1} | {} MB |",
            report.recipients,
            took.as_secs_f64(),
            s.index_bytes as f64 / s.recipients.max(1) as f64,
            per(anon1.saturating_sub(anon0)),
            per(rss1.saturating_sub(rss0)),
            s.disk_bytes >> 20
        );
        drop(spool);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

criterion_group!(benches, submissions);

fn main() {
    if let Ok(list) = std::env::var("VMTA_SPOOL_RECOVERY") {
        let m: Vec<u64> = list
            .split(',')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        recovery(&m);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
