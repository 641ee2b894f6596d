//! `vmta dns` run as a user would, against a real dnsmasq started by the test (127.0.10.1, the DNS
//! block): ordered targets and exit status 0, failures with their reason and exit status 1, bad
//! arguments with exit status 2.

use std::process::{Command, Output};
use vmta_tests::dns::start_dnsmasq;

fn vmta(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmta"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dns_mx_prints_targets_and_failures() {
    let server = start_dnsmasq();
    let ns = server.addr.to_string();

    let out = vmta(&["dns", "mx", "alpha.test", "--nameserver", &ns]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let mx1 = text.find("mx1.alpha.test").expect("mx1 listed");
    let mx2 = text.find("mx2.alpha.test").expect("mx2 listed");
    assert!(mx1 < mx2, "preference order: {text}");
    assert!(
        text.contains("127.0.0.2") && text.contains("127.0.0.3"),
        "{text}"
    );

    let out = vmta(&["dns", "mx", "nullmx.test", "--nameserver", &ns]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("permanent failure, reason notaccept"),
        "{text}"
    );

    let out = vmta(&[
        "dns",
        "mx",
        "no-such-domain.test",
        "--nameserver",
        &ns,
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["reason"], "hostunknown");
    assert_eq!(json["permanent"], true);

    let out = vmta(&["dns", "mx", "nomx.test", "--nameserver", &ns, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(json["result"][0]["host"], "nomx.test");
    assert_eq!(json["result"][0]["implicit"], true);

    let out = vmta(&["dns", "mx", "alpha.test", "--nameserver", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
}
