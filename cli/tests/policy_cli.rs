//! `vmta dkim` and `vmta preflight` run as a user would, against dnsmasq on 127.0.20.3: signed output
//! verifies in dkimpy; preflight prints a verdict per check and exits 1 when one fails.

use std::process::Command;

use vmta_tests::policy::{dkimpy_verify, key, preflight_zone, start_zone, txt_record};
use vmta_tests::{TempDir, data_dir};

fn vmta() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmta"))
}

#[test]
fn dkim_sign_output_verifies_in_dkimpy() {
    let dir = TempDir::new("policy-cli-dkim");
    let message = dir.path().join("in.eml");
    // Bare LF line endings, as a file written on Unix has them.
    std::fs::write(
        &message,
        "From: News <news@cli.test>\nTo: ann@example.net\nSubject: Hi\n\nHello,\n  world  \n\n\n",
    )
    .unwrap();
    let mut records = Vec::new();
    let mut signed = Vec::new();
    for (file, selector, algorithm) in [
        ("rsa2048.pem", "r", "rsa-sha256"),
        ("ed25519.pem", "e", "ed25519-sha256"),
    ] {
        let pem = data_dir().join("policy").join(file);
        let out = vmta()
            .args(["dkim", "record", "--key"])
            .arg(&pem)
            .output()
            .unwrap();
        assert!(out.status.success());
        let record = String::from_utf8(out.stdout).unwrap();
        assert_eq!(record.trim(), key(file).public_key_record());
        records.push(txt_record(
            &format!("{selector}._domainkey.cli.test"),
            record.trim(),
        ));
        for canon in ["relaxed/relaxed", "simple/simple"] {
            let out = vmta()
                .args([
                    "dkim",
                    "sign",
                    "--domain",
                    "cli.test",
                    "--selector",
                    selector,
                ])
                .args([
                    "--algorithm",
                    algorithm,
                    "--canonicalization",
                    canon,
                    "--oversign",
                    "--key",
                ])
                .arg(&pem)
                .arg(&message)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.stdout.starts_with(b"DKIM-Signature: v=1; a="));
            let path = dir
                .path()
                .join(format!("{selector}-{}.eml", canon.replace('/', "-")));
            std::fs::write(&path, &out.stdout).unwrap();
            signed.push(path);
        }
    }
    let zone = start_zone("127.0.20.3", &["test"], &records);
    let paths: Vec<&std::path::Path> = signed.iter().map(|p| p.as_path()).collect();
    let (ok, out) = dkimpy_verify(zone.addr, &paths);
    assert!(ok, "{out}");

    // A key of the other algorithm is refused, and so is a 1024-bit RSA key.
    let out = vmta()
        .args([
            "dkim",
            "sign",
            "--domain",
            "cli.test",
            "--selector",
            "e",
            "--algorithm",
            "rsa-sha256",
        ])
        .arg("--key")
        .arg(data_dir().join("policy/ed25519.pem"))
        .arg(&message)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = vmta()
        .args([
            "dkim",
            "sign",
            "--domain",
            "cli.test",
            "--selector",
            "e",
            "--key",
        ])
        .arg(data_dir().join("policy/rsa1024.pem"))
        .arg(&message)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1024 bits refused"));
}

fn preflight(zone: &vmta_tests::policy::Zone, ip: &str) -> (Option<i32>, String) {
    let out = vmta()
        .args([
            "preflight",
            "--domain",
            "good.test",
            "--ip",
            ip,
            "--selector",
            "ed",
        ])
        .args([
            "--helo",
            "mta.good.test",
            "--nameserver",
            &zone.addr.to_string(),
        ])
        .args([
            "--ip-blocklist",
            "bl.test",
            "--domain-blocklist",
            "dbl.test",
            "--key",
        ])
        .arg(data_dir().join("policy/ed25519.pem"))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn preflight_prints_verdicts_and_exit_status() {
    let zone = preflight_zone("127.0.20.4");
    let (code, text) = preflight(&zone, "192.0.2.10");
    assert_eq!(code, Some(0), "{text}");
    for check in ["spf", "dkim", "dmarc", "rdns", "helo", "blocklist", "mx"] {
        assert!(
            text.contains(&format!("{check:<10} pass  ")),
            "{check}:\n{text}"
        );
    }
    assert!(
        text.contains("record: v=spf1 include:_spf.good.test -all"),
        "{text}"
    );
    assert!(text.contains("8 checks: 0 fail, 0 warn"), "{text}");

    // From a listed IP without reverse DNS and outside SPF.
    let (code, text) = preflight(&zone, "192.0.2.66");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("spf        fail  "), "{text}");
    assert!(text.contains("rdns       fail  "), "{text}");
    assert!(
        text.contains("blocklist  fail  192.0.2.66 is LISTED on bl.test"),
        "{text}"
    );

    // JSON: one object per check.
    let out = vmta()
        .args([
            "preflight",
            "--json",
            "--domain",
            "good.test",
            "--ip",
            "192.0.2.10",
            "--selector",
            "ed",
        ])
        .args(["--nameserver", &zone.addr.to_string(), "--no-blocklists"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v.as_array().unwrap();
    assert_eq!(checks.len(), 5, "{v}");
    assert_eq!(checks[0]["check"], "spf");
    assert_eq!(checks[0]["verdict"], "pass");
    // Without --key the published key cannot be compared: a warning.
    assert_eq!(checks[1]["check"], "dkim");
    assert_eq!(checks[1]["verdict"], "warn");
}
