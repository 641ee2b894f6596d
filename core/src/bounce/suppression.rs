//! The suppression list: per tenant, persistent, consulted at submission.
//!
//! A suppressed recipient is not sent to; the submission reports reason `suppressed`. Entries come from
//! bounces (by [`SuppressionPolicy`]: a hard bounce — `userunknown`, `notaccept`, `hostunknown` from a
//! definite NXDOMAIN — at the first occurrence; `mailboxfull`, `suspend` and a domain that does not
//! resolve without a definite NXDOMAIN at the third; `mailboxfull` entries expire after 30 days;
//! reputation blocks — `blocked`, `badreputation`, `requireptr`, `authfailure` — never), from spam
//! complaints (an ARF report suppresses the address for every stream of the tenant), and by hand.
//!
//! Storage is an append-only log: each record is `length (u32 LE) | CRC-32 (u32 LE) | payload`, the
//! payload a tab-separated line. Opening replays the log into hash maps; a torn tail (a record cut by a
//! crash) is cut off, a record whose checksum fails is counted and skipped, never trusted. Soft-bounce
//! counters are logged too, so thresholds survive restarts. [`SuppressionStore::compact`] rewrites the
//! log with only the live state (write to a temporary file, fsync, rename). With `sync` on (the
//! default) every change is fsynced before the call returns.
//!
//! Not implemented: sharing one store between processes (one writer per file), and lookups by domain
//! or pattern. Addresses are lower-cased whole: RFC 5321 §2.4 lets a local part be case-sensitive, but
//! mailbox providers treat it case-insensitively, and a bounced `John@` must stop `john@` too.

use super::reason::Reason;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Largest record payload accepted when reading the log.
const MAX_RECORD: u32 = 4096;

/// CRC-32 (IEEE 802.3, as zlib).
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Appends one log record framing `payload` to `out`: `length (u32 LE) | CRC-32 (u32 LE) | payload`,
/// the format [`SuppressionStore::open`] reads back. The reader takes a record longer than 4,096 bytes
/// for a torn tail; the store's own stay far below (each field is at most 512 bytes).
pub fn frame_record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Where a suppression came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// A bounce (live reply or DSN).
    Bounce,
    /// A spam complaint (ARF).
    Complaint,
    /// Added by hand.
    Manual,
}

impl Source {
    /// `"bounce"`, `"complaint"` or `"manual"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bounce => "bounce",
            Source::Complaint => "complaint",
            Source::Manual => "manual",
        }
    }

    fn parse(s: &str) -> Option<Source> {
        Some(match s {
            "bounce" => Source::Bounce,
            "complaint" => Source::Complaint,
            "manual" => Source::Manual,
            _ => return None,
        })
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// The tenant (brand) it applies to.
    pub tenant: String,
    /// The address (lower-cased).
    pub address: String,
    /// The stream it applies to; `None` for every stream of the tenant.
    pub stream: Option<String>,
    /// The reason that caused it.
    pub reason: Reason,
    /// Where it came from.
    pub source: Source,
    /// When (Unix seconds).
    pub created: u64,
    /// When it stops applying (Unix seconds), if ever.
    pub expires: Option<u64>,
}

impl Suppression {
    /// Whether it applies at `now` (Unix seconds).
    pub fn is_active(&self, now: u64) -> bool {
        self.expires.is_none_or(|e| now < e)
    }

    /// As JSON, the way the `vmta suppress` command and the HTTP API show it; `active` at `now`.
    pub fn to_json(&self, now: u64) -> serde_json::Value {
        serde_json::json!({
            "tenant": self.tenant,
            "address": self.address,
            "stream": self.stream,
            "reason": self.reason.as_str(),
            "source": self.source.as_str(),
            "created": self.created,
            "expires": self.expires,
            "active": self.is_active(now),
        })
    }
}

/// When bounces suppress, per reason, with per-tenant overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionPolicy {
    /// Occurrences of a reason that suppress (1 = at the first). A reason absent here never suppresses.
    pub thresholds: HashMap<Reason, u32>,
    /// Occurrences of `hostunknown` without a definite NXDOMAIN that suppress.
    pub unresolved_threshold: u32,
    /// How long a suppression for a reason lasts; absent = forever.
    pub expiry: HashMap<Reason, Duration>,
    /// Per-tenant replacements of `thresholds` entries (0 = never for that tenant).
    pub tenant_thresholds: HashMap<String, HashMap<Reason, u32>>,
}

impl Default for SuppressionPolicy {
    fn default() -> Self {
        SuppressionPolicy {
            thresholds: HashMap::from([
                (Reason::UserUnknown, 1),
                (Reason::NotAccept, 1),
                (Reason::HostUnknown, 1),
                (Reason::MailboxFull, 3),
                (Reason::Suspend, 3),
            ]),
            unresolved_threshold: 3,
            expiry: HashMap::from([(Reason::MailboxFull, Duration::from_secs(30 * 86400))]),
            tenant_thresholds: HashMap::new(),
        }
    }
}

impl SuppressionPolicy {
    /// The number of occurrences of `reason` that suppress for `tenant`, or `None` if it never does.
    /// Reputation reasons never suppress, whatever the configuration says.
    pub fn threshold(&self, tenant: &str, reason: Reason, definite_nxdomain: bool) -> Option<u32> {
        if reason.is_reputation() {
            return None;
        }
        if let Some(t) = self
            .tenant_thresholds
            .get(tenant)
            .and_then(|m| m.get(&reason))
        {
            return (*t > 0).then_some(*t);
        }
        if reason == Reason::HostUnknown && !definite_nxdomain {
            return Some(self.unresolved_threshold.max(1));
        }
        self.thresholds.get(&reason).map(|t| (*t).max(1))
    }
}

/// What recording a failure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The recipient is now suppressed.
    Suppressed(Suppression),
    /// Counted; `count` of `threshold` occurrences so far.
    Counted {
        /// Occurrences so far.
        count: u32,
        /// Occurrences that suppress.
        threshold: u32,
    },
    /// This reason never suppresses.
    Ignored,
}

/// Counts of what opening the log found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// Records skipped because their checksum or content was bad.
    pub corrupt: u64,
    /// Bytes cut from a torn tail.
    pub truncated: u64,
}

type Key = (String, String, Option<String>);

/// The persistent store.
#[derive(Debug)]
pub struct SuppressionStore {
    path: PathBuf,
    file: File,
    entries: HashMap<Key, Suppression>,
    counts: HashMap<(String, String, Reason), u32>,
    policy: SuppressionPolicy,
    /// Reasons the policy counts before suppressing (a threshold above 1 somewhere).
    soft: Vec<Reason>,
    /// fsync after every change.
    pub sync: bool,
    recovery: Recovery,
    /// Every (tenant, address) that has had a soft-bounce counter since the store was opened.
    soft_filter: Arc<SoftCounterFilter>,
    /// The exclusive lock on `<path>.lock`, held while the store is open ([`SuppressionStore::close`]
    /// lets it go).
    lock: Option<crate::lockfile::PidLock>,
}

/// The lock file beside a suppression log: `<path>.lock` (it outlives compaction, which replaces
/// the log itself).
pub fn lock_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// A lock-free answer to "can this address have soft-bounce counters?", so that a delivery needs
/// neither the store nor its lock to know it resets nothing: a bit per hash of (tenant, normalised
/// address), set whenever the store creates a counter (replaying the log at open included) and
/// never cleared. A clear bit is a definite no; a set bit is a maybe (the address had a counter
/// once, or shares its bit with one that had), to be asked of the store.
///
/// A bit is set (`Relaxed`) before the call that created the counter returns; a reader on another
/// thread must be ordered after that call by its own means (the engine's shards: the writer's
/// release of the batch that recorded it).
#[derive(Debug)]
pub struct SoftCounterFilter {
    bits: Box<[AtomicU64]>,
}

impl SoftCounterFilter {
    /// 2^21 bits (256 KiB): below one false "maybe" in 200 with 10,000 addresses counted.
    const BITS: usize = 1 << 21;

    fn new() -> SoftCounterFilter {
        SoftCounterFilter {
            bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// FNV-1a over the tenant, a separator and the address in the store's form, given as bytes
    /// already normalised (`normalized`) or normalised here.
    fn slot(tenant: &str, address: &str, normalized: bool) -> (usize, u64) {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |b: u8| {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        };
        tenant.bytes().for_each(&mut eat);
        eat(0xff);
        if normalized {
            address.bytes().for_each(&mut eat);
        } else if address.is_ascii() {
            // `normalize_address` without the allocation: the same trims, ASCII lower case.
            let a = address.trim().trim_start_matches('<').trim_end_matches('>');
            a.bytes().for_each(|b| eat(b.to_ascii_lowercase()));
        } else {
            normalize_address(address).bytes().for_each(&mut eat);
        }
        h ^= h >> 29;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 32;
        let bit = (h as usize) & (Self::BITS - 1);
        (bit / 64, 1u64 << (bit % 64))
    }

    fn insert_normalized(&self, tenant: &str, address: &str) {
        let (word, mask) = Self::slot(tenant, address, true);
        self.bits[word].fetch_or(mask, Ordering::Relaxed);
    }

    /// Whether `address` (any form the store accepts) of `tenant` may have soft-bounce counters.
    pub fn may_have(&self, tenant: &str, address: &str) -> bool {
        let (word, mask) = Self::slot(tenant, address, false);
        self.bits[word].load(Ordering::Relaxed) & mask != 0
    }
}

/// The form an address is stored and looked up in: angle brackets and white space dropped, lower case.
pub fn normalize_address(address: &str) -> String {
    address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase()
}

fn check_field(what: &str, s: &str) -> io::Result<()> {
    if s.is_empty() || s.len() > 512 || s.chars().any(|c| c == '\t' || c == '\n' || c == '\r') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad {what}: {s:?}"),
        ));
    }
    Ok(())
}

impl SuppressionStore {
    /// Opens (or creates) the log at `path` and replays it. The store holds an exclusive lock on
    /// `<path>.lock` while it is open: a second writer (another engine, `vmta suppress` beside a
    /// running engine) gets an error of kind [`io::ErrorKind::ResourceBusy`] naming the holder's
    /// pid, never a silent race.
    pub fn open(path: impl AsRef<Path>, policy: SuppressionPolicy) -> io::Result<SuppressionStore> {
        let path = path.as_ref().to_path_buf();
        let lock = match crate::lockfile::PidLock::take(&lock_path(&path), true) {
            Ok(l) => l,
            Err(crate::lockfile::LockError::Held(pid)) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "{} is in use by {} (a running engine: make the change through it)",
                        path.display(),
                        pid.map_or("another process".to_string(), |p| format!("process {p}"))
                    ),
                ));
            }
            Err(crate::lockfile::LockError::Io(e)) => return Err(e),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut data)?;
        let mut store = SuppressionStore {
            path,
            file,
            entries: HashMap::new(),
            counts: HashMap::new(),
            soft: Reason::ALL
                .iter()
                .copied()
                .filter(|r| {
                    policy.thresholds.get(r).is_some_and(|t| *t > 1)
                        || policy
                            .tenant_thresholds
                            .values()
                            .any(|m| m.get(r).is_some_and(|t| *t > 1))
                        || (*r == Reason::HostUnknown && policy.unresolved_threshold > 1)
                })
                .collect(),
            policy,
            sync: true,
            recovery: Recovery::default(),
            soft_filter: Arc::new(SoftCounterFilter::new()),
            lock: Some(lock),
        };
        let mut pos = 0usize;
        while pos < data.len() {
            if data.len() - pos < 8 {
                break;
            }
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
            if len == 0 || len > MAX_RECORD || pos + 8 + len as usize > data.len() {
                break;
            }
            let payload = &data[pos + 8..pos + 8 + len as usize];
            if crc32(payload) != crc || !store.replay(payload) {
                store.recovery.corrupt += 1;
            } else {
                store.recovery.records += 1;
            }
            pos += 8 + len as usize;
        }
        if pos < data.len() {
            store.recovery.truncated = (data.len() - pos) as u64;
            store.file.set_len(pos as u64)?;
            store.file.sync_data()?;
        }
        Ok(store)
    }

    /// What opening found.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The policy in force.
    pub fn policy(&self) -> &SuppressionPolicy {
        &self.policy
    }

    fn replay(&mut self, payload: &[u8]) -> bool {
        let Ok(s) = std::str::from_utf8(payload) else {
            return false;
        };
        let f: Vec<&str> = s.split('\t').collect();
        match f.as_slice() {
            [
                "add",
                tenant,
                address,
                stream,
                reason,
                source,
                created,
                expires,
            ] => {
                let (Some(reason), Some(source), Ok(created)) = (
                    Reason::parse(reason),
                    Source::parse(source),
                    created.parse(),
                ) else {
                    return false;
                };
                let expires = if expires.is_empty() {
                    None
                } else {
                    match expires.parse() {
                        Ok(e) => Some(e),
                        Err(_) => return false,
                    }
                };
                let stream = (!stream.is_empty()).then(|| stream.to_string());
                let s = Suppression {
                    tenant: tenant.to_string(),
                    address: address.to_string(),
                    stream: stream.clone(),
                    reason,
                    source,
                    created,
                    expires,
                };
                self.drop_counters(tenant, address);
                self.entries
                    .insert((tenant.to_string(), address.to_string(), stream), s);
                true
            }
            ["remove", tenant, address, stream] => {
                let stream = (!stream.is_empty()).then(|| stream.to_string());
                self.entries
                    .remove(&(tenant.to_string(), address.to_string(), stream));
                true
            }
            ["count", tenant, address, reason, n] => {
                let (Some(reason), Ok(n)) = (Reason::parse(reason), n.parse::<u32>()) else {
                    return false;
                };
                self.soft_filter.insert_normalized(tenant, address);
                self.counts
                    .insert((tenant.to_string(), address.to_string(), reason), n);
                true
            }
            ["reset", tenant, address] => {
                self.drop_counters(tenant, address);
                true
            }
            _ => false,
        }
    }

    /// Lets go of the log: the lock is released (another writer may open it) and every later
    /// change fails; what is in memory can still be read.
    pub fn close(&mut self) {
        self.lock = None;
    }

    fn append(&mut self, payload: &str) -> io::Result<()> {
        if self.lock.is_none() {
            return Err(io::Error::other(format!(
                "{} is closed (its engine has shut down)",
                self.path.display()
            )));
        }
        let mut rec = Vec::with_capacity(8 + payload.len());
        frame_record(payload.as_bytes(), &mut rec);
        self.file.write_all(&rec)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn add_entry(&mut self, s: Suppression) -> io::Result<()> {
        check_field("tenant", &s.tenant)?;
        check_field("address", &s.address)?;
        if let Some(st) = &s.stream {
            check_field("stream", st)?;
        }
        let payload = format!(
            "add\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            s.tenant,
            s.address,
            s.stream.as_deref().unwrap_or(""),
            s.reason.as_str(),
            s.source.as_str(),
            s.created,
            s.expires.map(|e| e.to_string()).unwrap_or_default()
        );
        self.append(&payload)?;
        self.replay(payload.as_bytes());
        Ok(())
    }

    /// The suppression that stops sending to `address` on `stream` for `tenant` at `now`, if any.
    pub fn check(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        now: u64,
    ) -> Option<&Suppression> {
        let address = normalize_address(address);
        let all = self
            .entries
            .get(&(tenant.to_string(), address.clone(), None))
            .filter(|s| s.is_active(now));
        all.or_else(|| {
            stream.and_then(|st| {
                self.entries
                    .get(&(tenant.to_string(), address, Some(st.to_string())))
                    .filter(|s| s.is_active(now))
            })
        })
    }

    /// Adds a suppression by hand (`stream` `None` = every stream).
    pub fn add(
        &mut self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        reason: Reason,
        now: u64,
        expires: Option<u64>,
    ) -> io::Result<Suppression> {
        let s = Suppression {
            tenant: tenant.to_string(),
            address: normalize_address(address),
            stream: stream.map(str::to_string),
            reason,
            source: Source::Manual,
            created: now,
            expires,
        };
        self.add_entry(s.clone())?;
        Ok(s)
    }

    /// Removes the suppression of `address` (on `stream`, or the every-stream entry). Returns whether
    /// one existed.
    pub fn remove(
        &mut self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
    ) -> io::Result<bool> {
        let address = normalize_address(address);
        let key = (
            tenant.to_string(),
            address.clone(),
            stream.map(str::to_string),
        );
        if !self.entries.contains_key(&key) {
            return Ok(false);
        }
        let payload = format!("remove\t{tenant}\t{address}\t{}", stream.unwrap_or(""));
        self.append(&payload)?;
        self.replay(payload.as_bytes());
        Ok(true)
    }

    /// Every entry of `tenant` (or of every tenant), sorted by tenant and address, expired ones included.
    pub fn list(&self, tenant: Option<&str>) -> Vec<&Suppression> {
        let mut v: Vec<&Suppression> = self
            .entries
            .values()
            .filter(|s| tenant.is_none_or(|t| s.tenant == t))
            .collect();
        v.sort_by(|a, b| {
            (&a.tenant, &a.address, &a.stream).cmp(&(&b.tenant, &b.address, &b.stream))
        });
        v
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records a bounce of `address` with `reason`; suppresses when the policy's threshold is reached.
    /// `definite_nxdomain` says a `hostunknown` came from an authoritative NXDOMAIN.
    pub fn record_bounce(
        &mut self,
        tenant: &str,
        address: &str,
        reason: Reason,
        definite_nxdomain: bool,
        now: u64,
    ) -> io::Result<Recorded> {
        let Some(threshold) = self.policy.threshold(tenant, reason, definite_nxdomain) else {
            return Ok(Recorded::Ignored);
        };
        check_field("tenant", tenant)?;
        let address = normalize_address(address);
        check_field("address", &address)?;
        let key = (tenant.to_string(), address.clone(), reason);
        let count = self
            .counts
            .get(&key)
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        if count >= threshold {
            let expires = self
                .policy
                .expiry
                .get(&reason)
                .map(|d| now.saturating_add(d.as_secs()));
            let s = Suppression {
                tenant: tenant.to_string(),
                address,
                stream: None,
                reason,
                source: Source::Bounce,
                created: now,
                expires,
            };
            self.add_entry(s.clone())?;
            return Ok(Recorded::Suppressed(s));
        }
        let payload = format!("count\t{tenant}\t{address}\t{}\t{count}", reason.as_str());
        self.append(&payload)?;
        self.replay(payload.as_bytes());
        Ok(Recorded::Counted { count, threshold })
    }

    /// Records a spam complaint: suppresses `address` for every stream of `tenant`.
    pub fn record_complaint(
        &mut self,
        tenant: &str,
        address: &str,
        now: u64,
    ) -> io::Result<Suppression> {
        let s = Suppression {
            tenant: tenant.to_string(),
            address: normalize_address(address),
            stream: None,
            reason: Reason::Feedback,
            source: Source::Complaint,
            created: now,
            expires: None,
        };
        self.add_entry(s.clone())?;
        Ok(s)
    }

    /// The filter of addresses that may have soft-bounce counters (shared; see
    /// [`SoftCounterFilter`]).
    pub fn soft_filter(&self) -> Arc<SoftCounterFilter> {
        self.soft_filter.clone()
    }

    /// Whether soft-bounce counters of `address` are pending for `tenant`: one hash lookup per
    /// reason the policy counts, no scan (a delivery asks for every recipient). Counters of reasons
    /// the policy no longer counts are not looked at: they cannot suppress.
    pub fn has_counters(&self, tenant: &str, address: &str) -> bool {
        if self.counts.is_empty() {
            return false;
        }
        let mut key = (
            tenant.to_string(),
            normalize_address(address),
            Reason::Undefined,
        );
        self.soft.iter().any(|r| {
            key.2 = *r;
            self.counts.contains_key(&key)
        })
    }

    /// Forgets the counters of one address (one removal per reason, not a scan of every counter).
    fn drop_counters(&mut self, tenant: &str, address: &str) {
        if self.counts.is_empty() {
            return;
        }
        let mut key = (tenant.to_string(), address.to_string(), Reason::Undefined);
        for r in Reason::ALL {
            key.2 = *r;
            self.counts.remove(&key);
        }
    }

    /// The number of soft-bounce counters pending.
    pub fn counters(&self) -> usize {
        self.counts.len()
    }

    /// fsyncs the log: for a caller that turned `sync` off to commit a batch of changes at once.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Records a successful delivery: soft-bounce counters of the address start again.
    pub fn record_delivery(&mut self, tenant: &str, address: &str) -> io::Result<()> {
        if !self.has_counters(tenant, address) {
            return Ok(());
        }
        let address = normalize_address(address);
        let payload = format!("reset\t{tenant}\t{address}");
        self.append(&payload)?;
        self.replay(payload.as_bytes());
        Ok(())
    }

    /// Rewrites the log with only the live state (entries active at `now` and pending counters).
    pub fn compact(&mut self, now: u64) -> io::Result<()> {
        if self.lock.is_none() {
            return Err(io::Error::other(format!(
                "{} is closed (its engine has shut down)",
                self.path.display()
            )));
        }
        let tmp = self.path.with_extension("compact");
        {
            let mut out = File::create(&tmp)?;
            let mut buf = Vec::new();
            let mut push = |payload: String| frame_record(payload.as_bytes(), &mut buf);
            for s in self.list(None) {
                if !s.is_active(now) {
                    continue;
                }
                push(format!(
                    "add\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    s.tenant,
                    s.address,
                    s.stream.as_deref().unwrap_or(""),
                    s.reason.as_str(),
                    s.source.as_str(),
                    s.created,
                    s.expires.map(|e| e.to_string()).unwrap_or_default()
                ));
            }
            for ((t, a, r), n) in &self.counts {
                push(format!("count\t{t}\t{a}\t{}\t{n}", r.as_str()));
            }
            out.write_all(&buf)?;
            out.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            })
        {
            let _ = d.sync_all();
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.entries.retain(|_, s| s.is_active(now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A suppression log path in a directory removed when the guard drops.
    fn tmp(name: &str) -> (crate::TestDir, PathBuf) {
        let dir = crate::TestDir::created(&format!("supp-{name}"));
        let log = dir.0.join("suppression.log");
        (dir, log)
    }

    /// A second writer of the same log is refused with the holder named, and writes after a
    /// compaction still go to the log the next opener reads (the lock file is not the log).
    #[test]
    fn concurrent_edit_a_second_writer_is_refused_until_the_first_closes() {
        let (_dir, p) = tmp("second-writer");
        let mut first = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        let e = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
        assert!(
            e.to_string()
                .contains(&format!("in use by process {}", std::process::id())),
            "{e}"
        );
        first
            .add("t", "a@x.example", None, Reason::Suppressed, 1, None)
            .unwrap();
        first.compact(2).unwrap();
        first
            .add("t", "b@x.example", None, Reason::Suppressed, 3, None)
            .unwrap();
        assert!(SuppressionStore::open(&p, SuppressionPolicy::default()).is_err());
        drop(first);
        let again = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        assert_eq!(again.list(None).len(), 2);
        assert!(lock_path(&p).exists());
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn thresholds_and_expiry() {
        let (_dir, p) = tmp("thresholds");
        let mut s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        s.sync = false;
        assert!(matches!(
            s.record_bounce("t", "a@X.example", Reason::UserUnknown, false, 10)
                .unwrap(),
            Recorded::Suppressed(_)
        ));
        assert!(s.check("t", "a@x.example", None, 11).is_some());
        assert!(s.check("t", "<A@X.EXAMPLE>", None, 11).is_some());
        assert!(s.check("other", "a@x.example", None, 11).is_none());
        assert_eq!(
            s.record_bounce("t", "b@x.example", Reason::Blocked, false, 10)
                .unwrap(),
            Recorded::Ignored
        );
        assert_eq!(
            s.record_bounce("t", "c@x.example", Reason::MailboxFull, false, 10)
                .unwrap(),
            Recorded::Counted {
                count: 1,
                threshold: 3
            }
        );
        assert_eq!(
            s.record_bounce("t", "c@x.example", Reason::MailboxFull, false, 10)
                .unwrap(),
            Recorded::Counted {
                count: 2,
                threshold: 3
            }
        );
        let Recorded::Suppressed(e) = s
            .record_bounce("t", "c@x.example", Reason::MailboxFull, false, 100)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(e.expires, Some(100 + 30 * 86400));
        assert!(s.check("t", "c@x.example", Some("news"), 101).is_some());
        assert!(
            s.check("t", "c@x.example", None, 100 + 30 * 86400)
                .is_none()
        );
        // Host unknown: definite NXDOMAIN at once, otherwise the third time.
        assert!(matches!(
            s.record_bounce("t", "d@gone.example", Reason::HostUnknown, true, 1)
                .unwrap(),
            Recorded::Suppressed(_)
        ));
        assert!(matches!(
            s.record_bounce("t", "e@flaky.example", Reason::HostUnknown, false, 1)
                .unwrap(),
            Recorded::Counted { .. }
        ));
        // A delivery resets soft counters.
        s.record_bounce("t", "f@x.example", Reason::Suspend, false, 1)
            .unwrap();
        s.record_bounce("t", "f@x.example", Reason::Suspend, false, 1)
            .unwrap();
        s.record_delivery("t", "f@x.example").unwrap();
        assert_eq!(
            s.record_bounce("t", "f@x.example", Reason::Suspend, false, 1)
                .unwrap(),
            Recorded::Counted {
                count: 1,
                threshold: 3
            }
        );
    }

    #[test]
    fn the_soft_filter_knows_every_address_that_had_counters() {
        let (_dir, p) = tmp("filter");
        let mut s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        let f = s.soft_filter();
        assert!(!f.may_have("t", "busy@x.example"));
        s.record_bounce("t", "Busy@X.example", Reason::MailboxFull, false, 1)
            .unwrap();
        // Any form the store takes as the same address, and only for its tenant.
        for form in ["busy@x.example", " <BUSY@x.EXAMPLE> ", "busy@X.EXAMPLE"] {
            assert!(f.may_have("t", form), "{form}");
        }
        assert!(!f.may_have("u", "busy@x.example"));
        // A non-ASCII address through the store's own normalisation.
        s.record_bounce("t", "ÉLISE@x.example", Reason::MailboxFull, false, 1)
            .unwrap();
        assert!(f.may_have("t", "élise@X.example"));
        // A hard bounce suppresses without a counter; a reset leaves the bit (a "maybe").
        s.record_bounce("t", "gone@x.example", Reason::UserUnknown, false, 1)
            .unwrap();
        assert!(!f.may_have("t", "gone@x.example"));
        s.record_delivery("t", "busy@x.example").unwrap();
        assert!(f.may_have("t", "busy@x.example"));
        // Reopened: the counters replayed from the log set their bits again.
        drop(s);
        let s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        assert!(s.soft_filter().may_have("t", "ÉLISE@x.example"));
        assert!(!s.soft_filter().may_have("t", "someone@x.example"));
    }

    #[test]
    fn complaint_covers_every_stream_and_manual_edits() {
        let (_dir, p) = tmp("complaint");
        let mut s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        s.record_complaint("t", "u@example.com", 5).unwrap();
        assert!(
            s.check("t", "u@example.com", Some("transactional"), 6)
                .is_some()
        );
        s.add(
            "t",
            "v@example.com",
            Some("news"),
            Reason::Suppressed,
            5,
            None,
        )
        .unwrap();
        assert!(s.check("t", "v@example.com", Some("news"), 6).is_some());
        assert!(s.check("t", "v@example.com", Some("billing"), 6).is_none());
        assert!(s.remove("t", "v@example.com", Some("news")).unwrap());
        assert!(!s.remove("t", "v@example.com", Some("news")).unwrap());
        assert!(s.check("t", "v@example.com", Some("news"), 6).is_none());
        assert!(
            s.add("t\tx", "v@example.com", None, Reason::Suppressed, 5, None)
                .is_err()
        );
        assert_eq!(s.list(Some("t")).len(), 1);
    }

    #[test]
    fn survives_reopen_torn_tail_and_corruption() {
        let (_dir, p) = tmp("recovery");
        {
            let mut s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
            s.record_bounce("t", "a@x.example", Reason::UserUnknown, false, 1)
                .unwrap();
            s.record_bounce("t", "b@x.example", Reason::UserUnknown, false, 1)
                .unwrap();
            s.record_bounce("t", "c@x.example", Reason::MailboxFull, false, 1)
                .unwrap();
        }
        let s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.recovery().records, 3);
        drop(s);
        // Corrupt one byte of the first record's payload and append a torn record.
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[10] ^= 0xff;
        bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&p, &bytes).unwrap();
        let mut s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        assert_eq!(s.recovery().corrupt, 1);
        assert_eq!(s.recovery().truncated, 7);
        assert!(s.check("t", "a@x.example", None, 2).is_none());
        assert!(s.check("t", "b@x.example", None, 2).is_some());
        // The counter survived: the next two mailbox-full bounces suppress.
        s.record_bounce("t", "c@x.example", Reason::MailboxFull, false, 2)
            .unwrap();
        assert!(matches!(
            s.record_bounce("t", "c@x.example", Reason::MailboxFull, false, 2)
                .unwrap(),
            Recorded::Suppressed(_)
        ));
        s.compact(3).unwrap();
        drop(s);
        let s = SuppressionStore::open(&p, SuppressionPolicy::default()).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.recovery().corrupt, 0);
    }
}
