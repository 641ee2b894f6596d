//! What the transcript tests share: the escapes of their data files.

/// Unescapes `\r`, `\n`, `\t`, `\0`, `\\`, `\"`, `\xHH` and `\R{n}c` (the byte `c` repeated `n` times).
pub fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'0' => out.push(0),
                b'\\' => out.push(b'\\'),
                b'"' => out.push(b'"'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).unwrap();
                    out.push(u8::from_str_radix(hex, 16).unwrap());
                    i += 2;
                }
                b'R' => {
                    // \R{n}c: the byte c repeated n times.
                    let close = s[i..].find('}').unwrap() + i;
                    let n: usize = s[i + 3..close].parse().unwrap();
                    let c = b[close + 1];
                    out.extend(std::iter::repeat_n(c, n));
                    i = close;
                }
                other => panic!("bad escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
