//! Unit tests of the spool (crash, damage and full-disk tests are in `tests/spool_*.rs`).

use super::*;
use std::sync::{Arc, Mutex};

use crate::TestDir as Dir;

fn opts(policy: SyncPolicy) -> Options {
    Options {
        policy,
        segment_size: 64 << 10,
        ..Options::default()
    }
}

fn env<'a>(rcpts: &'a [&'a str], t: u64) -> Envelope<'a> {
    Envelope {
        sender: "bounces@sender.example",
        recipients: rcpts,
        tenant: "acme",
        tags: &[("campaign", "spring")],
        priority: Priority::Bulk,
        flags: MessageFlags::EIGHT_BIT,
        submitted_at: t,
    }
}

fn body(n: usize, len: usize) -> Vec<u8> {
    let mut b = format!("Subject: message {n}\r\n\r\n").into_bytes();
    while b.len() < len {
        b.extend_from_slice(format!("line {n} {}\r\n", b.len()).as_bytes());
    }
    b.truncate(len.max(20));
    b
}

fn deferred(attempts: u16, reply: &str) -> StateChange<'_> {
    StateChange {
        state: RecipientState::Deferred,
        attempts,
        next_attempt: 1_700_000_000 + u64::from(attempts) * 60,
        reply,
    }
}

fn final_state(state: RecipientState) -> StateChange<'static> {
    StateChange {
        state,
        attempts: 1,
        next_attempt: 0,
        reply: "250 2.0.0 ok",
    }
}

#[test]
fn submit_read_and_recover() {
    let d = Dir::new("basic");
    let rcpts = ["a@one.example", "b@Two.Example"];
    let b = body(1, 2048);
    let id = {
        let (mut s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        assert_eq!(rep.messages, 0);
        let id = s.submit(&env(&rcpts, 1_700_000_000), &b).unwrap();
        assert_eq!(s.body(id).unwrap(), &b[..]);
        let m = s.message(id).unwrap();
        assert_eq!(m.sender(), "bounces@sender.example");
        assert_eq!(m.tenant(), "acme");
        assert_eq!(m.tags().collect::<Vec<_>>(), vec![("campaign", "spring")]);
        assert_eq!(m.priority(), Priority::Bulk);
        assert!(m.flags().contains(MessageFlags::EIGHT_BIT));
        assert_eq!(m.recipient_addresses().collect::<Vec<_>>(), rcpts);
        id
    };
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!((rep.messages, rep.recipients), (1, 2));
    assert_eq!((rep.corrupt_records, rep.truncated_bytes), (0, 0));
    assert_eq!(s.body(id).unwrap(), &b[..]);
    let q: Vec<_> = s.queued().collect();
    assert_eq!(q.len(), 2);
    assert_eq!(q[1].domain, "two.example");
    assert_eq!(q[1].state, RecipientState::Queued);
    assert_eq!(q[0].submitted_at, 1_700_000_000);
    assert_eq!(q[0].priority, Priority::Bulk);
}

#[test]
fn state_changes_survive_reopen_and_final_messages_leave() {
    let d = Dir::new("states");
    let rcpts = ["a@x.example", "b@y.example", "c@y.example"];
    let (id, gone) = {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        let id = s.submit(&env(&rcpts, 10), b"body").unwrap();
        let gone = s.submit(&env(&rcpts[..1], 11), b"other").unwrap();
        let r = |i| RecipientId {
            message: id,
            index: i,
        };
        s.update(r(0), &deferred(1, "451 4.7.1 greylisted"))
            .unwrap();
        s.update(r(0), &deferred(2, "451 4.7.1 still greylisted"))
            .unwrap();
        s.update(r(1), &final_state(RecipientState::Delivered))
            .unwrap();
        s.update(
            r(2),
            &StateChange {
                state: RecipientState::Held,
                attempts: 0,
                next_attempt: 0,
                reply: "",
            },
        )
        .unwrap();
        assert!(matches!(
            s.update(r(1), &deferred(3, "x")),
            Err(SpoolError::AlreadyFinal(_))
        ));
        assert!(matches!(
            s.update(r(7), &deferred(3, "x")),
            Err(SpoolError::UnknownRecipient(_))
        ));
        s.update(
            RecipientId {
                message: gone,
                index: 0,
            },
            &final_state(RecipientState::Bounced),
        )
        .unwrap();
        assert!(matches!(
            s.message(gone),
            Err(SpoolError::UnknownMessage(_))
        ));
        (id, gone)
    };
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!((rep.messages, rep.recipients), (1, 2));
    let r0 = s
        .recipient(RecipientId {
            message: id,
            index: 0,
        })
        .unwrap();
    assert_eq!(r0.state, RecipientState::Deferred);
    assert_eq!(r0.attempts, 2);
    assert_eq!(r0.next_attempt, 1_700_000_120);
    assert_eq!(r0.last_reply, "451 4.7.1 still greylisted");
    assert_eq!(r0.address, "a@x.example");
    let r1 = s
        .recipient(RecipientId {
            message: id,
            index: 1,
        })
        .unwrap();
    assert_eq!(r1.state, RecipientState::Delivered);
    assert_eq!(r1.last_reply, "250 2.0.0 ok");
    assert_eq!(
        s.recipient(RecipientId {
            message: id,
            index: 2
        })
        .unwrap()
        .state,
        RecipientState::Held
    );
    assert!(s.message(gone).is_err());
    let st = s.stats();
    assert_eq!(st.by_state[RecipientState::Delivered as usize], 1);
    assert_eq!(st.by_state[RecipientState::Held as usize], 1);
    assert_eq!(s.domains(), vec![("x.example", 1), ("y.example", 1)]);
}

#[test]
fn remove_cancels_every_live_recipient() {
    let d = Dir::new("remove");
    let rcpts = ["a@x.example", "b@y.example"];
    let id = {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        let id = s.submit(&env(&rcpts, 10), b"body").unwrap();
        let t = s.remove(id).unwrap();
        s.commit(t).unwrap();
        assert!(matches!(s.remove(id), Err(SpoolError::UnknownMessage(_))));
        id
    };
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!(rep.messages, 0);
    assert!(s.message(id).is_err());
}

#[test]
fn ids_stay_monotonic_after_the_queue_drains() {
    let d = Dir::new("ids");
    let first = {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
        let id = s.submit(&env(&["a@x.example"], 1), b"b").unwrap();
        s.update(
            RecipientId {
                message: id,
                index: 0,
            },
            &final_state(RecipientState::Delivered),
        )
        .unwrap();
        for _ in 0..3 {
            s.maintain().unwrap();
        }
        id
    };
    let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
    let next = s.submit(&env(&["a@x.example"], 1), b"b").unwrap();
    assert!(next > first, "{next} after {first}");
}

#[test]
fn invalid_envelopes_are_refused() {
    let d = Dir::new("invalid");
    let (mut s, _) = Spool::open(
        &d.0,
        Options {
            max_body: 100,
            ..opts(SyncPolicy::None)
        },
    )
    .unwrap();
    assert!(matches!(
        s.submit(&env(&[], 1), b"b"),
        Err(SpoolError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        s.submit(&env(&["nodomain"], 1), b"b"),
        Err(SpoolError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        s.submit(&env(&["a@x\r\n"], 1), b"b"),
        Err(SpoolError::InvalidEnvelope(_))
    ));
    assert!(matches!(
        s.submit(&env(&["a@x.example"], 1), &[0u8; 101]),
        Err(SpoolError::TooLarge {
            size: 101,
            max: 100
        })
    ));
    assert_eq!(s.stats().messages, 0);
}

#[test]
fn a_message_larger_than_a_segment_gets_its_own() {
    let d = Dir::new("large");
    let big = body(7, 200 << 10);
    let id = {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        s.submit(&env(&["a@x.example"], 1), b"small").unwrap();
        let id = s.submit(&env(&["a@x.example"], 1), &big).unwrap();
        s.submit(&env(&["a@x.example"], 1), b"small").unwrap();
        assert_eq!(s.body(id).unwrap(), &big[..]);
        id
    };
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!(rep.messages, 3);
    assert_eq!(s.body(id).unwrap(), &big[..]);
}

#[test]
fn lock_stops_a_second_engine_and_a_reader() {
    let d = Dir::new("lock");
    let (_s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
    match Spool::open(&d.0, opts(SyncPolicy::None)) {
        Err(SpoolError::Locked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
        other => panic!("second open: {other:?}"),
    }
    let ro = Options {
        read_only: true,
        ..opts(SyncPolicy::None)
    };
    let e = Spool::open(&d.0, ro).unwrap_err();
    assert!(e.to_string().contains("in use by another process"), "{e}");
}

/// A spool closed and reopened by a process whose other threads spawn children is not refused: a
/// child forked between our close and its `exec` shares the lock for a moment (found in CI).
#[test]
fn reopening_while_another_thread_spawns_children_is_not_refused() {
    let d = Dir::new("lock-fork");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::process::Command::new("true").status().unwrap();
                n += 1;
            }
            n
        })
    };
    for _ in 0..300 {
        let (s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
        drop(s);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(spawner.join().unwrap() > 0);
}

#[test]
fn read_only_open_reads_and_refuses_writes() {
    let d = Dir::new("ro");
    let id = {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        s.submit(&env(&["a@x.example"], 1), b"hello").unwrap()
    };
    let files_before: Vec<_> = fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let (mut s, rep) = Spool::open(
        &d.0,
        Options {
            read_only: true,
            ..opts(SyncPolicy::Sync)
        },
    )
    .unwrap();
    assert_eq!(rep.messages, 1);
    assert_eq!(s.body(id).unwrap(), b"hello");
    assert!(matches!(
        s.submit(&env(&["a@x.example"], 1), b"x"),
        Err(SpoolError::ReadOnly)
    ));
    assert!(matches!(s.maintain(), Err(SpoolError::ReadOnly)));
    let files_after: Vec<_> = fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files_before.len(), files_after.len());
}

#[test]
fn final_segments_are_deleted_and_disk_use_follows_the_queue() {
    let d = Dir::new("delete");
    let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
    let mut ids = Vec::new();
    for n in 0..200 {
        ids.push(
            s.submit(&env(&["a@x.example"], n), &body(n as usize, 2048))
                .unwrap(),
        );
    }
    let full = s.stats();
    assert!(full.segments >= 6, "{full:?}");
    for id in &ids {
        s.update(
            RecipientId {
                message: *id,
                index: 0,
            },
            &final_state(RecipientState::Delivered),
        )
        .unwrap();
    }
    for _ in 0..20 {
        s.maintain().unwrap();
    }
    let after = s.stats();
    assert_eq!(after.messages, 0);
    assert!(after.segments <= 2, "{after:?}");
    assert!(after.disk_bytes <= 2 * (64 << 10), "{after:?}");
}

/// The hazard final pins exist for: a delivery recorded in a segment that has nothing else live must
/// not be deleted while the message record it finishes is still on disk.
#[test]
fn a_delivery_record_outlives_its_message_record() {
    let d = Dir::new("pins");
    let (keep, done) = {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
        // Segment A: a long-lived message and the one that will be delivered, with a large body so
        // compaction thresholds keep A (it stays mostly live).
        let keep = s
            .submit(&env(&["k@x.example"], 1), &body(1, 40 << 10))
            .unwrap();
        let done = s.submit(&env(&["d@y.example"], 1), b"short").unwrap();
        // Fill so the delivery lands in a later segment.
        let filler = s
            .submit(&env(&["f@z.example"], 1), &body(2, 50 << 10))
            .unwrap();
        s.update(
            RecipientId {
                message: done,
                index: 0,
            },
            &final_state(RecipientState::Delivered),
        )
        .unwrap();
        s.update(
            RecipientId {
                message: filler,
                index: 0,
            },
            &final_state(RecipientState::Delivered),
        )
        .unwrap();
        // And move the active segment on, so the one holding the delivery can be deleted.
        s.submit(&env(&["g@z.example"], 1), &body(3, 50 << 10))
            .unwrap();
        for _ in 0..10 {
            s.maintain().unwrap();
        }
        (keep, done)
    };
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
    assert!(s.message(keep).is_ok());
    assert!(
        s.message(done).is_err(),
        "a delivered message came back: {rep:?}"
    );
    assert_eq!(rep.messages, 2);
}

#[test]
fn compaction_moves_live_messages_with_their_state() {
    let d = Dir::new("compact");
    let o = opts(SyncPolicy::None);
    let mut live = Vec::new();
    {
        let (mut s, _) = Spool::open(&d.0, o.clone()).unwrap();
        for n in 0..300u64 {
            let rc = ["a@x.example", "b@y.example"];
            let id = s.submit(&env(&rc, n), &body(n as usize, 1500)).unwrap();
            let r0 = RecipientId {
                message: id,
                index: 0,
            };
            let r1 = RecipientId {
                message: id,
                index: 1,
            };
            s.update(r0, &final_state(RecipientState::Delivered))
                .unwrap();
            if n % 10 == 0 {
                s.update(r1, &deferred(3, "421 4.4.2 timeout")).unwrap();
                live.push(id);
            } else {
                s.update(r1, &final_state(RecipientState::Bounced)).unwrap();
            }
        }
        let before = s.stats();
        let mut compacted = 0;
        for _ in 0..40 {
            compacted += s.maintain().unwrap().compacted_segments;
        }
        let after = s.stats();
        assert!(compacted > 0);
        assert!(
            after.disk_bytes * 3 < before.disk_bytes,
            "{before:?} -> {after:?}"
        );
        assert_eq!(after.messages, live.len() as u64);
    }
    let (s, rep) = Spool::open(&d.0, o).unwrap();
    assert_eq!(rep.messages, live.len() as u64);
    assert_eq!(rep.recipients, live.len() as u64);
    assert_eq!(rep.corrupt_records, 0);
    for id in &live {
        let n = s.message(*id).unwrap().submitted_at() as usize;
        assert_eq!(s.body(*id).unwrap(), &body(n, 1500)[..]);
        let r0 = s
            .recipient(RecipientId {
                message: *id,
                index: 0,
            })
            .unwrap();
        assert_eq!(r0.state, RecipientState::Delivered);
        assert_eq!(r0.last_reply, "250 2.0.0 ok");
        let r1 = s
            .recipient(RecipientId {
                message: *id,
                index: 1,
            })
            .unwrap();
        assert_eq!((r1.state, r1.attempts), (RecipientState::Deferred, 3));
        assert_eq!(r1.last_reply, "421 4.4.2 timeout");
    }
}

#[test]
fn group_commit_shares_flushes_between_threads() {
    let d = Dir::new("group");
    let (s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    let dur = s.durability();
    let s = Arc::new(Mutex::new(s));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            let dur = dur.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for n in 0..40 {
                    let rc = ["a@x.example"];
                    let (id, ticket) = s
                        .lock()
                        .unwrap()
                        .append(&env(&rc, t), &body(n, 512))
                        .unwrap();
                    dur.wait(ticket).unwrap();
                    assert!(dur.durable() >= ticket);
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let ids: Vec<MessageId> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(ids.len(), 320);
    let st = s.lock().unwrap().stats();
    assert_eq!(st.durable, st.appended);
    // Eight threads waiting at once: one flush acknowledges several of them.
    assert!(st.syncs < 320, "{} flushes for 320 submissions", st.syncs);
}

#[test]
fn submit_batch_uses_one_flush() {
    let d = Dir::new("batch");
    let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    let rc = ["a@x.example"];
    let b = body(1, 256);
    let batch: Vec<(Envelope<'_>, &[u8])> = (0..50).map(|n| (env(&rc, n), &b[..])).collect();
    let before = s.stats().syncs;
    let out = s.submit_batch(&batch);
    assert!(out.iter().all(|r| r.is_ok()));
    assert_eq!(s.stats().syncs - before, 1);
}

#[test]
fn interval_policy_flushes_in_the_background() {
    let d = Dir::new("interval");
    let (mut s, _) =
        Spool::open(&d.0, opts(SyncPolicy::Interval(Duration::from_millis(5)))).unwrap();
    let (_, t) = s.append(&env(&["a@x.example"], 1), b"b").unwrap();
    s.commit(t).unwrap();
    let dur = s.durability();
    let deadline = Instant::now() + Duration::from_secs(10);
    while dur.durable() < t {
        assert!(Instant::now() < deadline, "interval flusher never flushed");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn index_tables_are_mapped_and_the_heap_holds_only_domains() {
    let d = Dir::new("memory");
    let (mut s, _) = Spool::open(
        &d.0,
        Options {
            segment_size: 8 << 20,
            ..opts(SyncPolicy::None)
        },
    )
    .unwrap();
    let domains: Vec<String> = (0..100).map(|n| format!("d{n}.example")).collect();
    let addrs: Vec<String> = (0..20_000)
        .map(|n| format!("u{n}@{}", domains[n % 100]))
        .collect();
    for a in &addrs {
        s.submit(&env(&[a.as_str()], 1), b"x").unwrap();
    }
    drop(s);
    let (s, rep) = Spool::open(
        &d.0,
        Options {
            segment_size: 8 << 20,
            ..opts(SyncPolicy::None)
        },
    )
    .unwrap();
    assert_eq!(rep.recipients, 20_000);
    // The tables are in mapped files: the heap holds only the domains.
    let st = s.stats();
    assert!(st.index_mapped);
    let per = st.index_bytes as f64 / 20_000.0;
    assert!(per <= 1.0, "{per} heap bytes per recipient");
}

/// Leaves a small spool in `VMTA_SPOOL_DEMO_DIR` for trying `vmta queue` by hand.
#[test]
#[ignore = "writes a demo spool for manual use of `vmta queue`"]
fn write_demo_spool() {
    let Ok(dir) = std::env::var("VMTA_SPOOL_DEMO_DIR") else {
        return;
    };
    let (mut s, _) = Spool::open(&dir, opts(SyncPolicy::Sync)).unwrap();
    for n in 0..5u64 {
        let rc = ["a@gmail.com", "b@yahoo.com", "c@gmail.com"];
        let id = s
            .submit(&env(&rc, 1_700_000_000 + n), &body(n as usize, 900))
            .unwrap();
        s.update(
            RecipientId {
                message: id,
                index: 1,
            },
            &deferred(1, "421 try later"),
        )
        .unwrap();
    }
}

/// Writes the seed corpus of the `spool_recovery` fuzz target into `VMTA_SPOOL_SEED_DIR`.
#[test]
#[ignore = "regenerates fuzz/corpus/spool_recovery"]
fn write_fuzz_seeds() {
    let Ok(out) = std::env::var("VMTA_SPOOL_SEED_DIR") else {
        return;
    };
    let d = Dir::new("seeds");
    let o = Options {
        fixed_salt: Some(0x5eed_5a17),
        segment_size: 4096,
        ..opts(SyncPolicy::None)
    };
    let (mut s, _) = Spool::open(&d.0, o).unwrap();
    let mut ids = Vec::new();
    for n in 0..3u64 {
        let rc = ["a@x.example", "b@y.example"];
        ids.push(
            s.submit(&env(&rc[..1 + n as usize % 2], n), &body(n as usize, 60))
                .unwrap(),
        );
    }
    s.update(
        RecipientId {
            message: ids[0],
            index: 0,
        },
        &deferred(1, "451 later"),
    )
    .unwrap();
    s.update(
        RecipientId {
            message: ids[1],
            index: 1,
        },
        &final_state(RecipientState::Delivered),
    )
    .unwrap();
    let t = s.remove(ids[2]).unwrap();
    s.commit(t).unwrap();
    let used = s.segments.values().next().unwrap().used as usize;
    let bytes = fs::read(d.0.join(segment::file_name(1))).unwrap();
    let records = &bytes[SEGMENT_HEADER_LEN..used];
    let mut seed = vec![0u8];
    seed.extend_from_slice(records);
    fs::write(Path::new(&out).join("records"), &seed).unwrap();
    let mut whole = vec![1u8];
    whole.extend_from_slice(&bytes[..used]);
    fs::write(Path::new(&out).join("whole"), &whole).unwrap();
    let first = record::decode_record(&bytes, SEGMENT_HEADER_LEN, 0x5eed_5a17)
        .unwrap()
        .span;
    let mut one = vec![0u8];
    one.extend_from_slice(&records[..first]);
    fs::write(Path::new(&out).join("one_message"), &one).unwrap();
}

#[test]
fn held_writes_are_readable_at_once_and_reach_the_file_together() {
    let d = Dir::new("held");
    let rcpts = ["a@one.example"];
    let mut ids = Vec::new();
    {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        s.hold_writes(true).unwrap();
        let before = s.durability().appended_ticket();
        let mut last = Ticket(0);
        for n in 0..5 {
            let b = body(n, 700);
            let (id, t) = s.append(&env(&rcpts, 1_700_000_000), &b).unwrap();
            // Readable from memory before it is written.
            assert_eq!(s.body(id).unwrap(), &b[..]);
            ids.push(id);
            last = t;
        }
        let rid = RecipientId {
            message: ids[0],
            index: 0,
        };
        last = last.max(s.record_state(rid, &deferred(1, "451 later")).unwrap());
        assert_eq!(s.recipient(rid).unwrap().last_reply, "451 later");
        assert_eq!(s.recipient_status(rid).unwrap().attempts, 1);
        // Nothing written yet: group commit has not seen these tickets.
        assert_eq!(s.durability().appended_ticket(), before);
        s.commit(last).unwrap();
        assert_eq!(s.durability().appended_ticket(), last);
        assert!(s.durability().durable() >= last);
        // Held again, then written by the drop.
        let b = body(9, 300);
        ids.push(s.append(&env(&rcpts, 1_700_000_001), &b).unwrap().0);
    }
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!((rep.messages, rep.corrupt_records), (6, 0));
    assert_eq!(s.body(ids[3]).unwrap(), &body(3, 700)[..]);
    assert_eq!(s.body(ids[5]).unwrap(), &body(9, 300)[..]);
    let rid = RecipientId {
        message: ids[0],
        index: 0,
    };
    assert_eq!(s.recipient(rid).unwrap().state, RecipientState::Deferred);
    assert_eq!(s.recipient_count(ids[0]).unwrap(), 1);
}

#[test]
fn held_writes_across_a_segment_rotation() {
    let d = Dir::new("held-rotate");
    let rcpts = ["a@one.example"];
    let mut ids = Vec::new();
    {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        s.hold_writes(true).unwrap();
        // 64 KiB segments: 200 messages of 2 KiB rotate several times while held.
        let mut last = Ticket(0);
        for n in 0..200 {
            let (id, t) = s
                .append(&env(&rcpts, 1_700_000_000), &body(n, 2048))
                .unwrap();
            ids.push(id);
            last = t;
        }
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(s.body(*id).unwrap(), &body(n, 2048)[..]);
        }
        s.commit(last).unwrap();
    }
    let (s, rep) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!((rep.messages, rep.corrupt_records), (200, 0));
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(s.body(*id).unwrap(), &body(n, 2048)[..]);
    }
}

#[test]
fn the_committer_makes_tickets_durable_off_the_owners_thread() {
    let d = Dir::new("committer");
    let rcpts = ["a@one.example"];
    let mut ids = Vec::new();
    {
        let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
        s.hold_writes(true).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let tx = Mutex::new(tx);
        s.start_committer(
            "test-commit".into(),
            Box::new(move || {
                let _ = tx.lock().unwrap().send(());
            }),
        )
        .unwrap();
        let syncs = s.durability().syncs();
        for round in 0..3 {
            let mut last = Ticket(0);
            for n in 0..10 {
                let (id, t) = s
                    .append(&env(&rcpts, 1_700_000_000), &body(round * 10 + n, 500))
                    .unwrap();
                ids.push(id);
                last = t;
            }
            s.commit_start(last).unwrap();
            // Written at once, durable once the committer's flush has run and told the owner.
            assert_eq!(s.durability().appended_ticket(), last);
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
            while s.commit_done(last).is_none() {
                rx.recv_timeout(Duration::from_secs(10)).unwrap();
            }
            assert!(s.commit_done(last).unwrap().is_ok());
            assert!(s.durability().durable() >= last);
        }
        assert!(s.durability().syncs() > syncs);
    }
    let (s, report) = Spool::open(&d.0, opts(SyncPolicy::Sync)).unwrap();
    assert_eq!(report.messages, 30);
    for id in ids {
        assert!(s.message(id).is_ok());
    }
}

#[test]
fn without_a_committer_commit_start_commits_in_place() {
    let d = Dir::new("no-committer");
    let rcpts = ["a@one.example"];
    for policy in [SyncPolicy::Sync, SyncPolicy::None] {
        let (mut s, _) = Spool::open(&d.0, opts(policy)).unwrap();
        s.hold_writes(true).unwrap();
        let (_, t) = s
            .append(&env(&rcpts, 1_700_000_000), &body(1, 100))
            .unwrap();
        s.commit_start(t).unwrap();
        assert!(matches!(s.commit_done(t), Some(Ok(()))));
        if policy == SyncPolicy::Sync {
            assert!(s.durability().durable() >= t);
        }
    }
}

#[test]
fn durability_ready_reports_a_failed_write() {
    // The durability handle's answer for tickets a failed write-behind covered.
    let d = Durability::new();
    d.appended(Ticket(3));
    d.fail(4, 6, io::ErrorKind::StorageFull);
    assert!(d.ready(Ticket(2)).is_none());
    let e = d.ready(Ticket(5)).unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    assert!(d.ready(Ticket(7)).is_none());
}

#[test]
fn a_shared_body_outlives_its_segment() {
    let d = Dir::new("shared-body");
    let (mut s, _) = Spool::open(&d.0, opts(SyncPolicy::None)).unwrap();
    let mut kept = Vec::new();
    let mut ids = Vec::new();
    for n in 0..200 {
        let b = body(n, 2048);
        let id = s.submit(&env(&["a@x.example"], n as u64), &b).unwrap();
        let shared = s.message(id).unwrap().shared_body();
        assert!(shared.is_mapped(), "{shared:?}");
        kept.push((shared, b));
        ids.push(id);
    }
    // Held (not yet written) records are copied instead.
    s.hold_writes(true).unwrap();
    let b = body(999, 512);
    let (id, _) = s.append(&env(&["a@x.example"], 999), &b).unwrap();
    let held = s.message(id).unwrap().shared_body();
    assert!(!held.is_mapped(), "{held:?}");
    kept.push((held, b));
    s.hold_writes(false).unwrap();
    // Every message delivered: the segments are sealed and deleted under the bodies.
    for id in ids {
        let rid = RecipientId {
            message: id,
            index: 0,
        };
        s.update(rid, &final_state(RecipientState::Delivered))
            .unwrap();
    }
    for _ in 0..20 {
        s.maintain().unwrap();
    }
    assert!(s.stats().segments <= 2, "{:?}", s.stats());
    for (shared, b) in &kept {
        assert_eq!(shared.as_ref(), &b[..]);
    }
    drop(s);
    for (shared, b) in &kept {
        assert_eq!(shared.as_ref(), &b[..]);
    }
}
