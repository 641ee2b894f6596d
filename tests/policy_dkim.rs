//! DKIM signatures made by vmta verify in an independent verifier (Python dkimpy) that fetches the
//! public keys from a real DNS server (dnsmasq on 127.0.20.1), for both algorithms, both
//! canonicalizations, with and without oversigning, after the submission pipeline (validation,
//! List-Unsubscribe, Feedback-ID); tampered copies fail there.

use std::path::{Path, PathBuf};

use vmta::dkim::{Canonicalization, KeyError, Signer, SignerConfig, SigningKey};
use vmta::policy::{self, Stamp, Trace, UnsubscribeTemplate, ValidationOptions};
use vmta_tests::policy::{dkimpy_verify, start_zone, txt_record};
use vmta_tests::{TempDir, data_dir};

const T: u64 = 1_790_000_000;

fn key(file: &str) -> SigningKey {
    let pem = std::fs::read_to_string(data_dir().join("policy").join(file)).unwrap();
    SigningKey::from_pem(&pem).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// RFC 8463 Appendix A: the Ed25519 seed and the signed example as published.
const RFC8463_SEED: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];
const RFC8463_SIGNED: &str = concat!(
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n",
    " d=football.example.com; i=@football.example.com;\r\n",
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n",
    " subject : date : message-id : from : subject : date;\r\n",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n",
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n",
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n",
    "From: Joe SixPack <joe@football.example.com>\r\n",
    "To: Suzie Q <suzie@shopping.example.net>\r\n",
    "Subject: Is dinner ready?\r\n",
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n",
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n",
    "\r\n",
    "Hi.\r\n",
    "\r\n",
    "We lost the game.  Are you hungry yet?\r\n",
    "\r\n",
    "Joe.\r\n",
    "\r\n",
);

fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut big =
        b"From: News <news@dkim.test>\r\nTo: a@example.net\r\nSubject: big\r\n\r\n".to_vec();
    let mut i = 0u32;
    while big.len() < 100 * 1024 {
        big.extend_from_slice(
            format!("line {i} of the body,  with  double   spaces\t and tabs \r\n").as_bytes(),
        );
        i += 1;
    }
    vec![
        (
            "plain",
            b"From: News <news@dkim.test>\r\nTo: Ann <ann@example.net>\r\nSubject: Hello\r\n\r\nHi Ann.\r\n"
                .to_vec(),
        ),
        (
            "quirks",
            // Folded and oddly spaced headers, repeated To, trailing blank lines, trailing spaces,
            // bare LF endings (validation turns them into CRLF).
            b"From:   News\t<news@dkim.test>  \nTo: a@example.net\nTo: b@example.net\nSubject: folded\n\tsubject  line \nX-Mailer: test\n\nbody  line  \n\n  indented\n\n\n\n"
                .to_vec(),
        ),
        ("empty-body", b"From: news@dkim.test\r\nSubject: nothing\r\n\r\n".to_vec()),
        ("headers-only", b"From: news@dkim.test\r\nSubject: no body".to_vec()),
        (
            "eight-bit",
            "From: Nöws <news@dkim.test>\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSchöne Grüße\r\n"
                .as_bytes()
                .to_vec(),
        ),
        ("100k", big),
    ]
}

/// Runs a message through the submission pipeline as the engine will: validate (adds Date,
/// Message-ID, Received), add List-Unsubscribe and Feedback-ID for one recipient.
fn submitted(raw: &[u8]) -> Vec<u8> {
    let stamp = Stamp {
        now: T,
        unique_id: "q42",
        trace: Some(Trace {
            from_host: "app.dkim.test",
            from_ip: Some("192.0.2.1".parse().unwrap()),
            by_host: "mta.dkim.test",
            with: "ESMTPA",
            id: "q42",
            tls: None,
            auth: None,
        }),
    };
    let options = ValidationOptions {
        message_id_domain: "dkim.test".into(),
        ..ValidationOptions::default()
    };
    let m = policy::validate(raw, &options, &stamp).unwrap();
    let template = UnsubscribeTemplate {
        url: Some("https://u.dkim.test/u/{token}?r={recipient}".into()),
        mailto: Some("unsub+{token}@dkim.test".into()),
        one_click: true,
        secret: "test-secret".into(),
    };
    let mut fields = Vec::new();
    template
        .render("acme", "ann@example.net", &m.message_id)
        .write(&mut fields);
    fields.extend_from_slice(
        policy::feedback_id(Some("c1"), Some("acme"), None, "vmta")
            .unwrap()
            .as_bytes(),
    );
    policy::with_fields(&m, &fields)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn small_rsa_keys_are_refused() {
    let pem = std::fs::read_to_string(data_dir().join("policy/rsa1024.pem")).unwrap();
    assert_eq!(
        SigningKey::from_pem(&pem).unwrap_err(),
        KeyError::RsaTooSmall { bits: 1024 }
    );
    assert_eq!(key("rsa2048.pem").bits(), 2048);
    assert_eq!(key("rsa3072-pkcs8.pem").bits(), 3072);
    assert_eq!(key("ed25519.pem").bits(), 256);
}

#[test]
fn signatures_verify_in_dkimpy_and_tampering_is_caught() {
    let keys = [
        ("rsa2048", key("rsa2048.pem")),
        ("rsa3072", key("rsa3072-pkcs8.pem")),
        ("ed", key("ed25519.pem")),
    ];
    let rfc_key = SigningKey::ed25519_from_seed(&RFC8463_SEED);
    let mut records: Vec<String> = keys
        .iter()
        .map(|(sel, k)| {
            txt_record(
                &format!("{sel}._domainkey.dkim.test"),
                &k.public_key_record(),
            )
        })
        .collect();
    records.push(txt_record(
        "brisbane._domainkey.football.example.com",
        &rfc_key.public_key_record(),
    ));
    let zone = start_zone("127.0.20.1", &["test", "example.com"], &records);

    let dir = TempDir::new("policy-dkim");
    let mut good: Vec<PathBuf> = Vec::new();
    let mut tampered: Vec<PathBuf> = Vec::new();
    let canons = [
        (Canonicalization::Relaxed, Canonicalization::Relaxed),
        (Canonicalization::Simple, Canonicalization::Simple),
        (Canonicalization::Relaxed, Canonicalization::Simple),
    ];
    for (name, raw) in messages() {
        let message = submitted(&raw);
        for (sel, k) in &keys {
            for (ci, (hc, bc)) in canons.iter().enumerate() {
                for oversign in [false, true] {
                    let mut config =
                        SignerConfig::new("dkim.test", sel).with_canonicalization(*hc, *bc);
                    if oversign {
                        config = config.with_oversigning();
                    }
                    let signer = Signer::new(k.clone(), config).unwrap();
                    let signed = signer.sign_message(&message, T).unwrap();
                    let tag = format!("{name}-{sel}-c{ci}-o{}", oversign as u8);
                    good.push(write(dir.path(), &format!("{tag}.eml"), &signed));
                    if ci == 0 || ci == 1 {
                        // A changed body byte breaks the body hash.
                        let mut body_changed = signed.clone();
                        let at = body_changed.len() - 3;
                        if body_changed[at].is_ascii_alphabetic() {
                            body_changed[at] ^= 0x20;
                        } else {
                            body_changed.splice(at..at, b"X".iter().copied());
                        }
                        tampered.push(write(dir.path(), &format!("{tag}-body.eml"), &body_changed));
                        // A changed Subject breaks the header signature.
                        let text = String::from_utf8_lossy(&signed).into_owned();
                        if let Some(pos) = text.find("\nSubject: ") {
                            let mut s = signed.clone();
                            s[pos + 10] ^= 0x01;
                            tampered.push(write(dir.path(), &format!("{tag}-subject.eml"), &s));
                        }
                    }
                    if oversign {
                        // A second From above the signed one: refused because From is oversigned.
                        let mut extra = b"From: Mallory <m@evil.test>\r\n".to_vec();
                        let sig_end = find_after_signature(&signed);
                        extra.extend_from_slice(&signed[sig_end..]);
                        let mut s = signed[..sig_end].to_vec();
                        s.extend_from_slice(&extra);
                        tampered.push(write(dir.path(), &format!("{tag}-from.eml"), &s));
                    }
                }
            }
        }
    }
    // RFC 8463's example signed by us with the RFC's key, and the published example itself.
    let unsigned = &RFC8463_SIGNED[RFC8463_SIGNED.find("From: Joe").unwrap()..];
    let signer = Signer::new(
        rfc_key.clone(),
        SignerConfig::new("football.example.com", "brisbane").with_oversigning(),
    )
    .unwrap();
    good.push(write(
        dir.path(),
        "rfc8463-ours.eml",
        &signer
            .sign_message(unsigned.as_bytes(), 1_528_637_909)
            .unwrap(),
    ));
    good.push(write(
        dir.path(),
        "rfc8463-published.eml",
        RFC8463_SIGNED.as_bytes(),
    ));

    let paths: Vec<&Path> = good.iter().map(PathBuf::as_path).collect();
    let (ok, out) = dkimpy_verify(zone.addr, &paths);
    assert!(ok, "dkimpy rejected a signature:\n{out}");
    assert_eq!(out.matches(": pass").count(), good.len(), "{out}");

    let paths: Vec<&Path> = tampered.iter().map(PathBuf::as_path).collect();
    assert!(tampered.len() > 50);
    let (ok, out) = dkimpy_verify(zone.addr, &paths);
    assert!(!ok);
    for p in &tampered {
        let line = out
            .lines()
            .find(|l| {
                l.starts_with(&*p.to_string_lossy())
                    && (l.contains(": pass") || l.contains(": fail"))
            })
            .unwrap_or_else(|| panic!("no verdict for {}:\n{out}", p.display()));
        assert!(line.contains(": fail"), "tampered message verified: {line}");
    }
}

/// The offset just past the DKIM-Signature field at the top of `signed`.
fn find_after_signature(signed: &[u8]) -> usize {
    let mut i = 0;
    while i + 2 < signed.len() {
        if signed[i] == b'\r'
            && signed[i + 1] == b'\n'
            && signed[i + 2] != b'\t'
            && signed[i + 2] != b' '
        {
            return i + 2;
        }
        i += 1;
    }
    signed.len()
}

/// A tenant from TOML with an RSA and an Ed25519 key for one domain: the submission pipeline admits
/// the message, adds the per-recipient fields, and both signatures verify in dkimpy.
#[test]
fn tenant_configuration_signs_twice_and_both_verify() {
    let toml = r#"
[[tenant]]
name = "acme"
pool = "shared"
sender_domains = ["dual.test"]
feedback_sender_id = "vmta"

[[tenant.dkim]]
domain = "dual.test"
selector = "r"
key_file = "rsa2048.pem"
algorithm = "rsa-sha256"
oversign = true

[[tenant.dkim]]
domain = "dual.test"
selector = "e"
key_file = "ed25519.pem"
canonicalization = "simple/simple"

[tenant.unsubscribe]
url = "https://u.dual.test/u/{token}?r={recipient}"
one_click = true
secret = "s"
"#;
    let config = policy::PolicyConfig::from_toml(toml).unwrap();
    let registry =
        policy::TenantRegistry::from_config(&config, &data_dir().join("policy")).unwrap();
    let stamp = Stamp {
        now: T,
        unique_id: "q7",
        trace: None,
    };
    let options = ValidationOptions {
        message_id_domain: "dual.test".into(),
        ..ValidationOptions::default()
    };
    let admitted = policy::submit(
        &registry,
        "acme",
        "bounces@dual.test",
        b"From: Acme <news@dual.test>\nTo: ann@example.net\nSubject: two signatures\n\nHello.\n",
        &options,
        &stamp,
    )
    .unwrap();
    let tenant = admitted.tenant.clone();
    let mut fields = Vec::new();
    tenant
        .unsubscribe_fields("ann@example.net", &admitted.message.message_id)
        .unwrap()
        .write(&mut fields);
    fields.extend_from_slice(
        tenant
            .feedback_id(Some("c9"), None)
            .unwrap()
            .unwrap()
            .as_bytes(),
    );
    let mut message = policy::with_fields(&admitted.message, &fields);
    let signers = tenant.signers_for("dual.test");
    assert_eq!(signers.len(), 2);
    for s in &signers {
        message = s.sign_message(&message, T).unwrap();
    }
    let records: Vec<String> = signers
        .iter()
        .map(|s| {
            txt_record(
                &format!("{}._domainkey.dual.test", s.config().selector),
                &s.key().public_key_record(),
            )
        })
        .collect();
    let zone = start_zone("127.0.20.5", &["test"], &records);
    let dir = TempDir::new("policy-dual");
    let path = write(dir.path(), "dual.eml", &message);
    let (ok, out) = dkimpy_verify(zone.addr, &[&path]);
    assert!(ok, "{out}");
    assert!(out.contains("pass (2 signatures)"), "{out}");
}
