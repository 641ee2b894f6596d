//! `vmta serve` with TLS: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) with a certificate made by
//! `examples/serve/make-cert.sh`, against Python's smtplib (STARTTLS, SMTP_SSL), `openssl s_client
//! -starttls smtp` and `swaks --tls`; commands pipelined behind STARTTLS are not executed
//! (CVE-2011-0411); garbage instead of a ClientHello and a handshake that never comes end the
//! connection while the daemon keeps serving; a client that holds a certificate the server never
//! asked for gets through as any other. Addresses 127.0.97.0/24.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmta_tests::serve::{Daemon, make_cert, python_ok, wait_for};
use vmta_tests::smtp::SmtpSink;
use vmta_tests::{TempDir, free_tcp_addr, require};

struct World {
    _dir: TempDir,
    sink: SmtpSink,
    _daemon: Daemon,
    starttls: SocketAddr,
    implicit: SocketAddr,
    cert: std::path::PathBuf,
}

fn start() -> World {
    let dir = TempDir::new("serve-tls");
    make_cert(dir.path());
    let sink = SmtpSink::start("127.0.97.1", &[]);
    let (starttls, implicit) = (free_tcp_addr("127.0.97.2"), free_tcp_addr("127.0.97.3"));
    let config = dir.path().join("vmta.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nspool_dir = \"{spool}\"\nshards = 2\nhelo_name = \"relay.vmta.test\"\n\
             [serve]\nevent_log = \"{log}\"\n\
             [smarthost]\naddress = \"{sink}\"\ntls = \"disabled\"\n\
             [shaping]\nrules = '''\n{unshaped}'''\n\
             [[listener]]\naddress = \"{starttls}\"\nrole = \"relay\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\ntls_cert = \"localhost.crt\"\n\
             tls_key = \"localhost.key\"\nidle_timeout_s = 2\n\
             [[listener]]\naddress = \"{implicit}\"\nrole = \"relay\"\n\
             allowed_networks = [\"127.0.0.0/8\"]\ntls_cert = \"localhost.crt\"\n\
             tls_key = \"localhost.key\"\nimplicit_tls = true\nidle_timeout_s = 2\n",
            unshaped = vmta_testworld::world::UNSHAPED,
            spool = dir.path().join("spool").display(),
            log = dir.path().join("events.jsonl").display(),
            sink = sink.addr,
        ),
    )
    .unwrap();
    let daemon = Daemon::start(Path::new(env!("CARGO_BIN_EXE_vmta")), &config);
    let cert = dir.path().join("localhost.crt");
    World {
        _dir: dir,
        sink,
        _daemon: daemon,
        starttls,
        implicit,
        cert,
    }
}

/// smtplib over STARTTLS (argv[4] == "starttls") or implicit TLS, trusting only the test
/// certificate; prints the TLS version, the features after TLS and the reply to the data.
const SMTPLIB_TLS: &str = r#"
import smtplib, ssl, sys
host, port, cafile, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False  # connected by address; the chain is still verified
if len(sys.argv) > 5:
    # A client certificate the server never asks for: offered, unused, no harm.
    ctx.load_cert_chain(cafile, sys.argv[5])
if mode == "starttls":
    s = smtplib.SMTP(host, port, local_hostname="tls.client.test", timeout=20)
    s.ehlo()
    assert s.has_extn("starttls"), s.esmtp_features
    s.starttls(context=ctx)
else:
    s = smtplib.SMTP_SSL(host, port, local_hostname="tls.client.test", timeout=20, context=ctx)
s.ehlo()
assert not s.has_extn("starttls"), s.esmtp_features
print("tls", s.sock.version())
msg = "From: app@client.test\r\nSubject: over %s\r\n\r\nhello\r\n" % mode
s.sendmail("app@client.test", ["u@dest.test"], msg)
s.quit()
print("sent")
"#;

/// Runs [`SMTPLIB_TLS`] against `addr` (`mode`: starttls or implicit), offering `client_key`'s
/// certificate when given; its output.
fn smtplib_tls(w: &World, addr: SocketAddr, mode: &str, client_key: Option<&Path>) -> String {
    let mut args = vec![
        addr.ip().to_string(),
        addr.port().to_string(),
        w.cert.display().to_string(),
        mode.to_string(),
    ];
    if let Some(k) = client_key {
        args.push(k.display().to_string());
    }
    python_ok(SMTPLIB_TLS, &args)
}

#[test]
fn starttls_and_implicit_tls_with_real_clients() {
    let w = start();
    let cafile = w.cert.display().to_string();
    let out = smtplib_tls(&w, w.starttls, "starttls", None);
    assert!(out.contains("tls TLSv1.3") && out.contains("sent"), "{out}");
    let out = smtplib_tls(&w, w.implicit, "implicit", None);
    assert!(out.contains("tls TLSv1.3") && out.contains("sent"), "{out}");
    let key = w.cert.with_file_name("localhost.key");
    let out = smtplib_tls(&w, w.starttls, "starttls", Some(&key));
    assert!(out.contains("sent"), "{out}");

    // openssl s_client: STARTTLS, the chain verified against the test certificate.
    let mut child = Command::new(require("openssl"))
        .args([
            "s_client",
            "-starttls",
            "smtp",
            "-quiet",
            "-verify_return_error",
        ])
        .args(["-CAfile", &cafile, "-verify_ip", "127.0.0.1"])
        .args(["-connect", &w.starttls.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"EHLO openssl.client.test\r\nQUIT\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("250 ENHANCEDSTATUSCODES"), "{text}{err}");
    assert!(text.contains("221 2.0.0 Bye"), "{text}{err}");
    assert!(!text.contains("STARTTLS"), "{text}{err}");

    // swaks --tls.
    let out = Command::new(require("swaks"))
        .args(["--server", &w.starttls.to_string(), "--tls"])
        .args(["--from", "swaks@client.test", "--to", "swaks@dest.test"])
        .args(["--header", "Subject: swaks over tls"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks: {text}");
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");

    wait_for("4 messages at the sink", Duration::from_secs(20), || {
        w.sink.received() >= 4
    });
    let m = w
        .sink
        .messages()
        .into_iter()
        .find(|m| m.contains("Subject: over starttls"))
        .unwrap();
    assert!(m.contains(" with ESMTPS id "), "{m}");
    let m = w
        .sink
        .messages()
        .into_iter()
        .find(|m| m.contains("Subject: over implicit"))
        .unwrap();
    assert!(m.contains(" with ESMTPS id "), "{m}");
    assert!(m.contains("\t(using TLSv1.3 with cipher TLS13_"), "{m}");
    assert!(!m.contains("Authenticated sender"), "{m}");
}

/// Commands pipelined behind STARTTLS are dropped; after the handshake the session starts over.
const STARTTLS_INJECTION: &str = r#"
import socket, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sock = socket.create_connection((host, port), timeout=10)
f = sock.makefile("rb")
def reply(f):
    lines = []
    while True:
        l = f.readline().decode()
        assert l, "closed"
        lines.append(l.strip())
        if l[3] == " ":
            return lines
print(reply(f))
sock.sendall(b"EHLO c\r\n"); print(reply(f))
sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<victim@dest.test>\r\n")
print(reply(f))
ctx = ssl.create_default_context(cafile=cafile); ctx.check_hostname = False
t = ctx.wrap_socket(sock)
g = t.makefile("rb")
t.sendall(b"RCPT TO:<victim@dest.test>\r\n"); print("after-tls", reply(g))
t.sendall(b"QUIT\r\n"); print(reply(g))
"#;

#[test]
fn starttls_drops_pipelined_commands_and_bad_handshakes_end_cleanly() {
    let w = start();
    let out = python_ok(
        STARTTLS_INJECTION,
        &[
            w.starttls.ip().to_string(),
            w.starttls.port().to_string(),
            w.cert.display().to_string(),
        ],
    );
    // The injected MAIL was never executed: RCPT after TLS needs a MAIL (and an EHLO) first.
    assert!(out.contains("['220 2.0.0 Ready to start TLS']"), "{out}");
    assert!(out.contains("after-tls ['503 5.5.1"), "{out}");
    // Garbage instead of a ClientHello on the implicit-TLS port: the connection ends.
    let mut g = TcpStream::connect(w.implicit).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = g.read_to_end(&mut rest);
    assert!(!rest.starts_with(b"220"), "{rest:?}");
    // A client that never starts its handshake: closed at the idle timeout (2 s), nothing sent.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(w.implicit).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
    // Still serving.
    let out = smtplib_tls(&w, w.implicit, "implicit", None);
    assert!(out.contains("sent"), "{out}");
}
