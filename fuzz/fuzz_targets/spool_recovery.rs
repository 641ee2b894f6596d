//! Spool recovery from arbitrary segment bytes: opening a spool whose segment file holds anything must
//! never panic; what it recovers must be readable; and a second open must agree with the first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::atomic::{AtomicUsize, Ordering};
use vmta::spool::{Options, Spool, SyncPolicy};

static N: AtomicUsize = AtomicUsize::new(0);

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!(
        "vmta-fuzz-spool-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00000001.seg"), data).unwrap();
    let opts = Options {
        policy: SyncPolicy::None,
        segment_size: 4096,
        ..Options::default()
    };
    let first = match Spool::open(&dir, opts.clone()) {
        Ok((spool, report)) => {
            let mut seen = 0;
            for q in spool.queued() {
                let _ = spool.recipient(q.id);
                if let Ok(m) = spool.message(q.id.message) {
                    let _ = m.body().len();
                    let _ = m.sender();
                }
                seen += 1;
            }
            assert_eq!(seen as u64, report.recipients);
            Some(report.recipients)
        }
        Err(_) => None,
    };
    // Reopening what the first open left behind (tail cut, segment sealed) finds the same queue.
    if let Some(n) = first {
        let (_, again) = Spool::open(&dir, opts).expect("a recovered spool opens again");
        assert_eq!(again.recipients, n);
    }
    let _ = std::fs::remove_dir_all(&dir);
});
