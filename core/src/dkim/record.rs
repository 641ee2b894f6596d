//! The DKIM key record published in DNS (RFC 6376 §3.6.1) and the tag=value list syntax it shares with
//! the signature field and with DMARC records (RFC 6376 §3.2).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Why a tag list or key record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A tag without `=`, an empty tag name, or a name with characters outside ALPHA/DIGIT/`_`.
    BadTag(String),
    /// A tag appears twice (RFC 6376 §3.2: "Tags with duplicate names MUST NOT occur").
    DuplicateTag(String),
    /// `v=` is present but not `DKIM1`, or not the first tag.
    BadVersion(String),
    /// `p=` is missing.
    NoPublicKey,
    /// `p=` is not base64.
    BadPublicKey(String),
    /// `h=` does not allow sha256, or `s=` excludes email.
    NotForUs(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::BadTag(t) => write!(f, "malformed tag {t:?}"),
            RecordError::DuplicateTag(t) => write!(f, "tag {t:?} appears twice"),
            RecordError::BadVersion(v) => write!(f, "bad version {v:?}"),
            RecordError::NoPublicKey => f.write_str("no p= tag"),
            RecordError::BadPublicKey(e) => write!(f, "p= is not base64: {e}"),
            RecordError::NotForUs(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for RecordError {}

/// Parses a tag list (`tag = value ; tag = value ;`), returning the tags in order with whitespace
/// around names and values removed. A trailing `;` is allowed.
pub fn parse_tag_list(text: &str) -> Result<Vec<(String, String)>, RecordError> {
    let mut tags: Vec<(String, String)> = Vec::new();
    for part in text.split(';') {
        if part.trim().is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| RecordError::BadTag(part.trim().to_string()))?;
        let name = name.trim();
        if name.is_empty()
            || !name.starts_with(|c: char| c.is_ascii_alphabetic())
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(RecordError::BadTag(part.trim().to_string()));
        }
        if tags.iter().any(|(n, _)| n == name) {
            return Err(RecordError::DuplicateTag(name.to_string()));
        }
        tags.push((name.to_string(), value.trim().to_string()));
    }
    Ok(tags)
}

/// A parsed DKIM key record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `k=`: `rsa` (the default) or `ed25519`, lower-cased.
    pub key_type: String,
    /// The decoded `p=`; empty means the key was revoked (RFC 6376 §3.6.1).
    pub public_key: Vec<u8>,
    /// `t=y`: the domain is testing DKIM.
    pub testing: bool,
    /// `t=s`: `i=` must be exactly `d=`.
    pub strict: bool,
}

impl KeyRecord {
    /// Parses the TXT record text (the record's strings already joined).
    pub fn parse(text: &str) -> Result<KeyRecord, RecordError> {
        let tags = parse_tag_list(text)?;
        let mut record = KeyRecord {
            key_type: "rsa".into(),
            public_key: Vec::new(),
            testing: false,
            strict: false,
        };
        let mut have_p = false;
        for (i, (name, value)) in tags.iter().enumerate() {
            match name.as_str() {
                "v" if i != 0 || value != "DKIM1" => {
                    return Err(RecordError::BadVersion(value.clone()));
                }
                "k" => record.key_type = value.to_ascii_lowercase(),
                "p" => {
                    have_p = true;
                    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
                    record.public_key = BASE64
                        .decode(compact)
                        .map_err(|e| RecordError::BadPublicKey(e.to_string()))?;
                }
                "h" if !value
                    .split(':')
                    .any(|h| h.trim().eq_ignore_ascii_case("sha256")) =>
                {
                    return Err(RecordError::NotForUs(format!(
                        "h={value} does not allow sha256"
                    )));
                }
                "s" if !value
                    .split(':')
                    .any(|s| s.trim() == "*" || s.trim().eq_ignore_ascii_case("email")) =>
                {
                    return Err(RecordError::NotForUs(format!(
                        "s={value} does not include email"
                    )));
                }
                "t" => {
                    for flag in value.split(':') {
                        match flag.trim() {
                            "y" => record.testing = true,
                            "s" => record.strict = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if !have_p {
            return Err(RecordError::NoPublicKey);
        }
        Ok(record)
    }

    /// Whether the key was revoked (`p=` empty).
    pub fn is_revoked(&self) -> bool {
        self.public_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists() {
        assert_eq!(
            parse_tag_list(" v = DKIM1 ; p=AB CD;").unwrap(),
            [("v".into(), "DKIM1".into()), ("p".into(), "AB CD".into())]
        );
        assert!(matches!(
            parse_tag_list("v=1; v=2"),
            Err(RecordError::DuplicateTag(_))
        ));
        assert!(matches!(
            parse_tag_list("novalue"),
            Err(RecordError::BadTag(_))
        ));
        assert!(matches!(parse_tag_list("=x"), Err(RecordError::BadTag(_))));
    }

    #[test]
    fn key_records() {
        let r = KeyRecord::parse("v=DKIM1; k=ed25519; t=y:s; p=AQAB").unwrap();
        assert_eq!(r.key_type, "ed25519");
        assert_eq!(r.public_key, [1, 0, 1]);
        assert!(r.testing && r.strict);
        assert_eq!(KeyRecord::parse("p=AQAB").unwrap().key_type, "rsa");
        assert!(KeyRecord::parse("v=DKIM1; p=").unwrap().is_revoked());
        for bad in [
            "k=rsa; v=DKIM1; p=AQAB",
            "v=DKIM2; p=AQAB",
            "v=DKIM1; k=rsa",
            "v=DKIM1; p=!!",
            "v=DKIM1; h=sha1; p=AQAB",
            "v=DKIM1; s=tlsrpt; p=AQAB",
        ] {
            assert!(KeyRecord::parse(bad).is_err(), "{bad}");
        }
    }
}
