//! `vmta_result`: the code every fallible function returns. Codes are never renumbered: a new code gets
//! the next free number.

use std::ffi::c_char;

/// A result code: `VMTA_OK` (0) or why a call failed. `vmta_result_str` names it.
pub type vmta_result = u32;

/// Success.
pub const VMTA_OK: vmta_result = 0;
/// A required pointer was NULL (or a NULL pointer came with a non-zero length).
pub const VMTA_NULL_PARAMETER: vmta_result = 1;
/// An argument has a value the function does not accept (an unknown constant, a zero where a count is
/// needed, an address that does not parse).
pub const VMTA_INVALID_ARGUMENT: vmta_result = 2;
/// Text that must be UTF-8 is not.
pub const VMTA_INVALID_UTF8: vmta_result = 3;
/// An input is longer than the documented limit (`VMTA_MAX_*`).
pub const VMTA_TOO_LARGE: vmta_result = 4;
/// vmta panicked inside the call; the call had no effect that can be relied on. Please report it.
pub const VMTA_PANIC: vmta_result = 5;
/// The handle is not a live handle of the expected type (freed already, or never made by vmta).
pub const VMTA_INVALID_HANDLE: vmta_result = 6;
/// The configuration is wrong; the `vmta_error` names the key.
pub const VMTA_CONFIG: vmta_result = 7;
/// The engine could not start (its spool or the operating system failed); see the `vmta_error`.
pub const VMTA_START_FAILED: vmta_result = 8;
/// Refusal: the engine's submission queue is full. Nothing was queued; try again shortly.
pub const VMTA_BUSY: vmta_result = 9;
/// Refusal: the engine is shutting down or shut down.
pub const VMTA_SHUTTING_DOWN: vmta_result = 10;
/// Refusal: the envelope or the message is not acceptable (the `vmta_error` says why, with the line).
pub const VMTA_INVALID_MESSAGE: vmta_result = 11;
/// Refusal: the tenant is not configured (vmta sends only for tenants it knows).
pub const VMTA_UNKNOWN_TENANT: vmta_result = 12;
/// Refusal: the tenant's account is locked.
pub const VMTA_ACCOUNT_LOCKED: vmta_result = 13;
/// Refusal: the envelope sender or a From address is not approved for the tenant.
pub const VMTA_SENDER_NOT_APPROVED: vmta_result = 14;
/// Refusal: every recipient is on the tenant's suppression list; nothing was queued (the
/// `vmta_error` names them and why). A submission with other recipients goes ahead and reports the
/// suppressed ones as `VMTA_EVENT_SUPPRESSED` events.
pub const VMTA_SUPPRESSED: vmta_result = 15;
/// Refusal: the spool's file system is full.
pub const VMTA_NO_SPACE: vmta_result = 16;
/// Refusal: the spool could not write or sync; see the `vmta_error`.
pub const VMTA_SPOOL_ERROR: vmta_result = 17;
/// `vmta_engine_wait` returned without events pending (the timeout passed or `vmta_engine_wakeup`).
pub const VMTA_NO_EVENTS: vmta_result = 18;
/// Another thread is inside `vmta_engine_poll_events` on the same engine; events have one consumer.
pub const VMTA_CONCURRENT_POLL: vmta_result = 19;
/// A file could not be read or written; see the `vmta_error` where the function takes one.
pub const VMTA_IO: vmta_result = 20;
/// The thing asked about does not exist (an index past the end, an entry that is not there).
pub const VMTA_NOT_FOUND: vmta_result = 21;
/// An inbound report came back to one of the engine's VERP addresses whose signature does not
/// verify: forged or mangled. Nothing changed.
pub const VMTA_FORGED_REPORT: vmta_result = 22;
/// The configuration turned the feature off (`[suppression] enabled = false`).
pub const VMTA_DISABLED: vmta_result = 23;
/// The wait ended before what it waited for (`vmta_engine_flush`).
pub const VMTA_TIMEOUT: vmta_result = 24;

/// Every code with its name, in number order.
pub(crate) const NAMES: &[(vmta_result, &std::ffi::CStr)] = &[
    (VMTA_OK, c"ok"),
    (VMTA_NULL_PARAMETER, c"null parameter"),
    (VMTA_INVALID_ARGUMENT, c"invalid argument"),
    (VMTA_INVALID_UTF8, c"invalid UTF-8"),
    (VMTA_TOO_LARGE, c"input too large"),
    (VMTA_PANIC, c"internal error (panic)"),
    (VMTA_INVALID_HANDLE, c"invalid handle"),
    (VMTA_CONFIG, c"configuration error"),
    (VMTA_START_FAILED, c"engine could not start"),
    (VMTA_BUSY, c"busy: submission queue full"),
    (VMTA_SHUTTING_DOWN, c"engine is shutting down"),
    (VMTA_INVALID_MESSAGE, c"invalid message"),
    (VMTA_UNKNOWN_TENANT, c"unknown tenant"),
    (VMTA_ACCOUNT_LOCKED, c"account locked"),
    (VMTA_SENDER_NOT_APPROVED, c"sender not approved"),
    (VMTA_SUPPRESSED, c"recipient suppressed"),
    (VMTA_NO_SPACE, c"spool full: no space left on device"),
    (VMTA_SPOOL_ERROR, c"spool error"),
    (VMTA_NO_EVENTS, c"no events pending"),
    (VMTA_CONCURRENT_POLL, c"another thread is polling events"),
    (VMTA_IO, c"input/output error"),
    (VMTA_NOT_FOUND, c"not found"),
    (
        VMTA_FORGED_REPORT,
        c"forged report: VERP signature does not verify",
    ),
    (VMTA_DISABLED, c"disabled by the configuration"),
    (VMTA_TIMEOUT, c"timed out"),
];

/// A static, NUL-terminated description of a result code (never NULL; "unknown result code" for a
/// number vmta does not define).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_result_str(result: vmta_result) -> *const c_char {
    NAMES
        .get(result as usize)
        .map_or(c"unknown result code", |(_, name)| name)
        .as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_numbered_in_order_and_named() {
        for (i, (code, name)) in NAMES.iter().enumerate() {
            assert_eq!(*code as usize, i, "{name:?}");
            // SAFETY: vmta_result_str returns a pointer to a static NUL-terminated string.
            let s = unsafe { std::ffi::CStr::from_ptr(vmta_result_str(*code)) };
            assert_eq!(s, *name);
        }
        // SAFETY: as above.
        let s = unsafe { std::ffi::CStr::from_ptr(vmta_result_str(9999)) };
        assert_eq!(s.to_str().unwrap(), "unknown result code");
    }

    #[test]
    fn numbers_never_change() {
        // Bindings hard-code these numbers: changing one breaks every compiled program.
        assert_eq!(VMTA_OK, 0);
        assert_eq!(VMTA_BUSY, 9);
        assert_eq!(VMTA_INVALID_MESSAGE, 11);
        assert_eq!(VMTA_ACCOUNT_LOCKED, 13);
        assert_eq!(VMTA_SENDER_NOT_APPROVED, 14);
        assert_eq!(VMTA_SUPPRESSED, 15);
        assert_eq!(VMTA_NOT_FOUND, 21);
        assert_eq!(VMTA_FORGED_REPORT, 22);
        assert_eq!(VMTA_DISABLED, 23);
        assert_eq!(VMTA_TIMEOUT, 24);
    }
}
