//! The spool: vmta's durability boundary, an append-only, memory-mapped persistent queue.
//!
//! A message accepted by [`Spool::submit`] survives `kill -9`, and under [`SyncPolicy::Sync`] a power
//! loss, until every recipient reaches a final state. One spool directory belongs to one engine shard.
//!
//! # Files
//!
//! `DIR/LOCK` (an exclusive `flock` while an engine has the spool open; it holds the owner's pid) and
//! `DIR/<8 hex digits>.seg`, the segments. A segment starts with a header (written twice, with a random
//! salt) followed by records, each framed with a length, a kind and two salted CRC32C checksums (one
//! over the header, one over the payload); see [`record`] for the byte layout. Three kinds of record:
//!
//! - **message**: the envelope (sender, tenant, metadata tags, priority, flags such as 8BITMIME and
//!   SMTPUTF8, submission time), each recipient with its state, and the body. Written once per
//!   message, in one record, so a message is either wholly there or not at all.
//! - **state**: one recipient's new state (queued, deferred until T, held, delivered, bounced, expired,
//!   cancelled), attempt count, next attempt time and a summary of the last reply.
//! - **cancel**: every live recipient of a message cancelled.
//!
//! # Writes and durability
//!
//! A new segment is pre-allocated with `fallocate` (64 MiB by default), so a full disk is reported
//! when a segment is created, as [`SpoolError::NoSpace`], and can never surface as a SIGBUS. Records
//! are written with `pwrite` at the segment's append position and read back through a shared,
//! read-only `mmap` of the same file (Linux has one page cache, so the mapping sees the write at once):
//! bodies are returned as `&[u8]` borrowed from the mapping, never copied. Writing with `pwrite`
//! instead of through a writable mapping is deliberate: a write error (`ENOSPC`, `EIO`) is returned to
//! the caller instead of raising a signal, and durability is one `fdatasync` of the file; `msync`
//! would only matter for pages dirtied through a mapping, which the spool never does.
//!
//! Every append returns a [`Ticket`]. Under [`SyncPolicy::Sync`], [`Spool::commit`] blocks until the
//! ticket is covered by an `fdatasync`, with **group commit** ([`Durability`]): one flush covers every
//! record appended before it started, whichever thread appended it and whichever thread waits. The
//! engine's shard thread owns the `Spool` (`&mut self`), drains its submission ring, appends each
//! message ([`Spool::append`]), then commits once and acknowledges the whole batch;
//! [`Spool::submit_batch`] does exactly that. Other threads that need to wait can clone the
//! [`Durability`] handle ([`Spool::durability`]) and wait for their tickets while the shard keeps
//! appending; the same protocol serves an `Arc<Mutex<Spool>>` shared by several submitting threads
//! (the lock is held for the `pwrite` only, the flush is shared). [`SyncPolicy::Interval`] acknowledges
//! after the write and a background thread flushes every N ms; [`SyncPolicy::None`] never flushes
//! except when a segment is sealed or compacted (for tests and benchmarks).
//!
//! **Write-behind** ([`Spool::hold_writes`]): the engine's shard holds the records of one loop pass
//! (its submissions and every state change) in memory, readable at once through the same calls, and
//! writes them with one `pwrite` when it commits at the end of the pass ([`Spool::commit`] and
//! [`Spool::flush`] write what is held first; so do a rotation, maintenance and dropping the spool).
//! With a **committer thread** ([`Spool::start_committer`]) the owner does not wait for the disk
//! either: [`Spool::commit_start`] writes what is held and asks the committer for the ticket,
//! [`Spool::commit_done`] says when it is durable, and the committer calls back after each flush.
//! A held record's ticket reaches group commit only once written, so nothing held is ever reported
//! durable. A failed write of held records fails their tickets ([`Spool::commit`] returns the error).
//!
//! If a write fails, the active segment is cut back to its last good record, sealed and left alone;
//! the next append starts a new segment. Every record accepted before is intact and the spool keeps
//! working once space is back. To let deliveries be recorded (and space be freed) on a full disk,
//! submissions may only fill a segment up to 7/8 and deferrals, holds and compaction copies up to
//! 15/16: the last sixteenth is kept for final outcomes (delivered, bounced, expired, cancelled),
//! so retries of undeliverable mail cannot use up the room its deliveries need.
//!
//! # Recovery
//!
//! [`Spool::open`] scans every segment in id order, validates every record (no length is trusted
//! before its checksum is), rebuilds the index and returns a [`RecoveryReport`]. A damaged record in
//! the middle is counted and skipped (the scan resynchronises at the next valid record); non-zero bytes
//! after the last valid record are a torn tail and are cut. A segment whose header is unreadable in both
//! copies is renamed to `*.seg.damaged` and reported; a header-less file from an interrupted segment
//! creation is removed. Recovery never panics on bad bytes (there is a fuzz target for it). Existing
//! segments are sealed on open and appends go to a new segment.
//!
//! # Space
//!
//! [`Spool::maintain`] (call it from the shard's timer) deletes every segment that holds nothing still
//! needed and compacts at most one segment per call: one whose live messages take less than a quarter
//! of it (or that is small), by rewriting its live messages (with their current states) and the
//! latest state records it holds into the active segment, flushing, then deleting it. A final-state
//! record is kept until the segment holding its message record is gone, so deleting segments in any
//! order can never bring a delivered recipient back. Disk use thus follows what is queued.
//!
//! # Memory
//!
//! The index costs 36 bytes per message plus 20 per recipient (56 for a one-recipient message) and the
//! interned domains; see [`index`] and the figures in `docs/spool.md`.
//!
//! # Not implemented
//!
//! Checksums guard against torn writes and bit rot, not against a malicious local user who can write
//! to the spool directory. Segments are not encrypted. Records are not replicated. A spool directory
//! must not be on a network file system (flock and mmap semantics). Reading a spool while an engine
//! has it open is refused (the `vmta queue` command says so) rather than racing the engine's writes.

pub mod commit;
pub mod index;
pub mod record;
mod segment;
pub mod table;

pub use commit::{Durability, Ticket};
pub use record::{MessageFlags, Priority, RecipientState};
pub use segment::SharedBody;

use crate::lockfile::{LockError, PidLock};
use index::{Index, MessageSlot, RcptSlot, SlotRef};
use record::{
    FormatError, Kind, MessageHead, MessageRecord, RECORD_HEADER_LEN, RecipientRecord,
    SEGMENT_HEADER_LEN, SegmentHeader, StateRecord,
};
use segment::Segment;
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before acknowledging, shared by concurrent appends (group commit). Survives power
    /// loss.
    Sync,
    /// Acknowledge after the write; a background thread flushes at this interval. Survives a process
    /// crash; a power loss can take the last interval.
    Interval(Duration),
    /// Never flush (except when sealing or compacting segments). Survives a process crash, not a
    /// power loss. For tests and benchmarks.
    None,
}

/// How to open a spool.
#[derive(Debug, Clone)]
pub struct Options {
    /// Durability policy.
    pub policy: SyncPolicy,
    /// Size of a new segment in bytes (pre-allocated). A message bigger than a segment gets a segment
    /// of its own. Default 64 MiB.
    pub segment_size: u64,
    /// Largest accepted body. Default 64 MiB, at most 512 MiB.
    pub max_body: usize,
    /// Compact a sealed segment when its live messages take less than this percentage of it. Default
    /// 25.
    pub compact_percent: u8,
    /// Open for inspection only: a shared lock, nothing written, appends fail with
    /// [`SpoolError::ReadOnly`].
    pub read_only: bool,
    /// A fixed checksum salt for new segments instead of a random one (for the fuzz corpus).
    #[doc(hidden)]
    pub fixed_salt: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            policy: SyncPolicy::Sync,
            segment_size: 64 << 20,
            max_body: 64 << 20,
            compact_percent: 25,
            read_only: false,
            fixed_salt: None,
        }
    }
}

/// A message's id: unique within a spool, growing with every submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for MessageId {
    type Err = std::num::ParseIntError;
    /// Parses the 16-hex-digit form printed by `Display`.
    fn from_str(s: &str) -> Result<MessageId, Self::Err> {
        u64::from_str_radix(s, 16).map(MessageId)
    }
}

/// One recipient of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecipientId {
    /// The message.
    pub message: MessageId,
    /// The recipient's position in the envelope.
    pub index: u16,
}

impl fmt::Display for RecipientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.message, self.index)
    }
}

/// What a submission carries besides the body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envelope<'a> {
    /// The envelope sender (`MAIL FROM`); empty for the null reverse-path.
    pub sender: &'a str,
    /// Recipient addresses (`RCPT TO`), `local@domain`.
    pub recipients: &'a [&'a str],
    /// The tenant (account) the message belongs to.
    pub tenant: &'a str,
    /// Metadata tags carried to events (campaign, message class, ...).
    pub tags: &'a [(&'a str, &'a str)],
    /// Priority.
    pub priority: Priority,
    /// Transport flags.
    pub flags: MessageFlags,
    /// Unix time of submission (seconds), from the engine's clock.
    pub submitted_at: u64,
}

/// A recipient's new state, as reported by the delivery code.
#[derive(Debug, Clone, Copy)]
pub struct StateChange<'a> {
    /// The new state.
    pub state: RecipientState,
    /// Attempts made so far.
    pub attempts: u16,
    /// Unix time (seconds) of the next attempt, for `Deferred`; 0 otherwise.
    pub next_attempt: u64,
    /// Summary of the last reply (cut to 512 bytes), e.g. `451 4.7.1 greylisted`.
    pub reply: &'a str,
}

/// How much of the active segment a record may use (see [`Spool::write`]). On a full disk new
/// messages are refused first, then retry bookkeeping; final outcomes (delivered, bounced,
/// cancelled) get the last room, since a final outcome not recorded means a delivery repeated after
/// a restart and a segment that can never be freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// A new message: up to seven eighths of a segment.
    Submission,
    /// A deferral, a hold, a compaction copy: up to fifteen sixteenths.
    Progress,
    /// A final state or a cancel: the whole segment.
    Final,
}

/// Errors of the spool.
#[derive(Debug)]
pub enum SpoolError {
    /// Another process (the pid, if known) has the spool open.
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// The pid written in the lock file.
        holder: Option<u32>,
    },
    /// The disk (or quota) is full. Nothing was accepted by this call; everything accepted before is
    /// intact and the spool works again once space is freed.
    NoSpace,
    /// A file operation failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The flush that should have made this append durable failed: it is not acknowledged (it may or
    /// may not survive a crash).
    Sync(io::Error),
    /// The spool was opened read-only.
    ReadOnly,
    /// No queued message has this id (never existed, or all its recipients are final).
    UnknownMessage(MessageId),
    /// The message has no recipient with this index.
    UnknownRecipient(RecipientId),
    /// The recipient is already in a final state.
    AlreadyFinal(RecipientId),
    /// The envelope breaks a rule (the text says which).
    InvalidEnvelope(&'static str),
    /// The body is larger than [`Options::max_body`].
    TooLarge {
        /// The body size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A record of the index could not be read back (the segment was damaged after recovery).
    Damaged(FormatError),
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Locked {
                dir,
                holder: Some(pid),
            } => {
                write!(
                    f,
                    "spool {} is in use by another process (pid {pid})",
                    dir.display()
                )
            }
            SpoolError::Locked { dir, holder: None } => {
                write!(f, "spool {} is in use by another process", dir.display())
            }
            SpoolError::NoSpace => {
                f.write_str("no space left on the spool's file system: submission refused")
            }
            SpoolError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            SpoolError::Sync(e) => write!(f, "flushing the spool failed: {e}"),
            SpoolError::ReadOnly => f.write_str("spool opened read-only"),
            SpoolError::UnknownMessage(id) => write!(f, "no queued message {id}"),
            SpoolError::UnknownRecipient(r) => write!(f, "no recipient {r}"),
            SpoolError::AlreadyFinal(r) => write!(f, "recipient {r} is already in a final state"),
            SpoolError::InvalidEnvelope(why) => write!(f, "invalid envelope: {why}"),
            SpoolError::TooLarge { size, max } => {
                write!(f, "message body of {size} bytes exceeds {max}")
            }
            SpoolError::Damaged(e) => write!(f, "spool record unreadable: {e}"),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            SpoolError::Sync(e) => Some(e),
            _ => None,
        }
    }
}

fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn io_err(op: &'static str, path: &Path, e: io::Error) -> SpoolError {
    if is_no_space(&e) {
        SpoolError::NoSpace
    } else {
        SpoolError::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// What recovery found when the spool was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: usize,
    /// Messages with at least one live recipient.
    pub messages: u64,
    /// Live (non-final) recipients.
    pub recipients: u64,
    /// Valid records read.
    pub records: u64,
    /// Damaged stretches skipped (each counted once, however long).
    pub corrupt_records: u64,
    /// Bytes in those stretches.
    pub corrupt_bytes: u64,
    /// Bytes of torn tails after the last valid record (cut unless read-only).
    pub truncated_bytes: u64,
    /// Valid records about messages that are not queued (already final, or whose message record was
    /// lost to damage).
    pub orphan_records: u64,
    /// Segment files removed at open: interrupted creations and segments holding nothing live.
    pub removed_segments: usize,
    /// Segment files whose header was unreadable, renamed to `*.seg.damaged`.
    pub damaged_segments: usize,
    /// Time the scan took.
    pub elapsed: Duration,
}

impl RecoveryReport {
    /// Adds another spool's report to this one (an engine's shards, each with its spool).
    pub fn add(&mut self, other: &RecoveryReport) {
        self.segments += other.segments;
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.records += other.records;
        self.corrupt_records += other.corrupt_records;
        self.corrupt_bytes += other.corrupt_bytes;
        self.truncated_bytes += other.truncated_bytes;
        self.orphan_records += other.orphan_records;
        self.removed_segments += other.removed_segments;
        self.damaged_segments += other.damaged_segments;
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

/// Counters of a spool, for monitoring and the `vmta queue` command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages with at least one live recipient.
    pub messages: u64,
    /// Live recipients.
    pub recipients: u64,
    /// Recipients of those messages by state (indexed by `RecipientState as usize`; final states count
    /// recipients done within messages still queued).
    pub by_state: [u64; 7],
    /// Submission time of the oldest queued message.
    pub oldest_submitted: Option<u64>,
    /// Segment files.
    pub segments: usize,
    /// Bytes of segment files on disk (pre-allocated space included).
    pub disk_bytes: u64,
    /// Bytes holding records.
    pub used_bytes: u64,
    /// Heap bytes of the index (its tables live in mapped files unless that failed).
    pub index_bytes: usize,
    /// Whether the index's tables live in mapped files (paged by the kernel) rather than the heap.
    pub index_mapped: bool,
    /// Distinct destination domains seen.
    pub domains: usize,
    /// Newest appended ticket.
    pub appended: Ticket,
    /// Newest durable ticket.
    pub durable: Ticket,
    /// `fdatasync` calls made by group commit.
    pub syncs: u64,
}

/// What one [`Spool::maintain`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Segment files deleted.
    pub deleted_segments: usize,
    /// Segments compacted (then deleted).
    pub compacted_segments: usize,
    /// Message records rewritten by compaction.
    pub moved_messages: u64,
    /// State records rewritten by compaction.
    pub moved_states: u64,
    /// Bytes of segment files removed.
    pub freed_bytes: u64,
}

/// A live recipient, as the scheduler sees it after a restart.
#[derive(Debug, Clone, Copy)]
pub struct QueuedRecipient<'a> {
    /// Which recipient.
    pub id: RecipientId,
    /// Destination domain (lower-case).
    pub domain: &'a str,
    /// Current state (never final).
    pub state: RecipientState,
    /// Attempts made.
    pub attempts: u16,
    /// Unix time of the next attempt (0: as soon as possible).
    pub next_attempt: u64,
    /// The message's priority.
    pub priority: Priority,
    /// The message's submission time.
    pub submitted_at: u64,
}

/// A queued message, borrowed from the mapping (zero-copy).
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    /// The id.
    pub id: MessageId,
    record: MessageRecord<'a>,
    segment: &'a Segment,
}

impl<'a> MessageView<'a> {
    /// The body as a [`SharedBody`]: the segment's mapping shared, not copied, so it stays valid
    /// for as long as it is held, whatever the spool does meanwhile.
    pub fn shared_body(&self) -> SharedBody {
        self.segment.share(self.record.body)
    }

    /// The envelope sender.
    pub fn sender(&self) -> &'a str {
        self.record.sender
    }
    /// The tenant.
    pub fn tenant(&self) -> &'a str {
        self.record.tenant
    }
    /// Metadata tags.
    pub fn tags(&self) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a> {
        self.record.tags()
    }
    /// Priority.
    pub fn priority(&self) -> Priority {
        self.record.priority
    }
    /// Flags.
    pub fn flags(&self) -> MessageFlags {
        self.record.flags
    }
    /// Unix time of submission.
    pub fn submitted_at(&self) -> u64 {
        self.record.submitted_at
    }
    /// Number of recipients.
    pub fn recipient_count(&self) -> u16 {
        self.record.rcpt_count
    }
    /// Recipient addresses in envelope order.
    pub fn recipient_addresses(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        self.record.recipients().map(|r| r.address)
    }
    /// The body.
    pub fn body(&self) -> &'a [u8] {
        self.record.body
    }

    /// The address of recipient `index`.
    pub fn recipient_address(&self, index: u16) -> Option<&'a str> {
        self.record.recipient(index).map(|r| r.address)
    }
}

/// A recipient's state as the index keeps it: no record is read to answer.
#[derive(Debug, Clone, Copy)]
pub struct RecipientStatus<'a> {
    /// Destination domain.
    pub domain: &'a str,
    /// Current state.
    pub state: RecipientState,
    /// Attempts made.
    pub attempts: u16,
    /// Unix time of the next attempt.
    pub next_attempt: u64,
}

/// One recipient with its current state.
#[derive(Debug, Clone, Copy)]
pub struct RecipientView<'a> {
    /// Which recipient.
    pub id: RecipientId,
    /// The address.
    pub address: &'a str,
    /// Destination domain.
    pub domain: &'a str,
    /// Current state.
    pub state: RecipientState,
    /// Attempts made.
    pub attempts: u16,
    /// Unix time of the next attempt.
    pub next_attempt: u64,
    /// Summary of the last reply, empty if none.
    pub last_reply: &'a str,
}

/// An open spool. See the module documentation.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    opts: Options,
    _lock: PidLock,
    segments: BTreeMap<u32, Segment>,
    active: Option<u32>,
    index: Index,
    next_message_id: u64,
    next_segment_id: u32,
    ticket: u64,
    durability: Durability,
    flusher: Option<JoinHandle<()>>,
    /// The committer thread ([`Spool::start_committer`]).
    committer: Option<JoinHandle<()>>,
    scratch: Vec<u8>,
    /// Write-behind: appends are held in the active segment until [`Spool::write_held`] (or a
    /// commit, flush, rotation or maintenance) writes them with one `pwrite`.
    holding: bool,
    /// The tickets of the held records (first, last), reported to group commit once written.
    held_tickets: Option<(u64, u64)>,
    salt_counter: u64,
    orphans: u64,
    /// Called before held records are written ([`Spool::set_before_write`]).
    before_write: BeforeWrite,
}

/// What the owner wants done before held records reach the file.
#[derive(Default)]
struct BeforeWrite(Option<Box<dyn FnMut() + Send>>);

impl std::fmt::Debug for BeforeWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

fn secs32(t: u64) -> u32 {
    t.min(u64::from(u32::MAX)) as u32
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

fn check_text(s: &str, what: &'static str) -> Result<(), SpoolError> {
    if s.len() > record::MAX_FIELD {
        return Err(SpoolError::InvalidEnvelope(what));
    }
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(SpoolError::InvalidEnvelope(what));
    }
    Ok(())
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, takes its lock and recovers its contents.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: Options,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        let started = Instant::now();
        if !opts.read_only {
            fs::create_dir_all(&dir).map_err(|e| io_err("create", &dir, e))?;
        }
        let lock = match PidLock::take(&dir.join("LOCK"), !opts.read_only) {
            Ok(l) => l,
            Err(LockError::Held(holder)) => return Err(SpoolError::Locked { dir, holder }),
            Err(LockError::Io(e)) => return Err(io_err("lock", &dir.join("LOCK"), e)),
        };
        let mut opts = opts;
        opts.segment_size = opts.segment_size.clamp(4096, 1 << 31);
        opts.max_body = opts.max_body.min(512 << 20);
        let backing = table::Backing {
            dir: (!opts.read_only).then(|| std::sync::Arc::from(dir.as_path())),
        };
        let mut spool = Spool {
            dir,
            opts,
            _lock: lock,
            segments: BTreeMap::new(),
            active: None,
            index: Index::new(backing),
            next_message_id: 1,
            next_segment_id: 1,
            ticket: 0,
            durability: Durability::new(),
            flusher: None,
            committer: None,
            scratch: Vec::new(),
            holding: false,
            held_tickets: None,
            salt_counter: 0,
            orphans: 0,
            before_write: BeforeWrite::default(),
        };
        let mut report = spool.recover()?;
        if !spool.opts.read_only {
            let before = spool.segments.len();
            spool.delete_unneeded()?;
            report.removed_segments += before - spool.segments.len();
            match spool.active.and_then(|a| spool.segments.get(&a)) {
                Some(seg) => spool.durability.set_file(Some(seg.file.clone())),
                None => match spool.new_active(0) {
                    // A full disk must not stop the engine from delivering what is queued: state
                    // changes will try to create a segment again, and so will submissions.
                    Ok(()) | Err(SpoolError::NoSpace) => {}
                    Err(e) => return Err(e),
                },
            }
            if let SyncPolicy::Interval(every) = spool.opts.policy {
                let d = spool.durability.clone();
                let every = every.max(Duration::from_millis(1));
                spool.flusher = Some(
                    std::thread::Builder::new()
                        .name("vmta-spool-flush".into())
                        .spawn(move || d.run_interval(every))
                        .map_err(|e| io_err("spawn flusher for", &spool.dir, e))?,
                );
            }
        }
        let stats = spool.stats();
        report.messages = stats.messages;
        report.recipients = stats.recipients;
        report.orphan_records = spool.orphans;
        report.elapsed = started.elapsed();
        Ok((spool, report))
    }

    fn recover(&mut self) -> Result<RecoveryReport, SpoolError> {
        let mut report = RecoveryReport::default();
        let rd = fs::read_dir(&self.dir).map_err(|e| io_err("read", &self.dir, e))?;
        let mut ids = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| io_err("read", &self.dir, e))?;
            if let Some(id) = entry.file_name().to_str().and_then(segment::parse_name) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let last = ids.last().copied();
        let writable = !self.opts.read_only;
        let mut max_id = 0u64;
        for id in ids {
            self.next_segment_id = self.next_segment_id.max(id.saturating_add(1));
            let path = self.dir.join(segment::file_name(id));
            let (file, map, len) =
                Segment::open(&path, writable).map_err(|e| io_err("open", &path, e))?;
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let header = match SegmentHeader::decode(bytes) {
                Ok(h) if h.id == id => h,
                _ => {
                    let blank = bytes.iter().all(|&b| b == 0);
                    drop(map);
                    drop(file);
                    if writable {
                        if blank {
                            fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
                            report.removed_segments += 1;
                        } else {
                            let to = path.with_extension("seg.damaged");
                            fs::rename(&path, &to).map_err(|e| io_err("rename", &path, e))?;
                            report.damaged_segments += 1;
                        }
                        segment::sync_dir(&self.dir).map_err(|e| io_err("sync", &self.dir, e))?;
                    } else if !blank {
                        report.damaged_segments += 1;
                    }
                    continue;
                }
            };
            max_id = max_id.max(header.next_message_id.saturating_sub(1));
            self.segments
                .insert(id, Segment::with(id, file, None, header.salt, len, len));
            let scan = {
                let bytes = map.as_deref().unwrap_or(&[]);
                record::scan(bytes, header.salt, |off, rec| {
                    report.records += 1;
                    max_id = max_id.max(self.apply(id, off as u32, rec));
                })
            };
            report.segments += 1;
            report.corrupt_records += scan.corrupt_records;
            report.corrupt_bytes += scan.corrupt_bytes;
            report.truncated_bytes += scan.torn_bytes;
            let seg = self.segments.get_mut(&id).expect("inserted above");
            seg.put_map(map);
            seg.used = scan.end as u64;
            let room = seg.capacity.saturating_sub(seg.used);
            if writable && Some(id) == last && room > self.opts.segment_size / 4 {
                // The segment that was active when the engine stopped: keep appending to it (its space
                // is already reserved, which matters when the disk is full). A torn tail is zeroed.
                if scan.torn_bytes > 0 {
                    seg.zero(seg.used, scan.torn_bytes)
                        .map_err(|e| io_err("clear torn tail of", &path, e))?;
                }
                self.active = Some(id);
            } else if writable {
                seg.seal().map_err(|e| io_err("truncate", &path, e))?;
            } else {
                seg.sealed = true;
            }
            self.index.sweep(false);
        }
        self.index.finish();
        self.next_message_id = max_id.saturating_add(1).max(self.next_message_id);
        Ok(report)
    }

    /// Applies one valid record (at recovery, and after each append). Returns the message id it names.
    fn apply(&mut self, seg: u32, off: u32, rec: record::RecordRef<'_>) -> u64 {
        match rec.kind {
            Kind::Message => match MessageRecord::decode(rec.payload) {
                Ok(m) => {
                    self.apply_message(seg, off, rec.span as u32, &m);
                    m.id
                }
                Err(_) => {
                    self.orphans += 1;
                    record::peek_message_id(rec.payload).unwrap_or(0)
                }
            },
            Kind::State => match StateRecord::decode(rec.payload) {
                Ok(s) => {
                    self.apply_state(seg, off, &s);
                    s.id
                }
                Err(_) => {
                    self.orphans += 1;
                    0
                }
            },
            Kind::Cancel => match record::decode_cancel(rec.payload) {
                Ok(id) => {
                    self.apply_cancel(seg, off, id);
                    id
                }
                Err(_) => {
                    self.orphans += 1;
                    0
                }
            },
        }
    }

    fn seg_mut(&mut self, id: u32) -> Option<&mut Segment> {
        self.segments.get_mut(&id)
    }

    fn move_ref(&mut self, from: Option<u32>, to: u32) {
        if let Some(f) = from
            && let Some(s) = self.seg_mut(f)
        {
            s.state_refs = s.state_refs.saturating_sub(1);
        }
        if let Some(s) = self.seg_mut(to) {
            s.state_refs += 1;
        }
    }

    fn apply_message(&mut self, seg: u32, off: u32, span: u32, m: &MessageRecord<'_>) {
        if let Some(r) = self.index.find(m.id) {
            // A rewritten copy (compaction): it carries every recipient's current state.
            let old = *self.index.slot(r);
            if old.live == 0 || old.rcpt_count != m.rcpt_count {
                self.orphans += 1;
                return;
            }
            if let Some(s) = self.seg_mut(old.segment) {
                s.live_messages = s.live_messages.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(u64::from(old.span));
            }
            // The old record may survive (deletion pending or interrupted): this segment must outlive
            // that one, or the old copy could come back with stale states.
            if old.segment != seg {
                if let Some(s) = self.seg_mut(seg) {
                    s.final_pins += 1;
                }
                if let Some(s) = self.seg_mut(old.segment) {
                    s.unpin_on_delete.push((seg, 1));
                }
            }
            let mut live = 0u16;
            for (i, rr) in old.rcpts().zip(m.recipients()) {
                let prev = self.index.rcpts[i].seg;
                self.move_ref(Some(prev), seg);
                let slot = &mut self.index.rcpts[i];
                slot.state = rr.state as u8;
                slot.attempts = rr.attempts;
                slot.next_attempt = secs32(rr.next_attempt);
                slot.seg = seg;
                slot.off = off;
                if !rr.state.is_final() {
                    live += 1;
                }
            }
            let s = self.index.slot_mut(r);
            s.segment = seg;
            s.offset = off;
            s.span = span;
            s.live = live;
            if let Some(sg) = self.seg_mut(seg) {
                sg.live_messages += 1;
                sg.live_bytes += u64::from(span);
            }
            if live == 0 {
                self.message_died(r);
            }
            return;
        }
        let slot = MessageSlot::new(
            m.id,
            seg,
            off,
            span,
            0,
            secs32(m.submitted_at),
            m.rcpt_count,
            m.priority as u8,
            m.flags.0,
        );
        let mut live = 0u16;
        let mut rcpts = Vec::with_capacity(usize::from(m.rcpt_count));
        for rr in m.recipients() {
            if !rr.state.is_final() {
                live += 1;
            }
            rcpts.push(RcptSlot {
                domain: self.index.intern(domain_of(rr.address)),
                next_attempt: secs32(rr.next_attempt),
                seg,
                off,
                attempts: rr.attempts,
                state: rr.state as u8,
            });
        }
        let r = self.index.insert(slot, rcpts.into_iter());
        self.index.slot_mut(r).live = live;
        if let Some(sg) = self.seg_mut(seg) {
            sg.live_messages += 1;
            sg.live_bytes += u64::from(span);
            sg.state_refs += u32::from(m.rcpt_count);
        }
        if live == 0 {
            self.message_died(r);
        }
    }

    fn apply_state(&mut self, seg: u32, off: u32, s: &StateRecord<'_>) {
        let Some(r) = self.index.find(s.id) else {
            self.orphans += 1;
            return;
        };
        let m = *self.index.slot(r);
        if m.live == 0 || s.rcpt >= m.rcpt_count {
            self.orphans += 1;
            return;
        }
        let i = m.first_rcpt as usize + usize::from(s.rcpt);
        let prev = self.index.rcpts[i];
        self.move_ref(Some(prev.seg), seg);
        let slot = &mut self.index.rcpts[i];
        slot.state = s.state as u8;
        slot.attempts = s.attempts;
        slot.next_attempt = secs32(s.next_attempt);
        slot.seg = seg;
        slot.off = off;
        let was_final = RecipientState::from_u8(prev.state).is_some_and(|p| p.is_final());
        let live = match (was_final, s.state.is_final()) {
            (false, true) => m.live - 1,
            (true, false) => m.live + 1,
            _ => m.live,
        };
        self.index.slot_mut(r).live = live;
        if live == 0 {
            self.message_died(r);
        }
    }

    fn apply_cancel(&mut self, seg: u32, off: u32, id: u64) {
        let Some(r) = self.index.find(id) else {
            self.orphans += 1;
            return;
        };
        let m = *self.index.slot(r);
        if m.live == 0 {
            self.orphans += 1;
            return;
        }
        for i in m.rcpts() {
            let prev = self.index.rcpts[i];
            if RecipientState::from_u8(prev.state).is_some_and(|p| p.is_final()) {
                continue;
            }
            self.move_ref(Some(prev.seg), seg);
            let slot = &mut self.index.rcpts[i];
            slot.state = RecipientState::Cancelled as u8;
            slot.seg = seg;
            slot.off = off;
        }
        self.index.slot_mut(r).live = 0;
        self.message_died(r);
    }

    /// A message's last recipient became final: its records stop counting as live, and the segments
    /// holding its final states are pinned until the segment holding its message record is deleted.
    fn message_died(&mut self, r: SlotRef) {
        let m = *self.index.slot(r);
        if let Some(s) = self.seg_mut(m.segment) {
            s.live_messages = s.live_messages.saturating_sub(1);
            s.live_bytes = s.live_bytes.saturating_sub(u64::from(m.span));
        }
        let mut pins: Vec<(u32, u32)> = Vec::new();
        for i in m.rcpts() {
            let at = self.index.rcpts[i].seg;
            if let Some(s) = self.seg_mut(at) {
                s.state_refs = s.state_refs.saturating_sub(1);
            }
            if at != m.segment {
                match pins.iter_mut().find(|(s, _)| *s == at) {
                    Some(p) => p.1 += 1,
                    None => pins.push((at, 1)),
                }
            }
        }
        for &(at, n) in &pins {
            if let Some(s) = self.seg_mut(at) {
                s.final_pins += n;
            }
        }
        if let Some(s) = self.seg_mut(m.segment) {
            for (at, n) in pins {
                match s.unpin_on_delete.iter_mut().find(|(x, _)| *x == at) {
                    Some(p) => p.1 += n,
                    None => s.unpin_on_delete.push((at, n)),
                }
            }
        }
        self.index.mark_dead();
    }

    fn writable(&self) -> Result<(), SpoolError> {
        if self.opts.read_only {
            Err(SpoolError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn new_salt(&mut self) -> u64 {
        if let Some(s) = self.opts.fixed_salt {
            return s;
        }
        use std::hash::{BuildHasher, Hasher};
        self.salt_counter += 1;
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(self.salt_counter);
        h.write_u32(self.next_segment_id);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    }

    /// Creates a new active segment with room for a record of `need` bytes, flushes and seals the old
    /// one. On failure the old active segment stays active.
    fn new_active(&mut self, need: u64) -> Result<(), SpoolError> {
        let id = self.next_segment_id;
        let reserve = self.opts.segment_size / 8;
        let capacity = self
            .opts
            .segment_size
            .max((SEGMENT_HEADER_LEN as u64 + need + reserve + 4095) & !4095);
        let header = SegmentHeader {
            id,
            salt: self.new_salt(),
            next_message_id: self.next_message_id,
        };
        let seg = Segment::create(&self.dir, id, capacity, header)
            .map_err(|e| io_err("create segment", &self.dir.join(segment::file_name(id)), e))?;
        self.next_segment_id += 1;
        self.retire_active();
        self.durability.set_file(Some(seg.file.clone()));
        self.segments.insert(id, seg);
        self.active = Some(id);
        Ok(())
    }

    /// Flushes (unless the policy is `None`) and seals the active segment; appends need a new one.
    fn retire_active(&mut self) {
        if self.active.is_none() {
            return;
        }
        // A failure is recorded against the held tickets; the segment is retired either way.
        let _ = self.write_held();
        let Some(id) = self.active.take() else {
            return;
        };
        if self.opts.policy != SyncPolicy::None {
            // An error is recorded in the durability handle for the tickets it covered.
            let _ = self.durability.flush();
        }
        self.durability.set_file(None);
        if let Some(s) = self.segments.get_mut(&id) {
            // A failed cut leaves zeros or a partial record after `used`: recovery handles both.
            let _ = s.seal();
        }
    }

    /// Appends the framed record in `buf` (its checksums are recomputed for the target segment)
    /// where `room` lets it: submissions keep the last eighth of a segment free, retries and
    /// compaction the last sixteenth, so final outcomes can still be recorded on a full disk.
    fn write(&mut self, buf: &mut [u8], room: Room) -> Result<(u32, u32, Ticket), SpoolError> {
        self.writable()?;
        if self.durability.poisoned() {
            self.retire_active();
        }
        let len = buf.len() as u64;
        let reserve = self.opts.segment_size / 8;
        let mut rotated = false;
        loop {
            let fits = self
                .active
                .and_then(|a| self.segments.get(&a))
                .is_some_and(|s| {
                    let limit = match room {
                        Room::Submission => s.capacity.saturating_sub(reserve),
                        Room::Progress => s.capacity.saturating_sub(reserve / 2),
                        Room::Final => s.capacity,
                    };
                    s.used + len <= limit
                });
            if fits {
                break;
            }
            if rotated {
                return Err(SpoolError::NoSpace);
            }
            self.new_active(len)?;
            rotated = true;
        }
        let id = self.active.expect("checked above");
        let seg = self.segments.get_mut(&id).expect("active segment exists");
        record::reseal(buf, seg.salt);
        if self.holding {
            let off = seg
                .hold(buf)
                .map_err(|e| io_err("write", &seg.path(&self.dir), e))?;
            self.ticket += 1;
            let t = self.ticket;
            self.held_tickets = Some(self.held_tickets.map_or((t, t), |(first, _)| (first, t)));
            if seg.held_len() >= HELD_MAX {
                self.write_held()?;
            }
            return Ok((id, off as u32, Ticket(t)));
        }
        match seg.append(buf) {
            Ok(off) => {
                self.ticket += 1;
                self.durability.appended(Ticket(self.ticket));
                Ok((id, off as u32, Ticket(self.ticket)))
            }
            Err(e) => {
                let path = seg.path(&self.dir);
                self.retire_active();
                Err(io_err("write", &path, e))
            }
        }
    }

    /// Holds appends in memory from now on (write-behind), until [`Spool::write_held`], a commit or
    /// a flush writes them together with one `pwrite`; or writes each at once again (`false`, after
    /// writing what is held). A held record is readable at once but not yet in the file: the owner
    /// commits (or writes them) before it reports anything appended as accepted, and writes them
    /// soon under [`SyncPolicy::Interval`] and [`SyncPolicy::None`], whose flusher sees only what
    /// is written.
    pub fn hold_writes(&mut self, on: bool) -> Result<(), SpoolError> {
        if !on {
            self.write_held()?;
        }
        self.holding = on;
        Ok(())
    }

    /// Whether appended records are held in memory, not yet written to the file.
    pub fn holds_records(&self) -> bool {
        self.held_tickets.is_some()
    }

    /// Has `f` called every time held records are about to be written to the file, before the
    /// `pwrite` (a write-ahead hook: the engine writes the event-log lines of those records there,
    /// so no record reaches the file before its line).
    pub fn set_before_write(&mut self, f: Box<dyn FnMut() + Send>) {
        self.before_write = BeforeWrite(Some(f));
    }

    /// Writes the held records (one `pwrite`). On failure they are lost to the file: their tickets
    /// fail in group commit, the segment is retired, and the error is returned.
    pub fn write_held(&mut self) -> Result<(), SpoolError> {
        let Some((first, last)) = self.held_tickets.take() else {
            return Ok(());
        };
        if let Some(f) = &mut self.before_write.0 {
            f();
        }
        let Some(seg) = self.active.and_then(|a| self.segments.get_mut(&a)) else {
            // Unreachable: retiring the active segment writes what it holds first.
            self.durability.fail(first, last, io::ErrorKind::Other);
            return Err(SpoolError::Sync(io::Error::other(
                "held records without a segment",
            )));
        };
        match seg.write_held() {
            Ok(()) => {
                self.durability.appended(Ticket(last));
                Ok(())
            }
            Err(e) => {
                let path = seg.path(&self.dir);
                self.durability.fail(first, last, e.kind());
                self.retire_active();
                Err(io_err("write", &path, e))
            }
        }
    }

    /// A record in the scratch buffer, without checksums: [`Spool::write`] seals it for the
    /// segment it lands in.
    fn frame(&mut self, kind: Kind, payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        record::encode_unsealed(&mut buf, kind, payload);
        buf
    }

    fn validate(&self, env: &Envelope<'_>, body: &[u8]) -> Result<(), SpoolError> {
        if body.len() > self.opts.max_body {
            return Err(SpoolError::TooLarge {
                size: body.len(),
                max: self.opts.max_body,
            });
        }
        if env.recipients.is_empty() {
            return Err(SpoolError::InvalidEnvelope("no recipients"));
        }
        if env.recipients.len() > record::MAX_RECIPIENTS {
            return Err(SpoolError::InvalidEnvelope("more than 65535 recipients"));
        }
        if env.tags.len() > record::MAX_TAGS {
            return Err(SpoolError::InvalidEnvelope("more than 256 tags"));
        }
        check_text(env.sender, "sender too long or has control characters")?;
        check_text(env.tenant, "tenant too long or has control characters")?;
        for (k, v) in env.tags {
            check_text(k, "tag too long or has control characters")?;
            check_text(v, "tag too long or has control characters")?;
        }
        for r in env.recipients {
            check_text(r, "recipient too long or has control characters")?;
            if domain_of(r).is_empty() {
                return Err(SpoolError::InvalidEnvelope("recipient without @domain"));
            }
        }
        Ok(())
    }

    /// Writes a message (one record: envelope, recipients in state `Queued`, body) and indexes it. The
    /// message is acknowledged once [`Spool::commit`] of the returned ticket returns.
    pub fn append(
        &mut self,
        env: &Envelope<'_>,
        body: &[u8],
    ) -> Result<(MessageId, Ticket), SpoolError> {
        self.writable()?;
        self.validate(env, body)?;
        let id = self.next_message_id;
        let head = MessageHead {
            id,
            submitted_at: env.submitted_at,
            priority: env.priority,
            flags: env.flags,
            sender: env.sender,
            tenant: env.tenant,
            tags: env.tags,
        };
        let rcpts = env.recipients.iter().map(|a| RecipientRecord {
            address: a,
            state: RecipientState::Queued,
            attempts: 0,
            next_attempt: 0,
            reply: "",
        });
        let mut buf = self.frame(Kind::Message, |o| {
            record::encode_message(o, &head, env.recipients.len(), rcpts, body)
        });
        let r = self.write(&mut buf, Room::Submission);
        let out = r.and_then(|(seg, off, t)| {
            self.next_message_id += 1;
            // Framed just now: the header check is enough.
            let rec = record::decode_verified_record(&buf, 0, self.segments[&seg].salt)
                .map_err(SpoolError::Damaged)?;
            self.apply(seg, off, rec);
            Ok((MessageId(id), t))
        });
        self.scratch = buf;
        out
    }

    /// Waits until `ticket` is durable under the policy: under `Sync` it shares one `fdatasync` with
    /// every append made before the flush starts; under `Interval` and `None` it returns at once.
    pub fn commit(&mut self, ticket: Ticket) -> Result<(), SpoolError> {
        self.write_held()?;
        match self.opts.policy {
            SyncPolicy::Sync => self.durability.wait(ticket).map_err(SpoolError::Sync),
            _ => Ok(()),
        }
    }

    /// Starts making `ticket` durable without waiting for it when a committer thread runs
    /// ([`Spool::start_committer`]): writes what is held and asks the committer, whose flush covers
    /// every ticket asked for before it starts. Without a committer it is [`Spool::commit`].
    /// [`Spool::commit_done`] tells when the ticket is durable.
    pub fn commit_start(&mut self, ticket: Ticket) -> Result<(), SpoolError> {
        // A committer runs only under `Sync` (`start_committer`).
        if self.committer.is_none() {
            return self.commit(ticket);
        }
        self.write_held()?;
        self.durability.request(ticket);
        Ok(())
    }

    /// Whether a ticket passed to [`Spool::commit_start`] is durable under the policy: `None` while
    /// its flush is still to come, the flush's error if it failed (the tickets it covered were not
    /// made durable; the next append moves to a fresh segment).
    pub fn commit_done(&self, ticket: Ticket) -> Option<Result<(), SpoolError>> {
        match self.opts.policy {
            SyncPolicy::Sync => self
                .durability
                .ready(ticket)
                .map(|r| r.map_err(SpoolError::Sync)),
            _ => Some(Ok(())),
        }
    }

    /// Starts the committer thread of a `Sync` spool (does nothing under another policy): it runs
    /// the `fdatasync`s that [`Spool::commit_start`] asks for, off the owner's thread, and calls
    /// `flushed` after each so the owner can look at [`Spool::commit_done`].
    pub fn start_committer(
        &mut self,
        name: String,
        flushed: Box<dyn Fn() + Send>,
    ) -> Result<(), SpoolError> {
        if self.opts.policy != SyncPolicy::Sync || self.committer.is_some() || self.opts.read_only {
            return Ok(());
        }
        let d = self.durability.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || d.run_committer(&*flushed))
            .map_err(|e| io_err("spawn committer for", &self.dir, e))?;
        self.committer = Some(handle);
        Ok(())
    }

    /// Makes everything appended so far durable, whatever the policy.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.write_held()?;
        self.durability.flush().map_err(SpoolError::Sync)
    }

    /// The group-commit handle, to wait for tickets from another thread.
    pub fn durability(&self) -> Durability {
        self.durability.clone()
    }

    /// Appends and commits one message: returns once it is durable under the policy.
    pub fn submit(&mut self, env: &Envelope<'_>, body: &[u8]) -> Result<MessageId, SpoolError> {
        let (id, t) = self.append(env, body)?;
        self.commit(t)?;
        Ok(id)
    }

    /// Appends every message, then commits once (group commit within one thread). Each result says
    /// whether that message was accepted; a message whose append failed was not written.
    pub fn submit_batch(
        &mut self,
        batch: &[(Envelope<'_>, &[u8])],
    ) -> Vec<Result<MessageId, SpoolError>> {
        let mut out: Vec<Result<MessageId, SpoolError>> = Vec::with_capacity(batch.len());
        let mut last = None;
        for (env, body) in batch {
            out.push(self.append(env, body).map(|(id, t)| {
                last = Some(t);
                id
            }));
        }
        if let Some(t) = last
            && let Err(e) = self.commit(t)
        {
            let kind = match &e {
                SpoolError::Sync(io) => io.kind(),
                _ => io::ErrorKind::Other,
            };
            for r in out.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(SpoolError::Sync(io::Error::new(kind, e.to_string())));
            }
        }
        out
    }

    /// Sets the key of a live message: a number of the caller's choosing kept beside the message in
    /// the index (not on disk; 0 after a reopen), for [`Spool::keyed`]. Keys must not decrease
    /// from one message to the next (in id order) for that search to find them.
    pub fn set_key(&mut self, id: MessageId, key: u64) {
        if let Ok(r) = self.live_slot(id) {
            self.index.slot_mut(r).set_key(key);
        }
    }

    /// The live messages whose keys ([`Spool::set_key`]) lie in `lo..=hi`, found by binary search
    /// when keys do not decrease from one message to the next.
    pub fn keyed(&self, lo: u64, hi: u64) -> impl Iterator<Item = MessageId> + '_ {
        self.index
            .keyed(lo, hi)
            .filter(|m| m.live > 0)
            .map(|m| MessageId(m.id()))
    }

    /// Up to `max` live messages from `from` on (`from` included), in id order, appended to `out`;
    /// returns whether more may follow.
    pub fn live_messages(&self, from: MessageId, max: usize, out: &mut Vec<MessageId>) -> bool {
        let table = self.index.messages();
        let start = table.partition_point(|m| m.id() < from.0);
        for (n, m) in table[start..].iter().filter(|m| m.live > 0).enumerate() {
            if n == max {
                return true;
            }
            out.push(MessageId(m.id()));
        }
        false
    }

    /// Whether message `id` still has a recipient to deliver (no record is read).
    pub fn is_live(&self, id: MessageId) -> bool {
        self.live_slot(id).is_ok()
    }

    fn live_slot(&self, id: MessageId) -> Result<SlotRef, SpoolError> {
        self.index
            .find(id.0)
            .filter(|&r| self.index.slot(r).live > 0)
            .ok_or(SpoolError::UnknownMessage(id))
    }

    fn rcpt_index(&self, rid: RecipientId) -> Result<(SlotRef, usize), SpoolError> {
        let r = self.live_slot(rid.message)?;
        let m = self.index.slot(r);
        if rid.index >= m.rcpt_count {
            return Err(SpoolError::UnknownRecipient(rid));
        }
        Ok((r, m.first_rcpt as usize + usize::from(rid.index)))
    }

    /// Records a recipient's new state. Durable once [`Spool::commit`] of the ticket returns. A final
    /// state is final: changing it again is [`SpoolError::AlreadyFinal`].
    pub fn record_state(
        &mut self,
        rid: RecipientId,
        change: &StateChange<'_>,
    ) -> Result<Ticket, SpoolError> {
        self.writable()?;
        let (_, i) = self.rcpt_index(rid)?;
        if RecipientState::from_u8(self.index.rcpts[i].state).is_some_and(|s| s.is_final()) {
            return Err(SpoolError::AlreadyFinal(rid));
        }
        let s = StateRecord {
            id: rid.message.0,
            rcpt: rid.index,
            state: change.state,
            attempts: change.attempts,
            next_attempt: change.next_attempt,
            reply: change.reply,
        };
        let mut buf = self.frame(Kind::State, |o| s.encode(o));
        let room = if change.state.is_final() {
            Room::Final
        } else {
            Room::Progress
        };
        let r = self.write(&mut buf, room);
        self.scratch = buf;
        let (seg, off, t) = r?;
        self.apply_state(seg, off, &s);
        Ok(t)
    }

    /// [`Spool::record_state`] and [`Spool::commit`].
    pub fn update(&mut self, rid: RecipientId, change: &StateChange<'_>) -> Result<(), SpoolError> {
        let t = self.record_state(rid, change)?;
        self.commit(t)
    }

    /// Cancels every live recipient of a message (an operator's or the host's removal). Durable once
    /// [`Spool::commit`] of the ticket returns.
    pub fn remove(&mut self, id: MessageId) -> Result<Ticket, SpoolError> {
        self.writable()?;
        match self.index.find(id.0) {
            Some(r) if self.index.slot(r).live > 0 => {}
            _ => return Err(SpoolError::UnknownMessage(id)),
        }
        let mut buf = self.frame(Kind::Cancel, |o| record::encode_cancel(o, id.0));
        let r = self.write(&mut buf, Room::Final);
        self.scratch = buf;
        let (seg, off, t) = r?;
        self.apply_cancel(seg, off, id.0);
        Ok(t)
    }

    fn message_record(&self, m: &MessageSlot) -> Result<MessageRecord<'_>, SpoolError> {
        self.message_in(m).map(|(record, _)| record)
    }

    /// The message record at a slot and the segment holding it.
    fn message_in(&self, m: &MessageSlot) -> Result<(MessageRecord<'_>, &Segment), SpoolError> {
        let seg = self
            .segments
            .get(&m.segment)
            .ok_or(SpoolError::Damaged(FormatError::Short))?;
        let (bytes, at) = seg.read_at(u64::from(m.offset));
        let rec =
            record::decode_verified_record(bytes, at, seg.salt).map_err(SpoolError::Damaged)?;
        let record = MessageRecord::decode(rec.payload).map_err(SpoolError::Damaged)?;
        Ok((record, seg))
    }

    /// A queued message: envelope and body, borrowed from the mapping.
    pub fn message(&self, id: MessageId) -> Result<MessageView<'_>, SpoolError> {
        let r = self.live_slot(id)?;
        let (record, segment) = self.message_in(self.index.slot(r))?;
        Ok(MessageView {
            id,
            record,
            segment,
        })
    }

    /// A queued message's body, borrowed from the mapping.
    pub fn body(&self, id: MessageId) -> Result<&[u8], SpoolError> {
        Ok(self.message(id)?.body())
    }

    fn reply_at(&self, seg: u32, off: u32, rcpt: u16) -> &str {
        let Some(s) = self.segments.get(&seg) else {
            return "";
        };
        let (bytes, at) = s.read_at(u64::from(off));
        let Ok(rec) = record::decode_verified_record(bytes, at, s.salt) else {
            return "";
        };
        match rec.kind {
            Kind::State => StateRecord::decode(rec.payload).map_or("", |s| s.reply),
            Kind::Message => MessageRecord::decode(rec.payload)
                .ok()
                .and_then(|m| m.recipient(rcpt))
                .map_or("", |r| r.reply),
            Kind::Cancel => "",
        }
    }

    /// One recipient's state, domain and attempts, from the index alone (no record is read).
    pub fn recipient_status(&self, rid: RecipientId) -> Result<RecipientStatus<'_>, SpoolError> {
        let (_, i) = self.rcpt_index(rid)?;
        Ok(self.status_at(i))
    }

    /// The status of entry `i` of the recipient table.
    fn status_at(&self, i: usize) -> RecipientStatus<'_> {
        let slot = self.index.rcpts[i];
        RecipientStatus {
            domain: self.index.domain(slot.domain),
            state: RecipientState::from_u8(slot.state).unwrap_or(RecipientState::Queued),
            attempts: slot.attempts,
            next_attempt: u64::from(slot.next_attempt),
        }
    }

    /// How many recipients a queued message has, from the index alone.
    pub fn recipient_count(&self, id: MessageId) -> Result<u16, SpoolError> {
        let r = self.live_slot(id)?;
        Ok(self.index.slot(r).rcpt_count)
    }

    /// One recipient of a queued message with its current state and last reply.
    pub fn recipient(&self, rid: RecipientId) -> Result<RecipientView<'_>, SpoolError> {
        let (r, i) = self.rcpt_index(rid)?;
        let status = self.status_at(i);
        let address = self
            .message_record(self.index.slot(r))?
            .recipient(rid.index)
            .ok_or(SpoolError::UnknownRecipient(rid))?
            .address;
        let slot = self.index.rcpts[i];
        Ok(RecipientView {
            id: rid,
            address,
            domain: status.domain,
            state: status.state,
            attempts: status.attempts,
            next_attempt: status.next_attempt,
            last_reply: self.reply_at(slot.seg, slot.off, rid.index),
        })
    }

    /// Ids of the queued messages, oldest first.
    pub fn messages(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.index
            .messages()
            .iter()
            .filter(|m| m.live > 0)
            .map(|m| MessageId(m.id()))
    }

    /// Every live (non-final) recipient, in message order: what the scheduler needs to rebuild its
    /// queues after a restart. Held recipients are included (their state says so).
    pub fn queued(&self) -> impl Iterator<Item = QueuedRecipient<'_>> + '_ {
        self.index
            .messages()
            .iter()
            .filter(|m| m.live > 0)
            .flat_map(move |m| {
                let priority = Priority::from_u8(m.priority).unwrap_or_default();
                let rcpts = &self.index.rcpts[m.rcpts()];
                rcpts.iter().enumerate().filter_map(move |(i, r)| {
                    let state = RecipientState::from_u8(r.state)?;
                    if state.is_final() {
                        return None;
                    }
                    Some(QueuedRecipient {
                        id: RecipientId {
                            message: MessageId(m.id()),
                            index: i as u16,
                        },
                        domain: self.index.domain(r.domain),
                        state,
                        attempts: r.attempts,
                        next_attempt: u64::from(r.next_attempt),
                        priority,
                        submitted_at: u64::from(m.submitted),
                    })
                })
            })
    }

    /// Live recipients per destination domain, most first.
    pub fn domains(&self) -> Vec<(&str, u64)> {
        let mut counts = vec![0u64; self.index.domain_count()];
        for q in self.index.messages().iter().filter(|m| m.live > 0) {
            for r in &self.index.rcpts[q.rcpts()] {
                if RecipientState::from_u8(r.state).is_some_and(|s| !s.is_final()) {
                    counts[r.domain as usize] += 1;
                }
            }
        }
        let mut out: Vec<(&str, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(d, n)| (self.index.domain(d as u32), *n))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        out
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        let mut st = SpoolStats::default();
        for m in self.index.messages().iter().filter(|m| m.live > 0) {
            st.messages += 1;
            st.recipients += u64::from(m.live);
            let t = u64::from(m.submitted);
            st.oldest_submitted = Some(st.oldest_submitted.map_or(t, |o: u64| o.min(t)));
            for r in &self.index.rcpts[m.rcpts()] {
                st.by_state[usize::from(r.state).min(6)] += 1;
            }
        }
        st.segments = self.segments.len();
        st.disk_bytes = self.segments.values().map(|s| s.capacity).sum();
        st.used_bytes = self.segments.values().map(|s| s.used).sum();
        st.index_bytes = self.index.heap_bytes();
        st.index_mapped = self.index.is_mapped();
        st.domains = self.index.domain_count();
        st.appended = Ticket(self.ticket);
        st.durable = self.durability.durable();
        st.syncs = self.durability.syncs();
        st
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn deletable(&self, s: &Segment) -> bool {
        Some(s.id) != self.active && s.live_messages == 0 && s.state_refs == 0 && s.final_pins == 0
    }

    fn delete_segment(&mut self, id: u32) -> Result<u64, SpoolError> {
        let Some(seg) = self.segments.remove(&id) else {
            return Ok(0);
        };
        let path = seg.path(&self.dir);
        let freed = seg.capacity;
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            self.segments.insert(id, seg);
            return Err(io_err("remove", &path, e));
        }
        segment::sync_dir(&self.dir).map_err(|e| io_err("sync", &self.dir, e))?;
        for (at, n) in &seg.unpin_on_delete {
            if let Some(s) = self.segments.get_mut(at) {
                s.final_pins = s.final_pins.saturating_sub(*n);
            }
        }
        Ok(freed)
    }

    /// Deletes every segment that holds nothing still needed; returns (count, bytes).
    fn delete_unneeded(&mut self) -> Result<(usize, u64), SpoolError> {
        let mut n = 0;
        let mut bytes = 0;
        loop {
            let ids: Vec<u32> = self
                .segments
                .values()
                .filter(|s| self.deletable(s))
                .map(|s| s.id)
                .collect();
            if ids.is_empty() {
                return Ok((n, bytes));
            }
            for id in ids {
                bytes += self.delete_segment(id)?;
                n += 1;
            }
        }
    }

    /// Frees disk space: deletes segments holding nothing still needed, then compacts at most one
    /// mostly-final (or small) sealed segment. Bounded work; call it periodically.
    pub fn maintain(&mut self) -> Result<Maintenance, SpoolError> {
        self.writable()?;
        // Compaction reads what it copies from the files and writes its copies at once.
        let holding = self.holding;
        self.hold_writes(false)?;
        let r = self.maintain_written();
        self.holding = holding;
        r
    }

    fn maintain_written(&mut self) -> Result<Maintenance, SpoolError> {
        let mut out = Maintenance::default();
        let (n, b) = self.delete_unneeded()?;
        out.deleted_segments += n;
        out.freed_bytes += b;
        let pct = u64::from(self.opts.compact_percent.min(100));
        let small = self.opts.segment_size / 8;
        let candidate = self
            .segments
            .values()
            .filter(|s| Some(s.id) != self.active && s.final_pins == 0)
            .find(|s| s.live_bytes * 100 < s.used * pct || s.used < small)
            .map(|s| s.id);
        if let Some(id) = candidate {
            let (msgs, states) = self.compact(id)?;
            out.moved_messages += msgs;
            out.moved_states += states;
            out.compacted_segments += 1;
            let (n, b) = self.delete_unneeded()?;
            out.deleted_segments += n;
            out.freed_bytes += b;
        }
        self.index.sweep(false);
        Ok(out)
    }

    /// Rewrites what segment `id` holds that is still needed into the active segment and flushes.
    fn compact(&mut self, id: u32) -> Result<(u64, u64), SpoolError> {
        let mut work: Vec<(u32, Kind)> = Vec::new();
        if let Some(seg) = self.segments.get(&id) {
            record::scan(seg.bytes(), seg.salt, |off, rec| {
                work.push((off as u32, rec.kind))
            });
        }
        let (mut msgs, mut states) = (0, 0);
        for (off, kind) in work {
            let mut buf = match self.copy_of(id, off, kind) {
                Some(b) => b,
                None => continue,
            };
            let r = self.write(&mut buf, Room::Progress);
            let (seg, at, _) = match r {
                Ok(x) => x,
                Err(e) => {
                    self.scratch = buf;
                    return Err(e);
                }
            };
            let salt = self.segments[&seg].salt;
            if let Ok(rec) = record::decode_record(&buf, 0, salt) {
                self.apply(seg, at, rec);
            }
            match kind {
                Kind::Message => msgs += 1,
                _ => states += 1,
            }
            self.scratch = buf;
        }
        // Copies must be durable before the original goes, whatever the policy.
        self.flush()?;
        Ok((msgs, states))
    }

    /// The framed copy of the record at (`seg`, `off`) if it is still needed: a message record that is
    /// the current one of a live message (rewritten with every recipient's current state and reply),
    /// or a state record that is the latest of a recipient of a live message.
    fn copy_of(&mut self, seg: u32, off: u32, kind: Kind) -> Option<Vec<u8>> {
        let s = self.segments.get(&seg)?;
        let rec = record::decode_record(s.bytes(), off as usize, s.salt).ok()?;
        match kind {
            Kind::Message => {
                let m = MessageRecord::decode(rec.payload).ok()?;
                let r = self.index.find(m.id)?;
                let slot = *self.index.slot(r);
                if slot.live == 0 || slot.segment != seg || slot.offset != off {
                    return None;
                }
                let tags: Vec<(&str, &str)> = m.tags().collect();
                let head = MessageHead {
                    id: m.id,
                    submitted_at: m.submitted_at,
                    priority: m.priority,
                    flags: m.flags,
                    sender: m.sender,
                    tenant: m.tenant,
                    tags: &tags,
                };
                let rcpts: Vec<RecipientRecord<'_>> = m
                    .recipients()
                    .zip(slot.rcpts())
                    .enumerate()
                    .map(|(i, (rr, si))| {
                        let x = self.index.rcpts[si];
                        RecipientRecord {
                            address: rr.address,
                            state: RecipientState::from_u8(x.state)
                                .unwrap_or(RecipientState::Queued),
                            attempts: x.attempts,
                            next_attempt: u64::from(x.next_attempt),
                            reply: self.reply_at(x.seg, x.off, i as u16),
                        }
                    })
                    .collect();
                let mut buf = Vec::with_capacity(rec.payload.len() + 64);
                record::encode_record(&mut buf, 0, Kind::Message, |o| {
                    record::encode_message(o, &head, rcpts.len(), rcpts.iter().copied(), m.body)
                });
                Some(buf)
            }
            Kind::State => {
                let st = StateRecord::decode(rec.payload).ok()?;
                let r = self.index.find(st.id)?;
                let slot = *self.index.slot(r);
                if slot.live == 0 || st.rcpt >= slot.rcpt_count {
                    return None;
                }
                let x = self.index.rcpts[slot.first_rcpt as usize + usize::from(st.rcpt)];
                if x.seg != seg || x.off != off {
                    return None;
                }
                let mut buf = Vec::with_capacity(rec.span);
                record::encode_record(&mut buf, 0, Kind::State, |o| {
                    o.extend_from_slice(rec.payload)
                });
                Some(buf)
            }
            Kind::Cancel => None,
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.opts.read_only {
            let _ = self.write_held();
        }
        if !self.opts.read_only && self.opts.policy != SyncPolicy::None {
            let _ = self.durability.flush();
        }
        self.durability.close();
        for h in [self.flusher.take(), self.committer.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests;

/// Held (write-behind) bytes beyond which the spool writes them without waiting for the owner:
/// small enough that what is copied into the page cache is still in the CPU cache (a 1 MiB
/// buffer made `pwrite` of 100 KiB messages memory-bound), large enough for dozens of small
/// records per write.
const HELD_MAX: usize = 64 << 10;

/// The record header size, for tests that damage records.
#[doc(hidden)]
pub const RECORD_HEADER_BYTES: usize = RECORD_HEADER_LEN;
