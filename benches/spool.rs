//! Spool submissions per second for 2 KiB messages under each durability policy. `Sync` is measured
//! with group commit: batches of 64 appends share one `fdatasync` (what the shard does after draining
//! its ring), and one submission per flush for comparison.
//!
//! Recovery time and index memory at 1M/10M recipients are measured by the ignored test
//! `tests/spool_scale.rs` (see docs/spool.md).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::time::Duration;
use vmta::spool::{Envelope, Options, Spool, SyncPolicy};

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vmta-bench-spool-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn spool_submit(c: &mut Criterion) {
    let body = vec![b'x'; 2048];
    let rcpt = ["user@example.com"];
    let env = Envelope {
        sender: "bounce@example.org",
        recipients: &rcpt,
        tenant: "bench",
        ..Envelope::default()
    };
    let mut g = c.benchmark_group("spool_submit_2k");
    let policies = [
        ("none", SyncPolicy::None, 1),
        (
            "interval_10ms",
            SyncPolicy::Interval(Duration::from_millis(10)),
            1,
        ),
        ("sync_batch_64", SyncPolicy::Sync, 64),
        ("sync_single", SyncPolicy::Sync, 1),
    ];
    for (name, policy, batch) in policies {
        let d = dir(name);
        let (mut s, _) = Spool::open(
            &d,
            Options {
                policy,
                ..Options::default()
            },
        )
        .unwrap();
        g.throughput(Throughput::Elements(batch));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut last = None;
                for _ in 0..batch {
                    last = Some(s.append(&env, &body).unwrap().1);
                }
                s.commit(last.unwrap()).unwrap();
            })
        });
        drop(s);
        let _ = std::fs::remove_dir_all(&d);
    }
    g.finish();
}

criterion_group!(benches, spool_submit);
criterion_main!(benches);
