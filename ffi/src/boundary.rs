//! What every exported function does at the border between C and Rust: catch panics, find handles,
//! read `(pointer, length)` inputs and write outputs.
//!
//! Handles are never dereferenced. A handle is the address of a value kept alive by a registry (one
//! per handle type); every call looks the address up and works on a shared reference counted clone.
//! So a handle freed twice, a handle of the wrong type or a pointer that never came from this library
//! is answered with [`VMTA_INVALID_HANDLE`] instead of undefined behaviour, and `_free` racing another
//! thread's call on the same handle only delays the release until that call returns. (A freed
//! address that the allocator hands out again for a new handle of the same type is the one case the
//! registry cannot tell apart: the stale pointer then names the new handle.)

use super::result::{VMTA_INVALID_HANDLE, VMTA_NULL_PARAMETER, VMTA_PANIC, vmta_result};
use super::result::{VMTA_INVALID_UTF8, VMTA_TOO_LARGE};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};

/// Live handles of one type, by address.
#[derive(Debug)]
pub(crate) struct Registry<T> {
    live: RwLock<BTreeMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Registry<T> {
        Registry {
            live: RwLock::new(BTreeMap::new()),
        }
    }

    /// Registers a value and returns its handle.
    pub(crate) fn insert<H>(&self, value: T) -> *mut H {
        let value = Arc::new(value);
        let address = Arc::as_ptr(&value) as usize;
        self.live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address, value);
        address as *mut H
    }

    /// The value of a live handle.
    pub(crate) fn get<H>(&self, handle: *const H) -> Result<Arc<T>, vmta_result> {
        if handle.is_null() {
            return Err(VMTA_NULL_PARAMETER);
        }
        self.live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(handle as usize))
            .cloned()
            .ok_or(VMTA_INVALID_HANDLE)
    }

    /// Unregisters a handle; the value is dropped when the last call using it returns.
    pub(crate) fn remove<H>(&self, handle: *const H) -> Result<Arc<T>, vmta_result> {
        if handle.is_null() {
            return Err(VMTA_NULL_PARAMETER);
        }
        self.live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(handle as usize))
            .ok_or(VMTA_INVALID_HANDLE)
    }
}

/// Runs `f`, turning a panic into `default` (rustls-ffi's `ffi_panic_boundary`).
pub(crate) fn guard<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// [`guard`] for functions returning a [`vmta_result`], with `?` inside.
pub(crate) fn guard_result(f: impl FnOnce() -> Result<(), vmta_result>) -> vmta_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => super::result::VMTA_OK,
        Ok(Err(code)) => code,
        Err(_) => VMTA_PANIC,
    }
}

/// The bytes of a `(pointer, length)` input. A length of 0 is the empty string whatever the pointer;
/// a NULL pointer with a length is refused, and so is a length above `limit`.
///
/// # Safety
/// Unless NULL, `ptr` must be valid for reads of `len` bytes for `'a`.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    limit: usize,
) -> Result<&'a [u8], vmta_result> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(VMTA_NULL_PARAMETER);
    }
    if len > limit || len > isize::MAX as usize {
        return Err(VMTA_TOO_LARGE);
    }
    // SAFETY: ptr is not NULL, the caller promises `len` readable bytes, and len <= isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Like [`bytes`], and the bytes must be UTF-8.
///
/// # Safety
/// As [`bytes`].
pub(crate) unsafe fn text<'a>(
    ptr: *const u8,
    len: usize,
    limit: usize,
) -> Result<&'a str, vmta_result> {
    // SAFETY: the caller's promise is passed on unchanged.
    let b = unsafe { bytes(ptr, len, limit) }?;
    std::str::from_utf8(b).map_err(|_| VMTA_INVALID_UTF8)
}

/// Checks that an output pointer is usable.
pub(crate) fn out<T>(ptr: *mut T) -> Result<*mut T, vmta_result> {
    if ptr.is_null() {
        Err(VMTA_NULL_PARAMETER)
    } else {
        Ok(ptr)
    }
}

/// Writes an output.
///
/// # Safety
/// `ptr` must be non-NULL, aligned and valid for a write of `T` (it may be uninitialised).
pub(crate) unsafe fn write<T>(ptr: *mut T, value: T) {
    // SAFETY: the caller promises a valid, aligned destination; `write` does not read or drop the old
    // contents, so uninitialised memory is fine.
    unsafe { ptr.write(value) }
}
