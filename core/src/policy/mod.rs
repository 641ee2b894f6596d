//! Sender-side policy: what vmta accepts for sending, and the header fields it adds.
//!
//! - [`tenant`]: tenants (brands) with approved sender domains and addresses, source pool, DKIM keys,
//!   unsubscribe template and Feedback-ID sender id; a run-time registry with locking. Refusals are
//!   named: `unknown tenant` (vmta is never an open relay), `account locked`, `sender not approved`.
//! - [`message`]: validation and normalisation of a submitted message (RFC 5322 header syntax,
//!   required fields, 998-octet lines, CRLF, 8BITMIME/SMTPUTF8 detection, size) and the Received
//!   trace field (RFC 5321 §4.4).
//! - [`headers`]: Received, Date, List-Unsubscribe / List-Unsubscribe-Post (RFC 2369, RFC 8058) and
//!   Feedback-ID.
//! - [`address`]: the addresses in a From field (RFC 5322 §3.4).
//!
//! [`submit`] strings these together in the order the engine runs them at submission: validate the
//! message, then admit the tenant, envelope sender and From addresses. DKIM signing happens after the
//! per-recipient fields (List-Unsubscribe) are added, with [`Tenant::signer_for`] and
//! [`crate::dkim::Signer`].
//!
//! Not here: suppression lists, rate limits per tenant (traffic shaping), content scanning.
//! Nothing in this module reads the clock or performs network I/O; loading a configuration reads
//! key files.

#![forbid(unsafe_code)]

pub mod address;
pub mod headers;
pub mod message;
pub mod tenant;

use std::sync::Arc;

pub use headers::{Trace, UnsubscribeFields, UnsubscribeTemplate, feedback_id, rfc5322_date};
pub use message::{MessageError, Stamp, ValidatedMessage, ValidationOptions, validate};
pub use tenant::{
    ConfigError, PolicyConfig, Refusal, Tenant, TenantConfig, TenantRegistry,
    address_needs_smtputf8,
};

/// A submission that passed policy: the tenant it belongs to and the normalised message.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The tenant (pool, signers, unsubscribe template).
    pub tenant: Arc<Tenant>,
    /// The validated, normalised message.
    pub message: ValidatedMessage,
}

/// Runs the submission checks: validates `message` (see [`message`]), then admits `tenant` with
/// `envelope_sender` and the message's From addresses (see [`TenantRegistry::admit`]). Nothing is
/// queued on error; the [`Refusal`] says why.
pub fn submit(
    registry: &TenantRegistry,
    tenant: &str,
    envelope_sender: &str,
    message: &[u8],
    options: &ValidationOptions,
    stamp: &Stamp<'_>,
) -> Result<Admitted, Refusal> {
    // Unknown and locked tenants are refused before the message is even read.
    if registry.get(tenant).is_none() {
        return Err(Refusal::UnknownTenant(tenant.to_string()));
    }
    if registry.is_locked(tenant) {
        return Err(Refusal::AccountLocked(tenant.to_string()));
    }
    let message = validate(message, options, stamp).map_err(Refusal::InvalidMessage)?;
    let tenant = registry.admit(tenant, envelope_sender, &message.from)?;
    Ok(Admitted { tenant, message })
}

/// Inserts per-recipient header fields (List-Unsubscribe, Feedback-ID, ...) at the end of the header
/// section of a validated message, where a DKIM signer added afterwards will find them.
pub fn with_fields(message: &ValidatedMessage, fields: &[u8]) -> Vec<u8> {
    let bytes = &message.bytes;
    // header_len includes the empty line when there is a body; insert before it.
    let at = if bytes[..message.header_len].ends_with(b"\r\n\r\n") {
        message.header_len - 2
    } else {
        message.header_len
    };
    let mut out = Vec::with_capacity(bytes.len() + fields.len());
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(fields);
    out.extend_from_slice(&bytes[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn registry() -> TenantRegistry {
        let c = PolicyConfig::from_toml(
            "[[tenant]]\nname = \"acme\"\npool = \"p\"\nsender_domains = [\"acme.example\"]\n",
        )
        .unwrap();
        TenantRegistry::from_config(&c, Path::new(".")).unwrap()
    }

    fn stamp() -> Stamp<'static> {
        Stamp {
            now: 0,
            unique_id: "id1",
            trace: None,
        }
    }

    #[test]
    fn submission_pipeline() {
        let r = registry();
        let o = ValidationOptions::default();
        let msg = b"From: a@acme.example\r\n\r\nhi\r\n";
        let a = submit(&r, "acme", "a@acme.example", msg, &o, &stamp()).unwrap();
        assert_eq!(a.tenant.name(), "acme");
        let e = submit(
            &r,
            "acme",
            "a@acme.example",
            b"From: x@evil.example\r\n\r\n",
            &o,
            &stamp(),
        );
        assert_eq!(e.unwrap_err().kind(), "sender not approved");
        let e = submit(
            &r,
            "acme",
            "a@acme.example",
            b"Subject: x\r\n\r\n",
            &o,
            &stamp(),
        );
        assert_eq!(e.unwrap_err().to_string(), "invalid message: no From field");
        r.lock("acme").unwrap();
        let e = submit(&r, "acme", "a@acme.example", msg, &o, &stamp());
        assert_eq!(e.unwrap_err().kind(), "account locked");
        // Even an invalid message from a locked tenant is refused as locked, before it is read.
        let e = submit(&r, "acme", "a@acme.example", b"junk", &o, &stamp());
        assert_eq!(e.unwrap_err().kind(), "account locked");
        r.unlock("acme").unwrap();
        assert!(submit(&r, "acme", "a@acme.example", msg, &o, &stamp()).is_ok());
        let e = submit(&r, "other", "a@acme.example", msg, &o, &stamp());
        assert_eq!(e.unwrap_err().kind(), "unknown tenant");
    }

    #[test]
    fn fields_go_at_the_end_of_the_header() {
        let r = registry();
        let o = ValidationOptions::default();
        let a = submit(
            &r,
            "acme",
            "a@acme.example",
            b"From: a@acme.example\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nhi\r\n",
            &o,
            &stamp(),
        )
        .unwrap();
        let out = with_fields(&a.message, b"X-A: 1\r\n");
        assert_eq!(
            out,
            b"From: a@acme.example\r\nDate: d\r\nMessage-ID: <m@x>\r\nX-A: 1\r\n\r\nhi\r\n"
        );
        let a = submit(
            &r,
            "acme",
            "a@acme.example",
            b"From: a@acme.example\r\nDate: d\r\nMessage-ID: <m@x>",
            &o,
            &stamp(),
        )
        .unwrap();
        let out = with_fields(&a.message, b"X-A: 1\r\n");
        assert_eq!(
            out,
            b"From: a@acme.example\r\nDate: d\r\nMessage-ID: <m@x>\r\nX-A: 1\r\n"
        );
    }
}
