//! Recovery time and index memory at scale (ignored by default: it writes about 150 bytes of spool per
//! recipient). `SPOOL_SCALE_RECIPIENTS` (default 1000000) and `SPOOL_SCALE_PER_MESSAGE` (recipients
//! per message, default 1) choose the size. Prints the figures recorded in docs/spool.md.
//!
//! `cargo test --release -p vmta-tests --test spool_scale -- --ignored --nocapture`

use std::time::Instant;
use vmta::spool::{Envelope, Options, Spool, SyncPolicy};
use vmta_tests::TempDir;

fn rss_anon_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/self/status")
}

#[test]
#[ignore = "large: run by hand for the figures in docs/spool.md"]
fn recovery_time_and_memory_per_recipient() {
    let total: usize = std::env::var("SPOOL_SCALE_RECIPIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let per: usize = std::env::var("SPOOL_SCALE_PER_MESSAGE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dir = TempDir::new("spool-scale");
    let opts = Options {
        policy: SyncPolicy::None,
        ..Options::default()
    };
    let domains: Vec<String> = (0..1000).map(|n| format!("d{n}.example")).collect();
    let body = vec![b'x'; 100];
    {
        let (mut s, _) = Spool::open(dir.path(), opts.clone()).unwrap();
        let started = Instant::now();
        let mut n = 0;
        while n < total {
            let addrs: Vec<String> = (0..per)
                .map(|i| format!("u{}@{}", n + i, domains[(n + i) % 1000]))
                .collect();
            let rcpts: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let env = Envelope {
                sender: "b@s.example",
                recipients: &rcpts,
                tenant: "t",
                ..Envelope::default()
            };
            s.append(&env, &body).unwrap();
            n += per;
        }
        s.flush().unwrap();
        let st = s.stats();
        eprintln!(
            "wrote {total} recipients ({} messages) in {:?}: {} bytes of records",
            st.messages,
            started.elapsed(),
            st.used_bytes
        );
    }
    let before = rss_anon_kib();
    let (s, rep) = Spool::open(dir.path(), opts).unwrap();
    let after = rss_anon_kib();
    assert_eq!(rep.recipients as usize, total);
    let st = s.stats();
    eprintln!(
        "recovered {} recipients / {} messages from {} segments in {:?}; index {} bytes = {:.1} B/recipient; \
         anonymous RSS grew {} KiB = {:.1} B/recipient",
        rep.recipients,
        rep.messages,
        rep.segments,
        rep.elapsed,
        st.index_bytes,
        st.index_bytes as f64 / total as f64,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 * 1024.0 / total as f64
    );
    // The index's tables are in mapped files, paged by the kernel: the heap holds the domains only.
    assert!(st.index_mapped);
    assert!(st.index_bytes as f64 / total as f64 <= 1.0);
    assert!(after.saturating_sub(before) as f64 * 1024.0 / total as f64 <= 8.0);
}
