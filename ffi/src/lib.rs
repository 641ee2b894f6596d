//! The C ABI of vmta (`include/vmta.h`, generated from this crate by cbindgen).
//!
//! Conventions (rustls-ffi, curl, sqlite, hyper's C API):
//! - Every name starts with `vmta_`; objects are opaque handles made by `vmta_*_new` (or `_open`,
//!   `_from_*`) and released by `vmta_*_free`, which accepts NULL.
//! - Functions take the object first, then inputs, then outputs, and write outputs only on success.
//! - Fallible functions return a `vmta_result` (`VMTA_OK` is 0; codes are never renumbered);
//!   `vmta_result_str` names a code. Rich detail comes in an optional `vmta_error **`; there is no
//!   thread-local last error.
//! - Every function checks its pointers and catches panics (returning `VMTA_PANIC` or a documented
//!   default), and handles are looked up in registries rather than dereferenced
//!   ([`boundary`]), so a handle freed twice gets `VMTA_INVALID_HANDLE`.
//! - Inputs are `(const uint8_t *ptr, size_t len)` and are copied before the call returns; outputs are
//!   borrowed `(ptr, len)` views whose lifetime each function states.
//!
//! The crate is built as `cdylib` and `staticlib` only (its library name, `vmta`, is the core crate's
//! too). Modules refer to each other through `super::`, never `crate::`, so the fuzz crate can compile
//! this file as a module of its own and call the exported functions directly.
//!
//! Exported: version, configuration, engine (start, submit, cancel, events, statistics, Prometheus
//! text, tenant locks, its suppression list and inbound reports, shutdown), reply classification,
//! stand-alone suppression lists, VERP, inbound reports.
//! Reloading a running engine's shaping rules, bounce rules and tenants (`vmta_engine_reload`).
//! Not exported yet: other configuration changes to a running engine, per-recipient DSN parameters,
//! the shaping and queue inspection tools.

#![allow(non_camel_case_types)]
// Every pointer argument follows one contract, written once at the top of include/vmta.h (and on
// each function): NULL only where allowed, valid for the given length, aligned. Each `# Safety` line
// repeats it briefly.
#![allow(clippy::missing_safety_doc)]

pub mod bounce;
pub(crate) mod boundary;
pub mod buffer;
pub mod config;
pub mod engine;
pub mod error;
pub mod result;

/// The major version of the headers (`VMTA_VERSION_MAJOR`).
pub const VMTA_VERSION_MAJOR: u32 = 0;
/// The minor version.
pub const VMTA_VERSION_MINOR: u32 = 1;
/// The patch version.
pub const VMTA_VERSION_PATCH: u32 = 0;
/// The version of the headers as one number: `major * 10000 + minor * 100 + patch`. Compare with
/// `vmta_version()`, the version of the library actually linked.
pub const VMTA_VERSION_NUMBER: u32 =
    VMTA_VERSION_MAJOR * 10000 + VMTA_VERSION_MINOR * 100 + VMTA_VERSION_PATCH;

/// The version of the linked library as `major * 10000 + minor * 100 + patch` (0.1.0 is 100).
#[unsafe(no_mangle)]
pub extern "C" fn vmta_version() -> u32 {
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    let patch: u32 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap_or(0);
    major * 10000 + minor * 100 + patch
}

#[cfg(test)]
mod tests;
