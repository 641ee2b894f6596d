//! Random sequences of C ABI calls with engines started, used, shut down and freed, beside every
//! other handle (`ffi/mod.rs`; `ffi_calls` is the same without engines, and much faster).
#![no_main]

mod common;
mod engine_threads;
mod ffi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| ffi::run(data, true));
