//! `vmta_error`: rich detail of a failure, where there is rich context (configuration parsing, engine
//! start, a refused submission, the suppression store). It is handed out through an optional
//! `vmta_error **` out-parameter and freed with `vmta_error_free`. There is no thread-local "last
//! error": two threads (two cgo calls) never see each other's errors.

use super::boundary::{Registry, guard, guard_result};
use super::result::{VMTA_INVALID_HANDLE, vmta_result};
use std::ffi::{CString, c_char};

/// An error with a code, a message and, for configuration errors, the key at fault.
#[derive(Debug)]
pub struct vmta_error {
    _opaque: [u8; 0],
}

#[derive(Debug)]
pub(crate) struct ErrorDetail {
    code: vmta_result,
    message: CString,
    key: CString,
}

static ERRORS: Registry<ErrorDetail> = Registry::new();

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{fffd}")).unwrap_or_default()
}

/// Stores a new error in `*err_out` when `err_out` is not NULL.
///
/// # Safety
/// Unless NULL, `err_out` must be valid for a write of a pointer.
pub(crate) unsafe fn report(
    err_out: *mut *mut vmta_error,
    code: vmta_result,
    key: &str,
    message: &str,
) {
    if err_out.is_null() {
        return;
    }
    let handle = ERRORS.insert(ErrorDetail {
        code,
        message: c_string(message),
        key: c_string(key),
    });
    // SAFETY: err_out is not NULL and the caller promises it is writable.
    unsafe { err_out.write(handle) };
}

/// The result code of the failure the error describes (`VMTA_INVALID_HANDLE` for a bad handle,
/// `VMTA_NULL_PARAMETER` for NULL).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_error_code(err: *const vmta_error) -> vmta_result {
    guard(super::result::VMTA_PANIC, || match ERRORS.get(err) {
        Ok(e) => e.code,
        Err(code) => code,
    })
}

/// The error message: NUL-terminated UTF-8, valid until `vmta_error_free(err)`. Never NULL: "" for NULL
/// or a bad handle.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_error_message(err: *const vmta_error) -> *const c_char {
    guard(c"".as_ptr(), || match ERRORS.get(err) {
        // The registry keeps the string alive until vmta_error_free.
        Ok(e) => e.message.as_ptr(),
        Err(_) => c"".as_ptr(),
    })
}

/// For configuration errors, the key at fault (such as `delivery.port` or `sources[1].ip`); otherwise
/// "". NUL-terminated, valid until `vmta_error_free(err)`, never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_error_key(err: *const vmta_error) -> *const c_char {
    guard(c"".as_ptr(), || match ERRORS.get(err) {
        Ok(e) => e.key.as_ptr(),
        Err(_) => c"".as_ptr(),
    })
}

/// Frees an error. `vmta_error_free(NULL)` does nothing and returns `VMTA_OK`; freeing twice returns
/// `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_error_free(err: *mut vmta_error) -> vmta_result {
    if err.is_null() {
        return super::result::VMTA_OK;
    }
    guard_result(|| {
        ERRORS
            .remove(err)
            .map(drop)
            .map_err(|_| VMTA_INVALID_HANDLE)
    })
}
