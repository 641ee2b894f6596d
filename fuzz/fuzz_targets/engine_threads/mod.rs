//! For targets that keep an engine's threads running beside the inputs (`ffi_engine`,
//! `http_request`): LeakSanitizer off, between inputs and at exit.
//!
//! Its check, whether libFuzzer's between inputs or the one at exit, reports the memory that only a
//! running shard thread holds as leaked: its spawn closure, its event loop's buffers, the shard it
//! owns, its thread-local destructor records (google/sanitizers#757 is the same limit). Both targets
//! stopped so in their first long runs, on the objects of shard threads alive at the time (an
//! engine's shutdown joins every one), and the inputs did not reproduce it alone. Leaks over an
//! engine's whole life are checked by the C binding's test (`examples/c/run-tests.sh`, under
//! LeakSanitizer at exit and under valgrind) once every thread has been joined; in a long run an
//! accumulating leak shows in `long-run.sh`'s peak RSS and ends the run at its RSS limit.

/// AddressSanitizer's options for this process (it reads them at start, before `ASAN_OPTIONS`,
/// which can still override them).
#[unsafe(no_mangle)]
pub extern "C" fn __asan_default_options() -> *const std::ffi::c_char {
    c"detect_leaks=0".as_ptr()
}
