//! ESMTP capabilities from an EHLO reply (RFC 5321 §4.1.1.1).
//!
//! Understood keywords: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
//! (RFC 6531), ENHANCEDSTATUSCODES (RFC 2034), CHUNKING (RFC 3030), STARTTLS (RFC 3207), DSN (RFC 3461)
//! and AUTH (RFC 4954, including the old `AUTH=` form). Others are ignored.
//!
//! Tolerant of what real servers send: keywords in any case, extra spaces or tabs, an empty last line
//! (Postfix's `smtp-sink`), a SIZE without a number.

use super::reply::ReplyRef;

/// SASL mechanisms vmta can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthMechanisms {
    /// AUTH PLAIN (RFC 4616).
    pub plain: bool,
    /// AUTH LOGIN (draft-murchison-sasl-login).
    pub login: bool,
}

/// What the server said it supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The session used EHLO (false after a HELO fallback: no extension is available).
    pub esmtp: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// SIZE: `Some(0)` when offered without a limit, `Some(n)` with a limit of n octets.
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eight_bit_mime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
    /// CHUNKING (BDAT).
    pub chunking: bool,
    /// STARTTLS.
    pub starttls: bool,
    /// DSN.
    pub dsn: bool,
    /// AUTH mechanisms offered, among those vmta knows.
    pub auth: AuthMechanisms,
}

impl Capabilities {
    /// Reads the capabilities of a positive EHLO reply. The first line is the server's name.
    pub fn from_ehlo(reply: &ReplyRef<'_>) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.lines().skip(1) {
            caps.read_line(line);
        }
        caps
    }

    fn read_line(&mut self, line: &[u8]) {
        let mut words = line
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|w| !w.is_empty());
        let Some(keyword) = words.next() else {
            return;
        };
        // `AUTH=LOGIN PLAIN` is the pre-standard form still sent by some servers.
        let (keyword, first_param) = match keyword.iter().position(|b| *b == b'=') {
            Some(eq) => (&keyword[..eq], Some(&keyword[eq + 1..])),
            None => (keyword, None),
        };
        let is = |name: &str| keyword.eq_ignore_ascii_case(name.as_bytes());
        if is("PIPELINING") {
            self.pipelining = true;
        } else if is("SIZE") {
            let limit = words
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            self.size = Some(limit);
        } else if is("8BITMIME") {
            self.eight_bit_mime = true;
        } else if is("SMTPUTF8") {
            self.smtputf8 = true;
        } else if is("ENHANCEDSTATUSCODES") {
            self.enhanced_status_codes = true;
        } else if is("CHUNKING") {
            self.chunking = true;
        } else if is("STARTTLS") {
            self.starttls = true;
        } else if is("DSN") {
            self.dsn = true;
        } else if is("AUTH") {
            for mech in first_param.into_iter().chain(words) {
                if mech.eq_ignore_ascii_case(b"PLAIN") {
                    self.auth.plain = true;
                } else if mech.eq_ignore_ascii_case(b"LOGIN") {
                    self.auth.login = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::{Parse, ReplyParser};

    fn caps(input: &[u8]) -> Capabilities {
        match ReplyParser::default().parse(input).unwrap() {
            Parse::Complete(r, _) => Capabilities::from_ehlo(&r),
            Parse::Partial => panic!("partial"),
        }
    }

    #[test]
    fn reads_the_usual_keywords() {
        let c = caps(b"250-mx.example.com Hello\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-DSN\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n250 SMTPUTF8\r\n");
        assert!(c.esmtp && c.pipelining && c.eight_bit_mime && c.starttls);
        assert!(c.enhanced_status_codes && c.chunking && c.dsn && c.smtputf8);
        assert_eq!(c.size, Some(35882577));
        assert_eq!(
            c.auth,
            AuthMechanisms {
                plain: true,
                login: true
            }
        );
    }

    #[test]
    fn tolerates_quirks() {
        // smtp-sink's empty last line, lower case, tabs and extra spaces, SIZE without a number,
        // the old AUTH= form.
        let c = caps(b"250-sink\r\n250-pipelining\r\n250-  size\r\n250-AUTH=login\r\n250-8bitmime \t\r\n250 \r\n");
        assert!(c.pipelining && c.eight_bit_mime);
        assert_eq!(c.size, Some(0));
        assert!(c.auth.login && !c.auth.plain);
        assert!(!c.chunking && !c.starttls);
    }

    #[test]
    fn single_line_ehlo_has_no_extensions() {
        let c = caps(b"250 mx.example.com\r\n");
        assert!(c.esmtp);
        assert_eq!(
            c,
            Capabilities {
                esmtp: true,
                ..Default::default()
            }
        );
    }
}
