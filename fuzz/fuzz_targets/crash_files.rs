//! The files a start reads back after a crash, from arbitrary bytes: the event log's last lines
//! (named by a shard's `events.mark`: offset and length from the input, the log's own device and
//! inode so the read is reached) and the attempt journal. Reading must never panic, whatever the
//! log holds (torn lines, bad JSON, huge numbers) and whatever size or content the journal has.
//!
//! Input: 2 bytes of log length, 8 of mark offset, 8 of mark length, then the log, then the
//! journal.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::os::unix::fs::MetadataExt;

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let log_len = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 18);
    let start = u64::from_le_bytes(data[2..10].try_into().unwrap());
    let len = u64::from_le_bytes(data[10..18].try_into().unwrap());
    let (log, journal) = data[18..].split_at(log_len);
    let dir = common::scratch_dir("vmta-fuzz-crash");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("events.jsonl");
    std::fs::write(&log_path, log).unwrap();
    let meta = std::fs::metadata(&log_path).unwrap();
    let mut mark = Vec::with_capacity(32);
    mark.extend_from_slice(&(start % (log.len() as u64 + 2)).to_le_bytes());
    mark.extend_from_slice(&len.to_le_bytes());
    mark.extend_from_slice(&meta.dev().to_le_bytes());
    mark.extend_from_slice(&meta.ino().to_le_bytes());
    std::fs::write(dir.join("events.mark"), &mark).unwrap();
    std::fs::write(dir.join("attempts"), journal).unwrap();
    let (lines, attempts) = vmta::engine::read_crash_files(&dir, &log_path).unwrap();
    assert!(
        lines <= log.len() / 20 + 1,
        "{lines} outcomes from {} bytes",
        log.len()
    );
    // A journal that is not whole slots is not trusted; whole slots hold at most one attempt each.
    if journal.len() % 16 == 0 && !journal.is_empty() {
        assert!(attempts <= journal.len() / 16);
    } else {
        assert_eq!(attempts, 0);
    }
    // Read once: the journal is cleared.
    assert_eq!(
        vmta::engine::read_crash_files(&dir, &log_path).unwrap().1,
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
});
