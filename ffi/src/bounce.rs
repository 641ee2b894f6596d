//! Bounce handling through the C ABI: classifying an SMTP reply, the per-tenant suppression list
//! (check, add, remove, list), signed VERP return paths, and feeding an inbound DSN or ARF report to
//! the suppression list.
//!
//! These wrap `vmta::bounce` for a host that keeps a list of its own. A running engine has its own
//! list, checked at submission (`VMTA_SUPPRESSED`) and fed by bounces and
//! `vmta_engine_apply_report`: see `vmta_engine_suppression_*` in the engine module.

use super::boundary::{Registry, bytes, guard, guard_result, out, text, write};
use super::engine::vmta_str;
use super::error::{report, vmta_error};
use super::result::*;
use std::sync::{Mutex, OnceLock};
use vmta::bounce::suppression::Source;
use vmta::bounce::{
    Action, Classifier, Diagnostic, OutcomeEvent, Reason, Recorded, SuppressionPolicy,
    SuppressionStore, Verp,
};

/// Longest SMTP reply classified (longer text is cut by the classifier anyway).
pub const VMTA_MAX_REPLY_SIZE: usize = 65536;
/// Largest inbound report read (10 MiB).
pub const VMTA_MAX_REPORT_SIZE: usize = 10485760;
/// Longest tenant, address or stream name in the suppression functions.
pub const VMTA_MAX_NAME_SIZE: usize = 512;

/// Give up on the recipient: bounce.
pub const VMTA_ACTION_BOUNCE: u32 = 1;
/// Try again after `retry_after_s`.
pub const VMTA_ACTION_RETRY: u32 = 2;
/// Nothing to do (not a failure).
pub const VMTA_ACTION_NONE: u32 = 3;

/// What a reply means.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_classification {
    /// The reason in Sisimai's words (`userunknown`, `mailboxfull`, `ratelimited`, ...); static.
    pub reason: vmta_str,
    /// `hard`, `soft`, `block`, `transient` or `success`; static.
    pub kind: vmta_str,
    /// `VMTA_ACTION_*`.
    pub action: u32,
    /// For `VMTA_ACTION_RETRY`, the suggested wait in seconds; else 0.
    pub retry_after_s: u64,
    /// The receiver asks the sender to slow down (the traffic shaper backs off).
    pub throttle: bool,
}

pub(crate) fn static_str(s: &'static str) -> vmta_str {
    vmta_str {
        ptr: s.as_ptr(),
        len: s.len(),
    }
}

fn classifier() -> &'static Classifier {
    static DEFAULT: OnceLock<Classifier> = OnceLock::new();
    DEFAULT.get_or_init(Classifier::default_rules)
}

/// Classifies an SMTP reply line `CODE [X.Y.Z] TEXT` (either number may be missing; a multi-line
/// reply's lines may be given joined) with vmta's shipped rules, and writes the result to `*out`.
///
/// # Safety
/// `reply` readable for `reply_len` bytes; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_classify_reply(
    reply: *const u8,
    reply_len: usize,
    class_out: *mut vmta_classification,
) -> vmta_result {
    guard_result(|| {
        let class_out = out(class_out)?;
        // SAFETY: the caller promises reply_len readable bytes.
        let reply = unsafe { text(reply, reply_len, VMTA_MAX_REPLY_SIZE) }?;
        if reply.trim().is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        let c = classifier().classify(&Diagnostic::from_line(reply));
        let (action, retry_after_s) = match c.action {
            Action::Bounce => (VMTA_ACTION_BOUNCE, 0),
            Action::Retry(d) => (VMTA_ACTION_RETRY, d.as_secs()),
            Action::None => (VMTA_ACTION_NONE, 0),
        };
        let result = vmta_classification {
            reason: static_str(c.reason.as_str()),
            kind: static_str(c.kind.as_str()),
            action,
            retry_after_s,
            throttle: c.throttle,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(class_out, result) };
        Ok(())
    })
}

// ------------------------------------------------------------------------------------------------
// Suppression.

/// A suppression list: an append-only, checksummed log file, one writer (process) at a time. Calls on
/// one store from several threads are serialised.
#[derive(Debug)]
pub struct vmta_suppression {
    _opaque: [u8; 0],
}

static STORES: Registry<Mutex<SuppressionStore>> = Registry::new();

/// Added by a bounce.
pub const VMTA_SOURCE_BOUNCE: u32 = 1;
/// Added by a spam complaint (ARF).
pub const VMTA_SOURCE_COMPLAINT: u32 = 2;
/// Added by hand (`vmta_suppression_add`).
pub const VMTA_SOURCE_MANUAL: u32 = 3;

pub(crate) fn source_code(s: Source) -> u32 {
    match s {
        Source::Bounce => VMTA_SOURCE_BOUNCE,
        Source::Complaint => VMTA_SOURCE_COMPLAINT,
        Source::Manual => VMTA_SOURCE_MANUAL,
    }
}

/// Why and since when an address is suppressed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_suppression_info {
    /// The reason (`userunknown`, `feedback`, ...); static.
    pub reason: vmta_str,
    /// `VMTA_SOURCE_*`.
    pub source: u32,
    /// Unix time it was added.
    pub created: u64,
    /// Unix time it stops applying; 0 for never.
    pub expires: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens (or creates) the suppression log at `path` (UTF-8) with the default policy (hard bounces at
/// once, soft ones at the third, complaints always) and replays it. `VMTA_IO` with a `vmta_error` when
/// the file cannot be opened, or when another open list (in this process or another, a running
/// engine's included) holds its lock, `<path>.lock`: the message names the holder's pid.
///
/// # Safety
/// `path` readable for `path_len` bytes; `store_out` writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_open(
    path: *const u8,
    path_len: usize,
    store_out: *mut *mut vmta_suppression,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let store_out = out(store_out)?;
        // SAFETY: the caller promises path_len readable bytes.
        let path = unsafe { text(path, path_len, 4096) }?;
        if path.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        match SuppressionStore::open(path, SuppressionPolicy::default()) {
            Ok(s) => {
                let handle = STORES.insert(Mutex::new(s));
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { write(store_out, handle) };
                Ok(())
            }
            Err(e) => {
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, VMTA_IO, "", &format!("{path}: {e}")) };
                Err(VMTA_IO)
            }
        }
    })
}

/// Closes a suppression list. `vmta_suppression_free(NULL)` does nothing and returns `VMTA_OK`; freeing
/// twice returns `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_suppression_free(store: *mut vmta_suppression) -> vmta_result {
    if store.is_null() {
        return VMTA_OK;
    }
    guard_result(|| STORES.remove(store).map(drop))
}

/// A name input of the suppression functions: UTF-8, at most `VMTA_MAX_NAME_SIZE` bytes.
///
/// # Safety
/// As `text`.
pub(crate) unsafe fn name<'a>(ptr: *const u8, len: usize) -> Result<&'a str, vmta_result> {
    // SAFETY: passed on from the caller.
    unsafe { text(ptr, len, VMTA_MAX_NAME_SIZE) }
}

/// The C view of a suppression entry.
pub(crate) fn suppression_info(
    reason: Reason,
    source: Source,
    created: u64,
    expires: Option<u64>,
) -> vmta_suppression_info {
    vmta_suppression_info {
        reason: static_str(reason.as_str()),
        source: source_code(source),
        created,
        expires: expires.unwrap_or(0),
    }
}

/// Writes a suppression check's answer: `*suppressed_out`, and the entry to `*info_out` when there is
/// one and `info_out` is not NULL. Shared by the store's and the engine's check.
///
/// # Safety
/// `suppressed_out` non-NULL and writable; `info_out` NULL or writable.
pub(crate) unsafe fn write_check(
    info: Option<vmta_suppression_info>,
    suppressed_out: *mut bool,
    info_out: *mut vmta_suppression_info,
) {
    let suppressed = info.is_some();
    if let (Some(info), false) = (info, info_out.is_null()) {
        // SAFETY: not NULL; the caller promises it is writable.
        unsafe { write(info_out, info) };
    }
    // SAFETY: the caller promises it is non-NULL and writable.
    unsafe { write(suppressed_out, suppressed) };
}

/// A reason name given across the C boundary: `default` when empty, `VMTA_INVALID_ARGUMENT` when
/// unknown.
pub(crate) fn reason_arg(reason: &str, default: Reason) -> Result<Reason, vmta_result> {
    if reason.is_empty() {
        Ok(default)
    } else {
        Reason::parse(reason).ok_or(VMTA_INVALID_ARGUMENT)
    }
}

/// Whether `address` is suppressed for `tenant` on `stream` (empty: any stream only) now. Writes
/// `*suppressed_out`, and when suppressed and `info_out` is not NULL, `*info_out`.
///
/// # Safety
/// Inputs readable for their lengths; `suppressed_out` writable; `info_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_check(
    store: *const vmta_suppression,
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
        let s = STORES.get(store)?;
        let suppressed_out = out(suppressed_out)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, address, stream) = unsafe {
            (
                name(tenant, tenant_len)?,
                name(address, address_len)?,
                name(stream, stream_len)?,
            )
        };
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        let hit = s.check(
            tenant,
            address,
            (!stream.is_empty()).then_some(stream),
            now(),
        );
        let info = hit.map(|h| suppression_info(h.reason, h.source, h.created, h.expires));
        // SAFETY: `suppressed_out` checked non-NULL; the caller promises both are writable.
        unsafe { write_check(info, suppressed_out, info_out) };
        Ok(())
    })
}

/// Suppresses `address` for `tenant` by hand, on `stream` (empty: every stream), for `reason` (a
/// reason name such as `userunknown`; empty: `undefined`), until `expires` (Unix time; 0: never). The
/// change is on disk (fsynced) when the call returns.
///
/// # Safety
/// Inputs readable for their lengths.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_add(
    store: *const vmta_suppression,
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
        let s = STORES.get(store)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, address, stream, reason) = unsafe {
            (
                name(tenant, tenant_len)?,
                name(address, address_len)?,
                name(stream, stream_len)?,
                name(reason, reason_len)?,
            )
        };
        let reason = reason_arg(reason, Reason::Undefined)?;
        let bad = |f: &str| f.is_empty() || f.contains(['\t', '\r', '\n']);
        if bad(tenant)
            || bad(address)
            || !address.contains('@')
            || stream.contains(['\t', '\r', '\n'])
        {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
        s.add(
            tenant,
            address,
            (!stream.is_empty()).then_some(stream),
            reason,
            now(),
            (expires != 0).then_some(expires),
        )
        .map(drop)
        .map_err(|_| VMTA_IO)
    })
}

/// Removes the suppression of `address` for `tenant` on `stream` (empty: the every-stream entry).
/// Writes whether one existed to `*removed_out` when it is not NULL.
///
/// # Safety
/// Inputs readable for their lengths; `removed_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_remove(
    store: *const vmta_suppression,
    tenant: *const u8,
    tenant_len: usize,
    address: *const u8,
    address_len: usize,
    stream: *const u8,
    stream_len: usize,
    removed_out: *mut bool,
) -> vmta_result {
    guard_result(|| {
        let s = STORES.get(store)?;
        // SAFETY: the caller promises the lengths.
        let (tenant, address, stream) = unsafe {
            (
                name(tenant, tenant_len)?,
                name(address, address_len)?,
                name(stream, stream_len)?,
            )
        };
        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
        let removed = s
            .remove(tenant, address, (!stream.is_empty()).then_some(stream))
            .map_err(|_| VMTA_IO)?;
        if !removed_out.is_null() {
            // SAFETY: not NULL; the caller promises it is writable.
            unsafe { write(removed_out, removed) };
        }
        Ok(())
    })
}

/// A snapshot of suppression entries, owned by the caller until `vmta_suppression_list_free`.
#[derive(Debug)]
pub struct vmta_suppression_list {
    _opaque: [u8; 0],
}

#[derive(Debug)]
pub(crate) struct Listed {
    tenant: String,
    address: String,
    stream: String,
    reason: &'static str,
    source: u32,
    created: u64,
    expires: u64,
}

static LISTS: Registry<Vec<Listed>> = Registry::new();

/// A new list handle of these entries.
pub(crate) fn new_list(entries: &[vmta::bounce::Suppression]) -> *mut vmta_suppression_list {
    LISTS.insert(entries.iter().map(listed).collect())
}

fn listed(e: &vmta::bounce::Suppression) -> Listed {
    Listed {
        tenant: e.tenant.clone(),
        address: e.address.clone(),
        stream: e.stream.clone().unwrap_or_default(),
        reason: e.reason.as_str(),
        source: source_code(e.source),
        created: e.created,
        expires: e.expires.unwrap_or(0),
    }
}

/// One entry of a `vmta_suppression_list`; the strings are valid until the list is freed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_suppression_entry {
    /// The tenant.
    pub tenant: vmta_str,
    /// The address (lower case).
    pub address: vmta_str,
    /// The stream; empty for every stream.
    pub stream: vmta_str,
    /// The reason (static).
    pub reason: vmta_str,
    /// `VMTA_SOURCE_*`.
    pub source: u32,
    /// Unix time it was added.
    pub created: u64,
    /// Unix time it stops applying; 0 for never.
    pub expires: u64,
}

/// Every entry of `tenant` (empty: of every tenant), sorted by tenant and address, expired ones
/// included, as a new list.
///
/// # Safety
/// `tenant` readable for `tenant_len` bytes; `list_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_list_new(
    store: *const vmta_suppression,
    tenant: *const u8,
    tenant_len: usize,
    list_out: *mut *mut vmta_suppression_list,
) -> vmta_result {
    guard_result(|| {
        let s = STORES.get(store)?;
        let list_out = out(list_out)?;
        // SAFETY: the caller promises the length.
        let tenant = unsafe { name(tenant, tenant_len) }?;
        let s = s.lock().unwrap_or_else(|e| e.into_inner());
        let entries: Vec<Listed> = s
            .list((!tenant.is_empty()).then_some(tenant))
            .into_iter()
            .map(listed)
            .collect();
        let handle = LISTS.insert(entries);
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(list_out, handle) };
        Ok(())
    })
}

/// The number of entries in a list (0 for NULL or a bad handle).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_suppression_list_len(list: *const vmta_suppression_list) -> usize {
    guard(0, || LISTS.get(list).map_or(0, |l| l.len()))
}

/// Writes entry `index` of a list to `*entry_out`; `VMTA_NOT_FOUND` past the end.
///
/// # Safety
/// `entry_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_list_get(
    list: *const vmta_suppression_list,
    index: usize,
    entry_out: *mut vmta_suppression_entry,
) -> vmta_result {
    guard_result(|| {
        let l = LISTS.get(list)?;
        let entry_out = out(entry_out)?;
        let e = l.get(index).ok_or(VMTA_NOT_FOUND)?;
        // The registry keeps the strings alive until vmta_suppression_list_free.
        let entry = vmta_suppression_entry {
            tenant: vmta_str::of(&e.tenant),
            address: vmta_str::of(&e.address),
            stream: vmta_str::of(&e.stream),
            reason: static_str(e.reason),
            source: e.source,
            created: e.created,
            expires: e.expires,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(entry_out, entry) };
        Ok(())
    })
}

/// Frees a list. `vmta_suppression_list_free(NULL)` does nothing and returns `VMTA_OK`; freeing twice
/// returns `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_suppression_list_free(list: *mut vmta_suppression_list) -> vmta_result {
    if list.is_null() {
        return VMTA_OK;
    }
    guard_result(|| LISTS.remove(list).map(drop))
}

// ------------------------------------------------------------------------------------------------
// VERP and inbound reports.

/// A signed VERP scheme: `prefix+<message-id>.<tag>.<local>=<domain>@<domain>`, the tag an HMAC-SHA-256
/// of the message id and recipient under the tenant's key, so forged bounces cannot suppress.
#[derive(Debug)]
pub struct vmta_verp {
    _opaque: [u8; 0],
}

static VERPS: Registry<Verp> = Registry::new();

/// A VERP scheme with return paths `prefix+...@domain`, signing and verifying with `key` (at least
/// one byte).
///
/// # Safety
/// Inputs readable for their lengths; `verp_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_verp_new(
    prefix: *const u8,
    prefix_len: usize,
    domain: *const u8,
    domain_len: usize,
    key: *const u8,
    key_len: usize,
    verp_out: *mut *mut vmta_verp,
) -> vmta_result {
    guard_result(|| {
        let verp_out = out(verp_out)?;
        // SAFETY: the caller promises the lengths.
        let (prefix, domain, key) = unsafe {
            (
                name(prefix, prefix_len)?,
                name(domain, domain_len)?,
                bytes(key, key_len, 1024)?,
            )
        };
        let ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !ok(prefix) || !ok(domain) || key.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        let handle = VERPS.insert(Verp::new(prefix, domain, &[key]));
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(verp_out, handle) };
        Ok(())
    })
}

/// Frees a VERP scheme. `vmta_verp_free(NULL)` does nothing and returns `VMTA_OK`; freeing twice
/// returns `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_verp_free(verp: *mut vmta_verp) -> vmta_result {
    if verp.is_null() {
        return VMTA_OK;
    }
    guard_result(|| VERPS.remove(verp).map(drop))
}

/// The return path (envelope sender) for `message_id` (`[A-Za-z0-9_-]`, at most 64) sent to
/// `recipient`, as a new buffer. `VMTA_INVALID_ARGUMENT` when either cannot be carried.
///
/// # Safety
/// Inputs readable for their lengths; `address_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_verp_encode(
    verp: *const vmta_verp,
    message_id: *const u8,
    message_id_len: usize,
    recipient: *const u8,
    recipient_len: usize,
    address_out: *mut *mut super::buffer::vmta_buffer,
) -> vmta_result {
    guard_result(|| {
        let v = VERPS.get(verp)?;
        let address_out = out(address_out)?;
        // SAFETY: the caller promises the lengths.
        let (id, rcpt) = unsafe {
            (
                name(message_id, message_id_len)?,
                name(recipient, recipient_len)?,
            )
        };
        let a = v.encode(id, rcpt).map_err(|_| VMTA_INVALID_ARGUMENT)?;
        let buf = super::buffer::new_buffer(a.into_bytes());
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(address_out, buf) };
        Ok(())
    })
}

/// Also change the suppression list for reports whose return path does not verify (or when no VERP
/// scheme is given). Without it such reports are read and reported, and change nothing.
pub const VMTA_REPORT_TRUST_UNSIGNED: u32 = 1;

/// What an inbound report said, per recipient; owned by the caller until `vmta_report_free`.
#[derive(Debug)]
pub struct vmta_report {
    _opaque: [u8; 0],
}

/// A permanent failure.
pub const VMTA_OUTCOME_BOUNCED: u32 = 1;
/// A temporary failure (a `delayed` DSN).
pub const VMTA_OUTCOME_DEFERRED: u32 = 2;
/// A success DSN.
pub const VMTA_OUTCOME_DELIVERED: u32 = 3;
/// A spam complaint (ARF).
pub const VMTA_OUTCOME_COMPLAINT: u32 = 4;
/// An automatic reply.
pub const VMTA_OUTCOME_AUTOREPLY: u32 = 5;

#[derive(Debug)]
pub(crate) struct ReportOutcome {
    recipient: String,
    message_id: String,
    event: u32,
    reason: &'static str,
    feedback_type: String,
    verified: bool,
    suppressed: bool,
}

#[derive(Debug)]
pub(crate) struct ReportDetail {
    kind: &'static str,
    outcomes: Vec<ReportOutcome>,
    /// The engine message id (reports applied by an engine), 0 when unknown.
    message_id: u64,
}

static REPORTS: Registry<ReportDetail> = Registry::new();

/// A new report handle for per-recipient outcomes.
pub(crate) fn new_report(
    kind: &'static str,
    outcomes: Vec<vmta::bounce::Outcome>,
    message_id: u64,
) -> *mut vmta_report {
    REPORTS.insert(ReportDetail {
        kind,
        outcomes: outcomes.into_iter().map(report_outcome).collect(),
        message_id,
    })
}

fn report_outcome(o: vmta::bounce::Outcome) -> ReportOutcome {
    let (event, reason, feedback_type) = match o.event {
        OutcomeEvent::Bounced { reason, .. } => (VMTA_OUTCOME_BOUNCED, reason, ""),
        OutcomeEvent::Deferred { reason, .. } => (VMTA_OUTCOME_DEFERRED, reason, ""),
        OutcomeEvent::Delivered => (VMTA_OUTCOME_DELIVERED, Reason::Delivered, ""),
        OutcomeEvent::Complaint { ref feedback_type } => (
            VMTA_OUTCOME_COMPLAINT,
            Reason::Feedback,
            feedback_type.as_str(),
        ),
        OutcomeEvent::AutoReply => (VMTA_OUTCOME_AUTOREPLY, Reason::Vacation, ""),
    };
    ReportOutcome {
        feedback_type: feedback_type.to_string(),
        recipient: o.recipient,
        message_id: o.message_id.unwrap_or_default(),
        event,
        reason: reason.as_str(),
        verified: o.verified,
        suppressed: matches!(o.suppression, Some(Recorded::Suppressed(_))),
    }
}

/// One recipient's outcome in a report; strings valid until `vmta_report_free`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vmta_report_outcome {
    /// The recipient the report is about.
    pub recipient: vmta_str,
    /// The message id carried by a verified VERP return path; empty otherwise.
    pub message_id: vmta_str,
    /// `VMTA_OUTCOME_*`.
    pub event: u32,
    /// The reason (`userunknown`, `mailboxfull`, ...; `feedback` for complaints); static.
    pub reason: vmta_str,
    /// For complaints, the ARF feedback type (`abuse`, ...); else empty.
    pub feedback_type: vmta_str,
    /// The report came back to a VERP return path whose signature verified.
    pub verified: bool,
    /// The recipient is suppressed now because of this report.
    pub suppressed: bool,
}

/// Reads an inbound message (a DSN, a non-standard bounce, an ARF complaint, an auto-reply) sent back
/// to `tenant`, applies it to the suppression list and writes the per-recipient outcomes as a new
/// report to `*report_out`. With `verp` (may be NULL), the report's recipient address is decoded and
/// verified; flags: `VMTA_REPORT_TRUST_UNSIGNED`. `VMTA_INVALID_MESSAGE` when the bytes cannot be read
/// as a message; `VMTA_IO` (with a `vmta_error`) when the list cannot be written.
///
/// # Safety
/// Inputs readable for their lengths; `report_out` writable; `err_out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_suppression_feed_report(
    store: *const vmta_suppression,
    verp: *const vmta_verp,
    tenant: *const u8,
    tenant_len: usize,
    message: *const u8,
    message_len: usize,
    flags: u32,
    report_out: *mut *mut vmta_report,
    err_out: *mut *mut vmta_error,
) -> vmta_result {
    guard_result(|| {
        let s = STORES.get(store)?;
        let verp = if verp.is_null() {
            None
        } else {
            Some(VERPS.get(verp)?)
        };
        let report_out = out(report_out)?;
        if flags & !VMTA_REPORT_TRUST_UNSIGNED != 0 {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        // SAFETY: the caller promises the lengths.
        let (tenant, message) = unsafe {
            (
                name(tenant, tenant_len)?,
                bytes(message, message_len, VMTA_MAX_REPORT_SIZE)?,
            )
        };
        if tenant.is_empty() || message.is_empty() {
            return Err(VMTA_INVALID_ARGUMENT);
        }
        let parsed = match vmta::bounce::report::parse(message, classifier()) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, VMTA_INVALID_MESSAGE, "", &e.to_string()) };
                return Err(VMTA_INVALID_MESSAGE);
            }
        };
        let decoded = match (&verp, &parsed.report_to) {
            (Some(v), Some(to)) => Some(v.decode(to)),
            _ => None,
        };
        let trust = flags & VMTA_REPORT_TRUST_UNSIGNED != 0;
        let mut st = s.lock().unwrap_or_else(|e| e.into_inner());
        let outcomes = match vmta::bounce::apply_report(
            &parsed,
            decoded.as_ref(),
            tenant,
            &mut st,
            trust,
            now(),
        ) {
            Ok(o) => o,
            Err(e) => {
                // SAFETY: the caller promises err_out is NULL or writable.
                unsafe { report(err_out, VMTA_IO, "", &e.to_string()) };
                return Err(VMTA_IO);
            }
        };
        let handle = new_report(parsed.kind.as_str(), outcomes, 0);
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(report_out, handle) };
        Ok(())
    })
}

/// What the message was: `dsn`, `arf`, `autoreply` or `not-a-bounce`; a static NUL-terminated string
/// ("" for NULL or a bad handle).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_report_kind(report: *const vmta_report) -> *const std::ffi::c_char {
    guard(c"".as_ptr(), || match REPORTS.get(report).map(|r| r.kind) {
        Ok("dsn") => c"dsn".as_ptr(),
        Ok("arf") => c"arf".as_ptr(),
        Ok("autoreply") => c"autoreply".as_ptr(),
        Ok(_) => c"not-a-bounce".as_ptr(),
        Err(_) => c"".as_ptr(),
    })
}

/// The engine message id a report applied by `vmta_engine_apply_report` is about (from a verified
/// VERP address, or a `Message-ID` the engine made); 0 when unknown, for NULL, a bad handle, or a
/// report from `vmta_suppression_feed_report`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_report_message_id(report: *const vmta_report) -> u64 {
    guard(0, || REPORTS.get(report).map_or(0, |r| r.message_id))
}

/// The number of recipient outcomes (0 for NULL or a bad handle).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_report_len(report: *const vmta_report) -> usize {
    guard(0, || REPORTS.get(report).map_or(0, |r| r.outcomes.len()))
}

/// Writes outcome `index` to `*outcome_out`; `VMTA_NOT_FOUND` past the end.
///
/// # Safety
/// `outcome_out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vmta_report_get(
    report: *const vmta_report,
    index: usize,
    outcome_out: *mut vmta_report_outcome,
) -> vmta_result {
    guard_result(|| {
        let r = REPORTS.get(report)?;
        let outcome_out = out(outcome_out)?;
        let o = r.outcomes.get(index).ok_or(VMTA_NOT_FOUND)?;
        // The registry keeps the strings alive until vmta_report_free.
        let v = vmta_report_outcome {
            recipient: vmta_str::of(&o.recipient),
            message_id: vmta_str::of(&o.message_id),
            event: o.event,
            reason: static_str(o.reason),
            feedback_type: vmta_str::of(&o.feedback_type),
            verified: o.verified,
            suppressed: o.suppressed,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { write(outcome_out, v) };
        Ok(())
    })
}

/// Frees a report. `vmta_report_free(NULL)` does nothing and returns `VMTA_OK`; freeing twice returns
/// `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_report_free(report: *mut vmta_report) -> vmta_result {
    if report.is_null() {
        return VMTA_OK;
    }
    guard_result(|| REPORTS.remove(report).map(drop))
}
