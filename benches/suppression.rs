//! The suppression check on the submission path, per recipient: the engine's sharded index (empty,
//! miss, hit, and a miss while another thread keeps writing), next to the persistent store's own
//! `check` behind a mutex (what a naive engine would do); and the writer's cost per observation.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vmta::bounce::suppression::Source;
use vmta::bounce::{Reason, Suppression, SuppressionPolicy, SuppressionStore};
use vmta::engine::suppression::SuppressionIndex;

const ENTRIES: usize = 100_000;
const NOW: u64 = 1_800_000_000;

fn entry(i: usize) -> Suppression {
    Suppression {
        tenant: format!("tenant{}", i % 8),
        address: format!("user{i}@domain{}.example", i % 977),
        stream: None,
        reason: Reason::UserUnknown,
        source: Source::Bounce,
        created: NOW,
        expires: None,
    }
}

fn store_path(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmta-bench-supp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("suppression.log")
}

fn check(c: &mut Criterion) {
    let index = Arc::new(SuppressionIndex::new());
    for i in 0..ENTRIES {
        index.insert(&entry(i));
    }
    let misses: Vec<String> = (0..1024)
        .map(|i| format!("Someone.{i}@Domain{}.example", i % 977))
        .collect();
    let hits: Vec<(String, String)> = (0..1024)
        .map(|i| {
            let e = entry(i * 97);
            (e.tenant, e.address.to_uppercase())
        })
        .collect();
    let mut g = c.benchmark_group("suppression_check");
    g.throughput(Throughput::Elements(1));

    let empty = SuppressionIndex::new();
    let mut n = 0usize;
    g.bench_function("index_empty", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            black_box(empty.check("tenant1", &misses[n], None, NOW))
        })
    });
    let mut n = 0usize;
    g.bench_function("index_miss_100k", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            black_box(index.check("tenant1", &misses[n], Some("news"), NOW))
        })
    });
    let mut n = 0usize;
    g.bench_function("index_hit_100k", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            let (t, a) = &hits[n];
            let h = index.check(t, a, None, NOW);
            assert!(h.is_some());
            black_box(h)
        })
    });

    // Another thread inserts and removes entries all the time (far more often than bounces come).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let index = index.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = ENTRIES;
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let e = entry(i);
                index.insert(&e);
                index.remove(&e.tenant, &e.address, None);
                i += 1;
                writes += 2;
            }
            writes
        })
    };
    let mut n = 0usize;
    g.bench_function("index_miss_100k_with_writer", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            black_box(index.check("tenant1", &misses[n], Some("news"), NOW))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    eprintln!("suppression_check: the writer made {writes} index changes meanwhile");

    // The store's own check (it allocates the key) behind a mutex, for comparison.
    let path = store_path("check");
    let mut store = SuppressionStore::open(&path, SuppressionPolicy::default()).unwrap();
    store.sync = false;
    for i in 0..ENTRIES {
        let e = entry(i);
        store
            .add(&e.tenant, &e.address, None, e.reason, NOW, None)
            .unwrap();
    }
    let store = Mutex::new(store);
    let mut n = 0usize;
    g.bench_function("store_mutex_miss_100k", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            let s = store.lock().unwrap();
            black_box(s.check("tenant1", &misses[n], Some("news"), NOW).is_some())
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

fn record(c: &mut Criterion) {
    let path = store_path("record");
    let mut store = SuppressionStore::open(&path, SuppressionPolicy::default()).unwrap();
    store.sync = false;
    let mut g = c.benchmark_group("suppression_record");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    // A soft bounce recorded: counted, every third one a suppression (one log record each, no fsync:
    // the writer syncs once per batch).
    g.bench_function("mailboxfull_recorded", |b| {
        b.iter(|| {
            i += 1;
            let a = format!("full{}@x.example", i % 50_000);
            black_box(
                store
                    .record_bounce("t", &a, Reason::MailboxFull, false, NOW)
                    .unwrap(),
            )
        })
    });
    // A delivery to an address without counters: what the writer does for most events.
    let mut i = 0u64;
    g.bench_function("delivery_without_counters", |b| {
        b.iter(|| {
            i += 1;
            let a = format!("ok{i}@y.example");
            black_box(store.has_counters("t", &a))
        })
    });
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

criterion_group!(benches, check, record);
criterion_main!(benches);
