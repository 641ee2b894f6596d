//! Bounce classification (replies/s) and report parsing (messages/s).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use vmta::bounce::{Classifier, Diagnostic, report};
use vmta::smtp::Phase;

const REPLIES: &[&str] = &[
    "550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp",
    "452 4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
    "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1",
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1",
    "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy.",
    "250 2.0.0 OK 1700000000 a1si123456qkb.1 - gsmtp",
];

fn classification(c: &mut Criterion) {
    let classifier = Classifier::default_rules();
    let diags: Vec<Diagnostic<'_>> = REPLIES
        .iter()
        .map(|l| {
            let mut d = Diagnostic::from_line(l);
            d.phase = Some(Phase::Rcpt);
            d.mx_host = "gmail-smtp-in.l.google.com";
            d
        })
        .collect();
    let mut g = c.benchmark_group("bounce_classify");
    g.throughput(Throughput::Elements(diags.len() as u64));
    g.bench_function("six_replies", |b| {
        b.iter(|| {
            let mut n = 0u32;
            for d in &diags {
                n += classifier.classify(black_box(d)).reason as u32;
            }
            n
        })
    });
    // Worst case: a hostile server's 4 KiB of random printable text (the classifier's MAX_TEXT), which
    // defeats the lazy DFA's state cache.
    let mut x: u32 = 0x1234_5678;
    let noise: String = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(33 + (x % 94) as u8)
        })
        .collect();
    let hostile = Diagnostic::reply(550, &noise);
    g.throughput(Throughput::Elements(1));
    g.bench_function("random_4k_text", |b| {
        b.iter(|| classifier.classify(black_box(&hostile)).reason as u32)
    });
    // A reply with non-ASCII text (servers answer in their own language), where a Unicode word
    // boundary would make the lazy DFA give up.
    let utf8 = Diagnostic::reply(
        550,
        "5.1.1 <jürgen@beispiel.de>: Empfängeradresse unbekannt, Zustellung nicht möglich",
    );
    g.bench_function("non_ascii_reply", |b| {
        b.iter(|| classifier.classify(black_box(&utf8)).reason as u32)
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let classifier = Classifier::default_rules();
    let data =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sisimai/maildir/bsd");
    let messages: Vec<Vec<u8>> = [
        "lhost-postfix-01.eml",
        "lhost-qmail-01.eml",
        "lhost-exim-01.eml",
        "lhost-sendmail-01.eml",
        "arf-01.eml",
        "rhost-google-01.eml",
    ]
    .iter()
    .map(|f| std::fs::read(data.join(f)).expect("corpus file"))
    .collect();
    let mut g = c.benchmark_group("bounce_parse");
    g.throughput(Throughput::Elements(messages.len() as u64));
    g.bench_function("six_reports", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &messages {
                n += report::parse(black_box(m), &classifier).map_or(0, |r| r.recipients.len());
            }
            n
        })
    });
    g.finish();
}

/// A transaction of 100 recipients refused alike (`452 4.2.2` over quota at end of data): what the
/// engine's retry step costs per recipient before and after the verdict cache. `per_recipient` is
/// the old path (the policy's decision and its reason each classify: two per recipient);
/// `verdict_cache` classifies the distinct reply once and decides from it.
fn failed_transaction(c: &mut Criterion) {
    use rand::SeedableRng;
    use vmta::engine::retry::{ClassifiedRetry, FailedAttempt, RetryPolicy, VerdictCache};
    let policy = ClassifiedRetry::new(72 * 3600, 0.2);
    let attempt = FailedAttempt {
        permanent: false,
        code: Some(452),
        enhanced: Some(vmta::smtp::EnhancedCode {
            class: 4,
            subject: 2,
            detail: 2,
        }),
        text: REPLIES[1].get(10..).unwrap_or(""),
        phase: Some(Phase::EndOfData),
        domain: "gmail.com",
        mx: "gmail-smtp-in.l.google.com",
        sender_domain: "news.example.com",
        tenant: "acme",
        attempts: 1,
        submitted_at: 1_000_000,
        now: 1_000_060,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut g = c.benchmark_group("failed_transaction_100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("per_recipient", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for _ in 0..100 {
                let a = black_box(&attempt);
                if let vmta::engine::retry::Decision::RetryAt(t) = policy.decide(a, &mut rng) {
                    n += t;
                }
                n += policy.reason(a).map_or(0, |r| r.len() as u64);
            }
            n
        })
    });
    g.bench_function("verdict_cache", |b| {
        b.iter(|| {
            // A new cache per transaction: the first recipient classifies, the rest reuse it.
            let mut cache = VerdictCache::default();
            let mut n = 0u64;
            for _ in 0..100 {
                let a = black_box(&attempt);
                let v = cache.classify(&policy, a);
                if let vmta::engine::retry::Decision::RetryAt(t) =
                    policy.decide_classified(a, v.as_ref(), &mut rng)
                {
                    n += t;
                }
                n += v.map_or(0, |c| c.reason.as_str().len() as u64);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, classification, parsing, failed_transaction);
criterion_main!(benches);
