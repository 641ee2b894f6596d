//! `vmta_engine`: a running delivery engine: start, submit, cancel, events, statistics, shutdown.
//!
//! Events follow curl's `curl_multi_info_read`: the engine never calls into the host; the host drains
//! fixed-size `vmta_event` structs with `vmta_engine_poll_events`, and learns that events wait from
//! `vmta_engine_event_fd` (readable while any wait: poll, epoll, libuv, asyncio `add_reader`) or by
//! blocking in `vmta_engine_wait` (a goroutine, a plain thread), which `vmta_engine_wakeup` interrupts.
//! The strings of a polled event are borrowed from the engine handle and stay valid until the next
//! `vmta_engine_poll_events` on that engine or `vmta_engine_free`.

use super::bounce::{
    VMTA_MAX_REPORT_SIZE, name, new_list, new_report, reason_arg, suppression_info, vmta_report,
    vmta_suppression_info, vmta_suppression_list, write_check,
};
use super::boundary::{Registry, bytes, guard, guard_result, out, text, write};
use super::buffer::{new_buffer, vmta_buffer};
use super::config::{snapshot, vmta_config};
use super::error::{report, vmta_error};
use super::result::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, TryLockError};
use std::time::Duration;
use vmta::bounce::Reason;
use vmta::engine::{
    DeliveryEvent, Engine, EngineError, EventKind, InboundError, Submission, SubmitError,
    SuppressionError,
};
use vmta::spool::Priority;

/// A running engine.
#[derive(Debug)]
pub struct vmta_engine {
    _opaque: [u8; 0],
}

/// Borrowed bytes: `len` bytes at `ptr` (not NUL-terminated). As an input, `ptr` may be NULL when
/// `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_str {
    /// The first byte.
    pub ptr: *const u8,
    /// The number of bytes.
    pub len: usize,
}

impl vmta_str {
    const EMPTY: vmta_str = vmta_str {
        ptr: std::ptr::null(),
        len: 0,
    };

    pub(crate) fn of(s: &str) -> vmta_str {
        vmta_str {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
}

/// A metadata tag: given at submission, returned in every event of the message.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_tag {
    /// The name.
    pub key: vmta_str,
    /// The value.
    pub value: vmta_str,
}

/// A message to submit. Every string is copied before `vmta_engine_submit` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_message {
    /// The envelope sender (UTF-8); empty for the null sender `<>`.
    pub sender: vmta_str,
    /// The recipient addresses (UTF-8), `recipients_len` of them (at least 1).
    pub recipients: *const vmta_str,
    /// The number of recipients.
    pub recipients_len: usize,
    /// The tenant (UTF-8); chooses the source pool and the sender policy.
    pub tenant: vmta_str,
    /// Metadata tags (UTF-8), `tags_len` of them; may be NULL when `tags_len` is 0.
    pub tags: *const vmta_tag,
    /// The number of tags.
    pub tags_len: usize,
    /// The message: header fields and body, CRLF line ends (any bytes).
    pub body: vmta_str,
    /// `VMTA_PRIORITY_TRANSACTIONAL` or `VMTA_PRIORITY_BULK`.
    pub priority: u32,
}

/// Delivered ahead of bulk mail in every queue (the default).
pub const VMTA_PRIORITY_TRANSACTIONAL: u32 = 0;
/// Newsletters and campaigns.
pub const VMTA_PRIORITY_BULK: u32 = 1;

/// Largest message (header and body) `vmta_engine_submit` takes: 64 MiB, the spool's limit.
pub const VMTA_MAX_MESSAGE_SIZE: usize = 67108864;
/// Most recipients in one submission (an event's `recipient_index` is 16 bits).
pub const VMTA_MAX_RECIPIENTS: usize = 65535;
/// Longest sender, recipient, tenant, tag name or tag value, in bytes.
pub const VMTA_MAX_FIELD_SIZE: usize = 4096;
/// Most tags on one submission.
pub const VMTA_MAX_TAGS: usize = 64;

/// The receiving server accepted the message for this recipient.
pub const VMTA_EVENT_DELIVERED: u32 = 1;
/// A temporary failure; the next attempt is at `next_attempt`.
pub const VMTA_EVENT_DEFERRED: u32 = 2;
/// A permanent failure; no more attempts.
pub const VMTA_EVENT_BOUNCED: u32 = 3;
/// Temporary failures until the maximum age; no more attempts.
pub const VMTA_EVENT_EXPIRED: u32 = 4;
/// Cancelled by `vmta_engine_cancel` or an operator.
pub const VMTA_EVENT_CANCELLED: u32 = 5;
/// Not queued: the recipient is on the tenant's suppression list (`reason` is the suppression's
/// reason, `text` says since when). Only for a submission that went ahead with other recipients;
/// when every recipient is suppressed `vmta_engine_submit` returns `VMTA_SUPPRESSED` instead.
pub const VMTA_EVENT_SUPPRESSED: u32 = 6;
/// An inbound DSN (`vmta_engine_apply_report`) reports a permanent failure after the receiving
/// server's 250 (`reason` as the classifier says).
pub const VMTA_EVENT_LATE_BOUNCE: u32 = 7;
/// An inbound DSN reports a delay after the receiving server's 250.
pub const VMTA_EVENT_LATE_DEFERRAL: u32 = 8;
/// A spam complaint (an ARF report given to `vmta_engine_apply_report`); the address is now
/// suppressed for every stream of the tenant.
pub const VMTA_EVENT_COMPLAINT: u32 = 9;
/// The engine opened a spool that held mail or damage (once per start, before any delivery event):
/// `message_id` 0, `text` a summary, tags `messages`, `recipients`, `records`, `corrupt_records`,
/// `truncated_bytes`, `damaged_segments`, `removed_segments`, `reconciled` (outcomes taken from the
/// event log), `interrupted_attempts` (attempts under way at the last stop, counted); the spool's
/// counts are `vmta_engine_recovery`'s.
pub const VMTA_EVENT_RECOVERED: u32 = 10;
/// A message queued with `vmta_engine_submit_nowait` that the spool could not take after its id was
/// returned (a full disk, a write error): nothing is queued for this recipient; `text` says why.
pub const VMTA_EVENT_REFUSED: u32 = 11;

/// One recipient's outcome of one attempt. The `vmta_str` fields and `tags` are borrowed from the
/// engine: valid until the next `vmta_engine_poll_events` on the same engine or `vmta_engine_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_event {
    /// The id `vmta_engine_submit` returned (0 for a report event whose message is not known).
    pub message_id: u64,
    /// `VMTA_EVENT_*`.
    pub kind: u32,
    /// The SMTP reply code; 0 when no server answered (DNS or connection failures).
    pub code: u16,
    /// The recipient's position in the submitted `recipients` array.
    pub recipient_index: u16,
    /// The enhanced status code class (2, 4 or 5; 0 when the reply had none).
    pub enhanced_class: u16,
    /// The enhanced status code subject.
    pub enhanced_subject: u16,
    /// The enhanced status code detail.
    pub enhanced_detail: u16,
    /// Attempts made, this one included.
    pub attempts: u16,
    /// For `VMTA_EVENT_DEFERRED`: Unix time (seconds) of the next attempt.
    pub next_attempt: u64,
    /// Unix time (seconds) of submission.
    pub submitted_at: u64,
    /// Unix time of this event, in milliseconds.
    pub at_ms: u64,
    /// The recipient address.
    pub recipient: vmta_str,
    /// The tenant.
    pub tenant: vmta_str,
    /// The reply text or the failure description.
    pub text: vmta_str,
    /// The conversation phase of the reply or failure (`resolve`, `connect`, `rcpt`, `end-of-data`,
    /// ...); empty when none.
    pub phase: vmta_str,
    /// For failures, the reason in the bounce classifier's words (`userunknown`, `mailboxfull`, ...);
    /// may be empty.
    pub reason: vmta_str,
    /// The MX host (or smarthost) tried; may be empty.
    pub mx: vmta_str,
    /// Its IP address as text, if a connection was made; else empty.
    pub ip: vmta_str,
    /// The source (sending identity) used.
    pub source: vmta_str,
    /// The tags given at submission.
    pub tags: *const vmta_tag,
    /// The number of tags.
    pub tags_len: usize,
}

/// `vmta_reload_report.applied`: the shaping rules were replaced.
pub const VMTA_RELOAD_SHAPING: u32 = 1;
/// `vmta_reload_report.applied`: the bounce rules were replaced.
pub const VMTA_RELOAD_BOUNCE_RULES: u32 = 2;
/// `vmta_reload_report.applied`: the tenants were replaced.
pub const VMTA_RELOAD_TENANTS: u32 = 4;
/// `vmta_reload_report.needs_restart`: `[engine]` changed.
pub const VMTA_RESTART_ENGINE: u32 = 1;
/// `vmta_reload_report.needs_restart`: `[dns]` changed.
pub const VMTA_RESTART_DNS: u32 = 2;
/// `vmta_reload_report.needs_restart`: `[delivery]` changed.
pub const VMTA_RESTART_DELIVERY: u32 = 4;
/// `vmta_reload_report.needs_restart`: `[retry]` (other than its rules) changed.
pub const VMTA_RESTART_RETRY: u32 = 8;
/// `vmta_reload_report.needs_restart`: the sources changed.
pub const VMTA_RESTART_SOURCES: u32 = 16;
/// `vmta_reload_report.needs_restart`: the pools changed.
pub const VMTA_RESTART_POOLS: u32 = 32;
/// `vmta_reload_report.needs_restart`: `[routing]` changed.
pub const VMTA_RESTART_ROUTING: u32 = 64;
/// `vmta_reload_report.needs_restart`: `[smarthost]` changed.
pub const VMTA_RESTART_SMARTHOST: u32 = 128;
/// `vmta_reload_report.needs_restart`: `[suppression]` changed.
pub const VMTA_RESTART_SUPPRESSION: u32 = 256;
/// `vmta_reload_report.needs_restart`: `[verp]` changed.
pub const VMTA_RESTART_VERP: u32 = 512;
/// `vmta_reload_report.needs_restart`: tenants turned on or off.
pub const VMTA_RESTART_TENANTS: u32 = 1024;

/// What `vmta_engine_reload` did: `VMTA_RELOAD_*` bits of what is in force now, `VMTA_RESTART_*`
/// bits of what changed but needs a restart (left as it was).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmta_reload_report {
    /// `VMTA_RELOAD_*` bits.
    pub applied: u32,
    /// `VMTA_RESTART_*` bits.
    pub needs_restart: u32,
}

/// What opening the engine's spool found (recovery after a restart or a crash), summed over shards.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmta_recovery_report {
    /// Segment files scanned.
    pub segments: u64,
    /// Messages recovered with at least one recipient still to deliver.
    pub messages: u64,
    /// Recipients still to deliver.
    pub recipients: u64,
    /// Valid records replayed.
    pub records: u64,
    /// Damaged stretches skipped (each counted once).
    pub corrupt_records: u64,
    /// Bytes in those stretches.
    pub corrupt_bytes: u64,
    /// Bytes of torn tails cut after the last valid record.
    pub truncated_bytes: u64,
    /// Valid records about messages no longer queued.
    pub orphan_records: u64,
    /// Segment files removed at open (interrupted creations, nothing live).
    pub removed_segments: u64,
    /// Segment files with an unreadable header, set aside as `*.seg.damaged`.
    pub damaged_segments: u64,
    /// Milliseconds the slowest shard's scan took.
    pub elapsed_ms: u64,
}

/// Counters (since start) and gauges (now), summed over shards.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct vmta_stats {
    /// Shard threads.
    pub shards: u64,
    /// Recipients accepted by submission.
    pub submitted: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Deferrals.
    pub deferred: u64,
    /// Recipients bounced.
    pub bounced: u64,
    /// Recipients expired.
    pub expired: u64,
    /// Recipients cancelled.
    pub cancelled: u64,
    /// Recipients waiting (gauge).
    pub queued: u64,
    /// Recipients in an SMTP transaction (gauge).
    pub in_flight: u64,
    /// Open SMTP connections (gauge).
    pub connections_open: u64,
    /// SMTP connections opened.
    pub connections_opened: u64,
    /// Connections that failed before the session was ready.
    pub connection_failures: u64,
    /// Spool write errors on state changes.
    pub spool_errors: u64,
    /// Recipients left out at submission because they were suppressed.
    pub suppressed: u64,
}

/// The tag views of the last poll. They point into the events kept next to them.
#[derive(Debug, Default)]
struct TagViews(Vec<vmta_tag>);

// SAFETY: the raw pointers only point into strings owned by the `Polled` that owns this vector, and
// Rust never dereferences them; they are read by the C caller under the documented lifetime rules.
unsafe impl Send for TagViews {}
// SAFETY: as above; shared references never dereference the pointers.
unsafe impl Sync for TagViews {}

/// What the last `vmta_engine_poll_events` handed out, kept alive until the next one.
#[derive(Debug, Default)]
struct Polled {
    events: Vec<DeliveryEvent>,
    ips: Vec<String>,
    tags: TagViews,
}

#[derive(Debug)]
pub(crate) struct EngineHandle {
    engine: Engine,
    shut: AtomicBool,
    polled: Mutex<Polled>,
}

static ENGINES: Registry<EngineHandle> = Registry::new();

/// Starts an engine from a configuration (which is copied: the caller may free it at once): checks
/// every value, opens and recovers each shard's spool, starts the shard threads. On failure returns
/// `VMTA_CONFIG` (the `vmta_error` names the key) or `VMTA_START_FAILED`.
///
/// # Safety
/// `engine_out` must be writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_new(
    config: *const vmta_config,
    engine_out: *mut *mut vmta_engine,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let config = snapshot(config)?;
        let engine_out = out(engine_out)?;
        match Engine::start(&config) {
            Ok(engine) => {
                let handle = ENGINES.insert(EngineHandle {
                    engine,
                    shut: AtomicBool::new(false),
                    polled: Mutex::new(Polled::default()),
                });
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { write(engine_out, handle) };
                Ok(())
            }
            Err(e) => {
                let (code, key) = match &e {
                    EngineError::Config(c) => (VMTA_CONFIG, c.key.as_str()),
                    EngineError::Spool { .. } | EngineError::Io(_) => (VMTA_START_FAILED, ""),
                };
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, code, key, &e.to_string()) };
                Err(code)
            }
        }
    })
}

/// Reads one string field of a message.
///
/// # Safety
/// `s.ptr` must be readable for `s.len` bytes unless NULL.
unsafe fn field(s: vmta_str) -> Result<String, vmta_result> {
    // SAFETY: passed on from the caller.
    unsafe { text(s.ptr, s.len, VMTA_MAX_FIELD_SIZE) }.map(str::to_string)
}

/// An array input.
///
/// # Safety
/// `ptr` must be valid for `len` elements unless NULL.
unsafe fn array<'a, T>(ptr: *const T, len: usize, limit: usize) -> Result<&'a [T], vmta_result> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(VMTA_NULL_PARAMETER);
    }
    if len > limit {
        return Err(VMTA_TOO_LARGE);
    }
    // SAFETY: not NULL, the caller promises `len` valid, aligned elements; `limit` keeps the size far
    // below isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Copies a `vmta_message` into a submission.
///
/// # Safety
/// Every pointer in `m` must be valid as documented on `vmta_message`.
unsafe fn read_message(m: &vmta_message) -> Result<Submission, vmta_result> {
    let priority = match m.priority {
        VMTA_PRIORITY_TRANSACTIONAL => Priority::Transactional,
        VMTA_PRIORITY_BULK => Priority::Bulk,
        _ => return Err(VMTA_INVALID_ARGUMENT),
    };
    // SAFETY: the caller's promise about the pointers in `m` is passed on (here and below).
    let recipients = unsafe { array(m.recipients, m.recipients_len, VMTA_MAX_RECIPIENTS) }?;
    // SAFETY: as above.
    let tags = unsafe { array(m.tags, m.tags_len, VMTA_MAX_TAGS) }?;
    // SAFETY: as above.
    let body = unsafe { bytes(m.body.ptr, m.body.len, VMTA_MAX_MESSAGE_SIZE) }?;
    let mut s = Submission {
        // SAFETY: as above.
        sender: unsafe { field(m.sender) }?,
        // SAFETY: as above.
        tenant: unsafe { field(m.tenant) }?,
        priority,
        ..Submission::default()
    };
    s.recipients.reserve(recipients.len());
    for r in recipients {
        // SAFETY: as above.
        s.recipients.push(unsafe { field(*r) }?);
    }
    for t in tags {
        // SAFETY: as above.
        let (k, v) = unsafe { (field(t.key)?, field(t.value)?) };
        if k.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        s.tags.push((k, v));
    }
    s.body = body.to_vec();
    Ok(s)
}

fn refusal(e: &SubmitError) -> vmta_result {
    match e {
        SubmitError::Busy => VMTA_BUSY,
        SubmitError::ShuttingDown => VMTA_SHUTTING_DOWN,
        SubmitError::Invalid(_) => VMTA_INVALID_MESSAGE,
        SubmitError::UnknownTenant(_) => VMTA_UNKNOWN_TENANT,
        SubmitError::AccountLocked(_) => VMTA_ACCOUNT_LOCKED,
        SubmitError::SenderNotApproved(_) => VMTA_SENDER_NOT_APPROVED,
        SubmitError::NoSpace => VMTA_NO_SPACE,
        SubmitError::Spool(_) => VMTA_SPOOL_ERROR,
        SubmitError::Suppressed(_) => VMTA_SUPPRESSED,
    }
}

/// Queues a message. Everything is copied before the call returns. On success writes the message id
/// (carried by every event of the message) to `*id_out` once the message is durable per the configured
/// durability. A refusal (`VMTA_BUSY`, `VMTA_INVALID_MESSAGE`, `VMTA_UNKNOWN_TENANT`,
/// `VMTA_ACCOUNT_LOCKED`, `VMTA_SENDER_NOT_APPROVED`, `VMTA_SUPPRESSED`, `VMTA_NO_SPACE`,
/// `VMTA_SPOOL_ERROR`, `VMTA_SHUTTING_DOWN`) queues nothing; `err_out`, when not NULL, receives the
/// reason in words. Recipients on the tenant's suppression list (the tag `stream` chooses the
/// stream) are left out and reported as `VMTA_EVENT_SUPPRESSED` events; `VMTA_SUPPRESSED` when that
/// leaves none.
///
/// # Safety
/// `message` must point to a `vmta_message` whose pointers are valid as documented there; `id_out`
/// writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_submit(
    engine: *const vmta_engine,
    message: *const vmta_message,
    id_out: *mut u64,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    // SAFETY: the caller's promises are this function's.
    unsafe { submit_with(engine, message, id_out, err_out, Engine::submit) }
}

/// Reads a message and queues it with `submit` (waiting or not), writing the id or the refusal.
///
/// # Safety
/// As `vmta_engine_submit`.
unsafe fn submit_with(
    engine: *const vmta_engine,
    message: *const vmta_message,
    id_out: *mut u64,
    err_out: *mut *mut vmta_error,
    submit: fn(&Engine, &Submission) -> Result<u64, SubmitError>,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let id_out = out(id_out)?;
        if message.is_null() {
            return Err(VMTA_NULL_PARAMETER);
        }
        // SAFETY: not NULL; the caller promises a valid, aligned vmta_message.
        let m = unsafe { &*message };
        // SAFETY: the caller promises the pointers inside are valid.
        let submission = unsafe { read_message(m) }?;
        match submit(&h.engine, &submission) {
            Ok(id) => {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { write(id_out, id) };
                Ok(())
            }
            Err(e) => {
                let code = refusal(&e);
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, code, "", &e.to_string()) };
                Err(code)
            }
        }
    })
}

/// Queues a message without waiting for the disk: writes its id to `*id_out` once the message is
/// checked and handed to the engine, before it is durable. The engine's group commit makes it durable
/// before any delivery, sharing one disk flush among everything submitted meanwhile, so one message per
/// call is as fast as a batch. Refusals known at once are returned as by `vmta_engine_submit` (nothing
/// queued); a refusal of the spool after the id was written (a full disk, a write error) comes as one
/// `VMTA_EVENT_REFUSED` event per recipient instead, and nothing is queued. When the engine's
/// submission queue is full this waits for room (up to 30 s, then `VMTA_BUSY`).
/// `vmta_engine_flush` waits until everything submitted this way is durable.
///
/// # Safety
/// As `vmta_engine_submit`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_submit_nowait(
    engine: *const vmta_engine,
    message: *const vmta_message,
    id_out: *mut u64,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    // SAFETY: the caller's promises are this function's.
    unsafe { submit_with(engine, message, id_out, err_out, Engine::submit_nowait) }
}

/// Waits until every message queued with `vmta_engine_submit_nowait` (by any thread) is durable or
/// refused (its `VMTA_EVENT_REFUSED` events queued): `VMTA_OK`, or `VMTA_TIMEOUT` when `timeout_ms`
/// passed first.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_engine_flush(engine: *const vmta_engine, timeout_ms: u32) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        if h.engine.flush(Duration::from_millis(u64::from(timeout_ms))) {
            Ok(())
        } else {
            Err(VMTA_TIMEOUT)
        }
    })
}

/// Cancels every recipient of a message not yet delivered; a `VMTA_EVENT_CANCELLED` event follows for
/// each. Writes how many were cancelled to `*cancelled_out` when it is not NULL (0 for an unknown id or
/// a message already finished).
///
/// # Safety
/// `cancelled_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_cancel(
    engine: *const vmta_engine,
    message_id: u64,
    cancelled_out: *mut usize,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        if h.shut.load(Ordering::Acquire) {
            return Err(VMTA_SHUTTING_DOWN);
        }
        let n = h.engine.cancel(message_id);
        if !cancelled_out.is_null() {
            // SAFETY: not NULL; the caller promises it is writable.
            unsafe { write(cancelled_out, n) };
        }
        Ok(())
    })
}

fn kind_code(k: EventKind) -> u32 {
    match k {
        EventKind::Delivered => VMTA_EVENT_DELIVERED,
        EventKind::Deferred => VMTA_EVENT_DEFERRED,
        EventKind::Bounced => VMTA_EVENT_BOUNCED,
        EventKind::Expired => VMTA_EVENT_EXPIRED,
        EventKind::Cancelled => VMTA_EVENT_CANCELLED,
        EventKind::Suppressed => VMTA_EVENT_SUPPRESSED,
        EventKind::LateBounce => VMTA_EVENT_LATE_BOUNCE,
        EventKind::LateDeferral => VMTA_EVENT_LATE_DEFERRAL,
        EventKind::Complaint => VMTA_EVENT_COMPLAINT,
        EventKind::Recovered => VMTA_EVENT_RECOVERED,
        EventKind::Refused => VMTA_EVENT_REFUSED,
    }
}

/// Moves up to `capacity` pending events into `events_out[0..n]` and writes `n` to `*count_out` (0 when
/// none wait). The strings and tags of the events are borrowed: valid until the next call of this
/// function on the same engine or `vmta_engine_free`. Events have one consumer: while one thread is in
/// this function, another gets `VMTA_CONCURRENT_POLL`. Works after `vmta_engine_shutdown`, to drain the
/// last events.
///
/// # Safety
/// `events_out` must be valid for writes of `capacity` `vmta_event`s (NULL only with capacity 0);
/// `count_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_poll_events(
    engine: *const vmta_engine,
    events_out: *mut vmta_event,
    capacity: usize,
    count_out: *mut usize,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let count_out = out(count_out)?;
        if capacity > 0 && events_out.is_null() {
            return Err(VMTA_NULL_PARAMETER);
        }
        let mut polled = match h.polled.try_lock() {
            Ok(p) => p,
            Err(TryLockError::WouldBlock) => return Err(VMTA_CONCURRENT_POLL),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        let Polled { events, ips, tags } = &mut *polled;
        if capacity > 0 {
            events.clear();
            ips.clear();
            tags.0.clear();
            h.engine.poll_events(events, capacity);
            for e in events.iter() {
                ips.push(e.ip.map(|ip| ip.to_string()).unwrap_or_default());
            }
            tags.0
                .reserve(events.iter().map(|e| e.tags.len()).sum::<usize>());
            for e in events.iter() {
                for (k, v) in &e.tags {
                    tags.0.push(vmta_tag {
                        key: vmta_str::of(k),
                        value: vmta_str::of(v),
                    });
                }
            }
        }
        let mut first_tag = 0;
        for (i, (e, ip)) in events.iter().zip(ips.iter()).enumerate().take(capacity) {
            let enhanced = e.enhanced;
            let ev = vmta_event {
                message_id: e.message_id,
                kind: kind_code(e.kind),
                code: e.code,
                recipient_index: e.recipient_index,
                enhanced_class: enhanced.map_or(0, |c| u16::from(c.class)),
                enhanced_subject: enhanced.map_or(0, |c| c.subject),
                enhanced_detail: enhanced.map_or(0, |c| c.detail),
                attempts: e.attempts,
                next_attempt: e.next_attempt,
                submitted_at: e.submitted_at,
                at_ms: e.at_ms,
                recipient: vmta_str::of(&e.recipient),
                tenant: vmta_str::of(&e.tenant),
                text: vmta_str::of(&e.text),
                phase: e
                    .phase
                    .map_or(vmta_str::EMPTY, |p| vmta_str::of(p.as_str())),
                reason: vmta_str::of(&e.reason),
                mx: vmta_str::of(&e.mx),
                ip: vmta_str::of(ip),
                source: vmta_str::of(&e.source),
                tags: if e.tags.is_empty() {
                    std::ptr::null()
                } else {
                    tags.0[first_tag..].as_ptr()
                },
                tags_len: e.tags.len(),
            };
            first_tag += e.tags.len();
            // SAFETY: i < capacity (take), and the caller promises `capacity` writable, aligned slots.
            unsafe { write(events_out.add(i), ev) };
        }
        let n = if capacity > 0 { events.len() } else { 0 };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(count_out, n) };
        Ok(())
    })
}

/// A file descriptor that is readable while events are pending (for poll, epoll, kqueue-less event
/// loops, asyncio `add_reader`). Owned by the engine: do not read from or close it. -1 for NULL or a bad
/// handle.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_engine_event_fd(engine: *const vmta_engine) -> std::ffi::c_int {
    guard(-1, || {
        ENGINES.get(engine).map_or(-1, |h| h.engine.event_fd())
    })
}

/// Blocks until events are pending (`VMTA_OK`) or `timeout_ms` passes or `vmta_engine_wakeup` is
/// called (`VMTA_NO_EVENTS`). After `vmta_engine_shutdown`, returns at once: `VMTA_OK` while events are
/// left to drain, then `VMTA_SHUTTING_DOWN`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_engine_wait(engine: *const vmta_engine, timeout_ms: u32) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let timeout = if h.shut.load(Ordering::Acquire) {
            Duration::ZERO
        } else {
            Duration::from_millis(u64::from(timeout_ms))
        };
        if h.engine.wait(timeout) {
            Ok(())
        } else if h.shut.load(Ordering::Acquire) {
            Err(VMTA_SHUTTING_DOWN)
        } else {
            Err(VMTA_NO_EVENTS)
        }
    })
}

/// Wakes every thread blocked in `vmta_engine_wait` on this engine. Safe from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_engine_wakeup(engine: *const vmta_engine) -> vmta_result {
    guard_result(|| {
        ENGINES.get(engine)?.engine.wakeup();
        Ok(())
    })
}

/// Writes what opening the engine's spool found to `*report_out`: the recovery after a restart or
/// a crash (all zero for a new spool).
///
/// # Safety
/// `report_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_recovery(
    engine: *const vmta_engine,
    report_out: *mut vmta_recovery_report,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let report_out = out(report_out)?;
        let r = h.engine.recovery();
        let report = vmta_recovery_report {
            segments: r.segments as u64,
            messages: r.messages,
            recipients: r.recipients,
            records: r.records,
            corrupt_records: r.corrupt_records,
            corrupt_bytes: r.corrupt_bytes,
            truncated_bytes: r.truncated_bytes,
            orphan_records: r.orphan_records,
            removed_segments: r.removed_segments as u64,
            damaged_segments: r.damaged_segments as u64,
            elapsed_ms: r.elapsed.as_millis() as u64,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(report_out, report) };
        Ok(())
    })
}

/// Writes the engine's counters and gauges to `*stats_out`.
///
/// # Safety
/// `stats_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_stats(
    engine: *const vmta_engine,
    stats_out: *mut vmta_stats,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let stats_out = out(stats_out)?;
        let m = h.engine.metrics();
        let t = m.total();
        let stats = vmta_stats {
            shards: m.shards.len() as u64,
            submitted: t.submitted,
            delivered: t.delivered,
            deferred: t.deferred,
            bounced: t.bounced,
            expired: t.expired,
            cancelled: t.cancelled,
            queued: t.queued,
            in_flight: t.in_flight,
            connections_open: t.connections_open,
            connections_opened: t.connections_opened,
            connection_failures: t.connection_failures,
            spool_errors: t.spool_errors,
            suppressed: h.engine.suppression_counts().0,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(stats_out, stats) };
        Ok(())
    })
}

/// The engine's metrics in the Prometheus text exposition format, as a new buffer the caller frees
/// with `vmta_buffer_free`.
///
/// # Safety
/// `text_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_prometheus(
    engine: *const vmta_engine,
    text_out: *mut *mut vmta_buffer,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let text_out = out(text_out)?;
        let buf = new_buffer(h.engine.metrics().prometheus().into_bytes());
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(text_out, buf) };
        Ok(())
    })
}

/// Applies a changed configuration (copied; the caller may free it at once) to the running engine,
/// all or nothing: shaping rules, bounce rules and tenants take effect for the next decision; what
/// needs a restart is reported in `report_out` (if not NULL) and left as it was. A configuration
/// that does not check is refused with `VMTA_CONFIG` (the `vmta_error` names the key) and nothing
/// changes. Safe from any thread.
///
/// # Safety
/// `report_out` NULL or writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_reload(
    engine: *const vmta_engine,
    config: *const vmta_config,
    report_out: *mut vmta_reload_report,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let config = snapshot(config)?;
        match h.engine.reload(&config) {
            Ok(r) => {
                let bit = |names: &[String], table: &[(&str, u32)]| {
                    names
                        .iter()
                        .filter_map(|n| {
                            table
                                .iter()
                                .find(|(k, _)| n.starts_with(k))
                                .map(|(_, b)| *b)
                        })
                        .fold(0, |a, b| a | b)
                };
                let report = vmta_reload_report {
                    applied: bit(
                        &r.applied,
                        &[
                            ("shaping", VMTA_RELOAD_SHAPING),
                            ("bounce rules", VMTA_RELOAD_BOUNCE_RULES),
                            ("tenants", VMTA_RELOAD_TENANTS),
                        ],
                    ),
                    needs_restart: bit(
                        &r.needs_restart,
                        &[
                            ("engine", VMTA_RESTART_ENGINE),
                            ("dns", VMTA_RESTART_DNS),
                            ("delivery", VMTA_RESTART_DELIVERY),
                            ("retry", VMTA_RESTART_RETRY),
                            ("sources", VMTA_RESTART_SOURCES),
                            ("pools", VMTA_RESTART_POOLS),
                            ("routing", VMTA_RESTART_ROUTING),
                            ("smarthost", VMTA_RESTART_SMARTHOST),
                            ("suppression", VMTA_RESTART_SUPPRESSION),
                            ("verp", VMTA_RESTART_VERP),
                            ("tenant", VMTA_RESTART_TENANTS),
                        ],
                    ),
                };
                if !report_out.is_null() {
                    // SAFETY: checked non-NULL; the caller promises it is writable.
                    unsafe { write(report_out, report) };
                }
                Ok(())
            }
            Err(e) => {
                let (code, key) = match &e {
                    EngineError::Config(c) => (VMTA_CONFIG, c.key.as_str()),
                    EngineError::Spool { .. } | EngineError::Io(_) => (VMTA_IO, ""),
                };
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, code, key, &e.to_string()) };
                Err(code)
            }
        }
    })
}

/// Locks (`locked` true) or unlocks a tenant configured with `[[tenant]]`: a locked tenant's
/// submissions are refused with `VMTA_ACCOUNT_LOCKED` and its queued mail is held. `VMTA_UNKNOWN_TENANT`
/// when no such tenant is configured.
///
/// # Safety
/// `tenant` readable for `tenant_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_set_tenant_locked(
    engine: *const vmta_engine,
    tenant: *const u8,
    tenant_len: usize,
    locked: bool,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        // SAFETY: the caller promises tenant_len readable bytes.
        let name = unsafe { text(tenant, tenant_len, VMTA_MAX_FIELD_SIZE) }?;
        let registry = h.engine.tenants().ok_or(VMTA_UNKNOWN_TENANT)?;
        let r = if locked {
            registry.lock(name)
        } else {
            registry.unlock(name)
        };
        r.map_err(|_| VMTA_UNKNOWN_TENANT)
    })
}

// ------------------------------------------------------------------------------------------------
// The engine's suppression list and inbound reports.

fn suppression_result(e: &SuppressionError) -> vmta_result {
    match e {
        SuppressionError::Disabled => VMTA_DISABLED,
        SuppressionError::Invalid(_) => VMTA_INVALID_ARGUMENT,
        SuppressionError::Io(_) => VMTA_IO,
    }
}

/// Whether `address` is suppressed now for `tenant` (empty: the default tenant) on `stream` (empty:
/// the every-stream entries only): the check `vmta_engine_submit` makes. Writes `*suppressed_out`,
/// and when suppressed and `info_out` is not NULL, `*info_out`. With suppression disabled, never
/// suppressed. Safe from any thread; does not wait for writers.
///
/// # Safety
/// Inputs readable for their lengths; `suppressed_out` writable; `info_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_suppression_check(
    engine: *const vmta_engine,
    tenant: *const u8,
    tenant_len: usize,
    address: *const u8,
    address_len: usize,
    stream: *const u8,
    stream_len: usize,
    suppressed_out: *mut bool,
    info_out: *mut vmta_suppression_info,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let suppressed_out = out(suppressed_out)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, address, stream) = unsafe {
            (
                name(tenant, tenant_len)?,
                name(address, address_len)?,
                name(stream, stream_len)?,
            )
        };
        let hit = h
            .engine
            .suppression(tenant, address, (!stream.is_empty()).then_some(stream));
        let info = hit.map(|h| suppression_info(h.reason, h.source, h.created, h.expires));
        // SAFETY: `suppressed_out` checked non-NULL; the caller promises both are writable.
        unsafe { write_check(info, suppressed_out, info_out) };
        Ok(())
    })
}

/// Suppresses `address` by hand for `tenant` (empty: the default tenant) on `stream` (empty: every
/// stream) for `reason` (a reason name such as `userunknown`; empty: `suppressed`) until `expires`
/// (Unix time; 0: for good). In force for submissions, and on disk, when the call returns.
/// `VMTA_DISABLED` when suppression is off; `VMTA_INVALID_ARGUMENT` for an address without `@`, a
/// name with tabs or line ends, or an unknown reason; `VMTA_IO` when the list cannot be written.
///
/// # Safety
/// Inputs readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_suppression_add(
    engine: *const vmta_engine,
    tenant: *const u8,
    tenant_len: usize,
    address: *const u8,
    address_len: usize,
    stream: *const u8,
    stream_len: usize,
    reason: *const u8,
    reason_len: usize,
    expires: u64,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, address, stream, reason) = unsafe {
            (
                name(tenant, tenant_len)?,
                name(address, address_len)?,
                name(stream, stream_len)?,
                name(reason, reason_len)?,
            )
        };
        let reason = reason_arg(reason, Reason::Suppressed)?;
        h.engine
            .suppress(
                tenant,
                address,
                (!stream.is_empty()).then_some(stream),
                reason,
                (expires != 0).then_some(expires),
            )
            .map(drop)
            .map_err(|e| suppression_result(&e))
    })
}

/// Removes the suppression of `address` for `tenant` (empty: the default tenant) on `stream` (empty:
/// the every-stream entry). Writes whether one existed to `*removed_out` when it is not NULL.
/// `VMTA_DISABLED` when suppression is off.
///
/// # Safety
/// Inputs readable for their lengths; `removed_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_suppression_remove(
    engine: *const vmta_engine,
    tenant: *const u8,
    tenant_len: usize,
    address: *const u8,
    address_len: usize,
    stream: *const u8,
    stream_len: usize,
    removed_out: *mut bool,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, address, stream) = unsafe {
            (
                name(tenant, tenant_len)?,
                name(address, address_len)?,
                name(stream, stream_len)?,
            )
        };
        let removed = h
            .engine
            .unsuppress(tenant, address, (!stream.is_empty()).then_some(stream))
            .map_err(|e| suppression_result(&e))?;
        if !removed_out.is_null() {
            // SAFETY: not NULL; the caller promises it is writable.
            unsafe { write(removed_out, removed) };
        }
        Ok(())
    })
}

/// Every entry of the engine's list for `tenant` (empty: every tenant), sorted by tenant and
/// address, expired ones included, as a new `vmta_suppression_list` (read it with
/// `vmta_suppression_list_len` / `_get`, free it with `vmta_suppression_list_free`).
/// `VMTA_DISABLED` when suppression is off.
///
/// # Safety
/// `tenant` readable for `tenant_len` bytes; `list_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_suppression_list_new(
    engine: *const vmta_engine,
    tenant: *const u8,
    tenant_len: usize,
    list_out: *mut *mut vmta_suppression_list,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let list_out = out(list_out)?;
        // SAFETY: the caller promises the length.
        let tenant = unsafe { name(tenant, tenant_len) }?;
        let entries = h
            .engine
            .suppressions((!tenant.is_empty()).then_some(tenant))
            .map_err(|e| suppression_result(&e))?;
        let handle = new_list(&entries);
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(list_out, handle) };
        Ok(())
    })
}

/// Applies an inbound message (a DSN, a non-standard bounce, an ARF complaint, an auto-reply) that
/// came back for `tenant` (empty: the default tenant; a verified VERP address names its own) and
/// writes the per-recipient outcomes as a new report (`vmta_report_*`, `vmta_report_message_id`;
/// free it with `vmta_report_free`).
///
/// With `[verp]` configured the report is matched through the VERP address it came back to (or, for
/// ARF, the returned message's `Return-Path`); a VERP address whose signature does not verify gives
/// `VMTA_FORGED_REPORT` and changes nothing; a report to no VERP address changes nothing unless
/// `[verp] trust_unsigned`. Without VERP, reports are matched by recipient address and tenant.
/// An applied report changes the suppression list and queues events: `VMTA_EVENT_LATE_BOUNCE` or
/// `VMTA_EVENT_LATE_DEFERRAL` for a DSN, `VMTA_EVENT_COMPLAINT` for an ARF report.
/// `VMTA_INVALID_MESSAGE` when the bytes cannot be read as a message; `VMTA_IO` when the list cannot
/// be written (both with a `vmta_error`). Safe from any thread.
///
/// # Safety
/// Inputs readable for their lengths; `report_out` writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_engine_apply_report(
    engine: *const vmta_engine,
    tenant: *const u8,
    tenant_len: usize,
    message: *const u8,
    message_len: usize,
    report_out: *mut *mut vmta_report,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        let report_out = out(report_out)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, message) = unsafe {
            (
                name(tenant, tenant_len)?,
                bytes(message, message_len, VMTA_MAX_REPORT_SIZE)?,
            )
        };
        if message.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        match h.engine.apply_report(tenant, message) {
            Ok(o) => {
                let handle = new_report(o.kind.as_str(), o.outcomes, o.message_id.unwrap_or(0));
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { write(report_out, handle) };
                Ok(())
            }
            Err(e) => {
                let code = match e {
                    InboundError::Unreadable(_) => VMTA_INVALID_MESSAGE,
                    InboundError::ForgedVerp(_) => VMTA_FORGED_REPORT,
                    InboundError::Io(_) => VMTA_IO,
                };
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, code, "", &e.to_string()) };
                Err(code)
            }
        }
    })
}

/// Stops intake (later submissions get `VMTA_SHUTTING_DOWN`), lets in-flight SMTP transactions finish
/// within `grace_ms`, then stops the shard threads. Mail not delivered stays in the spool: an engine
/// started later on the same spool resumes it. Events stay available to `vmta_engine_poll_events`.
/// Calling it again does nothing. The handle stays valid until `vmta_engine_free`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_engine_shutdown(engine: *const vmta_engine, grace_ms: u32) -> vmta_result {
    guard_result(|| {
        let h = ENGINES.get(engine)?;
        h.shut.store(true, Ordering::Release);
        h.engine
            .shutdown(Duration::from_millis(u64::from(grace_ms)));
        Ok(())
    })
}

/// Stops the engine at once if `vmta_engine_shutdown` was not called (no grace: in-flight
/// transactions are abandoned and retried by the next engine on the spool) and frees it; events not
/// polled are dropped, views from the last poll become invalid. `vmta_engine_free(NULL)` does nothing
/// and returns `VMTA_OK`; freeing twice returns `VMTA_INVALID_HANDLE`. A call running on another thread
/// keeps the engine alive until it returns.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_engine_free(engine: *mut vmta_engine) -> vmta_result {
    if engine.is_null() {
        return VMTA_OK;
    }
    guard_result(|| {
        let h = ENGINES.remove(engine)?;
        h.shut.store(true, Ordering::Release);
        h.engine.shutdown(Duration::ZERO);
        Ok(())
    })
}
