//! The attempt journal: which recipients are in an SMTP transaction now, so that an attempt cut
//! short by a crash still counts.
//!
//! A recipient's attempt count reaches the spool with the attempt's outcome. When the process dies
//! between handing a transaction to the session and recording its outcome, the spool still has the
//! count from before, and the next attempt would report one attempt too few. Each shard therefore
//! keeps `<shard dir>/attempts`, a file of 16-byte slots mapped into memory (4,096 to start, 64 KiB,
//! doubled when they are all in use, up to 1,048,576): a
//! slot is filled (engine message id, recipient index, the attempt's number, then a magic word)
//! when the transaction is handed to the session, and its magic cleared once the outcome's record
//! has been written to the spool's file ([`AttemptJournal::end`] then [`AttemptJournal::settle`]).
//! Filling and clearing are memory stores, no system call; the kernel keeps the mapped
//! pages across `kill -9`. On open the filled slots are read back (the spool's recovery then raises
//! those recipients' counts, `ShardCore::reconcile_attempts`) and the file is cleared.
//!
//! The file is written in full with zeros when created or grown, so its blocks exist and a store
//! into the mapping cannot fault on a full disk (when growing fails for want of room, the attempts
//! beyond are not journalled). It is not `msync`ed: after a power loss the counts may be one short,
//! as before.

use crate::spool::RecipientId;
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{Ordering, fence};

/// Slots in a new journal, and the most it grows to.
const SLOTS: usize = 4096;
const MAX_SLOTS: usize = 1 << 20;
const SLOT: usize = 16;
/// "VATT", little-endian, in a filled slot's last four bytes.
const MAGIC: u32 = 0x5454_4156;

/// An attempt under way when the engine last stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interrupted {
    /// The engine's message id.
    pub message_id: u64,
    /// The recipient's position.
    pub index: u16,
    /// The attempt's number (attempts made, that one included).
    pub attempts: u16,
}

/// One shard's journal.
pub(crate) struct AttemptJournal {
    file: File,
    map: MmapMut,
    free: Vec<u32>,
    slots: crate::FastMap<RecipientId, u32>,
    /// Slots whose outcome is recorded but perhaps not yet written to the spool's file.
    ending: Vec<u32>,
}

impl std::fmt::Debug for AttemptJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptJournal")
            .field("in_flight", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl AttemptJournal {
    /// Opens (creating) the journal in `shard_dir`: the attempts it holds from the last run, and a
    /// cleared journal.
    pub fn open(shard_dir: &Path) -> io::Result<(AttemptJournal, Vec<Interrupted>)> {
        let path = shard_dir.join("attempts");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 || !len.is_multiple_of(SLOT) || len > MAX_SLOTS * SLOT {
            // New (or not ours): written in full, so that every block exists before it is mapped.
            file.set_len(0)?;
            file.write_all(&vec![0u8; SLOTS * SLOT])?;
            file.sync_all()?;
        }
        // SAFETY: the file is this shard's own (the spool's lock beside it keeps every other engine
        // out) and only grows while mapped; its blocks were written, so stores cannot fault.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        let slots = map.len() / SLOT;
        let mut interrupted = Vec::new();
        for slot in map.chunks_exact(SLOT) {
            let word = |i: usize, n: usize| {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(&slot[i..i + n]);
                u64::from_le_bytes(b)
            };
            if word(12, 4) == u64::from(MAGIC) {
                interrupted.push(Interrupted {
                    message_id: word(0, 8),
                    index: word(8, 2) as u16,
                    attempts: word(10, 2) as u16,
                });
            }
        }
        map.fill(0);
        Ok((
            AttemptJournal {
                file,
                map,
                free: (0..slots as u32).rev().collect(),
                slots: crate::FastMap::default(),
                ending: Vec::new(),
            },
            interrupted,
        ))
    }

    /// `rid` (message `message_id`, recipient `index`) is in a transaction: its attempt number
    /// `attempts`.
    pub fn start(&mut self, rid: RecipientId, message_id: u64, attempts: u16) {
        if self.slots.contains_key(&rid) {
            return;
        }
        if self.free.is_empty() {
            self.grow();
        }
        let Some(slot) = self.free.pop() else {
            return;
        };
        let at = slot as usize * SLOT;
        let s = &mut self.map[at..at + SLOT];
        s[..8].copy_from_slice(&message_id.to_le_bytes());
        s[8..10].copy_from_slice(&rid.index.to_le_bytes());
        s[10..12].copy_from_slice(&attempts.to_le_bytes());
        // The magic last: a slot cut short by a kill has none.
        fence(Ordering::Release);
        s[12..16].copy_from_slice(&MAGIC.to_le_bytes());
        self.slots.insert(rid, slot);
    }

    /// Doubles the file (written with zeros, then mapped again); on failure (no room) it stays.
    fn grow(&mut self) {
        let slots = self.map.len() / SLOT;
        if slots >= MAX_SLOTS {
            return;
        }
        let more = vec![0u8; slots * SLOT];
        if self
            .file
            .write_all_at(&more, self.map.len() as u64)
            .is_err()
        {
            let _ = self.file.set_len(self.map.len() as u64);
            return;
        }
        // SAFETY: as in `open`; the old mapping is dropped when this one replaces it, and no
        // reference into it outlives this call.
        match unsafe { MmapMut::map_mut(&self.file) } {
            Ok(map) => {
                self.map = map;
                self.free.extend((slots as u32..2 * slots as u32).rev());
            }
            Err(_) => {
                let _ = self.file.set_len(self.map.len() as u64);
            }
        }
    }

    /// `rid`'s attempt has its outcome, recorded in the spool but perhaps held in memory: the
    /// slot stays filled until [`AttemptJournal::settle`].
    pub fn end(&mut self, rid: RecipientId) {
        if let Some(slot) = self.slots.remove(&rid) {
            self.ending.push(slot);
        }
    }

    /// Clears the slots of ended attempts: call once every record appended so far is written to
    /// the spool's file.
    pub fn settle(&mut self) {
        for slot in self.ending.drain(..) {
            let at = slot as usize * SLOT;
            self.map[at + 12..at + 16].fill(0);
            self.free.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::MessageId;

    fn rid(m: u64, i: u16) -> RecipientId {
        RecipientId {
            message: MessageId(m),
            index: i,
        }
    }

    #[test]
    fn attempts_under_way_survive_a_reopen_and_ended_ones_do_not() {
        let dir = crate::TestDir::created("attempts");
        let (mut j, found) = AttemptJournal::open(&dir.0).unwrap();
        assert!(found.is_empty());
        j.start(rid(1, 0), 0x100, 1);
        j.start(rid(1, 1), 0x100, 3);
        j.start(rid(2, 0), 0x200, 1);
        j.start(rid(2, 0), 0x200, 9); // already journalled: kept as it was
        j.end(rid(1, 0));
        j.end(rid(7, 7)); // never started: nothing
        j.settle();
        j.end(rid(2, 0));
        j.start(rid(2, 0), 0x200, 2); // its next attempt, before the last one's record is written
        // Dropped without ending, as a kill would leave it (the mapping's pages are the file's).
        drop(j);
        let (j, mut found) = AttemptJournal::open(&dir.0).unwrap();
        found.sort_by_key(|i| (i.message_id, i.index, i.attempts));
        assert_eq!(
            found,
            [
                Interrupted {
                    message_id: 0x100,
                    index: 1,
                    attempts: 3
                },
                Interrupted {
                    message_id: 0x200,
                    index: 0,
                    attempts: 1
                },
                Interrupted {
                    message_id: 0x200,
                    index: 0,
                    attempts: 2
                },
            ]
        );
        drop(j);
        // Read once: the reopened journal starts empty.
        let (_, found) = AttemptJournal::open(&dir.0).unwrap();
        assert!(found.is_empty());
        // Growing: more attempts at once than the file has slots.
        let (mut j, _) = AttemptJournal::open(&dir.0).unwrap();
        for i in 0..(SLOTS as u64 + 10) {
            j.start(rid(i, 0), i, 1);
        }
        drop(j);
        let (_, found) = AttemptJournal::open(&dir.0).unwrap();
        assert_eq!(found.len(), SLOTS + 10);
        assert_eq!(
            std::fs::metadata(dir.0.join("attempts")).unwrap().len(),
            (2 * SLOTS * SLOT) as u64
        );
        // A file of another size is rewritten, not trusted.
        std::fs::write(dir.0.join("attempts"), b"garbage!").unwrap();
        let (_, found) = AttemptJournal::open(&dir.0).unwrap();
        assert!(found.is_empty());
        assert_eq!(
            std::fs::metadata(dir.0.join("attempts")).unwrap().len(),
            (SLOTS * SLOT) as u64
        );
    }
}
