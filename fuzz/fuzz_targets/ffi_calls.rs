//! Random sequences of C ABI calls without engines: configurations, errors, buffers,
//! classification, suppression lists, VERP and reports, and every engine call on a handle that is
//! not an engine (`ffi/mod.rs`; `ffi_engine` starts engines).
#![no_main]

mod common;
mod ffi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| ffi::run(data, false));
