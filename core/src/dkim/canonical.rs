//! DKIM canonicalization (RFC 6376 §3.4): the `simple` and `relaxed` algorithms for header fields and
//! bodies, and the split of a message into header fields and body.
//!
//! The body canonicalizers stream: they feed the digest line by line and keep only a count of pending
//! empty lines, so a 100 KiB body is never copied. Input is expected with CRLF line endings (the
//! submission path normalises them, [`crate::policy::message`]); a bare LF is treated as a line end
//! too, so a signature still verifies for a receiver that sees the CRLF form.

/// One of the two canonicalization algorithms of RFC 6376 §3.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Canonicalization {
    /// §3.4.1 / §3.4.3: the header field as it is; the body with trailing empty lines removed.
    Simple,
    /// §3.4.2 / §3.4.4: tolerant of whitespace changes and header field refolding.
    Relaxed,
}

impl Canonicalization {
    /// The name used in the `c=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Canonicalization::Simple => "simple",
            Canonicalization::Relaxed => "relaxed",
        }
    }

    /// Parses `simple` or `relaxed` (case-insensitive).
    pub fn parse(s: &str) -> Option<Canonicalization> {
        if s.eq_ignore_ascii_case("simple") {
            Some(Canonicalization::Simple)
        } else if s.eq_ignore_ascii_case("relaxed") {
            Some(Canonicalization::Relaxed)
        } else {
            None
        }
    }
}

/// A header field of a message: its name and its raw bytes, from the first byte of the name to the
/// end of its last line including the final CRLF (or LF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// The field name as written (without the colon).
    pub name: &'a [u8],
    /// The whole field, folded lines included, with its line ending.
    pub raw: &'a [u8],
}

/// Splits `message` into its header fields and its body (what follows the empty line). A message
/// without an empty line is all header and has an empty body. A line before the body that is neither a
/// field nor a continuation line is kept as a field with an empty name, so it can never be signed by
/// name.
pub fn split(message: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
    let mut fields: Vec<HeaderField<'_>> = Vec::with_capacity(32);
    let mut pos = 0;
    let mut start: Option<usize> = None;
    while pos < message.len() {
        let end = match memchr_lf(&message[pos..]) {
            Some(i) => pos + i + 1,
            None => message.len(),
        };
        let line = &message[pos..end];
        let content = trim_eol(line);
        if content.is_empty() {
            if let Some(s) = start.take() {
                fields.push(field(&message[s..pos]));
            }
            return (fields, &message[end..]);
        }
        if content[0] == b' ' || content[0] == b'\t' {
            if start.is_none() {
                start = Some(pos);
            }
        } else {
            if let Some(s) = start {
                fields.push(field(&message[s..pos]));
            }
            start = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = start {
        fields.push(field(&message[s..]));
    }
    (fields, &message[message.len()..])
}

fn field(raw: &[u8]) -> HeaderField<'_> {
    let name = match raw.iter().position(|&b| b == b':') {
        Some(i) => trim_wsp_end(&raw[..i]),
        None => &raw[..0],
    };
    HeaderField { name, raw }
}

fn memchr_lf(s: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', s)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_wsp_end(s: &[u8]) -> &[u8] {
    let mut end = s.len();
    while end > 0 && is_wsp(s[end - 1]) {
        end -= 1;
    }
    &s[..end]
}

/// Appends the canonical form of one header field to `out` (RFC 6376 §3.4.1, §3.4.2), with its CRLF
/// unless `with_crlf` is false (the DKIM-Signature field itself is hashed without it, §3.7).
pub fn canonical_header(field: &[u8], canon: Canonicalization, with_crlf: bool, out: &mut Vec<u8>) {
    match canon {
        Canonicalization::Simple => {
            let body = trim_eol(field);
            out.extend_from_slice(body);
            if with_crlf {
                out.extend_from_slice(b"\r\n");
            }
        }
        Canonicalization::Relaxed => {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
            for &b in trim_wsp_end(&field[..colon]) {
                out.push(b.to_ascii_lowercase());
            }
            out.push(b':');
            let value = if colon < field.len() {
                &field[colon + 1..]
            } else {
                &[][..]
            };
            // Unfold (drop CR and LF), turn each run of WSP into one SP, drop WSP at both ends.
            let mut pending_space = false;
            let mut started = false;
            for &b in value {
                match b {
                    b'\r' | b'\n' => {}
                    b' ' | b'\t' => pending_space = started,
                    _ => {
                        if pending_space {
                            out.push(b' ');
                            pending_space = false;
                        }
                        out.push(b);
                        started = true;
                    }
                }
            }
            if with_crlf {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Feeds the canonical form of `body` to `sink` piece by piece (RFC 6376 §3.4.3, §3.4.4), typically a
/// digest's `update`, and returns the number of canonical bytes fed.
///
/// Both forms drop the empty lines at the end of the body. `simple` turns an empty body into one CRLF;
/// `relaxed` leaves it empty (RFC 6376 erratum 1384 on §3.4.4). A last line without a line ending gets
/// a CRLF.
pub fn canonical_body(body: &[u8], canon: Canonicalization, mut sink: impl FnMut(&[u8])) -> u64 {
    // Canonical bytes are gathered in a buffer and handed over in blocks: one digest update per
    // few KiB instead of two or three per line.
    const BLOCK: usize = 16 * 1024;
    let mut buf: Vec<u8> = Vec::with_capacity(BLOCK + 1024);
    let mut fed: u64 = 0;
    let mut empty_lines: u64 = 0;
    let mut any_line = false;
    let mut pos = 0;
    while pos < body.len() {
        let end = match memchr::memchr(b'\n', &body[pos..]) {
            Some(i) => pos + i + 1,
            None => body.len(),
        };
        let mut content = trim_eol(&body[pos..end]);
        pos = end;
        if canon == Canonicalization::Relaxed {
            content = trim_wsp_end(content);
        }
        if content.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            buf.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        match canon {
            Canonicalization::Simple => buf.extend_from_slice(content),
            Canonicalization::Relaxed => {
                // Copy runs without white space whole; each run of WSP becomes one SP. The line
                // has no trailing WSP any more.
                let mut rest = content;
                while let Some(i) = memchr::memchr2(b' ', b'\t', rest) {
                    buf.extend_from_slice(&rest[..i]);
                    buf.push(b' ');
                    let mut j = i + 1;
                    while j < rest.len() && is_wsp(rest[j]) {
                        j += 1;
                    }
                    rest = &rest[j..];
                }
                buf.extend_from_slice(rest);
            }
        }
        buf.extend_from_slice(b"\r\n");
        any_line = true;
        if buf.len() >= BLOCK {
            sink(&buf);
            fed += buf.len() as u64;
            buf.clear();
        }
    }
    if !any_line && canon == Canonicalization::Simple {
        buf.extend_from_slice(b"\r\n");
    }
    if !buf.is_empty() {
        sink(&buf);
        fed += buf.len() as u64;
    }
    fed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(body: &[u8], canon: Canonicalization) -> Vec<u8> {
        let mut out = Vec::new();
        let n = canonical_body(body, canon, |piece| out.extend_from_slice(piece));
        assert_eq!(n, out.len() as u64);
        out
    }

    fn headers(message: &[u8], canon: Canonicalization) -> Vec<u8> {
        let (fields, _) = split(message);
        let mut out = Vec::new();
        for f in fields {
            canonical_header(f.raw, canon, true, &mut out);
        }
        out
    }

    /// RFC 6376 §3.4.5, the specification's own example.
    #[test]
    fn rfc6376_example() {
        let m: &[u8] = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        assert_eq!(headers(m, Canonicalization::Relaxed), b"a:X\r\nb:Y Z\r\n");
        assert_eq!(
            headers(m, Canonicalization::Simple),
            b"A: X\r\nB : Y\t\r\n\tZ  \r\n"
        );
        let (_, b) = split(m);
        assert_eq!(body(b, Canonicalization::Relaxed), b" C\r\nD E\r\n");
        assert_eq!(body(b, Canonicalization::Simple), b" C \r\nD \t E\r\n");
    }

    #[test]
    fn empty_and_unterminated_bodies() {
        assert_eq!(body(b"", Canonicalization::Simple), b"\r\n");
        assert_eq!(body(b"", Canonicalization::Relaxed), b"");
        assert_eq!(body(b"\r\n\r\n", Canonicalization::Simple), b"\r\n");
        assert_eq!(body(b"\r\n \r\n", Canonicalization::Relaxed), b"");
        assert_eq!(body(b"abc", Canonicalization::Simple), b"abc\r\n");
        assert_eq!(
            body(b"a\r\n\r\nb", Canonicalization::Relaxed),
            b"a\r\n\r\nb\r\n"
        );
        assert_eq!(body(b"a  \n", Canonicalization::Relaxed), b"a\r\n");
    }

    /// The canonical forms written out naively, line by line, byte by byte, as RFC 6376 §3.4.3 and
    /// §3.4.4 describe them.
    fn naive(body: &[u8], canon: Canonicalization) -> Vec<u8> {
        let text = body.to_vec();
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let mut cur = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'\n' {
                if cur.last() == Some(&b'\r') {
                    cur.pop();
                }
                lines.push(std::mem::take(&mut cur));
            } else {
                cur.push(text[i]);
            }
            i += 1;
        }
        if !cur.is_empty() {
            lines.push(cur);
        }
        if canon == Canonicalization::Relaxed {
            for l in &mut lines {
                let mut out = Vec::new();
                for &b in l.iter() {
                    if is_wsp(b) {
                        if out.last() != Some(&b' ') {
                            out.push(b' ');
                        }
                    } else {
                        out.push(b);
                    }
                }
                while out.last() == Some(&b' ') {
                    out.pop();
                }
                *l = out;
            }
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        let mut out = Vec::new();
        for l in &lines {
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        if out.is_empty() && canon == Canonicalization::Simple {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn agrees_with_the_naive_reading() {
        let alphabet = [b'a', b' ', b'\t', b'\r', b'\n', b'b', b'\n'];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = if round % 100 == 0 {
                40_000
            } else {
                (seed % 40) as usize
            };
            let body: Vec<u8> = (0..len)
                .map(|i| {
                    let x = seed.wrapping_mul(i as u64 + 1).rotate_left((i % 61) as u32);
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                // Bare CRs are not line ends for the naive reading; the signer only sees CRLF input.
                .collect::<Vec<u8>>()
                .split(|&b| b == b'\r')
                .collect::<Vec<_>>()
                .join(&b"\r\n"[..]);
            for canon in [Canonicalization::Simple, Canonicalization::Relaxed] {
                assert_eq!(
                    self::body(&body, canon),
                    naive(&body, canon),
                    "{canon:?} {body:?}"
                );
            }
        }
    }

    #[test]
    fn split_without_body_and_with_garbage() {
        let (f, b) = split(b"A: 1\r\nB: 2\r\n");
        assert_eq!(f.len(), 2);
        assert!(b.is_empty());
        let (f, b) = split(b"A: 1\r\n\r\nbody");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].name, b"A");
        assert_eq!(b, b"body");
        let (f, _) = split(b"garbage line\r\nB: 2\r\n\r\n");
        assert_eq!(f[0].name, b"");
        assert_eq!(f[1].name, b"B");
    }
}
