//! The reply parser fed arbitrary server bytes, split at an arbitrary point: it must never panic, and
//! split and whole feeding must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmta::smtp::reply::{Parse, ReplyLimits, ReplyParser};

fn run(chunks: &[&[u8]]) -> Vec<Result<(u16, usize), vmta::smtp::ReplyError>> {
    let limits = ReplyLimits {
        max_line: 64,
        max_lines: 8,
        max_bytes: 256,
    };
    let mut p = ReplyParser::new(limits);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match p.parse(&buf) {
                Ok(Parse::Partial) => break,
                Ok(Parse::Complete(r, n)) => {
                    assert!(n <= buf.len());
                    let _ = r.to_reply();
                    out.push(Ok((r.code(), n)));
                    buf.drain(..n);
                }
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
        assert!(buf.len() <= limits.max_bytes.max(limits.max_line));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let body = &data[1..];
    let cut = cut.min(body.len());
    let whole = run(&[body]);
    let split = run(&[&body[..cut], &body[cut..]]);
    assert_eq!(whole, split);
});
