//! `vmta_buffer`: bytes vmta made for the caller (Prometheus text). The bytes are followed by a NUL
//! that the length does not count, so C can use them as a string.

use super::boundary::{Registry, guard, guard_result};
use super::result::vmta_result;

/// Bytes owned by vmta until `vmta_buffer_free`.
#[derive(Debug)]
pub struct vmta_buffer {
    _opaque: [u8; 0],
}

static BUFFERS: Registry<Vec<u8>> = Registry::new();

/// Registers bytes as a new buffer.
pub(crate) fn new_buffer(mut bytes: Vec<u8>) -> *mut vmta_buffer {
    bytes.push(0);
    BUFFERS.insert(bytes)
}

/// The buffer's bytes (NUL-terminated, valid until `vmta_buffer_free`), or NULL for NULL or a bad
/// handle.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_buffer_data(buf: *const vmta_buffer) -> *const u8 {
    guard(std::ptr::null(), || match BUFFERS.get(buf) {
        // The registry keeps the bytes alive until vmta_buffer_free.
        Ok(b) => b.as_ptr(),
        Err(_) => std::ptr::null(),
    })
}

/// The number of bytes, the final NUL not counted (0 for NULL or a bad handle).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_buffer_len(buf: *const vmta_buffer) -> usize {
    guard(0, || BUFFERS.get(buf).map_or(0, |b| b.len() - 1))
}

/// Frees a buffer. `vmta_buffer_free(NULL)` does nothing and returns `VMTA_OK`; freeing twice returns
/// `VMTA_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_buffer_free(buf: *mut vmta_buffer) -> vmta_result {
    if buf.is_null() {
        return super::result::VMTA_OK;
    }
    guard_result(|| BUFFERS.remove(buf).map(drop))
}
