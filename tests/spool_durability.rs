//! The spool as the durability boundary: a writer killed with SIGKILL at random moments, truncation and
//! corruption at every byte offset, and a full disk on a small tmpfs the test mounts itself.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use vmta::spool::{
    Envelope, MessageFlags, MessageId, Options, Priority, RecipientId, RecipientState, Spool,
    SpoolError, StateChange, SyncPolicy,
};
use vmta_tests::TempDir;

const CHILD_ENV: &str = "VMTA_SPOOL_CRASH_CHILD";

fn envelope<'a>(rcpts: &'a [&'a str]) -> Envelope<'a> {
    Envelope {
        sender: "sender@crash.test",
        recipients: rcpts,
        tenant: "t",
        tags: &[],
        priority: Priority::Bulk,
        flags: MessageFlags::default(),
        submitted_at: 1_800_000_000,
    }
}

fn body(n: u64) -> Vec<u8> {
    let mut b = format!("Subject: crash {n}\r\n\r\n").into_bytes();
    b.resize(600 + (n % 7) as usize * 300, b'x');
    b
}

/// The child: submits and updates records as fast as it can under `Sync`, printing each
/// acknowledgement (after its commit returned) on standard output, until it is killed.
#[test]
fn child_writer_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let opts = Options {
        policy: SyncPolicy::Sync,
        segment_size: 256 * 1024,
        ..Options::default()
    };
    let (mut spool, _) = Spool::open(PathBuf::from(dir), opts).expect("child opens the spool");
    let mut out = std::io::stdout().lock();
    let mut x: u64 = std::process::id() as u64;
    let mut live: Vec<(MessageId, u16)> = Vec::new();
    for n in 0.. {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if live.is_empty() || x >> 62 != 0 {
            let r0 = format!("a{n}@d{}.crash.test", n % 5);
            let r1 = format!("b{n}@d{}.crash.test", (n + 1) % 5);
            let rcpts = [r0.as_str(), r1.as_str()];
            let id = spool.submit(&envelope(&rcpts), &body(n)).expect("submit");
            writeln!(out, "M {} {n}", id.0).unwrap();
            live.push((id, 0));
            live.push((id, 1));
        } else {
            let i = (x >> 20) as usize % live.len();
            let (m, index) = live[i];
            let rid = RecipientId { message: m, index };
            let attempts = spool.recipient(rid).map(|r| r.attempts).unwrap_or(0) + 1;
            let state = if x & 1 == 0 {
                RecipientState::Deferred
            } else {
                RecipientState::Delivered
            };
            let change = StateChange {
                state,
                attempts,
                next_attempt: if state == RecipientState::Deferred {
                    1_800_000_900
                } else {
                    0
                },
                reply: "451 4.7.1 later",
            };
            spool.update(rid, &change).expect("update");
            writeln!(out, "S {} {index} {} {attempts}", m.0, state as u8).unwrap();
            if state == RecipientState::Delivered {
                live.swap_remove(i);
            }
        }
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_keeps_everything_acknowledged() {
    let dir = TempDir::new("spool-crash");
    let exe = std::env::current_exe().unwrap();
    // What the children acknowledged: messages, and each recipient's last acknowledged state.
    let mut messages: HashMap<u64, ()> = HashMap::new();
    let mut states: HashMap<(u64, u16), (u8, u16)> = HashMap::new();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let kills = 50;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(20 + (x >> 58) * 3);
        std::thread::sleep(wait);
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let _ = reader.join();
        let mut acked = 0;
        for line in rx.try_iter() {
            let f: Vec<&str> = line.split(' ').collect();
            match f[0] {
                "M" => {
                    messages.insert(f[1].parse().unwrap(), ());
                    acked += 1;
                }
                "S" => {
                    let key = (f[1].parse().unwrap(), f[2].parse().unwrap());
                    states.insert(key, (f[3].parse().unwrap(), f[4].parse().unwrap()));
                    acked += 1;
                }
                _ => {}
            }
        }
        // Reopen as the restarted engine would, and check every acknowledgement.
        let opts = Options {
            policy: SyncPolicy::Sync,
            segment_size: 256 * 1024,
            ..Options::default()
        };
        let (spool, report) = Spool::open(dir.path(), opts).expect("the spool opens after a kill");
        assert_eq!(report.corrupt_records, 0, "round {round}: {report:?}");
        assert_eq!(report.damaged_segments, 0, "round {round}: {report:?}");
        // A kill can land between a commit and its acknowledgement: at most one operation per round
        // is durable without having been acknowledged.
        let mut unacknowledged_finals = 0;
        for &id in messages.keys() {
            let present = spool.message(MessageId(id)).is_ok();
            let acked_delivered = |i: u16| {
                states
                    .get(&(id, i))
                    .is_some_and(|(s, _)| *s == RecipientState::Delivered as u8)
            };
            if !present {
                // Gone only when every recipient reached a final state.
                let missing = (0..2u16).filter(|i| !acked_delivered(*i)).count();
                assert!(
                    missing <= 1,
                    "round {round}: acknowledged message {id} lost"
                );
                unacknowledged_finals += missing;
                continue;
            }
            for index in 0..2u16 {
                let rid = RecipientId {
                    message: MessageId(id),
                    index,
                };
                let r = spool
                    .recipient(rid)
                    .unwrap_or_else(|e| panic!("round {round}: {rid}: {e}"));
                if let Some((_, attempts)) = states.get(&(id, index)) {
                    assert!(
                        r.attempts >= *attempts,
                        "round {round}: {rid} lost attempts"
                    );
                }
                if acked_delivered(index) {
                    assert_eq!(r.state, RecipientState::Delivered, "round {round}: {rid}");
                }
            }
        }
        assert!(
            unacknowledged_finals <= 1,
            "round {round}: {unacknowledged_finals} unexplained losses"
        );
        drop(spool);
        assert!(
            acked > 0 || round > 0,
            "the child acknowledged nothing in round {round}"
        );
    }
    assert!(
        messages.len() > 100,
        "only {} messages acknowledged",
        messages.len()
    );
}

/// Builds a small spool and returns its directory, the segment file and the ids written.
fn small_spool(tag: &str) -> (TempDir, PathBuf, Vec<MessageId>) {
    let dir = TempDir::new(tag);
    let opts = Options {
        policy: SyncPolicy::None,
        segment_size: 8192,
        fixed_salt: Some(7),
        ..Options::default()
    };
    let (mut spool, _) = Spool::open(dir.path(), opts).unwrap();
    let mut ids = Vec::new();
    for n in 0..4u64 {
        let r = format!("r{n}@x.test");
        let rcpts = [r.as_str()];
        let mut b = format!("Subject: {n}\r\n\r\n").into_bytes();
        b.resize(300, b'z');
        ids.push(spool.submit(&envelope(&rcpts), &b).unwrap());
    }
    let change = StateChange {
        state: RecipientState::Deferred,
        attempts: 1,
        next_attempt: 1_800_000_600,
        reply: "451 later",
    };
    spool
        .update(
            RecipientId {
                message: ids[1],
                index: 0,
            },
            &change,
        )
        .unwrap();
    spool.flush().unwrap();
    drop(spool);
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    (dir, seg, ids)
}

fn open_copy(
    src: &Path,
    bytes: &[u8],
    into: &Path,
) -> Result<(Spool, vmta::spool::RecoveryReport), SpoolError> {
    let _ = std::fs::remove_dir_all(into);
    std::fs::create_dir_all(into).unwrap();
    std::fs::write(into.join(src.file_name().unwrap()), bytes).unwrap();
    let opts = Options {
        policy: SyncPolicy::None,
        segment_size: 8192,
        ..Options::default()
    };
    Spool::open(into, opts)
}

#[test]
fn truncation_at_every_byte_offset_keeps_what_is_intact() {
    let (_dir, seg, ids) = small_spool("spool-trunc");
    let full = std::fs::read(&seg).unwrap();
    // Records end where the file stops holding non-zero bytes (the rest is pre-allocated zeros).
    // Records end before the pre-allocated zeros; the last one may itself end in zero bytes, so cut
    // up to a little past the last non-zero byte and then check the whole file.
    let used = full.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let end = (used + 64).min(full.len());
    let scratch = TempDir::new("spool-trunc-copy");
    let mut last = 0;
    for cut in 0..=end {
        let (spool, report) = open_copy(&seg, &full[..cut], scratch.path())
            .unwrap_or_else(|e| panic!("open after cutting at {cut}: {e}"));
        let present = ids.iter().filter(|id| spool.message(**id).is_ok()).count();
        // Cutting later never loses a message kept by an earlier cut.
        assert!(present >= last, "cut {cut}: {present} < {last}");
        last = present;
        assert_eq!(
            report.corrupt_records, 0,
            "a clean cut is a torn tail, not corruption: {cut}"
        );
    }
    assert_eq!(last, 4);
    let (spool, _) = open_copy(&seg, &full, scratch.path()).unwrap();
    let r = spool
        .recipient(RecipientId {
            message: ids[1],
            index: 0,
        })
        .unwrap();
    assert_eq!((r.state, r.attempts), (RecipientState::Deferred, 1));
}

#[test]
fn a_corrupt_byte_anywhere_costs_at_most_one_record() {
    let (_dir, seg, ids) = small_spool("spool-flip");
    let full = std::fs::read(&seg).unwrap();
    let used = full.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    let scratch = TempDir::new("spool-flip-copy");
    for at in 0..used {
        let mut bytes = full[..used].to_vec();
        bytes[at] ^= 0x5a;
        let (spool, report) = open_copy(&seg, &bytes, scratch.path())
            .unwrap_or_else(|e| panic!("open after corrupting byte {at}: {e}"));
        let present = ids.iter().filter(|id| spool.message(**id).is_ok()).count();
        // Damage in a segment header (written twice) costs nothing; in a record, that record.
        assert!(
            present >= 3,
            "byte {at}: only {present} messages left ({report:?})"
        );
    }
}

#[test]
fn a_full_disk_is_a_named_error_and_loses_nothing() {
    let mount = TempDir::new("spool-tmpfs");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mount.path())
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a 1 MiB tmpfs needs root (the tests run as root in CI)"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mount.path());
    let dir = mount.path().join("spool");
    let opts = Options {
        policy: SyncPolicy::Sync,
        segment_size: 128 * 1024,
        ..Options::default()
    };
    let (mut spool, _) = Spool::open(&dir, opts.clone()).unwrap();
    let mut accepted = Vec::new();
    let mut error = None;
    for n in 0..10_000u64 {
        let r = format!("r{n}@full.test");
        let rcpts = [r.as_str()];
        match spool.submit(&envelope(&rcpts), &body(n)) {
            Ok(id) => accepted.push(id),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(matches!(error, Some(SpoolError::NoSpace)), "{error:?}");
    assert!(
        accepted.len() > 100,
        "{} accepted before the disk filled",
        accepted.len()
    );
    // State changes still fit in the space kept for them: deliveries are recorded on a full disk.
    let done = StateChange {
        state: RecipientState::Delivered,
        attempts: 1,
        next_attempt: 0,
        reply: "250 ok",
    };
    let delivered = 80.min(accepted.len() / 2);
    for id in &accepted[..delivered] {
        spool
            .update(
                RecipientId {
                    message: *id,
                    index: 0,
                },
                &done,
            )
            .unwrap();
    }
    drop(spool);
    // Fill what is left of the disk, then restart: the spool opens, everything accepted and not
    // delivered is there, and submission says the disk is full.
    let filler = mount.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let (mut spool, report) = Spool::open(&dir, opts.clone()).expect("opens on a full disk");
    assert_eq!(report.corrupt_records, 0);
    assert_eq!(report.recipients, (accepted.len() - delivered) as u64);
    for id in &accepted[delivered..] {
        assert!(spool.message(*id).is_ok(), "{id} lost");
        assert!(!spool.body(*id).unwrap().is_empty());
    }
    let rcpts = ["more@full.test"];
    assert!(matches!(
        spool.submit(&envelope(&rcpts), &body(1)),
        Err(SpoolError::NoSpace)
    ));
    drop(spool);
    // Space comes back: deliveries are recorded, segments freed, submissions accepted again.
    std::fs::remove_file(&filler).unwrap();
    let (mut spool, _) = Spool::open(&dir, opts).unwrap();
    for id in &accepted[delivered..] {
        spool
            .update(
                RecipientId {
                    message: *id,
                    index: 0,
                },
                &done,
            )
            .unwrap();
    }
    spool.maintain().unwrap();
    let rcpts = ["again@full.test"];
    spool
        .submit(&envelope(&rcpts), &body(1))
        .expect("submission works once space is back");
}
