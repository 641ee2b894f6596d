//! DKIM private keys: RSA (RFC 6376 §3.3.1, at least 2048 bits here, RFC 8301 §3.2 asks for at least
//! 1024 and recommends 2048) and Ed25519 (RFC 8463), read from PEM, and the public key record they
//! publish (RFC 6376 §3.6.1).
//!
//! Accepted PEM forms: `RSA PRIVATE KEY` (PKCS#1), `PRIVATE KEY` (PKCS#8, RSA or Ed25519). Encrypted
//! PKCS#8 keys are not read (decrypt them first).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::signature::{SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use sha2::Sha256;

/// The smallest RSA modulus vmta signs with, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// A signing algorithm of RFC 6376 §3.3 / RFC 8463 §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `rsa-sha256`: RSASSA-PKCS1-v1_5 with SHA-256.
    RsaSha256,
    /// `ed25519-sha256`: PureEd25519 over the SHA-256 hash of the signed data.
    Ed25519Sha256,
}

impl Algorithm {
    /// The name used in the `a=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The key type in the key record's `k=` tag.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }

    /// Parses `rsa-sha256` or `ed25519-sha256`.
    pub fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_lowercase().as_str() {
            "rsa-sha256" => Some(Algorithm::RsaSha256),
            "ed25519-sha256" => Some(Algorithm::Ed25519Sha256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The PEM text is not a private key of a supported kind.
    Unreadable(String),
    /// An RSA key shorter than [`MIN_RSA_BITS`].
    RsaTooSmall {
        /// The key's modulus length.
        bits: usize,
    },
    /// The key does not belong to the requested algorithm.
    WrongAlgorithm {
        /// What was asked for.
        wanted: Algorithm,
        /// What the key is.
        found: Algorithm,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Unreadable(why) => write!(f, "unreadable private key: {why}"),
            KeyError::RsaTooSmall { bits } => write!(
                f,
                "RSA key of {bits} bits refused: DKIM keys must have at least {MIN_RSA_BITS} bits"
            ),
            KeyError::WrongAlgorithm { wanted, found } => {
                write!(f, "the key is an {found} key, not {wanted}")
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// A private key that signs DKIM signatures.
#[derive(Clone)]
pub struct SigningKey {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Rsa {
        key: Box<rsa::pkcs1v15::SigningKey<Sha256>>,
        public_der: Vec<u8>,
        bits: usize,
    },
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("bits", &self.bits())
            .finish()
    }
}

impl SigningKey {
    /// Reads a PEM private key (PKCS#1 RSA, PKCS#8 RSA or PKCS#8 Ed25519).
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        if pem.contains("-----BEGIN RSA PRIVATE KEY-----") {
            let key = rsa::PrivateKey::from_pkcs1_pem(pem)
                .map_err(|e| KeyError::Unreadable(format!("PKCS#1 RSA key: {e}")))?;
            return SigningKey::from_rsa(key);
        }
        if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return Err(KeyError::Unreadable(
                "encrypted PKCS#8 keys are not supported; decrypt the key first".into(),
            ));
        }
        if pem.contains("-----BEGIN PRIVATE KEY-----") {
            if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
                return Ok(SigningKey::from_ed25519(key));
            }
            let key = rsa::PrivateKey::from_pkcs8_pem(pem).map_err(|e| {
                KeyError::Unreadable(format!("PKCS#8 key is neither Ed25519 nor RSA: {e}"))
            })?;
            return SigningKey::from_rsa(key);
        }
        Err(KeyError::Unreadable(
            "no `RSA PRIVATE KEY` or `PRIVATE KEY` PEM block".into(),
        ))
    }

    /// Wraps an RSA key, refusing one shorter than [`MIN_RSA_BITS`].
    pub fn from_rsa(key: rsa::PrivateKey) -> Result<SigningKey, KeyError> {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::RsaTooSmall { bits });
        }
        let public_der = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| KeyError::Unreadable(format!("RSA public key: {e}")))?
            .as_bytes()
            .to_vec();
        Ok(SigningKey {
            inner: Inner::Rsa {
                key: Box::new(rsa::pkcs1v15::SigningKey::<Sha256>::new(key)),
                public_der,
                bits,
            },
        })
    }

    /// Wraps an Ed25519 key.
    pub fn from_ed25519(key: ed25519_dalek::SigningKey) -> SigningKey {
        SigningKey {
            inner: Inner::Ed25519(Box::new(key)),
        }
    }

    /// Builds an Ed25519 key from its 32-byte seed (the form RFC 8463 Appendix A prints).
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> SigningKey {
        SigningKey::from_ed25519(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self.inner {
            Inner::Rsa { .. } => Algorithm::RsaSha256,
            Inner::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// The key size in bits (256 for Ed25519).
    pub fn bits(&self) -> usize {
        match &self.inner {
            Inner::Rsa { bits, .. } => *bits,
            Inner::Ed25519(_) => 256,
        }
    }

    /// Fails unless the key belongs to `wanted`.
    pub fn expect_algorithm(&self, wanted: Algorithm) -> Result<(), KeyError> {
        let found = self.algorithm();
        if found == wanted {
            Ok(())
        } else {
            Err(KeyError::WrongAlgorithm { wanted, found })
        }
    }

    /// The public key bytes published in `p=`: the DER SubjectPublicKeyInfo for RSA (RFC 6376
    /// §3.6.1), the raw 32-byte key for Ed25519 (RFC 8463 §4).
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Rsa { public_der, .. } => public_der.clone(),
            Inner::Ed25519(k) => k.verifying_key().to_bytes().to_vec(),
        }
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn public_key_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().key_type(),
            BASE64.encode(self.public_key_bytes())
        )
    }

    /// Signs the canonicalized header data (RFC 6376 §3.7): RSA hashes it with SHA-256 inside
    /// PKCS#1 v1.5; Ed25519 signs its SHA-256 hash (RFC 8463 §3).
    pub(crate) fn sign(&self, data: &[u8]) -> Vec<u8> {
        match &self.inner {
            Inner::Rsa { key, .. } => key.sign(data).to_vec(),
            Inner::Ed25519(k) => {
                use sha2::Digest as _;
                let hash = Sha256::digest(data);
                ed25519_dalek::Signer::sign(k.as_ref(), hash.as_slice())
                    .to_bytes()
                    .to_vec()
            }
        }
    }
}
