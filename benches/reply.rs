//! Reply parsing throughput (replies/s).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vmta::smtp::reply::{Parse, ReplyParser};

fn reply_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("reply");
    let single = b"250 2.1.5 Ok\r\n";
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_line", |b| {
        let mut p = ReplyParser::default();
        b.iter(|| match p.parse(black_box(single)) {
            Ok(Parse::Complete(r, n)) => (r.code(), n),
            _ => unreachable!(),
        })
    });
    let ehlo = b"250-mx.example.com at your service\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n";
    g.bench_function("ehlo_8_lines", |b| {
        let mut p = ReplyParser::default();
        b.iter(|| match p.parse(black_box(ehlo)) {
            Ok(Parse::Complete(r, n)) => (r.code(), n),
            _ => unreachable!(),
        })
    });
    let pipelined = b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as 1234\r\n";
    g.throughput(Throughput::Elements(3));
    g.bench_function("pipelined_3_to_reply", |b| {
        let mut p = ReplyParser::default();
        b.iter(|| {
            let mut buf: &[u8] = black_box(pipelined);
            let mut sum = 0u32;
            while let Ok(Parse::Complete(r, n)) = p.parse(buf) {
                sum += u32::from(r.code());
                let _ = r.to_reply();
                buf = &buf[n..];
            }
            sum
        })
    });
    g.finish();
}

criterion_group!(benches, reply_parsing);
criterion_main!(benches);
