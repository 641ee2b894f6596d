//! The suppression list's log as read back at open (`SuppressionStore::open`): records framed with
//! their length and CRC-32 around payloads from the input, garbage between them, a torn tail.
//!
//! Opening must take any content without panicking, and what it keeps must last: a suppression
//! added after a damaged log is there when the log is opened again, every record read before is
//! read again with the same verdict (nothing more is cut), and compacting keeps exactly the entries
//! in force.
//!
//! Input: chunks separated by 0xFF. A chunk starting with `!` is written as it is (garbage, or a
//! torn record at the end); any other becomes one framed record, its checksum right unless the
//! chunk starts with `~` (then the rest is the payload).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmta::bounce::suppression::frame_record;
use vmta::bounce::{Reason, Suppression, SuppressionPolicy, SuppressionStore};

const NOW: u64 = 1_800_000_000;

fn log_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in data.split(|&b| b == 0xff) {
        match chunk.first() {
            Some(b'!') => out.extend_from_slice(&chunk[1..]),
            Some(b'~') => {
                // The checksum's lowest bit flipped.
                let crc_at = out.len() + 4;
                frame_record(&chunk[1..], &mut out);
                out[crc_at] ^= 1;
            }
            _ => frame_record(chunk, &mut out),
        }
    }
    out
}

fn entries(s: &SuppressionStore) -> Vec<Suppression> {
    s.list(None).into_iter().cloned().collect()
}

fn open(path: &std::path::Path) -> SuppressionStore {
    let mut s = SuppressionStore::open(path, SuppressionPolicy::default())
        .unwrap_or_else(|e| panic!("opening a damaged log failed: {e}"));
    s.sync = false;
    s
}

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch_dir("vmta-fuzz-suppression");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("suppressions.log");
    let bytes = log_bytes(data);
    std::fs::write(&path, &bytes).unwrap();

    let mut first = open(&path);
    let r1 = first.recovery();
    assert!(r1.truncated <= bytes.len() as u64);
    let mut expected = entries(&first);
    let kept = first
        .add(
            "fuzz-tenant",
            "kept@fuzz.test",
            None,
            Reason::UserUnknown,
            NOW,
            None,
        )
        .expect("adding to an opened log");
    first.flush().unwrap();
    drop(first);
    expected
        .retain(|s| !(s.tenant == kept.tenant && s.address == kept.address && s.stream.is_none()));
    expected.push(kept.clone());
    expected.sort_by(|a, b| {
        (&a.tenant, &a.address, &a.stream).cmp(&(&b.tenant, &b.address, &b.stream))
    });

    let mut second = open(&path);
    let r2 = second.recovery();
    assert_eq!(
        r2.truncated, 0,
        "the log was cut again after a clean append"
    );
    assert_eq!(
        r2.corrupt, r1.corrupt,
        "records read differently the second time"
    );
    assert_eq!(
        r2.records,
        r1.records + 1,
        "the added record was not read back"
    );
    assert_eq!(
        entries(&second),
        expected,
        "entries changed across a reopen"
    );
    assert!(
        second
            .check("fuzz-tenant", "kept@fuzz.test", None, NOW + 1)
            .is_some()
    );

    second.compact(NOW).expect("compacting");
    drop(second);
    let third = open(&path);
    let live: Vec<Suppression> = expected.into_iter().filter(|s| s.is_active(NOW)).collect();
    assert_eq!(
        entries(&third),
        live,
        "compaction changed the entries in force"
    );
    assert_eq!(third.recovery().corrupt, 0, "compaction wrote a bad record");
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
});
