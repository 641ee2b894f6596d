//! Postfix as the front door: a private Postfix instance whose `relayhost` is `vmta serve` takes a
//! message with smtplib and relays it (its own SMTP client, pipelining, its queue ids) through vmta
//! to an `smtp-sink`. Addresses 127.0.94.0/24.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vmta_tests::serve::Daemon;
use vmta_tests::smtp::{PostfixSmtpd, SmtpSink};
use vmta_tests::{TempDir, free_tcp_addr};

#[test]
fn postfix_relays_through_vmta_to_the_sink() {
    let dir = TempDir::new("serve-postfix");
    let sink = SmtpSink::start("127.0.94.1", &[]);
    let addr = free_tcp_addr("127.0.94.2");
    let config = dir.path().join("vmta.toml");
    let log = dir.path().join("events.jsonl");
    std::fs::write(
        &config,
        format!(
            "[engine]\nspool_dir = \"{spool}\"\nshards = 2\nhelo_name = \"relay.vmta.test\"\n\
             [serve]\nevent_log = \"{log}\"\n\
             [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n[shaping]\nrules = '''\n{unshaped}'''\n\
             [[listener]]\naddress = \"{addr}\"\nrole = \"relay\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\n",
            unshaped = vmta_testworld::world::UNSHAPED,
            spool = dir.path().join("spool").display(),
            log = log.display(),
            sink = sink.addr,
        ),
    )
    .unwrap();
    let _serve = Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &config);
    // Postfix: accept from loopback, relay everything to vmta.
    let postfix = PostfixSmtpd::start_with(
        "127.0.94.3",
        &format!(
            "myhostname = postfix.client.test\n\
             smtpd_recipient_restrictions =\n\
             default_transport = smtp\n\
             relayhost = [{ip}]:{port}\n\
             smtp_tls_security_level = none\n\
             smtp_dns_support_level = disabled\n",
            ip = addr.ip(),
            port = addr.port()
        ),
        "smtp unix - - n - - smtp\nrelay unix - - n - - smtp\n",
    );
    let script = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(host, port, local_hostname="app.client.test", timeout=20)
for i in range(5):
    s.sendmail("app@client.test", ["user%d@dest.test" % i, "other%d@dest.test" % i],
        "From: app@client.test\r\nTo: user%d@dest.test\r\nSubject: through postfix %d\r\n\r\nhello\r\n" % (i, i))
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(postfix.addr.ip().to_string())
        .arg(postfix.addr.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib to postfix: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Five messages of two recipients each: five transactions at the sink, each carrying Postfix's
    // trace field and vmta's above it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.received() < 5 {
        assert!(
            Instant::now() < deadline,
            "{} of 5 at the sink; postfix log:\n{}",
            sink.received(),
            postfix.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let messages = sink.messages();
    let m = messages
        .iter()
        .find(|m| m.contains("Subject: through postfix 0"))
        .unwrap();
    assert!(
        m.contains("Received: from postfix.client.test ([127.0.0.1])"),
        "{m}"
    );
    assert!(m.contains("by relay.vmta.test (vmta) with ESMTP id"), "{m}");
    assert!(m.contains("by postfix.client.test (Postfix)"), "{m}");
    let plog = postfix.log();
    assert!(
        plog.contains(&format!("relay=127.0.94.2[127.0.94.2]:{}", addr.port())),
        "{plog}"
    );
    assert!(
        plog.contains("status=sent (250 2.0.0 Ok: queued as"),
        "{plog}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.received(), 5);
    let events = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        events.matches("\"event\":\"received\"").count(),
        5,
        "{events}"
    );
}
