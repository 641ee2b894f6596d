//! The engine's side of suppression: the list checked at submission, the writer that records what
//! deliveries and inbound reports teach, and VERP return paths.
//!
//! ```text
//!  Engine::submit ── SuppressionIndex::check (one shard of 64 read-locked, no allocation) ──► queued
//!                                                  ▲ insert/remove (write lock on one shard, briefly)
//!  shard threads ── OutcomeBatch (observations + events) ──► writer thread ── SuppressionStore (log)
//!                                                               └──► EventQueue (events released)
//!  Engine::apply_report / suppress / unsuppress ──────────────► SuppressionStore (same mutex)
//! ```
//!
//! - [`SuppressionIndex`] is the read side: every active entry of the persistent
//!   [`SuppressionStore`], in 64 hash maps behind their own `RwLock`, keyed by a hash of the tenant
//!   and the case-folded address. A check hashes the address without allocating, read-locks one
//!   shard and compares the few entries under that hash; writers take one shard's write lock for one
//!   insert or removal. No lock is held by a writer across I/O.
//! - Shard threads never write the log. They push an [`OutcomeBatch`] per loop pass (the pass's
//!   events and the [`Observation`]s behind them: a failed attempt with its reason, a delivery) to one
//!   writer thread, which records them in the store (soft-bounce counters, thresholds, suppressions)
//!   with one fsync per batch and only then releases the events: when the host sees a `bounced`
//!   event, the suppression it caused is already in force.
//! - Host calls ([`crate::engine::Engine::suppress`], `unsuppress`, `apply_report`) write the same
//!   store under the same mutex, so writes are serialised; the index is updated under that mutex too.
//! - VERP: with `[verp]` configured, each recipient is sent in its own transaction with the return
//!   path `prefix+<id>.<tag>.<local>=<domain>@<domain>`, where `<id>` is the engine's message id in
//!   hex followed by `-<tenant>` when the tenant name fits VERP's character set (so a signed report
//!   names its tenant too).
//!
//! - One writer per log: the store holds `<log>.lock` while the engine runs, so `vmta suppress` or
//!   a second engine on the same file is refused with the holder's pid; edits beside a running
//!   engine go through it ([`crate::engine::Engine::suppress`], its control socket or HTTP API).
//!   Compaction ([`crate::engine::Engine::compact_suppressions`]) runs under the store's mutex.
//!
//! Not done here: sharing a list between engine processes, stream-level suppression from bounces
//! (bounces and complaints suppress every stream; a stream is chosen at submission by the tag
//! `stream` and only manual entries name one), compaction on a schedule (only when asked; the log
//! grows by one record per counted bounce), and cancelling mail already queued for an address that
//! becomes suppressed (it keeps its retries).

use super::event::{DeliveryEvent, EventKind};
use super::{EventQueue, Now};
use crate::bounce::report::{Report, ReportKind};
use crate::bounce::suppression::Source;
use crate::bounce::{
    ClassifierHandle, Outcome, OutcomeEvent, Reason, Recorded, Suppression, SuppressionStore, Verp,
    VerpError,
};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

/// Shards of the index (a power of two).
const INDEX_SHARDS: usize = 64;
/// Batches the writer takes at once before committing.
const BATCHES_PER_COMMIT: usize = 256;

/// The tag whose value names the stream of a submission (for stream-level manual suppressions).
pub const STREAM_TAG: &str = "stream";

/// One character of an address as the index compares it: lower case, final sigma folded.
fn fold(c: char) -> impl Iterator<Item = char> {
    c.to_lowercase().map(|l| if l == 'ς' { 'σ' } else { l })
}

/// The address as given, without white space and angle brackets.
fn trimmed(address: &str) -> &str {
    address.trim().trim_start_matches('<').trim_end_matches('>')
}

/// FNV-1a over the tenant, a separator and the folded address, then a 64-bit finaliser so the high
/// bits (shard choice) and low bits (bucket) are both well mixed.
fn key(tenant: &str, address: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    };
    for b in tenant.bytes() {
        eat(b);
    }
    eat(0xff);
    if address.is_ascii() {
        for b in address.bytes() {
            eat(b.to_ascii_lowercase());
        }
    } else {
        let mut buf = [0u8; 4];
        for c in address.chars().flat_map(fold) {
            for b in c.encode_utf8(&mut buf).bytes() {
                eat(b);
            }
        }
    }
    // splitmix64's finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn same_address(stored: &str, query: &str) -> bool {
    if stored.is_ascii() && query.is_ascii() {
        return stored.eq_ignore_ascii_case(query);
    }
    stored
        .chars()
        .flat_map(fold)
        .eq(query.chars().flat_map(fold))
}

/// A hasher for keys that are already hashes.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Bucket = HashMap<u64, Vec<Entry>, BuildHasherDefault<Prehashed>>;

#[derive(Debug, Clone)]
struct Entry {
    tenant: Box<str>,
    address: Box<str>,
    stream: Option<Box<str>>,
    hit: Hit,
}

/// Why an address is suppressed: what a check returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The reason that caused it.
    pub reason: Reason,
    /// Where it came from.
    pub source: Source,
    /// When (Unix seconds).
    pub created: u64,
    /// When it stops applying (Unix seconds), if ever.
    pub expires: Option<u64>,
}

impl Hit {
    fn is_active(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// The read side of a suppression list; see the module documentation. Safe to share between threads.
pub struct SuppressionIndex {
    shards: Box<[RwLock<Bucket>]>,
    len: AtomicUsize,
}

impl fmt::Debug for SuppressionIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuppressionIndex")
            .field("len", &self.len())
            .finish()
    }
}

impl Default for SuppressionIndex {
    fn default() -> Self {
        SuppressionIndex::new()
    }
}

impl SuppressionIndex {
    /// An empty index.
    pub fn new() -> SuppressionIndex {
        SuppressionIndex {
            shards: (0..INDEX_SHARDS)
                .map(|_| RwLock::new(Bucket::default()))
                .collect(),
            len: AtomicUsize::new(0),
        }
    }

    /// An index of every entry of `store` (expired ones are kept; a check skips them).
    pub fn of(store: &SuppressionStore) -> SuppressionIndex {
        let index = SuppressionIndex::new();
        for s in store.list(None) {
            index.insert(s);
        }
        index
    }

    fn shard(&self, k: u64) -> &RwLock<Bucket> {
        &self.shards[(k >> 58) as usize % INDEX_SHARDS]
    }

    /// Adds or replaces the entry for `s`'s tenant, address and stream.
    pub fn insert(&self, s: &Suppression) {
        let k = key(&s.tenant, &s.address);
        let entry = Entry {
            tenant: s.tenant.as_str().into(),
            address: s.address.as_str().into(),
            stream: s.stream.as_deref().map(Into::into),
            hit: Hit {
                reason: s.reason,
                source: s.source,
                created: s.created,
                expires: s.expires,
            },
        };
        let mut shard = self.shard(k).write().unwrap_or_else(|e| e.into_inner());
        let v = shard.entry(k).or_default();
        match v.iter_mut().find(|e| {
            *e.tenant == *s.tenant && *e.address == *s.address && e.stream == entry.stream
        }) {
            Some(old) => *old = entry,
            None => {
                v.push(entry);
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Removes the entry for `tenant`, `address` and `stream` (`None`: the every-stream entry).
    pub fn remove(&self, tenant: &str, address: &str, stream: Option<&str>) {
        let address = trimmed(address);
        let k = key(tenant, address);
        let mut shard = self.shard(k).write().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = shard.get_mut(&k) {
            let before = v.len();
            v.retain(|e| {
                !(*e.tenant == *tenant
                    && same_address(&e.address, address)
                    && e.stream.as_deref() == stream)
            });
            self.len.fetch_sub(before - v.len(), Ordering::Relaxed);
            if v.is_empty() {
                shard.remove(&k);
            }
        }
    }

    /// The suppression that stops sending to `address` on `stream` for `tenant` at `now` (Unix
    /// seconds): an every-stream entry, or one for that stream. Allocates nothing.
    pub fn check(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        now: u64,
    ) -> Option<Hit> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let address = trimmed(address);
        let k = key(tenant, address);
        let shard = self.shard(k).read().unwrap_or_else(|e| e.into_inner());
        let v = shard.get(&k)?;
        v.iter()
            .filter(|e| {
                *e.tenant == *tenant
                    && (e.stream.is_none() || e.stream.as_deref() == stream)
                    && e.hit.is_active(now)
                    && same_address(&e.address, address)
            })
            // The every-stream entry first, as the store does.
            .min_by_key(|e| e.stream.is_some())
            .map(|e| e.hit)
    }

    /// The number of entries (expired ones included until removed).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a shard learnt from one attempt, for the suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A failed attempt (final or not) with its reason.
    Failed {
        /// The suppression tenant.
        tenant: String,
        /// The recipient.
        address: String,
        /// Why it failed.
        reason: Reason,
        /// A `hostunknown` from an authoritative NXDOMAIN (or a null MX).
        definite_nxdomain: bool,
    },
    /// A delivery (resets soft-bounce counters).
    Delivered {
        /// The suppression tenant.
        tenant: String,
        /// The recipient.
        address: String,
    },
}

/// What a shard hands the writer after a loop pass.
#[derive(Debug, Default)]
pub(crate) struct OutcomeBatch {
    pub observations: Vec<Observation>,
    pub events: Vec<DeliveryEvent>,
    /// The sending shard's tally, brought up to date once the batch is recorded and released.
    pub tally: Arc<WriterTally>,
}

/// What the writer has done with one shard's batches, for the shard to know when a delivery
/// cannot reset anything and when its events may skip the writer.
///
/// The writer adds to both counts (`Release`) after a batch's observations are recorded and its
/// events released; the shard compares them (`Acquire`) with what it handed out. A domain belongs
/// to one shard, so once the writer has recorded every failure a shard observed, the
/// [`SoftCounterFilter`](crate::bounce::suppression::SoftCounterFilter) holds every counter a
/// delivery of that shard could reset.
#[derive(Debug, Default)]
pub(crate) struct WriterTally {
    /// Batches recorded and released.
    pub batches: AtomicU64,
    /// `Failed` observations among them.
    pub failures: AtomicU64,
}

#[derive(Debug)]
pub(crate) enum WriterMessage {
    Batch(OutcomeBatch),
    Stop,
}

/// Why a suppression call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuppressionError {
    /// `[suppression] enabled = false`.
    Disabled,
    /// A name or address that cannot be stored (empty, too long, tabs or line ends, no `@`).
    Invalid(String),
    /// The log could not be written.
    Io(String),
}

impl fmt::Display for SuppressionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuppressionError::Disabled => f.write_str("the suppression list is disabled"),
            SuppressionError::Invalid(why) => write!(f, "invalid suppression: {why}"),
            SuppressionError::Io(why) => write!(f, "suppression list: {why}"),
        }
    }
}

impl std::error::Error for SuppressionError {}

/// Why an inbound report was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundError {
    /// The bytes cannot be read as a message.
    Unreadable(String),
    /// The report came back to one of our VERP addresses whose signature does not verify (or whose
    /// message id is not one we make): forged or mangled.
    ForgedVerp(String),
    /// The suppression list could not be written.
    Io(String),
}

impl fmt::Display for InboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundError::Unreadable(why) => write!(f, "unreadable report: {why}"),
            InboundError::ForgedVerp(a) => {
                write!(f, "forged report: VERP address {a:?} does not verify")
            }
            InboundError::Io(why) => write!(f, "suppression list: {why}"),
        }
    }
}

impl std::error::Error for InboundError {}

/// What an inbound report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportOutcome {
    /// What the message was.
    pub kind: ReportKind,
    /// For ARF reports, the feedback type.
    pub feedback_type: Option<String>,
    /// The tenant it was applied to.
    pub tenant: String,
    /// The engine message id it is about, when known (a verified VERP address, or a `Message-ID`
    /// the engine made).
    pub message_id: Option<u64>,
    /// Whether it came back to a VERP address whose signature verified.
    pub verified: bool,
    /// Whether it changed the suppression list (verified, trusted unsigned, or no VERP configured).
    pub applied: bool,
    /// Per recipient: the outcome, and what the list did.
    pub outcomes: Vec<Outcome>,
    /// The events emitted (also queued for [`crate::engine::Engine::poll_events`]).
    pub events: Vec<DeliveryEvent>,
}

/// The VERP message id for an engine message of `tenant`: the id in hex, then `-tenant` when the
/// tenant fits (`[A-Za-z0-9_-]`, at most 47 characters).
pub fn verp_id(engine_id: u64, tenant: &str) -> String {
    let fits = !tenant.is_empty()
        && tenant.len() <= 47
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if fits {
        format!("{engine_id:016x}-{tenant}")
    } else {
        format!("{engine_id:016x}")
    }
}

/// Reads a VERP message id made by [`verp_id`]: the engine id and the tenant, if it carries one.
pub fn parse_verp_id(id: &str) -> Option<(u64, Option<&str>)> {
    let hex = id.get(..16)?;
    let n = u64::from_str_radix(hex, 16).ok()?;
    match &id[16..] {
        "" => Some((n, None)),
        rest => rest
            .strip_prefix('-')
            .filter(|t| !t.is_empty())
            .map(|t| (n, Some(t))),
    }
}

/// The suppression list of a running engine. See the module documentation.
pub(crate) struct SuppressionService {
    pub index: SuppressionIndex,
    /// The store's filter of addresses that may have soft-bounce counters.
    pub soft_filter: Arc<crate::bounce::suppression::SoftCounterFilter>,
    store: Mutex<SuppressionStore>,
    sync: bool,
    pub default_tenant: String,
    tx: crossbeam::channel::Sender<WriterMessage>,
    rx: crossbeam::channel::Receiver<WriterMessage>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Changes the log refused (I/O errors), counted.
    pub errors: AtomicU64,
    /// Recipients refused at submission.
    pub suppressed: AtomicU64,
}

impl fmt::Debug for SuppressionService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuppressionService")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

fn io_err(e: std::io::Error) -> SuppressionError {
    if e.kind() == std::io::ErrorKind::InvalidInput {
        SuppressionError::Invalid(e.to_string())
    } else {
        SuppressionError::Io(e.to_string())
    }
}

impl SuppressionService {
    /// Opens the store and builds its index; the writer starts with [`SuppressionService::start`].
    pub fn open(store: SuppressionStore, sync: bool, default_tenant: String) -> SuppressionService {
        let mut store = store;
        // Batches are committed with one fsync each (`flush`), not one per record.
        store.sync = false;
        let index = SuppressionIndex::of(&store);
        let (tx, rx) = crossbeam::channel::unbounded();
        SuppressionService {
            index,
            soft_filter: store.soft_filter(),
            store: Mutex::new(store),
            sync,
            default_tenant,
            tx,
            rx,
            writer: Mutex::new(None),
            errors: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Starts the writer thread, which releases events into `events`.
    pub fn start(self: &Arc<Self>, events: Arc<EventQueue>) -> std::io::Result<()> {
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("vmta-suppression".into())
            .spawn(move || me.run(&events))?;
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Where shards send their batches.
    pub fn sender(&self) -> crossbeam::channel::Sender<WriterMessage> {
        self.tx.clone()
    }

    /// Stops the writer once it has handled everything sent before (call after the shards stopped).
    /// Stops the writer once it has recorded what it was sent.
    pub fn stop(&self) {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = self.tx.send(WriterMessage::Stop);
            let _ = h.join();
        }
    }

    /// Closes the log: its lock is released for the next engine, later changes fail.
    pub fn close(&self) {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).close();
    }

    /// The tenant suppression uses for a submission's tenant.
    pub fn tenant<'a>(&'a self, tenant: &'a str) -> &'a str {
        if tenant.is_empty() {
            &self.default_tenant
        } else {
            tenant
        }
    }

    fn run(&self, events: &EventQueue) {
        let mut out = Vec::new();
        let mut stop = false;
        while !stop {
            let Ok(first) = self.rx.recv() else {
                return;
            };
            let mut batches = Vec::new();
            match first {
                WriterMessage::Batch(b) => batches.push(b),
                WriterMessage::Stop => stop = true,
            }
            while !stop && batches.len() < BATCHES_PER_COMMIT {
                match self.rx.try_recv() {
                    Ok(WriterMessage::Batch(b)) => batches.push(b),
                    Ok(WriterMessage::Stop) => stop = true,
                    Err(_) => break,
                }
            }
            self.record(&mut batches);
            for b in &mut batches {
                out.append(&mut b.events);
            }
            if !out.is_empty() {
                // The shards' events: logged ahead of their spool records.
                events.push_logged(&mut out);
            }
            for b in &batches {
                b.tally.batches.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Records the observations of `batches` with one fsync, and tallies each batch's failures
    /// once they are recorded (without a threshold too: the shard counts what it sent).
    fn record(&self, batches: &mut [OutcomeBatch]) {
        if batches.iter().all(|b| b.observations.is_empty()) {
            return;
        }
        let now = Now::system().unix();
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let mut written = false;
        for b in batches.iter_mut() {
            let mut failures = 0;
            for o in b.observations.drain(..) {
                if matches!(o, Observation::Failed { .. }) {
                    failures += 1;
                }
                let r = match &o {
                    Observation::Failed {
                        tenant,
                        address,
                        reason,
                        definite_nxdomain,
                    } => {
                        // A reason without a threshold is ignored before anything is written.
                        if store
                            .policy()
                            .threshold(tenant, *reason, *definite_nxdomain)
                            .is_none()
                        {
                            continue;
                        }
                        store
                            .record_bounce(tenant, address, *reason, *definite_nxdomain, now)
                            .map(|r| {
                                if let Recorded::Suppressed(s) = &r {
                                    self.index.insert(s);
                                }
                            })
                    }
                    Observation::Delivered { tenant, address } => {
                        if !store.has_counters(tenant, address) {
                            continue;
                        }
                        store.record_delivery(tenant, address)
                    }
                };
                match r {
                    Ok(()) => written = true,
                    Err(_) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            b.tally.failures.fetch_add(failures, Ordering::Release);
        }
        if written && self.sync && store.flush().is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The suppression in force for `address` (see [`SuppressionIndex::check`]).
    pub fn check(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        now: u64,
    ) -> Option<Hit> {
        self.index.check(self.tenant(tenant), address, stream, now)
    }

    pub fn add(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        reason: Reason,
        expires: Option<u64>,
    ) -> Result<Suppression, SuppressionError> {
        if !trimmed(address).contains('@') {
            return Err(SuppressionError::Invalid(format!(
                "{address:?} is not an address"
            )));
        }
        let tenant = self.tenant(tenant);
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let s = store
            .add(
                tenant,
                address,
                stream,
                reason,
                Now::system().unix(),
                expires,
            )
            .map_err(io_err)?;
        self.index.insert(&s);
        self.commit(&mut store)?;
        Ok(s)
    }

    pub fn remove(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
    ) -> Result<bool, SuppressionError> {
        let tenant = self.tenant(tenant);
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let removed = store.remove(tenant, address, stream).map_err(io_err)?;
        if removed {
            self.index.remove(tenant, address, stream);
            self.commit(&mut store)?;
        }
        Ok(removed)
    }

    pub fn list(&self, tenant: Option<&str>) -> Vec<Suppression> {
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .list(tenant.map(|t| self.tenant(t)))
            .into_iter()
            .cloned()
            .collect()
    }

    /// Rewrites the log with only what is in force at `now` (under the store's mutex, so the
    /// writer thread and host calls wait for it); expired entries leave the index too. Returns the
    /// entries dropped.
    pub fn compact(&self, now: u64) -> Result<usize, SuppressionError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let expired: Vec<Suppression> = store
            .list(None)
            .into_iter()
            .filter(|s| !s.is_active(now))
            .cloned()
            .collect();
        store.compact(now).map_err(io_err)?;
        for s in &expired {
            self.index
                .remove(&s.tenant, &s.address, s.stream.as_deref());
        }
        Ok(expired.len())
    }

    fn commit(&self, store: &mut SuppressionStore) -> Result<(), SuppressionError> {
        if self.sync {
            store
                .flush()
                .map_err(|e| SuppressionError::Io(e.to_string()))?;
        }
        Ok(())
    }
}

/// What the engine needs to apply an inbound report.
pub(crate) struct Inbound<'a> {
    pub classifier: &'a ClassifierHandle,
    pub verp: Option<&'a Verp>,
    pub trust_unsigned: bool,
    pub suppression: Option<&'a SuppressionService>,
    /// The engine's `Message-ID` domain, to recognise Message-IDs it made.
    pub message_id_domain: &'a str,
}

/// Addresses `...@domain` in a raw message (headers and returned parts), in order, without
/// duplicates: where VERP return paths can be when the report's own fields do not give them.
fn verp_candidates(raw: &[u8], domain: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(1 << 20)]);
    let lower = text.to_ascii_lowercase();
    let needle = format!("@{}", domain.to_ascii_lowercase());
    let stop =
        |c: u8| c.is_ascii_whitespace() || b"<>:\"',;()[]".contains(&c) || c.is_ascii_control();
    let bytes = lower.as_bytes();
    let mut out: Vec<String> = Vec::new();
    for (i, _) in lower.match_indices(&needle) {
        let end = i + needle.len();
        if bytes
            .get(end)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'-')
        {
            continue;
        }
        let mut start = i;
        while start > 0 && !stop(bytes[start - 1]) {
            start -= 1;
        }
        // Too long for an address, or nothing before the `@`. (`start` is past an ASCII byte or
        // at 0, so on a character boundary.)
        if start == i || i - start > 512 {
            continue;
        }
        let a = text[start..end].to_string();
        if !out.iter().any(|x| x.eq_ignore_ascii_case(&a)) {
            out.push(a);
        }
        if out.len() >= 16 {
            break;
        }
    }
    out
}

/// The engine message id in a `Message-ID` the engine made (`<016x-id@domain>`).
fn engine_message_id(mid: &str, domain: &str) -> Option<u64> {
    let inner = mid.trim().trim_start_matches('<').trim_end_matches('>');
    let (local, d) = inner.rsplit_once('@')?;
    if local.len() != 16 || !d.eq_ignore_ascii_case(domain) {
        return None;
    }
    u64::from_str_radix(local, 16).ok()
}

impl Inbound<'_> {
    /// Parses `raw`, matches it, applies it to the list and builds the events. See
    /// [`crate::engine::Engine::apply_report`].
    pub fn apply(&self, tenant: &str, raw: &[u8]) -> Result<ReportOutcome, InboundError> {
        let report = crate::bounce::report::parse(raw, &self.classifier.load())
            .map_err(|e| InboundError::Unreadable(e.to_string()))?;
        // The VERP address: the report's own recipient, or (ARF) the returned message's
        // Return-Path. A VERP-shaped address that does not verify refuses the report.
        let mut decoded = None;
        if let Some(v) = self.verp {
            // The parser's fields first; then a scan of the raw message, because VERP local parts
            // are often longer than the 64 octets the parser accepts as an address.
            let mut candidates: Vec<String> = [&report.report_to, &report.original_return_path]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            candidates.extend(verp_candidates(raw, v.domain()));
            for a in &candidates {
                match v.decode(a) {
                    Ok(d) => {
                        if parse_verp_id(&d.message_id).is_none() {
                            return Err(InboundError::ForgedVerp(a.clone()));
                        }
                        decoded = Some(d);
                        break;
                    }
                    Err(VerpError::Malformed) => {}
                    Err(_) => return Err(InboundError::ForgedVerp(a.clone())),
                }
            }
        }
        let (message_id, verp_tenant) =
            match decoded.as_ref().and_then(|d| parse_verp_id(&d.message_id)) {
                Some((id, t)) => (Some(id), t.map(str::to_string)),
                None => (
                    report
                        .original_message_id
                        .as_deref()
                        .and_then(|m| engine_message_id(m, self.message_id_domain)),
                    None,
                ),
            };
        let tenant = match (verp_tenant, self.suppression) {
            (Some(t), _) => t,
            (None, Some(s)) => s.tenant(tenant).to_string(),
            (None, None) => tenant.to_string(),
        };
        let verified = decoded.is_some();
        // Without VERP there is nothing to verify: reports are matched by address and tenant.
        let trusted = verified || self.verp.is_none() || self.trust_unsigned;
        let now = Now::system();
        let verp_result = decoded.map(Ok);
        let outcomes = match self.suppression {
            Some(s) => {
                let mut store = s.store.lock().unwrap_or_else(|e| e.into_inner());
                let o = crate::bounce::apply_report(
                    &report,
                    verp_result.as_ref(),
                    &tenant,
                    &mut store,
                    trusted,
                    now.unix(),
                )
                .map_err(|e| InboundError::Io(e.to_string()))?;
                for x in &o {
                    if let Some(Recorded::Suppressed(sup)) = &x.suppression {
                        s.index.insert(sup);
                    }
                }
                if s.sync && o.iter().any(|x| x.suppression.is_some()) {
                    store.flush().map_err(|e| InboundError::Io(e.to_string()))?;
                }
                o
            }
            None => crate::bounce::verp::apply_report_to(
                &report,
                verp_result.as_ref(),
                &tenant,
                None,
                trusted,
                now.unix(),
            )
            .map_err(|e| InboundError::Io(e.to_string()))?,
        };
        let events = if trusted {
            report_events(&report, &outcomes, &tenant, message_id, now)
        } else {
            Vec::new()
        };
        Ok(ReportOutcome {
            kind: report.kind,
            feedback_type: report.feedback_type.clone(),
            tenant,
            message_id,
            verified,
            applied: trusted && self.suppression.is_some(),
            outcomes,
            events,
        })
    }
}

/// The events a report gives: a late bounce or deferral for a DSN, a complaint for an ARF report.
fn report_events(
    report: &Report,
    outcomes: &[Outcome],
    tenant: &str,
    message_id: Option<u64>,
    now: Now,
) -> Vec<DeliveryEvent> {
    let mut events = Vec::new();
    for o in outcomes {
        let (kind, reason, text) = match &o.event {
            OutcomeEvent::Bounced { reason, .. } => (EventKind::LateBounce, *reason, None),
            OutcomeEvent::Deferred { reason, .. } => (EventKind::LateDeferral, *reason, None),
            OutcomeEvent::Complaint { feedback_type } => (
                EventKind::Complaint,
                Reason::Feedback,
                Some(format!("feedback report: {feedback_type}")),
            ),
            OutcomeEvent::Delivered | OutcomeEvent::AutoReply => continue,
        };
        let r = report
            .recipients
            .iter()
            .find(|r| r.address.eq_ignore_ascii_case(&o.recipient))
            .or(report.recipients.first());
        let suppressed = matches!(o.suppression, Some(Recorded::Suppressed(_)));
        let mut text = text
            .or_else(|| r.map(|r| r.diagnostic.clone()))
            .unwrap_or_default();
        if suppressed {
            text.push_str(if text.is_empty() { "" } else { "; " });
            text.push_str("recipient suppressed");
        }
        events.push(DeliveryEvent {
            kind,
            message_id: message_id.unwrap_or(0),
            recipient_index: 0,
            recipient: o.recipient.clone(),
            tenant: tenant.to_string(),
            code: r.and_then(|r| r.reply_code).unwrap_or(0),
            enhanced: r.and_then(|r| r.status),
            text,
            phase: r.and_then(|r| r.phase),
            reason: reason.as_str().to_string(),
            mx: r.and_then(|r| r.remote_mta.clone()).unwrap_or_default(),
            ip: None,
            source: String::new(),
            attempts: 0,
            next_attempt: 0,
            submitted_at: 0,
            at_ms: now.unix_ms,
            tags: Vec::new(),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::SuppressionPolicy;

    fn entry(
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        expires: Option<u64>,
    ) -> Suppression {
        Suppression {
            tenant: tenant.into(),
            address: crate::bounce::suppression::normalize_address(address),
            stream: stream.map(Into::into),
            reason: Reason::UserUnknown,
            source: Source::Bounce,
            created: 1,
            expires,
        }
    }

    #[test]
    fn index_matches_the_store_case_and_streams() {
        let i = SuppressionIndex::new();
        assert_eq!(i.check("t", "a@x.example", None, 5), None);
        i.insert(&entry("t", "John.Doe@Example.COM", None, None));
        i.insert(&entry("t", "news@x.example", Some("news"), Some(10)));
        i.insert(&entry("t", "ΟΔΥΣΣΕΥΣ@x.example", None, None));
        assert_eq!(i.len(), 3);
        assert!(i.check("t", "<john.doe@example.com>", None, 5).is_some());
        assert!(
            i.check("t", " JOHN.DOE@EXAMPLE.COM ", Some("any"), 5)
                .is_some()
        );
        assert!(i.check("u", "john.doe@example.com", None, 5).is_none());
        assert!(i.check("t", "news@x.example", Some("news"), 5).is_some());
        assert!(i.check("t", "news@x.example", Some("billing"), 5).is_none());
        assert!(i.check("t", "news@x.example", None, 5).is_none());
        // Expired entries do not apply.
        assert!(i.check("t", "news@x.example", Some("news"), 10).is_none());
        // Non-ASCII addresses fold like the store (final sigma included).
        assert!(i.check("t", "οδυσσευς@x.example", None, 5).is_some());
        assert!(i.check("t", "ΟΔΥΣΣΕΥΣ@X.EXAMPLE", None, 5).is_some());
        // Replacing keeps one entry; removing drops it.
        i.insert(&entry("t", "john.doe@example.com", None, Some(3)));
        assert_eq!(i.len(), 3);
        assert!(i.check("t", "john.doe@example.com", None, 5).is_none());
        i.remove("t", "<John.Doe@example.com>", None);
        assert_eq!(i.len(), 2);
        i.remove("t", "news@x.example", None);
        assert_eq!(i.len(), 2, "the stream entry is another entry");
    }

    #[test]
    fn verp_ids_carry_the_tenant_when_it_fits() {
        assert_eq!(verp_id(0xabc, "acme"), "0000000000000abc-acme");
        assert_eq!(
            parse_verp_id("0000000000000abc-acme"),
            Some((0xabc, Some("acme")))
        );
        assert_eq!(verp_id(7, "a b"), "0000000000000007");
        assert_eq!(parse_verp_id("0000000000000007"), Some((7, None)));
        assert_eq!(parse_verp_id("000000000000007"), None);
        assert_eq!(parse_verp_id("0000000000000007-"), None);
        assert_eq!(parse_verp_id("zz00000000000007"), None);
        assert_eq!(
            engine_message_id("<00000000000000ff@mta.example>", "MTA.example"),
            Some(255)
        );
        assert_eq!(engine_message_id("<abc@mta.example>", "mta.example"), None);
    }

    #[test]
    fn verp_addresses_are_found_in_raw_reports() {
        let raw = "To: \"Bounces\" <bounces+0000000000000001.abc.a.very.long.local.part.that.goes.on=example.com@Bounce.Example>\r\nX: bounces+x@bounce.example.net, other@bounce.example\r\n\r\nReturn-Path: <BOUNCES+0000000000000001.abc.a.very.long.local.part.that.goes.on=example.com@bounce.example>\r\n@bounce.example \u{e9}\u{e9}@bounce.example";
        let c = verp_candidates(raw.as_bytes(), "bounce.example");
        assert_eq!(
            c,
            vec![
                "bounces+0000000000000001.abc.a.very.long.local.part.that.goes.on=example.com@Bounce.Example".to_string(),
                "other@bounce.example".to_string(),
                "\u{e9}\u{e9}@bounce.example".to_string(),
            ]
        );
        // Bad bytes do not trip it (they read as U+FFFD).
        assert_eq!(verp_candidates(&[0xff, b'@', b'b'], "b").len(), 1);
    }

    #[test]
    fn the_writer_records_thresholds_and_releases_events_after() {
        let dir = crate::TestDir::created("engine-supp");
        let store =
            SuppressionStore::open(dir.0.join("s.log"), SuppressionPolicy::default()).unwrap();
        let svc = Arc::new(SuppressionService::open(store, true, "default".into()));
        let events = Arc::new(EventQueue::new(None).unwrap());
        svc.start(events.clone()).unwrap();
        let failed = |a: &str, reason| Observation::Failed {
            tenant: "default".into(),
            address: a.into(),
            reason,
            definite_nxdomain: false,
        };
        let tally = Arc::new(WriterTally::default());
        let tx = svc.sender();
        for _ in 0..2 {
            tx.send(WriterMessage::Batch(OutcomeBatch {
                observations: vec![
                    failed("full@x.example", Reason::MailboxFull),
                    failed("blocked@x.example", Reason::Blocked),
                ],
                events: Vec::new(),
                tally: tally.clone(),
            }))
            .unwrap();
        }
        tx.send(WriterMessage::Batch(OutcomeBatch {
            observations: vec![failed("gone@x.example", Reason::UserUnknown)],
            events: vec![DeliveryEvent {
                kind: EventKind::Bounced,
                message_id: 1,
                recipient_index: 0,
                recipient: "gone@x.example".into(),
                tenant: String::new(),
                code: 550,
                enhanced: None,
                text: String::new(),
                phase: None,
                reason: "userunknown".into(),
                mx: String::new(),
                ip: None,
                source: String::new(),
                attempts: 1,
                next_attempt: 0,
                submitted_at: 0,
                at_ms: 0,
                tags: Vec::new(),
            }],
            tally: tally.clone(),
        }))
        .unwrap();
        assert!(events.wait(std::time::Duration::from_secs(10)));
        // The event is out: its suppression is already in force.
        let now = Now::system().unix();
        assert!(svc.check("", "gone@x.example", None, now).is_some());
        assert!(svc.check("", "full@x.example", None, now).is_none());
        assert!(svc.check("", "blocked@x.example", None, now).is_none());
        // The third mailbox-full bounce suppresses; a delivery in between would have reset it.
        tx.send(WriterMessage::Batch(OutcomeBatch {
            observations: vec![failed("full@x.example", Reason::MailboxFull)],
            events: Vec::new(),
            tally: tally.clone(),
        }))
        .unwrap();
        svc.stop();
        // Each batch is tallied once recorded, with its failures (those without a threshold too).
        assert_eq!(tally.batches.load(Ordering::Acquire), 4);
        assert_eq!(tally.failures.load(Ordering::Acquire), 6);
        let hit = svc.check("", "full@x.example", None, now).unwrap();
        assert_eq!(hit.reason, Reason::MailboxFull);
        assert!(hit.expires.is_some());
        assert_eq!(svc.list(None).len(), 2);
        // Manual edits go through the same store and index.
        svc.add("", "hand@x.example", Some("news"), Reason::Suppressed, None)
            .unwrap();
        assert!(svc.check("", "hand@x.example", Some("news"), now).is_some());
        assert!(svc.remove("", "hand@x.example", Some("news")).unwrap());
        assert!(svc.check("", "hand@x.example", Some("news"), now).is_none());
        assert!(matches!(
            svc.add("", "nobody", None, Reason::Suppressed, None),
            Err(SuppressionError::Invalid(_))
        ));
        // Everything survives a reopen.
        drop(svc);
        let store =
            SuppressionStore::open(dir.0.join("s.log"), SuppressionPolicy::default()).unwrap();
        let index = SuppressionIndex::of(&store);
        assert!(
            index
                .check("default", "gone@x.example", None, now)
                .is_some()
        );
        assert!(
            index
                .check("default", "full@x.example", None, now)
                .is_some()
        );
    }
}
