//! Mailbox addresses in From-like header fields (RFC 5322 §3.4): `mailbox-list` with display names,
//! quoted strings, comments, angle addresses and groups, reduced to the `addr-spec`s.
//!
//! This is a tolerant reader for approving senders, not a validator of every production: it finds
//! each mailbox's address and checks it has a local part and a domain. Obsolete routes
//! (`<@relay:user@host>`) are stripped. Encoded words (RFC 2047) in display names are left as they are.

use std::fmt;

/// Why an address list could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressError {
    /// A quoted string, comment or angle address is not closed.
    Unterminated(&'static str),
    /// A mailbox without `@` or with an empty local part or domain.
    NotAnAddress(String),
    /// The list holds no mailbox at all.
    Empty,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Unterminated(what) => write!(f, "unterminated {what}"),
            AddressError::NotAnAddress(a) => write!(f, "{a:?} is not an address"),
            AddressError::Empty => f.write_str("no address"),
        }
    }
}

impl std::error::Error for AddressError {}

/// The addresses of a `mailbox-list` or `address-list` header value (unfolded or not).
pub fn mailbox_addresses(value: &str) -> Result<Vec<String>, AddressError> {
    let mut out = Vec::with_capacity(1);
    // Current mailbox: text outside comments/quotes/angles, and the angle address if any.
    let mut bare = String::with_capacity(value.len());
    let mut angle: Option<String> = None;
    let mut chars = value.chars().peekable();
    let finish = |bare: &mut String, angle: &mut Option<String>, out: &mut Vec<String>| {
        let candidate = match angle.take() {
            Some(a) => Some(a),
            None => {
                let b = bare.trim();
                if b.is_empty() {
                    None
                } else {
                    Some(b.to_string())
                }
            }
        };
        bare.clear();
        if let Some(c) = candidate {
            out.push(c);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // Quoted string: part of a display name or of a local part.
                bare.push('"');
                let mut closed = false;
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            if let Some(e) = chars.next() {
                                bare.push('\\');
                                bare.push(e);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        _ => bare.push(q),
                    }
                }
                if !closed {
                    return Err(AddressError::Unterminated("quoted string"));
                }
                bare.push('"');
            }
            '(' => {
                let mut depth = 1;
                while depth > 0 {
                    match chars.next() {
                        Some('\\') => {
                            chars.next();
                        }
                        Some('(') => depth += 1,
                        Some(')') => depth -= 1,
                        Some(_) => {}
                        None => return Err(AddressError::Unterminated("comment")),
                    }
                }
            }
            '<' => {
                let mut addr = String::new();
                let mut closed = false;
                for a in chars.by_ref() {
                    if a == '>' {
                        closed = true;
                        break;
                    }
                    if !a.is_whitespace() {
                        addr.push(a);
                    }
                }
                if !closed {
                    return Err(AddressError::Unterminated("angle address"));
                }
                // Obsolete route: drop everything up to the last ':'.
                if let Some((_, rest)) = addr.rsplit_once(':') {
                    addr = rest.to_string();
                }
                angle = Some(addr);
            }
            ':' => {
                // Group name ends: what came before is the display name of the group.
                bare.clear();
                angle = None;
            }
            ',' | ';' => finish(&mut bare, &mut angle, &mut out),
            _ => bare.push(c),
        }
    }
    finish(&mut bare, &mut angle, &mut out);
    for a in &out {
        let ok = match a.rsplit_once('@') {
            Some((local, domain)) => {
                let local_ok = local.starts_with('"') || !local.contains(char::is_whitespace);
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains(char::is_whitespace)
                    && local_ok
            }
            None => false,
        };
        if !ok {
            return Err(AddressError::NotAnAddress(a.clone()));
        }
    }
    if out.is_empty() {
        return Err(AddressError::Empty);
    }
    Ok(out)
}

/// The domain of an address (after the last `@`), lower-cased.
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_common_forms() {
        assert_eq!(
            mailbox_addresses("Joe SixPack <joe@football.example.com>").unwrap(),
            ["joe@football.example.com"]
        );
        assert_eq!(
            mailbox_addresses(" joe@example.com ").unwrap(),
            ["joe@example.com"]
        );
        assert_eq!(
            mailbox_addresses("\"Doe, John\" <jd@example.com>, ann@example.org (Ann)").unwrap(),
            ["jd@example.com", "ann@example.org"]
        );
        assert_eq!(
            mailbox_addresses("Team: a@example.com, B <b@example.com>;").unwrap(),
            ["a@example.com", "b@example.com"]
        );
        assert_eq!(
            mailbox_addresses("<@relay.example:user@example.com>").unwrap(),
            ["user@example.com"]
        );
        assert_eq!(
            mailbox_addresses("\"odd local\"@example.com").unwrap(),
            ["\"odd local\"@example.com"]
        );
        assert_eq!(
            mailbox_addresses("=?utf-8?q?J=C3=B6?= <jo@example.com>").unwrap(),
            ["jo@example.com"]
        );
    }

    #[test]
    fn refuses_broken_lists() {
        assert_eq!(
            mailbox_addresses("Joe <joe@example.com"),
            Err(AddressError::Unterminated("angle address"))
        );
        assert_eq!(
            mailbox_addresses("\"Joe <joe@example.com>"),
            Err(AddressError::Unterminated("quoted string"))
        );
        assert_eq!(
            mailbox_addresses("(Joe joe@example.com"),
            Err(AddressError::Unterminated("comment"))
        );
        assert!(matches!(
            mailbox_addresses("Joe Sixpack"),
            Err(AddressError::NotAnAddress(_))
        ));
        assert_eq!(mailbox_addresses("  "), Err(AddressError::Empty));
        assert!(mailbox_addresses("<@example.com>").is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of("a@Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(domain_of("nobody"), None);
    }
}
