//! The index: what is queued, where it lives on disk, and each recipient's state.
//!
//! Two flat tables and a domain interner, nothing per message or recipient on the heap: the tables
//! are [`Table`]s, kept in unnamed mapped files in the spool directory (the heap when that fails or
//! the spool is read-only), so the kernel pages them like the segments and the process's anonymous
//! memory stays flat as the queue grows.
//!
//! - [`MessageSlot`] (44 bytes): id, record location and size, range of its recipients, submission
//!   time, priority, flags, number of live recipients, and a key its owner may set (the engine keeps
//!   its own message id there, see [`super::Spool::keyed`]). Sorted by id (ids grow with every submission),
//!   so lookup is a binary search and needs no hash table.
//! - [`RcptSlot`] (20 bytes): interned domain, next attempt time, attempts, state, and the location of
//!   the record holding its latest state (the last reply summary is read from there, on demand).
//!
//! A one-recipient message therefore costs 64 bytes of table; each further recipient of the same
//! message 20.
//! Addresses, envelopes and bodies stay in the mapped segments. Entries of finished messages are left
//! as tombstones and swept when they outnumber the live ones.
//!
//! During recovery, a message record can come out of id order (compaction rewrites old messages into
//! the newest segment); those few go to a side table with a hash map until [`Index::finish`] merges them.

use super::table::{Backing, Plain, Table};

/// A message in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct MessageSlot {
    id_lo: u32,
    id_hi: u32,
    /// Segment holding the message record.
    pub segment: u32,
    /// Offset of the record in that segment.
    pub offset: u32,
    /// Bytes the record occupies.
    pub span: u32,
    /// Index of the first recipient in the recipient table.
    pub first_rcpt: u32,
    /// Unix time of submission (seconds, saturating at 2106).
    pub submitted: u32,
    /// Recipients of the message.
    pub rcpt_count: u16,
    /// Recipients not yet in a final state; 0 means the message is finished (a tombstone).
    pub live: u16,
    /// Priority byte.
    pub priority: u8,
    /// Flags byte.
    pub flags: u8,
    key_lo: u32,
    key_hi: u32,
}

impl MessageSlot {
    /// A slot for message `id`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        segment: u32,
        offset: u32,
        span: u32,
        first_rcpt: u32,
        submitted: u32,
        rcpt_count: u16,
        priority: u8,
        flags: u8,
    ) -> MessageSlot {
        MessageSlot {
            id_lo: id as u32,
            id_hi: (id >> 32) as u32,
            segment,
            offset,
            span,
            first_rcpt,
            submitted,
            rcpt_count,
            live: 0,
            priority,
            flags,
            key_lo: 0,
            key_hi: 0,
        }
    }

    /// The owner's key ([`super::Spool::set_key`]); 0 until set.
    pub fn key(&self) -> u64 {
        u64::from(self.key_hi) << 32 | u64::from(self.key_lo)
    }

    /// Sets the owner's key.
    pub fn set_key(&mut self, key: u64) {
        self.key_lo = key as u32;
        self.key_hi = (key >> 32) as u32;
    }

    /// The message id.
    pub fn id(&self) -> u64 {
        u64::from(self.id_hi) << 32 | u64::from(self.id_lo)
    }

    /// The range of its recipients in the recipient table.
    pub fn rcpts(&self) -> std::ops::Range<usize> {
        let a = self.first_rcpt as usize;
        a..a + usize::from(self.rcpt_count)
    }
}

/// A recipient in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct RcptSlot {
    /// Interned destination domain.
    pub domain: u32,
    /// Unix time of the next attempt (seconds, saturating).
    pub next_attempt: u32,
    /// Segment of the record holding the latest state.
    pub seg: u32,
    /// Offset of that record.
    pub off: u32,
    /// Attempts made.
    pub attempts: u16,
    /// State byte ([`super::RecipientState`]).
    pub state: u8,
}

/// Where a message slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRef {
    /// In the sorted table.
    Main(usize),
    /// In the out-of-order side table (recovery only).
    Late(usize),
}

// SAFETY: `repr(C)`, integer fields only (the id and key are split in two `u32`s each), alignment 4.
unsafe impl Plain for MessageSlot {}
// SAFETY: `repr(C)`, integer fields only, alignment 4.
unsafe impl Plain for RcptSlot {}

/// The index.
#[derive(Debug, Default)]
pub struct Index {
    backing: Backing,
    messages: Table<MessageSlot>,
    late: Vec<MessageSlot>,
    late_ids: crate::FastMap<u64, usize>,
    /// The recipient table.
    pub rcpts: Table<RcptSlot>,
    dead: usize,
    domains: Vec<Box<str>>,
    domain_ids: crate::FastMap<Box<str>, u32>,
}

impl Index {
    /// An empty index whose tables are kept as `backing` says.
    pub fn new(backing: Backing) -> Index {
        Index {
            messages: Table::new(&backing),
            rcpts: Table::new(&backing),
            backing,
            ..Index::default()
        }
    }

    /// Whether both tables live in mapped files.
    pub fn is_mapped(&self) -> bool {
        self.messages.is_mapped() && self.rcpts.is_mapped()
    }

    /// Finds a message (live or tombstone).
    pub fn find(&self, id: u64) -> Option<SlotRef> {
        // Ids are handed out in order and the table is only thinned by rebuilds: counted back from
        // the newest (or on from the oldest) message, the id usually sits exactly there.
        if let (Some(first), Some(last)) = (self.messages.first(), self.messages.last()) {
            let n = self.messages.len() as u64;
            let guesses = [
                last.id()
                    .checked_sub(id)
                    .and_then(|back| (n - 1).checked_sub(back)),
                id.checked_sub(first.id()).filter(|&on| on < n),
            ];
            for i in guesses.into_iter().flatten() {
                if self.messages[i as usize].id() == id {
                    return Some(SlotRef::Main(i as usize));
                }
            }
            // Outside the table's range (a new message is above it): no search.
            if (first.id()..=last.id()).contains(&id)
                && let Ok(i) = self.messages.binary_search_by_key(&id, |m| m.id())
            {
                return Some(SlotRef::Main(i));
            }
        }
        self.late_ids.get(&id).map(|&i| SlotRef::Late(i))
    }

    /// The messages of the sorted table whose keys lie in `lo..=hi` (keys must not decrease along the
    /// table for this to be meaningful), then those of the side table.
    pub fn keyed(&self, lo: u64, hi: u64) -> impl Iterator<Item = &MessageSlot> + '_ {
        let i = self.messages.partition_point(|m| m.key() < lo);
        self.messages[i..]
            .iter()
            .take_while(move |m| m.key() <= hi)
            .chain(
                self.late
                    .iter()
                    .filter(move |m| (lo..=hi).contains(&m.key())),
            )
    }

    /// The slot.
    pub fn slot(&self, r: SlotRef) -> &MessageSlot {
        match r {
            SlotRef::Main(i) => &self.messages[i],
            SlotRef::Late(i) => &self.late[i],
        }
    }

    /// The slot, mutably.
    pub fn slot_mut(&mut self, r: SlotRef) -> &mut MessageSlot {
        match r {
            SlotRef::Main(i) => &mut self.messages[i],
            SlotRef::Late(i) => &mut self.late[i],
        }
    }

    /// Adds a message that is not in the index yet, with its recipients, and returns where it went.
    /// A message whose id is below the largest one goes to the side table.
    pub fn insert(&mut self, slot: MessageSlot, rcpts: impl Iterator<Item = RcptSlot>) -> SlotRef {
        let mut slot = slot;
        slot.first_rcpt = self.rcpts.len() as u32;
        self.rcpts.extend(rcpts);
        if self.messages.last().is_none_or(|m| m.id() < slot.id()) {
            self.messages.push(slot);
            SlotRef::Main(self.messages.len() - 1)
        } else {
            self.late.push(slot);
            self.late_ids.insert(slot.id(), self.late.len() - 1);
            SlotRef::Late(self.late.len() - 1)
        }
    }

    /// Notes that a message became a tombstone.
    pub fn mark_dead(&mut self) {
        self.dead += 1;
    }

    /// Interns a domain (lower-cased ASCII) and returns its number.
    pub fn intern(&mut self, domain: &str) -> u32 {
        if !domain.bytes().any(|b| b.is_ascii_uppercase()) {
            if let Some(&n) = self.domain_ids.get(domain) {
                return n;
            }
            return self.add_domain(domain.into());
        }
        let lower = domain.to_ascii_lowercase();
        if let Some(&n) = self.domain_ids.get(lower.as_str()) {
            return n;
        }
        self.add_domain(lower.into_boxed_str())
    }

    fn add_domain(&mut self, d: Box<str>) -> u32 {
        let n = self.domains.len() as u32;
        self.domains.push(d.clone());
        self.domain_ids.insert(d, n);
        n
    }

    /// The domain with number `n`.
    pub fn domain(&self, n: u32) -> &str {
        self.domains.get(n as usize).map_or("", |d| d)
    }

    /// Number of interned domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The sorted message table (tombstones included; skip slots with `live == 0`).
    pub fn messages(&self) -> &[MessageSlot] {
        &self.messages
    }

    /// Sweeps tombstones and merges the side table if tombstones are at least half of the table (or
    /// always, with `force`). Recipient indexes change; message ids do not.
    pub fn sweep(&mut self, force: bool) {
        let total = self.messages.len() + self.late.len();
        if self.dead == 0 && self.late.is_empty() {
            if force {
                self.messages.shrink_to_fit();
                self.rcpts.shrink_to_fit();
            }
            return;
        }
        if !force && (self.dead < 1024 || self.dead * 2 < total) {
            return;
        }
        let live: usize = self
            .messages
            .iter()
            .chain(&self.late)
            .filter(|m| m.live > 0)
            .count();
        let mut messages: Table<MessageSlot> = Table::with_capacity(&self.backing, live);
        let live_rcpts: usize = self
            .messages
            .iter()
            .chain(&self.late)
            .filter(|m| m.live > 0)
            .map(|m| usize::from(m.rcpt_count))
            .sum();
        let mut rcpts = Table::with_capacity(&self.backing, live_rcpts);
        let mut sorted = true;
        for m in self.messages.iter().chain(&self.late) {
            if m.live == 0 {
                continue;
            }
            let mut m = *m;
            let range = m.rcpts();
            m.first_rcpt = rcpts.len() as u32;
            rcpts.extend_from_slice(&self.rcpts[range]);
            if messages
                .last()
                .is_some_and(|p: &MessageSlot| p.id() > m.id())
            {
                sorted = false;
            }
            messages.push(m);
        }
        if !sorted {
            messages.sort_unstable_by_key(|m| m.id());
        }
        self.messages = messages;
        self.rcpts = rcpts;
        self.late = Vec::new();
        self.late_ids = crate::FastMap::default();
        self.dead = 0;
    }

    /// Ends recovery: sweeps all tombstones, merges the side table, trims spare capacity.
    pub fn finish(&mut self) {
        self.sweep(true);
        self.domains.shrink_to_fit();
    }

    /// Heap bytes held by the index (capacity, not length, of every table; an estimate for the hash
    /// map of domains).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let domains: usize = self
            .domains
            .iter()
            .map(|d| 2 * d.len() + 2 * size_of::<Box<str>>() + 8)
            .sum();
        self.messages.heap_bytes()
            + self.late.capacity() * size_of::<MessageSlot>()
            + self.late_ids.capacity() * 24
            + self.rcpts.heap_bytes()
            + domains
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sizes_fit_the_budget() {
        assert_eq!(std::mem::size_of::<MessageSlot>(), 44);
        assert_eq!(std::mem::size_of::<RcptSlot>(), 20);
        assert!(std::mem::size_of::<MessageSlot>() + std::mem::size_of::<RcptSlot>() <= 64);
    }

    fn rc(d: u32) -> RcptSlot {
        RcptSlot {
            domain: d,
            next_attempt: 0,
            seg: 0,
            off: 0,
            attempts: 0,
            state: 0,
        }
    }

    #[test]
    fn out_of_order_ids_are_found_and_merged() {
        let mut ix = Index::default();
        for id in [10u64, 20, 30] {
            let r = ix.insert(
                MessageSlot::new(id, 1, 0, 8, 0, 0, 1, 0, 0),
                [rc(id as u32)].into_iter(),
            );
            ix.slot_mut(r).live = 1;
        }
        let r = ix.insert(
            MessageSlot::new(15, 2, 0, 8, 0, 0, 2, 0, 0),
            [rc(15), rc(16)].into_iter(),
        );
        assert_eq!(r, SlotRef::Late(0));
        ix.slot_mut(r).live = 2;
        let r20 = ix.find(20).unwrap();
        ix.slot_mut(r20).live = 0;
        ix.mark_dead();
        assert_eq!(ix.find(15), Some(SlotRef::Late(0)));
        ix.finish();
        let ids: Vec<u64> = ix.messages().iter().map(|m| m.id()).collect();
        assert_eq!(ids, vec![10, 15, 30]);
        let m15 = *ix.slot(ix.find(15).unwrap());
        assert_eq!(
            ix.rcpts[m15.rcpts()]
                .iter()
                .map(|r| r.domain)
                .collect::<Vec<_>>(),
            vec![15, 16]
        );
        assert!(ix.find(20).is_none());
    }

    #[test]
    fn domains_are_interned_case_insensitively() {
        let mut ix = Index::default();
        let a = ix.intern("Example.COM");
        let b = ix.intern("example.com");
        assert_eq!(a, b);
        assert_eq!(ix.domain(a), "example.com");
        assert_ne!(ix.intern("example.org"), a);
    }
}
