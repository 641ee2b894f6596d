//! The delivery engine: thread-per-core shards that queue, route and deliver mail.
//!
//! ```text
//!  host thread ── Engine::submit ──► bounded ring ──► shard thread (pinned, own mio loop)
//!                                   (Busy when full)   ├─ spool (its own directory)
//!  host thread ◄─ Engine::poll_events ◄─ event queue ◄─ ├─ DNS resolver (its own cache)
//!               (event_fd readable while events wait)   └─ queues, pools, sessions, timer wheel
//! ```
//!
//! - A recipient domain belongs to one shard: `fnv1a(domain) % shards`. A message with recipients in
//!   several shards is split: each shard spools its part (the body is written by each), and the host
//!   gets one message id, carried in every event.
//! - [`Engine::submit`] returns once every part is durable in its shard's spool under the configured
//!   durability ([`config::Durability`]); a shard appends every submission waiting in its ring, then
//!   commits once for all of them (group commit), then acknowledges.
//! - Delivery events ([`DeliveryEvent`]) are released once the spool has recorded the outcome they
//!   report; the host drains them in batches with [`Engine::poll_events`] or waits with
//!   [`Engine::wait`]; [`Engine::event_fd`] is readable while events are pending. Engine threads never
//!   call into the host.
//! - [`Engine::shutdown`] stops intake, lets in-flight transactions finish within the grace period and
//!   leaves everything else in the spool; a new engine on the same spool directory resumes.
//!
//! - Suppression ([`suppression`], on by default): each recipient is checked against the tenant's
//!   list at submission (a suppressed one is not queued and gets a `suppressed` event; when all are,
//!   the submission fails with [`SubmitError::Suppressed`]); bounces and deferrals feed the list
//!   through one writer thread, which releases the shards' events once it has recorded them;
//!   [`Engine::apply_report`] applies inbound DSNs and ARF reports (matched by signed VERP return
//!   paths when `[verp]` is configured); [`Engine::suppress`], [`Engine::unsuppress`],
//!   [`Engine::suppression`] and [`Engine::suppressions`] edit and read it by hand.
//!
//! Not yet: DSN parameters per recipient, changing the shard count of an existing spool (the old
//! shards' directories are not read), and an envelope-exact `recipient_index` when a message is
//! split over shards or some of its recipients are suppressed (the index is then the recipient's
//! position in its shard's part).

mod attempts;
pub mod config;
pub mod event;
mod eventlog;
mod io;
pub mod metrics;
pub mod queues;
pub mod retry;
pub(crate) mod shard;
pub mod sim;
pub mod suppression;
pub mod timer;

pub use config::{ConfigError, EngineConfig};
pub use event::{DeliveryEvent, EventKind};
pub use metrics::Metrics;
pub use shard::Now;
pub use suppression::{InboundError, ReportOutcome, SuppressionError};

use crate::smtp::TlsSettings;
use crate::spool::{MessageFlags, Priority, SpoolError, SyncPolicy};
use crossbeam::queue::ArrayQueue;
use metrics::ShardMetrics;
use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A message handed to the engine.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// The envelope sender; empty for the null sender.
    pub sender: String,
    /// Recipient addresses.
    pub recipients: Vec<String>,
    /// The tenant; chooses the source pool.
    pub tenant: String,
    /// Metadata tags returned in events.
    pub tags: Vec<(String, String)>,
    /// Transactional mail goes ahead of bulk in every queue.
    pub priority: Priority,
    /// The message: headers and body, CRLF line ends.
    pub body: Vec<u8>,
    /// The submitting host's name, for the Received field (when tenants are configured).
    pub client_host: String,
    /// The IP address the message originated from, for the Received field.
    pub client_ip: Option<std::net::IpAddr>,
    /// How the message reached the host (the Received field's `with` clause, such as `ESMTP` or
    /// `ESMTPS`). Empty: `LOCAL`, and without tenants no Received field. Set, the engine writes the
    /// Received field with or without tenants, naming the queue id.
    pub protocol: String,
    /// The TLS layer the message came over, for the Received field (`TLSv1.3 with cipher ...`);
    /// empty for none.
    pub tls: String,
    /// The authenticated submitter, for the Received field; empty to leave it out.
    pub auth: String,
}

/// Why a submission was refused. Nothing of it was queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitError {
    /// A shard's submission ring is full: try again shortly.
    Busy,
    /// The engine is shutting down.
    ShuttingDown,
    /// The envelope or message is not acceptable (the text says why, with the line for a message).
    Invalid(String),
    /// The tenant is not configured: vmta sends only for tenants it knows (never an open relay).
    UnknownTenant(String),
    /// The tenant is locked; its queued mail is held.
    AccountLocked(String),
    /// The envelope sender or a From address is not approved for the tenant.
    SenderNotApproved(String),
    /// The spool is full (ENOSPC).
    NoSpace,
    /// The spool could not write or sync.
    Spool(String),
    /// Every recipient is on the tenant's suppression list (the text names them and why).
    Suppressed(String),
}

impl SubmitError {
    pub(crate) fn from_spool(e: SpoolError) -> SubmitError {
        match e {
            SpoolError::NoSpace => SubmitError::NoSpace,
            other => SubmitError::Spool(other.to_string()),
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Busy => f.write_str("busy: submission queue full"),
            SubmitError::ShuttingDown => f.write_str("engine is shutting down"),
            SubmitError::Invalid(why) => write!(f, "invalid message: {why}"),
            SubmitError::UnknownTenant(t) => write!(f, "unknown tenant: {t}"),
            SubmitError::AccountLocked(t) => write!(f, "account locked: {t}"),
            SubmitError::SenderNotApproved(why) => write!(f, "sender not approved: {why}"),
            SubmitError::NoSpace => f.write_str("spool full: no space left on device"),
            SubmitError::Spool(why) => write!(f, "spool error: {why}"),
            SubmitError::Suppressed(who) => write!(f, "recipients suppressed: {who}"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why the engine could not start.
#[derive(Debug)]
pub enum EngineError {
    /// The configuration is wrong.
    Config(ConfigError),
    /// A shard's spool could not be opened.
    Spool {
        /// The shard.
        shard: usize,
        /// The error.
        error: SpoolError,
    },
    /// Something else in the operating system failed.
    Io(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Config(e) => write!(f, "{e}"),
            EngineError::Spool { shard, error } => write!(f, "shard {shard} spool: {error}"),
            EngineError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Where the answers of submissions go once their parts are durable (or refused).
#[derive(Debug)]
pub(crate) enum Ack {
    /// A batch split over shards that its submitter waits for: one count of the parts not yet
    /// answered and one answer slot per submission, so the submitter sleeps (and is woken) once per
    /// batch rather than once per message.
    Waited { state: Mutex<AckState>, cv: Condvar },
    /// Shared by every submission nobody waits for ([`Engine::submit_nowait`]): it keeps no state
    /// of theirs, their parts are counted in [`Unwaited`].
    Unwaited(Arc<Unwaited>),
}

/// The answers of submissions nobody waits for ([`Engine::submit_nowait`]): how many of their
/// parts are not yet durable (for [`Engine::flush`]), and the event queue that reports a part the
/// spool refused (`refused` events).
pub(crate) struct Unwaited {
    /// Parts handed to shards and not yet answered: counted without a lock, since every nowait
    /// submission passes here twice.
    outstanding: AtomicU64,
    /// Held by [`Engine::flush`] while it checks `outstanding` and by the last answer while it
    /// wakes it, so the wake-up cannot fall between the check and the wait.
    idle: Mutex<()>,
    cv: Condvar,
    events: Arc<EventQueue>,
}

impl fmt::Debug for Unwaited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unwaited").finish_non_exhaustive()
    }
}

impl Unwaited {
    fn new(events: Arc<EventQueue>) -> Unwaited {
        Unwaited {
            outstanding: AtomicU64::new(0),
            idle: Mutex::new(()),
            cv: Condvar::new(),
            events,
        }
    }

    /// One part answered; the last one outstanding wakes [`Unwaited::wait_idle`].
    fn answered(&self) {
        let before = self
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        if before == 1 {
            let _idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Waits until no part is outstanding; false on timeout.
    fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while self.outstanding.load(Ordering::Acquire) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            idle = self
                .cv
                .wait_timeout(idle, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

#[derive(Debug)]
pub(crate) struct AckState {
    remaining: usize,
    /// The first refusal of each submission of the batch, by its position.
    errors: Vec<Option<SubmitError>>,
    abandoned: bool,
    /// Whether the submitter sleeps on the condition variable: only then does the last `done`
    /// wake it (a wake is a system call; most acknowledgements of a batch land before it waits).
    waiting: bool,
}

impl Ack {
    fn new(submissions: usize) -> Arc<Ack> {
        Arc::new(Ack::Waited {
            state: Mutex::new(AckState {
                remaining: 0,
                errors: vec![None; submissions],
                abandoned: false,
                waiting: false,
            }),
            cv: Condvar::new(),
        })
    }

    /// One more part to wait for (counted before it is handed to its shard).
    fn expect(&self) {
        match self {
            Ack::Waited { state, .. } => lock(state).remaining += 1,
            Ack::Unwaited(u) => {
                u.outstanding.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// The answer for a part of submission `slot`.
    pub(crate) fn done(&self, slot: u32, result: Result<(), SubmitError>) {
        let (state, cv) = match self {
            Ack::Waited { state, cv } => (state, cv),
            Ack::Unwaited(u) => return u.answered(),
        };
        let mut s = lock(state);
        s.remaining = s.remaining.saturating_sub(1);
        if let Err(e) = result
            && let Some(first) = s.errors.get_mut(slot as usize)
        {
            first.get_or_insert(e);
        }
        if s.remaining == 0 && s.waiting {
            cv.notify_all();
        }
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        match self {
            Ack::Waited { state, .. } => lock(state).abandoned,
            // Nobody waits for a nowait submission, so nobody gives up on it.
            Ack::Unwaited(_) => false,
        }
    }

    /// Waits for every part; then the answers by position. On timeout every submission gets the
    /// timeout's error and the parts still waiting are dropped unwritten by their shards. Nothing
    /// to wait for on the unwaited slot ([`Engine::flush`] waits for those).
    fn wait(&self, limit: Duration) -> Vec<Result<(), SubmitError>> {
        let (state, cv) = match self {
            Ack::Waited { state, cv } => (state, cv),
            Ack::Unwaited(_) => return Vec::new(),
        };
        let deadline = Instant::now() + limit;
        let mut s = lock(state);
        while s.remaining > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.abandoned = true;
                s.waiting = false;
                let e = SubmitError::Spool("no answer from the shard".into());
                return s.errors.iter().map(|_| Err(e.clone())).collect();
            }
            s.waiting = true;
            s = cv
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.waiting = false;
        s.errors
            .iter_mut()
            .map(|e| e.take().map_or(Ok(()), Err))
            .collect()
    }
}

/// Locks an acknowledgement's state, whether or not a holder panicked.
fn lock(state: &Mutex<AckState>) -> std::sync::MutexGuard<'_, AckState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// One shard's part of a submission.
#[derive(Debug)]
pub(crate) struct SubmitPart {
    pub id: u64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub tenant: String,
    pub tags: Vec<(String, String)>,
    pub priority: Priority,
    pub flags: MessageFlags,
    /// The validated message, shared by the submission's parts (taken from the validator's buffer
    /// without a copy).
    pub body: Arc<Vec<u8>>,
    pub ack: Arc<Ack>,
    /// The submission's position in its batch (its answer slot in `ack`).
    pub slot: u32,
}

impl SubmitPart {
    /// Answers this part: to the submitter waiting for it, or, for a submission nobody waits for
    /// ([`Engine::submit_nowait`]), a `refused` event per recipient when the spool did not take it.
    pub(crate) fn answer(&self, result: Result<(), SubmitError>) {
        if let (Err(e), Ack::Unwaited(u)) = (&result, &*self.ack) {
            let now = Now::system();
            let mut events: Vec<DeliveryEvent> = self
                .recipients
                .iter()
                .enumerate()
                .map(|(i, r)| DeliveryEvent {
                    recipient_index: u16::try_from(i).unwrap_or(u16::MAX),
                    recipient: r.clone(),
                    tenant: self.tenant.clone(),
                    text: format!("not queued: {e}"),
                    submitted_at: now.unix(),
                    tags: self.tags.clone(),
                    ..DeliveryEvent::unattempted(EventKind::Refused, self.id, now.unix_ms)
                })
                .collect();
            u.events.push(&mut events);
        }
        self.ack.done(self.slot, result);
    }
}

/// A submission handed to its shards, not yet acknowledged.
#[derive(Debug)]
struct Pending {
    id: u64,
    /// The shards holding a part.
    shards: Vec<usize>,
    /// A shard's ring was full: the parts pushed are taken back once written.
    busy: bool,
    /// `suppressed` events for the recipients left out, released once the rest is queued.
    suppressed: Vec<DeliveryEvent>,
}

/// Messages to a shard that must not be refused.
#[derive(Debug)]
pub(crate) enum Control {
    Cancel(u64, crossbeam::channel::Sender<usize>),
    /// Stop (`true`) or restart (`false`) starting transactions.
    Pause(bool),
    Shutdown(Duration),
    /// The queue summary ([`Engine::queues`]).
    Inspect(crossbeam::channel::Sender<queues::QueueReport>),
    /// One destination's state ([`Engine::destination`]).
    Destination(String, crossbeam::channel::Sender<queues::DestinationState>),
    /// Cancel the queued recipients selected, with a reason ([`Engine::bounce_queued`]).
    Bounce(
        queues::Selector,
        String,
        crossbeam::channel::Sender<queues::BounceReport>,
    ),
    /// A destination or tenant was paused or resumed.
    HoldsChanged,
}

/// Reads a shard directory's crash files as a start does (the lines of `log` that the shard's
/// `events.mark` names, and the attempt journal `attempts`) and returns how many outcomes and
/// interrupted attempts they hold. For the fuzz target `crash_files`; not an API.
#[doc(hidden)]
pub fn read_crash_files(
    shard_dir: &std::path::Path,
    log: &std::path::Path,
) -> std::io::Result<(usize, usize)> {
    let logged = eventlog::unconfirmed(log, shard_dir);
    let (_journal, interrupted) = attempts::AttemptJournal::open(shard_dir)?;
    Ok((logged.len(), interrupted.len()))
}

/// The `recovered` event of a start whose spool held mail or damage (`None` for a clean, empty one).
fn recovered_event(
    r: &crate::spool::RecoveryReport,
    reconciled: usize,
    interrupted: usize,
) -> Option<Vec<DeliveryEvent>> {
    let damage = r.corrupt_records + r.truncated_bytes + r.damaged_segments as u64;
    if r.messages == 0 && damage == 0 && reconciled == 0 {
        return None;
    }
    let counts = [
        ("messages", r.messages),
        ("recipients", r.recipients),
        ("records", r.records),
        ("corrupt_records", r.corrupt_records),
        ("truncated_bytes", r.truncated_bytes),
        ("damaged_segments", r.damaged_segments as u64),
        ("removed_segments", r.removed_segments as u64),
        ("reconciled", reconciled as u64),
        ("interrupted_attempts", interrupted as u64),
    ];
    let now = Now::system();
    Some(vec![DeliveryEvent {
        text: format!(
            "recovered {} messages ({} recipients) from {} records in {} ms; {} damaged \
             stretches, {} torn bytes cut, {} damaged segments; {} outcomes from the event log, \
             {} interrupted attempts counted",
            r.messages,
            r.recipients,
            r.records,
            r.elapsed.as_millis(),
            r.corrupt_records,
            r.truncated_bytes,
            r.damaged_segments,
            reconciled,
            interrupted
        ),
        tags: counts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..DeliveryEvent::unattempted(EventKind::Recovered, 0, now.unix_ms)
    }])
}

/// Events waiting for the host, with a pipe that is readable while any wait.
pub(crate) struct EventQueue {
    queue: Mutex<VecDeque<DeliveryEvent>>,
    cv: Condvar,
    signalled: AtomicBool,
    pipe_tx: mio::unix::pipe::Sender,
    pipe_rx: mio::unix::pipe::Receiver,
    log: Option<Arc<eventlog::EventLog>>,
}

impl fmt::Debug for EventQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventQueue").finish_non_exhaustive()
    }
}

impl EventQueue {
    fn new(log: Option<Arc<eventlog::EventLog>>) -> std::io::Result<EventQueue> {
        let (pipe_tx, pipe_rx) = mio::unix::pipe::new()?;
        Ok(EventQueue {
            queue: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            signalled: AtomicBool::new(false),
            pipe_tx,
            pipe_rx,
            log,
        })
    }

    /// Hands events made outside the shards (no spool record behind them) to the host, writing
    /// them to the event log first.
    pub(crate) fn push(&self, batch: &mut Vec<DeliveryEvent>) {
        if let Some(log) = &self.log {
            log.write_events(batch);
        }
        self.push_logged(batch);
    }

    /// Hands a shard's events to the host; their lines are in the log already (written ahead of
    /// their spool records, [`eventlog`]).
    pub(crate) fn push_logged(&self, batch: &mut Vec<DeliveryEvent>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.extend(batch.drain(..));
        drop(q);
        self.signal();
        self.cv.notify_all();
    }

    fn signal(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let _ = (&self.pipe_tx).write(&[1]);
        }
    }

    fn unsignal(&self) {
        if self.signalled.swap(false, Ordering::AcqRel) {
            let mut buf = [0u8; 64];
            while let Ok(n) = std::io::Read::read(&mut (&self.pipe_rx), &mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }

    fn poll(&self, out: &mut Vec<DeliveryEvent>, max: usize) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        if q.is_empty() {
            self.unsignal();
        }
        n
    }

    fn wait(&self, timeout: Duration) -> bool {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if !q.is_empty() {
            return true;
        }
        let (q, _) = self
            .cv
            .wait_timeout(q, timeout)
            .unwrap_or_else(|e| e.into_inner());
        !q.is_empty()
    }

    fn wake(&self) {
        self.cv.notify_all();
    }
}

struct ShardHandle {
    ring: Arc<ArrayQueue<SubmitPart>>,
    control: crossbeam::channel::Sender<Control>,
    waker: Arc<mio::Waker>,
    /// The shard is (about to be) asleep in its poll: only then does a submission wake it (a wake
    /// is a system call; a shard awake finds its ring non-empty before it sleeps).
    parked: Arc<AtomicBool>,
    /// The shard thread takes no more submissions: what is left in the ring is refused.
    closed: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ShardHandle {
    /// After a push: when the shard thread has stopped taking submissions (its last drain may
    /// have missed this push), what is in the ring is refused here (both sides fence, so the part is
    /// answered by one of them).
    fn refuse_if_closed(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.closed.load(Ordering::SeqCst) {
            while let Some(part) = self.ring.pop() {
                part.answer(Err(SubmitError::ShuttingDown));
            }
        }
    }

    /// Wakes the shard for what was just pushed to its ring, unless it is awake anyway. Pairs with
    /// the shard's store of `parked` and its look at the ring before it sleeps (both sides fence,
    /// so one of them sees the other).
    fn wake_for_ring(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// A running engine. Every method takes `&self` and is safe from any thread.
pub struct Engine {
    shards: Vec<ShardHandle>,
    events: Arc<EventQueue>,
    metrics: Vec<Arc<ShardMetrics>>,
    next_id: AtomicU64,
    accepting: AtomicBool,
    max_body: usize,
    tenants: Option<Arc<crate::policy::TenantRegistry>>,
    validation: crate::policy::ValidationOptions,
    host_name: String,
    suppression: Option<Arc<suppression::SuppressionService>>,
    /// Classifies inbound reports (and failures the retry policy does not classify).
    classifier: Arc<crate::bounce::ClassifierHandle>,
    verp: Option<crate::bounce::Verp>,
    trust_unsigned: bool,
    /// What opening the shards' spools found, summed.
    recovery: crate::spool::RecoveryReport,
    /// Destinations and tenants paused by an operator.
    holds: Arc<queues::Holds>,
    /// The shaping state shared by the shards (its rules reload).
    shaping: Arc<crate::shaping::ShapingShared>,
    /// The configuration running now ([`Engine::reload`] compares with it).
    running: Mutex<EngineConfig>,
    /// Answers of [`Engine::submit_nowait`]'s submissions.
    unwaited: Arc<Unwaited>,
    /// The answer slot their parts carry.
    unwaited_ack: Arc<Ack>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// The bounce rules a configuration gives: `[retry] rules`/`rules_file` under the classified
/// policy, the shipped rules otherwise.
fn classifier_of(config: &EngineConfig) -> Result<crate::bounce::Classifier, EngineError> {
    match config.retry.policy {
        config::RetryKind::Classified => config.retry.classifier().map_err(EngineError::Config),
        config::RetryKind::Exponential => Ok(crate::bounce::Classifier::default_rules()),
    }
}

/// What [`Engine::reload`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// What changed and is in force now: `shaping`, `bounce rules`, `tenants`.
    pub applied: Vec<String>,
    /// Sections that changed but need a restart; left as they were.
    pub needs_restart: Vec<String>,
}

/// The shard owning a domain: FNV-1a of the lower-case domain, stable across restarts.
pub fn shard_of(domain: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in domain.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Checks an envelope address the way submission does (at most 254 octets, no spaces, control
/// characters or angle brackets, `local@domain`); `what` names it in the error. Front ends (the SMTP
/// listener of `vmta serve`) call it to refuse an address at RCPT rather than after the data.
pub fn check_address(a: &str, what: &str) -> Result<(), SubmitError> {
    let bad = |why: &str| Err(SubmitError::Invalid(format!("{what} {a:?}: {why}")));
    if a.len() > 254 {
        return bad("longer than 254 octets");
    }
    if a.bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
    {
        return bad("contains spaces, control characters or angle brackets");
    }
    match a.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.starts_with('.') =>
        {
            Ok(())
        }
        _ => bad("not of the form local@domain"),
    }
}

impl Engine {
    /// Validates the configuration, opens each shard's spool (recovering what it holds) and starts the
    /// shard threads.
    pub fn start(config: &EngineConfig) -> Result<Engine, EngineError> {
        let handle = Arc::new(crate::bounce::ClassifierHandle::new(classifier_of(config)?));
        let retry: Arc<dyn retry::RetryPolicy> = match config.retry.policy {
            config::RetryKind::Classified => {
                let mut r =
                    retry::ClassifiedRetry::new(config.retry.max_age_s, config.retry.jitter);
                // One set of rules for retries, shaping and suppression, which a reload replaces.
                r.classifier = handle.clone();
                r.policy.min_interval = Duration::from_secs(config.retry.min_interval_s);
                r.policy.max_interval = Duration::from_secs(config.retry.max_interval_s);
                Arc::new(r)
            }
            config::RetryKind::Exponential => Arc::new(retry_from(config)),
        };
        Engine::start_inner(config, retry, Some(handle))
    }

    /// Like [`Engine::start`] with another retry policy.
    pub fn start_with(
        config: &EngineConfig,
        retry: Arc<dyn retry::RetryPolicy>,
    ) -> Result<Engine, EngineError> {
        Engine::start_inner(config, retry, None)
    }

    fn start_inner(
        config: &EngineConfig,
        retry: Arc<dyn retry::RetryPolicy>,
        handle: Option<Arc<crate::bounce::ClassifierHandle>>,
    ) -> Result<Engine, EngineError> {
        let resolved = Arc::new(config.resolve().map_err(EngineError::Config)?);
        let e = &config.engine;
        let tls = match config.delivery.tls {
            config::TlsPolicy::Disabled
                if config
                    .smarthost
                    .as_ref()
                    .is_none_or(|s| s.tls == config::TlsPolicy::Disabled) =>
            {
                None
            }
            _ => {
                let ca = if config.delivery.ca_file.as_os_str().is_empty() {
                    None
                } else {
                    Some(std::fs::read(&config.delivery.ca_file).map_err(|err| {
                        EngineError::Config(ConfigError {
                            key: "delivery.ca_file".into(),
                            message: err.to_string(),
                        })
                    })?)
                };
                Some(TlsSettings::new(ca.as_deref()).map_err(|err| {
                    EngineError::Config(ConfigError {
                        key: "delivery.ca_file".into(),
                        message: err.to_string(),
                    })
                })?)
            }
        };
        let log = if e.event_log.as_os_str().is_empty() {
            None
        } else {
            Some(Arc::new(eventlog::EventLog::open(&e.event_log).map_err(
                |err| {
                    EngineError::Config(ConfigError {
                        key: "engine.event_log".into(),
                        message: format!("{}: {err}", e.event_log.display()),
                    })
                },
            )?))
        };
        let events =
            Arc::new(EventQueue::new(log.clone()).map_err(|e| EngineError::Io(e.to_string()))?);
        let policy = match e.durability {
            config::Durability::Sync => SyncPolicy::Sync,
            config::Durability::Interval => {
                SyncPolicy::Interval(Duration::from_millis(e.durability_interval_ms.max(1)))
            }
            config::Durability::None => SyncPolicy::None,
        };
        let tenants = if config.tenants.is_empty() {
            None
        } else {
            let policy = crate::policy::PolicyConfig {
                tenants: config.tenants.clone(),
            };
            let registry = crate::policy::TenantRegistry::from_config(&policy, &config.base_dir)
                .map_err(|err| {
                    EngineError::Config(ConfigError {
                        key: "tenant".into(),
                        message: err.to_string(),
                    })
                })?;
            Some(Arc::new(registry))
        };
        let rules = config.shaping.rule_set().map_err(EngineError::Config)?;
        let epoch = Instant::now();
        let shaping =
            crate::shaping::ShapingShared::new(rules, resolved.shards, Now::system().unix());
        // The rules configured for retries classify what the suppression list learns too (and
        // inbound reports): one vocabulary for a reply wherever it is read.
        let classifier = match handle {
            Some(h) => h,
            None => Arc::new(crate::bounce::ClassifierHandle::new(classifier_of(config)?)),
        };
        let suppression = match &resolved.suppression {
            None => None,
            Some(policy) => {
                let s = &config.suppression;
                let path = s.log_path(&e.spool_dir);
                let opened = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| crate::bounce::SuppressionStore::open(&path, policy.clone()));
                let store = opened.map_err(|err| {
                    EngineError::Config(ConfigError {
                        key: "suppression.path".into(),
                        message: format!("{}: {err}", path.display()),
                    })
                })?;
                Some(Arc::new(suppression::SuppressionService::open(
                    store,
                    s.sync,
                    s.default_tenant.clone(),
                )))
            }
        };
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let mut shards = Vec::new();
        let mut metrics = Vec::new();
        let mut threads = Vec::new();
        let mut recovery = crate::spool::RecoveryReport::default();
        let holds = Arc::new(queues::Holds::default());
        let mut reconciled = 0usize;
        let mut interrupted = 0usize;
        for i in 0..resolved.shards {
            let dir = e.spool_dir.join(format!("shard-{i}"));
            let opts = crate::spool::Options {
                policy,
                segment_size: u64::from(e.spool_segment_mb) << 20,
                ..crate::spool::Options::default()
            };
            let (spool, report) = crate::spool::Spool::open(&dir, opts)
                .map_err(|error| EngineError::Spool { shard: i, error })?;
            recovery.add(&report);
            let m = Arc::new(ShardMetrics::default());
            let now = Now::system();
            let seed = now.unix_ms ^ (i as u64).wrapping_mul(0x9e3779b97f4a7c15);
            let mut core = shard::ShardCore::new(
                i,
                resolved.clone(),
                spool,
                retry.clone(),
                tls.as_ref(),
                seed,
                m.clone(),
                crate::shaping::Shaper::new(shaping.clone()),
                epoch,
                tenants.clone(),
                now,
            );
            core.set_holds(holds.clone());
            if let Some(log) = &log {
                // Outcomes logged just before a crash whose records did not reach the spool.
                let logged = eventlog::unconfirmed(log.path(), &dir);
                reconciled += core.reconcile_log(&logged);
                let shard_log = Arc::new(
                    eventlog::ShardLog::new(log.clone(), &dir)
                        .map_err(|e| EngineError::Io(format!("{}: {e}", dir.display())))?,
                );
                core.set_log(shard_log.clone());
                core.spool_mut()
                    .set_before_write(Box::new(move || shard_log.flush()));
            }
            // Attempts under way at the last stop count (after the log's outcomes are in).
            let (journal, cut) = attempts::AttemptJournal::open(&dir)
                .map_err(|e| EngineError::Io(format!("{}: {e}", dir.display())))?;
            interrupted += core.reconcile_attempts(&cut);
            core.set_attempt_journal(journal);
            let tally = Arc::new(suppression::WriterTally::default());
            core.set_classifier(classifier.clone());
            if let Some(s) = &suppression {
                core.set_writer(s.soft_filter.clone(), tally.clone());
            }
            let poll = mio::Poll::new().map_err(|e| EngineError::Io(e.to_string()))?;
            let waker = Arc::new(
                mio::Waker::new(poll.registry(), io::WAKER)
                    .map_err(|e| EngineError::Io(e.to_string()))?,
            );
            // The shard's `fdatasync`s run on a committer thread that wakes the shard after each.
            let flushed = waker.clone();
            core.spool_mut()
                .start_committer(
                    format!("vmta-commit-{i}"),
                    Box::new(move || {
                        let _ = flushed.wake();
                    }),
                )
                .map_err(|error| EngineError::Spool { shard: i, error })?;
            let dns_config = dns_config(&resolved).map_err(EngineError::Config)?;
            let seed32 = crate::dns::random_seed().map_err(|e| EngineError::Io(e.to_string()))?;
            let resolver = crate::dns::Resolver::new(dns_config, seed32).map_err(|e| {
                EngineError::Config(ConfigError {
                    key: "dns".into(),
                    message: e.to_string(),
                })
            })?;
            let driver = crate::dns::Driver::new(resolver, io::DNS_BASE);
            let ring = Arc::new(ArrayQueue::new(e.submission_queue));
            let parked = Arc::new(AtomicBool::new(false));
            let closed = Arc::new(AtomicBool::new(false));
            let (ctl_tx, ctl_rx) = crossbeam::channel::unbounded();
            let thread = io::ShardThread {
                core,
                poll,
                dns: driver,
                ring: ring.clone(),
                parked: parked.clone(),
                closed: closed.clone(),
                control: ctl_rx,
                events: events.clone(),
                outcomes: suppression.as_ref().map(|s| s.sender()),
                tally,
                sent_to_writer: 0,
                commit_window: match policy {
                    SyncPolicy::Sync => Duration::from_micros(e.group_commit_window_us),
                    _ => Duration::ZERO,
                },
            };
            // The recovered backlog is in the metrics before `start` returns.
            let mut thread = thread;
            thread.core.count_recovered();
            threads.push((thread, cpus.get(i % cpus.len().max(1)).copied()));
            shards.push(ShardHandle {
                ring,
                control: ctl_tx,
                waker,
                parked,
                closed,
                thread: Mutex::new(None),
            });
            metrics.push(m);
        }
        if let Some(mut e) = recovered_event(&recovery, reconciled, interrupted) {
            events.push(&mut e);
        }
        if let Some(s) = &suppression {
            s.start(events.clone())
                .map_err(|e| EngineError::Io(e.to_string()))?;
        }
        for (i, (mut thread, cpu)) in threads.into_iter().enumerate() {
            let pin = e.pin_shards;
            let handle = std::thread::Builder::new()
                .name(format!("vmta-shard-{i}"))
                .spawn(move || {
                    if pin && let Some(cpu) = cpu {
                        core_affinity::set_for_current(cpu);
                    }
                    let now = Now::system();
                    thread.core.recover(now);
                    thread.run();
                })
                .map_err(|e| EngineError::Io(e.to_string()))?;
            *shards[i].thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
        let seed = Now::system().unix_ms << 16;
        let unwaited = Arc::new(Unwaited::new(events.clone()));
        let unwaited_ack = Arc::new(Ack::Unwaited(unwaited.clone()));
        Ok(Engine {
            shards,
            events,
            metrics,
            next_id: AtomicU64::new(seed),
            accepting: AtomicBool::new(true),
            max_body: crate::spool::Options::default().max_body,
            tenants,
            validation: crate::policy::ValidationOptions {
                message_id_domain: e.helo_name.clone(),
                ..crate::policy::ValidationOptions::default()
            },
            host_name: e.helo_name.clone(),
            suppression,
            classifier,
            verp: resolved.verp.clone(),
            trust_unsigned: config.verp.as_ref().is_some_and(|v| v.trust_unsigned),
            recovery,
            holds,
            shaping,
            running: Mutex::new(config.clone()),
            unwaited,
            unwaited_ack,
        })
    }

    /// Queues a message. Returns its id once every part is durable, or why it was refused (nothing is
    /// queued then).
    pub fn submit(&self, s: &Submission) -> Result<u64, SubmitError> {
        self.submit_batch(std::slice::from_ref(s))
            .pop()
            .unwrap_or(Err(SubmitError::Busy))
    }

    /// Queues several messages at once: every part is handed to its shard before any is waited for,
    /// so one spool commit can cover the whole batch, and the submitter sleeps once for all of it.
    /// Results are in the batch's order.
    pub fn submit_batch(&self, batch: &[Submission]) -> Vec<Result<u64, SubmitError>> {
        let ack = Ack::new(batch.len());
        let pending: Vec<Result<Pending, SubmitError>> = batch
            .iter()
            .enumerate()
            .map(|(slot, s)| self.push_parts(s, &ack, slot as u32, false))
            .collect();
        let mut woken = vec![false; self.shards.len()];
        for p in pending.iter().flatten() {
            for &shard in &p.shards {
                if !woken[shard] {
                    woken[shard] = true;
                    self.shards[shard].wake_for_ring();
                }
            }
        }
        let answers = ack.wait(Duration::from_secs(300));
        pending
            .into_iter()
            .zip(answers)
            .map(|(p, answer)| self.finish(p?, answer))
            .collect()
    }

    /// Queues a message without waiting for the disk: returns its id once it is checked and handed
    /// to its shard, which writes it with the next group commit (one `fdatasync` covers whatever
    /// arrived meanwhile, however the host submits). It is delivered only once durable, as with
    /// [`Engine::submit`]. Refusals known at once (an invalid message, an unknown tenant, every
    /// recipient suppressed, shutting down) come back here; a refusal of the spool after the id was
    /// returned (a full disk, a write error) comes as a `refused` event per recipient, and nothing
    /// is queued. When a shard's submission ring is full this waits for room (up to 30 s, then
    /// [`SubmitError::Busy`]). [`Engine::flush`] waits until all of them are durable.
    pub fn submit_nowait(&self, s: &Submission) -> Result<u64, SubmitError> {
        let mut p = self.push_parts(s, &self.unwaited_ack, 0, true)?;
        for &shard in &p.shards {
            self.shards[shard].wake_for_ring();
        }
        if p.busy {
            // The wait for room ends early when the engine starts shutting down: say so.
            let shutting_down = !self.accepting.load(Ordering::Acquire);
            let answer = self.finish(p, Err(SubmitError::Busy));
            return match answer {
                Err(SubmitError::Busy) if shutting_down => Err(SubmitError::ShuttingDown),
                other => other,
            };
        }
        if !p.suppressed.is_empty() {
            self.events.push(&mut p.suppressed);
        }
        Ok(p.id)
    }

    /// Waits until every message handed over with [`Engine::submit_nowait`] is durable (or
    /// refused, with its `refused` events queued). True when none is left; false when `timeout`
    /// passed first (other threads submitting meanwhile count too).
    pub fn flush(&self, timeout: Duration) -> bool {
        self.unwaited.wait_idle(timeout)
    }

    /// Checks a submission and pushes its parts to their shards' rings (without waking them), each
    /// answering in `ack` at `slot`. With `wait_for_room`, a full ring is waited on (the shard woken,
    /// up to 30 s) instead of refusing at once.
    fn push_parts(
        &self,
        s: &Submission,
        ack: &Arc<Ack>,
        slot: u32,
        wait_for_room: bool,
    ) -> Result<Pending, SubmitError> {
        if !self.accepting.load(Ordering::Acquire) {
            return Err(SubmitError::ShuttingDown);
        }
        if s.recipients.is_empty() {
            return Err(SubmitError::Invalid("no recipients".into()));
        }
        if !s.sender.is_empty() {
            check_address(&s.sender, "sender")?;
        }
        for r in &s.recipients {
            check_address(r, "recipient")?;
        }
        if s.body.is_empty() {
            return Err(SubmitError::Invalid("empty message".into()));
        }
        if s.body.len() > self.max_body {
            return Err(SubmitError::Invalid(format!(
                "message of {} octets exceeds the maximum of {}",
                s.body.len(),
                self.max_body
            )));
        }
        let (recipients, hits) = self.check_suppression(s)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (body, flags) = match &self.tenants {
            Some(registry) => self.apply_policy(registry, id, s, &recipients)?,
            None => self.validate_only(id, s, &recipients)?,
        };
        let suppressed = self.suppressed_events(id, s, hits);
        // The recipients of each shard holding some, in the order the shards first appear (most
        // submissions have one recipient, hence one part).
        let n = self.shards.len();
        let mut by_shard: Vec<(usize, Vec<String>)> = Vec::with_capacity(1);
        for r in recipients.into_owned() {
            let domain = r.rsplit_once('@').map_or("", |(_, d)| d);
            let shard = shard_of(domain, n);
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, list)) => list.push(r),
                None => by_shard.push((shard, vec![r])),
            }
        }
        let mut pushed = Vec::with_capacity(by_shard.len());
        let mut busy = false;
        for (shard, recipients) in by_shard {
            let part = SubmitPart {
                id,
                sender: s.sender.clone(),
                recipients,
                tenant: s.tenant.clone(),
                tags: s.tags.clone(),
                priority: s.priority,
                flags,
                body: body.clone(),
                ack: ack.clone(),
                slot,
            };
            ack.expect();
            if !self.push_to_ring(shard, part, wait_for_room) {
                // The parts not pushed are refused; the ones pushed are written, then cancelled.
                ack.done(slot, Err(SubmitError::Busy));
                busy = true;
                break;
            }
            pushed.push(shard);
        }
        Ok(Pending {
            id,
            shards: pushed,
            busy,
            suppressed,
        })
    }

    /// Pushes a part to its shard's ring; with `wait_for_room`, waits (waking the shard) while the
    /// ring is full, up to 30 s. False when it was not pushed (the part is dropped).
    fn push_to_ring(&self, shard: usize, part: SubmitPart, wait_for_room: bool) -> bool {
        let handle = &self.shards[shard];
        let mut part = match handle.ring.push(part) {
            Ok(()) => {
                handle.refuse_if_closed();
                return true;
            }
            Err(part) if wait_for_room => part,
            Err(_) => return false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let _ = handle.waker.wake();
            std::thread::sleep(Duration::from_micros(50));
            part = match handle.ring.push(part) {
                Ok(()) => {
                    handle.refuse_if_closed();
                    return true;
                }
                Err(part) => part,
            };
            if Instant::now() >= deadline || !self.accepting.load(Ordering::Acquire) {
                return false;
            }
        }
    }

    /// The answer to a pushed submission once its batch is acknowledged: its id, or why it was
    /// refused; a submission refused for a full ring is cancelled where it was written.
    fn finish(&self, mut p: Pending, answer: Result<(), SubmitError>) -> Result<u64, SubmitError> {
        if p.busy {
            for &shard in &p.shards {
                let (tx, rx) = crossbeam::channel::bounded(1);
                let handle: &ShardHandle = &self.shards[shard];
                if handle.control.send(Control::Cancel(p.id, tx)).is_ok() {
                    let _ = handle.waker.wake();
                    let _ = rx.recv_timeout(Duration::from_secs(30));
                }
            }
            return Err(SubmitError::Busy);
        }
        answer?;
        if !p.suppressed.is_empty() {
            self.events.push(&mut p.suppressed);
        }
        Ok(p.id)
    }

    /// The recipients of `s` not on the tenant's suppression list (stream: the `stream` tag), and
    /// the hits of the others; [`SubmitError::Suppressed`] when no recipient is left.
    #[allow(clippy::type_complexity)]
    fn check_suppression<'s>(
        &self,
        s: &'s Submission,
    ) -> Result<
        (
            std::borrow::Cow<'s, [String]>,
            Vec<(usize, suppression::Hit)>,
        ),
        SubmitError,
    > {
        let all = std::borrow::Cow::Borrowed(s.recipients.as_slice());
        let Some(sup) = self.suppression.as_ref().filter(|x| !x.index.is_empty()) else {
            return Ok((all, Vec::new()));
        };
        let now = Now::system().unix();
        let tenant = sup.tenant(&s.tenant);
        let stream = s
            .tags
            .iter()
            .find(|(k, _)| k == suppression::STREAM_TAG)
            .map(|(_, v)| v.as_str());
        let hits: Vec<(usize, suppression::Hit)> = s
            .recipients
            .iter()
            .enumerate()
            .filter_map(|(i, r)| sup.index.check(tenant, r, stream, now).map(|h| (i, h)))
            .collect();
        if hits.is_empty() {
            return Ok((all, hits));
        }
        sup.suppressed
            .fetch_add(hits.len() as u64, Ordering::Relaxed);
        if hits.len() == s.recipients.len() {
            let who: Vec<String> = hits
                .iter()
                .map(|(i, h)| format!("{} ({})", s.recipients[*i], h.reason.as_str()))
                .collect();
            return Err(SubmitError::Suppressed(who.join(", ")));
        }
        let mut left = Vec::with_capacity(s.recipients.len() - hits.len());
        let mut next = hits.iter().map(|(i, _)| *i).peekable();
        for (i, r) in s.recipients.iter().enumerate() {
            if next.peek() == Some(&i) {
                next.next();
            } else {
                left.push(r.clone());
            }
        }
        Ok((std::borrow::Cow::Owned(left), hits))
    }

    /// The `suppressed` events of a submission that goes ahead without some recipients.
    fn suppressed_events(
        &self,
        id: u64,
        s: &Submission,
        hits: Vec<(usize, suppression::Hit)>,
    ) -> Vec<DeliveryEvent> {
        let now = Now::system();
        hits.into_iter()
            .map(|(i, h)| DeliveryEvent {
                recipient_index: u16::try_from(i).unwrap_or(u16::MAX),
                recipient: s.recipients[i].clone(),
                tenant: s.tenant.clone(),
                text: match h.expires {
                    Some(until) => format!(
                        "suppressed: {} ({}) since {}, until {until}",
                        h.reason.as_str(),
                        h.source.as_str(),
                        h.created
                    ),
                    None => format!(
                        "suppressed: {} ({}) since {}",
                        h.reason.as_str(),
                        h.source.as_str(),
                        h.created
                    ),
                },
                reason: h.reason.as_str().to_string(),
                submitted_at: now.unix(),
                tags: s.tags.clone(),
                ..DeliveryEvent::unattempted(EventKind::Suppressed, id, now.unix_ms)
            })
            .collect()
    }

    /// Sender policy at submission: the tenant is known and unlocked, the message valid (and
    /// normalised, with Received, Date and Message-ID), the senders approved; List-Unsubscribe for a
    /// single-recipient message; DKIM signatures of the tenant's keys for the From domain.
    fn apply_policy(
        &self,
        registry: &crate::policy::TenantRegistry,
        id: u64,
        s: &Submission,
        recipients: &[String],
    ) -> Result<(Arc<Vec<u8>>, MessageFlags), SubmitError> {
        use crate::policy::{Refusal, Stamp, Trace};
        let unique = format!("{id:016x}");
        let now = Now::system().unix();
        let client_host = if s.client_host.is_empty() {
            "localhost"
        } else {
            &s.client_host
        };
        let stamp = Stamp {
            now,
            unique_id: &unique,
            trace: Some(Trace {
                from_host: client_host,
                from_ip: s.client_ip,
                by_host: &self.host_name,
                with: if s.protocol.is_empty() {
                    "LOCAL"
                } else {
                    &s.protocol
                },
                id: &unique,
                tls: Some(s.tls.as_str()),
                auth: Some(s.auth.as_str()),
            }),
        };
        let admitted = crate::policy::submit(
            registry,
            &s.tenant,
            &s.sender,
            &s.body,
            &self.validation,
            &stamp,
        )
        .map_err(|r| match r {
            Refusal::UnknownTenant(t) => SubmitError::UnknownTenant(t),
            Refusal::AccountLocked(t) => SubmitError::AccountLocked(t),
            r @ Refusal::SenderNotApproved { .. } => SubmitError::SenderNotApproved(r.to_string()),
            Refusal::InvalidMessage(e) => SubmitError::Invalid(e.to_string()),
        })?;
        let msg = &admitted.message;
        let mut bytes = match (
            recipients,
            admitted
                .tenant
                .unsubscribe_fields(&recipients[0], &msg.message_id),
        ) {
            ([one], Some(fields)) if !one.is_empty() => {
                let mut f = Vec::new();
                fields.write(&mut f);
                crate::policy::with_fields(msg, &f)
            }
            _ => msg.bytes.clone(),
        };
        if let Some(from_domain) = msg
            .from
            .first()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d)
        {
            for signer in admitted.tenant.signers_for(from_domain) {
                bytes = signer
                    .sign_message(&bytes, now)
                    .map_err(|e| SubmitError::Invalid(format!("DKIM signing failed: {e}")))?;
            }
        }
        let mut flags = io::flags_for(&s.sender, recipients, &[]);
        if msg.needs_8bitmime {
            flags = MessageFlags(flags.0 | MessageFlags::EIGHT_BIT.0);
        }
        if msg.needs_smtputf8 {
            flags = MessageFlags(flags.0 | MessageFlags::SMTPUTF8.0);
        }
        // Validation normalised the line ends; the fields added since are checked with them.
        if crate::smtp::session::is_crlf_clean(&bytes) {
            flags = flags | MessageFlags::CRLF;
        }
        Ok((Arc::new(bytes), flags))
    }

    /// Without tenants: the message is still validated and normalised (RFC 5322; Date and Message-ID
    /// added when missing), nothing else.
    fn validate_only(
        &self,
        id: u64,
        s: &Submission,
        recipients: &[String],
    ) -> Result<(Arc<Vec<u8>>, MessageFlags), SubmitError> {
        let unique = format!("{id:016x}");
        let client_host = if s.client_host.is_empty() {
            "localhost"
        } else {
            &s.client_host
        };
        let stamp = crate::policy::Stamp {
            now: Now::system().unix(),
            unique_id: &unique,
            // A message relayed over SMTP gets its trace field also without tenants (RFC 5321 §4.4).
            trace: (!s.protocol.is_empty()).then_some(crate::policy::Trace {
                from_host: client_host,
                from_ip: s.client_ip,
                by_host: &self.host_name,
                with: &s.protocol,
                id: &unique,
                tls: Some(s.tls.as_str()),
                auth: Some(s.auth.as_str()),
            }),
        };
        let msg = crate::policy::validate(&s.body, &self.validation, &stamp)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        let mut flags = io::flags_for(&s.sender, recipients, &[]);
        if msg.needs_8bitmime {
            flags = MessageFlags(flags.0 | MessageFlags::EIGHT_BIT.0);
        }
        if msg.needs_smtputf8 {
            flags = MessageFlags(flags.0 | MessageFlags::SMTPUTF8.0);
        }
        // The validator's output has CRLF line ends only (it normalises them).
        flags = flags | MessageFlags::CRLF;
        Ok((Arc::new(msg.bytes), flags))
    }

    /// What opening the spool found, summed over the shards: records replayed, torn tails cut,
    /// damaged stretches and segments, messages and recipients recovered.
    pub fn recovery(&self) -> &crate::spool::RecoveryReport {
        &self.recovery
    }

    /// Applies a changed configuration to the running engine, all or nothing: the shaping rules
    /// (the next token taken), the bounce rules (the next reply classified, for retries, shaping and
    /// suppression alike) and the tenants (approved senders, DKIM keys, locks: the next message
    /// admitted). Everything is checked before anything changes; a configuration that does not
    /// check is refused with its key and the running one stays whole. Sections that cannot change
    /// while running (spool, shards, DNS, delivery, sources and pools, smarthost, suppression,
    /// VERP, the retry schedule's other keys, turning tenants on or off) are named in
    /// [`ReloadReport::needs_restart`] and left as they were.
    pub fn reload(&self, new: &EngineConfig) -> Result<ReloadReport, EngineError> {
        new.resolve().map_err(EngineError::Config)?;
        let rules = new.shaping.rule_set().map_err(EngineError::Config)?;
        let classifier = classifier_of(new)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let old = running.clone();
        let mut report = ReloadReport::default();
        let differs = |a: &dyn fmt::Debug, b: &dyn fmt::Debug| format!("{a:?}") != format!("{b:?}");
        // Tenants: checked (keys read, names unique) before anything is applied.
        let tenants_changed = differs(&old.tenants, &new.tenants);
        let policy = crate::policy::PolicyConfig {
            tenants: new.tenants.clone(),
        };
        let mut apply_tenants = false;
        if tenants_changed {
            match (&self.tenants, new.tenants.is_empty()) {
                (Some(_), false) => {
                    crate::policy::TenantRegistry::from_config(&policy, &new.base_dir).map_err(
                        |err| {
                            EngineError::Config(ConfigError {
                                key: "tenant".into(),
                                message: err.to_string(),
                            })
                        },
                    )?;
                    apply_tenants = true;
                }
                _ => report
                    .needs_restart
                    .push("tenant (turning the sender policy on or off)".into()),
            }
        }
        let blank_rules = |c: &EngineConfig| {
            let mut r = c.retry.clone();
            r.rules.clear();
            r.rules_file = Default::default();
            r
        };
        for (name, changed) in [
            ("engine", differs(&old.engine, &new.engine)),
            ("dns", differs(&old.dns, &new.dns)),
            ("delivery", differs(&old.delivery, &new.delivery)),
            ("retry", differs(&blank_rules(&old), &blank_rules(new))),
            ("sources", differs(&old.sources, &new.sources)),
            ("pools", differs(&old.pools, &new.pools)),
            ("routing", differs(&old.routing, &new.routing)),
            ("smarthost", differs(&old.smarthost, &new.smarthost)),
            ("suppression", differs(&old.suppression, &new.suppression)),
            ("verp", differs(&old.verp, &new.verp)),
        ] {
            if changed {
                report.needs_restart.push(name.into());
            }
        }
        // Everything checked: apply.
        if differs(&old.shaping, &new.shaping) {
            self.shaping.reload(rules);
            running.shaping = new.shaping.clone();
            report.applied.push("shaping".into());
        }
        let rules_changed = old.retry.rules != new.retry.rules
            || old.retry.rules_file != new.retry.rules_file
            || !new.retry.rules_file.as_os_str().is_empty();
        if rules_changed && old.retry.policy == new.retry.policy {
            self.classifier.store(classifier);
            running.retry.rules = new.retry.rules.clone();
            running.retry.rules_file = new.retry.rules_file.clone();
            report.applied.push("bounce rules".into());
        }
        if apply_tenants && let Some(t) = &self.tenants {
            t.replace_all(&policy, &new.base_dir).map_err(|err| {
                EngineError::Config(ConfigError {
                    key: "tenant".into(),
                    message: err.to_string(),
                })
            })?;
            running.tenants = new.tenants.clone();
            report.applied.push("tenants".into());
        }
        Ok(report)
    }

    /// The tenant registry, to lock, unlock, add or change tenants while the engine runs (`None` when
    /// no tenant is configured).
    pub fn tenants(&self) -> Option<&crate::policy::TenantRegistry> {
        self.tenants.as_deref()
    }

    /// The suppression in force for `address` on `stream` (`None`: the every-stream entries only)
    /// for `tenant` (empty: the default tenant) now, if any. `None` also when suppression is off.
    pub fn suppression(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
    ) -> Option<suppression::Hit> {
        self.suppression
            .as_ref()?
            .check(tenant, address, stream, Now::system().unix())
    }

    /// Suppresses `address` by hand for `tenant` (empty: the default tenant) on `stream` (`None`:
    /// every stream) until `expires` (Unix seconds; `None`: for good). On disk (per
    /// `[suppression] sync`) and in force for submissions when it returns.
    pub fn suppress(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
        reason: crate::bounce::Reason,
        expires: Option<u64>,
    ) -> Result<crate::bounce::Suppression, SuppressionError> {
        self.suppression
            .as_ref()
            .ok_or(SuppressionError::Disabled)?
            .add(tenant, address, stream, reason, expires)
    }

    /// Removes a suppression (the entry for `stream`, or the every-stream one for `None`); returns
    /// whether there was one.
    pub fn unsuppress(
        &self,
        tenant: &str,
        address: &str,
        stream: Option<&str>,
    ) -> Result<bool, SuppressionError> {
        self.suppression
            .as_ref()
            .ok_or(SuppressionError::Disabled)?
            .remove(tenant, address, stream)
    }

    /// Every suppression of `tenant` (empty: the default tenant; `None`: every tenant), sorted by
    /// tenant and address, expired ones included.
    pub fn suppressions(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<crate::bounce::Suppression>, SuppressionError> {
        Ok(self
            .suppression
            .as_ref()
            .ok_or(SuppressionError::Disabled)?
            .list(tenant))
    }

    /// Rewrites the suppression log with only the entries in force now (expired ones and replaced
    /// records dropped; soft-bounce counters kept), while the engine delivers; returns how many
    /// expired entries were dropped.
    pub fn compact_suppressions(&self) -> Result<usize, SuppressionError> {
        self.suppression
            .as_ref()
            .ok_or(SuppressionError::Disabled)?
            .compact(Now::system().unix())
    }

    /// Recipients refused at submission because they were suppressed, and changes the suppression
    /// log could not write, since start.
    pub fn suppression_counts(&self) -> (u64, u64) {
        self.suppression.as_ref().map_or((0, 0), |s| {
            (
                s.suppressed.load(Ordering::Relaxed),
                s.errors.load(Ordering::Relaxed),
            )
        })
    }

    /// Applies an inbound report (a DSN, a non-standard bounce, an ARF complaint, an auto-reply) that
    /// came back for `tenant` (empty: the default tenant; a verified VERP address names its own).
    ///
    /// With `[verp]` configured, the report is matched through the VERP address it was sent to (or,
    /// for ARF, the returned message's `Return-Path`): a verified one names the message, the
    /// recipient and the tenant; one of ours that does not verify refuses the report with
    /// [`InboundError::ForgedVerp`] and changes nothing; a report to no VERP address is matched by
    /// recipient address and tenant and applied only with `trust_unsigned`. Without `[verp]`,
    /// reports are matched by recipient address and tenant.
    ///
    /// An applied report changes the suppression list (a hard bounce at once, soft ones counted, a
    /// complaint for every stream of the tenant) and emits events: `late-bounce` or `late-deferral`
    /// for a DSN (the receiver accepted with 250, then failed), `complaint` for an ARF report.
    pub fn apply_report(&self, tenant: &str, raw: &[u8]) -> Result<ReportOutcome, InboundError> {
        let inbound = suppression::Inbound {
            classifier: &self.classifier,
            verp: self.verp.as_ref(),
            trust_unsigned: self.trust_unsigned,
            suppression: self.suppression.as_deref(),
            message_id_domain: &self.validation.message_id_domain,
        };
        let outcome = inbound.apply(tenant, raw)?;
        let mut events = outcome.events.clone();
        if !events.is_empty() {
            self.events.push(&mut events);
        }
        Ok(outcome)
    }

    /// Cancels every recipient of a message not yet delivered; returns how many were cancelled (a
    /// `Cancelled` event follows for each).
    pub fn cancel(&self, id: u64) -> usize {
        let mut total = 0;
        for s in &self.shards {
            let (tx, rx) = crossbeam::channel::bounded(1);
            if s.control.send(Control::Cancel(id, tx)).is_ok() {
                let _ = s.waker.wake();
                total += rx.recv_timeout(Duration::from_secs(30)).unwrap_or(0);
            }
        }
        total
    }

    /// Stops starting transactions, on every shard: submissions are still accepted and spooled,
    /// MX lookups still run, transactions under way finish, idle connections close after the idle
    /// timeout. Mail waits until [`Engine::resume`]. A pause is not persisted: a new engine starts
    /// delivering.
    pub fn pause(&self) {
        self.send_pause(true);
    }

    /// Starts transactions again after [`Engine::pause`]: every queue is looked at at once.
    pub fn resume(&self) {
        self.send_pause(false);
    }

    fn send_pause(&self, paused: bool) {
        for s in &self.shards {
            if s.control.send(Control::Pause(paused)).is_ok() {
                let _ = s.waker.wake();
            }
        }
    }

    /// Moves up to `max` pending events into `out`; returns how many.
    pub fn poll_events(&self, out: &mut Vec<DeliveryEvent>, max: usize) -> usize {
        self.events.poll(out, max)
    }

    /// Waits until events are pending or `timeout` passes (or [`Engine::wakeup`]); true if pending.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.events.wait(timeout)
    }

    /// Wakes every thread in [`Engine::wait`].
    pub fn wakeup(&self) {
        self.events.wake();
    }

    /// A file descriptor readable while events are pending (for poll/epoll/asyncio).
    pub fn event_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.events.pipe_rx.as_raw_fd()
    }

    /// Counters and gauges.
    pub fn metrics(&self) -> Metrics {
        Metrics::collect(&self.metrics)
    }

    /// Stops intake, lets in-flight transactions finish within `grace`, then stops the shards.
    /// Everything not delivered stays in the spool.
    pub fn shutdown(&self, grace: Duration) {
        self.accepting.store(false, Ordering::Release);
        for s in &self.shards {
            let _ = s.control.send(Control::Shutdown(grace));
            let _ = s.waker.wake();
        }
        for s in &self.shards {
            let t = s.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(t) = t {
                let _ = t.join();
            }
        }
        // The shards are gone: the writer records and releases what they sent, then stops, and
        // the log's lock goes with it (a new engine may open it while this one is not dropped).
        if let Some(s) = &self.suppression {
            s.stop();
            s.close();
        }
        self.events.wake();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}

fn retry_from(config: &EngineConfig) -> retry::ExponentialRetry {
    let r = &config.retry;
    retry::ExponentialRetry {
        first: r.first_s,
        max: r.max_s,
        jitter: r.jitter,
        max_age: r.max_age_s,
    }
}

fn dns_config(r: &config::Resolved) -> Result<crate::dns::Config, ConfigError> {
    let d = &r.config.dns;
    let mut c = if r.nameservers.is_empty() {
        crate::dns::Config::from_system().map_err(|e| ConfigError {
            key: "dns.nameservers".into(),
            message: format!("no nameservers configured and /etc/resolv.conf unreadable: {e}"),
        })?
    } else {
        crate::dns::Config::with_nameservers(r.nameservers.clone())
    };
    c.timeout = Duration::from_millis(d.timeout_ms);
    c.attempts = d.attempts;
    c.min_ttl = Duration::from_secs(u64::from(d.min_ttl_s));
    c.max_ttl = Duration::from_secs(u64::from(d.max_ttl_s));
    if d.prefer_ipv6 {
        c.family = crate::dns::AddressFamily::Ipv6First;
    }
    Ok(c)
}
