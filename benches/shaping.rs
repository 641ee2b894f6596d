//! Shaping decision cost: `may_send` per message (shard-local lane and lane shared by shards, 1 and 2
//! threads), and the token buckets alone.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vmta::shaping::{
    BucketParams, Nanos, RuleSet, Shaper, ShapingShared, SharedTokenBucket, TokenBucket,
};

/// Limits high enough that every decision is granted: the bench measures the decision, not waiting. The
/// burst is huge because with two threads one may run its whole batch before the other starts, and the
/// late one then sees no time pass (its clock is behind the bucket's) and lives on the burst.
const RULES: &str = r#"
    [defaults]
    max_connections = 100
    message_rate = "100000000/s"
    message_burst = 4000000000
    max_messages_per_connection = 0
    hourly_cap = 1000000000
    daily_cap = 10000000000
    [[warmup]]
    name = "huge"
    steps = [[1000, 100000000000]]
    [[source]]
    name = "192.0.2.1"
    warmup = "huge"
    warmup_started = "1970-01-01"
"#;

fn shaper(shards: usize) -> (Arc<ShapingShared>, Shaper) {
    let rules = RuleSet::from_toml(RULES).expect("bench rules");
    let shared = ShapingShared::new(rules, shards, 0);
    let s = Shaper::new(Arc::clone(&shared));
    (shared, s)
}

/// Virtual time for the benches: every batch starts later than the previous one, so the buckets (which
/// live across batches) always see time moving forward.
static CLOCK: AtomicU64 = AtomicU64::new(1_000);

fn batch_start(iters: u64) -> u64 {
    CLOCK.fetch_add(iters * 100 + 1_000, Ordering::AcqRel)
}

fn decide(s: &mut Shaper, source: &str, iters: u64, start_now: u64) -> Duration {
    let src = s.source(source);
    let route = s.route(src, "example.com", "mx.example.com", Nanos(start_now));
    let mut permit = s.may_connect(route, Nanos(start_now)).expect("permit");
    let mut now = start_now;
    let start = Instant::now();
    for _ in 0..iters {
        now += 100;
        black_box(s.may_send(&mut permit, Nanos(black_box(now)))).expect("granted");
    }
    start.elapsed()
}

fn shaping_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("shaping");
    g.throughput(Throughput::Elements(1));
    for (name, source) in [
        ("rate_only", "198.51.100.1"),
        ("rate_caps_warmup", "192.0.2.1"),
    ] {
        g.bench_function(format!("may_send_local_{name}"), |b| {
            let (_shared, mut s) = shaper(1);
            b.iter_custom(|iters| decide(&mut s, source, iters, batch_start(iters)))
        });
        g.bench_function(format!("may_send_shared_{name}_1_thread"), |b| {
            let (_shared, mut s) = shaper(2);
            b.iter_custom(|iters| decide(&mut s, source, iters, batch_start(iters)))
        });
    }
    // Two shards (threads) deciding for the same shared lane at once: time for both to make `iters`
    // decisions each, so throughput counts 2 per iteration.
    g.throughput(Throughput::Elements(2));
    for (name, source) in [
        ("rate_only", "198.51.100.1"),
        ("rate_caps_warmup", "192.0.2.1"),
    ] {
        g.bench_function(format!("may_send_shared_{name}_2_threads"), |b| {
            let (shared, _) = shaper(2);
            b.iter_custom(|iters| {
                let start_now = batch_start(iters);
                let hs: Vec<_> = (0..2)
                    .map(|_| {
                        let shared = Arc::clone(&shared);
                        std::thread::spawn(move || {
                            let mut s = Shaper::new(shared);
                            decide(&mut s, source, iters, start_now)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("thread"))
                    .max()
                    .unwrap_or_default()
            })
        });
    }
    g.finish();
}

fn buckets(c: &mut Criterion) {
    let mut g = c.benchmark_group("bucket");
    let p = BucketParams::new(10, 1_000_000);
    g.throughput(Throughput::Elements(1));
    g.bench_function("local_try_take", |b| {
        let mut bucket = TokenBucket::new(p, Nanos(0));
        let mut now = 0u64;
        b.iter(|| {
            now += 100;
            black_box(bucket.try_take(p, Nanos(black_box(now)), 1))
        })
    });
    g.bench_function("shared_try_take_1_thread", |b| {
        let bucket = SharedTokenBucket::new(p, Nanos(0));
        let mut now = 0u64;
        b.iter(|| {
            now += 100;
            black_box(bucket.try_take(p, Nanos(black_box(now)), 1))
        })
    });
    g.throughput(Throughput::Elements(2));
    g.bench_function("shared_try_take_2_threads", |b| {
        let bucket = Arc::new(SharedTokenBucket::new(p, Nanos(0)));
        b.iter_custom(|iters| {
            let start_now = batch_start(iters);
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let bucket = Arc::clone(&bucket);
                    std::thread::spawn(move || {
                        let start = Instant::now();
                        let mut now = start_now;
                        for _ in 0..iters {
                            now += 100;
                            let _ = black_box(bucket.try_take(p, Nanos(black_box(now)), 1));
                        }
                        start.elapsed()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("thread"))
                .max()
                .unwrap_or_default()
        })
    });
    g.finish();
}

criterion_group!(benches, shaping_decision, buckets);
criterion_main!(benches);
