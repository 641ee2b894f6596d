//! DKIM signing cost per message (2 KiB and 100 KiB, rsa-sha256 2048-bit and ed25519-sha256,
//! relaxed/relaxed; and per further copy when the body hash is reused) and submission validation throughput (messages/s; bytes/s follow from the sizes).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::PathBuf;
use vmta::dkim::{Signer, SignerConfig, SigningKey};
use vmta::policy::{Stamp, Trace, ValidationOptions, validate};

fn key(file: &str) -> SigningKey {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/policy")
        .join(file);
    SigningKey::from_pem(&std::fs::read_to_string(path).expect("test key")).expect("key")
}

/// A message of about `size` bytes: typical headers, then 76-column body lines.
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: Acme News <news@acme.example>\r\nTo: Ann Example <ann@example.net>\r\n\
Subject: Your weekly digest, with a subject long enough to be realistic\r\n\
Date: Mon, 23 Nov 2026 12:00:00 +0000\r\nMessage-ID: <q42.1790000000@acme.example>\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
List-Unsubscribe: <https://u.acme.example/u/abcdefghijklmnop>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed do eiusmod t\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

fn signing(c: &mut Criterion) {
    let mut g = c.benchmark_group("dkim_sign");
    g.throughput(Throughput::Elements(1));
    for (name, file) in [("rsa2048", "rsa2048.pem"), ("ed25519", "ed25519.pem")] {
        let signer = Signer::new(
            key(file),
            SignerConfig::new("acme.example", "s1").with_oversigning(),
        )
        .expect("signer");
        for (label, size) in [("2KiB", 2048), ("100KiB", 100 * 1024)] {
            let m = message(size);
            g.bench_function(format!("{name}_{label}"), |b| {
                b.iter(|| signer.sign(black_box(&m), 1_790_000_000).expect("sign"))
            });
        }
        // One body, many recipients: the body hash is computed once per message, not per copy.
        let m = message(100 * 1024);
        let bh = signer.body_hash(&m);
        g.bench_function(format!("{name}_100KiB_body_hash_reused"), |b| {
            b.iter(|| {
                signer
                    .sign_with_body_hash(black_box(&m), &bh, 1_790_000_000)
                    .expect("sign")
            })
        });
    }
    g.finish();
}

fn validation(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate");
    g.throughput(Throughput::Elements(1));
    let options = ValidationOptions::default();
    let stamp = Stamp {
        now: 1_790_000_000,
        unique_id: "q42",
        trace: Some(Trace {
            from_host: "app1.acme.example",
            from_ip: Some("192.0.2.1".parse().expect("ip")),
            by_host: "mta.acme.example",
            with: "ESMTPA",
            id: "q42",
            tls: None,
            auth: None,
        }),
    };
    for (label, size) in [("2KiB", 2048), ("100KiB", 100 * 1024)] {
        let m = message(size);
        g.bench_function(label, |b| {
            b.iter(|| validate(black_box(&m), &options, &stamp).expect("valid"))
        });
    }
    g.finish();
}

fn submission(c: &mut Criterion) {
    let mut g = c.benchmark_group("submit");
    g.throughput(Throughput::Elements(1));
    let config = vmta::policy::PolicyConfig::from_toml(
        "[[tenant]]\nname = \"acme\"\npool = \"p\"\nsender_domains = [\"acme.example\"]\n",
    )
    .expect("config");
    let registry = vmta::policy::TenantRegistry::from_config(&config, std::path::Path::new("."))
        .expect("registry");
    let from = vec!["news@acme.example".to_string()];
    g.bench_function("admit", |b| {
        b.iter(|| {
            registry
                .admit(black_box("acme"), "bounces@acme.example", &from)
                .expect("admitted")
        })
    });
    let options = ValidationOptions::default();
    let stamp = Stamp {
        now: 1_790_000_000,
        unique_id: "q42",
        trace: None,
    };
    let m = message(2048);
    g.bench_function("validate_and_admit_2KiB", |b| {
        b.iter(|| {
            vmta::policy::submit(
                &registry,
                "acme",
                "bounces@acme.example",
                black_box(&m),
                &options,
                &stamp,
            )
            .expect("admitted")
        })
    });
    g.finish();
}

criterion_group!(benches, signing, validation, submission);
criterion_main!(benches);
