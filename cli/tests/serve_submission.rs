//! `vmta serve` as a submission server (RFC 6409, RFC 8314): TLS first, then AUTH as a `[[user]]`
//! whose hash `vmta passwd` made, then mail from that user's tenant's approved senders. Real
//! clients: Python smtplib (STARTTLS then login, SMTP_SSL on the implicit-TLS port) and
//! `swaks --tls --auth`. Hostile: AUTH before TLS, bad base64, an overlong AUTH line, and 50 wrong
//! passwords from one address (slowed, then refused) while another address logs in at full speed.
//! Addresses 127.0.98.0/24 (listeners, sink) and 127.0.0.x (clients).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use vmta_tests::serve::{Daemon, make_cert, python_ok, wait_for};
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_addr, require};

struct Setup {
    dir: TempDir,
    sink: SmtpSink,
    _daemon: Daemon,
    starttls: SocketAddr,
    implicit: SocketAddr,
}

fn vmta() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmta"))
}

fn hash(password: &str) -> String {
    let mut child = Command::new(vmta())
        .args(["passwd", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn start() -> Setup {
    let dir = TempDir::new("serve-submission");
    make_cert(dir.path());
    let sink = SmtpSink::start("127.0.98.1", &[]);
    let (starttls, implicit) = (free_tcp_addr("127.0.98.2"), free_tcp_addr("127.0.98.3"));
    let config = dir.path().join("vmta.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nspool_dir = \"{spool}\"\nshards = 2\nhelo_name = \"submit.vmta.test\"\n\
             [serve]\nevent_log = \"{log}\"\nauth_failures_free = 2\nauth_failures_max = 6\n\
             auth_lockout_s = 600\nreceived_auth = true\n\
             [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n\
             [shaping]\nrules = '''\n{unshaped}'''\n\
             [[tenant]]\nname = \"demo\"\npool = \"default\"\nsender_addresses = [\"demo@example.org\"]\n\
             [[user]]\nname = \"demo\"\npassword = \"{hash}\"\ntenant = \"demo\"\n\
             [[listener]]\naddress = \"{starttls}\"\nrole = \"submission\"\n\
             tls_cert = \"localhost.crt\"\ntls_key = \"localhost.key\"\n\
             [[listener]]\naddress = \"{implicit}\"\nrole = \"submission\"\n\
             tls_cert = \"localhost.crt\"\ntls_key = \"localhost.key\"\nimplicit_tls = true\n",
            spool = dir.path().join("spool").display(),
            log = dir.path().join("events.jsonl").display(),
            sink = sink.addr,
            unshaped = vmta_testworld::world::UNSHAPED,
            hash = hash("demo-password"),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(vmta(), &config);
    Setup {
        dir,
        sink,
        _daemon: daemon,
        starttls,
        implicit,
    }
}

/// Logs in over STARTTLS or implicit TLS and sends: from the approved sender, then from another.
const SUBMIT: &str = r#"
import smtplib, ssl, sys
host, port, cafile, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile); ctx.check_hostname = False
if mode == "starttls":
    s = smtplib.SMTP(host, port, local_hostname="app.client.test", timeout=20)
    s.ehlo()
    assert not s.has_extn("auth"), "AUTH offered before TLS"
    try:
        s.sendmail("demo@example.org", ["u@dest.test"], "Subject: x\r\n\r\nx\r\n")
        print("BUG: mail before TLS accepted")
    except smtplib.SMTPSenderRefused as e:
        print("before-tls", e.smtp_code)
    s.starttls(context=ctx)
else:
    s = smtplib.SMTP_SSL(host, port, local_hostname="app.client.test", timeout=20, context=ctx)
s.ehlo()
print("auth", s.esmtp_features.get("auth"))
try:
    s.sendmail("demo@example.org", ["u@dest.test"], "Subject: x\r\n\r\nx\r\n")
    print("BUG: mail before AUTH accepted")
except smtplib.SMTPSenderRefused as e:
    print("before-auth", e.smtp_code)
s.login("demo", "demo-password")
s.sendmail("demo@example.org", ["u@dest.test"],
    "From: demo@example.org\r\nSubject: submitted over %s\r\n\r\nhello\r\n" % mode)
try:
    s.sendmail("other@example.org", ["u@dest.test"], "From: other@example.org\r\n\r\nx\r\n")
    print("BUG: unapproved sender accepted")
except smtplib.SMTPSenderRefused as e:
    print("unapproved", e.smtp_code, e.smtp_error.decode())
s.quit()
print("done")
"#;

#[test]
fn users_log_in_and_submit_for_their_tenant() {
    let w = start();
    let ca = w.dir.path().join("localhost.crt").display().to_string();
    for (addr, mode) in [(w.starttls, "starttls"), (w.implicit, "implicit")] {
        let out = python_ok(
            SUBMIT,
            &[
                addr.ip().to_string(),
                addr.port().to_string(),
                ca.clone(),
                mode.into(),
            ],
        );
        assert!(!out.contains("BUG"), "{out}");
        if mode == "starttls" {
            assert!(out.contains("before-tls 530"), "{out}");
        }
        assert!(out.contains("PLAIN LOGIN"), "{out}");
        assert!(out.contains("before-auth 530"), "{out}");
        assert!(out.contains("unapproved 550"), "{out}");
        assert!(out.contains("done"), "{out}");
    }
    let out = Command::new(require("swaks"))
        .args(["--server", &w.starttls.to_string(), "--tls"])
        .args([
            "--auth",
            "LOGIN",
            "--auth-user",
            "demo",
            "--auth-password",
            "demo-password",
        ])
        .args(["--from", "demo@example.org", "--to", "swaks@dest.test"])
        .args(["--header", "Subject: swaks submission"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks: {text}");
    assert!(
        text.contains("235 2.7.0 Authentication successful"),
        "{text}"
    );
    wait_for("3 messages at the sink", Duration::from_secs(20), || {
        w.sink.received() >= 3
    });
    let m = w
        .sink
        .messages()
        .into_iter()
        .find(|m| m.contains("Subject: submitted over starttls"))
        .unwrap();
    assert!(m.contains(" with ESMTPSA id "), "{m}");
    assert!(m.contains("\t(using TLSv1.3 with cipher TLS13_"), "{m}");
    assert!(m.contains("\t(Authenticated sender: demo)"), "{m}");
    let log = std::fs::read_to_string(w.dir.path().join("events.jsonl")).unwrap();
    assert!(log.contains("\"event\":\"login\""), "{log}");
    assert!(log.contains("\"auth\":\"demo\""), "{log}");
}

/// Hostile logins on the STARTTLS port from argv[4]: AUTH before TLS, bad base64, an overlong AUTH
/// line, then N wrong passwords, each on a new connection; prints each attempt's outcome and time.
const HOSTILE: &str = r#"
import smtplib, socket, ssl, sys, time
host, port, cafile, source, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = ssl.create_default_context(cafile=cafile); ctx.check_hostname = False
s = smtplib.SMTP(host, port, local_hostname="bad.client.test", timeout=30, source_address=(source, 0))
s.ehlo()
print("auth-before-tls", s.docmd("AUTH", "PLAIN AGRlbW8AZGVtby1wYXNzd29yZA==")[0])
s.starttls(context=ctx); s.ehlo()
print("bad-base64", s.docmd("AUTH", "PLAIN %%%notbase64")[0])
print("overlong", s.docmd("AUTH", "PLAIN " + "A" * 5000)[0])
print("still-there", s.docmd("NOOP")[0])
s.quit()
for i in range(n):
    t = time.monotonic()
    try:
        s = smtplib.SMTP(host, port, local_hostname="bad.client.test", timeout=30, source_address=(source, 0))
        s.ehlo(); s.starttls(context=ctx); s.ehlo()
        try:
            # One mechanism per try (smtplib's login() would try PLAIN, then LOGIN).
            s.user, s.password = "demo", "wrong-%d" % i
            s.auth("PLAIN", s.auth_plain)
            out = "accepted"
        except smtplib.SMTPAuthenticationError as e:
            out = str(e.smtp_code)
        except smtplib.SMTPServerDisconnected:
            out = "closed"
        try:
            s.quit()
        except Exception:
            pass
    except (smtplib.SMTPConnectError, smtplib.SMTPServerDisconnected, smtplib.SMTPNotSupportedError) as e:
        out = "refused:%s" % getattr(e, "smtp_code", "")
    print("try", i, out, round(time.monotonic() - t, 2), flush=True)
"#;

/// A good login from argv[4], timed.
const GOOD: &str = r#"
import smtplib, ssl, sys, time
host, port, cafile, source = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile); ctx.check_hostname = False
t = time.monotonic()
s = smtplib.SMTP(host, port, local_hostname="good.client.test", timeout=30, source_address=(source, 0))
s.ehlo(); s.starttls(context=ctx); s.ehlo()
s.login("demo", "demo-password")
s.quit()
print("good", round(time.monotonic() - t, 2))
"#;

#[test]
fn wrong_passwords_are_slowed_then_refused_while_others_log_in() {
    let w = start();
    let ca = w.dir.path().join("localhost.crt").display().to_string();
    let args = |source: &str| {
        vec![
            w.starttls.ip().to_string(),
            w.starttls.port().to_string(),
            ca.clone(),
            source.to_string(),
        ]
    };
    let mut hostile_args = args("127.0.0.2");
    hostile_args.push("50".into());
    let hostile = {
        let a = hostile_args.clone();
        std::thread::spawn(move || python_ok(HOSTILE, &a))
    };
    // Good logins from another address while the attack runs: each at full speed.
    let mut good = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(700));
        let out = python_ok(GOOD, &args("127.0.0.3"));
        let secs: f64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
        good.push(secs);
    }
    let out = hostile.join().unwrap();
    assert!(out.contains("auth-before-tls 538"), "{out}");
    assert!(out.contains("bad-base64 501"), "{out}");
    assert!(out.contains("overlong 500"), "{out}");
    assert!(out.contains("still-there 250"), "{out}");
    let tries: Vec<(String, f64)> = out
        .lines()
        .filter(|l| l.starts_with("try "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[2].to_string(), f[3].parse().unwrap())
        })
        .collect();
    assert_eq!(tries.len(), 50, "{out}");
    assert!(tries.iter().all(|(o, _)| o != "accepted"), "{out}");
    // The first failures are answered at once, the later ones slower, then the address is refused.
    assert_eq!(tries[0].0, "535", "{out}");
    assert!(tries[0].1 < 1.0, "{out}");
    assert!(tries[4].1 >= 1.0, "the fifth failure was not slowed: {out}");
    let refused = tries
        .iter()
        .filter(|(o, _)| o.starts_with("refused"))
        .count();
    assert!(refused >= 40, "only {refused} refused: {out}");
    assert!(
        tries[49].1 < 1.0,
        "a refused address waits for nothing: {out}"
    );
    eprintln!("good logins took {good:?}");
    assert!(
        good.iter().all(|s| *s < 1.0),
        "good logins slowed: {good:?}\n{out}"
    );
}

#[test]
fn postfix_relays_to_the_submission_port_with_sasl() {
    let w = start();
    let postfix = vmta_tests::smtp::PostfixSmtpd::start_with(
        "127.0.98.4",
        &format!(
            "myhostname = postfix.client.test\n\
             smtpd_recipient_restrictions =\n\
             default_transport = smtp\n\
             relayhost = [{ip}]:{port}\n\
             smtp_dns_support_level = disabled\n\
             smtp_tls_security_level = encrypt\n\
             smtp_sasl_auth_enable = yes\n\
             smtp_sasl_password_maps = static:demo:demo-password\n\
             smtp_sasl_security_options = noanonymous\n\
             smtp_sasl_mechanism_filter = plain, login\n",
            ip = w.starttls.ip(),
            port = w.starttls.port()
        ),
        "smtp unix - - n - - smtp\nrelay unix - - n - - smtp\ntlsmgr unix - - n 1000? 1 tlsmgr\n",
    );
    let script = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="app.client.test", timeout=20)
s.sendmail("demo@example.org", ["p@dest.test"],
    "From: demo@example.org\r\nSubject: postfix via submission\r\n\r\nhello\r\n")
s.quit()
"#;
    python_ok(
        script,
        &[
            postfix.addr.ip().to_string(),
            postfix.addr.port().to_string(),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while w.sink.received() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing at the sink; postfix log:\n{}",
            postfix.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = w.sink.messages().pop().unwrap();
    assert!(m.contains("Subject: postfix via submission"), "{m}");
    assert!(m.contains(" with ESMTPSA id "), "{m}");
    let log = postfix.log();
    assert!(
        log.contains("status=sent (250 2.0.0 Ok: queued as"),
        "{log}"
    );
}

/// One STARTTLS session: prints the server certificate's SHA-256 and the outcome of a login as
/// argv[3] with password argv[4] (the certificate is not verified: it is the one under test).
const LOGIN: &str = r#"
import hashlib, smtplib, ssl, sys
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(host, port, local_hostname="app.client.test", timeout=20)
s.starttls(context=ctx)
print("cert", hashlib.sha256(s.sock.getpeercert(binary_form=True)).hexdigest())
s.ehlo()
try:
    s.login(user, password)
    print("login ok")
except smtplib.SMTPAuthenticationError as e:
    print("login refused", e.smtp_code)
s.quit()
"#;

/// `vmta reload` puts a changed `[[user]]` list and renewed certificate files in force for the
/// next login and the next handshake, without a restart; a key that does not load is refused and
/// the certificate in force stays.
#[test]
fn reload_puts_new_users_and_a_new_certificate_in_force() {
    let w = start();
    let login = |user: &str, password: &str| {
        python_ok(
            LOGIN,
            &[
                w.starttls.ip().to_string(),
                w.starttls.port().to_string(),
                user.into(),
                password.into(),
            ],
        )
    };
    let cert_of = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("cert "))
            .unwrap()
            .to_string()
    };
    let before = login("demo", "demo-password");
    assert!(before.contains("login ok"), "{before}");
    assert!(login("second", "second-password").contains("login refused 535"));

    // A renewed certificate (as certbot would write it) and a changed user list.
    let renewed = TempDir::new("serve-renewed-cert");
    make_cert(renewed.path());
    for f in ["localhost.crt", "localhost.key"] {
        std::fs::copy(renewed.path().join(f), w.dir.path().join(f)).unwrap();
    }
    let config = w.dir.path().join("vmta.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let old_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("password = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let text = text.replace(&old_hash, &hash("demo-password-2")).replacen(
        "[[listener]]",
        &format!(
            "[[user]]\nname = \"second\"\npassword = \"{}\"\ntenant = \"demo\"\n[[listener]]",
            hash("second-password")
        ),
        1,
    );
    std::fs::write(&config, &text).unwrap();
    let reload = || {
        Command::new(vmta())
            .args(["reload", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let o = reload();
    let answer = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(0), "{answer}");
    assert!(
        answer.contains("\"user\"") && answer.contains("\"certificate\""),
        "{answer}"
    );
    assert!(answer.contains("\"needs_restart\":[]"), "{answer}");

    let after = login("demo", "demo-password-2");
    assert!(after.contains("login ok"), "{after}");
    assert_ne!(
        cert_of(&before),
        cert_of(&after),
        "the old certificate is still served"
    );
    assert!(login("demo", "demo-password").contains("login refused 535"));
    assert!(login("second", "second-password").contains("login ok"));

    // A key file that does not load: refused, naming the listener; the renewed certificate stays.
    std::fs::write(w.dir.path().join("localhost.key"), "not a key\n").unwrap();
    let o = reload();
    let answer = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(o.status.code(), Some(1), "{answer}");
    assert!(
        answer.contains("reload-refused") && answer.contains("listener 127.0.98.2"),
        "{answer}"
    );
    let still = login("second", "second-password");
    assert_eq!(cert_of(&still), cert_of(&after));
    assert!(still.contains("login ok"), "{still}");
}
