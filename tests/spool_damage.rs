//! Truncation and corruption of a small spool at every byte offset: open must succeed, every record
//! not touched by the damage must be kept, and nothing damaged may be trusted.
//!
//! The expectation is computed independently of the spool's recovery code: the intact segment is
//! parsed record by record with `vmta::spool::record`, and a small model applies the records the
//! damage left whole (for a truncation at `k`, those ending at or before `k`; for a flipped byte, all
//! but the record whose checksummed bytes contain it).

use std::collections::BTreeMap;
use std::path::Path;
use vmta::spool::record::{self, Kind, MessageRecord, StateRecord};
use vmta::spool::{
    Envelope, MessageId, Options, RecipientId, RecipientState, Spool, StateChange, SyncPolicy,
};
use vmta_tests::TempDir;

fn opts(read_only: bool) -> Options {
    Options {
        policy: SyncPolicy::None,
        segment_size: 4096,
        read_only,
        ..Options::default()
    }
}

/// Builds the small spool and returns the bytes of its one segment.
fn build(dir: &Path) -> Vec<u8> {
    let (mut s, _) = Spool::open(dir, opts(false)).unwrap();
    let mut ids = Vec::new();
    for n in 0..4u64 {
        let addrs = ["a@one.example", "b@two.example"];
        let env = Envelope {
            sender: "s@x.example",
            recipients: &addrs[..1 + (n as usize % 2)],
            tenant: "t",
            submitted_at: n,
            ..Envelope::default()
        };
        ids.push(s.submit(&env, format!("body {n}\r\n").as_bytes()).unwrap());
    }
    let ch = |state, attempts| StateChange {
        state,
        attempts,
        next_attempt: 99,
        reply: "451 later",
    };
    let r = |m: MessageId, i| RecipientId {
        message: m,
        index: i,
    };
    s.update(r(ids[0], 0), &ch(RecipientState::Deferred, 1))
        .unwrap();
    s.update(r(ids[1], 1), &ch(RecipientState::Delivered, 1))
        .unwrap();
    s.update(r(ids[0], 0), &ch(RecipientState::Delivered, 2))
        .unwrap();
    s.update(r(ids[2], 0), &ch(RecipientState::Held, 0))
        .unwrap();
    let t = s.remove(ids[3]).unwrap();
    s.commit(t).unwrap();
    drop(s);
    let segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    std::fs::read(&segs[0]).unwrap()
}

fn span_at(seg: &[u8], off: usize) -> usize {
    let salt = record::SegmentHeader::decode(seg).unwrap().salt;
    record::decode_record(seg, off, salt).unwrap().span
}

type Expect = BTreeMap<u64, Vec<(RecipientState, u16)>>;

/// Applies the records for which `keep(start, checksummed_end)` holds.
fn model(seg: &[u8], keep: impl Fn(usize, usize) -> bool) -> (Expect, usize) {
    let salt = record::SegmentHeader::decode(seg).unwrap().salt;
    let mut live: Expect = BTreeMap::new();
    let mut used = 0;
    record::scan(seg, salt, |off, rec| {
        let end = off + record::RECORD_HEADER_LEN + rec.payload.len();
        used = off + rec.span;
        if !keep(off, end) {
            return;
        }
        match rec.kind {
            Kind::Message => {
                let m = MessageRecord::decode(rec.payload).unwrap();
                live.insert(
                    m.id,
                    m.recipients().map(|r| (r.state, r.attempts)).collect(),
                );
            }
            Kind::State => {
                let s = StateRecord::decode(rec.payload).unwrap();
                if let Some(r) = live.get_mut(&s.id) {
                    r[usize::from(s.rcpt)] = (s.state, s.attempts);
                    if r.iter().all(|x| x.0.is_final()) {
                        live.remove(&s.id);
                    }
                }
            }
            Kind::Cancel => {
                live.remove(&record::decode_cancel(rec.payload).unwrap());
            }
        }
    });
    (live, used)
}

fn observed(s: &Spool) -> Expect {
    s.messages()
        .map(|id| {
            let m = s.message(id).unwrap();
            assert_eq!(
                m.body(),
                format!("body {}\r\n", m.submitted_at()).as_bytes()
            );
            let states = (0..m.recipient_count())
                .map(|i| {
                    let r = s
                        .recipient(RecipientId {
                            message: id,
                            index: i,
                        })
                        .unwrap();
                    (r.state, r.attempts)
                })
                .collect();
            (id.0, states)
        })
        .collect()
}

fn check(dir: &Path, bytes: &[u8], want: &Expect, what: &str, writable_too: bool) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("00000001.seg"), bytes).unwrap();
    let (s, _) =
        Spool::open(dir, opts(true)).unwrap_or_else(|e| panic!("{what}: read-only open: {e}"));
    assert_eq!(&observed(&s), want, "{what} (read-only)");
    drop(s);
    if writable_too {
        for pass in 0..2 {
            let (s, _) =
                Spool::open(dir, opts(false)).unwrap_or_else(|e| panic!("{what}: open: {e}"));
            assert_eq!(&observed(&s), want, "{what} (writable, pass {pass})");
        }
    }
}

#[test]
fn truncation_at_every_offset_keeps_every_whole_record() {
    let tmp = TempDir::new("spool-trunc");
    let seg = build(&tmp.path().join("orig"));
    let (_, used) = model(&seg, |_, _| true);
    assert!(used > 500, "spool too small to mean anything: {used}");
    let dir = tmp.path().join("cut");
    for k in 0..=used {
        // A record is whole when its padding is there too (it is written in the same `pwrite`).
        let (want, _) = model(&seg, |start, _| start + span_at(&seg, start) <= k);
        check(&dir, &seg[..k], &want, &format!("cut at {k}"), k % 7 == 0);
    }
}

#[test]
fn a_flipped_byte_at_every_offset_loses_only_its_record() {
    let tmp = TempDir::new("spool-flip");
    let seg = build(&tmp.path().join("orig"));
    let (all, used) = model(&seg, |_, _| true);
    assert!(!all.is_empty());
    let dir = tmp.path().join("flip");
    // Every byte in use, then a sample of the pre-allocated zero tail (a flip there is a torn tail).
    let offsets = (0..used).chain((used..seg.len()).step_by(97));
    for k in offsets {
        let mut b = seg.clone();
        b[k] ^= 0x5a;
        let (want, _) = if k < record::SEGMENT_HEADER_LEN {
            model(&seg, |_, _| true)
        } else {
            model(&seg, |start, end| !(start..end).contains(&k))
        };
        check(&dir, &b, &want, &format!("flip at {k}"), k % 11 == 0);
    }
}

#[test]
fn a_segment_with_both_headers_destroyed_is_set_aside() {
    let tmp = TempDir::new("spool-header");
    let mut seg = build(&tmp.path().join("orig"));
    seg[3] ^= 1;
    seg[43] ^= 1;
    let dir = tmp.path().join("h");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("00000001.seg"), &seg).unwrap();
    let (s, rep) = Spool::open(&dir, opts(false)).unwrap();
    assert_eq!(rep.damaged_segments, 1);
    assert_eq!(s.stats().messages, 0);
    assert!(dir.join("00000001.seg.damaged").exists());
}
