//! Producing a DKIM-Signature header field (RFC 6376 §3.5, §3.7, §5).
//!
//! What is signed: the header fields named in the configured list that the message carries (From
//! always, §5.4), each instance taken from the bottom up (§5.4.2), plus the names to *oversign*: listed
//! once more than they occur, so a receiver rejects a copy to which someone added another such field
//! (§8.15). The body is hashed whole: `l=` is never written (§8.2 explains why it is unsafe). `t=` is
//! the timestamp the caller passes in; `x=` is written when an expiry is configured.
//!
//! Not done here: choosing the key per tenant and domain (see [`crate::policy`]), verification (the
//! tests verify with an independent implementation, Python dkimpy), `z=` copied headers, `q=` other than
//! the default `dns/txt`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use super::canonical::{Canonicalization, HeaderField, canonical_body, canonical_header, split};
use super::key::SigningKey;

/// The header fields signed by default when present (From is always signed).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Id",
    "Feedback-ID",
];

/// The header fields oversigned by [`SignerConfig::with_oversigning`]: those whose addition by a third
/// party would change what the reader sees or where the reply or the unsubscription goes.
pub const DEFAULT_OVERSIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// How to sign: signing domain, selector, canonicalization and the header list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// Header canonicalization (the first half of `c=`).
    pub header_canonicalization: Canonicalization,
    /// Body canonicalization (the second half of `c=`).
    pub body_canonicalization: Canonicalization,
    /// Header field names signed when present; From is signed whether listed or not.
    pub headers: Vec<String>,
    /// Header field names signed once more than they occur (RFC 6376 §8.15).
    pub oversign: Vec<String>,
    /// The agent or user identifier (`i=`), which must be in `d=` or a subdomain of it.
    pub identity: Option<String>,
    /// Seconds after `t=` at which the signature expires (`x=`).
    pub expire_after: Option<u64>,
}

impl SignerConfig {
    /// relaxed/relaxed, [`DEFAULT_SIGNED_HEADERS`], no oversigning.
    pub fn new(domain: &str, selector: &str) -> SignerConfig {
        SignerConfig {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_ascii_lowercase(),
            header_canonicalization: Canonicalization::Relaxed,
            body_canonicalization: Canonicalization::Relaxed,
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            oversign: Vec::new(),
            identity: None,
            expire_after: None,
        }
    }

    /// Oversigns [`DEFAULT_OVERSIGNED_HEADERS`].
    pub fn with_oversigning(mut self) -> SignerConfig {
        self.oversign = DEFAULT_OVERSIGNED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        self
    }

    /// Sets both canonicalizations.
    pub fn with_canonicalization(
        mut self,
        header: Canonicalization,
        body: Canonicalization,
    ) -> Self {
        self.header_canonicalization = header;
        self.body_canonicalization = body;
        self
    }
}

/// Why a message could not be signed or a signer not built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignError {
    /// The message has no From header field (RFC 6376 §5.4 requires signing it).
    NoFrom,
    /// The signing domain is not a domain name.
    BadDomain(String),
    /// The selector is not a sequence of DNS labels.
    BadSelector(String),
    /// `i=` is not in the signing domain or one of its subdomains (RFC 6376 §3.5).
    IdentityOutsideDomain(String),
    /// A header name in the list holds characters no field name may hold.
    BadHeaderName(String),
}

impl fmt::Display for SignError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignError::NoFrom => f.write_str("the message has no From header field to sign"),
            SignError::BadDomain(d) => write!(f, "bad signing domain {d:?}"),
            SignError::BadSelector(s) => write!(f, "bad selector {s:?}"),
            SignError::IdentityOutsideDomain(i) => {
                write!(f, "identity {i:?} is not in the signing domain")
            }
            SignError::BadHeaderName(h) => write!(f, "bad header field name {h:?}"),
        }
    }
}

impl std::error::Error for SignError {}

/// A key plus how to use it. Immutable and `Sync`: one signer serves every thread.
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    config: SignerConfig,
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_field_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

impl Signer {
    /// Checks the configuration and pairs it with `key`.
    pub fn new(key: SigningKey, config: SignerConfig) -> Result<Signer, SignError> {
        if !is_dns_name(&config.domain) {
            return Err(SignError::BadDomain(config.domain));
        }
        if !is_dns_name(&config.selector) {
            return Err(SignError::BadSelector(config.selector));
        }
        if let Some(i) = &config.identity {
            let domain = i.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            let d = domain.to_ascii_lowercase();
            if !(d == config.domain || d.ends_with(&format!(".{}", config.domain))) {
                return Err(SignError::IdentityOutsideDomain(i.clone()));
            }
        }
        for h in config.headers.iter().chain(&config.oversign) {
            if !is_field_name(h) {
                return Err(SignError::BadHeaderName(h.clone()));
            }
        }
        Ok(Signer { key, config })
    }

    /// The key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// The configuration.
    pub fn config(&self) -> &SignerConfig {
        &self.config
    }

    /// Signs `message` (CRLF line endings) at `timestamp` (seconds since the Unix epoch, the `t=` tag)
    /// and returns the DKIM-Signature header field, folded, ending in CRLF, to put above the message.
    pub fn sign(&self, message: &[u8], timestamp: u64) -> Result<Vec<u8>, SignError> {
        let body_hash = self.body_hash(message);
        self.sign_with_body_hash(message, &body_hash, timestamp)
    }

    /// The body hash (`bh=`, base64) of `message` under this signer's body canonicalization. The
    /// copies of one message sent to many recipients differ only in header fields (List-Unsubscribe,
    /// Feedback-ID), so the engine hashes the body once and signs each copy with
    /// [`Self::sign_with_body_hash`].
    pub fn body_hash(&self, message: &[u8]) -> String {
        let (_, body) = split(message);
        let mut body_hasher = Sha256::new();
        canonical_body(body, self.config.body_canonicalization, |piece| {
            body_hasher.update(piece)
        });
        BASE64.encode(body_hasher.finalize())
    }

    /// Like [`Self::sign`] with a body hash from [`Self::body_hash`] of a message with the same body.
    pub fn sign_with_body_hash(
        &self,
        message: &[u8],
        body_hash: &str,
        timestamp: u64,
    ) -> Result<Vec<u8>, SignError> {
        let (fields, _) = split(message);
        let c = &self.config;

        let names = self.header_list(&fields)?;

        // The field with an empty b=, exactly as it will be written before the signature is appended.
        let mut field = String::with_capacity(512);
        field.push_str("DKIM-Signature: v=1; a=");
        field.push_str(self.key.algorithm().as_str());
        field.push_str("; c=");
        field.push_str(c.header_canonicalization.as_str());
        field.push('/');
        field.push_str(c.body_canonicalization.as_str());
        field.push_str(";\r\n\td=");
        field.push_str(&c.domain);
        field.push_str("; s=");
        field.push_str(&c.selector);
        field.push_str("; t=");
        field.push_str(&timestamp.to_string());
        field.push(';');
        if let Some(after) = c.expire_after {
            field.push_str(" x=");
            field.push_str(&timestamp.saturating_add(after).to_string());
            field.push(';');
        }
        if let Some(i) = &c.identity {
            field.push_str(" i=");
            field.push_str(i);
            field.push(';');
        }
        field.push_str("\r\n\th=");
        let mut line_len = 3;
        for (n, name) in names.iter().enumerate() {
            if n > 0 {
                field.push(':');
                line_len += 1;
            }
            if line_len + name.len() > 74 {
                field.push_str("\r\n\t");
                line_len = 1;
            }
            field.push_str(name);
            line_len += name.len();
        }
        field.push_str(";\r\n\tbh=");
        field.push_str(body_hash);
        field.push_str(";\r\n\tb=");

        let mut data = Vec::with_capacity(1024);
        signed_data(
            &fields,
            &names,
            c.header_canonicalization,
            field.as_bytes(),
            &mut data,
        );
        let signature = BASE64.encode(self.key.sign(&data));

        let mut out = field.into_bytes();
        for (n, chunk) in signature.as_bytes().chunks(72).enumerate() {
            if n > 0 {
                out.extend_from_slice(b"\r\n\t");
            }
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(b"\r\n");
        Ok(out)
    }

    /// Signs `message` and returns it with the DKIM-Signature field on top.
    pub fn sign_message(&self, message: &[u8], timestamp: u64) -> Result<Vec<u8>, SignError> {
        let field = self.sign(message, timestamp)?;
        let mut out = Vec::with_capacity(field.len() + message.len());
        out.extend_from_slice(&field);
        out.extend_from_slice(message);
        Ok(out)
    }

    /// The `h=` list for this message: each configured name as many times as the message carries it,
    /// oversigned names once more, From first.
    fn header_list(&self, fields: &[HeaderField<'_>]) -> Result<Vec<String>, SignError> {
        let count = |name: &str| {
            fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
                .count()
        };
        if count("From") == 0 {
            return Err(SignError::NoFrom);
        }
        let mut names: Vec<String> = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let from = std::iter::once("From");
        for name in from.chain(self.config.headers.iter().map(String::as_str)) {
            let lower = name.to_ascii_lowercase();
            if seen.contains(&lower) {
                continue;
            }
            let mut n = count(name);
            if self
                .config
                .oversign
                .iter()
                .any(|o| o.eq_ignore_ascii_case(name))
            {
                n += 1;
            }
            for _ in 0..n {
                names.push(lower.clone());
            }
            seen.push(lower);
        }
        for name in &self.config.oversign {
            let lower = name.to_ascii_lowercase();
            if !seen.contains(&lower) {
                for _ in 0..count(name) + 1 {
                    names.push(lower.clone());
                }
                seen.push(lower);
            }
        }
        Ok(names)
    }
}

/// The data a DKIM signature signs (RFC 6376 §3.7): the canonical form of each field `names` selects,
/// taken from the bottom up, a name listed more often than it occurs contributing nothing, then the
/// canonical DKIM-Signature field `signature_field` (with `b=` empty) without its final CRLF.
pub(crate) fn signed_data(
    fields: &[HeaderField<'_>],
    names: &[String],
    canon: Canonicalization,
    signature_field: &[u8],
    out: &mut Vec<u8>,
) {
    let mut used = vec![false; fields.len()];
    for name in names {
        let pick = fields
            .iter()
            .enumerate()
            .rev()
            .find(|(i, f)| !used[*i] && f.name.eq_ignore_ascii_case(name.trim().as_bytes()));
        if let Some((i, f)) = pick {
            used[i] = true;
            canonical_header(f.raw, canon, true, out);
        }
    }
    canonical_header(signature_field, canon, false, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8463 Appendix A.3, the Ed25519-signed example as published.
    const RFC8463_SIGNATURE: &str = concat!(
        "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n",
        " d=football.example.com; i=@football.example.com;\r\n",
        " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n",
        " subject : date : message-id : from : subject : date;\r\n",
        " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n",
        " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n",
        " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n",
    );
    const RFC8463_MESSAGE: &str = concat!(
        "From: Joe SixPack <joe@football.example.com>\r\n",
        "To: Suzie Q <suzie@shopping.example.net>\r\n",
        "Subject: Is dinner ready?\r\n",
        "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n",
        "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n",
        "\r\n",
        "Hi.\r\n",
        "\r\n",
        "We lost the game.  Are you hungry yet?\r\n",
        "\r\n",
        "Joe.\r\n",
        "\r\n",
    );
    /// RFC 8463 Appendix A.1/A.2: the Ed25519 seed and public key.
    const RFC8463_SEED: &str = "nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=";
    const RFC8463_PUBLIC: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn rfc_key() -> SigningKey {
        let seed: [u8; 32] = BASE64.decode(RFC8463_SEED).unwrap().try_into().unwrap();
        SigningKey::ed25519_from_seed(&seed)
    }

    #[test]
    fn rfc8463_public_key_derives_from_the_seed() {
        assert_eq!(BASE64.encode(rfc_key().public_key_bytes()), RFC8463_PUBLIC);
        assert_eq!(
            rfc_key().public_key_record(),
            format!("v=DKIM1; k=ed25519; p={RFC8463_PUBLIC}")
        );
    }

    #[test]
    fn rfc8463_body_hash() {
        let (_, body) = split(RFC8463_MESSAGE.as_bytes());
        let mut h = Sha256::new();
        canonical_body(body, Canonicalization::Relaxed, |p| h.update(p));
        assert_eq!(
            BASE64.encode(h.finalize()),
            "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8="
        );
    }

    /// The published signature verifies over the data `signed_data` builds: this pins header
    /// selection (bottom-up, oversigned names contributing nothing) and relaxed canonicalization
    /// byte for byte against the RFC.
    #[test]
    fn rfc8463_signature_verifies_over_our_signed_data() {
        let (fields, _) = split(RFC8463_MESSAGE.as_bytes());
        let names: Vec<String> = "from:to:subject:date:message-id:from:subject:date"
            .split(':')
            .map(String::from)
            .collect();
        let b_at = RFC8463_SIGNATURE.find(" b=").unwrap() + 3;
        let unsigned = &RFC8463_SIGNATURE[..b_at];
        let mut data = Vec::new();
        signed_data(
            &fields,
            &names,
            Canonicalization::Relaxed,
            unsigned.as_bytes(),
            &mut data,
        );
        let b64: String = RFC8463_SIGNATURE[b_at..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let sig = ed25519_dalek::Signature::from_slice(&BASE64.decode(b64).unwrap()).unwrap();
        let public: [u8; 32] = BASE64.decode(RFC8463_PUBLIC).unwrap().try_into().unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap();
        let hash = Sha256::digest(&data);
        vk.verify_strict(hash.as_slice(), &sig)
            .expect("RFC 8463 signature verifies over our canonical data");
        // And our key produces the very same (deterministic) signature over that data.
        assert_eq!(rfc_key().sign(&data), sig.to_bytes().to_vec());
        // One changed byte of a signed header and it no longer verifies.
        let tampered = RFC8463_MESSAGE.replace("dinner", "Dinner");
        let (fields, _) = split(tampered.as_bytes());
        let mut data = Vec::new();
        signed_data(
            &fields,
            &names,
            Canonicalization::Relaxed,
            unsigned.as_bytes(),
            &mut data,
        );
        assert!(
            vk.verify_strict(Sha256::digest(&data).as_slice(), &sig)
                .is_err()
        );
    }

    #[test]
    fn a_reused_body_hash_gives_the_same_signature() {
        let s = Signer::new(
            rfc_key(),
            SignerConfig::new("football.example.com", "brisbane"),
        )
        .unwrap();
        let m = RFC8463_MESSAGE.as_bytes();
        let bh = s.body_hash(m);
        assert_eq!(bh, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
        assert_eq!(
            s.sign(m, 7).unwrap(),
            s.sign_with_body_hash(m, &bh, 7).unwrap()
        );
    }

    #[test]
    fn header_list_counts_and_oversigns() {
        let cfg = SignerConfig {
            headers: vec![
                "From".into(),
                "To".into(),
                "Subject".into(),
                "X-Absent".into(),
            ],
            ..SignerConfig::new("football.example.com", "brisbane")
        };
        let s = Signer::new(rfc_key(), cfg.clone()).unwrap();
        let m = b"From: a@b\r\nTo: x@y\r\nTo: z@y\r\nSubject: s\r\n\r\nbody\r\n";
        let (fields, _) = split(m);
        assert_eq!(
            s.header_list(&fields).unwrap(),
            ["from", "to", "to", "subject"]
        );
        let s = Signer::new(
            rfc_key(),
            SignerConfig {
                oversign: vec!["From".into(), "Reply-To".into()],
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(
            s.header_list(&fields).unwrap(),
            ["from", "from", "to", "to", "subject", "reply-to"]
        );
        let (fields, _) = split(b"To: x@y\r\n\r\n");
        assert_eq!(s.header_list(&fields), Err(SignError::NoFrom));
    }

    #[test]
    fn signature_field_shape() {
        let s = Signer::new(
            rfc_key(),
            SignerConfig::new("football.example.com", "brisbane"),
        )
        .unwrap();
        let field = s.sign(RFC8463_MESSAGE.as_bytes(), 1528637909).unwrap();
        let text = String::from_utf8(field).unwrap();
        assert!(text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;"));
        assert!(text.contains("t=1528637909;"));
        assert!(text.contains("bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;"));
        assert!(text.contains("h=from:subject:date:to:message-id;"));
        assert!(!text.contains(" l="));
        assert!(text.ends_with("\r\n"));
        assert!(text.lines().all(|l| l.len() <= 78), "{text}");
    }

    #[test]
    fn refuses_bad_configuration() {
        assert!(matches!(
            Signer::new(rfc_key(), SignerConfig::new("bad domain", "s")),
            Err(SignError::BadDomain(_))
        ));
        assert!(matches!(
            Signer::new(rfc_key(), SignerConfig::new("example.com", "")),
            Err(SignError::BadSelector(_))
        ));
        let cfg = SignerConfig {
            identity: Some("@other.example".into()),
            ..SignerConfig::new("example.com", "s")
        };
        assert!(matches!(
            Signer::new(rfc_key(), cfg),
            Err(SignError::IdentityOutsideDomain(_))
        ));
    }
}
