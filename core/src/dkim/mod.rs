//! DKIM signing (RFC 6376) with `rsa-sha256` and `ed25519-sha256` (RFC 8463).
//!
//! - [`key`]: private keys from PEM (PKCS#1 / PKCS#8 RSA of at least 2048 bits, PKCS#8 Ed25519) and the
//!   public key record they publish.
//! - [`canonical`]: `simple` and `relaxed` canonicalization of header fields and bodies (§3.4).
//! - [`signer`]: the DKIM-Signature field (§3.5): header selection with optional oversigning (§8.15),
//!   body hash, `t=` passed in, optional `x=`; `l=` is never used.
//! - [`record`]: the key record in DNS (§3.6.1) and the tag=value list syntax (§3.2), used by
//!   [`crate::preflight`] to check what a domain publishes.
//!
//! Not implemented: verification of received mail (vmta only sends), `rsa-sha1` (RFC 8301 forbids it),
//! `l=` body length limits, `z=` copied header fields, ARC (RFC 8617).
//!
//! Signing is pure computation: no I/O, no clock (the timestamp is an argument).

#![forbid(unsafe_code)]

pub mod canonical;
pub mod key;
pub mod record;
pub mod signer;

pub use canonical::Canonicalization;
pub use key::{Algorithm, KeyError, MIN_RSA_BITS, SigningKey};
pub use record::KeyRecord;
pub use signer::{
    DEFAULT_OVERSIGNED_HEADERS, DEFAULT_SIGNED_HEADERS, SignError, Signer, SignerConfig,
};
