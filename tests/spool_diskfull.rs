//! Disk-full behaviour of the spool on a small tmpfs the test mounts itself (the test runs as root or
//! with CAP_SYS_ADMIN; it fails with a clear message otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;
use vmta::spool::{
    Envelope, MessageId, Options, RecipientId, RecipientState, Spool, SpoolError, StateChange,
    SyncPolicy,
};
use vmta_tests::TempDir;

struct Tmpfs(PathBuf);

/// Held by each test for its whole run: a test's `mount`/`umount` children, forked while the other
/// test's spool is open, share its descriptors until they `exec`, so a segment that spool deletes
/// keeps its blocks for that moment and a full 1 MiB file system looks full a little longer (a
/// submission right after maintenance freed room failed in CI that way).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "cannot mount a tmpfs at {} ({st}): this test needs root or CAP_SYS_ADMIN to make a small file system",
            dir.display()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn opts() -> Options {
    Options {
        policy: SyncPolicy::Sync,
        segment_size: 128 << 10,
        ..Options::default()
    }
}

fn body(n: usize) -> Vec<u8> {
    let mut b = format!("Subject: {n}\r\n\r\n").into_bytes();
    b.resize(4096, b'a' + (n % 26) as u8);
    b
}

#[test]
fn a_full_disk_refuses_submissions_loses_nothing_and_recovers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("spool-full");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "1m");
    let dir = mnt.join("spool");
    let rcpt = ["a@x.example"];
    let env = |n: usize| Envelope {
        sender: "s@x.example",
        recipients: &rcpt,
        tenant: "t",
        submitted_at: n as u64,
        ..Envelope::default()
    };
    let (mut s, _) = Spool::open(&dir, opts()).unwrap();
    let mut acked: Vec<(MessageId, usize)> = Vec::new();
    let err = loop {
        let n = acked.len();
        match s.submit(&env(n), &body(n)) {
            Ok(id) => acked.push((id, n)),
            Err(e) => break e,
        }
        assert!(n < 10_000, "1 MiB file system never filled");
    };
    assert!(matches!(err, SpoolError::NoSpace), "{err:?}");
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(acked.len() > 50, "only {} accepted", acked.len());
    // Refused again, not wedged or half-written.
    assert!(matches!(
        s.submit(&env(0), &body(0)),
        Err(SpoolError::NoSpace)
    ));
    for (id, n) in &acked {
        assert_eq!(s.body(*id).unwrap(), &body(*n)[..]);
    }
    // Deliveries can still be recorded on the full disk (the reserved eighth of each segment).
    let delivered = acked.len() / 2;
    for (id, _) in &acked[..delivered] {
        let rid = RecipientId {
            message: *id,
            index: 0,
        };
        s.update(
            rid,
            &StateChange {
                state: RecipientState::Delivered,
                attempts: 1,
                next_attempt: 0,
                reply: "250 ok",
            },
        )
        .unwrap();
    }
    // An engine restarted on the full disk still opens and sees everything.
    drop(s);
    let (mut s, rep) = Spool::open(&dir, opts()).unwrap();
    assert_eq!(rep.messages as usize, acked.len() - delivered);
    assert_eq!(rep.corrupt_records, 0);
    for (id, n) in &acked[delivered..] {
        assert_eq!(s.body(*id).unwrap(), &body(*n)[..]);
    }
    // Space comes back as finished segments go, and submissions work again.
    let mut freed = 0;
    for _ in 0..20 {
        freed += s.maintain().unwrap().freed_bytes;
    }
    // (Recovery already removes segments holding nothing live; maintain does it at run time.)
    assert!(
        freed > 0 || rep.removed_segments > 0,
        "nothing freed: {rep:?}"
    );
    let more = s
        .submit(&env(9999), &body(9999))
        .expect("submission after space was freed");
    drop(s);
    let (s, rep) = Spool::open(&dir, opts()).unwrap();
    assert_eq!(rep.messages as usize, acked.len() - delivered + 1);
    assert_eq!(s.body(more).unwrap(), &body(9999)[..]);
    for (id, n) in &acked[delivered..] {
        assert_eq!(s.body(*id).unwrap(), &body(*n)[..]);
    }
}

/// On a full disk, deferrals fill only their share of the room kept for state changes; every final
/// outcome after them is still recorded (the last sixteenth of the segment, then the room that
/// maintenance frees as whole segments finish), and submissions work again.
#[test]
fn deferrals_on_a_full_disk_leave_room_for_final_outcomes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("spool-full-retries");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "1m");
    let dir = mnt.join("spool");
    let rcpt = ["a@x.example"];
    let env = |n: usize| Envelope {
        sender: "s@x.example",
        recipients: &rcpt,
        tenant: "t",
        submitted_at: n as u64,
        ..Envelope::default()
    };
    let (mut s, _) = Spool::open(&dir, opts()).unwrap();
    let mut acked: Vec<MessageId> = Vec::new();
    while let Ok(id) = s.submit(&env(acked.len()), &body(acked.len())) {
        acked.push(id);
        assert!(acked.len() < 10_000, "1 MiB file system never filled");
    }
    let rid = |id: &MessageId| RecipientId {
        message: *id,
        index: 0,
    };
    // Retries of undeliverable mail, over and over, until the spool refuses to record more.
    let mut deferrals = 0;
    let refused = 'outer: loop {
        for (n, id) in acked.iter().enumerate() {
            let r = s.update(
                rid(id),
                &StateChange {
                    state: RecipientState::Deferred,
                    attempts: (deferrals / acked.len() + 1) as u16,
                    next_attempt: 1_000 + n as u64,
                    reply: "451 4.3.0 try again later, the receiver is busy right now",
                },
            );
            match r {
                Ok(()) => deferrals += 1,
                Err(e) => break 'outer e,
            }
            assert!(deferrals < 100_000, "deferrals never filled the disk");
        }
    };
    assert!(matches!(refused, SpoolError::NoSpace), "{refused:?}");
    assert!(deferrals > 0);
    // Every message is then delivered: each final outcome is recorded, at once or after the
    // maintenance that frees the segments already finished.
    let mut maintained = 0;
    for id in &acked {
        let change = StateChange {
            state: RecipientState::Delivered,
            attempts: 2,
            next_attempt: 0,
            reply: "250 2.0.0 ok",
        };
        let mut tries = 0;
        loop {
            match s.update(rid(id), &change) {
                Ok(()) => break,
                Err(SpoolError::NoSpace) if tries < 3 => {
                    s.maintain().unwrap();
                    maintained += 1;
                    tries += 1;
                }
                Err(e) => panic!("delivery of {id:?} not recorded: {e:?}"),
            }
        }
    }
    for _ in 0..20 {
        s.maintain().unwrap();
    }
    let more = s
        .submit(&env(9999), &body(9999))
        .expect("submission once the delivered mail's space was freed");
    drop(s);
    let (s, rep) = Spool::open(&dir, opts()).unwrap();
    assert_eq!(
        rep.messages, 1,
        "only the new message is live: {rep:?} ({maintained} maintenance passes)"
    );
    assert_eq!(s.body(more).unwrap(), &body(9999)[..]);
}

/// `Engine::submit_nowait` on a disk that fills: ids keep coming back at once, the spool's refusals
/// come as `refused` events, and every id returned is either refused that way or in the spool when
/// the engine starts again (nothing accepted is lost, nothing refused is queued).
#[test]
fn submissions_that_do_not_wait_are_refused_by_event_when_the_disk_fills() {
    use std::time::Duration;
    use vmta::engine::{DeliveryEvent, Engine, EventKind, Submission};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = TempDir::new("engine-nowait-full");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let _fs = Tmpfs::mount(&mnt, "6m");
    let config = vmta::engine::EngineConfig::builder()
        .shards(1)
        .pin_shards(false)
        .spool_dir(mnt.join("spool"))
        .spool_segment_mb(1)
        .nameservers(&["127.0.0.1:9"])
        .port(9)
        .durability(vmta::engine::config::Durability::Sync)
        .build();
    let e = Engine::start(&config).unwrap();
    // Nothing leaves: the queue only fills the disk.
    e.pause();
    let mut ids = Vec::new();
    let mut events: Vec<DeliveryEvent> = Vec::new();
    for n in 0..4000 {
        let s = Submission {
            sender: "s@x.example".into(),
            recipients: vec![format!("r{n}@y.example")],
            tenant: "t".into(),
            body: {
                let mut b = format!("From: s@x.example\r\nSubject: {n}\r\n\r\n").into_bytes();
                for _ in 0..50 {
                    b.extend_from_slice(&[b'a'; 78]);
                    b.extend_from_slice(b"\r\n");
                }
                b
            },
            ..Submission::default()
        };
        match e.submit_nowait(&s) {
            Ok(id) => ids.push(id),
            Err(err) => panic!("refused at once, not by event: {err}"),
        }
        e.poll_events(&mut events, 100_000);
        if events.iter().any(|ev| ev.kind == EventKind::Refused) && ids.len() % 100 == 0 {
            break;
        }
    }
    assert!(e.flush(Duration::from_secs(30)), "flush timed out");
    e.poll_events(&mut events, 100_000);
    let refused: std::collections::HashSet<u64> = events
        .iter()
        .filter(|ev| ev.kind == EventKind::Refused)
        .map(|ev| {
            assert!(ev.text.starts_with("not queued: "), "{ev:?}");
            assert!(ev.text.contains("no space"), "{ev:?}");
            ev.message_id
        })
        .collect();
    assert!(!refused.is_empty(), "the 6 MiB disk never filled");
    assert!(refused.len() < ids.len(), "nothing was accepted");
    assert!(refused.iter().all(|id| ids.contains(id)));
    e.shutdown(Duration::from_secs(5));
    drop(e);
    let e = Engine::start(&config).unwrap();
    e.pause();
    assert_eq!(
        e.recovery().messages as usize,
        ids.len() - refused.len(),
        "every id returned and not refused is in the spool"
    );
    e.shutdown(Duration::from_secs(5));
}
