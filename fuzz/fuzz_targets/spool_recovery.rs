//! Spool recovery from arbitrary segment bytes: opening must never panic, every queued message must be
//! readable, and a second (writable) open after the first has cut torn tails must find the same queue.
//!
//! Input: first byte selects the mode. Even: the rest follows a valid segment header with salt
//! `FUZZ_SALT` (so the fuzzer reaches the record parser; the seeds are records framed with that salt).
//! Odd: the rest is the whole file, header included.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmta::spool::record::SegmentHeader;
use vmta::spool::{Options, RecipientId, Spool, SyncPolicy};

const FUZZ_SALT: u64 = 0x5eed_5a17;

fn summary(s: &Spool) -> Vec<(u64, Vec<(u8, u16)>, usize)> {
    s.messages()
        .map(|id| {
            let m = s.message(id).expect("indexed message readable");
            let states = (0..m.recipient_count())
                .map(|i| {
                    let r = s
                        .recipient(RecipientId {
                            message: id,
                            index: i,
                        })
                        .expect("recipient");
                    (r.state as u8, r.attempts)
                })
                .collect();
            (id.0, states, m.body().len())
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = Vec::new();
    if mode % 2 == 0 {
        file.extend_from_slice(
            &SegmentHeader {
                id: 1,
                salt: FUZZ_SALT,
                next_message_id: 1,
            }
            .encode(),
        );
    }
    file.extend_from_slice(rest);
    // Three opens per input: on a memory file system when there is one.
    let dir = common::scratch_dir("vmta-fuzz-spool");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00000001.seg"), &file).unwrap();
    let opts = |read_only| Options {
        policy: SyncPolicy::None,
        segment_size: 4096,
        read_only,
        ..Options::default()
    };
    let first = {
        let (s, _) = Spool::open(&dir, opts(true)).expect("read-only open");
        let _ = s.stats();
        let _ = s.queued().count();
        summary(&s)
    };
    {
        let (s, _) = Spool::open(&dir, opts(false)).expect("writable open");
        assert_eq!(summary(&s), first);
    }
    let (s, _) = Spool::open(&dir, opts(false)).expect("second writable open");
    assert_eq!(summary(&s), first);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
});
